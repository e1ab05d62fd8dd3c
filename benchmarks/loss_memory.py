"""Peak extra memory and time of loss + backward: fused_xdlm_loss vs materialised logits + xdlm_loss.

One command:  python benchmarks/loss_memory.py [--save]   (`--quick` for a smoke run)

Settings are V x H x tokens (B*L); each runs with a frozen head (LoRA: for the fused loss the
mask row still trains, through ``weight_rows``; the materialised reference simply freezes the
head, whose mask-row gradient is identically 0 there) and a trainable head, in float32 and bf16.
Each (setting, head, dtype, method) runs in a fresh subprocess so that peaks do not mix, after a
small warm-up of the same code path (library initialisation is not the loss's memory).

Peak extra memory = peak minus the memory held once the inputs exist, minus the gradients the
step returns (hidden's, the head's when it trains): what the loss itself needs beyond its inputs
and their gradients. CPU: the process's peak resident set (VmHWM, reset once the inputs exist); CUDA:
torch.cuda.max_memory_allocated. Methods: ``reference`` (materialised), ``torch`` (the fused
torch path), ``triton`` (the fused Triton kernel, CUDA only). Ratios are against the reference
measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from xdlm_tune.diffusion.fused_loss import DEFAULT_CHUNK_MIB

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SETTINGS = ["128256x1024x2048", "128256x2048x4096"]  # the setting; the earlier benchmark's
DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so the peak is the step's, not the setup's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def parse_setting(text: str) -> tuple[int, int, int]:
    try:
        V, H, N = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--settings: {text!r} is not VxHxTOKENS, e.g. 128256x1024x2048") from None
    if N % 4:
        raise SystemExit(f"--settings: tokens must be a multiple of 4 (B = 4), got {N}")
    return V, H, N


def _inputs(V, H, N, dtype, head, device, seed=0):
    from xdlm_tune.diffusion import forward_noise, make_schedule

    torch.manual_seed(seed)
    k, mask_id, B = 0.1, V - 1, 4
    L = N // B
    # Filled in place: no full-size temporaries while the inputs are made.
    hidden = torch.empty(B, L, H, device=device, dtype=dtype).normal_(0.0, 0.5).requires_grad_()
    weight = torch.empty(V, H, device=device, dtype=dtype).normal_(0.0, H**-0.5).requires_grad_(head == "trainable")
    rows = weight.detach()[[mask_id]].clone().requires_grad_() if head == "frozen" else None
    x0 = torch.randint(0, V - 1, (B, L), device=device)
    sched = make_schedule("linear")
    t = sched.sample_t(B, antithetic=True, device=device)
    alpha, w = sched.alpha(t), sched.neg_dalpha_dt(t)
    z = forward_noise(x0, alpha, k=k, mask_id=mask_id, vocab_size=V)
    return dict(hidden=hidden, weight=weight, rows=rows, x0=x0, z=z, alpha=alpha, w=w, k=k, mask_id=mask_id)


def _step(method, d, chunk_mib):
    from xdlm_tune.diffusion import fused_xdlm_loss, xdlm_loss

    hidden, weight, rows, w = d["hidden"], d["weight"], d["rows"], d["w"]
    kw = dict(k=d["k"], mask_id=d["mask_id"])
    if method == "reference":
        h = xdlm_loss(hidden @ weight.T, d["z"], d["x0"], d["alpha"], **kw)
    else:
        ids = None if rows is None else (torch.tensor([d["mask_id"]], device=hidden.device), rows)
        h = fused_xdlm_loss(
            hidden,
            weight,
            d["z"],
            d["x0"],
            d["alpha"],
            token_weight=w,
            weight_rows=ids,
            chunk_mib=chunk_mib,
            backend=method,
            **kw,
        )
    loss = (w[:, None] * h).mean()
    loss.backward()
    grad_bytes = sum(
        t.grad.numel() * t.grad.element_size() for t in (hidden, weight, rows) if t is not None and t.grad is not None
    )
    for t in (hidden, weight, rows):
        if t is not None:
            t.grad = None
    return loss.item(), grad_bytes


def run_one(method, V, H, N, dtype, head, device, reps, chunk_mib) -> dict:
    """Runs in the child process: time (best of reps) and peak extra bytes beyond inputs and grads."""
    cuda = device.startswith("cuda")
    _step(method, _inputs(V, H, 16, DTYPES[dtype], head, device), chunk_mib)  # warm-up: library init
    d = _inputs(V, H, N, DTYPES[dtype], head, device)
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        if not _reset_peak_rss():
            raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs): Linux >= 4.0 needed on CPU")
        base = _rss_bytes()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        loss, grad_bytes = _step(method, d, chunk_mib)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()
    return {"time_s": min(times), "peak_extra_bytes": peak - base - grad_bytes, "grad_bytes": grad_bytes, "loss": loss}


def hardware(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def report(rows, methods, args, hw, load) -> str:
    head = (
        f"Loss + backward, k=0.1, device: {hw}; torch {torch.__version__}; best of {args.reps}; "
        f"fused chunk_mib={args.chunk_mib or DEFAULT_CHUNK_MIB}. Load average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f}."
    )
    if args.note:
        head += f" {args.note}"
    cols = ["V x H x tokens", "head", "dtype", "reference time (s)", "reference peak extra (GiB)"]
    for m in methods[1:]:
        cols += [f"{m} time (s)", f"{m} peak extra (GiB)", f"{m} time ratio", f"{m} memory ratio"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for key, res in rows:
        ref = res["reference"]
        cells = [
            "x".join(map(str, key[:3])),
            key[3],
            key[4],
            f"{ref['time_s']:.2f}",
            f"{ref['peak_extra_bytes'] / 2**30:.3f}",
        ]
        for m in methods[1:]:
            r = res[m]
            cells += [
                f"{r['time_s']:.2f}",
                f"{r['peak_extra_bytes'] / 2**30:.3f}",
                f"{r['time_s'] / ref['time_s']:.2f}",
                f"{r['peak_extra_bytes'] / ref['peak_extra_bytes']:.3f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return (
        head + "\n\n" + "\n".join(lines) + "\n\nPeak extra = peak memory beyond the inputs and their gradients. "
        "Goal: memory ratio <= 0.10 at no more than 1.1x the reference's time.\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, help="VxHxTOKENS, e.g. 128256x1024x2048")
    ap.add_argument("--heads", nargs="+", default=["frozen", "trainable"], choices=["frozen", "trainable"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bf16"], choices=list(DTYPES))
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["torch"],
        choices=["torch", "triton"],
        help="fused methods to compare with the materialised reference",
    )
    ap.add_argument("--chunk-mib", type=float, default=None, help="fused loss budget per [chunk, V] buffer")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--note", default="", help="a sentence added to the report (e.g. what else ran)")
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/loss_memory_<device>.md")
    ap.add_argument(
        "--out", default=None, help="report path (default with --save: benchmarks/results/loss_memory_<cpu|gpu>.md)"
    )
    ap.add_argument("--child", nargs=5, metavar=("METHOD", "SETTING", "DTYPE", "HEAD", "X"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.settings, args.reps = ["8192x256x512"], 1
    if args.child:
        V, H, N = parse_setting(args.child[1])
        res = run_one(args.child[0], V, H, N, args.child[2], args.child[3], args.device, args.reps, args.chunk_mib)
        print("RESULT " + json.dumps(res))
        return

    methods = ["reference"] + args.methods
    rows, load0 = [], os.getloadavg()[0]
    for setting in args.settings:
        V, H, N = parse_setting(setting)
        for head in args.heads:
            for dtype in args.dtypes:
                res = {}
                for method in methods:
                    cmd = [
                        sys.executable,
                        __file__,
                        "--child",
                        method,
                        setting,
                        dtype,
                        head,
                        "-",
                        "--reps",
                        str(args.reps),
                        "--device",
                        args.device,
                    ]
                    if args.chunk_mib is not None:
                        cmd += ["--chunk-mib", str(args.chunk_mib)]
                    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
                    if out.returncode or not line:
                        sys.exit(f"{method} {setting} {head} {dtype} failed:\n{out.stderr[-3000:]}")
                    res[method] = r = json.loads(line[0][7:])
                    print(
                        f"  {setting} {head:9s} {dtype:7s} {method:9s}: {r['time_s']:.2f} s, "
                        f"peak extra {r['peak_extra_bytes'] / 2**30:.3f} GiB",
                        flush=True,
                    )
                rows.append(((V, H, N, head, dtype), res))
    text = report(rows, methods, args, hardware(args.device), (load0, os.getloadavg()[0]))
    print("\n" + text)
    if args.save or args.out:
        dev = "gpu" if args.device.startswith("cuda") else "cpu"
        path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"loss_memory_{dev}.md"
        path.write_text("# benchmarks/loss_memory.py\n\n" + text)
        print(f"saved {path}")


if __name__ == "__main__":
    main()
