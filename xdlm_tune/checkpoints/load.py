"""A training run as a model: find its checkpoint and rebuild the model it trained.

Used by evaluation (`xdlm-tune eval --checkpoint`), export and `xdlm-tune run`, which stand side
by side above it. A checkpoint folder (xdlm_tune/checkpoints/protocol.py's protocol, written by
xdlm_tune/train/state.py) holds
`recipe.yaml` (else the run folder's is used) and the weights in Hugging Face format, in the
checkpoint folder itself or one sub-folder of it:
* `adapter/`: a PEFT adapter (`adapter_config.json`, the mask row as trainable tokens), put
  back onto the base that `prepare_model` rebuilds from the recipe's model and adaptation
  sections, exactly as training built it (unquantised even for a QLoRA recipe: see export/merge.py);
* `model/`: a full fine-tune's `save_pretrained` folder (config.json, tokenizer), prepared as
  training prepared its base;
* else a bare `model.safetensors` (or shards with an index): a state dict of the plain model, or
  of the PEFT model (keys `base_model.model.`), loaded strictly into the rebuilt model.
The resume-only files (trainable.safetensors, optimizer.pt, deepspeed/) are not read: a ZeRO-3
full fine-tune that could not gather `model/` must be consolidated first (zero_to_fp32.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file

from xdlm_tune.checkpoints.protocol import RECIPE_FILE, STATE_FILE, CheckpointError, latest_checkpoint
from xdlm_tune.config import Recipe, RecipeError, load_recipe
from xdlm_tune.model import attach_lora, prepare_model


def find_checkpoint(path: str | Path) -> Path:
    """`path` itself when it is a checkpoint folder, else the newest checkpoint of the run in it."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is not a folder: give a run folder (training.output_dir) or a checkpoint-* folder"
        )
    if (path / STATE_FILE).is_file():
        return path
    latest = latest_checkpoint(path)  # a run folder: before its own sub-folders (export/ holds weights too)
    if latest is None and (path / RECIPE_FILE).is_file() and _weights_dir(path) is not None:
        return path
    if latest is None:
        raise CheckpointError(
            f"{path} holds no checkpoint (checkpoint-*/ with {STATE_FILE}); train first or give a checkpoint folder"
        )
    return latest


def load_checkpoint(path: str | Path):
    """(model, tokenizer, mask_id, shift, recipe) of a run or checkpoint folder (see the module docstring)."""
    ckpt = find_checkpoint(path)
    recipe = _recipe(ckpt)
    weights = _weights_dir(ckpt)
    if weights is None:
        found = ", ".join(sorted(p.name for p in ckpt.iterdir())) or "nothing"
        hint = (
            (
                " (its deepspeed/ folder holds ZeRO shards: consolidate them into a model.safetensors "
                "with DeepSpeed's zero_to_fp32.py first)"
            )
            if (ckpt / "deepspeed").is_dir()
            else ""
        )
        raise CheckpointError(f"{ckpt} has no adapter/, model/ or model safetensors to load{hint}; it holds: {found}")
    m, a = recipe.model, recipe.adaptation
    full_folder = (weights / "config.json").is_file() and not (weights / "adapter_config.json").is_file()
    prepared = prepare_model(
        weights if full_folder else m.name_or_path,
        kind=m.kind,
        dtype=m.dtype,
        attn_implementation=m.attn_implementation or "sdpa",
        gguf_file=None if full_folder else m.gguf_file,
        quantization=None,
        trust_remote_code=m.trust_remote_code,
        mask_token=a.mask_token,
        mask_id=a.mask_id,
        shift=a.shift,
        report=False,  # loaded to be used: no training-style trainable-parameter line
    )
    model = prepared.model
    if (weights / "adapter_config.json").is_file():
        from xdlm_tune.console import peft_wrapping

        with peft_wrapping():
            model = PeftModel.from_pretrained(model, weights)
    elif not full_folder:
        state = _load_safetensors(weights)
        if any(key.startswith("base_model.model.") for key in state):
            if not recipe.lora.enabled:
                raise CheckpointError(f"{weights} holds LoRA weights but the recipe has lora.enabled: false")
            model = attach_lora(model, mask_id=prepared.mask_id, **recipe.lora.to_dict())
        result = model.load_state_dict(state, strict=False)
        tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - {
            name for name, _ in model.named_parameters()
        }
        missing = [key for key in result.missing_keys if key not in tied]
        if missing or result.unexpected_keys:
            raise CheckpointError(
                f"{weights}: the weights do not fit the model the recipe builds: missing "
                f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
    return model.eval(), prepared.tokenizer, prepared.mask_id, prepared.shift, recipe


# --------------------------------------------------------------------------- internals


def _recipe(ckpt: Path) -> Recipe:
    for path in (ckpt / RECIPE_FILE, ckpt.parent / RECIPE_FILE):
        if path.is_file():
            try:
                return load_recipe(path)
            except RecipeError as err:
                raise CheckpointError(f"{path} no longer loads: {err}") from err
    raise CheckpointError(
        f"{ckpt} has no {RECIPE_FILE} (nor has {ckpt.parent}); cannot tell which base and settings it used"
    )


def _weights_dir(ckpt: Path) -> Path | None:
    """The folder (the checkpoint or one of its sub-folders) that holds an adapter or model safetensors."""
    for folder in [ckpt, *sorted(p for p in ckpt.iterdir() if p.is_dir())]:
        if (
            (folder / "adapter_config.json").is_file()
            or (folder / "model.safetensors").is_file()
            or (folder / "model.safetensors.index.json").is_file()
        ):
            return folder
    return None


def _load_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    )
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(folder / name))
    return state
