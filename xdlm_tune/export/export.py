"""Write a self-contained Hub folder from a trained denoiser, and load one back.

    out/
      config.json              is_causal: false, auto_map -> modeling_xdlm.XDLMForCausalLM, and the
                               `xdlm` block: mask_id, shift, the sampler settings whole
                               (`sampler`: a SamplerSettings, k / schedule / eps included), recipe
      model*.safetensors       merged weights (sharded at max_shard_size)
      modeling_xdlm.py         generated from xdlm-tune's sampler source (modeling.py)
      tokenizer files          with the mask token
      README.md                the model card (+ eval_plot.png when given)

The folder is written beside `out_dir` and renamed into place, so an interrupted export leaves
any earlier export whole. A folder that is not an export is never overwritten.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

import xdlm_tune
from xdlm_tune.config import recipe_from_dict
from xdlm_tune.config.sampler import SamplerSettings
from xdlm_tune.export.card import PLACEHOLDER, model_card
from xdlm_tune.export.merge import merged_model
from xdlm_tune.export.modeling import MODEL_CLASS, MODELING_FILE, base_class_name, write_modeling_file
from xdlm_tune.model import PreparedModel, check_mask_id, prepare_model, unwrap

XDLM_KEY = "xdlm"
FORMAT = 2  # 2: the settings whole under `sampler`; 1 (before 0.1.0's #25): k / schedule / eps + `generation`


class ExportError(RuntimeError):
    """An export that cannot be written or used; the message says what to do."""


def export_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike,
    *,
    mask_id: int,
    k: float,
    shift: bool,
    schedule: str = SamplerSettings.schedule,
    eps: float = SamplerSettings.eps,
    recipe: Any = None,
    eval_summary: Any = None,
    plot_path: str | os.PathLike | None = None,
    base_model: str | None = None,
    training_data: str | None = None,
    generation: dict | None = None,
    max_shard_size: str | int = "2GB",
    dtype: str | torch.dtype | None = None,
    inplace: bool = False,
    qlora_base: str | os.PathLike | None = None,
    name: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Merge `model` (PEFT LoRA / QLoRA or plain transformers) and write a Hub folder at `out_dir`.

    recipe: a `Recipe` or its dict (stored in config.json and shown in the card; its `eval`
        section gives the sampler defaults, its model/data sections the card's defaults).
    eval_summary / plot_path: the evaluation table (markdown, list of row dicts, or dict) and
        plot for the card. base_model / training_data: the card's text (default: from the recipe
        or the model's config). k / schedule / eps: how the model was trained (checked against the
        recipe's `diffusion` section). generation: overrides of the sampler settings (any
        `SamplerSettings` field, or the aliases `max_new_tokens` / `alg`) on top of the recipe's
        (`Recipe.sampler_settings()`), all of it written to config.json. dtype: of the saved weights
        (default: the model's). inplace: merge the caller's model itself (saves a copy's memory;
        the model is consumed). qlora_base: where to reload a 4-bit base unquantised from
        (default: its config's _name_or_path). name: the card's title (default: repo_id, else
        the placeholder `<your-hub-id>`). repo_id: the Hub repo it will be pushed to, for the
        card's title and loading snippets (None: the placeholder).
    """
    out_dir = Path(out_dir)
    recipe_dict = _recipe_dict(recipe)
    settings = _settings(
        mask_id=mask_id, k=k, shift=shift, schedule=schedule, eps=eps, recipe=recipe_dict, generation=generation
    )
    _check_target(out_dir)
    config = unwrap(model).config
    for key, value in (("mask_token_id", mask_id), ("xdlm_shift", bool(shift))):
        if getattr(config, key, None) not in (None, value):
            raise ValueError(f"the model's config.{key}={getattr(config, key)!r} contradicts the export's {value!r}")
    check_mask_id(model, tokenizer, mask_id)
    merged = merged_model(model, inplace=inplace, dtype=dtype, qlora_base=qlora_base)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        merged.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer = _for_export(tokenizer, mask_id)
        tokenizer.save_pretrained(tmp)
        settings["mask_token"] = tokenizer.mask_token if tokenizer.mask_token_id == mask_id else None
        write_modeling_file(tmp, base_class_name(merged))
        _patch_config(tmp / "config.json", settings)
        plot_file = None
        if plot_path is not None:
            plot_file = "eval_plot" + Path(plot_path).suffix
            shutil.copyfile(plot_path, tmp / plot_file)
        card = model_card(
            name=name or repo_id or PLACEHOLDER,
            base_model=base_model or _recipe_get(recipe_dict, "model", "name_or_path") or merged.config._name_or_path,
            training_data=training_data or _data_text(recipe_dict),
            settings=settings,
            architecture=base_class_name(merged),
            dtype=str(next(merged.parameters()).dtype).removeprefix("torch."),
            eval_summary=eval_summary,
            plot_file=plot_file,
            repo_id=repo_id,
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        for path in [tmp, *tmp.iterdir()]:  # mkdtemp makes a private (0700) folder
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        _replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def read_settings(export_dir: str | os.PathLike) -> dict:
    """The `xdlm` block of an export's config.json."""
    path = Path(export_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ExportError(f"{export_dir} is not an xdlm-tune export: cannot read {path}: {err}") from err
    if not isinstance(config.get(XDLM_KEY), dict) or "mask_id" not in config[XDLM_KEY]:
        raise ExportError(f"{path} has no `{XDLM_KEY}` block: {export_dir} was not exported by xdlm-tune")
    return config[XDLM_KEY]


def load_export(export_dir: str | os.PathLike, **prepare_kwargs) -> PreparedModel:
    """An export as a diffusion base for further training: `prepare_model(kind="diffusion",
    trust_remote_code=True)` with the mask id and shift of its `xdlm` block; `prepare_kwargs`
    (e.g. lora={"r": 16}, dtype) go to prepare_model."""
    settings = read_settings(export_dir)
    return prepare_model(
        export_dir,
        kind="diffusion",
        trust_remote_code=True,
        mask_id=settings["mask_id"],
        shift=bool(settings["shift"]),
        **prepare_kwargs,
    )


# --------------------------------------------------------------------------- internals


def _settings(*, mask_id, k, shift, schedule, eps, recipe, generation) -> dict:
    """The config's `xdlm` block: the recipe's sampler settings with k / schedule / eps as trained
    and `generation` applied, checked, written whole."""
    if isinstance(mask_id, bool) or not isinstance(mask_id, int):
        raise TypeError(f"mask_id must be an int, got {type(mask_id).__name__}")
    diffusion = (recipe or {}).get("diffusion") or {}
    for key, value in (("k", k), ("schedule", schedule), ("eps", eps)):
        if key in diffusion and diffusion[key] != value:
            raise ValueError(
                f"{key}={value!r} differs from the recipe's diffusion.{key}={diffusion[key]!r}: "
                "the export must describe how the model was trained"
            )
    base = recipe_from_dict(recipe).sampler_settings() if recipe else SamplerSettings()
    trained = dataclasses.replace(base, k=float(k), schedule=schedule, eps=float(eps))
    try:
        settings = trained.replace(**(generation or {})).check()
    except TypeError as err:
        raise ValueError(f"generation: {err}") from None
    return {
        "format": FORMAT,
        "xdlm_tune_version": xdlm_tune.__version__,
        "mask_id": mask_id,
        "mask_token": None,
        "shift": bool(shift),
        "sampler": settings.to_dict(),
        "recipe": recipe,
    }


def _recipe_dict(recipe: Any) -> dict | None:
    if recipe is None:
        return None
    if hasattr(recipe, "to_dict"):
        recipe = recipe.to_dict()
    elif is_dataclass(recipe):
        recipe = asdict(recipe)
    if not isinstance(recipe, dict):
        raise TypeError(f"recipe must be a Recipe or a dict, got {type(recipe).__name__}")
    json.dumps(recipe)  # it goes into config.json: fail now, not half-way
    return copy.deepcopy(recipe)


def _recipe_get(recipe: dict | None, section: str, key: str):
    return ((recipe or {}).get(section) or {}).get(key)


def _data_text(recipe: dict | None) -> str:
    data = (recipe or {}).get("data")
    if not data:
        return "not recorded"
    text = f"`{data.get('source')}`"
    if data.get("subset"):
        text += f" ({data['subset']})"
    text += f", {data.get('mode', 'pretrain')}"
    if data.get("seq_len"):
        text += f", {data['seq_len']}-token sequences"
    return text


def _for_export(tokenizer: PreTrainedTokenizerBase, mask_id: int) -> PreTrainedTokenizerBase:
    """The tokenizer as the export saves it (a copy when that changes anything): `mask_id` as its
    mask token, and left padding, the layout `diffusion_generate` works in (the answer follows
    the prompt's last position), so `AutoTokenizer.from_pretrained(export)` pads as the card says."""
    new_mask = tokenizer.mask_token_id != mask_id and mask_id < len(tokenizer)
    if not new_mask and tokenizer.padding_side == "left":
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    if new_mask:
        tokenizer.mask_token = tokenizer.convert_ids_to_tokens(mask_id)
    tokenizer.padding_side = "left"
    tokenizer.init_kwargs["padding_side"] = "left"  # save_pretrained writes the init kwargs' keys
    return tokenizer


def _patch_config(path: Path, settings: dict) -> None:
    config = json.loads(path.read_text())
    ref = f"{Path(MODELING_FILE).stem}.{MODEL_CLASS}"
    config.update(
        architectures=[MODEL_CLASS],
        auto_map={"AutoModel": ref, "AutoModelForCausalLM": ref},
        is_causal=False,
        mask_token_id=settings["mask_id"],
        xdlm_shift=settings["shift"],
    )
    config.pop("_model_name_or_path", None)  # GGUF's general.name (the embedded base): not this model's name
    config[XDLM_KEY] = settings
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _is_export(path: Path) -> bool:
    try:
        read_settings(path)
        return True
    except ExportError:
        return False


def _check_target(out_dir: Path) -> None:
    if out_dir.is_file():
        raise ExportError(f"{out_dir} is a file; give a folder for the export")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_export(out_dir):
        raise ExportError(f"{out_dir} exists and is not an xdlm-tune export; choose an empty or new folder")


def _replace(tmp: Path, out_dir: Path) -> None:
    """Move the finished export into place; an earlier export there is swapped out, then removed."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = out_dir.with_name(f".old-{out_dir.name}-{os.getpid()}")
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
