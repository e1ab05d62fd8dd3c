"""LoRA / QLoRA adapters with a trainable mask-token row, and trainable-parameter accounting."""

from __future__ import annotations

import logging

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn

from xdlm_tune.errors import UserError
from xdlm_tune.model.common import embeddings_tied, enable_checkpointing, module_name, unwrap

logger = logging.getLogger(__name__)


def attach_lora(
    model: nn.Module,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
    use_rslora: bool = False,
    use_dora: bool = False,
    mask_id: int | None = None,
    train_mask_row: bool = True,
    gradient_checkpointing: bool = False,
) -> PeftModel:
    """Wrap `model` in PEFT LoRA; only adapters (and the mask row) train.

    The mask token's embedding row (and its output row when the head is untied) trains
    through PEFT `trainable_token_indices`, so the rest of the embedding matrix stays frozen.
    "all-linear" targets every linear layer except the output head. 4-bit (QLoRA) bases go
    through `prepare_model_for_kbit_training` first.
    """
    hf = unwrap(model)
    if isinstance(model, PeftModel):
        raise ValueError("the model already carries PEFT adapters")
    head = hf.get_output_embeddings()
    head_name = module_name(hf, head) if head is not None else None
    if (
        head_name
        and not isinstance(target_modules, str)
        and any(head_name == t or head_name.endswith("." + t) for t in target_modules)
    ):
        raise ValueError(
            f"target_modules must not include the output head {head_name!r}: the fused loss reads "
            "its weight directly. The mask row trains through train_mask_row instead."
        )

    check_target_modules(hf, target_modules, head_name)

    if getattr(hf, "is_loaded_in_4bit", False) or getattr(hf, "is_loaded_in_8bit", False):
        # Casts the remaining float parameters (norms, embeddings) to float32 for stable training.
        hf = prepare_model_for_kbit_training(hf, use_gradient_checkpointing=False)
    if gradient_checkpointing:
        enable_checkpointing(hf)

    trainable_tokens = None
    if train_mask_row:
        if mask_id is None:
            mask_id = getattr(hf.config, "mask_token_id", None)
        if mask_id is None:
            raise ValueError("train_mask_row=True needs mask_id (call setup_mask_token first)")
        if head is None or embeddings_tied(hf):
            # One row; PEFT ties the head's copy to it.
            trainable_tokens = [mask_id]
        else:
            embed_name = module_name(hf, hf.get_input_embeddings())
            trainable_tokens = {embed_name: [mask_id], head_name: [mask_id]}

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        use_rslora=use_rslora,
        use_dora=use_dora,
        trainable_token_indices=trainable_tokens,
        bias="none",
    )
    # No task_type: the plain PeftModel wraps remote-code diffusion bases too, and we never
    # use PEFT's generation helpers.
    from ..console import peft_wrapping

    with peft_wrapping():
        return get_peft_model(hf, config)


def lora_targets(model: nn.Module, head_name: str | None = None) -> list[str]:
    """The short names of the linear layers LoRA can attach to (e.g. q_proj, down_proj), the head excluded."""
    names = set()
    for name, module in model.named_modules():
        if name and name != head_name and _is_linear(module):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


class TargetModulesError(UserError, ValueError):
    """lora.target_modules names a module the model does not have."""


def check_target_modules(model: nn.Module, target_modules: str | list[str], head_name: str | None = None) -> None:
    """Refuse a target_modules list with an entry that matches no linear layer (PEFT would
    silently skip it, or fail only when none match), naming the layers there are."""
    if isinstance(target_modules, str):
        return  # "all-linear" or a regex: PEFT's own matching
    names = [name for name, _ in model.named_modules() if name]
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        available = lora_targets(model, head_name)
        raise TargetModulesError(
            f"lora.target_modules {list(target_modules)}: {', '.join(map(repr, missing))} match no module of "
            f"{type(model).__name__}. Its linear layers are: {', '.join(available)}; set lora.target_modules "
            "to some of those (or all-linear)"
        )


def _is_linear(module: nn.Module) -> bool:
    # bitsandbytes' Linear4bit subclasses nn.Linear; Conv1D (GPT-2 style) is linear too.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters split into LoRA adapters, token rows and others, plus the total.

    4-bit weights are stored packed two per byte; they count as their unpacked size.
    """
    counts = {"lora": 0, "token_rows": 0, "other": 0, "trainable": 0, "total": 0}
    for name, param in model.named_parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2 * getattr(param, "quant_storage", torch.uint8).itemsize
        counts["total"] += n
        if not param.requires_grad:
            continue
        counts["trainable"] += n
        if "lora_" in name:
            counts["lora"] += n
        elif "trainable_tokens" in name:
            counts["token_rows"] += n
        else:
            counts["other"] += n
    return counts


def log_parameter_counts(model: nn.Module) -> dict[str, int]:
    """Log (INFO) the trainable-parameter report and return it."""
    c = parameter_counts(model)
    logger.info(
        "trainable parameters: %s of %s (%.4f%%): LoRA %s, mask/token rows %s, other %s",
        f"{c['trainable']:,}",
        f"{c['total']:,}",
        100 * c["trainable"] / max(c["total"], 1),
        f"{c['lora']:,}",
        f"{c['token_rows']:,}",
        f"{c['other']:,}",
    )
    return c
