"""`xdlm-tune compare RUN_A RUN_B`: is the difference between two evaluations real?

    xdlm-tune compare runs/eval-k0 runs/eval-k0.1 --allow-different k sampler
    xdlm-tune compare runs/sweep/k=0 runs/sweep/k=0.1 --steps 16 --allow-different k --json cmp.json

A run is an `xdlm-tune eval` folder (samples.jsonl: MBPP / HumanEval) or a genppl folder
(samples_genppl.jsonl: `eval --benchmark genppl`, or one k's run folder of a sweep). The two are
paired problem by problem (prompt by prompt for genppl) at each step budget both have:

* pass@1 and the syntax-valid rate (genppl: the compile and EOS rates) of each run with its
  Wilson interval, the paired difference B - A with a paired-bootstrap interval, the exact
  McNemar test on the discordant problems, and the ids that flip each way;
* genppl: the ratio gen-PPL(B) / gen-PPL(A) with a paired bootstrap (prompts resampled in both
  runs at once) and the paired difference in entropy.

Runs whose problems, prompt format, step budget or sampler settings differ are refused with
each difference listed, unless ``--allow-different SETTING`` names it (then only the shared
problems are paired). The seed and batch size are reported, never refused: two seeds of one
model is how the noise floor is measured. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import UserError
from .stats import fmt_rate, fmt_value, gen_ppl_ci, mcnemar_exact, paired_diff_ci, paired_gen_ppl_ratio_ci, wilson

# SamplerSettings' fields but steps (tests/test_compare.py keeps the two lists equal; importing
# the sampler would import torch).
SAMPLER_FIELDS = (
    "gen_length",
    "block_length",
    "sampler",
    "temperature",
    "top_p",
    "k",
    "schedule",
    "eps",
    "revise_prompt",
    "final_step",
    "cache",
    "refresh",
    "refresh_every",
    "threshold",
)
SETTINGS = ("problems", "prompt_format", "steps", *SAMPLER_FIELDS)
NOTED = ("seed", "batch_size")  # reported when they differ, never a refusal
_SHOWN = 8  # ids listed per difference before "... and N more"


class CompareError(UserError):
    """Two runs that cannot be paired, or a run folder that is not one."""


@dataclass
class Run:
    """One side of a comparison: the rows of one (label, steps) group, keyed by problem."""

    path: Path
    kind: str  # "eval" or "genppl"
    label: str
    steps: int | None
    rows: dict[str, dict] = field(default_factory=dict)  # problem key -> sample row

    @property
    def name(self) -> str:
        budget = "AR" if self.steps is None else f"{self.steps} steps"
        return f"{self.path} ({self.label}, {budget})" if self.label else f"{self.path} ({budget})"


# --------------------------------------------------------------------------- reading


def _read_jsonl(paths: Iterable[Path]) -> list[dict]:
    rows = []
    for p in paths:
        for line in p.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by an interruption (the evaluation redoes it)
    return rows


def load_rows(path: str | Path) -> tuple[str, list[dict]]:
    """("eval" | "genppl", sample rows) of a run folder (or one of its samples files)."""
    p = Path(path)
    if p.is_file():
        kind = "genppl" if p.name.startswith("samples_genppl") else "eval"
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.glob("samples*.jsonl") if not f.name.startswith("samples_genppl"))
        kind = "eval"
        if not files:
            files, kind = sorted(p.glob("samples_genppl.jsonl")), "genppl"
    else:
        raise CompareError(f"{p} does not exist; give an `xdlm-tune eval` or genppl output folder.")
    rows = _read_jsonl(files)
    if not rows:
        raise CompareError(
            f"no samples under {p} (expected samples.jsonl from `xdlm-tune eval` or samples_genppl.jsonl "
            "from `xdlm-tune eval --benchmark genppl` / a sweep's k=<k> folder); run the evaluation first."
        )
    if kind == "genppl" and "nll" not in rows[0]:
        raise CompareError(
            f"{files[0]} has no per-sample scores (written before `compare` existed); "
            "re-run the genppl evaluation to pair its samples."
        )
    return kind, rows


def _key(kind: str, row: dict, fallback: int) -> str:
    return str(row["task_id"]) if kind == "eval" else str(row.get("index", fallback))


def groups(kind: str, rows: Sequence[dict], path: Path) -> dict[tuple[str, int | None], Run]:
    """The runs of a folder by (label, steps), each keyed by problem (genppl: prompt index)."""
    out: dict[tuple[str, int | None], Run] = {}
    counts: dict[tuple[str, int | None], int] = defaultdict(int)
    for r in rows:
        g = (str(r.get("label") or ""), r.get("steps"))
        run = out.setdefault(g, Run(path, kind, g[0], g[1]))
        key = _key(kind, r, counts[g])
        counts[g] += 1
        if key in run.rows:
            raise CompareError(
                f"{path} holds two samples of problem {key} for {g[0] or 'the model'} at steps {g[1]}; "
                "compare pairs one sample per problem (evaluate each run into its own folder)."
            )
        run.rows[key] = r
    return out


def pick(path: str | Path, steps: Sequence[int | None] | None, label: str | None) -> tuple[str, dict[int | None, Run]]:
    """The run at each step budget of a folder: with ``label`` that label's rows; otherwise the
    folder must hold one label per budget (an eval with --ar-baseline holds two at none: AR is steps None)."""
    kind, rows = load_rows(path)
    by_group = groups(kind, rows, Path(path))
    chosen: dict[int | None, Run] = {}
    for (lab, s), run in by_group.items():
        if label is not None and lab != label:
            continue
        if steps is not None and s not in steps:
            continue
        if s in chosen:
            raise CompareError(
                f"{path} holds several models at {'AR' if s is None else f'{s} steps'} "
                f"({chosen[s].label!r}, {lab!r}); pick one with --label-a / --label-b."
            )
        chosen[s] = run
    if not chosen:
        have = sorted({f"{lab or '-'} @ {'AR' if s is None else s}" for lab, s in by_group})
        raise CompareError(f"nothing in {path} matches label {label!r} and steps {steps}; it holds: {', '.join(have)}.")
    return kind, chosen


# --------------------------------------------------------------------------- checks


def _values(run: Run, name: str) -> set[str]:
    out = set()
    for r in run.rows.values():
        sampler = r.get("sampler") or {}
        if name == "prompt_format":
            v = r.get("prompt_format", "(not recorded)")
        elif name in NOTED:
            v = r.get(name, sampler.get(name, "(not recorded)"))
        else:
            v = sampler.get(name, "(autoregressive)" if r.get("steps") is None else "(not recorded)")
        out.add(json.dumps(v))
    return out


def _ids(keys: Iterable[str]) -> str:
    keys = sorted(keys, key=_natural)
    more = f" ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _natural(key: str):
    tail = key.rsplit("/", 1)[-1]
    return (key.rsplit("/", 1)[0] if "/" in key else "", int(tail) if tail.isdigit() else math.inf, key)


def differences(a: Run, b: Run) -> dict[str, str]:
    """Each setting (of SETTINGS) in which the two runs differ -> what differs, in words."""
    out = {}
    only_a, only_b = set(a.rows) - set(b.rows), set(b.rows) - set(a.rows)
    shared = set(a.rows) & set(b.rows)
    if a.kind == "genppl":  # the same index must be the same prompt
        changed = [k for k in shared if a.rows[k].get("prefix") != b.rows[k].get("prefix")]
        if changed:
            out["problems"] = f"the prompts differ at indices {_ids(changed)}"
    if only_a or only_b:
        parts = [f"only in A: {_ids(only_a)}" if only_a else "", f"only in B: {_ids(only_b)}" if only_b else ""]
        out["problems"] = "; ".join(p for p in [out.get("problems", ""), *parts] if p)
    if a.steps != b.steps:
        out["steps"] = f"A {a.steps if a.steps is not None else 'AR'}, B {b.steps if b.steps is not None else 'AR'}"
    for name in SETTINGS[1:] if a.kind == "eval" else SETTINGS[2:]:  # genppl has no prompt format
        if name == "steps":
            continue
        va, vb = _values(a, name), _values(b, name)
        if va != vb:
            out[name] = f"A {', '.join(sorted(va))}, B {', '.join(sorted(vb))}"
    return out


def notes(a: Run, b: Run) -> dict[str, str]:
    """Settings that may differ (the seed, the batch size): reported, not refused."""
    out = {}
    for name in NOTED:
        va, vb = _values(a, name), _values(b, name)
        if va != vb:
            out[name] = f"A {', '.join(sorted(va))}, B {', '.join(sorted(vb))}"
    return out


def check(a: Run, b: Run, allow: Iterable[str]) -> dict[str, str]:
    """The differences that ``allow`` permits; raises CompareError listing the others."""
    diff = differences(a, b)
    refused = {k: v for k, v in diff.items() if k not in set(allow)}
    if refused:
        lines = "".join(f"\n  {k}: {v}" for k, v in refused.items())
        raise CompareError(
            f"refusing to pair {a.name} with {b.name}; they differ in{lines}\n"
            "A difference here changes what is measured, so the paired numbers would not isolate the models. "
            f"If it is the point of the comparison, pass --allow-different {' '.join(refused)}."
        )
    return diff


# --------------------------------------------------------------------------- paired statistics


def paired_binary(keys: Sequence[str], a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Both runs' rates (Wilson), B - A with its paired-bootstrap interval, McNemar on the flips."""
    n = len(keys)
    pa, pb = sum(a), sum(b)
    a_only = [k for k, x, y in zip(keys, a, b) if x and not y]
    b_only = [k for k, x, y in zip(keys, a, b) if y and not x]
    return {
        "n": n,
        "a": {"count": pa, "rate": pa / n if n else math.nan, "ci": wilson(pa, n)},
        "b": {"count": pb, "rate": pb / n if n else math.nan, "ci": wilson(pb, n)},
        "diff": (pb - pa) / n if n else math.nan,
        "diff_ci": paired_diff_ci([float(x) for x in a], [float(y) for y in b]) if n else None,
        "a_only": sorted(a_only, key=_natural),
        "b_only": sorted(b_only, key=_natural),
        "mcnemar_p": mcnemar_exact(len(a_only), len(b_only)),
    }


def compare_pair(a: Run, b: Run, allow: Iterable[str] = ()) -> dict:
    """The paired comparison of two runs (after `check`), as a JSON-ready dict."""
    allowed = check(a, b, allow)
    keys = sorted(set(a.rows) & set(b.rows), key=_natural)
    if not keys:
        raise CompareError(f"{a.name} and {b.name} share no problem to pair.")
    ra, rb = [a.rows[k] for k in keys], [b.rows[k] for k in keys]
    out = {
        "kind": a.kind,
        "a": {"path": str(a.path), "label": a.label, "steps": a.steps},
        "b": {"path": str(b.path), "label": b.label, "steps": b.steps},
        "n": len(keys),
        "allowed_differences": allowed,
        "notes": notes(a, b),
        "metrics": {},
    }
    if a.kind == "eval":
        out["metrics"]["pass@1"] = paired_binary(
            keys, [r["status"] == "passed" for r in ra], [r["status"] == "passed" for r in rb]
        )
        out["metrics"]["syntax valid"] = paired_binary(
            keys, [bool(r["syntax_valid"]) for r in ra], [bool(r["syntax_valid"]) for r in rb]
        )
        return out
    nll_a, tok_a = [r["nll"] for r in ra], [r["tokens"] for r in ra]
    nll_b, tok_b = [r["nll"] for r in rb], [r["tokens"] for r in rb]
    ratio, ratio_ci = paired_gen_ppl_ratio_ci(nll_a, tok_a, nll_b, tok_b)
    ppl = [math.exp(min(sum(n) / max(sum(t), 1), 700.0)) for n, t in ((nll_a, tok_a), (nll_b, tok_b))]
    out["metrics"]["gen-PPL"] = {
        "a": {"value": ppl[0], "ci": gen_ppl_ci(nll_a, tok_a)},
        "b": {"value": ppl[1], "ci": gen_ppl_ci(nll_b, tok_b)},
        "ratio": ratio,
        "ratio_ci": ratio_ci,
    }
    ea, eb = [r["entropy"] for r in ra], [r["entropy"] for r in rb]
    out["metrics"]["entropy"] = {
        "a": {"value": sum(ea) / len(ea)},
        "b": {"value": sum(eb) / len(eb)},
        "diff": (sum(eb) - sum(ea)) / len(keys),
        "diff_ci": paired_diff_ci(ea, eb),
    }
    if all("compiles" in r for r in ra + rb):
        out["metrics"]["compiles"] = paired_binary(keys, [r["compiles"] for r in ra], [r["compiles"] for r in rb])
    out["metrics"]["ended (EOS)"] = paired_binary(keys, [r["ended"] for r in ra], [r["ended"] for r in rb])
    return out


def compare_runs(
    path_a: str | Path,
    path_b: str | Path,
    *,
    steps: Sequence[int | None] | None = None,
    label_a: str | None = None,
    label_b: str | None = None,
    allow: Iterable[str] = (),
    steps_a: Sequence[int | None] | None = None,
    steps_b: Sequence[int | None] | None = None,
) -> list[dict]:
    """Paired comparisons at every step budget both runs have (or the one budget each has);
    ``steps_a`` / ``steps_b`` pick each side's budgets apart (e.g. one model at 4 vs 8 steps)."""
    allow = list(allow)
    unknown = [s for s in allow if s not in SETTINGS]
    if unknown:
        raise CompareError(f"--allow-different {' '.join(unknown)}: unknown; the settings are {', '.join(SETTINGS)}.")
    kind_a, runs_a = pick(path_a, steps_a or steps, label_a)
    kind_b, runs_b = pick(path_b, steps_b or steps, label_b)
    if kind_a != kind_b:
        raise CompareError(f"{path_a} is a {kind_a} run and {path_b} a {kind_b} run; only runs of one kind pair.")
    shared = [s for s in runs_a if s in runs_b]
    if shared:
        pairs = [(runs_a[s], runs_b[s]) for s in sorted(shared, key=lambda s: (s is not None, s or 0))]
    elif len(runs_a) == 1 and len(runs_b) == 1:  # one budget each: their step budgets differ (refused below)
        pairs = [(next(iter(runs_a.values())), next(iter(runs_b.values())))]
    else:
        raise CompareError(
            f"{path_a} (steps {sorted(map(str, runs_a))}) and {path_b} (steps {sorted(map(str, runs_b))}) "
            "share no step budget; pick one on each side with --steps, or compare folders with one budget each."
        )
    return [compare_pair(a, b, allow) for a, b in pairs]


# --------------------------------------------------------------------------- output


def _pts(x: float | None, ci) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    text = f"{100 * x:+.1f} pts"
    return text if ci is None else f"{text} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def markdown(results: Sequence[dict]) -> str:
    """One table per paired comparison, with the flips and any allowed differences."""
    parts = []
    for r in results:
        a, b = r["a"], r["b"]
        name = "problems" if r["kind"] == "eval" else "prompts"

        def side(s):
            budget = "AR" if s["steps"] is None else f"{s['steps']} steps"
            return f"{s['path']} ({s['label'] + ', ' if s['label'] else ''}{budget})"

        lines = [
            f"A = {side(a)}",
            f"B = {side(b)}",
            f"{r['n']} paired {name}; 95% intervals (Wilson for rates, paired bootstrap for B - A); "
            "McNemar: exact two-sided test on the pairs that flip",
            "",
            "| metric | A | B | B - A | A only | B only | McNemar p |",
            "|---|---|---|---|---|---|---|",
        ]
        flips = []
        for metric, m in r["metrics"].items():
            if "mcnemar_p" in m:
                lines.append(
                    f"| {metric} | {fmt_rate(m['a']['rate'], m['a']['ci'])} | {fmt_rate(m['b']['rate'], m['b']['ci'])} "
                    f"| {_pts(m['diff'], m['diff_ci'])} | {len(m['a_only'])} | {len(m['b_only'])} "
                    f"| {m['mcnemar_p']:.3g} |"
                )
                if m["a_only"] or m["b_only"]:
                    flips.append(
                        f"* {metric}: only A: {', '.join(m['a_only']) or '-'}; only B: {', '.join(m['b_only']) or '-'}"
                    )
            elif metric == "gen-PPL":
                lines.append(
                    f"| gen-PPL | {fmt_value(m['a']['value'], m['a']['ci'], '.2f')} "
                    f"| {fmt_value(m['b']['value'], m['b']['ci'], '.2f')} "
                    f"| B / A = {fmt_value(m['ratio'], m['ratio_ci'], '.3f')} | | | |"
                )
            else:
                lines.append(
                    f"| {metric} | {m['a']['value']:.3f} | {m['b']['value']:.3f} "
                    f"| {fmt_value(m['diff'], m['diff_ci'], '+.3f')} | | | |"
                )
        if flips:
            lines += ["", f"{name.capitalize()} that flip:", *flips]
        for key, title in (("allowed_differences", "Allowed differences"), ("notes", "Also differs")):
            if r[key]:
                lines += ["", f"{title}: " + "; ".join(f"{k}: {v}" for k, v in r[key].items())]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="xdlm-tune compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run_a", metavar="RUN_A", help="eval or genppl output folder (or a sweep's k=<k> folder)")
    ap.add_argument("run_b", metavar="RUN_B")
    ap.add_argument(
        "--steps", nargs="+", help="only these step budgets ('AR': the autoregressive rows); default: every shared one"
    )
    ap.add_argument("--steps-a", help="RUN_A's step budget when the two sides differ (with --allow-different steps)")
    ap.add_argument("--steps-b", help="RUN_B's step budget (RUN_A and RUN_B may be the same folder)")
    ap.add_argument("--label-a", help="the model's row label in RUN_A (when it holds several)")
    ap.add_argument("--label-b", help="the model's row label in RUN_B")
    ap.add_argument(
        "--allow-different",
        nargs="+",
        default=[],
        metavar="SETTING",
        help=f"pair even though these differ: {', '.join(SETTINGS)}",
    )
    ap.add_argument("--json", metavar="FILE", help="also write the comparison as JSON ('-': stdout, no table)")
    return ap


def _budgets(flag: str, values: Sequence[str] | None) -> list[int | None] | None:
    if not values:
        return None
    try:
        return [None if v.upper() == "AR" else int(v) for v in values]
    except ValueError:
        raise CompareError(f"{flag} {' '.join(values)}: step budgets are integers or AR.") from None


def compare_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = compare_runs(
        args.run_a,
        args.run_b,
        steps=_budgets("--steps", args.steps),
        steps_a=_budgets("--steps-a", args.steps_a and [args.steps_a]),
        steps_b=_budgets("--steps-b", args.steps_b and [args.steps_b]),
        label_a=args.label_a,
        label_b=args.label_b,
        allow=args.allow_different,
    )
    if args.json == "-":
        print(json.dumps(results, indent=2))
        return 0
    print(markdown(results), end="")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"[compare] {args.json}")
    return 0


if __name__ == "__main__":
    from ..errors import cli_main

    sys.exit(cli_main("xdlm-tune compare", compare_main))
