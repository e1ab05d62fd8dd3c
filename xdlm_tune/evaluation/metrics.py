"""Per-step-budget metrics: pass@1, syntax-valid rate, outcome breakdown; a table and a plot."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..sandbox import STATUSES


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
    jail: str = ""  # the sandbox's isolation level(s) the rows ran in: "bwrap", "namespaces", "in-process"


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
        jail = ",".join(sorted({str(r["jail"]) for r in rows if r.get("jail")}))
        summaries.append(Summary(label, steps, len(rows), pass_at_1, valid, outcomes, nfe, jail))
    # Baseline (steps None) first within each label, then by step budget.
    return sorted(summaries, key=lambda s: (s.label, s.steps is not None, s.steps or 0))


_ROW_KEYS = {"label", "steps", "n", "pass_at_1", "syntax_valid_rate"}


def is_summary_row(row: object) -> bool:
    """Whether `row` is one row of summary.json (a `Summary` as a dict)."""
    return isinstance(row, Mapping) and _ROW_KEYS <= set(row)


def summaries_from_rows(rows: Iterable[Mapping]) -> list[Summary]:
    """The rows of summary.json back as Summaries (keys a newer Summary lacks are ignored)."""
    names = {f.name for f in fields(Summary)}
    return [Summary(**{k: v for k, v in row.items() if k in names}) for row in rows]


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


def read_markdown_table(text: str) -> list[Summary]:
    """The rows of a `markdown_table` (e.g. a committed results file) back as Summaries;
    rates come back rounded to the table's 0.1%."""
    rows, head = [], None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or set(line.replace("|", "").strip()) <= {"-"}:
            continue
        if head is None:
            head = cells
            continue
        r = dict(zip(head, cells))
        outcomes = {k: int(r[k.replace("_", " ")]) for k in STATUSES}
        rows.append(
            Summary(
                r.get("model", ""),
                None if r["steps"] == "AR" else int(r["steps"]),
                int(r["n"]),
                float(r["pass@1"].rstrip("%")) / 100,
                float(r["syntax valid"].rstrip("%")) / 100,
                outcomes,
            )
        )
    if head is None or not rows:
        raise ValueError("no results table found (expected the rows of markdown_table)")
    return rows


_METRICS = (("pass_at_1", "pass@1"), ("syntax_valid_rate", "syntax-valid rate"))
_BENCHMARK_NAMES = {"mbpp": "MBPP", "humaneval": "HumanEval"}


def ar_name(label: str) -> str:
    """How an autoregressive row is named in the plot: 'base (AR)', never 'base (AR) AR'."""
    label = label or "base"
    return label if "AR" in label.split() or "(AR)" in label else f"{label} (AR)"


def summary_figure(summaries: Sequence[Summary], title: str = "", benchmark: str | None = None):
    """The evaluation figure: one panel per metric (pass@1, syntax-valid rate). Diffusion rows are
    marked lines over the step budgets, one colour per label (bars when there is one budget);
    autoregressive rows are labelled horizontal reference lines in both panels. The title names
    the benchmark and n."""
    # Figure + Agg canvas directly: no pyplot, so no global backend is switched in the caller.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    ar = [s for s in summaries if s.steps is None]
    diffusion = [s for s in summaries if s.steps is not None]
    labels = list(dict.fromkeys(s.label or "diffusion" for s in diffusion))
    steps = sorted({s.steps for s in diffusion})
    fig = Figure(figsize=(10, 4.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (attr, name) in zip(axes, _METRICS):
        if len(steps) == 1:  # one budget: a "curve" would be one point
            width = 0.8 / max(len(labels), 1)
            for i, label in enumerate(labels):
                (s,) = [r for r in diffusion if (r.label or "diffusion") == label]
                bar = ax.bar(
                    i * width,
                    100 * getattr(s, attr),
                    width=width * 0.9,
                    color=f"C{i % 10}",
                    label=f"{label} ({steps[0]} steps)",
                )
                ax.bar_label(bar, fmt="%.1f%%", fontsize=8)
            ax.set_xticks([(len(labels) - 1) * width / 2], [f"{steps[0]} denoising steps"])
            ax.set_xlim(-0.6, (len(labels) - 1) * width + 0.6)
        else:
            for i, label in enumerate(labels):
                rows = sorted((r for r in diffusion if (r.label or "diffusion") == label), key=lambda r: r.steps)
                ax.plot(
                    [r.steps for r in rows],
                    [100 * getattr(r, attr) for r in rows],
                    "o-",
                    color=f"C{i % 10}",
                    markersize=6,
                    linewidth=1.8,
                    label=label,
                    zorder=3,
                )
            if steps:
                ax.set_xscale("log", base=2)
                ax.set_xticks(steps, [str(x) for x in steps])
                ax.minorticks_off()
                ax.set_xlim(steps[0] / 1.25, steps[-1] * 1.25)
            ax.set_xlabel("denoising steps")
        # AR rows last and on top, so a reference at 0% or 100% is not hidden by a curve or the axis.
        at_right = blended_transform_factory(ax.transAxes, ax.transData)
        for j, s in enumerate(ar):
            value = 100 * getattr(s, attr)
            ax.axhline(
                value,
                color=("0.15", "0.45", "0.65")[j % 3],
                linestyle=(0, (5, 3)),
                linewidth=1.6,
                zorder=4,
                label=f"{ar_name(s.label)}, greedy",
            )
            ax.text(
                0.99,
                value + 1.5,
                f"{ar_name(s.label)}: {value:.1f}%",
                transform=at_right,
                ha="right",
                va="bottom",
                fontsize=8,
                color=("0.15", "0.45", "0.65")[j % 3],
                zorder=5,
            )
        ax.set_title(name)
        ax.set_ylim(-4, 108)  # 0% and 100% stay off the frame
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% of problems")
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="lower center", ncol=min(len(handles), 3), fontsize=9, frameon=False)
    ns = sorted({s.n for s in summaries})
    n = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    bench = _BENCHMARK_NAMES.get((benchmark or "").lower(), benchmark or "")
    heading = title or f"{bench + ': ' if bench else ''}pass@1 and syntax-valid rate"
    fig.suptitle(f"{heading}, n = {n} problems" if "n =" not in heading else heading)
    rows_of_legend = -(-len(handles) // 3) if handles else 0
    fig.tight_layout(rect=(0, 0.06 * rows_of_legend, 1, 1))
    return fig


def plot_summary(summaries: Sequence[Summary], path: str | Path, title: str = "", benchmark: str | None = None) -> Path:
    """Save `summary_figure` as a PNG at `path`."""
    fig = summary_figure(summaries, title=title, benchmark=benchmark)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
