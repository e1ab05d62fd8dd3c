"""Export a training run or checkpoint folder: `xdlm-tune export RUN_DIR_OR_CHECKPOINT --out DIR`.

A checkpoint folder (xdlm_tune/checkpoint.py, written by xdlm_tune/train/state.py) holds
`recipe.yaml` (else the run folder's is used) and the weights in Hugging Face format, in the
checkpoint folder itself or one sub-folder of it:
* `adapter/`: a PEFT adapter (`adapter_config.json`, the mask row as trainable tokens), put
  back onto the base that `prepare_model` rebuilds from the recipe's model and adaptation
  sections, exactly as training built it (unquantised even for a QLoRA recipe: see merge.py);
* `model/`: a full fine-tune's `save_pretrained` folder (config.json, tokenizer), prepared as
  training prepared its base;
* else a bare `model.safetensors` (or shards with an index): a state dict of the plain model, or
  of the PEFT model (keys `base_model.model.`), loaded strictly into the rebuilt model.
The resume-only files (trainable.safetensors, optimizer.pt, deepspeed/) are not read: a ZeRO-3
full fine-tune that could not gather `model/` must be consolidated first (zero_to_fp32.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file

from xdlm_tune.checkpoint import RECIPE_FILE, STATE_FILE, latest_checkpoint
from xdlm_tune.config import Recipe, RecipeError, load_recipe
from xdlm_tune.export.export import ExportError, export_model
from xdlm_tune.export.hub import PushError, push_to_hub
from xdlm_tune.model import attach_lora, prepare_model

logger = logging.getLogger(__name__)


def find_checkpoint(path: str | Path) -> Path:
    """`path` itself when it is a checkpoint folder, else the newest checkpoint of the run in it."""
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"{path} is not a folder: give a run folder (training.output_dir) or a checkpoint-* folder")
    if (path / STATE_FILE).is_file():
        return path
    latest = latest_checkpoint(path)  # a run folder: before its own sub-folders (export/ holds weights too)
    if latest is None and (path / RECIPE_FILE).is_file() and _weights_dir(path) is not None:
        return path
    if latest is None:
        raise ExportError(f"{path} holds no checkpoint (checkpoint-*/ with {STATE_FILE}); train first or give a checkpoint folder")
    return latest


def load_checkpoint(path: str | Path):
    """(model, tokenizer, mask_id, shift, recipe) of a run or checkpoint folder (see the module docstring)."""
    ckpt = find_checkpoint(path)
    recipe = _recipe(ckpt)
    weights = _weights_dir(ckpt)
    if weights is None:
        found = ", ".join(sorted(p.name for p in ckpt.iterdir())) or "nothing"
        hint = (" (its deepspeed/ folder holds ZeRO shards: consolidate them into a model.safetensors "
                "with DeepSpeed's zero_to_fp32.py first)") if (ckpt / "deepspeed").is_dir() else ""
        raise ExportError(f"{ckpt} has no adapter/, model/ or model safetensors to export{hint}; it holds: {found}")
    m, a = recipe.model, recipe.adaptation
    full_folder = (weights / "config.json").is_file() and not (weights / "adapter_config.json").is_file()
    prepared = prepare_model(
        weights if full_folder else m.name_or_path, kind=m.kind, dtype=m.dtype,
        attn_implementation=m.attn_implementation or "sdpa", gguf_file=None if full_folder else m.gguf_file,
        quantization=None, trust_remote_code=m.trust_remote_code,
        mask_token=a.mask_token, mask_id=a.mask_id, shift=a.shift,
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
                raise ExportError(f"{weights} holds LoRA weights but the recipe has lora.enabled: false")
            model = attach_lora(model, mask_id=prepared.mask_id, **recipe.lora.to_dict())
        result = model.load_state_dict(state, strict=False)
        tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - {
            name for name, _ in model.named_parameters()}
        missing = [key for key in result.missing_keys if key not in tied]
        if missing or result.unexpected_keys:
            raise ExportError(f"{weights}: the weights do not fit the model the recipe builds: missing "
                              f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    return model.eval(), prepared.tokenizer, prepared.mask_id, prepared.shift, recipe


def export_run(
    path: str | Path,
    out_dir: str | Path | None = None,
    *,
    push_to_hub_repo: str | None = None,
    private: bool = False,
    name: str | None = None,
    **export_kwargs,
) -> Path:
    """Export the newest checkpoint of a run (or a given checkpoint folder) to `out_dir`
    (default: the recipe's export.out_dir, else <run folder>/export), then push it when
    `push_to_hub_repo` is given (a PushError leaves the export in place). `name` titles the card
    (default: the repo id, else the folder's name); `export_kwargs` go to `export_model`
    (eval_summary, plot_path, dtype, max_shard_size, ...)."""
    model, tokenizer, mask_id, shift, recipe = load_checkpoint(path)
    ckpt = find_checkpoint(path)
    if out_dir is None:
        out_dir = recipe.export.out_dir or ckpt.parent / "export"
    d = recipe.diffusion
    out = export_model(
        model, tokenizer, out_dir, mask_id=mask_id, k=d.k, shift=shift, schedule=d.schedule, eps=d.eps,
        recipe=recipe, inplace=True, name=name or push_to_hub_repo,
        repo_id=export_kwargs.pop("repo_id", None) or push_to_hub_repo, **export_kwargs,
    )
    logger.info("exported %s to %s", ckpt, out)
    if push_to_hub_repo:
        push_to_hub(out, push_to_hub_repo, private=private)
    return out


def export_main(argv: list[str] | None = None) -> int:
    """`xdlm-tune export` (the CLI calls this with the arguments after `export`)."""
    from xdlm_tune.cli import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="xdlm-tune export", formatter_class=HelpFormatter,
        description="Merge a run's adapters (or full weights) into the base and write a self-contained Hugging Face "
                    "folder: merged safetensors, tokenizer with its mask token, config.json with the XDLM settings, "
                    "the generated modeling_xdlm.py (diffusion_generate) and a model card; optionally push it.",
        epilog="examples:\n  xdlm-tune export runs/smollm2-135m-xdlm-lora --out exports/smollm2-xdlm\n"
               "  xdlm-tune export runs/smollm2-135m-xdlm-lora/checkpoint-00000200 --out exports/smollm2-xdlm "
               "--push-to-hub you/smollm2-135m-xdlm")
    parser.add_argument("path", help="a run folder (training.output_dir: its newest checkpoint) or a checkpoint-* folder")
    parser.add_argument("--out", help="export folder (default: the recipe's export.out_dir, else <run>/export)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the export to this Hub repo (token: $HF_TOKEN)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="of the saved weights (default: the recipe's)")
    parser.add_argument("--max-shard-size", default="2GB", help="safetensors shard size (default 2GB)")
    parser.add_argument("--eval-summary", metavar="FILE", help="evaluation table for the card: .json (rows) or .md")
    parser.add_argument("--plot", metavar="FILE", help="evaluation plot (png) for the card")
    args = parser.parse_args(argv)
    from xdlm_tune.console import setup_logging

    setup_logging(logging.INFO, "%(message)s")
    extra = {"max_shard_size": args.max_shard_size, "plot_path": args.plot}
    if args.dtype:
        extra["dtype"] = args.dtype
    try:
        if args.eval_summary:
            text = Path(args.eval_summary).read_text()
            extra["eval_summary"] = json.loads(text) if args.eval_summary.endswith(".json") else text
        out = export_run(args.path, args.out, name=args.push_to_hub, repo_id=args.push_to_hub, **extra)
    except (ExportError, RecipeError, OSError, ValueError) as err:
        print(f"xdlm-tune export: {err}", file=sys.stderr)
        return 2
    print(f"exported to {out}")
    if args.push_to_hub:
        try:
            url = push_to_hub(out, args.push_to_hub, private=args.private)
        except PushError as err:
            print(f"xdlm-tune export: {err}", file=sys.stderr)
            return 1
        print(f"pushed to {url}")
    return 0


# --------------------------------------------------------------------------- internals


def _recipe(ckpt: Path) -> Recipe:
    for path in (ckpt / RECIPE_FILE, ckpt.parent / RECIPE_FILE):
        if path.is_file():
            try:
                return load_recipe(path)
            except RecipeError as err:
                raise ExportError(f"{path} no longer loads: {err}") from err
    raise ExportError(f"{ckpt} has no {RECIPE_FILE} (nor has {ckpt.parent}); cannot tell which base and settings it used")


def _weights_dir(ckpt: Path) -> Path | None:
    """The folder (the checkpoint or one of its sub-folders) that holds an adapter or model safetensors."""
    for folder in [ckpt, *sorted(p for p in ckpt.iterdir() if p.is_dir())]:
        if (folder / "adapter_config.json").is_file() or (folder / "model.safetensors").is_file() \
                or (folder / "model.safetensors.index.json").is_file():
            return folder
    return None


def _load_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(folder / name))
    return state
