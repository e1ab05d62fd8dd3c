"""Atomic checkpoints and the state an exact resume needs.

A checkpoint is written into `<output_dir>/.tmp-checkpoint-<step>`, every file and the
directory are fsynced, and only then is it renamed to `checkpoint-<step>` (a rename is
atomic on POSIX). A save killed at any point leaves the existing checkpoints untouched;
`recover` cleans what it left. Old checkpoints are renamed away before being deleted, so
a half-deleted directory never looks like a checkpoint.

Single process:  save_checkpoint(out, step, keep_last=2, state=..., recipe=..., write=fn)
Several ranks (all of them run each line; is_main is rank 0):
    tmp = begin_save(out, step, is_main)           # main clears and creates it
    barrier(); accelerator.save_state(tmp); write_state(tmp, state, rank, is_main); barrier()
    if is_main: save_recipe(recipe, tmp / RECIPE_FILE); commit_save(tmp, out, step, keep_last)
    barrier()
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import Recipe, RecipeError, diff_recipes, load_recipe, save_recipe

STATE_FILE = "trainer_state.json"
RECIPE_FILE = "recipe.yaml"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_FORMAT = 1

# Recipe fields that may change between a checkpoint and its resume: they do not change
# what is trained or in which order (logging, saving, evaluation, the run's length).
RESUME_MAY_DIFFER = frozenset({
    "training.output_dir", "training.max_steps", "training.log_every", "training.eval_every",
    "training.eval_batches", "training.save_every", "training.keep_last", "training.resume",
    "training.gradient_checkpointing", "model.attn_implementation", "data.num_proc",
})
RESUME_MAY_DIFFER_SECTIONS = ("eval.", "export.")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (missing, incomplete, or from another recipe)."""


@dataclass
class TrainState:
    """Loop state saved beside the weights. `data` is this rank's loader.state_dict()."""

    step: int
    data: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    tokens_seen: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the last held-out ELBO


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
        raise CheckpointError(f"training.resume: {path} is not a complete checkpoint (no {STATE_FILE}); "
                              f"checkpoints in {path.parent}: {found}")
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
        raise CheckpointError(f"{tmp} has no {STATE_FILE}: write_state must run before commit_save")
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


def save_checkpoint(output_dir: str | Path, step: int, *, keep_last: int, state: TrainState,
                    recipe: Recipe | None = None, optimizer=None, scheduler=None,
                    write: Callable[[Path], None] | None = None) -> Path:
    """Single-process save: write(tmp) for the weights (e.g. model.save_pretrained),
    then optimizer, scheduler, loop state, RNG and recipe, then the atomic commit."""
    tmp = begin_save(output_dir, step)
    if write is not None:
        write(tmp)
    save_torch_state(tmp, optimizer=optimizer, scheduler=scheduler)
    write_state(tmp, state)
    if recipe is not None:
        save_recipe(recipe, tmp / RECIPE_FILE)
    return commit_save(tmp, output_dir, step, keep_last)


# --------------------------------------------------------------------------- state


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and every CUDA device) RNG states, in types that
    torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank_file(ckpt: Path, rank: int) -> Path:
    return ckpt / f"rank_{rank:05d}.pt"


def write_state(ckpt: Path, state: TrainState, rank: int = 0, is_main: bool = True) -> None:
    """Every rank writes its RNG and data position; the main one also the loop state (JSON)."""
    ckpt = Path(ckpt)
    torch.save({"rng": rng_state(), "data": state.data}, _rank_file(ckpt, rank))
    if is_main:
        body = {"format": _FORMAT, **asdict(state)}
        (ckpt / STATE_FILE).write_text(json.dumps(body, indent=1))


def read_state(ckpt: str | Path, rank: int = 0, world_size: int | None = None,
               restore_rng: bool = True) -> TrainState:
    """Load the loop state for this rank, restoring its RNG; refuse another world size."""
    ckpt = Path(ckpt)
    try:
        body = json.loads((ckpt / STATE_FILE).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt}: cannot read {STATE_FILE}: {e}") from e
    body.pop("format", None)
    state = TrainState(**body)
    if world_size is not None and world_size != state.world_size:
        raise CheckpointError(f"cannot resume from {ckpt}: it was written by {state.world_size} processes and this "
                              f"run has {world_size}; the batch geometry (and data order) would change. "
                              f"Launch with {state.world_size} processes, or start a new run.")
    rank_file = _rank_file(ckpt, rank)
    if not rank_file.is_file():
        raise CheckpointError(f"{ckpt}: no state for rank {rank} ({rank_file.name})")
    per_rank = torch.load(rank_file, weights_only=True)
    state.data = per_rank["data"]
    if restore_rng:
        set_rng_state(per_rank["rng"])
    return state


def save_torch_state(ckpt: Path, optimizer=None, scheduler=None) -> None:
    """Optimizer and scheduler state dicts (the plain-PyTorch path; accelerate's
    save_state covers these under DeepSpeed)."""
    if optimizer is not None:
        torch.save(optimizer.state_dict(), Path(ckpt) / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), Path(ckpt) / "scheduler.pt")


def load_torch_state(ckpt: str | Path, optimizer=None, scheduler=None) -> None:
    for obj, name in ((optimizer, "optimizer.pt"), (scheduler, "scheduler.pt")):
        if obj is not None:
            path = Path(ckpt) / name
            if not path.is_file():
                raise CheckpointError(f"{ckpt}: {name} is missing")
            obj.load_state_dict(torch.load(path, weights_only=True))


# --------------------------------------------------------------------------- compatibility


def resume_differences(saved: Recipe, current: Recipe) -> list[tuple[str, Any, Any]]:
    """Fields that differ and would make the resumed run a different run."""
    return [(k, a, b) for k, a, b in diff_recipes(saved, current)
            if k not in RESUME_MAY_DIFFER and not k.startswith(RESUME_MAY_DIFFER_SECTIONS)]


def check_resume_compatible(ckpt: str | Path, current: Recipe) -> None:
    """Refuse to resume from a checkpoint trained with an incompatible recipe, listing
    every field that differs (model, k, schedule, sequence length, batch geometry, ...)."""
    path = Path(ckpt) / RECIPE_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt}: no {RECIPE_FILE}; cannot check that the recipe matches")
    try:
        saved = load_recipe(path)
    except RecipeError as e:
        raise CheckpointError(f"{ckpt}: its {RECIPE_FILE} no longer loads: {e}") from e
    diffs = resume_differences(saved, current)
    if diffs:
        lines = "\n".join(f"  {k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in diffs)
        raise CheckpointError(f"cannot resume from {ckpt}: the recipe differs in fields that change what is "
                              f"trained or in what order:\n{lines}\nUse the checkpoint's values, or start a new "
                              "run in another training.output_dir.")
