"""LLaDA and Dream as native bidirectional Llama / Qwen2 models: reference logits of the original
code, padding invariance, the config mapping and its refusals, tokenizers without shipped code,
bf16 and nf4 loading."""

from __future__ import annotations

import json

import pytest
import torch
from native_bases import BOS, EOS, MASK_ID, N_BPE, copy_fixture, dream_base, fixture, llada_base, slow_bpe_ids

from xdlm_tune.cli import main as cli_main
from xdlm_tune.errors import explain
from xdlm_tune.model import denoiser_hidden, output_projection, position_ids_from_mask, prepare_model
from xdlm_tune.model.native import (
    NativeConfigError,
    load_native,
    load_tokenizer,
    native_config,
    read_config_dict,
)

FAMILIES = {"llada-a": ("LlamaForCausalLM", False), "dream-a": ("Qwen2ForCausalLM", True)}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def native():
    """Both fixtures loaded natively (float32) with their reference.pt."""
    out = {}
    for name in FAMILIES:
        path = fixture(name)
        out[name] = (
            load_native(path, read_config_dict(path), dtype=torch.float32).eval(),
            torch.load(path / "reference.pt", weights_only=True),
        )
    return out


@pytest.mark.parametrize("name", FAMILIES)
def test_native_load_reproduces_the_original_codes_logits(native, name):
    """Checked against logits the ORIGINAL modeling_llada.py / modeling_dream.py computed on these
    checkpoints under transformers 4.46.3 (shared/fixtures/*/reference.pt, written by that code)."""
    model, ref = native[name]
    assert type(model).__name__ == FAMILIES[name][0] and model.config.is_causal is False
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"]).logits
    torch.testing.assert_close(logits, ref["logits"], atol=1e-5, rtol=0)
    # Not a trivially-passing comparison: a causal model gives other logits on the same weights.
    model.config.is_causal = True
    try:
        with torch.no_grad():
            causal = model(input_ids=ref["input_ids"]).logits
    finally:
        model.config.is_causal = False
    assert (causal - ref["logits"]).abs().max() > 1e-2


def test_dream_right_padded_logits_match_the_original_on_real_tokens(native):
    """Checked against `logits_masked` of the original Dream code with its own 4D boolean
    padding mask (rows 1 and 2 right-padded); only real tokens are compared, as its README says."""
    model, ref = native["dream-a"]
    mask = ref["attention_mask"]
    assert (mask == 0).any()
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"], attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(logits[real], ref["logits_masked"][real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_padded_batch_equals_each_sequence_alone(native, name):
    """Checked against each sequence run alone (no padding) through the same model: left padding
    with position_ids from the mask, and right padding, change nothing on real tokens. (The
    original LLaDA code turns causal under a padding mask, so it has no such reference.)"""
    model, ref = native[name]
    ids = ref["input_ids"]
    lengths = [16, 11, 6]
    with torch.no_grad():
        alone = [model(input_ids=ids[i : i + 1, :n]).logits[0] for i, n in enumerate(lengths)]
        for side in ("left", "right"):
            batch = torch.full_like(ids, 2)
            mask = torch.zeros_like(ids)
            for i, n in enumerate(lengths):
                sl = slice(16 - n, 16) if side == "left" else slice(0, n)
                batch[i, sl], mask[i, sl] = ids[i, :n], 1
            out = model(input_ids=batch, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
            for i, n in enumerate(lengths):
                sl = slice(16 - n, 16) if side == "left" else slice(0, n)
                torch.testing.assert_close(out[i, sl], alone[i], atol=1e-5, rtol=1e-5, msg=f"{side} row {i}")
            # The denoiser's hidden states (the training path) agree with the logits.
            weight, _, _ = output_projection(model)
            hidden = denoiser_hidden(model, batch, mask, shift=False)
            torch.testing.assert_close((hidden @ weight.T)[mask.bool()], out[mask.bool()], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "make,cls,shift", [(llada_base, "LlamaForCausalLM", False), (dream_base, "Qwen2ForCausalLM", True)]
)
def test_prepare_model_picks_the_native_path_from_config_json_alone(tmp_path, make, cls, shift):
    """Checked on folders laid out as the Hub repos are, minus every .py file: no trust_remote_code,
    mask id from config.mask_token_id, the family's shift, which a recipe can override."""
    path = make(tmp_path)
    assert not list(path.glob("*.py")) and "auto_map" in json.loads((path / "config.json").read_text())
    prepared = prepare_model(path, kind="diffusion", lora={"r": 4})
    base = prepared.model.get_base_model()
    assert type(base).__name__ == cls and base.config.is_causal is False
    assert (prepared.kind, prepared.mask_id, prepared.shift) == ("diffusion", MASK_ID, shift)
    assert prepared.parameter_counts["lora"] > 0 and prepared.parameter_counts["token_rows"] == 2 * 64
    assert base.get_input_embeddings().weight.shape[0] == 1024  # vocabulary untouched
    other = prepare_model(path, kind="diffusion", shift=not shift, mask_id=MASK_ID)
    assert other.shift is (not shift)
    # A recipe written for the remote code (trust_remote_code: true) still takes the native path.
    legacy = prepare_model(path, kind="diffusion", trust_remote_code=True)
    assert type(legacy.model).__name__ == cls
    with pytest.raises(ValueError, match="already a diffusion model.*kind='diffusion'"):
        prepare_model(path, kind="causal")


LLADA_REFUSED = [
    ("block_type", "sequential"),
    ("activation_type", "gelu"),
    ("rope", False),
    ("alibi", True),
    ("layer_norm_type", "default"),
    ("include_bias", True),
    ("include_qkv_bias", True),
    ("attention_layer_norm", True),
    ("block_group_size", 2),
    ("scale_logits", True),
    ("input_emb_norm", True),
    ("bias_for_layer_norm", True),
    ("residual_dropout", 0.1),
    ("layer_norm_with_affine", False),
]


@pytest.mark.parametrize("field,value", LLADA_REFUSED)
def test_unsupported_llada_configs_are_refused_with_the_field_named(field, value):
    """Each option of the original LLaDA config that changes the computation away from Llama's
    (read from modeling_llada.py / configuration_llada.py) is refused by name."""
    raw = read_config_dict(fixture("llada-a"))
    native_config(raw)  # the fixture itself maps
    with pytest.raises(NativeConfigError, match=rf"{field}={value!r}"):
        native_config({**raw, field: value})


def test_llada_config_mapping():
    """The issue's mapping, field by field, and the embedding rows as vocab_size."""
    raw = {
        **read_config_dict(fixture("llada-a")),
        "vocab_size": 1000,
        "weight_tying": True,
        "n_kv_heads": None,
        "multi_query_attention": True,
    }
    c = native_config(raw)
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.num_hidden_layers) == (64, 4, 1, 2)
    assert (c.intermediate_size, c.vocab_size, c.tie_word_embeddings, c.rms_norm_eps) == (96, 1024, True, 1e-5)
    assert c.rope_parameters["rope_theta"] == 5e5 and c.mask_token_id == MASK_ID and c.is_causal is False


def test_a_refused_config_is_a_clear_error_through_prepare_model(tmp_path):
    path = copy_fixture("llada-a", tmp_path)
    raw = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**raw, "block_type": "sequential"}))
    with pytest.raises(ValueError, match="block_type='sequential' is not supported natively"):
        prepare_model(path, kind="diffusion")


def test_dream_tokenizer_loads_without_its_code_and_gives_dreamtokenizers_ids(tmp_path):
    """Checked against DreamTokenizer's algorithm (tokenization_dream.py: NFC, Qwen2's regex,
    byte-level BPE by merge rank, special tokens split first) written out independently in
    native_bases.slow_bpe_ids, on the same vocab.json / merges.txt."""
    path = dream_base(tmp_path)
    tok = load_tokenizer(path, "Dream")
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert (tok.eos_token, tok.bos_token, tok.pad_token, tok.mask_token) == (EOS, BOS, EOS, "<|mask|>")
    assert (tok.eos_token_id, tok.bos_token_id, tok.mask_token_id) == (N_BPE, N_BPE + 1, MASK_ID)
    specials = {EOS: N_BPE, BOS: N_BPE + 1, "<|mask|>": MASK_ID}
    for text in [
        "def f(x):\n    return x + 1\n",
        "Héllo  wörld\r\n\tcafé 12345 <|mask|><|endoftext|> it's",
        " leading  spaces\n\n\nend",
        "e\u0301 (decomposed) 你好",
        "assert add(2, 3) == 5\r\n",
    ]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == slow_bpe_ids(path, text, specials), text
        assert tok.decode(ids) == __import__("unicodedata").normalize("NFC", text)


@pytest.mark.parametrize("cls_name", ["PreTrainedTokenizerFast", "LLaDATokenizer"])
def test_llada_tokenizer_json_loads_as_a_fast_tokenizer(tmp_path, cls_name):
    """Checked against `tokenizers` reading the same tokenizer.json directly; a custom class name
    (with auto_map) falls back to it too, and nothing asks for remote code."""
    from tokenizers import Tokenizer

    path = llada_base(tmp_path, tokenizer_class=cls_name)
    tok = load_tokenizer(path, "llada")
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    for text in ["def f(x):\n    return x + 1\n", "<|mdm_mask|> and <|endoftext|>"]:
        assert tok(text, add_special_tokens=False)["input_ids"] == raw.encode(text, add_special_tokens=False).ids
    assert (tok.eos_token_id, tok.bos_token_id, tok.convert_tokens_to_ids("<|mdm_mask|>")) == (
        N_BPE,
        N_BPE + 1,
        MASK_ID,
    )


def test_a_custom_tokenizer_without_tokenizer_json_is_a_clear_error(tmp_path):
    path = dream_base(tmp_path)
    with pytest.raises(ValueError, match="custom class 'DreamTokenizer'.*no tokenizer.json"):
        load_tokenizer(path, family=None)  # only Dream's class is known to be Qwen2's BPE


@pytest.mark.parametrize(
    "name, family, looked",
    [
        ("llada-a", "llada", "tokenizer_config.json, tokenizer.json"),
        ("dream-a", "Dream", "tokenizer_config.json, tokenizer.json, vocab.json, merges.txt"),
    ],
)
def test_a_folder_without_tokenizer_files_names_what_is_missing_and_the_fix(tmp_path, name, family, looked):
    path = copy_fixture(name, tmp_path)  # the original code's config.json and weights, no tokenizer files
    with pytest.raises(ValueError) as caught:
        load_tokenizer(path, family)
    msg = explain(caught.value)  # an expected failure: the CLI prints this paragraph, no traceback
    assert msg == str(caught.value) and msg.startswith(f"{path} holds no tokenizer")
    assert f"looked there for {looked} and found none of them" in msg and "custom class" not in msg
    assert "Fix: ship tokenizer.json" in msg and "tokenizer.save_pretrained(folder)" in msg


def test_eval_on_a_folder_without_tokenizer_files_is_one_paragraph(tmp_path, capsys):
    path = copy_fixture("llada-a", tmp_path)
    rc = cli_main(["eval", "--model", str(path), "--limit", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert err.startswith(f"xdlm-tune eval: {path} holds no tokenizer: looked there for tokenizer_config.json"), err


def test_bf16_load_keeps_the_weights_and_the_logits(native):
    """bf16 loading (the recipe's dtype) goes through the same renaming: weights equal the float32
    load rounded to bf16, logits within bf16 error of the reference."""
    path = fixture("llada-a")
    model = load_native(path, read_config_dict(path), dtype=torch.bfloat16).eval()
    full, ref = native["llada-a"]
    assert model.dtype == torch.bfloat16
    for (name, p), (_, q) in zip(model.named_parameters(), full.named_parameters()):
        assert torch.equal(p, q.to(torch.bfloat16)), name
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"]).logits.float()
    assert (logits - ref["logits"]).abs().max() < 0.05 * ref["logits"].abs().max()


def test_nf4_qlora_loads_and_trains_a_native_base(tmp_path):
    """QLoRA: the renamed weights are quantised to 4 bit like any Llama's, and a LoRA step trains."""
    pytest.importorskip("bitsandbytes")
    path = llada_base(tmp_path)
    prepared = prepare_model(path, kind="diffusion", quantization="nf4", lora={"r": 4})
    base = prepared.model.get_base_model()
    assert base.model.layers[0].self_attn.q_proj.base_layer.__class__.__name__ == "Linear4bit"
    ids = torch.randint(3, 900, (2, 8))
    weight, _, _ = output_projection(prepared.model)
    hidden = denoiser_hidden(prepared.model, ids, torch.ones_like(ids), shift=prepared.shift)
    loss = (hidden @ weight.T).logsumexp(-1).mean()
    loss.backward()
    grads = [p.grad for n, p in prepared.model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
