"""The memory plan (`xdlm-tune plan`) against the measured peak of real training steps, on CPU.

    python benchmarks/plan_memory.py                       # the grid below, one run at a time
    python benchmarks/plan_memory.py --only lora-256 --out benchmarks/results/plan_memory_cpu.md

Each run trains the embedded SmolLM2-135M (float32) for 2 optimizer steps through the real loop
(`train`), in its own process (2 processes for ZeRO-2/3: DeepSpeed's CPU accelerator, gloo), and
measures, per process, the bytes of live tensors: every tensor torch allocates during a step is
tracked (a TorchDispatchMode; freed when its storage dies), on top of the tensors alive when the
step starts (weights, gradients, optimizer states, DeepSpeed's buffers). That is what
torch.cuda.max_memory_allocated counts on a GPU. Phases: the step's start (model states), the
start of backward (activations and what the loss keeps), and the peak of the step.

The plan's estimate is `plan_recipe(recipe, gpus=processes, foreach=False)` (AdamW's CPU loop),
before its margin. Runs never overlap: memory does not depend on timing, but two runs at once
would compete for the machine's RAM.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path

RECIPE = "smollm2-135m-xdlm-lora"
# name -> (processes, overrides)
GRID = {
    "lora-256": (1, []),
    "lora-256-ckpt": (1, ["training.gradient_checkpointing=true"]),
    "lora-512": (1, ["data.seq_len=512"]),
    "full-256": (1, ["lora.enabled=false"]),
    "full-512-ckpt": (1, ["lora.enabled=false", "data.seq_len=512", "training.gradient_checkpointing=true"]),
    "full-256-zero2x2": (2, ["lora.enabled=false", "deepspeed.config=deepspeed_configs/zero2.json"]),
    "full-256-zero3x2": (2, ["lora.enabled=false", "deepspeed.config=deepspeed_configs/zero3.json"]),
    "lora-512-ckpt-zero2x2": (
        2,
        ["data.seq_len=512", "training.gradient_checkpointing=true", "deepspeed.config=deepspeed_configs/zero2.json"],
    ),
}
COMMON = [
    "training.max_steps=2",
    "training.per_device_batch_size=2",
    "training.grad_accum=1",
    "training.eval_every=0",
    "training.save_every=0",
    "training.log_every=1",
    "data.max_records=64",
]
GiB = 2**30


# --------------------------------------------------------------------------- measuring (child process)


class LiveBytes:
    """Bytes of live CPU tensor storages: the ones found at start, then every one an op allocates."""

    def __init__(self):
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def track(self, t) -> None:
        import torch

        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            return
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key = storage._cdata
        if key in self.live:
            return
        n = storage.nbytes()
        self.live[key] = n
        self.current += n
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def scan(self) -> None:
        """Every tensor reachable from Python (parameters, gradients, optimizer states, buffers)."""
        import torch

        for obj in gc.get_objects():
            try:
                if isinstance(obj, torch.Tensor):
                    self.track(obj)
                    if obj.grad is not None:
                        self.track(obj.grad)
            except Exception:  # objects that refuse isinstance / attribute access
                continue


def _mode(tracker: LiveBytes):
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Track(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                tracker.track(t)
            return out

    return Track()


def child(overrides: list[str], out: Path) -> None:
    """Train 2 steps of RECIPE + overrides; write this process's phases (bytes) to out.rankN.json."""
    from xdlm_tune.config import load_recipe
    from xdlm_tune.train import loop

    steps = []
    original = loop.train_step

    def measured_step(step, micro_batches, **kw):
        gc.collect()
        tracker = LiveBytes()
        tracker.scan()
        start = tracker.current
        phases = {"start": start}
        accelerator = kw["accelerator"]
        backward = accelerator.backward

        def timed_backward(loss, **bkw):
            phases.setdefault("forward_peak", tracker.peak)
            phases.setdefault("at_backward", tracker.current)
            return backward(loss, **bkw)

        accelerator.backward = timed_backward
        try:
            with _mode(tracker):
                stats = original(step, micro_batches, **kw)
        finally:
            accelerator.backward = backward
        phases["peak"] = tracker.peak
        steps.append(phases)
        return stats

    loop.train_step = measured_step
    loop.save_run_checkpoint = lambda *a, **k: None  # no 2 GB optimizer checkpoint on disk
    recipe = load_recipe(RECIPE, overrides + [f"training.output_dir={out.parent / 'run'}"])
    loop.train(recipe)
    rank = os.environ.get("RANK", "0")
    Path(f"{out}.rank{rank}.json").write_text(json.dumps(steps))


# --------------------------------------------------------------------------- the grid (parent process)


def measure(name: str, procs: int, overrides: list[str]) -> list[dict]:
    """Run one configuration in fresh process(es); the per-rank phases of its last step."""
    with tempfile.TemporaryDirectory(prefix="plan-memory-") as tmp:
        out = Path(tmp) / "phases"
        args = [__file__, "--child", str(out), "--", *COMMON, *overrides]
        if procs == 1:
            cmd = [sys.executable, *args]
        else:
            from xdlm_tune.config.shipped import FOLDERS

            config = FOLDERS["deepspeed_configs"] / "accelerate_cpu_gloo.yaml"
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
            cmd += ["--num_processes", str(procs), *args]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
        )
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{name}: training failed ({done.returncode}):\n{done.stderr[-3000:]}")
        ranks = sorted(Path(tmp).glob("phases.rank*.json"))
        return [json.loads(p.read_text()) for p in ranks]


def plan_for(procs: int, overrides: list[str]):
    from xdlm_tune.config import load_recipe
    from xdlm_tune.train.plan import plan_recipe

    return plan_recipe(load_recipe(RECIPE, COMMON + overrides), gpus=procs, foreach=False)


def _err(est: float, meas: float) -> str:
    return f"{100 * (est - meas) / meas:+.0f}%" if meas else "-"


def row(name: str, procs: int, overrides: list[str], steps: list[dict]) -> str:
    """One table row: the plan's terms against the phases of the run's second step (and its peak)."""
    last = steps[-1]  # the second step: optimizer states exist, as in every later step
    peak = max(s["peak"] for s in steps)
    est = plan_for(procs, overrides).estimate
    e = est.terms
    states = e["weights"] + e["optimizer states"]
    if "zero3" in name:  # ZeRO-3 allocates its gradient partitions at the start, with the others
        states += e["gradients"]
    kept, fwd = est.phases["kept"], est.phases["forward"]
    m_states = last["start"]
    m_kept = last["at_backward"] - last["start"]
    m_fwd = last["forward_peak"] - last["start"]
    return (
        f"| {name} | {procs} | {states / GiB:.3f} / {m_states / GiB:.3f} | {_err(states, m_states)} | "
        f"{kept / GiB:.3f} / {m_kept / GiB:.3f} | {_err(kept, m_kept)} | {fwd / GiB:.3f} / {m_fwd / GiB:.3f} | "
        f"{_err(fwd, m_fwd)} | {est.peak / GiB:.3f} / {peak / GiB:.3f} | {_err(est.peak, peak)} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=list(GRID), help="a subset of the grid")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument(
        "--raw",
        type=Path,
        default=Path(__file__).parent / "results" / "plan_memory_cpu.json",
        help="the measured phases, one entry per run (written as runs finish)",
    )
    parser.add_argument(
        "--estimate-only", action="store_true", help="re-estimate the runs in --raw without measuring again"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.overrides, args.child)
        return 0
    rows = [
        "| run | processes | model states est / meas (GiB) | err | kept at backward est / meas | err |"
        " forward peak over start est / meas | err | step peak est / meas (GiB) | err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    raw = json.loads(args.raw.read_text()) if args.raw.is_file() else {}
    for name in args.only or list(GRID):
        procs, overrides = GRID[name]
        if not args.estimate_only:
            load = os.getloadavg()[0]
            raw[name] = {"processes": procs, "overrides": overrides, "load_1min": load}
            raw[name]["ranks"] = measure(name, procs, overrides)
            args.raw.write_text(json.dumps(raw, indent=1) + "\n")
        elif name not in raw:
            continue
        rows.append(row(name, procs, overrides, raw[name]["ranks"][0]))  # rank 0; ZeRO ranks hold equal shares
        print(rows[-1], flush=True)
    head = (
        "# benchmarks/plan_memory.py\n\nSmolLM2-135M (embedded, float32), micro-batch 2, 2 optimizer steps per run, "
        "CPU; bytes of live tensors per process (rank 0; ZeRO ranks hold equal shares) against `xdlm-tune plan`'s "
        f"terms (before its margin). Measurements: {args.raw.name} (one run at a time; the machine's load, "
        "recorded there when known, changes timings, not memory). Error = (estimate - measured) / measured.\n\n"
    )
    table = head + "\n".join(rows) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
