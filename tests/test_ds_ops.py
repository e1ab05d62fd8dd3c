"""DeepSpeed's CPU op build: a stale torch extensions lock is cleared, a live one is waited for and
named, concurrent first runs build once, and one folder is used however the toolkit starts."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xdlm_tune.train.ds_ops import OP, ExtensionLockError, clear_stale_lock, extensions_root, lock_holders

ROOT = Path(__file__).resolve().parents[1]


def _holder(lock: Path, seconds: float = 60.0) -> subprocess.Popen:
    """A process that holds `lock` open, as torch's FileBaton does during a build."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import os, time; fd = os.open({str(lock)!r}, os.O_RDONLY); "
            f"print('held', flush=True); time.sleep({seconds})",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_extensions_root_is_torchs_folder(monkeypatch, tmp_path):
    from torch.utils.cpp_extension import _get_build_directory

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert extensions_root() / OP == Path(_get_build_directory(OP, verbose=False))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extensions_root() == tmp_path == Path(_get_build_directory(OP, verbose=False)).parent


def test_makefile_does_not_pick_its_own_extensions_folder():
    text = (ROOT / "Makefile").read_text()
    assert "export TORCH_EXTENSIONS_DIR" not in text  # else `make` and a plain `xdlm-tune` build twice


def test_a_stale_lock_is_removed_with_a_message(tmp_path, caplog):
    build = tmp_path / OP
    build.mkdir()
    (build / "lock").touch()
    assert lock_holders(build / "lock") == ([], True)
    with caplog.at_level(logging.WARNING, logger="xdlm_tune.train.ds_ops"):
        assert clear_stale_lock(build) is True
    assert not (build / "lock").exists()
    assert "stale" in caplog.text and str(build / "lock") in caplog.text
    assert clear_stale_lock(build) is False  # nothing to do


def test_a_live_build_is_waited_for_and_named_then_cleared_once_its_holder_dies(tmp_path):
    build = tmp_path / OP
    build.mkdir()
    lock = build / "lock"
    lock.touch()
    proc = _holder(lock)
    try:
        holders, _ = lock_holders(lock)
        assert proc.pid in holders
        t0 = time.monotonic()
        with pytest.raises(ExtensionLockError, match=rf"rm {lock}") as err:
            clear_stale_lock(build, timeout_s=1.0, poll_s=0.1)
        assert str(proc.pid) in str(err.value) and 1.0 <= time.monotonic() - t0 < 10
    finally:
        proc.kill()
        proc.wait()
    assert clear_stale_lock(build, timeout_s=5.0, poll_s=0.1) is True  # the holder died: now stale
    assert not lock.exists()


def test_a_compiler_still_working_in_the_folder_counts_as_a_live_build(tmp_path):
    """torch's Python process died but ninja / the compiler still run in the build folder."""
    build = tmp_path / OP
    build.mkdir()
    (build / "lock").touch()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; print('in', flush=True); time.sleep(60)"],
        cwd=build,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "in"
        assert proc.pid in lock_holders(build / "lock")[0]
        with pytest.raises(ExtensionLockError):
            clear_stale_lock(build, timeout_s=0.5, poll_s=0.1)
    finally:
        proc.kill()
        proc.wait()


def test_a_build_that_ends_while_waiting_is_not_treated_as_stale(tmp_path):
    build = tmp_path / OP
    build.mkdir()
    lock = build / "lock"
    lock.touch()
    proc = _holder(lock, seconds=0.0)  # exits at once: ...
    lock.unlink()  # ... as a finished build does, removing its lock
    proc.wait()
    assert clear_stale_lock(build, timeout_s=1.0) is False


def test_build_slot_lets_one_process_in_at_a_time(tmp_path):
    code = (
        "import sys, time; sys.path.insert(0, {root!r}); from pathlib import Path; "
        "from xdlm_tune.train.ds_ops import build_slot\n"
        "with build_slot(Path({dir!r})):\n"
        "    t0 = time.time(); time.sleep(0.8); print(t0, time.time(), flush=True)\n"
    )
    code = code.format(root=str(ROOT), dir=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    spans = sorted(tuple(map(float, p.communicate(timeout=60)[0].split())) for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert spans[0][1] <= spans[1][0], spans  # the second entered only after the first left


@pytest.mark.slow
def test_deepspeed_op_builds_once_despite_a_stale_lock_and_a_concurrent_run(tmp_path):
    """End to end, as two first runs would start: torch's lock left by a killed build, two
    processes at once. Both load the op (no hang, no ImportError); the stale lock is reported.
    The op is first built (or found) in the usual folder, which the later DeepSpeed tests reuse,
    then copied: the test itself compiles nothing."""
    pytest.importorskip("deepspeed")
    usual = subprocess.run(
        [
            sys.executable,
            "-c",
            "from xdlm_tune.train.ds_ops import prepare_deepspeed_ops; print('BUILT', prepare_deepspeed_ops())",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert usual.returncode == 0, usual.stdout[-2000:] + usual.stderr[-3000:]
    cached = Path(usual.stdout.split("BUILT ")[-1].strip())
    env = dict(os.environ)
    root = tmp_path / "ext"
    shutil.copytree(cached, root / OP, ignore=shutil.ignore_patterns("lock"))
    (root / OP).mkdir(parents=True, exist_ok=True)
    (root / OP / "lock").touch()  # what a build killed with SIGKILL leaves behind
    env["TORCH_EXTENSIONS_DIR"] = str(root)
    code = (
        "import logging; logging.basicConfig(level=logging.INFO); "
        "from xdlm_tune.train.ds_ops import prepare_deepspeed_ops; print('BUILT', prepare_deepspeed_ops())"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and f"BUILT {root / OP}" in out, out[-3000:]
    assert sum("removed a stale torch extensions lock" in out for out in outs) == 1, outs
    assert (root / OP / f"{OP}.so").exists() and not (root / OP / "lock").exists()
