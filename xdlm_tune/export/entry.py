"""Export a training run or checkpoint folder: `xdlm-tune export RUN_DIR_OR_CHECKPOINT --out DIR`.

The run comes back as a model through xdlm_tune/checkpoints/load.py (the same loader evaluation uses);
this module merges it and writes the Hub folder (export.py), then pushes it (hub.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from xdlm_tune.checkpoints.load import find_checkpoint, load_checkpoint
from xdlm_tune.checkpoints.protocol import CheckpointError
from xdlm_tune.config import RecipeError
from xdlm_tune.export.export import ExportError, export_model
from xdlm_tune.export.hub import PushError, push_to_hub

logger = logging.getLogger(__name__)


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
        model,
        tokenizer,
        out_dir,
        mask_id=mask_id,
        k=d.k,
        shift=shift,
        schedule=d.schedule,
        eps=d.eps,
        recipe=recipe,
        inplace=True,
        name=name or push_to_hub_repo,
        repo_id=export_kwargs.pop("repo_id", None) or push_to_hub_repo,
        **export_kwargs,
    )
    if push_to_hub_repo:
        push_to_hub(out, push_to_hub_repo, private=private)
    return out


def export_main(argv: list[str] | None = None) -> int:
    """`xdlm-tune export` (the CLI calls this with the arguments after `export`)."""
    from xdlm_tune.console import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="xdlm-tune export",
        formatter_class=HelpFormatter,
        description="Merge a run's adapters (or full weights) into the base and write a self-contained Hugging Face "
        "folder: merged safetensors, tokenizer with its mask token, config.json with the XDLM settings, "
        "the generated modeling_xdlm.py (diffusion_generate) and a model card; optionally push it.",
        epilog="examples:\n  xdlm-tune export runs/smollm2-135m-xdlm-lora --out exports/smollm2-xdlm\n"
        "  xdlm-tune export runs/smollm2-135m-xdlm-lora/checkpoint-00000200 --out exports/smollm2-xdlm "
        "--push-to-hub you/smollm2-135m-xdlm",
    )
    parser.add_argument(
        "path", help="a run folder (training.output_dir: its newest checkpoint) or a checkpoint-* folder"
    )
    parser.add_argument("--out", help="export folder (default: the recipe's export.out_dir, else <run>/export)")
    parser.add_argument(
        "--push-to-hub", metavar="REPO_ID", help="upload the export to this Hub repo (token: $HF_TOKEN)"
    )
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help="of the saved weights (default: the recipe's)"
    )
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
            extra["eval_summary"] = _eval_summary(Path(args.eval_summary))
        out = export_run(args.path, args.out, name=args.push_to_hub, repo_id=args.push_to_hub, **extra)
    except (ExportError, CheckpointError, RecipeError, OSError, ValueError) as err:
        print(f"xdlm-tune export: {err}", file=sys.stderr)
        return 2
    print(f"exported {find_checkpoint(args.path)} to {out}")
    if args.push_to_hub:
        try:
            url = push_to_hub(out, args.push_to_hub, private=args.private)
        except PushError as err:
            print(f"xdlm-tune export: {err}", file=sys.stderr)
            return 1
        print(f"pushed to {url}")
    return 0


def _eval_summary(path: Path) -> str | list:
    """What --eval-summary names, for the card: summary.md's text as is; for an evaluation's
    summary.json, the summary.md written beside it (the same rows through the eval summary's own
    renderer: rates with intervals, a column per status); other JSON rows as they are."""
    if path.suffix == ".json":
        beside = path.with_suffix(".md")
        return beside.read_text() if beside.is_file() else json.loads(path.read_text())
    return path.read_text()
