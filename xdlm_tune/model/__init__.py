"""Model adaptation: load a pretrained LLM and make it a bidirectional XDLM denoiser with LoRA.

prepared = prepare_model("smollm2-135m", lora={"r": 16})
hidden = denoiser_hidden(prepared.model, ids, mask, shift=prepared.shift)   # [B, L, H]
weight, bias, softcap = output_projection(prepared.model)                  # [V, H], ...
"""

from xdlm_tune.model.bidirectional import (
    SUPPORTED_FAMILIES,
    anneal_progress,
    annealed_attention_mask,
    is_bidirectional,
    make_bidirectional,
)
from xdlm_tune.model.common import unwrap
from xdlm_tune.model.denoiser import denoiser_hidden, output_projection, position_ids_from_mask, shift_hidden
from xdlm_tune.model.load import EMBEDDED_MODELS, cache_dir, embedded_model_dir, load_base
from xdlm_tune.model.lora import attach_lora, parameter_counts
from xdlm_tune.model.mask_token import DEFAULT_MASK_TOKEN, check_mask_id, setup_mask_token
from xdlm_tune.model.prepare import PreparedModel, prepare_model

__all__ = [
    "DEFAULT_MASK_TOKEN",
    "EMBEDDED_MODELS",
    "SUPPORTED_FAMILIES",
    "PreparedModel",
    "anneal_progress",
    "annealed_attention_mask",
    "attach_lora",
    "cache_dir",
    "check_mask_id",
    "denoiser_hidden",
    "embedded_model_dir",
    "is_bidirectional",
    "load_base",
    "make_bidirectional",
    "output_projection",
    "parameter_counts",
    "position_ids_from_mask",
    "prepare_model",
    "setup_mask_token",
    "shift_hidden",
    "unwrap",
]
