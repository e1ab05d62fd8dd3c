"""Merge LoRA adapters (and the trained mask-token row) into plain full-precision weights.

* LoRA / plain model: PEFT `merge_and_unload` on a copy (`inplace=True` merges the caller's model
  itself, which then becomes unusable, and saves the memory of the copy). PEFT merges the
  `trainable_token_indices` rows too: the trained mask row is written into the embedding (and
  the untied output head) like any other row.
* 4-bit / 8-bit bitsandbytes base (QLoRA): the quantised weights are not merged into (PEFT would
  re-quantise the result). The base is reloaded unquantised from its checkpoint
  (`config._name_or_path`, or `qlora_base=`) in the compute dtype, its embedding rows (which
  bitsandbytes never quantises, so they include the mask row as initialised) are copied over,
  and the same adapters are loaded onto it and merged. The export is therefore "full-precision
  base + the trained adapters", the standard QLoRA merge; it differs from the trained 4-bit
  model by the base's quantisation error, not by anything that was trained.
"""

from __future__ import annotations

import copy
import logging
import os

import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from xdlm_tune.model import SUPPORTED_FAMILIES, unwrap
from xdlm_tune.model.load import DTYPES
from xdlm_tune.model.native import load_native, native_family, read_config_dict

logger = logging.getLogger(__name__)


def is_quantized(model: nn.Module) -> bool:
    hf = unwrap(model)
    return bool(getattr(hf, "is_loaded_in_4bit", False) or getattr(hf, "is_loaded_in_8bit", False))


def merged_model(
    model: nn.Module,
    *,
    inplace: bool = False,
    dtype: str | torch.dtype | None = None,
    qlora_base: str | os.PathLike | None = None,
) -> PreTrainedModel:
    """A plain transformers model with every adapter merged, in `dtype` (None: the model's own
    float dtype; for a quantised base, its compute dtype). Its config is not changed: the export
    writes `is_causal: false` into config.json."""
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    if is_quantized(model):
        model = _dequantized_copy(model, dtype=dtype, source=qlora_base)
    elif not inplace and (isinstance(model, PeftModel) or (dtype is not None and dtype != _float_dtype(model))):
        model = copy.deepcopy(model)
    if isinstance(model, PeftModel):
        if len(model.peft_config) != 1:
            raise ValueError(f"the model carries several adapters ({', '.join(model.peft_config)}); keep one")
        model = model.merge_and_unload()
    if dtype is not None:
        model = model.to(dtype)
    family = model.config.model_type
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(
            f"model_type {family!r} cannot be exported; supported: {', '.join(SUPPORTED_FAMILIES)} "
            "(LLaDA and Dream load natively as llama / qwen2; other remote-code bases cannot be exported)"
        )
    return model.eval()


def _float_dtype(model: nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def _dequantized_copy(model: nn.Module, *, dtype: torch.dtype | None, source) -> PeftModel:
    """The same adapters on the base reloaded unquantised (see the module docstring)."""
    if not isinstance(model, PeftModel):
        raise ValueError("a 4-bit/8-bit model without adapters has nothing trained to export; export its base instead")
    hf = unwrap(model)
    source = source or hf.config._name_or_path
    if not source or not (os.path.isdir(source) or "/" in str(source)):
        raise ValueError(
            f"cannot reload the unquantised base of this QLoRA model (config._name_or_path={source!r}); "
            "pass qlora_base= (a Hub id or local folder of the full-precision base)"
        )
    quant = getattr(hf.config, "quantization_config", None)
    compute = getattr(quant, "bnb_4bit_compute_dtype", None) if quant is not None else None
    if isinstance(quant, dict):
        compute = quant.get("bnb_4bit_compute_dtype")
    if isinstance(compute, str):
        compute = getattr(torch, compute)
    dtype = dtype or compute or torch.float32
    logger.info("QLoRA export: reloading the unquantised base %s in %s", source, dtype)
    raw = read_config_dict(source)
    kwargs = dict(dtype=dtype, attn_implementation=hf.config._attn_implementation)
    if native_family(raw) is not None:  # LLaDA / Dream: the same native class and renaming as training
        fresh = load_native(source, raw, **kwargs)
    else:
        fresh = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    with torch.no_grad():
        rows = _base_weight(hf.get_input_embeddings()).shape[0]
        if fresh.get_input_embeddings().weight.shape[0] != rows:
            fresh.resize_token_embeddings(rows, mean_resizing=False)
        fresh.get_input_embeddings().weight.copy_(_base_weight(hf.get_input_embeddings()))
        head, fresh_head = hf.get_output_embeddings(), fresh.get_output_embeddings()
        if head is not None and fresh_head is not None and fresh_head.weight is not fresh.get_input_embeddings().weight:
            fresh_head.weight.copy_(_base_weight(head))
    for key in ("mask_token_id", "xdlm_shift", "is_causal", "xdlm_source_model_type"):
        if hasattr(hf.config, key):
            setattr(fresh.config, key, getattr(hf.config, key))
    name = model.active_adapter
    config = copy.deepcopy(model.peft_config[name])
    from xdlm_tune.console import peft_wrapping

    with peft_wrapping():
        wrapped = get_peft_model(fresh, config)
    result = set_peft_model_state_dict(wrapped, get_peft_model_state_dict(model, adapter_name=name))
    unexpected = [k for k in result.unexpected_keys if "lora_" in k or "trainable_tokens" in k]
    if unexpected:
        raise RuntimeError(f"the adapters did not fit the reloaded base: unexpected keys {unexpected[:5]}")
    return wrapped


def _base_weight(module: nn.Module) -> torch.Tensor:
    """An embedding / head weight without PEFT's trainable-token rows substituted."""
    adapter = getattr(module, "token_adapter", None)
    if adapter is not None:
        return adapter.base_layer.weight
    return getattr(module, "base_layer", module).weight
