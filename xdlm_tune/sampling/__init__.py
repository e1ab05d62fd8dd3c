"""Diffusion samplers (ancestral, confidence, xdlm) behind one batched ``generate``."""
from .generate import generate, model_logits_fn, top_p_filter
from .settings import FINAL_STEPS, SAMPLERS, SamplerSettings

__all__ = ["FINAL_STEPS", "SAMPLERS", "SamplerSettings", "generate", "model_logits_fn", "top_p_filter"]
