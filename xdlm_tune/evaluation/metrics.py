"""Per-step-budget metrics: pass@1, syntax-valid rate, outcome breakdown, each rate with its 95%
interval (stats.py); a table and a plot."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..sandbox import STATUSES
from .stats import Interval, fmt_rate, leading_number, pass_at_k_ci, wilson

PASS_AT_K = (1, 5, 10)  # reported where every problem has at least k samples


@dataclass(frozen=True)
class Summary:
    """One row: a model/sampler ``label`` at ``steps`` denoising steps (None: autoregressive).

    Rates come with 95% intervals: Wilson for proportions (pass@1 with one sample per problem,
    the syntax-valid rate); with several samples per problem pass@1 and ``pass_at_k`` use the
    unbiased estimator and a bootstrap over problems. A row built without intervals (by hand, or
    read back from a table) gets Wilson intervals from its counts, one sample per problem assumed.
    """

    label: str
    steps: int | None
    n: int  # samples
    pass_at_1: float
    syntax_valid_rate: float
    outcomes: dict[str, int] = field(default_factory=dict)  # count per status in STATUSES
    nfe: float | None = None  # mean forward passes per sample (None: not recorded, e.g. AR)
    jail: str = ""  # the sandbox's isolation level(s) the rows ran in: "bwrap", "namespaces", "in-process"
    pass_at_1_ci: Interval | None = None
    syntax_valid_ci: Interval | None = None
    problems: int | None = None  # distinct problems (n / problems samples each); None: n
    pass_at_k: dict[str, dict] = field(default_factory=dict)  # "pass@5": {"value": v, "ci": [lo, hi]}

    def __post_init__(self):
        # Frozen: fill the derived fields through object.__setattr__, once, at construction.
        if self.pass_at_1_ci is None and self.n:
            object.__setattr__(self, "pass_at_1_ci", wilson(round(self.pass_at_1 * self.n), self.n))
        if self.syntax_valid_ci is None and self.n:
            object.__setattr__(self, "syntax_valid_ci", wilson(round(self.syntax_valid_rate * self.n), self.n))
        for name in ("pass_at_1_ci", "syntax_valid_ci"):  # JSON gives lists back
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, (float(value[0]), float(value[1])))

    @classmethod
    def from_dict(cls, row: Mapping) -> "Summary":
        """A row of summary.json back as a Summary (unknown keys are ignored)."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in row.items() if k in names})


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
        flags = list(per_task.values())
        pass_at_1, pass_ci = pass_at_k_ci(flags, 1)
        fewest = min(len(v) for v in flags)
        pass_at_k = {}
        for k in PASS_AT_K[1:]:
            if fewest >= k:
                value, ci = pass_at_k_ci(flags, k)
                pass_at_k[f"pass@{k}"] = {"value": value, "ci": ci}
        outcomes = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
        n_valid = sum(bool(r["syntax_valid"]) for r in rows)
        nfes = [r["nfe"] for r in rows if r.get("nfe") is not None]
        nfe = sum(nfes) / len(nfes) if nfes else None
        jail = ",".join(sorted({str(r["jail"]) for r in rows if r.get("jail")}))
        summaries.append(
            Summary(
                label,
                steps,
                len(rows),
                pass_at_1,
                n_valid / len(rows),
                outcomes,
                nfe,
                pass_at_1_ci=pass_ci,
                syntax_valid_ci=wilson(n_valid, len(rows)),
                problems=len(per_task),
                pass_at_k=pass_at_k,
                jail=jail,
            )
        )
    # Baseline (steps None) first within each label, then by step budget.
    return sorted(summaries, key=lambda s: (s.label, s.steps is not None, s.steps or 0))


CI = " (95% CI)"  # the header suffix of a column whose cells carry an interval


def markdown_table(summaries: Sequence[Summary]) -> str:
    """A GitHub markdown table; rates as 'value [low, high]' (95% interval); the label column
    appears only when labels differ from '', pass@k columns only when some row has them."""
    with_label = any(s.label for s in summaries)
    ks = list(dict.fromkeys(k for s in summaries for k in s.pass_at_k))
    head = (["model"] if with_label else []) + ["steps", "n", f"pass@1{CI}", f"syntax valid{CI}"]
    head += [f"{k}{CI}" for k in ks] + ["passed", "wrong answer", "error", "timeout", "NFE"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        n = str(s.n) if s.problems in (None, s.n) else f"{s.n} ({s.problems} problems)"
        cells = ([s.label] if with_label else []) + [
            "AR" if s.steps is None else str(s.steps),
            n,
            fmt_rate(s.pass_at_1, s.pass_at_1_ci),
            fmt_rate(s.syntax_valid_rate, s.syntax_valid_ci),
        ]
        cells += [fmt_rate(s.pass_at_k[k]["value"], s.pass_at_k[k]["ci"]) if k in s.pass_at_k else "-" for k in ks]
        cells += [str(s.outcomes.get(k, 0)) for k in STATUSES]
        cells.append("-" if s.nfe is None else f"{s.nfe:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_markdown_table(text: str) -> list[Summary]:
    """The rows of a `markdown_table` (e.g. a committed results file, with or without intervals)
    back as Summaries; rates come back rounded to the table's 0.1%, intervals as Wilson from the
    counts."""
    rows, head = [], None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or set(line.replace("|", "").strip()) <= {"-"}:
            continue
        if head is None:
            head = cells
            continue
        r = {h.removesuffix(CI): c for h, c in zip(head, cells)}  # with or without intervals
        outcomes = {k: int(r[k.replace("_", " ")]) for k in STATUSES}
        rows.append(
            Summary(
                r.get("model", ""),
                None if r["steps"] == "AR" else int(r["steps"]),
                int(r["n"].split()[0]),
                leading_number(r["pass@1"]) / 100,
                leading_number(r["syntax valid"]) / 100,
                outcomes,
            )
        )
    if head is None or not rows:
        raise ValueError("no results table found (expected the rows of markdown_table)")
    return rows


_METRICS = (("pass_at_1", "pass@1"), ("syntax_valid_rate", "syntax-valid rate"))
_CI_OF = {"pass_at_1": "pass_at_1_ci", "syntax_valid_rate": "syntax_valid_ci"}


def _ci(s: Summary, attr: str) -> tuple[float, float]:
    """The row's 95% interval of ``attr`` in percent (the value itself when it has none)."""
    ci = getattr(s, _CI_OF[attr]) or (getattr(s, attr),) * 2
    return 100 * ci[0], 100 * ci[1]


_BENCHMARK_NAMES = {"mbpp": "MBPP", "humaneval": "HumanEval"}


def ar_name(label: str) -> str:
    """How an autoregressive row is named in the plot: 'base (AR)', never 'base (AR) AR'."""
    label = label or "base"
    return label if "AR" in label.split() or "(AR)" in label else f"{label} (AR)"


def summary_figure(summaries: Sequence[Summary], title: str = "", benchmark: str | None = None):
    """The evaluation figure: one panel per metric (pass@1, syntax-valid rate). Diffusion rows are
    marked lines over the step budgets with a shaded 95% band, one colour per label (bars with
    error bars when there is one budget); autoregressive rows are labelled horizontal reference
    lines with a hatched band in both panels. The title names the benchmark and n."""
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
                value, (lo, hi) = 100 * getattr(s, attr), _ci(s, attr)
                ax.bar(
                    i * width,
                    value,
                    width=width * 0.9,
                    color=f"C{i % 10}",
                    alpha=0.85,
                    label=f"{label} ({steps[0]} steps)",
                )
                ax.errorbar(
                    i * width, value, yerr=[[value - lo], [hi - value]], fmt="none", ecolor="0.2", elinewidth=1.2
                )
                ax.text(i * width + width * 0.05, value + 1.5, f"{value:.1f}%", ha="left", va="bottom", fontsize=8)
            ax.set_xticks([(len(labels) - 1) * width / 2], [f"{steps[0]} denoising steps"])
            ax.set_xlim(-0.6, (len(labels) - 1) * width + 0.6)
        else:
            for i, label in enumerate(labels):
                rows = sorted((r for r in diffusion if (r.label or "diffusion") == label), key=lambda r: r.steps)
                band = [_ci(r, attr) for r in rows]
                ax.fill_between(
                    [r.steps for r in rows],
                    [b[0] for b in band],
                    [b[1] for b in band],
                    color=f"C{i % 10}",
                    alpha=0.15,
                    linewidth=0,
                    zorder=2,
                )
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
            value, (lo, hi) = 100 * getattr(s, attr), _ci(s, attr)
            ax.fill_between(
                [0, 1],
                [lo, lo],
                [hi, hi],
                transform=at_right,
                facecolor="none",
                edgecolor=("0.15", "0.45", "0.65")[j % 3],
                hatch="///",
                alpha=0.35,
                linewidth=0,
                zorder=1,
            )
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
    axes[0].set_ylabel("% of problems (bars / bands: 95% interval)")
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
