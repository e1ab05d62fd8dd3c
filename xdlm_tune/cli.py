"""The `xdlm-tune` command line: one registry of subcommands.

Every subcommand is a `main(argv) -> int` with its own parser in the module that does the work;
`xdlm-tune NAME ARGS...` imports that module only when NAME runs and hands it ARGS.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> ("module:function", one line of help)
COMMANDS = {
    "train": ("xdlm_tune.train.entry:cli_main",
              "train an XDLM denoiser from a recipe (one process; several: accelerate launch -m xdlm_tune.train)"),
    "eval": ("xdlm_tune.evaluation.run:eval_main", "MBPP / HumanEval pass@1 at fixed step budgets"),
    "export": ("xdlm_tune.export.run:export_main", "merge a run into a self-contained Hub folder (and push it)"),
    "run": ("xdlm_tune.pipeline:run_main", "train -> eval -> export -> sample the export, for any recipe"),
    "demo": ("xdlm_tune.demo:demo_main", "the main job on the embedded default model (what `make demo` runs)"),
    "recipes": ("xdlm_tune.config.shipped:recipes_main", "list the shipped recipes and DeepSpeed / accelerate configs"),
}


def build_parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="xdlm-tune", description="Turn a pretrained LLM into an XDLM diffusion sampler.",
        epilog=f"commands:\n{listing}\n\n`xdlm-tune COMMAND --help` shows a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help=", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's arguments")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    module, func = COMMANDS[args.command][0].split(":")
    return getattr(importlib.import_module(module), func)(args.args)


if __name__ == "__main__":
    sys.exit(main())
