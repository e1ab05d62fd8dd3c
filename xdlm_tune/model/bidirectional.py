"""Bidirectional attention for causal bases, and causal -> full attention-mask annealing.

We use transformers' own switch, `config.is_causal = False`: its mask builders then make
bidirectional masks (padding still masked) and the sdpa / flash-attention kernels get
`is_causal=False`. Sliding-window layers (Mistral, Gemma 2/3) become *symmetric* windows:
a token sees the keys within `sliding_window` positions on either side (|i - j| <= W under
sdpa/eager, < W under flash-attention). The switch is stored in config.json, so a saved
model reloads bidirectional. (Gemma 3's own `use_bidirectional_attention` is not used: it
acts only at construction, halves the window, and always materialises the mask.)
"""

from __future__ import annotations

import torch
from torch import nn

from xdlm_tune.model.common import unwrap

# transformers `model_type`s whose mask path we have read and test (tests/test_model_bidirectional.py).
SUPPORTED_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text")
# Attention backends that honour `is_causal=False`; others (e.g. flex) are not verified.
BIDIRECTIONAL_BACKENDS = ("sdpa", "eager", "flash_attention_2")


def attn_backend(model: nn.Module) -> str:
    """The attention implementation the model runs ("sdpa", "eager", ...)."""
    return unwrap(model).config._attn_implementation


def make_bidirectional(model: nn.Module) -> nn.Module:
    """Switch a causal LM of a supported family to full (bidirectional) attention, in place."""
    config = unwrap(model).config
    family = config.model_type
    if family not in SUPPORTED_FAMILIES:
        hint = " (load the text-only Gemma 3 checkpoint)" if family == "gemma3" else ""
        raise ValueError(
            f"cannot make model_type {family!r} bidirectional{hint}; supported families: "
            f"{', '.join(SUPPORTED_FAMILIES)}. Already-bidirectional bases (LLaDA, Dream) load "
            "with kind='diffusion'."
        )
    backend = attn_backend(model)
    if backend not in BIDIRECTIONAL_BACKENDS:
        raise ValueError(
            f"attn_implementation={backend!r} is not verified to honour bidirectional attention; "
            f"use one of {BIDIRECTIONAL_BACKENDS}"
        )
    config.is_causal = False
    return model


@torch.no_grad()
def is_bidirectional(model: nn.Module, *, length: int = 8) -> bool:
    """Probe: does changing the last token change the first position's output?

    A cheap end-to-end check (one forward on `length` tokens) that the attention really is
    bidirectional with the model's current backend, e.g. flash_attention_2 on a GPU.
    """
    hf = unwrap(model)
    device = hf.get_input_embeddings().weight.device
    vocab = hf.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)  # leaves the global RNG alone
    ids = torch.randint(vocab // 4, vocab // 2, (1, length), generator=g).to(device)
    other = ids.clone()
    other[0, -1] = (ids[0, -1] + 1) % vocab
    was_training = hf.training
    hf.eval()
    try:
        first = [hf(x, use_cache=False).logits[0, 0].float() for x in (ids, other)]
    finally:
        hf.train(was_training)
    return not torch.equal(first[0], first[1])


def anneal_progress(step: int, anneal_steps: int) -> float:
    """Share of the way from causal (0.0) to full attention (1.0) at training `step`."""
    if anneal_steps <= 0:
        return 1.0
    return min(1.0, max(0.0, step / anneal_steps))


def annealed_attention_mask(
    attention_mask: torch.Tensor,
    progress: float,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor | None:
    """Boolean 4D mask [B, 1, L, L] (True = may attend) between causal and full attention.

    As in DiffuLLaMA: query i always sees keys j <= i, and each future key with probability
    `progress` (one draw per step, shared across the batch). Padding keys (`attention_mask`
    [B, L] == 0) stay hidden, but every token sees itself so that no row is empty. Returns
    None once `progress >= 1`: plain bidirectional attention, which keeps the fast kernels.
    Pass the result to `denoiser_hidden(..., attention_bias=...)`.
    """
    if progress >= 1.0:
        return None
    batch, length = attention_mask.shape
    device = attention_mask.device
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    noise = torch.rand(length, length, generator=generator, device=generator.device if generator else device)
    allowed = causal | (noise.to(device) < progress)  # [L, L]
    allowed = allowed[None, None] & attention_mask.bool()[:, None, None, :]  # [B, 1, L, L]
    return allowed | torch.eye(length, dtype=torch.bool, device=device)


def attention_mask_for_model(model: nn.Module, allowed: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
    """Turn a boolean [B, 1, L, L] mask into what the model's layers take as `attention_mask`.

    Sliding-window layers keep their window: keys with |i - j| < sliding_window (at progress
    0 this is exactly the pretrained causal window). Models that mix full and sliding layers
    (Gemma 2/3, Qwen with sliding layers) get a dict keyed by layer type, which their forward
    accepts as prepared masks; Mistral slides on every layer.
    sdpa takes booleans as they are; eager *adds* the mask to the scores, so it gets an
    additive float32 mask (fine for any compute dtype: eager's softmax runs in float32).
    flash_attention_2 takes no 4D mask at all.
    """
    backend = attn_backend(model)
    if backend not in ("sdpa", "eager"):
        raise ValueError(
            "a custom 4D attention mask (attention annealing) needs attn_implementation sdpa or "
            f"eager, not {backend!r}; disable annealing or change attn_implementation"
        )
    config = unwrap(model).config
    window = getattr(config, "sliding_window", None)
    layer_types = set(getattr(config, "layer_types", None) or [])
    masks = {"full_attention": allowed}
    if window is not None and (not layer_types or "sliding_attention" in layer_types):
        pos = torch.arange(allowed.shape[-1], device=allowed.device)
        masks["sliding_attention"] = allowed & ((pos[:, None] - pos[None, :]).abs() < window)
    if backend == "eager":
        masks = {
            k: torch.zeros(m.shape, device=m.device).masked_fill(~m, torch.finfo(torch.float32).min)
            for k, m in masks.items()
        }
    if not layer_types:  # one mask for every layer: Llama, or Mistral (all sliding)
        return masks.get("sliding_attention", masks["full_attention"])
    if layer_types == {"full_attention"}:
        return masks["full_attention"]
    return {t: masks[t] for t in layer_types}
