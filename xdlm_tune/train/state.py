"""What a checkpoint of a run holds, how every process writes its part, and how a run comes back
from it exactly (weights, optimizer, schedule, loop state, RNG, and the recipe check a resume makes).

    checkpoint-00000100/
      trainer_state.json, rank_NNNNN.pt  step, tokens seen, each process's data position and RNG
      recipe.yaml                        the resolved recipe (resume refuses an incompatible one)
      adapter/  (LoRA)                   Hugging Face format + tokenizer: a PEFT adapter, or
      model/    (full fine-tune)           the whole model (config.json records is_causal/xdlm_shift)
      trainable.safetensors, optimizer.pt   without DeepSpeed: trainable parameters and AdamW state
      deepspeed/                         with DeepSpeed: the engine's checkpoint (ZeRO-partitioned
                                           optimizer; frozen weights left out under LoRA)
      scheduler.pt                       the learning-rate schedule

Writing follows xdlm_tune.checkpoints.protocol's on-disk protocol (temp dir, every rank writes, main
commits with an atomic rename, keep-last-N). Frozen weights are never saved: a
resumed run rebuilds them from the base model exactly as the first run did.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from ..checkpoints.protocol import RECIPE_FILE, STATE_FILE, CheckpointError, begin_save, checkpoint_name, commit_save
from ..config import Recipe, RecipeError, diff_recipes, load_recipe, save_recipe
from ..model import unwrap
from .objective import gathered
from .runtime import is_deepspeed, unwrap_prepared, zero_stage

logger = logging.getLogger(__name__)

TRAINABLE_FILE = "trainable.safetensors"
DS_TAG = "deepspeed"
_FORMAT = 1

# Recipe fields that may change between a checkpoint and its resume: they do not change
# what is trained or in which order (logging, saving, evaluation, the run's length).
RESUME_MAY_DIFFER = frozenset(
    {
        "training.output_dir",
        "training.max_steps",
        "training.log_every",
        "training.eval_every",
        "training.eval_batches",
        "training.save_every",
        "training.keep_last",
        "training.resume",
        "training.gradient_checkpointing",
        "model.attn_implementation",
        "data.num_proc",
    }
)
RESUME_MAY_DIFFER_SECTIONS = ("eval.", "export.")


@dataclass
class TrainState:
    """Loop state saved beside the weights. `data` is this rank's loader.state_dict()."""

    step: int
    data: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    tokens_seen: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the last held-out ELBO


def _trainable(objective) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in objective.model.named_parameters() if p.requires_grad}


def save_run_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    accelerator,
    model,
    optimizer,
    scheduler,
    tokenizer,
    recipe: Recipe,
    state: TrainState,
) -> Path:
    """Every process calls this; returns the committed checkpoint directory."""
    main = accelerator.is_main_process
    tmp = begin_save(output_dir, step, main)
    accelerator.wait_for_everyone()
    objective = unwrap_prepared(accelerator, model)
    if is_deepspeed(accelerator):
        lora = isinstance(objective.model, PeftModel)
        model.save_checkpoint(str(tmp), tag=DS_TAG, save_latest=False, exclude_frozen_parameters=lora)
    elif main:
        save_file({n: p.detach().cpu().contiguous() for n, p in _trainable(objective).items()}, tmp / TRAINABLE_FILE)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if main:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    save_hf_weights(tmp, accelerator=accelerator, model=model, tokenizer=tokenizer)
    write_state(tmp, state, accelerator.process_index, main)
    accelerator.wait_for_everyone()
    if main:
        save_recipe(recipe, tmp / RECIPE_FILE)
        commit_save(tmp, output_dir, step, recipe.training.keep_last)
    accelerator.wait_for_everyone()
    return Path(output_dir) / checkpoint_name(step)


def save_hf_weights(directory: Path, *, accelerator, model, tokenizer) -> Path | None:
    """`adapter/` (LoRA) or `model/` (full fine-tune) with the tokenizer, in Hugging Face
    format. Collective under ZeRO-3 (every process calls it); the main process writes."""
    main = accelerator.is_main_process
    objective = unwrap_prepared(accelerator, model)
    if isinstance(objective.model, PeftModel):
        target = directory / "adapter"
        with gathered(list(_trainable(objective).values())):
            if main:
                # save_embedding_layers=False: the mask row travels as PEFT trainable tokens;
                # "auto" would ask the Hub whether the vocabulary was resized.
                objective.model.save_pretrained(target, save_embedding_layers=False)
    else:
        target = directory / "model"
        state_dict = None
        if zero_stage(accelerator) == 3:
            try:
                full = accelerator.get_state_dict(model)  # gathered onto the main process
            except ValueError as e:
                logger.warning("not writing %s: %s (the deepspeed/ checkpoint still has the weights)", target, e)
                return None
            if main:
                state_dict = {k.removeprefix("model."): v for k, v in full.items()}
        if main:
            unwrap(objective.model).save_pretrained(target, state_dict=state_dict)
    if main:
        tokenizer.save_pretrained(target)
    return target


def load_run_checkpoint(ckpt: Path, *, accelerator, model, optimizer, scheduler) -> None:
    """Restore weights, optimizer and schedule (the loop state and RNG come from read_state)."""
    objective = unwrap_prepared(accelerator, model)
    if is_deepspeed(accelerator):
        if not (ckpt / DS_TAG).is_dir():
            raise CheckpointError(
                f"{ckpt} has no {DS_TAG}/ (it was not written by a DeepSpeed run); "
                "resume it with the recipe's deepspeed section as it was"
            )
        lora = isinstance(objective.model, PeftModel)
        path, _ = model.load_checkpoint(
            str(ckpt),
            tag=DS_TAG,
            load_module_strict=not lora,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {ckpt / DS_TAG}")
    else:
        if not (ckpt / TRAINABLE_FILE).is_file():
            raise CheckpointError(
                f"{ckpt} has no {TRAINABLE_FILE} (it was written by a DeepSpeed run?); "
                "resume it with the recipe's deepspeed section as it was"
            )
        saved = load_file(ckpt / TRAINABLE_FILE)
        params = _trainable(objective)
        if saved.keys() != params.keys():
            missing, extra = sorted(params.keys() - saved.keys()), sorted(saved.keys() - params.keys())
            raise CheckpointError(
                f"{ckpt}: the trainable parameters differ from this run's (missing {missing[:3]}, "
                f"unexpected {extra[:3]}, ...)"
            )
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name].to(device=p.device, dtype=p.dtype))
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))


# --------------------------------------------------------------------------- loop state and RNG (every rank)


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


def read_state(ckpt: str | Path, rank: int = 0, world_size: int | None = None, restore_rng: bool = True) -> TrainState:
    """Load the loop state for this rank, restoring its RNG; refuse another world size."""
    ckpt = Path(ckpt)
    try:
        body = json.loads((ckpt / STATE_FILE).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt}: cannot read {STATE_FILE}: {e}") from e
    body.pop("format", None)
    state = TrainState(**body)
    if world_size is not None and world_size != state.world_size:
        raise CheckpointError(
            f"cannot resume from {ckpt}: it was written by {state.world_size} processes and this "
            f"run has {world_size}; the batch geometry (and data order) would change. "
            f"Launch with {state.world_size} processes, or start a new run."
        )
    rank_file = _rank_file(ckpt, rank)
    if not rank_file.is_file():
        raise CheckpointError(f"{ckpt}: no state for rank {rank} ({rank_file.name})")
    per_rank = torch.load(rank_file, weights_only=True)
    state.data = per_rank["data"]
    if restore_rng:
        set_rng_state(per_rank["rng"])
    return state


# --------------------------------------------------------------------------- compatibility


def resume_differences(saved: Recipe, current: Recipe) -> list[tuple[str, Any, Any]]:
    """Fields that differ and would make the resumed run a different run."""
    return [
        (k, a, b)
        for k, a, b in diff_recipes(saved, current)
        if k not in RESUME_MAY_DIFFER and not k.startswith(RESUME_MAY_DIFFER_SECTIONS)
    ]


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
        raise CheckpointError(
            f"cannot resume from {ckpt}: the recipe differs in fields that change what is "
            f"trained or in what order:\n{lines}\nUse the checkpoint's values, or start a new "
            "run in another training.output_dir."
        )
