"""The on-disk checkpoint protocol: names, atomic commit, keep-last-N, recovery after a kill.

A checkpoint is written into `<output_dir>/.tmp-checkpoint-<step>`, every file and the
directory are fsynced, and only then is it renamed to `checkpoint-<step>` (a rename is
atomic on POSIX). A save killed at any point leaves the existing checkpoints untouched;
`recover` cleans what it left. Old checkpoints are renamed away before being deleted, so
a half-deleted directory never looks like a checkpoint. A checkpoint is complete when it
holds STATE_FILE (the loop state, written last before the commit).

What a run's checkpoint holds, and the multi-process save that follows this protocol, are in
xdlm_tune/train/state.py; rebuilding a model from a run is xdlm_tune/checkpoints/load.py.
Several ranks (all of them run each line; is_main is rank 0):
    tmp = begin_save(out, step, is_main)           # main clears and creates it
    barrier(); <every rank writes its files into tmp, the main one STATE_FILE last>; barrier()
    if is_main: commit_save(tmp, out, step, keep_last)
    barrier()
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

STATE_FILE = "trainer_state.json"
RECIPE_FILE = "recipe.yaml"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (missing, incomplete, or from another recipe)."""


# --------------------------------------------------------------------------- layout


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}"  # zero-padded: lexical order is step order


def tmp_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f".tmp-{checkpoint_name(step)}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in output_dir as (step, path), oldest first."""
    out = []
    root = Path(output_dir)
    if root.is_dir():
        for p in root.iterdir():
            m = _NAME.match(p.name)
            if m and (p / STATE_FILE).is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


def resolve_resume(output_dir: str | Path, resume: bool | str) -> Path | None:
    """training.resume -> a checkpoint dir: false: None; true/"latest": the newest in
    output_dir (None when there is none yet); otherwise a path that must be a checkpoint."""
    if resume is False:
        return None
    if resume is True or resume == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        found = ", ".join(p.name for _, p in list_checkpoints(path.parent)) or "none"
        raise CheckpointError(
            f"training.resume: {path} is not a complete checkpoint (no {STATE_FILE}); "
            f"checkpoints in {path.parent}: {found}"
        )
    return path


# --------------------------------------------------------------------------- atomic save


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories: nothing more we can do
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under root (files first, then their directories)."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for f in filenames:
            _fsync(Path(dirpath, f))
        _fsync(Path(dirpath))


def recover(output_dir: str | Path) -> None:
    """Clean after a killed save: drop unfinished temp dirs, finish interrupted swaps/deletes."""
    root = Path(output_dir)
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name.startswith(".tmp-checkpoint-") or p.name.startswith(".deleted-checkpoint-"):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(".replaced-checkpoint-"):
            final = root / p.name.removeprefix(".replaced-")
            if final.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:  # killed between the two renames of a same-step re-save: put the old one back
                os.rename(p, final)


def begin_save(output_dir: str | Path, step: int, is_main: bool = True) -> Path:
    """The temp dir a checkpoint is written into; the main process (re)creates it empty."""
    tmp = tmp_path(output_dir, step)
    if is_main:
        recover(output_dir)
        tmp.mkdir(parents=True)
    return tmp


def commit_save(tmp: Path, output_dir: str | Path, step: int, keep_last: int) -> Path:
    """fsync the temp dir, rename it into place, then prune to keep_last. Main process only."""
    root = Path(output_dir)
    if not (tmp / STATE_FILE).is_file():
        raise CheckpointError(f"{tmp} has no {STATE_FILE}: the loop state must be written before commit_save")
    fsync_tree(tmp)
    final = root / checkpoint_name(step)
    if final.exists():  # re-saving a step: swap, never a moment without a complete copy
        old = root / f".replaced-{final.name}"
        os.rename(final, old)
        os.rename(tmp, final)
        _fsync(root)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
        _fsync(root)
    prune(root, keep_last, protect=final)
    return final


def prune(output_dir: str | Path, keep_last: int, protect: Path | None = None) -> None:
    """Delete all but the newest keep_last checkpoints (renamed away first, then removed).
    `protect` (the one just written) is never deleted, even if newer ones exist."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    root = Path(output_dir)
    ckpts = [p for _, p in list_checkpoints(root)]
    others = [p for p in ckpts if p != protect]
    room = keep_last - (len(others) < len(ckpts))  # the protected one uses a slot
    for path in others[: max(len(others) - room, 0)]:
        doomed = root / f".deleted-{path.name}"
        os.rename(path, doomed)
        shutil.rmtree(doomed)
