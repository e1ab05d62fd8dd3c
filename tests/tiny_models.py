"""Test helpers around the library's tiny models (xdlm_tune/model/tiny.py), for fast CPU tests.

    tiny_model("llama")                      # 2 layers, hidden 32, vocab 128
    tiny_model("mistral", sliding_window=3)  # config fields can be overridden
    tiny_tokenizer(reserved=True)            # a word-level tokenizer with <|reserved_special_token_*|>

Nothing here touches the network. Weights are seeded, so two calls give the same model.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from xdlm_tune.model.tiny import BOS_ID, EOS_ID, FAMILIES, PAD_ID, VOCAB, default_attn, tiny_config, tiny_model

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "FAMILIES",
    "PAD_ID",
    "VOCAB",
    "default_attn",
    "random_ids",
    "save_tiny_model",
    "tiny_config",
    "tiny_model",
    "tiny_tokenizer",
]


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
