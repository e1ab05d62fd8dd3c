"""`xdlm-tune demo`: the main job on the embedded default model, as set in demo.yaml (package data).

xdlm-tune demo             # train -> eval -> export -> sample (xdlm-tune run with demo.yaml's overrides)
xdlm-tune demo --dry-run   # the same recipe through `xdlm-tune train --dry-run` (a tiny stand-in, one step)
xdlm-tune demo --core      # a one-minute demo of the diffusion core alone
xdlm-tune demo --smoke     # every stage of the demo with training cut to 4 steps (runs/demo-smoke)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

DEMO_FILE = Path(__file__).resolve().parent / "demo.yaml"
DEMO_LOG = "runs/demo/demo.log"
# --smoke: the same stages, in a folder of their own, with training cut short, one step budget and
# 2 genppl samples (a check that everything runs, e.g. from a fresh clone offline; its numbers mean nothing).
SMOKE = [
    "training.output_dir=runs/demo-smoke",
    "training.max_steps=4",
    "training.eval_every=2",
    "training.save_every=2",
    "eval.steps=[8]",
    "eval.genppl_samples=2",
]


@dataclass
class Demo:
    recipe: Path
    overrides: list[str]


def load_demo(path: Path = DEMO_FILE) -> Demo:
    """demo.yaml's recipe (a shipped one) and its overrides."""
    from ..config.shipped import find_file

    spec = yaml.safe_load(path.read_text())
    recipe = find_file(spec["recipe"], "recipes")
    if recipe is None:
        raise FileNotFoundError(f"{path}: recipe {spec['recipe']!r} is not a shipped recipe")
    return Demo(recipe, list(spec["overrides"]))


def demo_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="xdlm-tune demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="`xdlm-tune run` of recipes/smollm2-135m-xdlm-lora.yaml on the embedded SmolLM2-135M, sized\n"
        "for a CPU (demo.yaml: 30 steps, 2 MBPP problems at 8 and 16 steps, gen-PPL of 8 held-out continuations\n"
        "untrained vs trained) into runs/demo; the console output is also written to runs/demo/demo.log.\n"
        "A second run reuses what did not change.",
        epilog="examples:\n  xdlm-tune demo             # or: make demo\n"
        "  xdlm-tune demo --dry-run   # the recipe on a tiny stand-in, one step\n"
        "  xdlm-tune demo --core      # the diffusion math only\n"
        "  xdlm-tune demo --smoke     # every stage, training cut to 4 steps (a quick check of an install)",
    )
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--core", action="store_true", help="only the one-minute demo of the diffusion core")
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="check the demo's recipe on a tiny stand-in (one step and a save, in a temp dir)",
    )
    mode.add_argument(
        "--smoke",
        action="store_true",
        help="every stage of the demo with training cut to 4 steps, into runs/demo-smoke (checks an install)",
    )
    args = ap.parse_args(argv)
    if args.core:
        from .core_demo import main as core_demo

        core_demo()
        return 0
    demo = load_demo()
    if args.dry_run:
        from ..train.entry import main as train_main

        return train_main([str(demo.recipe), *demo.overrides, "--dry-run"], prog="xdlm-tune demo --dry-run")
    from ..console import setup_logging, tee
    from .pipeline import run_pipeline

    overrides, log = (demo.overrides + SMOKE, "runs/demo-smoke/demo.log") if args.smoke else (demo.overrides, DEMO_LOG)
    with tee(log):  # what the demo prints, also in a file (the README drift check: benchmarks/)
        setup_logging()
        run_pipeline(str(demo.recipe), overrides)
        print(f"  this console output:  {log}")
    return 0


if __name__ == "__main__":
    sys.exit(demo_main())
