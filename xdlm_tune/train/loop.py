"""`train(recipe)`: one recipe from start to finish, in the order it happens.

  1. where the run lives: output_dir, resume or refuse to overwrite another run
  2. the processes: accelerate, DeepSpeed ZeRO when the recipe asks
  3. the model: pretrained base -> bidirectional denoiser with a mask token (+ LoRA)
  4. the data: packed blocks or prompt/answer pairs, and a fixed held-out set
  5. AdamW and the learning-rate schedule; accelerate / DeepSpeed wrap model and optimizer
  6. resume: weights, optimizer, schedule, data position, RNG
  7. the loop: noise -> denoiser -> fused XDLM loss -> update; metrics, held-out ELBO, checkpoints

The loss of one optimizer step is the mean over every loss token of the global batch (all
processes, all accumulated micro-batches) of w(t) * h, with w = -dalpha/dt ("elbo") or 1
("unit"). Each micro-batch's backward is scaled so that the gradient is exactly that mean,
whatever the padding, and the noise of an example depends only on its place in the step's
global batch: runs with the same per-device batch x processes x accumulation (say 4 x 1 x 1,
2 x 2 x 1 and 1 x 2 x 2) see the same examples and noise and take the same step.
With data.pad_answer_with_eos (SFT) the loss is instead the mean over the global batch's answers
of each answer's mean w(t) * h (LLaDA's SFT normalisation).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoints.protocol import RECIPE_FILE, CheckpointError, list_checkpoints, recover, resolve_resume
from ..config import Recipe, save_recipe
from ..data import build_data
from ..diffusion import make_schedule
from ..model import anneal_progress, annealed_attention_mask, output_projection, prepare_model
from ..model.prepare import model_options
from .heldout import EVAL_SEED, heldout_elbo
from .metrics import METRICS_FILE, MetricsWriter, Progress, read_metrics
from .objective import (
    DenoiserObjective,
    NoiseSampler,
    drop_mask_tokens,
    keyed_generator,
    per_answer_weights,
    step_inputs,
)
from .optim import build_optimizer, build_scheduler
from .runtime import (
    build_accelerator,
    deepspeed_config,
    fill_hidden_size_autos,
    reset_accelerate_state,
    single_process_group_env,
    whole_model_loading,
    zero_stage,
)
from .state import TrainState, check_resume_compatible, load_run_checkpoint, read_state, save_run_checkpoint

logger = logging.getLogger(__name__)

_NOISE, _ANNEAL = 0, 1  # first key of the per-step generators: noise and attention annealing never share a stream


@dataclass
class TrainResult:
    output_dir: Path
    step: int  # the last optimizer step done
    losses: dict[int, float] = field(default_factory=dict)  # step -> global-batch loss (this invocation)
    evals: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> held-out ELBO
    checkpoint: Path | None = None  # the last checkpoint written
    world_size: int = 1
    tokens_per_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    model: Any = None  # the trained model as accelerate wrapped it (DDP / DeepSpeed engine / module)


def train(recipe: Recipe) -> TrainResult:
    """Run the recipe; every process of a launch calls this."""
    ds_config = deepspeed_config(recipe)  # a bad deepspeed section fails here, before anything loads
    out = Path(recipe.training.output_dir)
    fresh = not out.exists()
    with single_process_group_env(ds_config is not None):
        try:
            return _train(recipe, ds_config)
        except BaseException:
            if fresh:
                _drop_failed_start(out)
            raise
        finally:
            reset_accelerate_state()


def _drop_failed_start(out: Path) -> None:
    """A run that failed before its first checkpoint in a folder it created leaves nothing behind
    (its recipe.yaml and metrics.jsonl would read as a run there); other files are kept."""
    if not out.is_dir() or list_checkpoints(out):
        return
    for name in (RECIPE_FILE, METRICS_FILE):
        (out / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty (the user's files, another process): kept
        out.rmdir()


def _train(recipe: Recipe, ds_config: dict | None) -> TrainResult:
    from accelerate.utils import set_seed

    cfg = recipe.training
    out = Path(cfg.output_dir)

    # 1. Where the run lives. A fresh run never writes over another run's checkpoints.
    resume_from = resolve_resume(out, cfg.resume)
    if resume_from is None and list_checkpoints(out):
        raise CheckpointError(
            f"{out} already holds checkpoints ({list_checkpoints(out)[-1][1].name}); set "
            "training.resume=true (or --resume) to continue that run, or choose another "
            "training.output_dir"
        )
    if resume_from is not None:
        check_resume_compatible(resume_from, recipe)

    # 2. The processes.
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

    # 3. The model: the same base, mask token and LoRA initialisation on every process.
    with whole_model_loading(accelerator):
        prepared = prepare_model(
            **model_options(recipe),
            trust_remote_code=recipe.model.trust_remote_code,
            report=False,  # the start line (_banner) says it: trainable counts, mask id, family
        )
    mask_id, (vocab, hidden_size) = prepared.mask_id, output_projection(prepared.model)[0].shape
    d = recipe.diffusion
    objective = DenoiserObjective(
        prepared.model, k=d.k, mask_id=mask_id, shift=prepared.shift, chunk_size=d.chunk_size, chunk_mib=d.chunk_mib
    )

    # 4. The data (each process reads its share) and the noise.
    with accelerator.main_process_first():  # one process fills the datasets cache, the others read it
        data = build_data(
            recipe.data,
            prepared.tokenizer,
            batch_size=cfg.per_device_batch_size,
            seed=cfg.seed,
            rank=rank,
            world_size=world,
        )
    schedule = make_schedule(d.schedule, d.eps)
    noise = NoiseSampler(
        schedule, d.k, mask_id, vocab, seed=cfg.seed, antithetic=d.antithetic, elbo_weight=d.loss_weighting == "elbo"
    )
    eval_noise = NoiseSampler(schedule, d.k, mask_id, vocab, seed=EVAL_SEED)  # fixed for every run

    # 5. Optimizer and schedule. The schedule stays ours: stepped once per optimizer step.
    optimizer = build_optimizer(objective, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    fill_hidden_size_autos(accelerator, hidden_size)
    if ds_config is not None and main:
        # Said because it is silent and slow: deepspeed.initialize imports DeepSpeed's Muon optimizer,
        # whose module calls torch.compile at import, pulling in torch._dynamo and torch._inductor.
        logger.info(
            "DeepSpeed: building the engine (its first use imports torch's compiler stack: seconds to a minute)"
        )
    model, optimizer = accelerator.prepare(objective, optimizer)
    objective.register_zero3_head()  # ZeRO-3: the fused loss reads the partitioned head weight
    params = [p for p in model.parameters() if p.requires_grad]

    # 6. Resume exactly where the checkpoint left off.
    step, tokens_seen = 0, 0
    if resume_from is not None:
        load_run_checkpoint(resume_from, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler)
        state = read_state(resume_from, rank, world)  # restores this process's RNG
        data.train.load_state_dict(state.data)
        step, tokens_seen = state.step, state.tokens_seen

    # 7. The loop.
    result = TrainResult(
        output_dir=out,
        step=step,
        world_size=world,
        model=model,
        info={
            "mask_id": mask_id,
            "vocab": vocab,
            "shift": prepared.shift,
            "family": prepared.family,
            "parameters": prepared.parameter_counts,
            "zero_stage": zero_stage(accelerator),
            "resumed_from": str(resume_from) if resume_from else None,
        },
    )
    metrics = MetricsWriter(out, enabled=main, start_step=step)
    progress = Progress(total=cfg.max_steps, start=step, enabled=main)
    progress.write(_banner(recipe, prepared, world, accelerator, resume_from, step))

    def evaluate(at: int) -> None:
        ev = heldout_elbo(
            model,
            data,
            eval_noise,
            accelerator=accelerator,
            batch_size=cfg.per_device_batch_size,
            max_batches=cfg.eval_batches,
            mask_id=mask_id,
        )
        if ev is None:
            return
        result.evals[at] = ev
        metrics.log(at, {f"eval/{k}": v for k, v in ev.items()})
        progress.write(
            f"step {at}: held-out NELBO {ev['nelbo']:.4f} nats/token ({ev['bits_per_token']:.4f} "
            f"bits/token, perplexity <= {ev['ppl_bound']:.2f}) over {ev['tokens']} tokens"
        )

    def save(at: int) -> None:
        state = TrainState(
            step=at,
            data=data.train.state_dict(),
            world_size=world,
            tokens_seen=tokens_seen,
            extra={"eval": result.evals.get(max(result.evals, default=-1))},
        )
        result.checkpoint = save_run_checkpoint(
            out,
            at,
            accelerator=accelerator,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            tokenizer=prepared.tokenizer,
            recipe=recipe,
            state=state,
        )
        progress.write(f"step {at}: saved {result.checkpoint}")

    try:
        model.train()
        if step == 0 and cfg.eval_every:
            evaluate(0)  # the untrained denoiser: the baseline the run should improve on
        if step >= cfg.max_steps:
            progress.write(f"already at step {step} of training.max_steps={cfg.max_steps}: nothing to do")
        batches = iter(data.train)
        window: list[float] = []
        t_start = time.perf_counter()
        while step < cfg.max_steps:
            t_step = time.perf_counter()
            micro_batches = [drop_mask_tokens(next(batches), mask_id) for _ in range(cfg.grad_accum)]
            stats = train_step(
                step,
                micro_batches,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                params=params,
                accelerator=accelerator,
                noise=noise,
                recipe=recipe,
            )
            step += 1
            if not math.isfinite(stats["loss"]):
                raise FloatingPointError(
                    f"the loss is {stats['loss']} at step {step}; nothing was saved for this "
                    "step. Lower training.lr, or check the data and training.mixed_precision"
                )
            tokens_seen += stats["tokens"]
            result.step, result.losses[step] = step, stats["loss"]
            window.append(stats["loss"])
            # The bar shows what metrics.jsonl records as train/loss: the mean over the steps since the
            # last metrics line (training.log_every), so on a logged step the two are one number.
            rate = progress.update(
                loss=sum(window) / len(window),
                tokens=stats["tokens"],
                lr=stats["lr"],
                seconds=time.perf_counter() - t_step,
            )
            result.tokens_per_s = rate
            last = step == cfg.max_steps
            if step % cfg.log_every == 0 or last:
                elapsed = time.perf_counter() - t_start
                metrics.log(
                    step,
                    {
                        "train/loss": sum(window) / len(window),
                        "train/lr": stats["lr"],
                        "train/grad_norm": stats["grad_norm"],
                        "train/tokens_per_s": rate,
                        "train/tokens_seen": tokens_seen,
                        "train/elapsed_s": elapsed,
                        "train/eta_s": elapsed / len(result.losses) * (cfg.max_steps - step),
                    },
                )
                window = []
            if (cfg.eval_every and step % cfg.eval_every == 0) or (last and cfg.eval_every):
                evaluate(step)
            if (cfg.save_every and step % cfg.save_every == 0) or last:
                save(step)
        if result.losses:
            first, final = result.evals.get(min(result.evals, default=-1)), result.evals.get(step)
            # A resumed run's first held-out ELBO (step 0) is in metrics.jsonl, from the earlier invocation.
            earlier = [
                m
                for m in read_metrics(cfg.output_dir)
                if "eval/nelbo" in m and m["step"] < min(result.evals, default=step + 1)
            ]
            if earlier:
                first = {"nelbo": earlier[0]["eval/nelbo"]}
            elbo = (
                f"; held-out NELBO {first['nelbo']:.4f} -> {final['nelbo']:.4f} nats/token"
                if first and final and first is not final
                else ""
            )
            progress.write(
                f"done: step {step}, {result.tokens_per_s:,.0f} tokens/s{elbo}; last checkpoint {result.checkpoint}"
            )
    finally:
        progress.close()
        metrics.close()
    return result


def train_step(
    step: int,
    micro_batches: list[dict[str, torch.Tensor]],
    *,
    model,
    optimizer,
    scheduler,
    params,
    accelerator,
    noise: NoiseSampler,
    recipe: Recipe,
) -> dict[str, Any]:
    """One optimizer step over `micro_batches` (this process's share of the accumulation)."""
    cfg = recipe.training
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    batch_size, accum = cfg.per_device_batch_size, len(micro_batches)
    counts = torch.tensor(
        [
            sum(float(b["loss_mask"].sum()) for b in micro_batches),
            sum(float(b["attention_mask"].sum()) for b in micro_batches),
            sum(float(b["loss_mask"].any(-1).sum()) for b in micro_batches),
        ],
        dtype=torch.float64,
        device=device,
    )
    loss_tokens, real_tokens, answers = accelerator.reduce(counts, "sum").tolist()
    per_answer = recipe.data.mode == "sft" and recipe.data.pad_answer_with_eos
    denominator = answers if per_answer else loss_tokens
    # DDP / DeepSpeed average gradients over processes and accelerate / DeepSpeed divide by
    # the accumulation steps: undo both, and divide by the global number of loss tokens (answers).
    scale = world * accum / max(denominator, 1.0)
    anneal = anneal_progress(step, recipe.adaptation.attention_annealing_steps)

    total = torch.zeros((), dtype=torch.float64, device=device)
    grad_norm = None
    for micro, batch in enumerate(micro_batches):
        # Rows of the step's whole global batch (micro-batches x processes x per-device batch),
        # in the loader's order: t is stratified over all of them.
        first = (micro * world + rank) * batch_size
        rows = list(range(first, first + batch["input_ids"].shape[0]))
        nz = noise(
            batch["input_ids"], batch["loss_mask"], key=(_NOISE, step), rows=rows, n_rows=batch_size * world * accum
        )
        bias = None
        if anneal < 1.0:  # one draw per step, the same on every process
            bias = annealed_attention_mask(
                batch["attention_mask"], anneal, generator=keyed_generator(cfg.seed, _ANNEAL, step)
            )
        inputs = step_inputs(batch, nz, device, bias)
        if per_answer:  # each answer's tokens weigh 1 / its length: a per-answer mean
            inputs["token_weight"] = inputs["token_weight"] * per_answer_weights(inputs["loss_mask"])
        with accelerator.accumulate(model):
            h = model(**inputs)
            weighted = (inputs["token_weight"][:, None] * h * inputs["loss_mask"]).sum()
            accelerator.backward(weighted * scale)
            if accelerator.sync_gradients:  # DeepSpeed clips inside its step; this reads its norm
                grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        total += weighted.detach().double()
    lr = scheduler.get_last_lr()[0]  # the rate this update used
    scheduler.step()
    loss = accelerator.reduce(total, "sum").item() / max(denominator, 1.0)
    return {
        "loss": loss,
        "lr": lr,
        "grad_norm": None if grad_norm is None else float(grad_norm),
        "tokens": int(real_tokens),
        "loss_tokens": int(loss_tokens),
    }


def _quiet() -> None:
    """Only the main process talks."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.getLogger("xdlm_tune").setLevel(logging.WARNING)


# accelerate's DistributedType values, as the start line names them.
_DISTRIBUTION = {"NO": "no data parallelism", "MULTI_CPU": "DDP (CPU, gloo)", "MULTI_GPU": "DDP (GPU)"}


def _banner(recipe: Recipe, prepared, world: int, accelerator, resume_from: Path | None, step: int) -> str:
    cfg, c = recipe.training, prepared.parameter_counts
    stage = zero_stage(accelerator)
    kind = accelerator.distributed_type.value
    what = f"DeepSpeed ZeRO-{stage}" if stage is not None else _DISTRIBUTION.get(kind, kind.lower())
    precision = "fp32" if cfg.mixed_precision in (None, "no") else cfg.mixed_precision
    tokens = cfg.per_device_batch_size * cfg.grad_accum * world * recipe.data.seq_len
    lines = [
        f"xdlm-tune train: {recipe.model.name_or_path} ({prepared.family}, {prepared.kind}) -> "
        f"XDLM k={recipe.diffusion.k}",
        f"  mask id {prepared.mask_id}, shift {prepared.shift}; trainable {c.get('trainable', 0):,} of "
        f"{c.get('total', 0):,} parameters ({'LoRA' if recipe.lora.enabled else 'full fine-tune'})",
        f"  {world} process(es), {what}, {accelerator.device}, precision {precision}; up to {tokens:,} tokens per step",
        f"  output: {cfg.output_dir}" + (f"; resuming from {resume_from} at step {step}" if resume_from else ""),
    ]
    return "\n".join(lines)
