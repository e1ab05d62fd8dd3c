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


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped to the terminal; lines of examples (indented by two spaces) kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out, para = [], []
        for line in text.splitlines() + [""]:
            if line.strip() and not line.startswith("  "):
                para.append(line.strip())
                continue
            if para:  # a paragraph ends: wrap it
                out.append(super()._fill_text(" ".join(para), width, indent))
                para = []
            if line.strip() or out:
                out.append(indent + line)
        return "\n".join(out).rstrip()


def main(argv: list[str] | None = None) -> int:
    """The `xdlm-tune` entry point: expected failures end in one paragraph (--debug: the traceback)."""
    from .console import drop_library_notes
    from .errors import cli_main

    drop_library_notes()
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = f"xdlm-tune {argv[0]}" if argv and not argv[0].startswith("-") else "xdlm-tune"
    return cli_main(prog, _main, argv)


def _main(argv: list[str]) -> int:
    if argv and argv[0] in _DELEGATED:
        import importlib

        module, func, _ = _DELEGATED[argv[0]]
        return getattr(importlib.import_module(module), func)(argv[1:])

    parser = argparse.ArgumentParser(prog="xdlm-tune", description="Turn a pretrained LLM into an XDLM diffusion sampler.",
                                     epilog=_MAIN_EPILOG, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .train.entry import add_arguments

    add_arguments(sub.add_parser(
        "train", help="train an XDLM denoiser from a recipe (one process; several: accelerate launch -m xdlm_tune.train)",
        description="Train an XDLM denoiser from a recipe: LoRA (or full) fine-tuning with the XDLM loss, "
                    "held-out ELBO, checkpoints in training.output_dir. Several processes / GPUs / nodes: "
                    "accelerate launch --config_file deepspeed_configs/... -m xdlm_tune.train RECIPE [overrides]",
        epilog="example:\n  xdlm-tune train recipes/smollm2-135m-xdlm-lora.yaml diffusion.k=0.5 training.max_steps=2 "
               "training.output_dir=runs/try", formatter_class=HelpFormatter))
    for name, (_, _, help_text) in _DELEGATED.items():
        sub.add_parser(name, help=f"{help_text} (see `xdlm-tune {name} --help`)", add_help=False)
    run = sub.add_parser(
        "run", help="train -> eval -> export -> sample the export, for any recipe",
        description="The whole pipeline for one recipe: train (training.resume=true continues an earlier run), evaluate the AR baseline and "
                    "the trained model on the recipe's eval section, export a merged Hub folder, and sample that "
                    "export with plain transformers in a separate process. Steps whose inputs did not change since "
                    "the last run (same recipe and code) are reused.",
        epilog="example:\n  xdlm-tune run recipes/smollm2-135m-xdlm-lora.yaml training.max_steps=50 eval.limit=10 "
               "'eval.steps=[16,32]'", formatter_class=HelpFormatter)
    run.add_argument("recipe", help=_RECIPE_HELP)
    run.add_argument("overrides", nargs="*", metavar="section.key=value", help=_OVERRIDES_HELP)
    demo = sub.add_parser(
        "demo", help="the main job on the embedded default model (what `make demo` runs)",
        description="`xdlm-tune run` of recipes/smollm2-135m-xdlm-lora.yaml on the embedded SmolLM2-135M, sized "
                    "for a CPU (30 steps, 2 MBPP problems at 8 and 16 steps) into runs/demo; the console output "
                    "is also written to runs/demo/demo.log. A second run reuses what did not change.",
        epilog="example:\n  xdlm-tune demo          # or: make demo\n  xdlm-tune demo --core   # the diffusion math only",
        formatter_class=HelpFormatter)
    demo.add_argument("--core", action="store_true", help="only the one-minute demo of the diffusion core")
    args = parser.parse_args(argv)

    if args.command == "train":
        from .train.entry import run as train_run

        return train_run(args)
    if args.command in ("run", "demo"):
        from .console import setup_logging

        setup_logging()
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
        from .console import setup_logging, tee

        with tee(DEMO_LOG):  # what the demo prints, also in a file (README drift check: benchmarks/)
            setup_logging()
            run_pipeline(str(recipe), DEMO_OVERRIDES + data)
            print(f"  this console output:  {DEMO_LOG}")
    return 0


_RECIPE_HELP = "a YAML recipe (see recipes/), e.g. recipes/smollm2-135m-xdlm-lora.yaml"
_OVERRIDES_HELP = ("change any recipe field: section.key=value, the value read as YAML (numbers, true/false, null, "
                   "lists like [q_proj, v_proj]), e.g. diffusion.k=0.5 training.output_dir=runs/try")
_MAIN_EPILOG = """examples:
  xdlm-tune demo                                                    # the main job on a CPU
  xdlm-tune train recipes/smollm2-135m-xdlm-lora.yaml training.max_steps=100
  xdlm-tune eval --data ../shared/data/mbpp.jsonl --limit 20 --steps 16 32 --ar-baseline
  xdlm-tune export runs/smollm2-135m-xdlm-lora --out exports/smollm2-xdlm
add --debug to any command for the full traceback of an error."""


DEMO_LOG = "runs/demo/demo.log"
# A short run of the embedded default recipe that fits a 2-core CPU in a few minutes.
DEMO_OVERRIDES = [
    "training.output_dir=runs/demo", "training.resume=latest", "training.max_steps=30", "training.eval_every=15", "training.save_every=15",
    "training.log_every=5", "eval.limit=2", "eval.steps=[8,16]", "eval.gen_length=48", "eval.block_length=48",
    "eval.batch_size=2",
]


if __name__ == "__main__":
    sys.exit(main())
