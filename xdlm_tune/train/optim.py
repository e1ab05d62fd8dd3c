"""AdamW over the trainable parameters, and the learning-rate schedule (linear warmup, then
cosine to 0 or constant)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainingConfig


def build_optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.AdamW:
    """AdamW on the parameters that require grad. Weight decay applies to matrices (LoRA
    A/B, linear and embedding weights), not to biases and norm scales (1-D), as in HF Trainer."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters: enable LoRA (lora.enabled) or a full fine-tune")
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)


def lr_factor(step: int, cfg: TrainingConfig) -> float:
    """Multiplier of training.lr for the update made at optimizer step `step` (0-based).

    Warmup reaches the full rate at step warmup_steps - 1: (step + 1) / warmup_steps. Then
    constant, or cosine from 1 down to 0 at step max_steps (extending max_steps on resume
    stretches the rest of a cosine schedule)."""
    warmup = cfg.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if cfg.lr_scheduler == "constant":
        return 1.0
    progress = (step - warmup) / max(1, cfg.max_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step by the loop itself (not through accelerate, which
    would step it once per process, nor DeepSpeed, which ignores a LambdaLR)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
