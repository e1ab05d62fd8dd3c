"""benchmarks/gpu_check.sh and gpu_check.py, the parts that run without a GPU: arguments, the
linear extrapolation to the real depth, the report, and the script's refusal without CUDA."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
gc = sys.modules["gpu_check"] = importlib.util.module_from_spec(_spec)  # registered: it defines a dataclass
_spec.loader.exec_module(gc)


def test_arguments_are_checked_with_a_clear_message(capsys):
    args = gc.parse_args(["lora", "--layers", "2", "4", "--json", "x.json"])
    assert (args.shape, args.layers, args.seq) == ("llama3-8b", [2, 4], 2048)
    for bad, word in (
        (["--layers", "3"], "--layers"),
        (["--layers", "2", "2"], "--layers"),
        (["--steps", "0"], "--steps"),
    ):
        with pytest.raises(SystemExit) as e:
            gc.parse_args(["lora", *bad, "--json", "x.json"])
        assert e.value.code == 2 and word in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gc.parse_args(["lora", "--shape", "gpt5", "--json", "x.json"])
    plan = gc.parse_args(["plan", "--layers", "2", "--json", "p.json", "deepspeed.config=null"])
    assert (plan.recipe, plan.layers, plan.overrides) == ("llama3-8b-xdlm-lora-zero3", 2, ["deepspeed.config=null"])
    with pytest.raises(SystemExit) as e:
        gc.parse_args(["plan", "--layers", "0", "--json", "p.json"])
    assert e.value.code == 2 and "--layers must be >= 1" in capsys.readouterr().err


def test_extrapolation_is_the_fitted_line_at_the_real_depth():
    pts = [gc.Point(2, 10.0, 0.5, 2048), gc.Point(4, 14.0, 0.9, 2048)]
    e = gc.extrapolate(pts, 32)
    assert e["per_layer_gib"] == pytest.approx(2.0) and e["fixed_gib"] == pytest.approx(6.0)
    assert e["peak_gib"] == pytest.approx(6.0 + 2.0 * 32)
    assert e["step_s"] == pytest.approx(0.1 + 0.2 * 32) and e["tokens_per_s"] == pytest.approx(2048 / 6.5)
    a, b = gc.linear_fit([1, 2, 3], [1.0, 3.2, 4.8])  # least squares through three points
    assert b == pytest.approx(1.9) and a == pytest.approx(3.0 - 1.9 * 2)
    with pytest.raises(ValueError):
        gc.linear_fit([2, 2], [1.0, 2.0])
    assert gc.SHAPES["llama3-8b"]["real_layers"] == 32 and gc.SHAPES["llama3-8b"]["vocab_size"] == 128256


def test_report_names_the_device_and_labels_the_extrapolation(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "device.txt").write_text("NVIDIA H200 | torch 2.9 | CUDA 12.8\n")
    (work / "status.json").write_text(json.dumps({"gpu tests": "ok (40s)", "loss benchmark": "TIMED OUT after 130s"}))
    (work / "pytest.txt").write_text("7 passed in 30s\n")
    (work / "loss_memory.md").write_text("| V x H x tokens | head |\n|---|---|\n| 128256x4096x4096 | frozen |\n")
    pts = [gc.Point(2, 10.0, 0.5, 2048), gc.Point(4, 14.0, 0.9, 2048)]
    (work / "lora.json").write_text(
        json.dumps(
            {
                "shape": "llama3-8b",
                "tokens": 2048,
                "config": "hidden 4096",
                "points": [p.__dict__ for p in pts],
                "extrapolation": gc.extrapolate(pts, 32),
            }
        )
    )
    g = 2**30
    plan = {
        "recipe": "llama3-8b-xdlm-lora-zero3",
        "layers": 2,
        "overrides": ["deepspeed.config=null"],
        "steps": [{"start": 3 * g, "peak": 9 * g}, {"start": 4 * g, "peak": 10 * g}],
        "estimate_terms": {"weights": 3 * g, "activations": 5 * g, "margin": g},
        "estimate_peak": 11 * g,
        "estimate_states": 4.2 * g,
    }
    (work / "plan.json").write_text(json.dumps(plan))
    out = gc.write_report(work, str(tmp_path / "r.md"))
    text = out.read_text()
    assert text.startswith("# benchmarks/gpu_check.sh on NVIDIA H200")
    assert "TIMED OUT after 130s" in text and "7 passed" in text and "128256x4096x4096" in text
    row = [l for l in text.splitlines() if l.startswith("| 32 |")]
    assert row == ["| 32 | 70.00 | 6.500 | 315 | **extrapolated** |"]
    assert "| 2 | 10.00 | 0.500 | 4096 | measured |" in text
    assert gc.device_slug("NVIDIA H200 | torch 2.9") == "nvidia_h200_torch_2_9"
    # The plan section: the last step's start against the model states, the largest step peak against the peak.
    assert "| model states at the step's start | 4.200 | 4.000 | +5% |" in text
    assert "| peak of a step | 11.000 | 10.000 | +10% |" in text
    assert "weights 3.000, activations 5.000" in text and "margin" not in text.split("Estimated terms")[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_script_stops_at_once_without_cuda():
    before = set((REPO / "benchmarks" / "results").iterdir())
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and time.monotonic() - t0 < 60
    assert set((REPO / "benchmarks" / "results").iterdir()) == before
    bad = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument '--bogus'" in bad.stderr
