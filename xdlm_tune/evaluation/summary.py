"""A finished evaluation folder, summarized: the pass@1 table with its intervals (metrics.py), where the
benchmark came from, the sandbox's jail, the invariance checks (invariance.py), summary.md and the plot."""

from __future__ import annotations

import json
from pathlib import Path

from .metrics import markdown_table, plot_summary, summarize


def summarize_run(out_dir: str | Path, title: str = "") -> dict:
    """Merge the per-rank sample files and write summary.md, summary.json and pass_at_1.png."""
    out = Path(out_dir)
    rows = []
    files = sorted(out.glob("samples*.jsonl"))
    for f in files:
        for line in f.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    if not rows:
        raise ValueError(f"no samples under {out}: run the evaluation first")
    from .invariance import summary_section

    summaries = summarize(rows)
    table = markdown_table(summaries)
    # Where the benchmark came from (shipped copy / Hub revision / a file) and the sandbox's isolation
    # level that judged the programs: with the table, so the printed table and the model card say it too.
    sources = sorted({r["data"] for r in rows if r.get("data")})
    jails = sorted({r["jail"] for r in rows if r.get("jail")})
    footer = ([f"Benchmark data: {'; '.join(sources)}"] if sources else []) + (
        [f"Sandbox jail: {', '.join(jails)}"] if jails else []
    )
    if footer:
        table += "\n" + "\n".join(footer) + "\n"
    checked = summary_section(out)
    note = "Rates with 95% intervals (Wilson; pass@k over several samples: bootstrap over problems).\n"
    (out / "summary.md").write_text((f"# {title}\n\n" if title else "") + table + "\n" + note + "\n" + checked)
    (out / "summary.json").write_text(json.dumps([s.__dict__ for s in summaries], indent=2))
    benchmark = str(rows[0].get("task_id", "")).split("/")[0].lower() or None  # "mbpp/11", "HumanEval/0"
    plot = plot_summary(summaries, out / "pass_at_1.png", benchmark=benchmark)
    return {
        "table": table,
        "summary": summaries,
        "plot": plot,
        "samples": len(rows),
        "files": files,
        "invariance": checked,
    }
