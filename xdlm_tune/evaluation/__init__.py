"""Benchmark evaluation at fixed step budgets: tasks, prompts and answer extraction (tasks.py, extract.py),
metrics and intervals (metrics.py, stats.py), generation (harness.py), the models scored (load.py),
summaries (summary.py), `xdlm-tune compare` (compare.py), `--check-invariance` (invariance.py),
gen-PPL (genppl/) and `xdlm-tune eval` (entry.py).

This ``__init__`` imports no torch (the names below need no model; tests/test_layers.py checks it);
harness.py, load.py, invariance.py, entry.py and genppl/ do. Generated code runs in
xdlm_tune.sandbox (the security boundary).
"""

from .extract import HUMANEVAL_STOP, MBPP_STOP, extract_humaneval, extract_mbpp, syntax_valid
from .metrics import Summary, markdown_table, plot_summary, summarize
from .tasks import (
    BENCHMARKS,
    Problem,
    check_generations,
    load_benchmark,
    load_humaneval,
    load_mbpp,
)

__all__ = [
    "BENCHMARKS",
    "HUMANEVAL_STOP",
    "MBPP_STOP",
    "Problem",
    "Summary",
    "check_generations",
    "extract_humaneval",
    "extract_mbpp",
    "load_benchmark",
    "load_humaneval",
    "load_mbpp",
    "markdown_table",
    "plot_summary",
    "summarize",
    "syntax_valid",
]
