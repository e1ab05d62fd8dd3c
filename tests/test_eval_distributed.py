"""`xdlm-tune eval` under `accelerate launch` with 2 CPU processes: each rank takes its share."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tiny_models import save_tiny_model

from xdlm_tune.launch import free_port


@pytest.mark.slow
def test_eval_splits_problems_across_two_processes(benchmark_data, tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(free_port()),
        "-m",
        "xdlm_tune.evaluation.entry",
        "--model",
        str(model_dir),
        "--data",
        str(benchmark_data / "mbpp.jsonl"),
        "--limit",
        "4",
        "--steps",
        "2",
        "--gen-length",
        "4",
        "--batch-size",
        "2",
        "--out",
        str(out),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout  # really one group of two, not two lone processes
    ranks = [
        [json.loads(l)["task_id"] for l in (out / f"samples.rank{r}.jsonl").read_text().splitlines()] for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 2 and not set(ranks[0]) & set(ranks[1])
    assert "| 2 | 4 |" in (out / "summary.md").read_text()  # steps 2, n = 4: merged by rank 0
