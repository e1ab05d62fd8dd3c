"""Diffusion samplers (ancestral, confidence, xdlm) behind one batched ``generate``."""
from .generate import SAMPLERS, generate, model_logits_fn, top_p_filter

__all__ = ["SAMPLERS", "generate", "model_logits_fn", "top_p_filter"]
