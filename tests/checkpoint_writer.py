"""A single-process writer of the checkpoint protocol, for tests: the real save path is
xdlm_tune.train.state.save_run_checkpoint (every process, accelerate / DeepSpeed).

    save_checkpoint(out, step, keep_last=2, state=TrainState(step=step), recipe=..., write=fn)

It uses the library's own pieces (begin_save, write_state, commit_save), so what it writes is a
checkpoint by the same rules: complete only once STATE_FILE is in it, committed atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from xdlm_tune.checkpoints.protocol import RECIPE_FILE, CheckpointError, begin_save, commit_save
from xdlm_tune.config import Recipe, save_recipe
from xdlm_tune.train.state import TrainState, write_state


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    keep_last: int,
    state: TrainState,
    recipe: Recipe | None = None,
    optimizer=None,
    scheduler=None,
    write: Callable[[Path], None] | None = None,
) -> Path:
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


def save_torch_state(ckpt: Path, optimizer=None, scheduler=None) -> None:
    """Optimizer and scheduler state dicts, under the names the real save path uses."""
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
