"""Executor cost: programs per second through ``execute_many``, the old in-process executor vs the jail.

The old executor is read from git (``--old-rev``, default: the last commit before
xdlm_tune/sandbox existed) into a temporary package, so both run in this process on the same
machine. The MBPP reference solutions (the 500-problem test split, its standard tests) run in
chunks, alternating which executor goes first, so that a change of load hits both alike. Also
counts, with the new executor, which path each test took (plain data only, or the program's
objects and callbacks) for all 974 MBPP references with challenge tests and all 164 HumanEval
canonical solutions.

    PYTHONPATH=. python benchmarks/sandbox_speed.py --out benchmarks/results/sandbox_speed_cpu.md
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from xdlm_tune.evaluation import load_humaneval, load_mbpp
from xdlm_tune.sandbox import execute_many, jail

REPO = Path(__file__).resolve().parents[1]
OLD_FILES = ("execute.py", "screen.py", "sandbox_runner.py", "sandbox_limits.py", "sandbox_guards.py")


def load_old(rev: str):
    """The old executor's ``execute_many``, from xdlm_tune/evaluation/ at ``rev``."""
    folder = Path(tempfile.mkdtemp(prefix="old-sandbox-")) / "old_sandbox"
    folder.mkdir()
    for name in OLD_FILES:
        text = subprocess.run(
            ["git", "show", f"{rev}:xdlm_tune/evaluation/{name}"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
        (folder / name).write_text(text)
    (folder / "__init__.py").write_text("")
    spec = importlib.util.spec_from_file_location("old_sandbox", folder / "__init__.py")
    package = importlib.util.module_from_spec(spec)
    sys.modules["old_sandbox"] = package
    spec.loader.exec_module(package)
    return importlib.import_module("old_sandbox.execute").execute_many


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-rev", default="2e2706c", help="git revision of the old executor (xdlm_tune/evaluation/)")
    ap.add_argument("--chunk", type=int, default=50, help="programs per alternating chunk")
    ap.add_argument("--workers", type=int, default=None, help="execute_many workers (default: usable cores)")
    ap.add_argument("--out", default=None, help="markdown file for the results")
    args = ap.parse_args()

    old_many = load_old(args.old_rev)
    problems = load_mbpp()  # the 500-problem test split, standard tests
    jobs = [(p.reference, p.test_code) for p in problems]
    load_before = os.getloadavg()
    spent = {"old": 0.0, "new": 0.0}
    statuses = {"old": Counter(), "new": Counter()}
    for n, start in enumerate(range(0, len(jobs), args.chunk)):
        chunk = jobs[start : start + args.chunk]
        order = [("old", old_many), ("new", execute_many)]
        for name, many in order if n % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            results = many(chunk, workers=args.workers)
            spent[name] += time.perf_counter() - t0
            statuses[name].update(r.status for r in results)
        print(f"{start + len(chunk)}/{len(jobs)}: old {spent['old']:.1f} s, new {spent['new']:.1f} s", flush=True)
    load_after = os.getloadavg()

    paths = {}
    for label, probs in [
        ("MBPP, 974 references with challenge tests", load_mbpp(ids=range(1, 975), challenge=True)),
        ("HumanEval, 164 canonical solutions", load_humaneval()),
    ]:
        results = execute_many([(p.reference, p.test_code) for p in probs], workers=args.workers)
        paths[label] = (Counter(r.path for r in results), Counter(r.status for r in results))
        print(label, dict(paths[label][0]), dict(paths[label][1]), flush=True)

    rate = {k: len(jobs) / v for k, v in spent.items()}
    lines = [
        "# Sandbox executor cost: old (in-process verdict) vs new (judge + OS jail)",
        "",
        f"Machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs "
        f"({len(os.sched_getaffinity(0))} usable), Linux {platform.release()}, Python {platform.python_version()}.",
        f"Jail mode of the new executor: **{jail.mode()}**; running as uid {os.geteuid()}. "
        f"Old executor: xdlm_tune/evaluation at {args.old_rev}.",
        f"Load average before / after: {load_before[0]:.1f} / {load_after[0]:.1f} "
        "(the machine was shared and loaded: read the ratio, not the absolute rates).",
        "",
        f"MBPP test split, {len(jobs)} reference solutions, `execute_many` (workers = "
        f"{args.workers or 'usable cores'}), chunks of {args.chunk} alternating which executor goes first:",
        "",
        "| executor | seconds | programs/s | statuses |",
        "|---|---|---|---|",
    ]
    for name in ("old", "new"):
        lines.append(f"| {name} | {spent[name]:.1f} | {rate[name]:.2f} | {dict(statuses[name])} |")
    lines += ["", f"New / old time: **{spent['new'] / spent['old']:.2f}x** (the bound is 2x).", ""]
    lines += ["Which path each run's tests took (new executor):", "", "| set | plain | objects | statuses |"]
    lines += ["|---|---|---|---|"]
    for label, (path, status) in paths.items():
        lines.append(f"| {label} | {path.get('plain', 0)} | {path.get('objects', 0)} | {dict(status)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
