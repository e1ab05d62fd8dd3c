"""Tiny random-weight models and tokenizers of every supported family, for fast CPU tests.

    tiny_model("llama")                      # 2 layers, hidden 32, vocab 128
    tiny_model("mistral", sliding_window=3)  # config fields can be overridden
    tiny_tokenizer(reserved=True)            # a tokenizer with <|reserved_special_token_*|>

Nothing here touches the network. Weights are seeded, so two calls give the same model.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text")

VOCAB = 128
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=256,
    pad_token_id=PAD_ID,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    # Larger than the usual 0.02 so that attention patterns visibly change the logits.
    initializer_range=0.2,
)

# Per-family settings: sliding windows are small so that a 12-token test crosses them.
_FAMILY = {
    "llama": dict(tie_word_embeddings=False),
    "qwen2": dict(tie_word_embeddings=True),
    "qwen3": dict(tie_word_embeddings=False),
    "mistral": dict(tie_word_embeddings=False, sliding_window=4),
    # Gemma 2 runs on eager only (transformers refuses sdpa for it): see `default_attn`.
    "gemma2": dict(
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        final_logit_softcapping=30.0,
        query_pre_attn_scalar=8,
    ),
    "gemma3_text": dict(
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        query_pre_attn_scalar=8,
    ),
}


def tiny_config(family: str, **overrides):
    """A small random config of `family` (a transformers `model_type`)."""
    if family not in _FAMILY:
        raise ValueError(f"unknown tiny family {family!r}; choose from {FAMILIES}")
    kwargs = {**_COMMON, **_FAMILY[family], **overrides}
    return AutoConfig.for_model(family, **kwargs)


def default_attn(family: str) -> str:
    """sdpa everywhere except Gemma 2, which transformers only runs with eager attention."""
    return "eager" if family == "gemma2" else "sdpa"


def tiny_model(family: str, *, attn_implementation: str | None = None, seed: int = 0, **overrides) -> PreTrainedModel:
    """A float32 tiny causal LM of `family` in eval mode; `overrides` go into its config."""
    config = tiny_config(family, **overrides)
    attn_implementation = attn_implementation or default_attn(family)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    return model.eval()


def tiny_tokenizer(*, reserved: bool = False, vocab_size: int = VOCAB - 8) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer: <pad>=0, <s>=1, </s>=2, then words w3, w4, ...

    With `reserved=True` it also has `<|reserved_special_token_0..3|>` (as Llama 3 does),
    which `setup_mask_token` should reuse. The default size leaves spare embedding rows in
    `tiny_model` (vocab 128), as real checkpoints often do.
    """
    specials = ["<pad>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for i in range(len(specials), vocab_size - (4 if reserved else 0)):
        vocab[f"w{i}"] = i
    if reserved:
        for j in range(4):
            vocab[f"<|reserved_special_token_{j}|>"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    if reserved:
        tok.add_special_tokens({"additional_special_tokens": [f"<|reserved_special_token_{j}|>" for j in range(4)]})
    return tok


def random_ids(batch: int, length: int, *, low: int = 3, high: int = VOCAB - 8, seed: int = 0) -> torch.Tensor:
    """Random token ids [B, L] that avoid the special ids (pad/bos/eos)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (batch, length), generator=g)


def save_tiny_model(path, family: str = "llama", **overrides):
    """Save `tiny_model(family, **overrides)` and `tiny_tokenizer()` as a local model folder (like a Hub checkout)."""
    tiny_model(family, **overrides).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
