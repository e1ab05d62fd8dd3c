"""The denoiser's two halves for the fused loss: final hidden states, and the output projection.

The trainer never materialises [B, L, V] logits: it takes `denoiser_hidden` [B, L, H] and
`output_projection` (weight [V, H], bias, softcap) and calls the fused XDLM loss, which
computes the logits chunk by chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from xdlm_tune.model.bidirectional import attention_mask_for_model
from xdlm_tune.model.common import unwrap
from xdlm_tune.model.forward_args import accepted_kwargs


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions [B, L] that start at 0 on each row's first real token (left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def denoiser_hidden(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    shift: bool,
    position_ids: torch.Tensor | None = None,
    attention_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Final (normed) hidden states [B, L, H] such that `hidden[:, i]` predicts token i.

    input_ids, attention_mask: [B, L] (mask 1 = real token, 0 = padding, either side).
    shift: predict token i from position i-1, as Dream does; each row's first real token
        uses its own state (there is nothing before it).
    attention_bias: optional boolean [B, 1, L, L] mask (True = may attend), e.g. from
        `annealed_attention_mask`; replaces the padding mask inside attention.
    Works on plain and PEFT-wrapped models.
    """
    hf = unwrap(model)
    if position_ids is None and attention_mask is not None:
        position_ids = position_ids_from_mask(attention_mask)
    if _is_native(hf):
        attn = attention_mask if attention_bias is None else attention_mask_for_model(hf, attention_bias)
        # The decoder without its head (e.g. LlamaModel) returns the normed last hidden state.
        out = hf.base_model(input_ids=input_ids, attention_mask=attn, position_ids=position_ids, use_cache=False)
        hidden = out.last_hidden_state
    else:
        if attention_bias is not None:
            raise ValueError("attention annealing (attention_bias) applies to causal bases only")
        hidden = _hidden_via_head_hook(
            hf, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        )
    if shift:
        hidden = shift_hidden(hidden, attention_mask)
    return hidden


def shift_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """out[:, i] = hidden[:, i-1]; at each row's first real token, its own state. [B, L, H]."""
    shifted = torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1)
    if attention_mask is None:
        return shifted
    real = attention_mask.bool()
    first_real = real & ~F.pad(real[:, :-1], (1, 0), value=False)
    return torch.where(first_real[..., None], hidden, shifted)


def output_projection(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, float | None]:
    """The output head as (weight [V, H], bias [V] or None, final-logit softcap or None).

    Tied or not, through PEFT wrappers: with a trainable mask row, PEFT's wrapper returns
    the weight with that row substituted (differentiable), so gradients reach it.
    logits = softcap * tanh((hidden @ weight.T + bias) / softcap) when softcap is set (Gemma 2).
    """
    hf = unwrap(model)
    head = hf.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(hf).__name__} has no output embeddings (lm_head)")
    if hasattr(head, "lora_A"):
        raise ValueError("the output head carries LoRA adapters; remove it from target_modules")
    weight = head.weight
    bias = getattr(head, "bias", None)
    if bias is None and hasattr(head, "original_module"):  # PEFT wrappers expose only .weight
        bias = getattr(head.original_module, "bias", None)
    config = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    softcap = getattr(config, "final_logit_softcapping", None)
    return weight, bias, softcap


def _is_native(model: PreTrainedModel) -> bool:
    """A transformers-library causal LM whose `base_model` is the headless decoder."""
    return type(model).__module__.startswith("transformers.") and model.base_model is not model


class _HeadReached(Exception):
    """Raised from a hook on the output head to stop the forward before the logits."""


def _hidden_via_head_hook(model: PreTrainedModel, **inputs) -> torch.Tensor:
    """Hidden states as the output head receives them, for remote-code models whose outputs
    do not expose them uniformly; the logits are never computed. Only the keywords their
    forward accepts are passed (remote code often takes no position_ids)."""
    kwargs = accepted_kwargs(model, **{k: v for k, v in inputs.items() if v is not None})
    captured: list[torch.Tensor] = []

    def grab(module, args):
        captured.append(args[0])
        raise _HeadReached

    handle = model.get_output_embeddings().register_forward_pre_hook(grab)
    try:
        model(**kwargs)
    except _HeadReached:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(
            f"{type(model).__name__} never called its output head module (get_output_embeddings()); "
            "cannot read its final hidden states"
        )
    return captured[0]
