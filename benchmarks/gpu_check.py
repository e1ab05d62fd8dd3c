"""The Python half of benchmarks/gpu_check.sh: the 8B-shaped LoRA measurement, its
extrapolation, and the report. The CPU-side parts (arguments, arithmetic, report) are tested in CI
(tests/test_gpu_check.py); the measurement itself needs CUDA.

    python benchmarks/gpu_check.py lora --shape llama3-8b --layers 2 4 --json out.json
    python benchmarks/gpu_check.py plan --recipe llama3-8b-xdlm-lora-zero3 --layers 2 --json out.json
    python benchmarks/gpu_check.py report --workdir DIR --out benchmarks/results/gpu_check_<device>_gpu.md

LoRA throughput: a model with the real model's dimensions (hidden, MLP width, heads, vocabulary)
but only 2-4 layers and random weights, bidirectional, LoRA r=16 on every linear layer plus the
mask row, the fused XDLM loss, AdamW, bf16: tokens/s and peak memory per layer count. Memory and
step time are fitted as a + b * layers and evaluated at the real depth (32): an extrapolation,
and the report says so. The slope b holds each layer's weights, LoRA state and activations; the
intercept a the embeddings, the output head and the loss.

Memory plan: the recipe's base config (model/real_size.py: local, Hub or shipped) cut to --layers
decoder layers, random bf16 weights saved to a temporary folder with a byte-level tokenizer, then
2 optimizer steps of the recipe through the real loop (`train`, one process); per step
torch.cuda.max_memory_allocated against `xdlm-tune plan`'s estimate of the same folder (before its
margin), term by term.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Dimensions of the real models (their config.json); depth 32 for both.
SHAPES = {
    "llama3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
        real_layers=32,
    ),
    "llada-8b": dict(
        hidden_size=4096,
        intermediate_size=12288,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=126464,
        tie_word_embeddings=False,
        real_layers=32,
    ),
}


@dataclass
class Point:
    layers: int
    peak_gib: float
    step_s: float
    tokens: int  # tokens per step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="gpu_check.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    lora = sub.add_parser("lora", help="LoRA throughput and peak memory of an 8B-shaped model (CUDA)")
    lora.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    lora.add_argument("--layers", type=int, nargs="+", default=[2, 4])
    lora.add_argument("--seq", type=int, default=2048, help="tokens per sequence")
    lora.add_argument("--batch", type=int, default=1, help="sequences per step")
    lora.add_argument("--steps", type=int, default=4, help="timed steps (after 1 warm-up step)")
    lora.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    lora.add_argument("--json", required=True, help="where to write the measured points")
    pm = sub.add_parser("plan", help="xdlm-tune plan's estimate against torch.cuda.max_memory_allocated (CUDA)")
    pm.add_argument("--recipe", default="llama3-8b-xdlm-lora-zero3")
    pm.add_argument("--layers", type=int, default=2, help="decoder layers of the real config kept")
    pm.add_argument("--json", required=True, help="where to write the measured and estimated bytes")
    pm.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides")
    rep = sub.add_parser("report", help="write the markdown report from a gpu_check.sh work folder")
    rep.add_argument("--workdir", required=True)
    rep.add_argument("--out", default=None, help="default: benchmarks/results/gpu_check_<device>_gpu.md")
    args = ap.parse_args(argv)
    if args.command == "plan" and args.layers < 1:
        ap.error(f"--layers must be >= 1, got {args.layers}")
    if args.command == "lora":
        if len(set(args.layers)) < 2 or min(args.layers) < 1:
            ap.error(f"--layers needs at least two different positive layer counts to fit a line, got {args.layers}")
        for name in ("seq", "batch", "steps"):
            if getattr(args, name) < 1:
                ap.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (a, b) of y = a + b x; needs two different x."""
    n = len(xs)
    if n != len(ys) or len(set(xs)) < 2:
        raise ValueError(f"need >= 2 points with different x, got x={xs}")
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def extrapolate(points: list[Point], layers: int) -> dict[str, float]:
    """Peak memory and step time fitted linearly in the layer count, evaluated at ``layers``."""
    xs = [p.layers for p in points]
    a_m, b_m = linear_fit(xs, [p.peak_gib for p in points])
    a_t, b_t = linear_fit(xs, [p.step_s for p in points])
    step = a_t + b_t * layers
    tokens = points[0].tokens
    return {
        "layers": layers,
        "fixed_gib": a_m,
        "per_layer_gib": b_m,
        "peak_gib": a_m + b_m * layers,
        "fixed_s": a_t,
        "per_layer_s": b_t,
        "step_s": step,
        "tokens_per_s": tokens / step if step > 0 else float("nan"),
    }


def device_slug(name: str) -> str:
    """'NVIDIA H200' -> 'nvidia_h200' (for file names)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "gpu"


def render_report(device: str, sections: dict[str, str], lora: dict | None, status: dict[str, str]) -> str:
    """The markdown report: device, each step's status, the benchmark tables as produced, and the
    LoRA points with their extrapolation (labelled as such)."""
    lines = [
        f"# benchmarks/gpu_check.sh on {device}",
        "",
        "Every number below was measured by gpu_check.sh on this device in one run, except the rows marked "
        "**extrapolated**.",
        "",
        "| step | status |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in status.items()]
    for title, body in sections.items():
        lines += ["", f"## {title}", "", body.strip() or "(no output)"]
    if lora:
        shape = lora["shape"]
        lines += [
            "",
            f"## LoRA training, {shape}-shaped model ({lora['config']})",
            "",
            f"Random weights, {lora['tokens']} tokens per step, bf16, LoRA r=16 on all linear layers + mask row, "
            "fused XDLM loss, AdamW.",
            "",
            "| layers | peak memory (GiB) | step (s) | tokens/s | |",
            "|---|---|---|---|---|",
        ]
        for p in lora["points"]:
            lines.append(
                f"| {p['layers']} | {p['peak_gib']:.2f} | {p['step_s']:.3f} | {p['tokens'] / p['step_s']:.0f} | measured |"
            )
        e = lora["extrapolation"]
        lines.append(
            f"| {e['layers']} | {e['peak_gib']:.2f} | {e['step_s']:.3f} | {e['tokens_per_s']:.0f} | **extrapolated** |"
        )
        lines += [
            "",
            f"Extrapolation (not a measurement): peak = {e['fixed_gib']:.2f} GiB + {e['per_layer_gib']:.3f} GiB x "
            f"layers, step = {e['fixed_s']:.3f} s + {e['per_layer_s']:.4f} s x layers, fitted on the measured "
            f"layer counts and evaluated at the real depth {e['layers']}. A real checkpoint adds no memory beyond "
            "this (same shapes), but kernels, fragmentation and the optimizer state of a longer run can differ.",
        ]
    return "\n".join(lines) + "\n"


def measure_lora(args: argparse.Namespace) -> dict:
    """The CUDA measurement: one model per layer count, warm-up step, then timed steps."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from xdlm_tune.model import attach_lora, make_bidirectional
    from xdlm_tune.train.objective import DenoiserObjective

    if not torch.cuda.is_available():
        sys.exit("gpu_check.py lora needs CUDA")
    dims = {k: v for k, v in SHAPES[args.shape].items() if k != "real_layers"}
    points = []
    for layers in sorted(set(args.layers)):
        torch.cuda.empty_cache()
        torch.manual_seed(0)
        cfg = LlamaConfig(
            num_hidden_layers=layers, max_position_embeddings=max(4096, args.seq), attn_implementation="sdpa", **dims
        )
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        make_bidirectional(model)
        mask_id = cfg.vocab_size - 1
        model.config.mask_token_id = mask_id
        model = attach_lora(model, r=16, alpha=32, mask_id=mask_id, gradient_checkpointing=args.checkpointing)
        model.train()
        objective = DenoiserObjective(model, k=0.1, mask_id=mask_id, shift=False)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        B, L = args.batch, args.seq
        x0 = torch.randint(0, mask_id, (B, L), device="cuda")
        z = torch.where(torch.rand(B, L, device="cuda") < 0.5, torch.full_like(x0, mask_id), x0)
        inputs = dict(
            z_t=z,
            x0=x0,
            attention_mask=torch.ones_like(x0),
            alpha=torch.full((B,), 0.5, device="cuda"),
            loss_mask=torch.ones_like(x0, dtype=torch.bool),
            token_weight=torch.ones(B, device="cuda"),
        )

        def step(objective=objective, inputs=inputs, opt=opt):
            h = objective(**inputs)
            (h.sum() / h.numel()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # warm-up: kernels, optimizer state
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / args.steps
        points.append(Point(layers, torch.cuda.max_memory_allocated() / 2**30, dt, B * L))
        print(f"  {args.shape} {layers} layers: {points[-1].peak_gib:.2f} GiB peak, {dt:.3f} s/step", flush=True)
        del model, objective, opt, step
    real = SHAPES[args.shape]["real_layers"]
    return {
        "shape": args.shape,
        "device": torch.cuda.get_device_name(),
        "tokens": args.batch * args.seq,
        "config": f"hidden {dims['hidden_size']}, MLP {dims['intermediate_size']}, heads {dims['num_attention_heads']}/"
        f"{dims['num_key_value_heads']}, vocab {dims['vocab_size']}, batch {args.batch} x {args.seq} tokens"
        + (", gradient checkpointing" if args.checkpointing else ""),
        "points": [p.__dict__ for p in points],
        "extrapolation": extrapolate(points, real),
    }


PLAN_OVERRIDES = [
    "data.source=python-stdlib",
    "data.subset=null",
    "data.streaming=false",
    "data.max_records=200",
    "training.max_steps=2",
    "training.eval_every=0",
    "training.save_every=0",
    "training.log_every=1",
]


def measure_plan(args: argparse.Namespace) -> dict:
    """Train 2 steps of the cut-down real-width model; per step the CUDA peak, and the plan's estimate."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    from xdlm_tune.config import load_recipe
    from xdlm_tune.model.real_size import base_config, meta_base
    from xdlm_tune.model.tiny import byte_tokenizer
    from xdlm_tune.train import loop
    from xdlm_tune.train.plan import plan_recipe

    if not torch.cuda.is_available():
        sys.exit("gpu_check.py plan needs CUDA")
    recipe = load_recipe(args.recipe, args.overrides)
    raw, source, _ = base_config(recipe.model.name_or_path)
    raw = dict(raw, **{("n_layers" if "n_layers" in raw else "num_hidden_layers"): args.layers})  # LLaDA: n_layers
    with tempfile.TemporaryDirectory(prefix="xdlm-plan-check-") as tmp:
        folder = Path(tmp) / "model"
        config = meta_base(raw, dtype=torch.bfloat16, attn_implementation="sdpa", source=source).config
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(folder)
        del model
        torch.cuda.empty_cache()
        mask = recipe.adaptation.mask_token
        byte_tokenizer(extra_special=[mask] if mask else []).save_pretrained(folder)
        overrides = [*args.overrides, f"model.name_or_path={folder}", *PLAN_OVERRIDES, f"training.output_dir={tmp}/run"]
        recipe = load_recipe(args.recipe, overrides)
        estimate = plan_recipe(recipe, gpus=1, foreach=True).estimate
        steps = []
        original = loop.train_step

        def measured_step(step, micro_batches, **kw):
            torch.cuda.synchronize()
            start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            stats = original(step, micro_batches, **kw)
            torch.cuda.synchronize()
            steps.append({"start": start, "peak": torch.cuda.max_memory_allocated()})
            return stats

        loop.train_step = measured_step
        loop.save_run_checkpoint = lambda *a, **k: None
        try:
            loop.train(recipe)
        finally:
            loop.train_step = original
    e = estimate.terms
    return {
        "recipe": args.recipe,
        "layers": args.layers,
        "device": torch.cuda.get_device_name(),
        "overrides": args.overrides,
        "steps": steps,
        "estimate_terms": e,
        "estimate_peak": estimate.peak,
        "estimate_states": e["weights"] + e["optimizer states"],
    }


def render_plan(plan: dict) -> list[str]:
    """The plan section of the report: per step, the measured CUDA peak against the estimate."""
    g = 2**30
    peak = max(s["peak"] for s in plan["steps"])
    last = plan["steps"][-1]
    err = lambda est, meas: f"{100 * (est - meas) / meas:+.0f}%" if meas else "-"  # noqa: E731
    lines = [
        "",
        f"## Memory plan vs torch.cuda.max_memory_allocated: {plan['recipe']}, {plan['layers']} layers",
        "",
        f"The recipe's base config with {plan['layers']} decoder layers (real width), random bf16 weights, "
        f"2 optimizer steps through the real loop, one process; overrides: {' '.join(plan['overrides']) or 'none'}.",
        "",
        "| quantity | estimate (GiB) | measured (GiB) | error |",
        "|---|---|---|---|",
        f"| model states at the step's start | {plan['estimate_states'] / g:.3f} | {last['start'] / g:.3f} | "
        f"{err(plan['estimate_states'], last['start'])} |",
        f"| peak of a step | {plan['estimate_peak'] / g:.3f} | {peak / g:.3f} | {err(plan['estimate_peak'], peak)} |",
        "",
        "Estimated terms (GiB): "
        + ", ".join(f"{k} {v / g:.3f}" for k, v in plan["estimate_terms"].items() if k != "margin"),
    ]
    return lines


def write_report(workdir: Path, out: str | None) -> Path:
    """Collects what gpu_check.sh left in ``workdir`` (status.json, *.md sections, lora.json)."""
    status = json.loads((workdir / "status.json").read_text()) if (workdir / "status.json").exists() else {}
    device = (workdir / "device.txt").read_text().strip() if (workdir / "device.txt").exists() else "unknown device"
    sections = {}
    for name, title in (
        ("pytest.txt", "GPU-marked tests"),
        ("loss_memory.md", "Fused loss: materialised vs torch vs Triton"),
        ("sampling.md", "Sampling speed"),
    ):
        path = workdir / name
        if path.exists():
            text = path.read_text()
            sections[title] = f"```\n{text[-4000:].strip()}\n```" if name.endswith(".txt") else text
    lora = json.loads((workdir / "lora.json").read_text()) if (workdir / "lora.json").exists() else None
    path = Path(out) if out else ROOT / "benchmarks" / "results" / f"gpu_check_{device_slug(device)}_gpu.md"
    text = render_report(device, sections, lora, status)
    if (workdir / "plan.json").exists():
        text += "\n".join(render_plan(json.loads((workdir / "plan.json").read_text()))) + "\n"
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "lora":
        Path(args.json).write_text(json.dumps(measure_lora(args), indent=1))
    elif args.command == "plan":
        Path(args.json).write_text(json.dumps(measure_plan(args), indent=1))
    else:
        print(f"wrote {write_report(Path(args.workdir), args.out)}")


if __name__ == "__main__":
    main()
