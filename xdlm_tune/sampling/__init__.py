"""Diffusion samplers (ancestral, confidence, xdlm) behind one batched ``generate``, with an
optional KV cache (cache.py) and confidence-threshold decoding. Their settings are
``SamplerSettings`` (xdlm_tune/config/sampler.py, re-exported here)."""

from ..config.sampler import CACHES, FINAL_STEPS, REFRESHES, SAMPLERS, SamplerSettings
from .generate import SamplerStats, generate, model_logits_fn, top_p_filter

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
