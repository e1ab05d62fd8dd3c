"""DeepSpeed's JIT-compiled CPU op (shared-memory comm), built once and never waited on forever.

On a machine without CUDA, DeepSpeed's process group compiles a small C++ op on first use
(torch.utils.cpp_extension, 1-3 minutes) into the torch extensions folder. torch guards that
build with a lock file (``<folder>/deepspeed_shm_comm/lock``) created with O_EXCL and removed when
the build ends. A build killed hard leaves the file behind, and every later run then waits on it
forever without a word; a build interrupted while another run waits lets the waiter import a
library that was never written (``ImportError: ... deepspeed_shm_comm.so``).

`prepare_deepspeed_ops` runs before DeepSpeed starts: under an flock of our own (released by the
kernel when its holder dies, so it can never go stale) it clears torch's lock when no live process
holds it open, then builds the op, so concurrent first runs wait for one build and load it. The
folder is torch's: $TORCH_EXTENSIONS_DIR when set, else ``~/.cache/torch_extensions/py<ver>_<cpu|cuXY>``,
whichever way the toolkit was started (the Makefile no longer sets its own).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)

OP = "deepspeed_shm_comm"  # DeepSpeed's ShareMemCommBuilder.NAME


class ExtensionLockError(RuntimeError):
    """A torch extension build lock that we may not clear; the message says what to delete."""


def extensions_root() -> Path:
    """The folder torch.utils.cpp_extension builds into (same rule as torch's)."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env:
        return Path(env)
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    if torch.version.hip is not None:
        acc = f"rocm{torch.version.hip.replace('.', '')}"
    elif torch.version.cuda is not None:
        acc = f"cu{torch.version.cuda.replace('.', '')}"
    else:
        acc = "cpu"
    py = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{py}_{acc}"


def lock_holders(path: Path) -> tuple[list[int], bool]:
    """(pids of processes on this machine with ``path`` open or working inside its folder, as the
    compiler of a build does even when the Python process that took the lock is gone; whether
    every process could be inspected). Reads /proc; processes of other users may be unreadable."""
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    holders, complete = [], True
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return [], False
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        with contextlib.suppress(OSError):  # kernel threads and zombies have no cwd
            if os.readlink(f"/proc/{pid}/cwd") == folder:
                holders.append(int(pid))
                continue
        try:
            fds = os.listdir(fd_dir)
        except FileNotFoundError:
            continue  # exited meanwhile
        except PermissionError:
            complete = False
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") == target:
                    holders.append(int(pid))
                    break
            except OSError:
                continue
    return holders, complete


def clear_stale_lock(build_dir: Path, *, timeout_s: float = 900.0, poll_s: float = 1.0) -> bool:
    """Make sure torch's ``build_dir/lock`` will not block: remove it when no live process holds it
    (returns True), wait while a live build holds it (a message every 30 s), and raise
    ExtensionLockError naming the file to delete when that cannot be decided within ``timeout_s``."""
    lock = Path(build_dir) / "lock"
    start, last_note = time.monotonic(), 0.0
    while lock.exists():
        holders, complete = lock_holders(lock)
        if not holders and complete:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            logger.warning(
                "removed a stale torch extensions lock %s (left by an interrupted build; no process "
                "holds it); the op is rebuilt",
                lock,
            )
            return True
        waited = time.monotonic() - start
        if waited > timeout_s:
            who = f"process(es) {holders} hold it" if holders else "no process visible here holds it"
            raise ExtensionLockError(
                f"the torch extensions lock {lock} has blocked for {waited:.0f} s ({who}). If no build is "
                f"running (on this or another machine sharing the folder), delete it: rm {lock} "
                f"(or the whole folder {build_dir}) and start again"
            )
        if waited - last_note >= 30.0 or last_note == 0.0:
            logger.warning("waiting for a DeepSpeed op build in %s (lock held by %s)", build_dir, holders or "?")
            last_note = waited or 1e-9
        time.sleep(poll_s)
    return False


@contextlib.contextmanager
def build_slot(root: Path, name: str = OP) -> Iterator[None]:
    """An exclusive flock on ``root/.xdlm-tune-<name>.lock`` for the duration: one build at a time
    across processes. The kernel drops it when its holder dies, so it never goes stale."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".xdlm-tune-{name}.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("another process is building DeepSpeed's %s op in %s; waiting for it", name, root)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare_deepspeed_ops(*, timeout_s: float = 900.0) -> Path | None:
    """Build (or load) DeepSpeed's CPU comm op before DeepSpeed starts its process group.
    Returns the op's build folder, or None when DeepSpeed's accelerator does not use it (GPUs)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None
    root = extensions_root()
    build_dir = root / builder.NAME
    with build_slot(root, builder.NAME):
        build_dir.mkdir(parents=True, exist_ok=True)
        clear_stale_lock(build_dir, timeout_s=timeout_s)
        try:
            builder.load(verbose=False)  # cached in DeepSpeed's builder: its own call later is free
        except (ImportError, OSError, RuntimeError) as e:
            raise ExtensionLockError(
                f"DeepSpeed could not build or load its CPU op {builder.NAME} in {build_dir}: {e}. It needs a "
                f"C++ compiler and ninja; delete {build_dir} and start again (set TORCH_EXTENSIONS_DIR to build "
                "elsewhere)"
            ) from e
    return build_dir
