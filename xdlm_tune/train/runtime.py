"""The processes a run uses: an accelerate Accelerator, with DeepSpeed ZeRO when the recipe asks.

The recipe decides precision and DeepSpeed; the launcher (`accelerate launch`, torchrun,
`deepspeed`) only decides how many processes run where. Two traps handled here:

* Without CUDA, accelerate treats processes started by a launcher as independent single
  processes unless told to use the CPU: we pass cpu=True (gloo) whenever there is no GPU.
* DeepSpeed always needs a process group, also for one process started without a launcher
  (`xdlm-tune train` on one GPU): we then set the single-process rendezvous variables on a
  free loopback port, as the `deepspeed` launcher would. On a machine without CUDA DeepSpeed
  uses its CPU accelerator with gloo (its first use compiles a small C++ op, cached in torch's
  extensions folder; ds_ops.py builds it once, clearing a stale lock); accelerate's own CPU switch would silently turn DeepSpeed off, so
  it is cleared for DeepSpeed runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

import torch

from ..config import Recipe, RecipeError
from ..launch import cpu_requested, free_port, launched

logger = logging.getLogger(__name__)

_LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def deepspeed_config(recipe: Recipe) -> dict[str, Any] | None:
    """The DeepSpeed config dict for the run: the recipe's JSON with the values the recipe
    owns filled in (micro-batch, accumulation, clipping); None without DeepSpeed. Precision
    ("auto") is filled by accelerate from training.mixed_precision, the hidden-size buckets
    from the model, train_batch_size from the number of processes."""
    ds = recipe.deepspeed.resolve()
    if ds is None:
        return None
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise RecipeError(
                f"deepspeed.config: remove the {section!r} section; the recipe's training section sets "
                "the optimizer (AdamW) and the learning-rate schedule"
            )
    t = recipe.training
    owned = {
        "train_micro_batch_size_per_gpu": t.per_device_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": float(t.max_grad_norm or 0.0),  # 0: DeepSpeed does not clip
    }
    for key, value in owned.items():
        if ds.get(key, "auto") not in ("auto", value):
            logger.warning("deepspeed.config sets %s=%r; the recipe's %r is used", key, ds[key], value)
        ds[key] = value
    return ds


@contextlib.contextmanager
def single_process_group_env(needed: bool) -> Iterator[None]:
    """Set RANK=0, WORLD_SIZE=1, ... on a free 127.0.0.1 port for the duration, when
    `needed` and no launcher set them; restore the environment afterwards."""
    if not needed or launched():
        yield
        return
    saved = {k: os.environ.get(k) for k in _LAUNCH_VARS}
    os.environ.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_accelerator(recipe: Recipe, ds_config: dict[str, Any] | None):
    """An Accelerator for the recipe. Call inside `single_process_group_env(ds_config is not None)`."""
    from accelerate import Accelerator, DeepSpeedPlugin
    from accelerate.utils import InitProcessGroupKwargs

    t = recipe.training
    if ds_config is None and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise RecipeError(
            "launched with DeepSpeed (accelerate launch --use_deepspeed or a DeepSpeed accelerate "
            "config) but the recipe has no deepspeed section; set deepspeed.config (e.g. "
            "deepspeed.config=deepspeed_configs/zero2.json): the recipe decides, not the launcher"
        )
    if ds_config is not None and os.environ.pop("ACCELERATE_USE_CPU", None) is not None:
        logger.info("DeepSpeed run: ignoring ACCELERATE_USE_CPU (DeepSpeed picks its CPU accelerator by itself)")
    cpu = cpu_requested(torch.cuda.is_available())
    handlers = [InitProcessGroupKwargs(backend="gloo")] if cpu and launched() else []
    common = dict(mixed_precision=t.mixed_precision, gradient_accumulation_steps=t.grad_accum, kwargs_handlers=handlers)
    if ds_config is None:
        return Accelerator(cpu=cpu, **common)
    # DeepSpeed's CPU comm op is built here, under our own lock: a stale torch lock is cleared
    # and concurrent first runs wait for one build (ds_ops.py).
    from .ds_ops import prepare_deepspeed_ops

    prepare_deepspeed_ops()
    # zero3_init_flag=False: the model is loaded whole, then partitioned by accelerator.prepare.
    # Loading under zero.Init would partition it before the mask-token row and LoRA are set up.
    plugin = DeepSpeedPlugin(hf_ds_config=ds_config, zero3_init_flag=False)
    return Accelerator(deepspeed_plugin=plugin, **common)


def fill_hidden_size_autos(accelerator, hidden_size: int) -> None:
    """Fill DeepSpeed's hidden-size "auto" buckets as accelerate would, from the output head's
    width (remote-code configs, e.g. LLaDA's, may not call it hidden_size)."""
    if not is_deepspeed(accelerator):
        return
    zero = accelerator.state.deepspeed_plugin.deepspeed_config.setdefault("zero_optimization", {})
    values = {
        "reduce_bucket_size": hidden_size * hidden_size,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "stage3_param_persistence_threshold": 10 * hidden_size,
    }
    for key, value in values.items():
        if zero.get(key) == "auto":
            zero[key] = value


def shutdown_process_group() -> None:
    """End a launched run cleanly: wait for every process, then tear the process group down.

    Exiting with the group (and DeepSpeed's CPU shared-memory comm threads) still alive can
    abort the interpreter at shutdown ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide singletons (a second run in the same process, e.g. tests)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def unwrap_prepared(accelerator, model):
    """The module inside accelerate's wrappers. accelerator.unwrap_model imports DeepSpeed whenever it
    is installed (and DeepSpeed logs an accelerator warning at import): only DeepSpeed runs use it."""
    if is_deepspeed(accelerator):
        return accelerator.unwrap_model(model)
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return getattr(model, "_orig_mod", model)  # torch.compile


def is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def zero_stage(accelerator) -> int | None:
    return accelerator.state.deepspeed_plugin.zero_stage if is_deepspeed(accelerator) else None


@contextlib.contextmanager
def whole_model_loading(accelerator) -> Iterator[None]:
    """Load and adapt the model whole, never under ZeRO-3's zero.Init.

    accelerate registers its DeepSpeed config with transformers, which then loads ZeRO-3
    models already partitioned; the mask-token row and PEFT need the real weights, so the
    registration is lifted while the model is prepared (accelerator.prepare partitions it).
    """
    if not is_deepspeed(accelerator):
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        accelerator.state.deepspeed_plugin.set_deepspeed_weakref()
