"""Two "nodes" on one machine: two `accelerate launch` invocations with --num_machines 2,
--machine_rank 0 / 1 and --main_process_ip 127.0.0.1, one CPU (gloo) process each, DeepSpeed
ZeRO-2 and ZeRO-3. The run takes the same steps as one process with the same global batch,
saves, and resumes on both nodes; a node killed mid-run makes the other exit with a clear error
within a bounded time. Slow (each launch starts two Python processes)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_train import REPO, make_tiny, run, trainable
from test_train_distributed import ACCELERATE, COMMON, LAUNCHED, assert_close_weights

from xdlm_tune.launch import free_port

pytestmark = pytest.mark.slow

TIMEOUT = 420  # per launch: covers DeepSpeed's one-time op build on a fresh machine
BOUND_S = 120  # a surviving node must exit within this after its peer died


def _node_cmd(rank: int, port: int, script: Path, recipe: Path, out: Path, *overrides: str) -> list[str]:
    return [
        str(ACCELERATE),
        "launch",
        "--multi_gpu",
        "--num_machines",
        "2",
        "--num_processes",
        "2",
        "--machine_rank",
        str(rank),
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(port),
        "--rdzv_backend",
        "static",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(script),
        str(recipe),
        f"training.output_dir={out}",
        *overrides,
    ]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def launch_two_nodes(recipe: Path, out: Path, *overrides: str) -> list[dict]:
    """Both nodes of one run; returns each rank's saved results (LAUNCHED writes them)."""
    script = out.parent / "launched.py"
    script.write_text(LAUNCHED)
    port = free_port()
    procs = [
        subprocess.Popen(
            _node_cmd(r, port, script, recipe, out, *overrides),
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    logs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"node {r} failed:\n{log[-6000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny"), tie=True)


@pytest.mark.parametrize("stage", [2, 3])
def test_two_nodes_match_one_process_save_and_resume(tiny, tmp_path, stage):
    opts = (*COMMON, "lora.enabled=true")
    one = run(tiny, tmp_path / "one", *opts, "training.per_device_batch_size=4")
    out = tmp_path / "nodes"
    ds = (f"deepspeed.config=deepspeed_configs/zero{stage}.json", "training.per_device_batch_size=2")
    ranks = launch_two_nodes(tiny, out, *opts, *ds)
    assert [(r["world"], r["zero_stage"]) for r in ranks] == [(2, stage), (2, stage)]  # one group over both nodes
    for step, loss in one.losses.items():
        assert ranks[0]["losses"][step] == pytest.approx(loss, rel=1e-5)
    assert_close_weights(ranks[0]["weights"], trainable(one.checkpoint), 2e-5)
    assert_close_weights(ranks[1]["weights"], ranks[0]["weights"], 0.0 if stage == 2 else 1e-7)
    ckpt = out / "checkpoint-00000004"
    assert (ckpt / "deepspeed").is_dir() and (ckpt / "rank_00001.pt").is_file()  # node 1 wrote its part

    shutil.rmtree(ckpt)  # as if both nodes died after step 2's checkpoint: resume on both
    resumed = launch_two_nodes(tiny, out, *opts, *ds, "training.resume=true")
    assert resumed[0]["losses"] == pytest.approx({s: ranks[0]["losses"][s] for s in (3, 4)}, rel=1e-6)
    assert_close_weights(resumed[0]["weights"], ranks[0]["weights"], 1e-6)


# Writes its pid for the test to kill it, then runs the trainer's command line.
NODE = """
import os, sys
from pathlib import Path
Path(sys.argv[1]).joinpath(f"pid{os.environ['RANK']}").write_text(str(os.getpid()))
from xdlm_tune.train.entry import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_killed_node_makes_the_other_exit_with_a_clear_error(tiny, tmp_path):
    script = tmp_path / "node.py"
    script.write_text(NODE)
    out, marks = tmp_path / "run", tmp_path / "marks"
    marks.mkdir()
    port = free_port()
    long_run = (
        "deepspeed.config=deepspeed_configs/zero2.json",
        "training.per_device_batch_size=2",
        "training.max_steps=100000",
        "training.eval_every=0",
        "training.save_every=0",
        "training.log_every=1",
    )
    procs = []
    for r in (0, 1):
        cmd = _node_cmd(r, port, script, tiny, out, *long_run)
        cmd[cmd.index(str(script)) + 1 : cmd.index(str(script)) + 1] = [str(marks)]  # node.py MARKS RECIPE ...
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=REPO,
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        metrics = out / "metrics.jsonl"
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):  # training for real
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "the run never started"
            time.sleep(0.5)
        victim = int((marks / "pid1").read_text())
        os.kill(victim, signal.SIGKILL)  # node 1's trainer dies mid-run ...
        os.killpg(procs[1].pid, signal.SIGKILL)  # ... and its launcher with it
        t0 = time.monotonic()
        log, _ = procs[0].communicate(timeout=BOUND_S)
        took = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for f in marks.glob("pid*"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(f.read_text()), signal.SIGKILL)
    assert procs[0].returncode != 0 and took < BOUND_S
    assert "xdlm-tune train: lost another process of the run" in log, log[-4000:]
