"""The Python half of benchmarks/gpu_result.sh: install carried wheels offline, check the
interpreter and the device (and convert the embedded model once), and write the report. The
training and the evaluations are the toolkit's own commands (`xdlm-tune train`, `xdlm-tune eval`),
run by the shell script, each under its own time limit.

    python benchmarks/gpu_result.py wheels --target SITE DIR [DIR ...]
    python benchmarks/gpu_result.py setup --result-dir RES [--rehearse]
    python benchmarks/gpu_result.py recipe RECIPE          # eval settings as shell assignments
    python benchmarks/gpu_result.py report --result-dir RES --work WORK [--rehearse]

Wheels: every `*.whl` in the folders is installed with `pip --no-index --no-deps --target SITE`;
a wheel too large to travel in one piece may come as `NAME.whl.part-*` files (`split -b`), in one
folder or spread over several: they are joined in name order and the zip's CRC-32s are checked
before anything is installed, so a missing or misordered part is a clear error, not a broken
install.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the training and the evaluations import (the device machine may lack some: carry wheels).
NEEDED = ("torch", "transformers", "peft", "accelerate", "datasets", "gguf", "safetensors", "yaml", "matplotlib")
RUNS = ("k=0.1", "k=0")  # the two trainings, in the order the script runs them
EVALS = {"k=0.1": "eval_k0.1", "k=0": "eval_k0", "AR": "eval_ar"}


class SetupError(RuntimeError):
    """An expected failure of this script: the message says what is missing and the fix."""


# ---------------------------------------------------------------------------------- wheels


def gather_wheels(folders: list[Path], work: Path) -> list[Path]:
    """The wheels in ``folders``: whole ``*.whl`` files, and ``NAME.whl.part-*`` pieces joined in
    name order into ``work/NAME.whl`` (checked: every member's CRC-32 must match)."""
    whole: dict[str, Path] = {}
    parts: dict[str, list[Path]] = {}
    for folder in folders:
        if not folder.is_dir():
            raise SetupError(f"--wheels {folder}: no such folder")
        for f in sorted(folder.iterdir()):
            if f.name.endswith(".whl"):
                whole[f.name] = f
            elif ".whl.part-" in f.name:
                parts.setdefault(f.name.split(".part-")[0], []).append(f)
    work.mkdir(parents=True, exist_ok=True)
    for name, pieces in parts.items():
        if name in whole:
            continue
        joined = work / name
        with joined.open("wb") as out:
            for p in sorted(pieces, key=lambda p: p.name):
                out.write(p.read_bytes())
        names = ", ".join(p.name for p in sorted(pieces, key=lambda p: p.name))
        try:
            with zipfile.ZipFile(joined) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            raise SetupError(
                f"{name}: its parts ({names}) do not join into a wheel ({e}); a part is missing or cut: "
                "carry every part (on a machine lent per call, the parts of earlier calls are gone once it was given back)"
            ) from None
        if bad is not None:
            raise SetupError(f"{name}: member {bad} fails its CRC check after joining {names}; a part is damaged")
        whole[name] = joined
    return [whole[n] for n in sorted(whole)]


def install_wheels(folders: list[Path], target: Path) -> list[str]:
    """Install the gathered wheels into ``target`` offline (no index, no dependencies)."""
    wheels = gather_wheels(folders, target.parent / "joined-wheels")
    if not wheels:
        raise SetupError(f"--wheels {' '.join(map(str, folders))}: no *.whl or *.whl.part-* files there")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    cmd += ["--disable-pip-version-check", "--upgrade", "--target", str(target), *map(str, wheels)]
    if subprocess.run(cmd).returncode != 0:
        raise SetupError(
            f"pip could not install {', '.join(w.name for w in wheels)} into {target} (its message is above): "
            f"download wheels for this interpreter (Python {sys.version_info.major}.{sys.version_info.minor}, docs/gpu.md: One prepared GPU result)"
        )
    return [w.name for w in wheels]


# ---------------------------------------------------------------------------------- setup


def missing_modules(names=NEEDED) -> list[str]:
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]


def setup(result_dir: Path, rehearse: bool) -> dict:
    """Check the imports, the device and the fused loss's kernel; convert the embedded model."""
    missing = missing_modules()
    if missing:
        raise SetupError(
            f"{sys.executable} lacks {', '.join(missing)}: install the project (`make install`), or carry "
            "wheels and pass --wheels DIR (docs/gpu.md: One prepared GPU result)"
        )
    import torch

    info: dict = {"python": sys.executable, "torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["fused_loss"] = triton_check()
    elif not rehearse:
        raise SetupError("no CUDA device visible: run with --rehearse for the CPU rehearsal")
    else:
        info["device"] = "CPU (rehearsal)"
        info["fused_loss"] = "torch (chunked; the Triton kernel runs on CUDA only)"
    from xdlm_tune.model.load import embedded_model_dir

    t0 = time.perf_counter()
    info["model_dir"] = str(embedded_model_dir("smollm2-135m"))
    info["model_ready_s"] = round(time.perf_counter() - t0, 1)
    result_dir.mkdir(parents=True, exist_ok=True)
    (result_dir / "setup.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def triton_check() -> str:
    """Run the fused loss once through the Triton kernel at the model's V and H and compare it with
    the torch path: the training then uses the kernel (backend auto) and its compile is warm."""
    import torch

    from xdlm_tune.diffusion import fused_xdlm_loss

    try:
        import triton
    except ImportError:
        return "torch (chunked): triton is not installed"
    g = torch.Generator(device="cuda").manual_seed(0)
    V, H, B, L = 49153, 576, 2, 64
    hidden = torch.randn(B, L, H, device="cuda", generator=g)
    weight = torch.randn(V, H, device="cuda", generator=g) * 0.02
    x0 = torch.randint(0, V - 1, (B, L), device="cuda", generator=g)
    z = torch.where(torch.rand(B, L, device="cuda", generator=g) < 0.5, V - 1, x0)
    alpha = torch.full((B,), 0.5, device="cuda")
    kw = dict(k=0.1, mask_id=V - 1, loss_mask=torch.ones(B, L, dtype=torch.bool, device="cuda"))
    try:
        tri = fused_xdlm_loss(hidden, weight, z, x0, alpha, backend="triton", **kw)
    except Exception as e:  # noqa: BLE001 - recorded in setup.json and the report; training would meet it too
        return f"torch (chunked): the Triton kernel failed here ({type(e).__name__}: {e})"
    ref = fused_xdlm_loss(hidden, weight, z, x0, alpha, backend="torch", **kw)
    err = float((tri - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
    return f"triton {triton.__version__} (checked against the torch path: max relative difference {err:.1e})"


def recipe_settings(recipe: str) -> dict:
    """The recipe's evaluation settings that gpu_result.sh follows (prompt format, answer length, block)."""
    from xdlm_tune.config import load_recipe

    ev = load_recipe(recipe).eval
    return {"PROMPT_FORMAT": ev.prompt_format, "GEN_LENGTH": ev.gen_length, "BLOCK_LENGTH": ev.block_length}


# ---------------------------------------------------------------------------------- report


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def training_rows(work: Path, result_dir: Path) -> list[dict]:
    """Per k: steps done, tokens/s, last training loss, held-out NELBO first -> last; the run's
    metrics.jsonl and resolved recipe are copied to ``result_dir/train_<k>/``."""
    rows = []
    for k in RUNS:
        run = work / "runs" / k
        metrics = run / "metrics.jsonl"
        row: dict = {"k": k, "steps": 0}
        if metrics.is_file():
            lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            train = [r for r in lines if "train/loss" in r]
            nelbo = [r["eval/nelbo"] for r in lines if "eval/nelbo" in r]
            if train:
                last = train[-1]
                row.update(
                    steps=last["step"],
                    loss=last["train/loss"],
                    tokens_per_s=last.get("train/tokens_per_s"),
                    tokens_seen=last.get("train/tokens_seen"),
                    elapsed_s=last.get("train/elapsed_s"),
                )
            if nelbo:
                row.update(nelbo_start=nelbo[0], nelbo_end=nelbo[-1])
            keep = result_dir / f"train_{k}"
            keep.mkdir(parents=True, exist_ok=True)
            for name in ("metrics.jsonl", "recipe.yaml"):
                if (run / name).is_file():
                    (keep / name).write_text((run / name).read_text())
        rows.append(row)
    return rows


def eval_summaries(result_dir: Path) -> tuple[list, dict[str, str]]:
    """Every evaluation's rows, and a note per evaluation folder. A folder whose evaluation was
    stopped before its summary is scored from the samples it wrote (marked partial)."""
    from xdlm_tune.evaluation.metrics import Summary
    from xdlm_tune.evaluation.summary import summarize_run

    rows, notes = [], {}
    for name, folder in EVALS.items():
        out = result_dir / folder
        if not (out / "samples.jsonl").is_file():
            notes[name] = "no samples"
            continue
        summary = read_json(out / "summary.json")
        if summary is None or _samples_newer(out):
            summarize_run(out, title="mbpp pass@1 (partial: the evaluation was stopped)")
            summary = read_json(out / "summary.json", [])
            notes[name] = "partial: scored from the samples written before the evaluation stopped"
        else:
            notes[name] = "complete"
        rows += [Summary(**r) for r in summary]
    return rows, notes


def _samples_newer(out: Path) -> bool:
    return (out / "samples.jsonl").stat().st_mtime > (out / "summary.json").stat().st_mtime


def fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def write_report(result_dir: Path, work: Path, rehearse: bool, plan: dict) -> Path:
    """report.md (and pass_at_1.png over all three models) from what the steps left behind."""
    from xdlm_tune.evaluation.metrics import markdown_table, plot_summary

    setup_info = read_json(result_dir / "setup.json", {})
    status = read_json(result_dir / "status.json", {})
    device = setup_info.get("device", "unknown device (the setup step did not finish)")
    lines = [f"# benchmarks/gpu_result.sh on {device}", ""]
    if rehearse:
        lines += ["**Rehearsal at tiny sizes: these numbers say only that every step runs.**", ""]
    lines += [
        f"torch {setup_info.get('torch', '?')}, CUDA {setup_info.get('cuda', '-')}; fused loss: "
        f"{setup_info.get('fused_loss', '?')}; python {setup_info.get('python', '?')}.",
        "",
        "Plan: " + ", ".join(f"{k} {v}" for k, v in plan.items()) + ".",
        "",
        "| step | status |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in status.items()],
        "",
        "## Training (recipes/smollm2-135m-xdlm-lora-mbpp-sft.yaml, the same budget per k)",
        "",
        "| k | steps done | tokens/s | tokens seen | time (s) | last loss | held-out NELBO start -> end |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in training_rows(work, result_dir):
        nelbo = f"{fmt(r.get('nelbo_start'))} -> {fmt(r.get('nelbo_end'))}"
        lines.append(
            f"| {r['k'].split('=')[1]} | {r['steps']} | {fmt(r.get('tokens_per_s'), ',.0f')} | {fmt(r.get('tokens_seen'), ',')} "
            f"| {fmt(r.get('elapsed_s'), '.1f')} | {fmt(r.get('loss'))} | {nelbo} |"
        )
    summaries, notes = eval_summaries(result_dir)
    lines += ["", "## MBPP test problems: pass@1", ""]
    lines += [f"- {name} ({EVALS[name]}/): {note}" for name, note in notes.items()]
    if summaries:
        lines += ["", markdown_table(summaries)]
        plot_summary(summaries, result_dir / "pass_at_1.png", title="gpu_result.sh", benchmark="mbpp")
        lines += ["", "![pass@1 and syntax-valid rate per step budget](pass_at_1.png)"]
    compare = result_dir / "compare.txt"
    lines += ["", "## Paired comparison: k = 0.1 against k = 0 (`xdlm-tune compare`)", ""]
    if compare.is_file():
        lines += ["```text", compare.read_text().rstrip(), "```"]
    else:
        lines.append(status.get("compare k=0.1 vs k=0", "not run"))
    out = result_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out


# ---------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wheels", help="install carried wheels (and joined parts) offline")
    w.add_argument("--target", type=Path, required=True)
    w.add_argument("folders", type=Path, nargs="+")
    s = sub.add_parser("setup", help="check imports and device, convert the embedded model")
    s.add_argument("--result-dir", type=Path, required=True)
    s.add_argument("--rehearse", action="store_true")
    r = sub.add_parser("recipe", help="the recipe's eval settings as shell assignments")
    r.add_argument("recipe")
    p = sub.add_parser("report", help="report.md and pass_at_1.png from the steps' outputs")
    p.add_argument("--result-dir", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--rehearse", action="store_true")
    p.add_argument("--plan", nargs="*", default=[], help="KEY=VALUE pairs describing the sizes used")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "wheels":
            print("installed:", ", ".join(install_wheels(args.folders, args.target)))
        elif args.cmd == "setup":
            info = setup(args.result_dir, args.rehearse)
            print("\n".join(f"  {k}: {v}" for k, v in info.items()))
        elif args.cmd == "recipe":
            print(" ".join(f"{k}={shlex.quote(str(v))}" for k, v in recipe_settings(args.recipe).items()))
        else:
            plan = dict(kv.split("=", 1) for kv in args.plan)
            print(f"report: {write_report(args.result_dir, args.work, args.rehearse, plan)}")
    except SetupError as e:
        print(f"gpu_result.py {args.cmd}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
