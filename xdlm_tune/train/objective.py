"""What a training step computes: noise for a batch, then the denoiser and its fused XDLM loss.

`DenoiserObjective` wraps the model so that accelerate (DDP) and DeepSpeed see ONE module
whose forward returns the per-token loss h [B, L]. The fused loss never calls the output
head's forward: it reads the head's weight and runs the projection chunk by chunk. Under
ZeRO-3 that weight is partitioned, and DeepSpeed gathers a module's parameters only around
that module's own forward. `register_zero3_head()` (called once DeepSpeed has partitioned
the model) registers the head's parameters as external parameters of this module with
`deepspeed.zero.register_external_parameter`, DeepSpeed's documented way to use another
module's parameter in a forward: DeepSpeed then gathers them for this module's forward and
again for its backward, and reduce-scatters their gradients like any other parameter's (a
trainable tied head in a full fine-tune included).

`NoiseSampler` makes the noise (t and z_t) a function of (seed, step, row of the step's
global batch) only. A run on 1 or N processes, with or without gradient accumulation, or
resumed from a checkpoint, draws the same noise for the same example, which is what makes
those runs match step for step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..diffusion import Schedule, forward_noise, fused_xdlm_loss
from ..model import denoiser_hidden, output_projection, unwrap


def keyed_generator(*key: int) -> torch.Generator:
    """A CPU generator whose stream depends only on the integers in `key` (well mixed)."""
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


@dataclass
class Noise:
    z_t: torch.Tensor  # [B, L] long: the corrupted input
    alpha: torch.Tensor  # [B] alpha_t
    weight: torch.Tensor  # [B] the weight on h: -dalpha/dt (elbo) or 1 (unit)


@dataclass
class NoiseSampler:
    """Draws t (optionally stratified over the global batch) and z_t ~ q(z_t | x0).

    Only `noisable` positions are corrupted (answer tokens; never the SFT prompt or padding).
    Row r of a global batch of n_rows uses t from a generator keyed by (seed, *key) and its
    tokens from one keyed by (seed, *key, r), so each process computes its own rows alone.
    """

    schedule: Schedule
    k: float
    mask_id: int
    vocab_size: int
    seed: int
    antithetic: bool = True
    elbo_weight: bool = True  # False: loss_weighting "unit"

    def __call__(
        self, x0: torch.Tensor, noisable: torch.Tensor, *, key: Sequence[int], rows: Sequence[int], n_rows: int
    ) -> Noise:
        x0 = x0.cpu()
        t_all = self.schedule.sample_t(n_rows, antithetic=self.antithetic, generator=keyed_generator(self.seed, *key))
        t = t_all[torch.as_tensor(list(rows), dtype=torch.long)]
        alpha = self.schedule.alpha(t)
        z = torch.cat(
            [
                forward_noise(
                    x0[i : i + 1],
                    alpha[i : i + 1],
                    k=self.k,
                    mask_id=self.mask_id,
                    vocab_size=self.vocab_size,
                    generator=keyed_generator(self.seed, *key, r),
                )
                for i, r in enumerate(rows)
            ]
        )
        z = torch.where(noisable.cpu(), z, x0)
        weight = self.schedule.neg_dalpha_dt(t) if self.elbo_weight else torch.ones_like(t)
        return Noise(z_t=z, alpha=alpha, weight=weight)


def gathered(params: list[nn.Parameter]):
    """ZeRO-3: a context holding the full data of partitioned `params` (read only, every
    process enters it); otherwise nothing to do."""
    zero = [p for p in params if hasattr(p, "ds_id")]
    if not zero:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(zero, modifier_rank=None)


class DenoiserObjective(nn.Module):
    """model + fused XDLM loss. forward(...) -> h [B, L] float32 (0 outside loss_mask)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        k: float,
        mask_id: int,
        shift: bool,
        chunk_size: int | None = None,
        chunk_mib: float | None = None,
    ):
        super().__init__()
        self.model = model
        self.k, self.mask_id, self.shift, self.chunk_size, self.chunk_mib = k, mask_id, shift, chunk_size, chunk_mib

    @property
    def config(self):
        """The base model's config (accelerate reads hidden_size from it for DeepSpeed "auto" buckets)."""
        return unwrap(self.model).config

    def register_zero3_head(self) -> bool:
        """Under ZeRO-3 (after DeepSpeed partitioned the model): make the output head's
        parameters external parameters of this module. Returns whether it applied."""
        head = unwrap(self.model).get_output_embeddings()
        params = [p for p in head.parameters() if hasattr(p, "ds_id")]
        if not params:
            return False
        from deepspeed.runtime.zero.partition_parameters import register_external_parameter

        for p in params:
            register_external_parameter(self, p)
        return True

    def forward(
        self,
        z_t: torch.Tensor,
        x0: torch.Tensor,
        attention_mask: torch.Tensor,
        alpha: torch.Tensor,
        loss_mask: torch.Tensor,
        token_weight: torch.Tensor,
        attention_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = denoiser_hidden(self.model, z_t, attention_mask, shift=self.shift, attention_bias=attention_bias)
        weight, rows, bias, softcap = head_weight_rows(self.model)
        return fused_xdlm_loss(
            hidden,
            weight,
            z_t,
            x0,
            alpha,
            k=self.k,
            mask_id=self.mask_id,
            loss_mask=loss_mask,
            chunk_size=self.chunk_size,
            chunk_mib=self.chunk_mib,
            bias=bias,
            logit_softcap=softcap,
            token_weight=token_weight,
            weight_rows=rows,
        )


def head_weight_rows(model: nn.Module) -> tuple[torch.Tensor, tuple | None, torch.Tensor | None, float | None]:
    """The head as (weight [V, H], rows, bias, softcap). For a frozen head whose rows PEFT trains as
    trainable tokens (LoRA's mask row): the frozen base weight and rows = (ids [n], rows [n, H]), so
    that the fused loss forms an [n, H] gradient instead of a [V, H] one (and PEFT's merged [V, H]
    copy of the head is never made); otherwise ``output_projection``'s weight and rows None."""
    head = unwrap(model).get_output_embeddings()
    adapter = getattr(head, "token_adapter", None)
    names = (
        []
        if adapter is None or adapter.disable_adapters or adapter.merged
        else [n for n in adapter.active_adapters if n in adapter.token_indices]
    )
    if not names or adapter.base_layer.weight.requires_grad or hasattr(head, "lora_A"):
        weight, bias, softcap = output_projection(model)
        return weight, None, bias, softcap
    base = adapter.base_layer.weight
    ids = torch.tensor([i for n in names for i in adapter.token_indices[n]], dtype=torch.long, device=base.device)
    rows = torch.cat([adapter.trainable_tokens_delta[n] for n in names]).to(base.device)
    hf = unwrap(model)
    config = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    return (
        base,
        (ids, rows),
        getattr(adapter.base_layer, "bias", None),
        getattr(config, "final_logit_softcapping", None),
    )


def drop_mask_tokens(batch: dict[str, torch.Tensor], mask_id: int) -> dict[str, torch.Tensor]:
    """A clean token equal to the mask id (the mask token's text inside the data) is neither
    noised nor scored: it would look like noise to the model and the loss refuses it."""
    batch["loss_mask"] = batch["loss_mask"] & (batch["input_ids"] != mask_id)
    return batch


def per_answer_weights(loss_mask: torch.Tensor) -> torch.Tensor:
    """[B]: 1 / (loss tokens of each row), 0 for a row without any. Multiplied into the token
    weight, the summed loss becomes a sum of per-answer means (LLaDA's SFT normalisation: an
    answer padded with EOS to seq_len counts once, however short its text is)."""
    n = loss_mask.sum(-1).to(torch.float32)
    return torch.where(n > 0, 1.0 / n.clamp(min=1.0), torch.zeros_like(n))


def step_inputs(
    batch: dict[str, torch.Tensor], noise: Noise, device: torch.device, attention_bias: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """DenoiserObjective's keyword arguments for a collated batch and its noise, on `device`."""
    inputs = {
        "z_t": noise.z_t,
        "x0": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "alpha": noise.alpha,
        "loss_mask": batch["loss_mask"],
        "token_weight": noise.weight,
        "attention_bias": attention_bias,
    }
    return {k: None if v is None else v.to(device) for k, v in inputs.items()}
