"""Evaluation pieces that need no model: benchmark tasks, metrics.

Nothing here imports torch. Generated code runs in xdlm_tune.sandbox (the security boundary).
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
