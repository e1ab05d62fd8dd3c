"""`train(recipe)`: one recipe from start to finish, in the order it happens.

  1. where the run lives: output_dir, resume or refuse to overwrite another run
  2. the processes: accelerate, DeepSpeed ZeRO when the recipe asks
  3. the model: pretrained base -> bidirectional denoiser with a mask token (+ LoRA)
  4. the data: packed blocks or prompt/answer pairs, and a fixed held-out set
  5. AdamW and the learning-rate schedule; accelerate / DeepSpeed wrap model and optimizer
  6. resume: weights, optimizer, schedule, data position, RNG
  7. the loop: noise -> denoiser -> fused XDLM loss -> update; metrics, held-out ELBO, checkpoints

`_train` is that list, one call per step: 1-5 are in start.py, 6 and 7 here. One optimizer step,
and how its loss is normalised over the global batch (so that runs with the same global batch
take the same step), is step.py's `train_step`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoints.protocol import RECIPE_FILE, list_checkpoints
from ..config import Recipe
from .heldout import heldout_elbo
from .metrics import METRICS_FILE, MetricsWriter, Progress, read_metrics
from .objective import NoiseSampler, drop_mask_tokens
from .runtime import (
    deepspeed_config,
    reset_accelerate_state,
    single_process_group_env,
    zero_stage,
)
from .start import load_data, load_denoiser, run_folder, start_processes, wrap_for_training
from .state import TrainState, load_run_checkpoint, read_state, save_run_checkpoint
from .step import train_step


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
    resume_from = run_folder(recipe)  # 1
    accelerator = start_processes(recipe, ds_config, resume_from)  # 2
    prepared, objective, (vocab, hidden_size) = load_denoiser(recipe, accelerator)  # 3
    data, noise, eval_noise = load_data(recipe, accelerator, prepared.tokenizer, prepared.mask_id, vocab)  # 4
    model, optimizer, scheduler = wrap_for_training(recipe, ds_config, accelerator, objective, hidden_size)  # 5
    run = _Run(
        recipe, accelerator, model, optimizer, scheduler, data, noise, eval_noise, prepared.tokenizer, prepared.mask_id
    )
    _resume(run, resume_from)  # 6
    _open_outputs(run, prepared, vocab, resume_from)
    _loop(run)  # 7
    return run.result


@dataclass
class _Run:
    """One invocation's training state: what steps 2-5 built, where the run stands (step 6 on), and
    what it reports (`result`, metrics.jsonl, the progress bar; opened by `_open_outputs`)."""

    recipe: Recipe
    accelerator: Any
    model: Any  # as accelerate wrapped it (DDP / DeepSpeed engine / module)
    optimizer: Any
    scheduler: Any
    data: Any  # build_data's loaders: train (resumable) and the held-out set
    noise: NoiseSampler
    eval_noise: NoiseSampler
    tokenizer: Any
    mask_id: int
    step: int = 0  # optimizer steps done
    tokens_seen: int = 0
    result: TrainResult | None = None
    metrics: MetricsWriter | None = None
    progress: Progress | None = None
    params: list = field(init=False)  # the trainable parameters (clipped)

    def __post_init__(self) -> None:
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    @property
    def cfg(self):
        return self.recipe.training


def _resume(run: _Run, resume_from: Path | None) -> None:
    """6. Weights, optimizer, schedule, data position, step and RNG exactly where the checkpoint
    left off (nothing for a fresh run)."""
    if resume_from is None:
        return
    accelerator = run.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    load_run_checkpoint(
        resume_from, accelerator=accelerator, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler
    )
    state = read_state(resume_from, rank, world)  # restores this process's RNG
    run.data.train.load_state_dict(state.data)
    run.step, run.tokens_seen = state.step, state.tokens_seen


def _open_outputs(run: _Run, prepared, vocab: int, resume_from: Path | None) -> None:
    """The run's `TrainResult`, metrics.jsonl (from the current step on) and the progress bar,
    which starts with the run's start line."""
    accelerator, cfg = run.accelerator, run.cfg
    main, world = accelerator.is_main_process, accelerator.num_processes
    run.result = TrainResult(
        output_dir=Path(cfg.output_dir),
        step=run.step,
        world_size=world,
        model=run.model,
        info={
            "mask_id": prepared.mask_id,
            "vocab": vocab,
            "shift": prepared.shift,
            "family": prepared.family,
            "parameters": prepared.parameter_counts,
            "zero_stage": zero_stage(accelerator),
            "resumed_from": str(resume_from) if resume_from else None,
        },
    )
    run.metrics = MetricsWriter(Path(cfg.output_dir), enabled=main, start_step=run.step)
    run.progress = Progress(total=cfg.max_steps, start=run.step, enabled=main)
    run.progress.write(_banner(run.recipe, prepared, world, accelerator, resume_from, run.step))


def _loop(run: _Run) -> None:
    """7. Optimizer steps up to training.max_steps; metrics, held-out ELBO and checkpoints on their
    schedules and at the last step; a closing line."""
    cfg = run.cfg
    try:
        run.model.train()
        if run.step == 0 and cfg.eval_every:
            _evaluate(run, 0)  # the untrained denoiser: the baseline the run should improve on
        if run.step >= cfg.max_steps:
            run.progress.write(f"already at step {run.step} of training.max_steps={cfg.max_steps}: nothing to do")
        batches = iter(run.data.train)
        window: list[float] = []
        t_start = time.perf_counter()
        while run.step < cfg.max_steps:
            t_step = time.perf_counter()
            stats = _take_step(run, batches)
            window.append(stats["loss"])
            # The bar shows what metrics.jsonl records as train/loss: the mean over the steps since the
            # last metrics line (training.log_every), so on a logged step the two are one number.
            run.result.tokens_per_s = run.progress.update(
                loss=sum(window) / len(window),
                tokens=stats["tokens"],
                lr=stats["lr"],
                seconds=time.perf_counter() - t_step,
            )
            step, last = run.step, run.step == cfg.max_steps
            if step % cfg.log_every == 0 or last:
                _log_metrics(run, stats, window, time.perf_counter() - t_start)
                window = []
            if (cfg.eval_every and step % cfg.eval_every == 0) or (last and cfg.eval_every):
                _evaluate(run, step)
            if (cfg.save_every and step % cfg.save_every == 0) or last:
                _save(run, step)
        if run.result.losses:
            run.progress.write(_closing_line(run))
    finally:
        run.progress.close()
        run.metrics.close()


def _take_step(run: _Run, batches) -> dict[str, Any]:
    """One optimizer step on the next training.grad_accum micro-batches; its stats (`train_step`)."""
    micro_batches = [drop_mask_tokens(next(batches), run.mask_id) for _ in range(run.cfg.grad_accum)]
    # Called through this module's global: the benchmarks wrap loop.train_step to measure a step.
    stats = train_step(
        run.step,
        micro_batches,
        model=run.model,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        params=run.params,
        accelerator=run.accelerator,
        noise=run.noise,
        recipe=run.recipe,
    )
    run.step += 1
    if not math.isfinite(stats["loss"]):
        raise FloatingPointError(
            f"the loss is {stats['loss']} at step {run.step}; nothing was saved for this "
            "step. Lower training.lr, or check the data and training.mixed_precision"
        )
    run.tokens_seen += stats["tokens"]
    run.result.step, run.result.losses[run.step] = run.step, stats["loss"]
    return stats


def _log_metrics(run: _Run, stats: dict[str, Any], window: list[float], elapsed: float) -> None:
    """A train/ line of metrics.jsonl: the loss averaged over `window` (the steps since the last line)."""
    cfg, step = run.cfg, run.step
    run.metrics.log(
        step,
        {
            "train/loss": sum(window) / len(window),
            "train/lr": stats["lr"],
            "train/grad_norm": stats["grad_norm"],
            "train/tokens_per_s": run.result.tokens_per_s,
            "train/tokens_seen": run.tokens_seen,
            "train/elapsed_s": elapsed,
            "train/eta_s": elapsed / len(run.result.losses) * (cfg.max_steps - step),
        },
    )


def _evaluate(run: _Run, at: int) -> None:
    """The held-out ELBO at step `at`: into the result, metrics.jsonl and the console."""
    ev = heldout_elbo(
        run.model,
        run.data,
        run.eval_noise,
        accelerator=run.accelerator,
        batch_size=run.cfg.per_device_batch_size,
        max_batches=run.cfg.eval_batches,
        mask_id=run.mask_id,
    )
    if ev is None:
        return
    run.result.evals[at] = ev
    run.metrics.log(at, {f"eval/{k}": v for k, v in ev.items()})
    run.progress.write(
        f"step {at}: held-out NELBO {ev['nelbo']:.4f} nats/token ({ev['bits_per_token']:.4f} "
        f"bits/token, perplexity <= {ev['ppl_bound']:.2f}) over {ev['tokens']} tokens"
    )


def _save(run: _Run, at: int) -> None:
    """A run checkpoint at step `at` (weights, optimizer, schedule, data position, RNG, last ELBO)."""
    state = TrainState(
        step=at,
        data=run.data.train.state_dict(),
        world_size=run.accelerator.num_processes,
        tokens_seen=run.tokens_seen,
        extra={"eval": run.result.evals.get(max(run.result.evals, default=-1))},
    )
    # Called through this module's global: the benchmarks replace loop.save_run_checkpoint.
    run.result.checkpoint = save_run_checkpoint(
        Path(run.cfg.output_dir),
        at,
        accelerator=run.accelerator,
        model=run.model,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        tokenizer=run.tokenizer,
        recipe=run.recipe,
        state=state,
    )
    run.progress.write(f"step {at}: saved {run.result.checkpoint}")


def _closing_line(run: _Run) -> str:
    """The last console line: the step, the throughput, the held-out NELBO's first -> last value."""
    result, step = run.result, run.step
    first, final = result.evals.get(min(result.evals, default=-1)), result.evals.get(step)
    # A resumed run's first held-out ELBO (step 0) is in metrics.jsonl, from the earlier invocation.
    earlier = [
        m
        for m in read_metrics(run.cfg.output_dir)
        if "eval/nelbo" in m and m["step"] < min(result.evals, default=step + 1)
    ]
    if earlier:
        first = {"nelbo": earlier[0]["eval/nelbo"]}
    elbo = (
        f"; held-out NELBO {first['nelbo']:.4f} -> {final['nelbo']:.4f} nats/token"
        if first and final and first is not final
        else ""
    )
    return f"done: step {step}, {result.tokens_per_s:,.0f} tokens/s{elbo}; last checkpoint {result.checkpoint}"


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
