"""Evaluation pieces that need no model: the sandboxed executor, benchmark tasks, metrics.

Nothing here imports torch; ``execute`` is the security boundary (see execute.py).
"""

from .execute import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, STATUSES, ExecResult, execute, execute_many
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
    "DEFAULT_MEMORY_MB",
    "DEFAULT_TIMEOUT",
    "HUMANEVAL_STOP",
    "MBPP_STOP",
    "STATUSES",
    "ExecResult",
    "Problem",
    "Summary",
    "check_generations",
    "execute",
    "execute_many",
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
