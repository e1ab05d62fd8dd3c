"""`xdlm-tune sweep RECIPE --k 0 0.1 1 --steps 4 8 16 32`: the paper's understanding vs generation plot.

    xdlm-tune sweep recipes/smollm2-135m-xdlm-lora.yaml --k 0 0.1 1 --steps 8 16 32 --out runs/sweep training.max_steps=100
    accelerate launch -m xdlm_tune.workflows.sweep RECIPE --k 0 0.1 1 ...       (training on several processes)

One training run per k, all with the same data, seed and steps, in OUT/k=<k>/ (a finished run
is reused, an unfinished one resumed: an interrupted sweep picks up where it stopped). For each
run, the held-out NELBO (the trainer's ELBO on the recipe's held-out set, the same for every k,
at the last step: the x-axis, "understanding") and the generation metrics of
`xdlm-tune eval --benchmark genppl` at each step budget (the y-axis), on the same prefixes
under the same AR judge (the base model). The untrained conversion (step 0 of the k = first
run) and the judge's own samples are reference rows. Writes OUT/sweep.json, OUT/sweep.md and
OUT/pareto.png (held-out NELBO vs gen-PPL, a labelled marker per k, one line per step budget;
lower-left is better). Training runs on every launched process; sampling on the main one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

SAMPLE_SETTINGS = (
    "steps",
    "num_samples",
    "gen_length",
    "block_length",
    "prefix_tokens",
    "sampler",
    "temperature",
    "top_p",
    "final_step",
    "batch_size",
    "seed",
    "judge",
    "code",
)


def build_parser() -> argparse.ArgumentParser:
    from ..config.sampler import TRAINED
    from ..config.sampler_args import add_sampler_arguments
    from ..console import Parser

    ap = Parser(prog="xdlm-tune sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides for every run")
    ap.add_argument("--k", type=float, nargs="+", required=True, help="mixing ratios, e.g. 0 0.05 0.1 0.3 1")
    ap.add_argument("--out", help="sweep folder (default runs/sweep-<recipe name>)")
    ap.add_argument("--num-samples", type=int, default=16)
    ap.add_argument("--prefix-tokens", type=int, default=0, help="0: unconditional; N: continue held-out prefixes")
    add_sampler_arguments(
        ap,
        base_help="how gen-PPL is measured on each run's recipe: its eval length and budgets, sampler ancestral, "
        "temperature 1, one block (evaluation.genppl.genppl_settings)",
        skip=TRAINED,  # --k above names the runs; schedule and eps are the recipe's
    )
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--judge", help="AR judge (default: the recipe's base model)")
    ap.add_argument(
        "--code",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="report the compile rate (default: on for the builtin code corpora)",
    )
    return ap


def _fail(msg: str) -> None:
    raise SystemExit(f"xdlm-tune sweep: {msg}")


def check_args(args) -> None:
    if any(not 0 <= k <= 1 for k in args.k):
        _fail(f"--k {args.k}: every k must be in [0, 1] (0 = MDLM, 1 = UDLM)")
    if len(set(args.k)) != len(args.k):
        _fail(f"--k {args.k}: each k once")
    if args.num_samples < 1 or (args.gen_length is not None and args.gen_length < 1) or args.prefix_tokens < 0:
        _fail("--num-samples and --gen-length must be >= 1, --prefix-tokens >= 0")
    bad = [s for s in args.steps or () if args.gen_length is not None and not 1 <= s <= args.gen_length]
    if bad:
        _fail(f"--steps {bad}: each budget must be in [1, --gen-length={args.gen_length}]")


def run_dir(out: Path, k: float) -> Path:
    return out / f"k={k:g}"


def run_recipe(args, k: float, out: Path):
    """The recipe of the run for k: the sweep's overrides, then k, the run folder and the resume."""
    from ..checkpoints.protocol import list_checkpoints
    from ..config import load_recipe

    folder = run_dir(out, k)
    recipe = load_recipe(args.recipe, [*args.overrides, f"diffusion.k={k}", f"training.output_dir={folder}"])
    recipe.training.resume = "latest" if list_checkpoints(folder) else False
    if recipe.training.eval_every == 0:  # the held-out NELBO is the x-axis: at least at step 0 and at the end
        recipe.training.eval_every = recipe.training.max_steps
    return recipe


def finished(recipe) -> bool:
    from ..checkpoints.protocol import list_checkpoints

    ckpts = list_checkpoints(recipe.training.output_dir)
    return bool(ckpts) and ckpts[-1][0] >= recipe.training.max_steps


def heldout_nelbo(folder: Path, step: int) -> float | None:
    """The trainer's held-out NELBO at ``step`` (from the run's metrics.jsonl)."""
    from ..train.metrics import read_metrics

    values = [m["eval/nelbo"] for m in read_metrics(folder) if m.get("step") == step and "eval/nelbo" in m]
    return values[-1] if values else None


def train_all(args, out: Path) -> list[Any]:
    """Train (or reuse / resume) one run per k, in order; returns their recipes."""
    from ..train.loop import train
    from ..train.runtime import shutdown_process_group

    recipes = []
    for k in args.k:
        recipe = run_recipe(args, k, out)
        if finished(recipe):
            print(f"[sweep] k={k:g}: finished run reused ({recipe.training.output_dir})", flush=True)
        else:
            print(
                f"[sweep] k={k:g}: training {recipe.training.max_steps} steps -> {recipe.training.output_dir}",
                flush=True,
            )
            train(recipe)
        recipes.append(recipe)
    shutdown_process_group()
    return recipes


def run_settings(args, recipe):
    """(The settings a run is measured with, the budgets): gen-PPL's protocol on the run's recipe, then the flags."""
    from ..config.sampler_args import settings_from_args
    from ..evaluation.genppl.metrics import genppl_settings

    return settings_from_args(args, genppl_settings(recipe.sampler_settings()), fail=_fail)


def _settings(args, code: bool) -> dict[str, Any]:
    s = {name: getattr(args, name, None) for name in SAMPLE_SETTINGS}
    s["code"] = code
    return s


def _cached(path: Path, settings: dict) -> list[dict] | None:
    if not path.is_file():
        return None
    body = json.loads(path.read_text())
    return body["rows"] if body.get("settings") == settings else None


def _write_cache(path: Path, settings: dict, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    os.replace(tmp, path)


def measure(args, recipes: list, out: Path) -> dict[str, Any]:
    """Generation metrics of every run (cached per run), the references, and the sweep's rows."""
    import torch

    from ..evaluation.genppl.entry import CODE_SOURCES, generation_metrics, is_sft, make_prefixes
    from ..evaluation.genppl.task import untrained_model
    from ..evaluation.harness import GenerationConfig
    from ..evaluation.load import ar_baseline_model, checkpoint_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    first = recipes[0]
    m = first.model
    dtype = "float32" if device.type == "cpu" else "bfloat16"
    judge_name = args.judge or m.name_or_path
    if args.judge is None and m.kind != "causal":
        _fail("the recipe's base is a diffusion model, which cannot be the AR judge: pass --judge")
    judge = ar_baseline_model(
        judge_name,
        device,
        label=f"{Path(judge_name).name}",
        dtype=dtype,
        attn_implementation=m.attn_implementation or "sdpa",
        gguf_file=None if args.judge else m.gguf_file,
        trust_remote_code=m.trust_remote_code,
    )
    code = args.code if args.code is not None else first.data.source in CODE_SOURCES
    resolved, args.steps = run_settings(args, first)  # the sampler flags given, else the first recipe's
    for name in set(SAMPLE_SETTINGS) & set(args.sampler_flags) - {"steps"}:
        setattr(args, name, getattr(resolved, name))
    settings = _settings(args, code)

    def gen_config(recipe) -> GenerationConfig:  # the run's own k, schedule and eps
        return GenerationConfig(sampling=run_settings(args, recipe)[0], batch_size=args.batch_size, seed=args.seed)

    prefixes = None
    rows = []
    ref_path = out / "reference.json"
    ref_key = {**settings, "k": args.k[0], "data": first.to_dict()["data"]}
    cached_ref = _cached(ref_path, ref_key)
    for i, (k, recipe) in enumerate(zip(args.k, recipes)):
        folder = run_dir(out, k)
        cache = folder / "sweep_gen.json"
        run_key = {**settings, "trained_steps": recipe.training.max_steps}  # a longer rerun is measured again
        gen = _cached(cache, run_key)
        if gen is None:
            em = checkpoint_model(folder, device, label=f"k={k:g}")
            (folder / "samples_genppl.jsonl").write_text("")  # measured again: the old samples go
            prefixes = prefixes or make_prefixes(
                em.tokenizer, recipe=recipe, n=args.num_samples, prefix_tokens=args.prefix_tokens
            )
            gen = [
                asdict(r)
                for r in generation_metrics(
                    em,
                    judge,
                    prefixes,
                    steps=args.steps,
                    cfg=gen_config(recipe),
                    code=code,
                    compile_prefix=not is_sft(recipe),
                    samples_file=folder / "samples_genppl.jsonl",
                    reference=False,
                )
            ]
            _write_cache(cache, run_key, gen)
            del em
        nelbo = heldout_nelbo(folder, recipe.training.max_steps)
        for g in gen:
            row = {
                "k": k,
                "steps": g["steps"],
                "heldout_nelbo": nelbo,
                "gen_ppl": g["gen_ppl"],
                "entropy": g["entropy"],
                "n": g["n"],
                "ended": g["ended"],
                **{key: g.get(key) for key in ("gen_ppl_ci", "entropy_ci", "ended_ci")},
            }
            if code:
                row["syntax_valid"], row["syntax_valid_ci"] = g["syntax_valid"], g.get("syntax_valid_ci")
            rows.append(row)
        if i == 0 and cached_ref is None:  # references: the untrained conversion and the judge itself
            em0 = untrained_model(recipe, device, dtype=dtype)
            prefixes = prefixes or make_prefixes(
                em0.tokenizer, recipe=recipe, n=args.num_samples, prefix_tokens=args.prefix_tokens
            )
            ref = generation_metrics(
                em0,
                judge,
                prefixes,
                steps=args.steps,
                cfg=gen_config(recipe),
                code=code,
                reference=True,
                compile_prefix=not is_sft(recipe),
            )
            cached_ref = [
                {
                    **asdict(r),
                    "heldout_nelbo": heldout_nelbo(folder, 0) if r.steps is not None else None,
                    "k": k if r.steps is not None else None,
                }
                for r in ref
            ]
            _write_cache(ref_path, ref_key, cached_ref)
    rows.sort(key=lambda r: (r["k"], r["steps"]))  # whatever order --k trained them in
    return {
        "comparisons": k_vs_k0(out, args.k, args.steps),
        "settings": {
            **settings,
            "k": args.k,
            "recipe": str(args.recipe),
            "overrides": list(args.overrides),
            "max_steps": first.training.max_steps,
            "prefixes": (
                "after held-out SFT prompts"
                if is_sft(first)
                else f"after {args.prefix_tokens}-token held-out prefixes"
                if args.prefix_tokens
                else "unconditional"
            ),
        },
        "rows": rows,
        "reference": cached_ref or [],
    }


def k_vs_k0(out: Path, ks, steps) -> list[dict]:
    """Each k against k = 0 at each step budget, paired on the same prompts (`xdlm-tune compare`'s
    code: gen-PPL ratio, entropy difference, McNemar on compile and EOS flips); [] without k = 0."""
    from ..evaluation.compare import CompareError, compare_runs

    if 0 not in ks:
        return []
    found = []
    for k in sorted(k for k in ks if k != 0):
        for s in steps:
            try:
                (res,) = compare_runs(
                    run_dir(out, 0) / "samples_genppl.jsonl",
                    run_dir(out, k) / "samples_genppl.jsonl",
                    steps=[s],
                    allow=["k"],  # what the sweep varies; everything else must match
                )
            except CompareError as e:
                res = {"a": {"steps": s}, "b": {"steps": s}, "error": str(e)}
            found.append({"k": k, "steps": s, **res})
    return found


def _ci_of(r: dict, key: str):
    """A row's interval of ``key``; for a rate without one (a sweep.json from before intervals),
    Wilson from n and the rate (one sample per prompt)."""
    from ..evaluation.stats import wilson

    ci = r.get(f"{key}_ci")
    if ci is None and key in ("syntax_valid", "ended") and r.get(key) is not None and r.get("n"):
        ci = wilson(round(r[key] * r["n"]), r["n"])
    return ci


def _flips(metrics: dict, name: str) -> str:
    f = metrics.get(name)
    return "-" if f is None else f"{len(f['a_only'])} / {len(f['b_only'])} ({f['mcnemar_p']:.2g})"


def comparison_markdown(comparisons: list[dict]) -> str:
    """The k vs k = 0 table: gen-PPL ratio and entropy difference with paired-bootstrap intervals,
    compile and EOS flips with the exact McNemar p."""
    from ..evaluation.stats import fmt_value

    lines = [
        "Each k against k = 0 on the same prompts (paired; 95% paired-bootstrap intervals; McNemar: exact "
        "two-sided test on the prompts that flip, k = 0 only / k only):",
        "",
        "| k vs 0 | steps | n | gen-PPL ratio k / 0 | entropy k - 0 | compiles flips (p) | EOS flips (p) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        if "error" in c:
            lines.append(f"| {c['k']:g} | {c['steps']} | - | not paired: {c['error'].splitlines()[0]} | | | |")
            continue
        m = c["metrics"]
        g, e = m["gen-PPL"], m["entropy"]

        lines.append(
            f"| {c['k']:g} | {c['steps']} | {c['n']} | {fmt_value(g['ratio'], g['ratio_ci'], '.3f')} "
            f"| {fmt_value(e['diff'], e['diff_ci'], '+.3f')} | {_flips(m, 'compiles')} | {_flips(m, 'ended (EOS)')} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- outputs


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    code = s["code"]
    head = ["k", "steps", "held-out NELBO", "gen-PPL (95% CI)", "entropy (95% CI)"]
    head += (["compiles (95% CI)"] if code else []) + ["ended (95% CI)"]
    where = s.get("prefixes") or (
        "unconditional" if not s["prefix_tokens"] else f"after {s['prefix_tokens']}-token held-out prefixes"
    )
    lines = [
        f"# xdlm-tune sweep: {Path(s['recipe']).name}, {s['max_steps']} training steps per k",
        "",
        f"{s['num_samples']} samples of {s['gen_length']} tokens ({where}), "
        f"sampler {s['sampler']}, temperature {s['temperature']}; gen-PPL under the AR judge. "
        "Held-out NELBO in nats/token under each run's own k (lower is better).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]

    from ..evaluation.stats import fmt_rate, fmt_value

    def metrics(r):
        cells = [
            fmt_value(r["gen_ppl"], r.get("gen_ppl_ci"), ".2f"),
            fmt_value(r["entropy"], r.get("entropy_ci"), ".3f"),
        ]
        if code:
            cells.append(fmt_rate(r.get("syntax_valid"), _ci_of(r, "syntax_valid")))
        return cells + [fmt_rate(r["ended"], _ci_of(r, "ended"), digits=0)]

    for r in result["rows"]:
        cells = [f"{r['k']:g}", str(r["steps"]), fmt_value(r["heldout_nelbo"], None, ".3f"), *metrics(r)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Reference rows (untrained conversion at step 0 of the first run; the AR judge's own samples):",
        "",
        "| model | " + " | ".join(head[1:]) + " |",
        "|" + "---|" * len(head),
    ]
    for r in result["reference"]:
        cells = [
            r["label"],
            "AR" if r["steps"] is None else str(r["steps"]),
            fmt_value(r.get("heldout_nelbo"), None, ".3f"),
            *metrics(r),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if result.get("comparisons"):
        lines += ["", comparison_markdown(result["comparisons"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def pareto_plot(result: dict[str, Any], path: Path) -> Path:
    """Held-out NELBO (x) vs gen-PPL (y, log): one line per step budget through the k markers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.8, 4.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rows = [r for r in result["rows"] if r["heldout_nelbo"] is not None and math.isfinite(r["gen_ppl"])]
    markers = "os^Dv<>pPX*h"
    ks = sorted({r["k"] for r in rows})
    for i, steps in enumerate(sorted({r["steps"] for r in rows})):
        pts = sorted((r for r in rows if r["steps"] == steps), key=lambda r: r["k"])
        ax.plot(
            [r["heldout_nelbo"] for r in pts],
            [r["gen_ppl"] for r in pts],
            "-",
            color=f"C{i}",
            alpha=0.7,
            label=f"{steps} steps",
        )
        for r in pts:
            ci = r.get("gen_ppl_ci")
            if ci is not None:  # the 95% bootstrap interval over samples
                ax.errorbar(
                    r["heldout_nelbo"],
                    r["gen_ppl"],
                    yerr=[[r["gen_ppl"] - ci[0]], [ci[1] - r["gen_ppl"]]],
                    fmt="none",
                    ecolor=f"C{i}",
                    elinewidth=1.2,
                    capsize=3,
                    alpha=0.8,
                )
            ax.plot(
                r["heldout_nelbo"], r["gen_ppl"], markers[ks.index(r["k"]) % len(markers)], color=f"C{i}", markersize=7
            )
    for n, k in enumerate(ks):  # one legend entry per k: its marker (close points would hide text labels)
        ax.plot([], [], markers[n % len(markers)], color="0.3", linestyle="none", label=f"k={k:g}")
    untrained = [r for r in result["reference"] if r["steps"] is not None and r.get("heldout_nelbo") is not None]
    for j, r in enumerate(untrained):  # x markers in the colour of their step budget
        i = sorted({q["steps"] for q in rows}).index(r["steps"]) if r["steps"] in {q["steps"] for q in rows} else 0
        ax.plot(r["heldout_nelbo"], r["gen_ppl"], "x", color=f"C{i}", markersize=8, mew=2)
        if j == 0:
            ax.annotate(
                f"untrained (k={r['k']:g})",
                (r["heldout_nelbo"], r["gen_ppl"]),
                textcoords="offset points",
                xytext=(0, -13),
                fontsize=8,
                ha="center",
            )
    for j, r in enumerate(r for r in result["reference"] if r["steps"] is None):
        ax.axhline(r["gen_ppl"], color="0.4", linestyle=[":", "--"][j % 2], linewidth=1, label=r["label"])
    ax.set_yscale("log")
    ax.set_xlabel("held-out NELBO (nats/token, each run's own k)  ->  understanding")
    ax.set_ylabel("gen-PPL under the AR judge  ->  generation")
    s = result["settings"]
    bars = "bars: 95% interval; " if any(r.get("gen_ppl_ci") for r in rows) else ""
    ax.set_title(f"{Path(s['recipe']).name}: {s['max_steps']} steps per k ({bars}lower-left is better)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def write_outputs(result: dict[str, Any], out: Path) -> dict[str, Path]:
    (out / "sweep.json").write_text(json.dumps(result, indent=2))
    (out / "sweep.md").write_text(markdown(result))
    return {"json": out / "sweep.json", "md": out / "sweep.md", "png": pareto_plot(result, out / "pareto.png")}


def sweep_main(argv: list[str] | None = None) -> int:
    from ..config import RecipeError
    from ..launch import launched

    args = build_parser().parse_intermixed_args(argv)
    check_args(args)
    out = Path(args.out or f"runs/sweep-{Path(args.recipe).stem}")
    try:
        recipes = train_all(args, out)
    except RecipeError as e:
        _fail(str(e))
    if launched() and os.environ.get("RANK", "0") != "0":
        return 0  # sampling and the outputs are the main process's
    result = measure(args, recipes, out)
    paths = write_outputs(result, out)
    print("\n" + paths["md"].read_text())
    print(f"[sweep] {paths['json']}, {paths['md']}, {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(sweep_main())
