"""One call from recipe fields to a trainable denoiser: load, convert, mask token, LoRA."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from xdlm_tune.model.bidirectional import make_bidirectional
from xdlm_tune.model.common import enable_checkpointing, unwrap
from xdlm_tune.model.load import load_base
from xdlm_tune.model.lora import attach_lora, log_parameter_counts, parameter_counts
from xdlm_tune.model.mask_token import setup_mask_token
from xdlm_tune.model.native import NATIVE_FAMILIES, default_shift

logger = logging.getLogger(__name__)


@dataclass
class PreparedModel:
    """A denoiser ready for training or sampling."""

    model: nn.Module  # a PeftModel when LoRA is attached
    tokenizer: PreTrainedTokenizerBase
    mask_id: int
    shift: bool  # hidden state at i-1 predicts token i
    kind: str  # "causal" (converted here) or "diffusion"
    family: str  # transformers model_type, e.g. "llama"
    parameter_counts: dict[str, int] = field(default_factory=dict)  # see lora.parameter_counts


def adapt_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    kind: str = "causal",
    quantization: str | None = None,
    mask_token: str | None = None,
    mask_id: int | None = None,
    shift: bool | None = None,
    lora: dict | None = None,
    gradient_checkpointing: bool = False,
) -> tuple[nn.Module, int, bool]:
    """The adaptation half of `prepare_model` on a loaded base: (model, mask id, shift).

    The same steps whether `model` holds real weights or is a meta-device skeleton of the real
    size (`xdlm-tune plan`): bidirectional attention and mask token (causal bases), the
    diffusion base's own mask and shift, LoRA with the trainable mask row, or checkpointing.
    """
    if kind == "causal":
        make_bidirectional(model)
        mask_id = setup_mask_token(model, tokenizer, mask_token, mask_id)
        shift = True if shift is None else shift
    else:
        mask_id = setup_mask_token(model, tokenizer, mask_token, mask_id, add_if_missing=False)
        if shift is None:
            shift = getattr(model.config, "xdlm_shift", None)
        if shift is None and getattr(model.config, "xdlm_source_model_type", None) in NATIVE_FAMILIES:
            shift = default_shift(model.config.xdlm_source_model_type)
        if shift is None:
            raise ValueError(
                "diffusion bases need `shift` set: false for LLaDA (token i predicted at i), "
                "true for Dream (predicted at i-1)"
            )
    # Recorded in config.json so that saved and exported models carry both facts.
    model.config.xdlm_shift = bool(shift)

    if lora is not None:
        model = attach_lora(model, mask_id=mask_id, **{"gradient_checkpointing": gradient_checkpointing, **lora})
    else:
        if quantization is not None:
            raise ValueError("a 4-bit (nf4) base cannot be fully fine-tuned; set a `lora` section for QLoRA")
        if gradient_checkpointing:
            enable_checkpointing(model)

    return model, mask_id, bool(shift)


def model_options(recipe) -> dict:
    """A recipe's model, adaptation, lora and checkpointing as the keywords `prepare_model` and the
    plan's `real_size_model` share: one mapping, so a plan builds exactly what training builds."""
    m, a = recipe.model, recipe.adaptation
    return dict(
        name_or_path=m.name_or_path,
        kind=m.kind,
        dtype=m.dtype,
        attn_implementation=m.attn_implementation,
        gguf_file=m.gguf_file,
        quantization=m.quantization,
        mask_token=a.mask_token,
        mask_id=a.mask_id,
        shift=a.shift,
        lora=recipe.lora.to_dict(),
        gradient_checkpointing=recipe.training.gradient_checkpointing,
    )


def prepare_model(
    name_or_path: str | os.PathLike = "smollm2-135m",
    *,
    kind: str = "causal",
    dtype: str | torch.dtype = "float32",
    attn_implementation: str = "sdpa",
    gguf_file: str | None = None,
    quantization: str | None = None,
    trust_remote_code: bool = False,
    mask_token: str | None = None,
    mask_id: int | None = None,
    shift: bool | None = None,
    lora: dict | None = None,
    gradient_checkpointing: bool = False,
    report: bool = True,
) -> PreparedModel:
    """Load a base and make it an XDLM denoiser.

    causal bases: bidirectional attention, mask token chosen or added, `shift` defaults to
        True (keeps the pretrained next-token head meaningful).
    diffusion bases: left as they are; the mask id comes from `mask_id`/`mask_token`, the
        tokenizer or config.mask_token_id (LLaDA 126336, Dream 151666). LLaDA and Dream load
        natively (model/native.py) and `shift` defaults to their convention (LLaDA False,
        Dream True); config.xdlm_shift (models this toolkit exported) comes before that; other
        diffusion bases need `shift` given.
    lora: keyword arguments of `attach_lora` (r, alpha, dropout, target_modules, use_rslora,
        use_dora, train_mask_row); None trains all weights (not possible on a 4-bit base).
    report: log the trainable-parameter line (what a training run wants to see; False when a model
        is loaded to be used, e.g. for evaluation or export).
    """
    model, tokenizer = load_base(
        name_or_path,
        kind=kind,
        dtype=dtype,
        attn_implementation=attn_implementation,
        gguf_file=gguf_file,
        quantization=quantization,
        trust_remote_code=trust_remote_code,
    )
    model, mask_id, shift = adapt_model(
        model,
        tokenizer,
        kind=kind,
        quantization=quantization,
        mask_token=mask_token,
        mask_id=mask_id,
        shift=shift,
        lora=lora,
        gradient_checkpointing=gradient_checkpointing,
    )
    family = unwrap(model).config.model_type
    counts = log_parameter_counts(model) if report else parameter_counts(model)
    # DEBUG: train's start line and eval's rows say it; at INFO it preceded the train summary as noise.
    logger.debug("prepared %s (%s base, family %s): mask id %d, shift %s", name_or_path, kind, family, mask_id, shift)
    return PreparedModel(
        model=model,
        tokenizer=tokenizer,
        mask_id=mask_id,
        shift=bool(shift),
        kind=kind,
        family=family,
        parameter_counts=counts,
    )
