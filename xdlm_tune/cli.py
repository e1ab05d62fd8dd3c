"""The `xdlm-tune` command line: train, eval, export, run (all three), sweep, demo."""
from __future__ import annotations

import argparse
import sys

# Subcommands with a parser of their own receive the rest of the command line as is.
_DELEGATED = {
    "eval": ("xdlm_tune.evaluation.run", "eval_main", "MBPP / HumanEval pass@1 at fixed step budgets"),
    "export": ("xdlm_tune.export.run", "export_main", "merge a run into a self-contained Hub folder (and push it)"),
    "sweep": ("xdlm_tune.sweep", "sweep_main", "one run per k: held-out NELBO vs gen-PPL per step budget (pareto.png)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _DELEGATED:
        import importlib

        module, func, _ = _DELEGATED[argv[0]]
        return getattr(importlib.import_module(module), func)(argv[1:])

    parser = argparse.ArgumentParser(prog="xdlm-tune", description="Turn a pretrained LLM into an XDLM diffusion sampler.")
    sub = parser.add_subparsers(dest="command", required=True)
    from .train.entry import add_arguments

    add_arguments(sub.add_parser(
        "train", help="train an XDLM denoiser from a recipe (one process; several: accelerate launch -m xdlm_tune.train)",
        description="Train an XDLM denoiser from a recipe. Several processes / GPUs / nodes: "
                    "accelerate launch --config_file deepspeed_configs/... -m xdlm_tune.train RECIPE [overrides]"))
    for name, (_, _, help_text) in _DELEGATED.items():
        sub.add_parser(name, help=f"{help_text} (see `xdlm-tune {name} --help`)", add_help=False)
    run = sub.add_parser("run", help="train -> eval -> export -> sample the export, for any recipe")
    run.add_argument("recipe")
    run.add_argument("overrides", nargs="*", metavar="section.key=value")
    demo = sub.add_parser("demo", help="the main job on the embedded default model (what `make demo` runs)")
    demo.add_argument("--core", action="store_true", help="only the one-minute demo of the diffusion core")
    args = parser.parse_args(argv)

    if args.command == "train":
        from .train.entry import run as train_run

        return train_run(args)
    if args.command == "run":
        from .pipeline import run_pipeline

        run_pipeline(args.recipe, args.overrides)
        return 0
    if args.command == "demo":
        if args.core:
            from .core_demo import main as core_demo

            core_demo()
            return 0
        from pathlib import Path

        from .pipeline import run_pipeline

        # Benchmark data beside the checkout when it is there (this project's machines), else the Hub.
        data_dir = Path("../shared/data")
        data = [f"eval.data_dir={data_dir}"] if (data_dir / "mbpp.jsonl").is_file() else ["eval.data_dir=null"]
        recipe = Path(__file__).resolve().parents[1] / "recipes" / "smollm2-135m-xdlm-lora.yaml"
        run_pipeline(str(recipe), DEMO_OVERRIDES + data)
    return 0


# A short run of the embedded default recipe that fits a 2-core CPU in a few minutes.
DEMO_OVERRIDES = [
    "training.output_dir=runs/demo", "training.resume=latest", "training.max_steps=30", "training.eval_every=15", "training.save_every=15",
    "training.log_every=5", "eval.limit=2", "eval.steps=[8,16]", "eval.gen_length=48", "eval.block_length=48",
    "eval.batch_size=2",
]


if __name__ == "__main__":
    sys.exit(main())
