"""Quiet, readable run output: tqdm-aware lines, one final bar in a log, no bar on a finished
resume, and none of the warnings a user cannot act on (a demo-like tiny run, end to end)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import save_tiny_model

from xdlm_tune import console
from xdlm_tune.train.metrics import Progress

REPO = Path(__file__).resolve().parents[1]


def test_log_bar_prints_its_final_state_once_and_only_when_it_advanced(capsys):
    bar = console.LogBar(total=3, desc="train", unit="step", every=3600)
    for _ in range(3):
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert err.count("train: 100%") == 1 and "3/3" in err and "\r" not in err
    resumed = console.LogBar(total=3, initial=3, desc="train", unit="step")
    resumed.close()
    assert capsys.readouterr().err == ""


def test_log_bar_status_lines_are_rate_limited(capsys):
    bar = console.LogBar(total=100, desc="eval", every=0.0)
    bar.update(1)
    bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("|")[0] for line in lines] == ["eval:   1%", "eval:   2%", "eval:   2%"]
    quiet = console.LogBar(total=100, desc="eval", every=3600)
    quiet.update(50)
    assert capsys.readouterr().err == ""  # nothing until the interval has passed (or close)
    quiet.close()


def test_progress_of_a_run_resumed_at_its_last_step_prints_no_bar(capsys):
    p = Progress(total=4, start=4, enabled=True)
    p.write("xdlm-tune train: banner")
    p.write("already at step 4 of training.max_steps=4: nothing to do")
    p.close()
    out = capsys.readouterr()
    assert out.out == "xdlm-tune train: banner\nalready at step 4 of training.max_steps=4: nothing to do\n"
    assert "train:" not in out.err


NOISE = (
    "Setting accelerator to CPU",
    "is_gradient_checkpointing",
    "FutureWarning",
    "DeprecationWarning",
    "kernels-community",
    "gemm_4bit",
    "Warning",
    "WARNING",
    "Traceback",
)

_DRIVER = r"""
import sys
from xdlm_tune.cli import main
recipe, tiny, out, data = sys.argv[1:5]
common = [f"model.name_or_path={tiny}", f"training.output_dir={out}", "training.max_steps=2", "training.eval_every=2",
          "training.save_every=2", "training.eval_batches=1", "data.seq_len=32", "data.max_records=8",
          "data.eval_holdout=2", "eval.limit=1", "eval.steps=[2]", "eval.gen_length=4", "eval.block_length=4",
          "eval.batch_size=1", f"eval.data_dir={data}"]
assert main(["train", recipe, *common]) == 0
print("DEEPSPEED_IMPORTED_BY_TRAINING", "deepspeed" in sys.modules, flush=True)
print("=== RESUMED TRAIN", flush=True)
assert main(["train", recipe, *common, "--resume"]) == 0
print("=== RUN", flush=True)
assert main(["run", recipe, *common, "training.resume=latest"]) == 0
"""


@pytest.mark.slow
def test_a_demo_like_run_prints_no_noise(tmp_path, benchmark_data):
    """train, train --resume (nothing left to do) and run, as `make demo` does, on a tiny model."""
    # Room for the 3-shot MBPP prompt: the AR baseline would rightly warn about a 256-position model.
    tiny = save_tiny_model(tmp_path / "tiny", max_position_embeddings=4096)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "XDLM_TUNE_CACHE": str(tmp_path / "cache")}
    env.pop("DS_ACCELERATOR", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _DRIVER,
            str(REPO / "recipes" / "smollm2-135m-xdlm-lora.yaml"),
            str(tiny),
            str(tmp_path / "run"),
            str(benchmark_data / "mbpp.jsonl").rsplit("/", 1)[0],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=1200,
    )
    log = proc.stdout
    assert proc.returncode == 0, log
    for noise in NOISE:
        assert noise not in log, (noise, log)
    assert "\r" not in log, log  # no bar redraws in a log file
    assert "DEEPSPEED_IMPORTED_BY_TRAINING False" in log
    first, rest = log.split("=== RESUMED TRAIN")
    resumed, run = rest.split("=== RUN")
    assert first.count("train: 100%") == 1 and "2/2" in first
    assert "nothing to do" in resumed and "train:" not in resumed.replace("xdlm-tune train:", "")
    assert "1/4 training: reused" in run and run.count("eval: 100%") == 1 and "train: 100%" not in run
