"""The command line of a training run, shared by `xdlm-tune train` and `python -m xdlm_tune.train`.

The recipe is resolved (file + overrides, unknown keys and bad values refused, the DeepSpeed
JSON read) before anything heavy is imported or loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("recipe", help="a YAML recipe (see recipes/), e.g. recipes/smollm2-135m-xdlm-lora.yaml")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="change any recipe field, the value read as YAML (numbers, true/false, null, lists "
        "like [q_proj, v_proj]), e.g. diffusion.k=0.5 training.max_steps=2 training.output_dir=runs/try",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in training.output_dir (= training.resume=latest)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the recipe: build a tiny random stand-in of the same model family, run one "
        "optimizer step (and a save) through the real loop on offline data, in a temp dir",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="train even when the real-size plan (xdlm-tune plan) says the run does not fit on the detected GPUs",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from ..config import RecipeError, load_recipe

    _setup_logging()
    overrides = list(args.overrides) + (["training.resume=latest"] if args.resume else [])
    try:
        recipe = load_recipe(args.recipe, overrides)
        recipe.deepspeed.resolve()  # a missing DeepSpeed JSON is a recipe error too
    except RecipeError as e:
        print(f"xdlm-tune train: {e}", file=sys.stderr)
        return 2

    from ..checkpoints.protocol import CheckpointError
    from ..data import DataError
    from ..errors import UserError
    from .ds_ops import ExtensionLockError

    try:
        if args.dry_run:
            from .dry_run import dry_run
            from .plan import preflight

            # The real-size check refuses a bad recipe before the stand-in runs; its verdict comes after.
            verdict = preflight(recipe, force=True, dry_run=True, quiet=True)
            dry_run(recipe)
            if verdict:
                print(verdict)
        else:
            import torch

            from .loop import train
            from .runtime import shutdown_process_group

            if torch.cuda.is_available():
                from .plan import preflight

                if not preflight(recipe, force=args.force):
                    return 2
            train(recipe)
            shutdown_process_group()
    except (RecipeError, CheckpointError, DataError, ExtensionLockError, UserError) as e:
        print(f"xdlm-tune train: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from ..launch import peer_lost

        if not peer_lost(e):
            raise
        print(
            f"xdlm-tune train: lost another process of the run (a node or process died, or the network between "
            f"them failed): {type(e).__name__}: {str(e)[:500]}. Start the run again on every node with --resume to "
            "continue from its last checkpoint.",
            file=sys.stderr,
        )
        return 3
    return 0


def main(argv: list[str] | None = None, *, prog: str = "python -m xdlm_tune.train") -> int:
    from ..console import HelpFormatter, Parser

    parser = Parser(
        prog=prog,
        formatter_class=HelpFormatter,
        description="Train an XDLM denoiser from a recipe: LoRA (or full) fine-tuning with the XDLM loss, "
        "held-out ELBO, checkpoints in training.output_dir. Several processes / GPUs / nodes: "
        "accelerate launch --config_file deepspeed_configs/... -m xdlm_tune.train RECIPE [overrides]",
        epilog="example:\n  xdlm-tune train recipes/smollm2-135m-xdlm-lora.yaml diffusion.k=0.5 training.max_steps=2 "
        "training.output_dir=runs/try",
    )
    return run(add_arguments(parser).parse_intermixed_args(argv))


def cli_main(argv: list[str] | None = None) -> int:
    """`xdlm-tune train` (the CLI's registry calls this with the arguments after `train`)."""
    return main(argv, prog="xdlm-tune train")


def _setup_logging() -> None:
    from ..console import setup_logging

    main_process = os.environ.get("RANK", "0") == "0"
    # Our modules speak at INFO; libraries keep their own (usually WARNING) level.
    setup_logging(
        logging.INFO if main_process else logging.WARNING,
        "%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # DeepSpeed calls renamed torch.distributed functions on every step; the warning says nothing to a user.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
