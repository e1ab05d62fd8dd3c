"""Per-step-budget metrics: pass@1, syntax-valid rate, outcome breakdown; a table and a plot."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .execute import STATUSES


@dataclass(frozen=True)
class Summary:
    """One row: a model/sampler ``label`` at ``steps`` denoising steps (None: autoregressive)."""

    label: str
    steps: int | None
    n: int  # samples
    pass_at_1: float
    syntax_valid_rate: float
    outcomes: dict[str, int] = field(default_factory=dict)  # count per status in STATUSES
    nfe: float | None = None  # mean forward passes per sample (None: not recorded, e.g. AR)


def summarize(records: Iterable[Mapping]) -> list[Summary]:
    """Group per-sample records by (``label``, ``steps``) and aggregate them.

    Each record needs ``status`` and ``syntax_valid``; ``steps`` (missing or None: the
    autoregressive baseline), ``label`` and ``task_id`` are optional. pass@1 is the mean over
    tasks of each task's fraction of passing samples (the unbiased estimate when a task has
    several samples; the plain pass rate with one sample per task).
    """
    groups: dict[tuple[str, int | None], list[Mapping]] = defaultdict(list)
    for r in records:
        if r["status"] not in STATUSES:
            raise ValueError(f"unknown status {r['status']!r} (expected one of {STATUSES})")
        groups[(str(r.get("label") or ""), r.get("steps"))].append(r)
    summaries = []
    for (label, steps), rows in groups.items():
        per_task: dict[object, list[bool]] = defaultdict(list)
        for i, r in enumerate(rows):
            per_task[r.get("task_id", i)].append(r["status"] == "passed")
        pass_at_1 = sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)
        outcomes = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
        valid = sum(bool(r["syntax_valid"]) for r in rows) / len(rows)
        nfes = [r["nfe"] for r in rows if r.get("nfe") is not None]
        nfe = sum(nfes) / len(nfes) if nfes else None
        summaries.append(Summary(label, steps, len(rows), pass_at_1, valid, outcomes, nfe))
    # Baseline (steps None) first within each label, then by step budget.
    return sorted(summaries, key=lambda s: (s.label, s.steps is not None, s.steps or 0))


def markdown_table(summaries: Sequence[Summary]) -> str:
    """A GitHub markdown table; the label column appears only when labels differ from ''."""
    with_label = any(s.label for s in summaries)
    head = (["model"] if with_label else []) + ["steps", "n", "pass@1", "syntax valid"]
    head += ["passed", "wrong answer", "error", "timeout", "NFE"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        cells = ([s.label] if with_label else []) + [
            "AR" if s.steps is None else str(s.steps),
            str(s.n),
            f"{100 * s.pass_at_1:.1f}%",
            f"{100 * s.syntax_valid_rate:.1f}%",
        ]
        cells += [str(s.outcomes.get(k, 0)) for k in STATUSES]
        cells.append("-" if s.nfe is None else f"{s.nfe:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_summary(summaries: Sequence[Summary], path: str | Path, title: str = "") -> Path:
    """PNG of pass@1 (solid) and syntax-valid rate (dashed) against steps, one colour per
    label; autoregressive baselines are horizontal lines."""
    # Figure + Agg canvas directly: no pyplot, so no global backend is switched in the caller.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = list(dict.fromkeys(s.label for s in summaries))
    for i, label in enumerate(labels):
        color = f"C{i % 10}"
        rows = [s for s in summaries if s.label == label]
        swept = sorted((s for s in rows if s.steps is not None), key=lambda s: s.steps)
        name = label or "diffusion"
        if swept:
            x = [s.steps for s in swept]
            ax.plot(x, [100 * s.pass_at_1 for s in swept], "o-", color=color, label=f"{name} pass@1")
            ax.plot(x, [100 * s.syntax_valid_rate for s in swept], "s--", color=color, alpha=0.6,
                    label=f"{name} syntax valid")
        for s in rows:
            if s.steps is None:
                ar_name = f"{label} AR" if label else "AR baseline"
                ax.axhline(100 * s.pass_at_1, color=color, linestyle=":", label=f"{ar_name} pass@1")
    steps = sorted({s.steps for s in summaries if s.steps is not None})
    if steps:
        ax.set_xscale("log", base=2)
        ax.set_xticks(steps, [str(x) for x in steps])
        ax.minorticks_off()
    ax.set_xlabel("denoising steps")
    ax.set_ylabel("%")
    ax.set_ylim(-2, 102)  # room for markers at 0% and 100%
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
