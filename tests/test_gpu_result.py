"""benchmarks/gpu_result.sh and gpu_result.py without a GPU: the carried wheels (parts joined and
checked, installed offline), the report from partial results, the refusals, and (slow) the whole
script rehearsed end to end on this CPU at tiny sizes, so a first GPU run cannot fail on a path, a
flag or an import."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_result.sh"
_spec = importlib.util.spec_from_file_location("gpu_result", REPO / "benchmarks" / "gpu_result.py")
gr = sys.modules["gpu_result"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gr)


def _wheel(path: Path, module: str = "xdlm_probe", payload: bytes = b"") -> Path:
    """A minimal valid wheel: one module (plus an incompressible payload to split) and its dist-info."""
    dist = f"{module}-0.1.dist-info"
    files = {
        f"{module}/__init__.py": b"VALUE = 42\n",
        f"{module}/blob.bin": payload,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{n},,\n" for n in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(f"{dist}/RECORD", record)
    return path


def _split(path: Path, folders: list[Path]) -> None:
    """Cut ``path`` into len(folders) parts named like `split -b`'s (aa, ab, ...), one per folder."""
    data = path.read_bytes()
    size = -(-len(data) // len(folders))
    for i, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{path.name}.part-a{'abcdefgh'[i]}").write_bytes(data[i * size : (i + 1) * size])
    path.unlink()


def test_wheel_parts_from_several_folders_join_in_name_order(tmp_path):
    whole = _wheel(tmp_path / "xdlm_probe-0.1-py3-none-any.whl", payload=random.Random(0).randbytes(60000))
    original = whole.read_bytes()
    (tmp_path / "one").mkdir()
    small = _wheel(tmp_path / "one" / "other-0.1-py3-none-any.whl", module="other")
    # the third part lands in the first folder: order comes from the names, not the folders
    _split(whole, [tmp_path / "one", tmp_path / "two", tmp_path / "one"])
    got = gr.gather_wheels([tmp_path / "two", tmp_path / "one"], tmp_path / "joined")
    assert [w.name for w in got] == ["other-0.1-py3-none-any.whl", "xdlm_probe-0.1-py3-none-any.whl"]
    assert got[1].read_bytes() == original and got[0] == small


def test_a_missing_or_damaged_part_is_a_clear_error(tmp_path):
    whole = _wheel(tmp_path / "xdlm_probe-0.1-py3-none-any.whl", payload=random.Random(0).randbytes(60000))
    _split(whole, [tmp_path / "p"] * 3)
    (tmp_path / "p" / f"{whole.name}.part-ab").unlink()
    with pytest.raises(gr.SetupError, match=r"xdlm_probe-0\.1-py3-none-any\.whl: its parts \(.*part-aa, .*part-ac\)"):
        gr.gather_wheels([tmp_path / "p"], tmp_path / "joined")
    whole = _wheel(tmp_path / "xdlm_probe-0.1-py3-none-any.whl", payload=bytes(range(256)) * 200)
    data = bytearray(whole.read_bytes())
    data[300] ^= 0xFF  # inside the first member's compressed bytes: the zip still opens, its CRC fails
    whole.write_bytes(bytes(data))
    _split(whole, [tmp_path / "q"] * 2)
    with pytest.raises(gr.SetupError, match="CRC|do not join"):
        gr.gather_wheels([tmp_path / "q"], tmp_path / "joined2")
    with pytest.raises(gr.SetupError, match="no such folder"):
        gr.gather_wheels([tmp_path / "nowhere"], tmp_path / "joined3")


def test_joined_wheel_installs_offline_and_imports(tmp_path):
    whole = _wheel(tmp_path / "xdlm_probe-0.1-py3-none-any.whl", payload=b"x" * 1000)
    _split(whole, [tmp_path / "a", tmp_path / "b"])
    site = tmp_path / "site"
    assert gr.install_wheels([tmp_path / "a", tmp_path / "b"], site) == ["xdlm_probe-0.1-py3-none-any.whl"]
    out = subprocess.run(
        [sys.executable, "-c", "import xdlm_probe; print(xdlm_probe.VALUE)"],
        env={"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "42", out.stderr
    # a wheel for another interpreter: pip's refusal becomes one clear error, not a traceback
    other = tmp_path / "c"
    other.mkdir()
    _wheel(other / "xdlm_probe-0.1-cp27-none-any.whl")
    with pytest.raises(gr.SetupError, match=r"pip could not install xdlm_probe-0\.1-cp27-none-any\.whl .*Python 3\."):
        gr.install_wheels([other], tmp_path / "site2")


def _samples(label: str, steps: list[int | None], passed: dict[int, bool]) -> str:
    rows = []
    for s in steps:
        for task, ok in passed.items():
            rows.append(
                {"label": label, "steps": s, "nfe": s, "task_id": f"mbpp/{task}", "status": "passed" if ok else "error"}
                | {"syntax_valid": ok, "generation": "", "program": ""}
            )
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_report_keeps_whatever_finished(tmp_path):
    res, work = tmp_path / "res", tmp_path / "work"
    res.mkdir()
    (res / "setup.json").write_text(
        json.dumps({"device": "NVIDIA H100 80GB HBM3", "torch": "2.11", "fused_loss": "triton 3.6"})
    )
    status = {
        "setup": "ok (20s)",
        "train k=0.1": "ok (60s)",
        "train k=0": "TIMED OUT after 65s",
        "eval AR": "FAILED (exit 1, 3s)",
    }
    (res / "status.json").write_text(json.dumps(status))
    run = work / "runs" / "k=0.1"
    run.mkdir(parents=True)
    metrics = [
        {"step": 0, "eval/nelbo": 6.5},
        {
            "step": 10,
            "train/loss": 2.0,
            "train/tokens_per_s": 123456.0,
            "train/tokens_seen": 163840,
            "train/elapsed_s": 1.5,
        },
        {
            "step": 20,
            "train/loss": 1.25,
            "train/tokens_per_s": 120000.0,
            "train/tokens_seen": 327680,
            "train/elapsed_s": 2.9,
        },
        {"step": 20, "eval/nelbo": 1.75},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    # k = 0.1 was stopped during its evaluation: samples, no summary; k = 0 finished.
    (res / "eval_k0.1").mkdir()
    (res / "eval_k0.1" / "samples.jsonl").write_text(_samples("k=0.1", [16], {11: True, 12: False}))
    done = res / "eval_k0"
    done.mkdir()
    (done / "samples.jsonl").write_text(_samples("k=0", [16, 32], {11: False, 12: False}))
    from xdlm_tune.evaluation.summary import summarize_run

    summarize_run(done)
    text = gr.write_report(res, work, rehearse=False, plan={"train_steps": 20}).read_text()
    assert text.startswith("# benchmarks/gpu_result.sh on NVIDIA H100 80GB HBM3")
    assert "| train k=0 | TIMED OUT after 65s |" in text and "triton 3.6" in text and "train_steps 20" in text
    assert "| 0.1 | 20 | 120,000 | 327,680 | 2.9 | 1.250 | 6.500 -> 1.750 |" in text
    assert "| 0 | 0 | - |" in text  # no metrics: a row that says so
    assert (
        "k=0.1 (eval_k0.1/): partial" in text
        and "k=0 (eval_k0/): complete" in text
        and "AR (eval_ar/): no samples" in text
    )
    assert "| k=0.1 | 16 | 2 | 50.0% [9.5, 90.5] |" in text and "| k=0 | 32 | 2 | 0.0% [0.0, 65.8] |" in text
    assert (res / "pass_at_1.png").stat().st_size > 0 and (res / "train_k=0.1" / "metrics.jsonl").is_file()
    assert "not run" in text  # no compare status: the comparison section says so


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_script_refuses_without_cuda_and_bad_arguments(tmp_path):
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and "--rehearse" in proc.stderr
    assert time.monotonic() - t0 < 60 and not (tmp_path / "r").exists()
    for args, word in (
        (["--bogus"], "unknown argument '--bogus'"),
        (["--rehearse", "--batch", "0"], "positive integers"),
    ):
        bad = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and word in bad.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "report.md").write_text("an earlier result\n")
    busy = subprocess.run(
        ["bash", str(SCRIPT), "--rehearse", "--out", str(tmp_path / "full")], capture_output=True, text=True, timeout=60
    )
    assert busy.returncode == 2 and "is not empty" in busy.stderr


@pytest.mark.slow
def test_rehearsal_runs_every_step_end_to_end(tmp_path):
    """The script as a GPU run uses it, at tiny sizes: every step ok (the paired comparison
    included), every evaluation's samples and summary, the report and its plot."""
    res = tmp_path / "res"
    proc = subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "--rehearse",
            "--out",
            str(res),
            "--work",
            str(tmp_path / "work"),
            "--python",
            sys.executable,
        ],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    status = json.loads((res / "status.json").read_text())
    assert list(status) == [
        "setup",
        "train k=0.1",
        "train k=0",
        "eval k=0.1",
        "eval k=0",
        "eval AR",
        "compare k=0.1 vs k=0",
        "report",
    ]
    for name, st in status.items():
        assert st.startswith("ok"), (name, st, proc.stdout[-4000:])
    assert json.loads((res / "compare.json").read_text())  # xdlm-tune compare's JSON
    for folder in ("eval_k0.1", "eval_k0", "eval_ar"):
        assert (res / folder / "samples.jsonl").is_file() and (res / folder / "summary.json").is_file()
    report = (res / "report.md").read_text()
    assert "Rehearsal" in report and (res / "pass_at_1.png").is_file()
    rows = [f"| k={k} [cache=dual] | {s} | 2 |" for k in ("0.1", "0") for s in (2, 4)]  # labelled with the cache
    for row in (*rows, "(AR) | AR | 2 |"):
        assert row in report, report
    for folder, name in (("eval_k0.1", "xdlm"), ("eval_k0", "confidence")):
        lines = (res / folder / "samples.jsonl").read_text().splitlines()
        assert {json.loads(line)["sampler"]["sampler"] for line in lines} == {name}
