"""The `xdlm-tune` command line: one registry of subcommands.

Every subcommand is a `main(argv) -> int` with its own parser in the module that does the work;
`xdlm-tune NAME ARGS...` imports that module only when NAME runs and hands it ARGS. Expected
failures end in one paragraph (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> ("module:function", one line of help)
COMMANDS = {
    "train": (
        "xdlm_tune.train.entry:cli_main",
        "train an XDLM denoiser from a recipe (one process; several: accelerate launch -m xdlm_tune.train)",
    ),
    "plan": (
        "xdlm_tune.train.plan:plan_main",
        "check a recipe at its model's real size (meta device, no weights): LoRA targets, mask id, GPU memory",
    ),
    "eval": ("xdlm_tune.evaluation.entry:eval_main", "MBPP / HumanEval pass@1 (or genppl) at fixed step budgets"),
    "export": ("xdlm_tune.export.entry:export_main", "merge a run into a self-contained Hub folder (and push it)"),
    "run": ("xdlm_tune.workflows.pipeline:run_main", "train -> eval -> export -> sample the export, for any recipe"),
    "lm-eval": (
        "xdlm_tune.lm_eval.entry:main",
        "any lm-evaluation-harness task (likelihood bound, generation) with --model xdlm",
    ),
    "compare": (
        "xdlm_tune.evaluation.compare:compare_main",
        "two eval / genppl runs on the same problems: paired difference, McNemar test, flipped ids",
    ),
    "sweep": (
        "xdlm_tune.workflows.sweep:sweep_main",
        "one run per k: held-out NELBO vs gen-PPL per step budget (pareto.png)",
    ),
    "demo": (
        "xdlm_tune.workflows.demo:demo_main",
        "the main job on the embedded default model (what `make demo` runs)",
    ),
    "recipes": ("xdlm_tune.config.shipped:recipes_main", "list the shipped recipes and DeepSpeed / accelerate configs"),
}

_EXAMPLES = """examples:
  xdlm-tune demo                                                    # the main job on a CPU
  xdlm-tune train recipes/smollm2-135m-xdlm-lora.yaml training.max_steps=100
  xdlm-tune plan recipes/llama3-8b-xdlm-lora-zero3.yaml --gpus 8 --gpu-memory 80
  xdlm-tune eval --limit 20 --steps 16 32 --ar-baseline
  xdlm-tune compare runs/eval-a runs/eval-b                         # is the difference real?
  xdlm-tune export runs/smollm2-135m-xdlm-lora --out exports/smollm2-xdlm
add --debug to any command for the full traceback of an error."""


def build_parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="xdlm-tune",
        description="Turn a pretrained LLM into an XDLM diffusion sampler.",
        epilog=f"commands:\n{listing}\n\n`xdlm-tune COMMAND --help` shows a command's options.\n\n{_EXAMPLES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help=", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's arguments")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `xdlm-tune` entry point."""
    from .console import drop_library_notes
    from .errors import cli_main

    drop_library_notes()
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = f"xdlm-tune {argv[0]}" if argv and not argv[0].startswith("-") else "xdlm-tune"
    return cli_main(prog, _dispatch, argv)


def _dispatch(argv: list[str]) -> int:
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    module, func = COMMANDS[args.command][0].split(":")
    return getattr(importlib.import_module(module), func)(args.args)


if __name__ == "__main__":
    sys.exit(main())
