"""Small helpers shared by the model modules."""

from __future__ import annotations

from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel


def unwrap(model: nn.Module) -> PreTrainedModel:
    """The transformers model inside a PEFT wrapper (LoRA layers are injected in place, so
    calling the unwrapped model still runs them)."""
    if isinstance(model, PeftModel):
        return model.get_base_model()
    return model


def module_name(model: nn.Module, module: nn.Module) -> str:
    """Dotted name of `module` inside `model`."""
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def embeddings_tied(model: PreTrainedModel) -> bool:
    """Whether the output head shares its weight with the input embedding."""
    head = model.get_output_embeddings()
    if head is None:
        return True
    head_w, embed_w = head.weight, model.get_input_embeddings().weight
    if head_w is embed_w:
        return True
    if head_w.is_meta or embed_w.is_meta:  # meta tensors (a real-size plan) all have data_ptr 0
        return False
    return head_w.data_ptr() == embed_w.data_ptr()


def enable_checkpointing(model: PreTrainedModel) -> None:
    """Non-reentrant activation (gradient) checkpointing on every decoder layer.

    Non-reentrant checkpointing needs no `enable_input_require_grads` hook and works when
    only adapters require grad. transformers 5.23 renamed the method; 5.17 has the old name.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False
