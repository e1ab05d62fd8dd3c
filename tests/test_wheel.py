"""`pip install .` (a wheel, not editable) and then `xdlm-tune demo` from a folder that is not the
checkout: the recipes, configs and demo settings travel as package data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SKIP = shutil.ignore_patterns(
    ".git", ".venv", "runs", "exports", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"
)


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_install_runs_the_demo_from_any_folder(tmp_path):
    # No PYTHONPATH: a checkout on it would shadow the installed package (and satisfy pip with it).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=_SKIP)  # build from a copy: the checkout stays clean
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        cwd=tmp_path,
        env=env,
    )
    (wheel,) = (tmp_path / "dist").glob("xdlm_tune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for data in (
        "xdlm_tune/workflows/demo.yaml",
        "xdlm_tune/recipes/smollm2-135m-xdlm-lora.yaml",
        "xdlm_tune/deepspeed_configs/zero3.json",
        "xdlm_tune/deepspeed_configs/accelerate_multi_gpu.yaml",
        "xdlm_tune/model/modeling_xdlm_standin.py",  # copied into the dry run's remote-code stand-in
        "xdlm_tune/benchmark_data/mbpp.jsonl",  # the benchmarks, with their licenses
        "xdlm_tune/benchmark_data/sanitized-mbpp.json",
        "xdlm_tune/benchmark_data/HumanEval.jsonl.gz",
        "xdlm_tune/benchmark_data/NOTICE.md",
    ):
        assert data in names

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        cwd=tmp_path,
        env=env,
    )
    # The dependencies (torch, transformers, ...) come from this interpreter's site-packages, added after
    # the venv's own, so that the installed wheel, not the checkout, provides xdlm_tune.
    site = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path, env=env
        ).stdout.strip()
    )
    (site / "outer_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([str(python), "-c", "import xdlm_tune; print(xdlm_tune.__file__)"], elsewhere, env).stdout
    assert where.startswith(str(site)), where
    xdlm_tune = str(venv / "bin" / "xdlm-tune")
    listing = run([xdlm_tune, "recipes"], elsewhere, env).stdout
    assert "smollm2-135m-xdlm-lora.yaml" in listing and str(site) in listing
    assert "--dry-run" in run([xdlm_tune, "demo", "--help"], elsewhere, env).stdout
    stage = run(
        [
            str(python),
            "-c",
            "from xdlm_tune.config import load_recipe; "
            "print(load_recipe('recipes/llama3-8b-xdlm-lora-zero3.yaml').deepspeed.resolve()"
            "['zero_optimization']['stage'])",
        ],
        elsewhere,
        env,
    ).stdout
    assert stage.strip() == "3"
    # the installed package's own benchmark copies, sha256-checked, from a folder with nothing beside it
    mbpp = run(
        [
            str(python),
            "-c",
            "from xdlm_tune.evaluation.tasks import load_humaneval, load_mbpp; "
            "print(len(load_mbpp()), len(load_humaneval()), load_mbpp(limit=1)[0].source)",
        ],
        elsewhere,
        env,
    ).stdout
    assert mbpp.strip() == "500 164 shipped mbpp.jsonl (sha256 ccf64cea)"
    dry = run([xdlm_tune, "demo", "--dry-run"], elsewhere, env)
    assert "dry run OK: smollm2-135m" in dry.stdout and "step 1 loss" in dry.stdout
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # the dry run works in a temp dir
