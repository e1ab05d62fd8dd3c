"""Several processes on CPU (accelerate + gloo, DeepSpeed ZeRO-2/3 + gloo), DeepSpeed dry runs
of the shipped recipes, and the real SmolLM2 end to end. All slow.

Each launch runs 2 processes on 127.0.0.1 (a free port) under a timeout. DeepSpeed's first
use on a machine compiles a small C++ op (~2-3 min on 2 cores), cached in
torch's extensions folder ($TORCH_EXTENSIONS_DIR, else ~/.cache/torch_extensions/py3XX_cpu).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import REPO, make_tiny, run, trainable

from xdlm_tune.launch import free_port

pytestmark = pytest.mark.slow

TIMEOUT = 420  # seconds per launch: covers DeepSpeed's one-time op build on a fresh machine
ACCELERATE = Path(sys.executable).with_name("accelerate")

# Runs train() in each process, then saves what the test compares: the world size, the
# losses, this process's (gathered, under ZeRO-3) trainable weights and its ZeRO-3 shards.
LAUNCHED = """
import os, sys
import torch
import torch.distributed as dist
from xdlm_tune.config import load_recipe
from xdlm_tune.train.loop import train
from xdlm_tune.train.objective import gathered
from xdlm_tune.train.runtime import shutdown_process_group

res = train(load_recipe(sys.argv[1], sys.argv[2:]))
obj = res.model.module if hasattr(res.model, "module") else res.model
rank = dist.get_rank() if dist.is_initialized() else 0
params = {n: p for n, p in obj.model.named_parameters() if p.requires_grad}
shards = {n: (p.ds_tensor.numel(), p.ds_numel) for n, p in obj.model.named_parameters() if hasattr(p, "ds_tensor")}
with gathered(list(params.values())):
    weights = {n: p.detach().float().cpu().clone() for n, p in params.items()}
torch.save({"world": res.world_size, "losses": res.losses, "evals": res.evals, "weights": weights,
            "shards": shards, "zero_stage": res.info["zero_stage"]}, os.path.join(res.output_dir, f"rank{rank}.pt"))
shutdown_process_group()
"""


def accelerate_launch(processes: int) -> list[str]:
    """`accelerate launch` of ``processes`` CPU processes on this machine (append the script)."""
    return [
        str(ACCELERATE),
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(free_port()),
    ]


def launch(recipe: Path, out: Path, *overrides: str, deepspeed: bool = False) -> list[dict]:
    """accelerate launch 2 CPU processes of LAUNCHED; returns each rank's saved results."""
    script = out.parent / "launched.py"
    script.write_text(LAUNCHED)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if not deepspeed:
        # Without it a CUDA-less `--multi_gpu` launch would look like 2 separate runs to
        # accelerate (the trainer also sets cpu=True itself when there is no GPU).
        env["ACCELERATE_USE_CPU"] = "1"
    cmd = [*accelerate_launch(2), str(script), str(recipe), f"training.output_dir={out}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def assert_close_weights(a: dict, b: dict, tol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= tol, worst


COMMON = (
    "training.max_steps=4",
    "training.save_every=2",
    "training.keep_last=3",
    "training.eval_every=4",
    "training.warmup_steps=1",
    "training.lr=1e-3",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny"), tie=True)  # a tied head: trainable in full fine-tunes


def test_two_processes_match_one_process_with_the_same_global_batch(tiny, tmp_path):
    one = run(tiny, tmp_path / "one", *COMMON, "training.per_device_batch_size=4")
    ranks = launch(tiny, tmp_path / "two", *COMMON, "training.per_device_batch_size=2")
    assert [r["world"] for r in ranks] == [2, 2]  # really one gloo group of 2, not two runs
    assert json.loads((tmp_path / "two/checkpoint-00000004/trainer_state.json").read_text())["world_size"] == 2
    assert (tmp_path / "two/checkpoint-00000004/rank_00001.pt").is_file()
    for step, loss in one.losses.items():
        assert ranks[0]["losses"][step] == pytest.approx(loss, rel=1e-5)
    assert ranks[0]["evals"][4]["nelbo"] == pytest.approx(one.evals[4]["nelbo"], rel=1e-5)
    w0, w1 = ranks[0]["weights"], ranks[1]["weights"]
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # both ranks hold the same weights
    assert_close_weights(w0, trainable(one.checkpoint), 1e-5)


@pytest.mark.parametrize(
    "stage, lora", [(2, True), (3, False), (3, True)], ids=["zero2-lora", "zero3-full", "zero3-lora"]
)
def test_deepspeed_zero_on_cpu_matches_one_process_and_resumes(tiny, tmp_path, stage, lora):
    """ZeRO-3 full fine-tune: the tied head's weight is partitioned AND trainable, its
    gradient comes from both the embedding lookup and the fused loss."""
    opts = (*COMMON, f"lora.enabled={str(lora).lower()}")
    one = run(tiny, tmp_path / "one", *opts, "training.per_device_batch_size=4")
    zero = tmp_path / "zero"
    ds = (f"deepspeed.config=deepspeed_configs/zero{stage}.json", "training.per_device_batch_size=2")
    ranks = launch(tiny, zero, *opts, *ds, deepspeed=True)
    assert [(r["world"], r["zero_stage"]) for r in ranks] == [(2, stage), (2, stage)]
    for step, loss in one.losses.items():
        assert ranks[0]["losses"][step] == pytest.approx(loss, rel=1e-5)
    assert_close_weights(ranks[0]["weights"], trainable(one.checkpoint), 2e-5)
    assert_close_weights(ranks[1]["weights"], ranks[0]["weights"], 0.0 if stage == 2 else 1e-7)
    if stage == 3:  # really partitioned: each process holds part of each large parameter
        big = {n: s for n, s in ranks[0]["shards"].items() if s[1] >= 1024}
        assert big and all(local < full for local, full in big.values())
        assert all(ranks[0]["shards"][n][0] + ranks[1]["shards"][n][0] >= full for n, (_, full) in big.items())
    ckpt = zero / "checkpoint-00000004"
    assert (ckpt / "deepspeed").is_dir() and (ckpt / ("adapter" if lora else "model")).is_dir()
    if lora:  # the PEFT adapter holds the trained (gathered) weights, the mask row included
        adapter = load_file(ckpt / "adapter/adapter_model.safetensors")
        trained = {k.replace(".default", ""): v for k, v in ranks[0]["weights"].items()}
        assert adapter.keys() == trained.keys()
        assert_close_weights(adapter, trained, 0.0)

    # Resume from step 2 as if killed after that checkpoint: steps 3 and 4 come out the same.
    shutil.rmtree(ckpt)
    resumed = launch(tiny, zero, *opts, *ds, "training.resume=true", deepspeed=True)
    assert resumed[0]["losses"] == pytest.approx({s: ranks[0]["losses"][s] for s in (3, 4)}, rel=1e-6)
    assert_close_weights(resumed[0]["weights"], ranks[0]["weights"], 1e-6)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_resume_with_lora_dropout_matches_the_uninterrupted_run(tiny, tmp_path, stage):
    """LoRA dropout 0.1 (the 7B/8B recipes use 0.05) draws from each process's RNG: resumed at
    step 2, ZeRO-2/3 take the same dropout masks as the uninterrupted run, so steps 3-4 agree."""
    opts = (*COMMON, "lora.enabled=true", "lora.dropout=0.1", "training.eval_every=0")
    ds = (f"deepspeed.config=deepspeed_configs/zero{stage}.json", "training.per_device_batch_size=2")
    out = tmp_path / "zero"
    ranks = launch(tiny, out, *opts, *ds, deepspeed=True)
    shutil.rmtree(out / "checkpoint-00000004")  # as if killed after the step-2 checkpoint
    resumed = launch(tiny, out, *opts, *ds, "training.resume=true", deepspeed=True)
    for r in range(2):
        assert resumed[r]["losses"] == pytest.approx({s: ranks[r]["losses"][s] for s in (3, 4)}, rel=1e-6, abs=0)
        assert_close_weights(resumed[r]["weights"], ranks[r]["weights"], 1e-6)


@pytest.mark.parametrize(
    "recipe", ["llama3-8b-xdlm-lora-zero3", "qwen2.5-7b-xdlm-lora-zero2", "llada-8b-xdlm-cpt-zero2"]
)
def test_deepspeed_recipes_dry_run_with_deepspeed(recipe):
    proc = subprocess.run(
        [sys.executable, "-m", "xdlm_tune.train", f"recipes/{recipe}.yaml", "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "dry run OK" in proc.stdout and "ZeRO-" in proc.stdout


def test_the_llada_recipe_dry_runs_natively_under_zero3():
    """The paper's recipe moved to ZeRO-3: its native LLaDA-format stand-in (renamed on load)
    is partitioned, trained one step and checkpointed like any Llama."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xdlm_tune.train",
            "recipes/llada-8b-xdlm-cpt-zero2.yaml",
            "deepspeed.config=deepspeed_configs/zero3.json",
            "deepspeed.zero_stage=3",
            "--dry-run",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "dry run OK" in proc.stdout and "ZeRO-3" in proc.stdout and "llada-format" in proc.stderr + proc.stdout


def test_smollm2_trains_saves_and_resumes_exactly(tmp_path):
    """The embedded default recipe on the real SmolLM2-135M: a few steps, a checkpoint,
    an exact resume, and a held-out ELBO below the untrained model's."""
    recipe = REPO / "recipes/smollm2-135m-xdlm-lora.yaml"
    opts = (
        "training.max_steps=4",
        "training.save_every=2",
        "training.keep_last=3",
        "training.eval_every=4",
        "training.eval_batches=2",
        "training.warmup_steps=1",
        "training.log_every=1",
        "data.max_records=40",
    )
    a = run(recipe, tmp_path / "a", *opts)
    assert a.evals[4]["nelbo"] < a.evals[0]["nelbo"]
    wa = trainable(a.checkpoint)
    shutil.rmtree(a.checkpoint)
    b = run(recipe, tmp_path / "a", *opts, "training.resume=true")
    assert b.losses == {3: a.losses[3], 4: a.losses[4]}
    wb = trainable(b.checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sweep_under_accelerate_launch_two_processes(tiny, tmp_path):
    """`accelerate launch -m xdlm_tune.workflows.sweep` trains every k on both processes and samples on the
    main one: the held-out NELBO of each k equals a one-process sweep with the same global batch
    (per-device batch doubled), and the files are written once."""
    args = ["--k", "0", "0.5", "--steps", "2", "--num-samples", "2", "--gen-length", "4", "--code"]
    common = [*COMMON[:1], "training.save_every=4", "training.eval_every=4", "data.eval_holdout=2"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1")
    two = tmp_path / "two"
    cmd = [
        *accelerate_launch(2),
        "-m",
        "xdlm_tune.workflows.sweep",
        str(tiny),
        "--out",
        str(two),
        *args,
        *common,
        "training.per_device_batch_size=1",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert proc.stdout.count("2 process(es)") == 2, proc.stdout[-3000:]  # one line per k, from rank 0
    assert proc.stdout.count("[sweep] ") >= 3  # training lines for each k and the outputs, once
    one = tmp_path / "one"
    one_cmd = [sys.executable, "-m", "xdlm_tune.workflows.sweep", str(tiny), "--out", str(one), *args, *common]
    proc1 = subprocess.run(
        [*one_cmd, "training.per_device_batch_size=2"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc1.returncode == 0, proc1.stderr[-4000:]
    rows2 = json.loads((two / "sweep.json").read_text())["rows"]
    rows1 = json.loads((one / "sweep.json").read_text())["rows"]
    assert [(r["k"], r["steps"]) for r in rows2] == [(r["k"], r["steps"]) for r in rows1] == [(0, 2), (0.5, 2)]
    for a, b in zip(rows2, rows1):
        assert a["heldout_nelbo"] == pytest.approx(b["heldout_nelbo"], rel=1e-4)
    assert (two / "pareto.png").is_file() and (two / "sweep.md").is_file()
