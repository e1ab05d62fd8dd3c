"""The Python half of benchmarks/gpu_check.sh: the 8B-shaped LoRA measurement, its
extrapolation, and the report. The CPU-side parts (arguments, arithmetic, report) are tested in CI
(tests/test_gpu_check.py); the measurement itself needs CUDA.

    python benchmarks/gpu_check.py lora --shape llama3-8b --layers 2 4 --json out.json
    python benchmarks/gpu_check.py report --workdir DIR --out benchmarks/results/gpu_check_<device>_gpu.md

LoRA throughput: a model with the real model's dimensions (hidden, MLP width, heads, vocabulary)
but only 2-4 layers and random weights, bidirectional, LoRA r=16 on every linear layer plus the
mask row, the fused XDLM loss, AdamW, bf16: tokens/s and peak memory per layer count. Memory and
step time are fitted as a + b * layers and evaluated at the real depth (32): an extrapolation,
and the report says so. The slope b holds each layer's weights, LoRA state and activations; the
intercept a the embeddings, the output head and the loss.
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
    rep = sub.add_parser("report", help="write the markdown report from a gpu_check.sh work folder")
    rep.add_argument("--workdir", required=True)
    rep.add_argument("--out", default=None, help="default: benchmarks/results/gpu_check_<device>_gpu.md")
    args = ap.parse_args(argv)
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
    path.write_text(render_report(device, sections, lora, status))
    return path


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "lora":
        Path(args.json).write_text(json.dumps(measure_lora(args), indent=1))
    else:
        print(f"wrote {write_report(Path(args.workdir), args.out)}")


if __name__ == "__main__":
    main()
