"""Bidirectional conversion, padding invariance, shift and attention annealing on tiny models of every family."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, PAD_ID, random_ids, tiny_model

from xdlm_tune.model import (
    SUPPORTED_FAMILIES,
    anneal_progress,
    annealed_attention_mask,
    denoiser_hidden,
    is_bidirectional,
    make_bidirectional,
    output_projection,
)

L = 10


def _logits(model, ids, mask=None, **kw):
    hidden = denoiser_hidden(model, ids, mask, shift=False, **kw)
    weight, bias, softcap = output_projection(model)
    logits = hidden @ weight.T
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


@torch.no_grad()
@pytest.mark.parametrize("family", FAMILIES)
def test_conversion_lets_later_tokens_change_earlier_positions(family):
    model = tiny_model(family)
    ids = random_ids(1, L)
    edited = ids.clone()
    edited[0, -1] = (ids[0, -1] + 1) % 100 + 3
    before = (_logits(model, ids), _logits(model, edited))
    assert torch.equal(before[0][:, :-1], before[1][:, :-1]), "a causal model must not look ahead"
    assert not is_bidirectional(model)

    make_bidirectional(model)
    after = (_logits(model, ids), _logits(model, edited))
    # Position L-4 is within every tiny sliding window (4) of the edited last token.
    assert (after[0][0, L - 4] - after[1][0, L - 4]).abs().max() > 1e-4
    assert is_bidirectional(model)
    # The full forward (logits from the head) agrees with denoiser_hidden @ weight.
    torch.testing.assert_close(model(ids).logits, after[0], atol=1e-5, rtol=1e-5)


def _layer_io(model, ids, layer, replace_input=None):
    """(input, output) hidden states [B, L, H] of decoder layer ``layer``; ``replace_input(h)`` may
    change that layer's input first."""
    seen = {}

    def pre(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        if replace_input is not None:
            h = replace_input(h)
            args, kwargs = ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})
        seen["in"] = h
        return args, kwargs

    def post(module, args, kwargs, out):
        seen["out"] = out[0] if isinstance(out, tuple) else out

    block = model.model.layers[layer]
    handles = [
        block.register_forward_pre_hook(pre, with_kwargs=True),
        block.register_forward_hook(post, with_kwargs=True),
    ]
    try:
        model(ids)
    finally:
        for h in handles:
            h.remove()
    return seen["in"], seen["out"]


def _layer_sees_the_future(model, ids, layer) -> torch.Tensor:
    """[L - 1] bool: does decoder layer ``layer``'s output at each earlier position change when only
    the last position of its input changes (the last token edited, the rest of its input reset)?"""
    edited = ids.clone()
    edited[0, -1] = (ids[0, -1] + 1) % 100 + 3
    h_in, h_out = _layer_io(model, ids, layer)
    e_in, e_out = _layer_io(model, edited, layer, lambda h: torch.cat([h_in[:, :-1], h[:, -1:]], 1))
    assert not torch.equal(e_in[:, -1], h_in[:, -1]) and torch.equal(e_in[:, :-1], h_in[:, :-1])
    return (e_out - h_out)[0, :-1].abs().amax(-1) > 1e-6


@torch.no_grad()
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_conversion_makes_every_layer_see_the_future_at_every_position(family):
    """Layer by layer, every earlier position sees the last one. (End to end, one bidirectional
    layer is enough to carry a later token back, so a layer left causal would go unseen there.)"""
    model = make_bidirectional(tiny_model(family, num_hidden_layers=3))
    ids = random_ids(1, L)
    for layer in range(3):
        assert _layer_sees_the_future(model, ids, layer).all(), layer
    # The probe tells a causal layer apart: a causal mask planted on layer 1 only.
    causal = torch.ones(L, L, dtype=torch.bool).tril()[None, None]
    hook = model.model.layers[1].self_attn.register_forward_pre_hook(
        lambda module, args, kwargs: (args, {**kwargs, "attention_mask": causal}), with_kwargs=True
    )
    try:
        assert not _layer_sees_the_future(model, ids, 1).any()
        assert _layer_sees_the_future(model, ids, 2).all()
    finally:
        hook.remove()


@torch.no_grad()
@pytest.mark.parametrize("family", ["mistral", "gemma2", "gemma3_text"])
def test_sliding_windows_become_symmetric(family):
    # One sliding-window layer of width 3: position i sees keys j with |i - j| <= 3.
    overrides = {"num_hidden_layers": 1, "sliding_window": 3}
    if family != "mistral":
        overrides["layer_types"] = ["sliding_attention"]
    model = make_bidirectional(tiny_model(family, **overrides))
    ids = random_ids(1, 12)
    edited = ids.clone()
    edited[0, 6] = (ids[0, 6] + 1) % 100 + 3
    changed = (_logits(model, ids) - _logits(model, edited))[0].abs().amax(-1) > 1e-6
    assert changed[6 - 3 : 6 + 4].all(), changed
    assert not changed[: 6 - 3].any() and not changed[6 + 4 :].any(), changed


@torch.no_grad()
@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_equals_each_sequence_alone(family, shift):
    model = make_bidirectional(tiny_model(family))
    lengths = [7, 4]
    seqs = [random_ids(1, n, seed=n)[0] for n in lengths]
    alone = [denoiser_hidden(model, s[None], shift=shift)[0] for s in seqs]
    for side in ("left", "right"):
        ids = torch.full((2, max(lengths)), PAD_ID)
        mask = torch.zeros_like(ids)
        for row, s in enumerate(seqs):
            span = slice(max(lengths) - len(s), None) if side == "left" else slice(0, len(s))
            ids[row, span], mask[row, span] = s, 1
        hidden = denoiser_hidden(model, ids, mask, shift=shift)
        for row in range(len(seqs)):
            torch.testing.assert_close(hidden[row][mask[row].bool()], alone[row], atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_shift_moves_states_one_position_right():
    model = make_bidirectional(tiny_model("llama"))
    ids = random_ids(2, L)
    plain = denoiser_hidden(model, ids, shift=False)
    shifted = denoiser_hidden(model, ids, shift=True)
    torch.testing.assert_close(shifted[:, 1:], plain[:, :-1])
    torch.testing.assert_close(shifted[:, 0], plain[:, 0])  # Dream: position 0 keeps its own state


def test_unsupported_family_lists_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(ValueError) as err:
        make_bidirectional(model)
    assert "gpt2" in str(err.value)
    assert all(f in str(err.value) for f in SUPPORTED_FAMILIES)


@torch.no_grad()
def test_bidirectional_survives_save_and_reload(tmp_path):
    from transformers import AutoModelForCausalLM

    model = make_bidirectional(tiny_model("qwen3"))
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert reloaded.config.is_causal is False
    assert is_bidirectional(reloaded)


def test_anneal_progress():
    assert anneal_progress(0, 100) == 0.0
    assert anneal_progress(50, 100) == 0.5
    assert anneal_progress(500, 100) == 1.0
    assert anneal_progress(3, 0) == 1.0


def test_annealed_mask_goes_from_causal_to_full():
    pad = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    m0 = annealed_attention_mask(pad, 0.0)
    assert m0.shape == (2, 1, 6, 6)
    assert torch.equal(m0[1, 0], causal)
    assert not m0[0, 0, 3, :2].any()  # padding keys stay hidden
    assert m0.diagonal(dim1=-2, dim2=-1).all()  # no empty rows
    g = torch.Generator().manual_seed(0)
    half = annealed_attention_mask(torch.ones(1, 64, dtype=torch.long), 0.5, generator=g)[0, 0]
    assert half[causal.new_ones(64, 64).tril()].all()
    share = half[~torch.ones(64, 64, dtype=torch.bool).tril()].float().mean()
    assert 0.4 < share < 0.6
    assert annealed_attention_mask(pad, 1.0) is None


@torch.no_grad()
@pytest.mark.parametrize("family", FAMILIES)
def test_custom_4d_mask_path_for_each_family_and_backend(family):
    """The annealed 4D mask reaches every layer, in sdpa and eager: at progress 0 it reproduces
    the original causal model (sliding windows included), fully open it equals the converted
    model's own bidirectional path."""
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0]])
    ids = random_ids(2, 8).masked_fill(mask == 0, PAD_ID)
    real = mask.bool()
    backends = ["eager"] if family == "gemma2" else ["sdpa", "eager"]
    for backend in backends:
        causal = tiny_model(family, attn_implementation=backend)
        reference = denoiser_hidden(causal, ids, mask, shift=False)
        model = make_bidirectional(tiny_model(family, attn_implementation=backend))
        got = denoiser_hidden(model, ids, mask, shift=False, attention_bias=annealed_attention_mask(mask, 0.0))
        torch.testing.assert_close(got[real], reference[real], atol=2e-5, rtol=1e-4)

        # Windows wider than the sequence, so "open" means full attention on every layer.
        wide = make_bidirectional(tiny_model(family, attn_implementation=backend, sliding_window=64))
        open_mask = annealed_attention_mask(mask, 1.0 - 1e-9)
        got = denoiser_hidden(wide, ids, mask, shift=False, attention_bias=open_mask)
        torch.testing.assert_close(got[real], denoiser_hidden(wide, ids, mask, shift=False)[real], atol=2e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma3_text"])
def test_flash_attention_2_becomes_bidirectional(family):
    pytest.importorskip("flash_attn")
    model = tiny_model(family, attn_implementation="flash_attention_2").to("cuda", torch.bfloat16)
    assert not is_bidirectional(model)
    make_bidirectional(model)
    assert is_bidirectional(model)


@torch.no_grad()
@pytest.mark.parametrize("family", ["mistral", "gemma2", "gemma3_text"])
def test_annealed_mask_keeps_the_window_on_both_sides(family):
    """Half-way through annealing, a sliding-window layer sees exactly the annealed mask's keys
    that lie within the window (|i - j| < W): future keys beyond it stay hidden like past ones.
    One sliding layer, so position i's output changes with token e iff i may attend to e."""
    W, n = 3, 12
    overrides = {"num_hidden_layers": 1, "sliding_window": W}
    if family != "mistral":
        overrides["layer_types"] = ["sliding_attention"]
    ones = torch.ones(1, n, dtype=torch.long)
    allowed = annealed_attention_mask(ones, 0.5, generator=torch.Generator().manual_seed(1))
    pos = torch.arange(n)
    distance = (pos[:, None] - pos[None, :]).abs()
    for backend in ["eager"] if family == "gemma2" else ["sdpa", "eager"]:
        model = make_bidirectional(tiny_model(family, attn_implementation=backend, **overrides))
        ids = random_ids(1, n)
        base = denoiser_hidden(model, ids, ones, shift=False, attention_bias=allowed)[0]
        for e in (1, n - 2):  # an early token (seen by later queries), a late one (by earlier queries)
            edited = ids.clone()
            edited[0, e] = (ids[0, e] + 1) % 100 + 3
            got = denoiser_hidden(model, edited, ones, shift=False, attention_bias=allowed)[0]
            changed = (got - base).abs().amax(-1) > 1e-6
            sees = allowed[0, 0, :, e] & (distance[:, e] < W)
            # The draw opens keys beyond the window on this side: a one-sided window would show them.
            assert (allowed[0, 0, :, e] & (distance[:, e] >= W)).any()
            assert torch.equal(changed, sees), (backend, e, changed, sees)
