"""`train_step`: one optimizer step over this process's micro-batches of the global batch.

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

import math
from typing import Any

import torch

from ..config import Recipe
from ..model import anneal_progress, annealed_attention_mask
from .objective import NoiseSampler, keyed_generator, per_answer_weights, step_inputs

_NOISE, _ANNEAL = 0, 1  # first key of the per-step generators: noise and attention annealing never share a stream


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
