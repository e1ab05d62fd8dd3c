"""`xdlm-tune lm-eval`: EleutherAI's lm-evaluation-harness with the ``xdlm`` model and offline tasks.

    xdlm-tune lm-eval --model_args pretrained=smollm2-135m,steps=32 --tasks mbpp_local --limit 5 \\
        --confirm_run_unsafe_code --output_path runs/lm_eval
    accelerate launch -m xdlm_tune.lm_eval --model_args pretrained=runs/x/export --tasks pydocs_ppl

Every lm-eval flag passes through unchanged (``lm-eval run --help``); this adds ``--model xdlm``
and ``--include_path`` = the task folder shipped with xdlm-tune (``mbpp_local``, ``pydocs_ppl``,
``pydocs_mc``) unless they are given. ``xdlm-tune lm-eval ls tasks`` lists the tasks.
"""

from __future__ import annotations

import sys
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "evaluation" / "lm_eval_tasks"
_SUBCOMMANDS = ("run", "ls", "validate")


def _given(argv: list[str], *flags: str) -> bool:
    return any(a in flags or a.split("=", 1)[0] in flags for a in argv)


def build_argv(argv: list[str]) -> list[str]:
    """lm-eval's command line for ours: the subcommand (default ``run``), ``--model xdlm``, our tasks."""
    if argv and argv[0] in ("-h", "--help"):
        return ["run", "--help"]
    sub, rest = (argv[0], argv[1:]) if argv and argv[0] in _SUBCOMMANDS else ("run", argv)
    if sub == "run" and not _given(rest, "--model", "-M"):
        rest = ["--model", "xdlm", *rest]
    if not _given(rest, "--include_path"):
        rest = [*rest, "--include_path", str(TASKS_DIR)]
    return [sub, *rest]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        print("xdlm-tune lm-eval needs lm-evaluation-harness: pip install 'xdlm-tune[lm-eval]'", file=sys.stderr)
        return 2
    from .evaluation.lm_eval_model import LocalDataError, ModelArgError  # the import registers --model xdlm

    if any(a in ("-h", "--help") for a in argv):  # say whose flags follow, then lm-eval's own help
        print(
            "xdlm-tune lm-eval: lm-evaluation-harness's command line with --model xdlm and the offline tasks "
            f"of {TASKS_DIR} added (xdlm model_args: steps, block_length, sampler, k, mc_num, ...; see the README).\n"
            "example:\n  xdlm-tune lm-eval --model_args pretrained=smollm2-135m,steps=32 --tasks mbpp_local "
            "--limit 5 --confirm_run_unsafe_code --output_path runs/lm_eval\n"
        )
    old = sys.argv
    sys.argv = ["lm-eval", *build_argv(argv)]
    try:
        cli_evaluate()
    except (ModelArgError, LocalDataError) as err:
        print(f"xdlm-tune lm-eval: {err}", file=sys.stderr)
        return 2
    finally:
        sys.argv = old
    return 0


if __name__ == "__main__":
    sys.exit(main())
