"""`xdlm-tune lm-eval`: EleutherAI's lm-evaluation-harness with the ``xdlm`` model and offline tasks.

    xdlm-tune lm-eval --model_args pretrained=smollm2-135m,steps=32 --tasks mbpp_local --limit 5 \\
        --confirm_run_unsafe_code --output_path runs/lm_eval
    accelerate launch -m xdlm_tune.lm_eval --model_args pretrained=runs/x/export --tasks pydocs_ppl

Every lm-eval flag passes through unchanged (``lm-eval run --help``); this adds ``--model xdlm``
and ``--include_path`` = the task folder shipped with xdlm-tune (``mbpp_local``, ``pydocs_ppl``,
``pydocs_mc``) unless they are given. ``xdlm-tune lm-eval ls tasks`` lists the tasks.
With ``--output_path`` it then prints the run's metrics again with 95% intervals
(`interval_table`): Wilson for the per-document 0/1 metrics, value +- 1.96 stderr otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
_SUBCOMMANDS = ("run", "ls", "validate")
# lm-eval metrics that are a mean of per-document 0/1 scores: a proportion, so a Wilson interval.
BINARY_METRICS = {"acc", "acc_norm", "exact_match", "pass_at_1", "pass@1", "mc1", "f1_binary"}


def interval_table(results: dict) -> str:
    """lm-eval's results (the results_*.json it writes) as a markdown table with 95% intervals:
    Wilson on n documents for BINARY_METRICS, value +- 1.96 x lm-eval's stderr for the others
    (none where lm-eval reports none, e.g. perplexities)."""
    from ..evaluation.stats import fmt_value, wilson

    lines = ["| task | metric | n | value (95% CI) | interval |", "|---|---|---|---|---|"]
    for task, metrics in results.get("results", {}).items():
        n = (results.get("n-samples", {}).get(task) or {}).get("effective")
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            if "_stderr" in name or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            stderr = metrics.get(f"{name}_stderr,{filt}")
            if name in BINARY_METRICS and n:
                ci, how = wilson(round(value * n), n), "Wilson"
            elif isinstance(stderr, (int, float)) and not isinstance(stderr, bool):
                ci, how = (value - 1.96 * stderr, value + 1.96 * stderr), "+-1.96 stderr"
            else:
                ci, how = None, "-"
            label = name if filt in ("", "none") else f"{name} ({filt})"
            lines.append(f"| {task} | {label} | {n or '-'} | {fmt_value(value, ci, '.4f')} | {how} |")
    return "\n".join(lines) + "\n"


def _output_path(argv: list[str]) -> Path | None:
    for i, a in enumerate(argv):
        if a in ("--output_path", "-o") and i + 1 < len(argv):
            return Path(argv[i + 1])
        if a.startswith("--output_path="):
            return Path(a.split("=", 1)[1])
    return None


def print_intervals(output_path: Path, since: float) -> None:
    """Print `interval_table` for each results file lm-eval wrote under ``output_path`` since ``since``."""
    root = output_path.parent if output_path.suffix == ".json" else output_path
    fresh = sorted(p for p in root.rglob("*.json") if p.stat().st_mtime >= since and "results" in p.name)
    for path in fresh:
        body = json.loads(path.read_text())
        if isinstance(body, dict) and "results" in body:
            print(f"\nxdlm-tune lm-eval: {path.name} with 95% intervals\n\n{interval_table(body)}", end="")


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
    from .model import LocalDataError, ModelArgError  # the import registers --model xdlm

    if any(a in ("-h", "--help") for a in argv):  # say whose flags follow, then lm-eval's own help
        print(HELP)
    old = sys.argv
    sys.argv = ["lm-eval", *build_argv(argv)]
    started = time.time() - 1  # results files written from now on are this run's
    try:
        with _quiet_git_hash():
            cli_evaluate()
    except (ModelArgError, LocalDataError) as err:
        print(f"xdlm-tune lm-eval: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a Hub-only task offline gets its own fix; anything else re-raises
        from ..errors import unreachable_dataset

        name = unreachable_dataset(err)
        if name is None:
            raise
        print(f"xdlm-tune lm-eval: {offline_task_message(name)}", file=sys.stderr)
        return 2
    finally:
        sys.argv = old
    out = _output_path(argv)
    if out is not None and (out.parent if out.suffix == ".json" else out).is_dir():
        print_intervals(out, started)
    return 0


OFFLINE_TASKS = ("pydocs_mc", "pydocs_ppl", "mbpp_local")
HELP = (
    "xdlm-tune lm-eval: lm-evaluation-harness's command line with --model xdlm and the offline tasks "
    f"of {TASKS_DIR} added ({', '.join(OFFLINE_TASKS)}; see docs/lm-eval.md).\n"
    "xdlm model_args: steps, block_length, gen_length, sampler, k, ... for generation tasks (mbpp_local); "
    "mc_num (default 128), mc_batch_size (32), ... for likelihood tasks (pydocs_mc, pydocs_ppl, hellaswag, ...): "
    "each likelihood request costs mc_num Monte-Carlo draws, mc_num / mc_batch_size forward passes, and `steps` "
    "does not apply; the number of passes is printed before they start.\n"
    "examples:\n"
    "  xdlm-tune lm-eval --model_args pretrained=smollm2-135m,steps=32 --tasks mbpp_local "
    "--limit 5 --confirm_run_unsafe_code --output_path runs/lm_eval\n"
    "  xdlm-tune lm-eval --model_args pretrained=smollm2-135m,mc_num=16 --tasks pydocs_mc,pydocs_ppl "
    "--limit 4 --output_path runs/lm_eval   # likelihood: mc_num sets the cost\n"
)


def offline_task_message(dataset: str) -> str:
    """The fix for a task whose data set lives only on the Hub, when the Hub is out of reach."""
    what = f"the data set {dataset!r}" if dataset else "this task's data set"
    mode = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else ""
    return (
        f"{what} is not in the local cache and cannot be downloaded from the Hugging Face Hub{mode}. Fix: run one "
        f"of the offline tasks shipped with xdlm-tune, --tasks {','.join(OFFLINE_TASKS)} (`xdlm-tune lm-eval ls "
        "tasks` lists all), or connect once so the data set is cached (later runs work with HF_HUB_OFFLINE=1)."
    )


@contextlib.contextmanager
def _quiet_git_hash():
    """lm-eval records `git describe` of the working directory; outside a checkout git prints
    `fatal: not a git repository` to the terminal. The same lookup with git's stderr dropped."""
    import lm_eval.evaluator as evaluator
    from lm_eval.loggers.utils import get_commit_from_path

    def git_hash():
        try:
            out = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=True)
            return out.stdout.strip()
        except (subprocess.CalledProcessError, FileNotFoundError):
            return get_commit_from_path(os.getcwd())

    original = evaluator.get_git_commit_hash
    evaluator.get_git_commit_hash = git_hash
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


if __name__ == "__main__":
    sys.exit(main())
