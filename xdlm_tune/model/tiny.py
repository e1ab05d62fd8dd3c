"""Tiny random-weight models of every supported family and a byte-level tokenizer: the one home of
the stand-ins that the tests, `xdlm-tune train --dry-run` and `xdlm-tune demo --core` use.

    model = tiny_model("llama")                      # 2 layers, hidden 32, vocab 128, seeded weights
    config = tiny_config("mistral", sliding_window=3)  # any config field can be overridden
    tok = byte_tokenizer(mask_token="<|mdm_mask|>")  # <pad> <s> </s>, the 256 bytes, then the mask
    save_native_layout(model, path, "llada", mask_token_id=tok.mask_token_id)  # LLaDA's own layout
    save_remote_stand_in(path, tok)                  # its own modeling file, LLaDA's strict forward

The configs are the real transformers config classes of each family with their own field names;
only the sizes are tiny. Nothing here touches the network, and two calls give the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

from xdlm_tune.model.bidirectional import SUPPORTED_FAMILIES

FAMILIES = SUPPORTED_FAMILIES
VOCAB = 128
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
MAX_POSITIONS = 256

# What sets each family apart beyond its model_type; the sizes come from tiny_config's arguments.
_FAMILY = {
    "llama": dict(tie_word_embeddings=False),
    "qwen2": dict(tie_word_embeddings=True),  # as the small Qwen2 checkpoints
    "qwen3": dict(tie_word_embeddings=False),
    "mistral": dict(tie_word_embeddings=False),
    "gemma2": dict(
        tie_word_embeddings=True,
        layer_types=["sliding_attention", "full_attention"],
        final_logit_softcapping=30.0,
    ),
    "gemma3_text": dict(tie_word_embeddings=True, layer_types=["sliding_attention", "full_attention"]),
}
_WINDOWED = ("mistral", "gemma2", "gemma3_text")
_GEMMA = ("gemma2", "gemma3_text")


def tiny_config(
    family: str,
    *,
    hidden_size: int = 32,
    vocab_size: int = VOCAB,
    sliding_window: int = 4,
    initializer_range: float = 0.2,
    **overrides,
) -> PretrainedConfig:
    """A config of `family` (a transformers model_type): 2 layers, 4 query and 2 key-value heads of
    hidden_size / 4, an MLP of 2 * hidden_size, 256 positions, <pad>=0 <s>=1 </s>=2.

    sliding_window: the window of the families that have one (small, so that short inputs cross it).
    initializer_range: 0.2 by default, larger than the usual 0.02 so that attention patterns
    visibly change the logits. `overrides` are any other fields of the family's config.
    """
    if family not in _FAMILY:
        raise ValueError(f"unknown tiny family {family!r}; choose from {FAMILIES}")
    head_dim = hidden_size // 4
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        initializer_range=initializer_range,
        **_FAMILY[family],
    )
    if family in _WINDOWED:
        fields["sliding_window"] = sliding_window
    if family in _GEMMA:
        fields["query_pre_attn_scalar"] = head_dim
    return AutoConfig.for_model(family, **{**fields, **overrides})


def default_attn(family: str) -> str:
    """sdpa everywhere except Gemma 2, which transformers only runs with eager attention."""
    return "eager" if family == "gemma2" else "sdpa"


def tiny_model(family: str, *, attn_implementation: str | None = None, seed: int = 0, **config) -> PreTrainedModel:
    """A float32 causal LM of `family` in eval mode, weights seeded by `seed`; `config`: tiny_config's arguments."""
    cfg = tiny_config(family, **config)
    with torch.random.fork_rng():  # the caller's random stream is left where it was
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(
            cfg, attn_implementation=attn_implementation or default_attn(family), dtype=torch.float32
        )
    return model.eval()


def byte_tokenizer(extra_special: list[str] = (), mask_token: str | None = None) -> PreTrainedTokenizerFast:
    """<pad>=0, <s>=1, </s>=2, the 256 bytes (one token each: any text encodes exactly), then
    `extra_special` and last `mask_token` (registered as the mask token). No BOS/EOS is added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>"])}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    extra = [s for s in extra_special if s != mask_token]
    if extra:
        tok.add_special_tokens({"additional_special_tokens": extra})
    if mask_token is not None:
        tok.add_special_tokens({"mask_token": mask_token})
    return tok


def save_native_layout(model: PreTrainedModel, path: str | Path, family: str, *, mask_token_id: int) -> Path:
    """Save a tiny Llama as an LLaDA checkpoint (family "llada": its config.json fields and parameter
    names) or a tiny Qwen2 as a Dream one ("Dream": Qwen2's names under Dream's model_type and
    remote classes), as the Hub models lay theirs out, without their modeling code."""
    from xdlm_tune.model.native import save_llada_format

    path = Path(path)
    if family == "llada":
        return save_llada_format(model, path, mask_token_id=mask_token_id)
    if family != "Dream":
        raise ValueError(f"unknown native diffusion family {family!r}; choose 'llada' or 'Dream'")
    model.save_pretrained(path)
    raw = json.loads((path / "config.json").read_text())
    raw.update(
        model_type="Dream",
        architectures=["DreamModel"],
        mask_token_id=mask_token_id,
        auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    )
    (path / "config.json").write_text(json.dumps(raw, indent=2))
    return path


def save_remote_stand_in(path: str | Path, tokenizer: PreTrainedTokenizerFast, *, seed: int = 0) -> Path:
    """Save a tiny bidirectional denoiser with its own modeling file (modeling_xdlm_standin.py,
    copied beside the weights; config.json's auto_map names it for AutoConfig and
    AutoModelForCausalLM) and `tokenizer`: loaded with trust_remote_code=True, its forward has
    LLaDA's original strict signature."""
    from xdlm_tune.model import modeling_xdlm_standin as remote

    # The auto_map entries save_pretrained writes into config.json, and the copied modeling file.
    remote.XdlmStandInConfig.register_for_auto_class()
    remote.XdlmStandInModel.register_for_auto_class("AutoModelForCausalLM")
    config = remote.XdlmStandInConfig(
        vocab_size=len(tokenizer),
        max_positions=MAX_POSITIONS,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = remote.XdlmStandInModel(config)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
