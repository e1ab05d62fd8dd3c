"""Peak extra memory and time of loss + backward: fused_xdlm_loss vs materialised logits + xdlm_loss.

One command:  python benchmarks/loss_memory.py [--save]   (`--quick` for a smoke run)

Each (method, V) runs in a fresh subprocess so that peaks do not mix. Peak extra memory is the
process's peak resident set minus its resident set once the inputs exist (CPU), or
torch.cuda.max_memory_allocated minus the memory allocated before the loss (CUDA). Both methods
produce the same gradients (hidden and weight), so grad buffers count on both sides.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_one(method: str, V: int, H: int, N: int, device: str, reps: int) -> dict:
    """Runs in the child process: returns time (best of reps) and peak extra bytes."""
    from xdlm_tune.diffusion import forward_noise, fused_xdlm_loss, make_schedule, xdlm_loss

    torch.manual_seed(0)
    k, mask_id, B = 0.1, V - 1, 4
    L = N // B
    hidden = (torch.randn(B, L, H, device=device) * 0.5).requires_grad_()
    weight = (torch.randn(V, H, device=device) * H ** -0.5).requires_grad_()
    x0 = torch.randint(0, V - 1, (B, L), device=device)
    sched = make_schedule("linear")
    t = sched.sample_t(B, antithetic=True, device=device)
    alpha, w = sched.alpha(t), sched.neg_dalpha_dt(t)
    z = forward_noise(x0, alpha, k=k, mask_id=mask_id, vocab_size=V)

    def step():
        if method == "fused":
            h = fused_xdlm_loss(hidden, weight, z, x0, alpha, k=k, mask_id=mask_id, token_weight=w)
        else:
            h = xdlm_loss(hidden @ weight.T, z, x0, alpha, k=k, mask_id=mask_id)
        loss = (w[:, None] * h).mean()
        loss.backward()
        hidden.grad = weight.grad = None
        return loss.item()

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_bytes()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        loss = step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"method": method, "V": V, "H": H, "N": N, "time_s": min(times), "peak_extra_bytes": peak, "loss": loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, nargs="+", default=[49152, 128256])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=4096, help="B*L")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/loss_memory_<device>.md")
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "V"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.vocab, args.hidden, args.tokens, args.reps = [8192], 256, 512, 1
    if args.child:
        res = run_one(args.child[0], int(args.child[1]), args.hidden, args.tokens, args.device, args.reps)
        print("RESULT " + json.dumps(res))
        return

    rows = []
    for V in args.vocab:
        pair = {}
        for method in ("reference", "fused"):
            cmd = [sys.executable, __file__, "--child", method, str(V), "--hidden", str(args.hidden),
                   "--tokens", str(args.tokens), "--reps", str(args.reps), "--device", args.device]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"{method} V={V} failed:\n{out.stderr[-3000:]}")
            pair[method] = json.loads(line[0][7:])
            r = pair[method]
            print(f"  {method:9s} V={V:6d}: {r['time_s']:.2f} s, peak extra {r['peak_extra_bytes'] / 2**30:.2f} GiB", flush=True)
        ref, fus = pair["reference"], pair["fused"]
        rows.append((V, ref, fus, fus["peak_extra_bytes"] / ref["peak_extra_bytes"], fus["time_s"] / ref["time_s"]))

    if args.device.startswith("cuda"):
        hw = torch.cuda.get_device_name()
    else:
        hw = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    head = (f"Loss + backward, B*L={args.tokens}, H={args.hidden}, k=0.1, float32, device: {hw}; "
            f"torch {torch.__version__}; best of {args.reps}")
    table = ["| V | reference time (s) | fused time (s) | time ratio (fused/ref) | reference peak extra (GiB) | fused peak extra (GiB) | memory ratio (fused/ref) |",
             "|---|---|---|---|---|---|---|"]
    for V, ref, fus, mem_ratio, time_ratio in rows:
        table.append(f"| {V} | {ref['time_s']:.2f} | {fus['time_s']:.2f} | {time_ratio:.2f} | "
                     f"{ref['peak_extra_bytes'] / 2**30:.2f} | {fus['peak_extra_bytes'] / 2**30:.2f} | {mem_ratio:.3f} |")
    report = head + "\n\n" + "\n".join(table) + "\n\nTargets: memory ratio <= 0.25 at V=128256, time ratio <= 1.3.\n"
    print("\n" + report)
    if args.save:
        dev = "cuda" if args.device.startswith("cuda") else "cpu"
        path = ROOT / "benchmarks" / "results" / f"loss_memory_{dev}.md"
        path.write_text("# benchmarks/loss_memory.py\n\n" + report)
        print(f"saved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
