"""Steps 1-5 of a training run (`loop._train` calls them in this order): everything before the
first optimizer step.

  1. `run_folder`: the checkpoint to resume from; a fresh run never overwrites another run
  2. `start_processes`: accelerate (DeepSpeed ZeRO when the recipe asks), the run folder, the seed
  3. `load_denoiser`: pretrained base -> bidirectional denoiser with a mask token (+ LoRA)
  4. `load_data`: packed blocks or prompt/answer pairs, a fixed held-out set, the noise
  5. `wrap_for_training`: AdamW and the schedule; accelerate / DeepSpeed wrap model and optimizer
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..checkpoints.protocol import RECIPE_FILE, CheckpointError, list_checkpoints, recover, resolve_resume
from ..config import Recipe, save_recipe
from ..data import build_data
from ..diffusion import make_schedule
from ..model import output_projection, prepare_model
from ..model.prepare import model_options
from .heldout import EVAL_SEED
from .objective import DenoiserObjective, NoiseSampler
from .optim import build_optimizer, build_scheduler
from .runtime import build_accelerator, fill_hidden_size_autos, whole_model_loading
from .state import check_resume_compatible, read_state

logger = logging.getLogger(f"{__package__}.loop")  # the name a run's log lines have always carried


def run_folder(recipe: Recipe) -> Path | None:
    """1. The checkpoint to resume from, or None for a fresh run, which never writes over another
    run's checkpoints."""
    out = Path(recipe.training.output_dir)
    resume_from = resolve_resume(out, recipe.training.resume)
    if resume_from is None and list_checkpoints(out):
        raise CheckpointError(
            f"{out} already holds checkpoints ({list_checkpoints(out)[-1][1].name}); set "
            "training.resume=true (or --resume) to continue that run, or choose another "
            "training.output_dir"
        )
    if resume_from is not None:
        check_resume_compatible(resume_from, recipe)
    return resume_from


def start_processes(recipe: Recipe, ds_config: dict | None, resume_from: Path | None):
    """2. accelerate (with DeepSpeed when `ds_config`); the main process creates the run folder and
    writes the recipe there, the others go quiet; every process seeds the same."""
    from accelerate.utils import set_seed

    cfg = recipe.training
    out = Path(cfg.output_dir)
    accelerator = build_accelerator(recipe, ds_config)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    if resume_from is not None:
        read_state(resume_from, rank, world, restore_rng=False)  # refuses another number of processes
    if main:
        out.mkdir(parents=True, exist_ok=True)
        recover(out)  # a save killed half-way leaves a temp dir: drop it
        save_recipe(recipe, out / RECIPE_FILE)
    if not main:
        _quiet()
    set_seed(cfg.seed)
    return accelerator


def load_denoiser(recipe: Recipe, accelerator):
    """3. The same base, mask token and LoRA initialisation on every process: (prepared model,
    the fused-loss objective around it, (V, hidden size) of its output head)."""
    with whole_model_loading(accelerator):
        prepared = prepare_model(
            **model_options(recipe),
            trust_remote_code=recipe.model.trust_remote_code,
            report=False,  # the start line (_banner) says it: trainable counts, mask id, family
        )
    head_shape = tuple(output_projection(prepared.model)[0].shape)  # read before ZeRO-3 partitions it
    d = recipe.diffusion
    objective = DenoiserObjective(
        prepared.model,
        k=d.k,
        mask_id=prepared.mask_id,
        shift=prepared.shift,
        chunk_size=d.chunk_size,
        chunk_mib=d.chunk_mib,
    )
    return prepared, objective, head_shape


def load_data(recipe: Recipe, accelerator, tokenizer, mask_id: int, vocab: int):
    """4. This process's share of the data and its held-out set; the training noise and the
    held-out noise (fixed for every run)."""
    cfg, d = recipe.training, recipe.diffusion
    with accelerator.main_process_first():  # one process fills the datasets cache, the others read it
        data = build_data(
            recipe.data,
            tokenizer,
            batch_size=cfg.per_device_batch_size,
            seed=cfg.seed,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
        )
    schedule = make_schedule(d.schedule, d.eps)
    noise = NoiseSampler(
        schedule, d.k, mask_id, vocab, seed=cfg.seed, antithetic=d.antithetic, elbo_weight=d.loss_weighting == "elbo"
    )
    eval_noise = NoiseSampler(schedule, d.k, mask_id, vocab, seed=EVAL_SEED)
    return data, noise, eval_noise


def wrap_for_training(recipe: Recipe, ds_config: dict | None, accelerator, objective, hidden_size: int):
    """5. AdamW and the learning-rate schedule (ours: stepped once per optimizer step); accelerate /
    DeepSpeed wrap the objective and the optimizer: (model, optimizer, scheduler)."""
    optimizer = build_optimizer(objective, recipe.training)
    scheduler = build_scheduler(optimizer, recipe.training)
    fill_hidden_size_autos(accelerator, hidden_size)
    if ds_config is not None and accelerator.is_main_process:
        # Said because it is silent and slow: deepspeed.initialize imports DeepSpeed's Muon optimizer,
        # whose module calls torch.compile at import, pulling in torch._dynamo and torch._inductor.
        logger.info(
            "DeepSpeed: building the engine (its first use imports torch's compiler stack: seconds to a minute)"
        )
    model, optimizer = accelerator.prepare(objective, optimizer)
    objective.register_zero3_head()  # ZeRO-3: the fused loss reads the partitioned head weight
    return model, optimizer, scheduler


def _quiet() -> None:
    """Only the main process talks."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.getLogger("xdlm_tune").setLevel(logging.WARNING)
