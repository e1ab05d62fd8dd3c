"""What a checkpoint of a run holds, and how a run comes back from it exactly.

    checkpoint-00000100/
      trainer_state.json, rank_NNNNN.pt  step, tokens seen, each process's data position and RNG
      recipe.yaml                        the resolved recipe (resume refuses an incompatible one)
      adapter/  (LoRA)                   Hugging Face format + tokenizer: a PEFT adapter, or
      model/    (full fine-tune)           the whole model (config.json records is_causal/xdlm_shift)
      trainable.safetensors, optimizer.pt   without DeepSpeed: trainable parameters and AdamW state
      deepspeed/                         with DeepSpeed: the engine's checkpoint (ZeRO-partitioned
                                           optimizer; frozen weights left out under LoRA)
      scheduler.pt                       the learning-rate schedule

Writing follows xdlm_tune.checkpoint's multi-process sequence (temp dir, every rank writes,
main commits with an atomic rename, keep-last-N). Frozen weights are never saved: a
resumed run rebuilds them from the base model exactly as the first run did.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from ..checkpoint import (
    RECIPE_FILE, CheckpointError, TrainState, begin_save, checkpoint_name, commit_save, write_state,
)
from ..config import Recipe, save_recipe
from ..model import unwrap
from .objective import gathered
from .runtime import is_deepspeed, unwrap_prepared, zero_stage

logger = logging.getLogger(__name__)

TRAINABLE_FILE = "trainable.safetensors"
DS_TAG = "deepspeed"


def _trainable(objective) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in objective.model.named_parameters() if p.requires_grad}


def save_run_checkpoint(output_dir: str | Path, step: int, *, accelerator, model, optimizer, scheduler,
                        tokenizer, recipe: Recipe, state: TrainState) -> Path:
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
            raise CheckpointError(f"{ckpt} has no {DS_TAG}/ (it was not written by a DeepSpeed run); "
                                  "resume it with the recipe's deepspeed section as it was")
        lora = isinstance(objective.model, PeftModel)
        path, _ = model.load_checkpoint(str(ckpt), tag=DS_TAG, load_module_strict=not lora,
                                        load_optimizer_states=True, load_lr_scheduler_states=False)
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {ckpt / DS_TAG}")
    else:
        if not (ckpt / TRAINABLE_FILE).is_file():
            raise CheckpointError(f"{ckpt} has no {TRAINABLE_FILE} (it was written by a DeepSpeed run?); "
                                  "resume it with the recipe's deepspeed section as it was")
        saved = load_file(ckpt / TRAINABLE_FILE)
        params = _trainable(objective)
        if saved.keys() != params.keys():
            missing, extra = sorted(params.keys() - saved.keys()), sorted(saved.keys() - params.keys())
            raise CheckpointError(f"{ckpt}: the trainable parameters differ from this run's (missing {missing[:3]}, "
                                  f"unexpected {extra[:3]}, ...)")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name].to(device=p.device, dtype=p.dtype))
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
