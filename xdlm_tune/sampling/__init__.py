"""Diffusion samplers (ancestral, confidence, xdlm) behind one batched ``generate``, with an
optional KV cache (cache.py) and confidence-threshold decoding."""

from .generate import SamplerStats, generate, model_logits_fn, top_p_filter
from .settings import CACHES, FINAL_STEPS, REFRESHES, SAMPLERS, SamplerSettings

__all__ = [
    "CACHES",
    "FINAL_STEPS",
    "REFRESHES",
    "SAMPLERS",
    "SamplerSettings",
    "SamplerStats",
    "generate",
    "model_logits_fn",
    "top_p_filter",
]
