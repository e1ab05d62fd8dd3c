"""The held-out ELBO: the XDLM negative ELBO per token on a fixed held-out set.

    NELBO / token = sum over held-out answer tokens of (-dalpha/dt) h  /  number of those tokens

(XDLM.md, "Training loss"), always with the ELBO weight, whatever training.loss_weighting
is. exp(NELBO / token) bounds the zero-shot perplexity from above. The noise is fixed for the
whole run (t stratified over the held-out rows from a constant seed, z_t from a per-row
seed), so two evaluations differ only because the model changed, and runs with different
seeds or process counts see the same noise. Every process runs the same number of forward
passes (ZeRO-3 gathers parameters collectively): one without rows of its own in the last
batch runs a batch that counts for nothing.
"""

from __future__ import annotations

import math

import torch

from ..data import DataBundle
from .objective import NoiseSampler, drop_mask_tokens, step_inputs

EVAL_SEED = 20260202  # fixed: independent of training.seed


@torch.no_grad()
def heldout_elbo(
    model, data: DataBundle, sampler: NoiseSampler, *, accelerator, batch_size: int, max_batches: int, mask_id: int
) -> dict[str, float] | None:
    """{"nelbo": nats/token, "bits_per_token", "ppl_bound", "tokens"}; None without held-out data.

    The set is the first eval_batches global batches (per-device batch x processes) of the
    held-out examples: the same examples, split the same way, as the training batches."""
    rank, world = accelerator.process_index, accelerator.num_processes
    global_batch = batch_size * world
    n_rows = min(len(data.eval), global_batch * max_batches)
    if n_rows == 0:
        return None
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # weighted h, tokens
    was_training = model.training
    model.eval()
    try:
        for j in range(-(-n_rows // global_batch)):  # the same number of forwards on every process
            start = j * global_batch + rank * batch_size
            rows = range(start, min(start + batch_size, n_rows))
            empty = len(rows) == 0
            if empty:
                rows = range(0, 1)
            batch = drop_mask_tokens(data.collator([data.eval[i] for i in rows]), mask_id)
            if empty:
                batch["loss_mask"][:] = False
            noise = sampler(batch["input_ids"], batch["loss_mask"], key=(), rows=list(rows), n_rows=n_rows)
            inputs = step_inputs(batch, noise, accelerator.device)
            h = model(**inputs)
            total[0] += (inputs["token_weight"][:, None] * h * inputs["loss_mask"]).sum().double()
            total[1] += inputs["loss_mask"].sum()
    finally:
        model.train(was_training)
    total = accelerator.reduce(total, "sum")
    tokens = int(total[1].item())
    if tokens == 0:
        return None
    nats = total[0].item() / tokens
    return {
        "nelbo": nats,
        "bits_per_token": nats / math.log(2),
        "ppl_bound": math.exp(min(nats, 700.0)),
        "tokens": tokens,
    }
