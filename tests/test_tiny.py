"""The tiny-model factory (xdlm_tune/model/tiny.py) that the tests, the dry run and the core demo
share: real config classes per family, the byte tokenizer, and the remote-code stand-in whose
modeling file is a module of the library, copied into the checkpoint and loaded as remote code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import CONFIG_MAPPING, AutoModelForCausalLM

from xdlm_tune.model import modeling_xdlm_standin
from xdlm_tune.model.tiny import FAMILIES, byte_tokenizer, save_remote_stand_in, tiny_config, tiny_model


def test_each_family_is_its_transformers_config_with_tiny_sizes():
    for family in FAMILIES:
        config = tiny_config(family)
        assert type(config) is CONFIG_MAPPING[family], family
        assert (config.hidden_size, config.head_dim, config.num_hidden_layers, config.vocab_size) == (32, 8, 2, 128)
        if family in ("mistral", "gemma2", "gemma3_text"):
            assert config.sliding_window == 4, family
    wide = tiny_config("gemma2", hidden_size=64, sliding_window=16)
    assert (wide.head_dim, wide.query_pre_attn_scalar, wide.intermediate_size, wide.sliding_window) == (16, 16, 128, 16)
    assert not hasattr(tiny_config("llama"), "sliding_window")  # Llama has none: none is invented
    with pytest.raises(ValueError, match="unknown tiny family 'gpt2'"):
        tiny_config("gpt2")


def test_tiny_models_are_seeded_and_leave_the_caller_s_random_stream_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b = tiny_model("qwen3"), tiny_model("qwen3")
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    c = tiny_model("qwen3", seed=1)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_the_byte_tokenizer_has_one_token_per_byte_and_the_mask_last():
    tok = byte_tokenizer(extra_special=["<|x|>"], mask_token="<|mdm_mask|>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<|x|>") == 259 and tok.mask_token_id == 260 and len(tok) == 261
    text = "déjà vu → ∑ 🙂\n\tx = 1\r\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8")) and all(3 <= i < 259 for i in ids)  # no BOS / EOS added
    assert tok.decode(ids) == text
    ascii_ids = tok("".join(map(chr, range(128))), add_special_tokens=False)["input_ids"]
    assert len(set(ascii_ids)) == 128  # distinct bytes, distinct ids


def test_the_remote_stand_in_ships_its_modeling_file_and_loads_as_remote_code(tmp_path):
    tok = byte_tokenizer(mask_token="<|mdm_mask|>")
    path = save_remote_stand_in(tmp_path / "standin", tok)
    copied = path / "modeling_xdlm_standin.py"
    assert copied.read_bytes() == Path(modeling_xdlm_standin.__file__).read_bytes()
    assert json.loads((path / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "modeling_xdlm_standin.XdlmStandInConfig",
        "AutoModelForCausalLM": "modeling_xdlm_standin.XdlmStandInModel",
    }
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    assert type(model).__module__ != modeling_xdlm_standin.__name__  # the checkpoint's copy, not the library's
    ids = torch.tensor([tok("def f(x):", add_special_tokens=False)["input_ids"]])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))
