"""The XDLM math (XDLM.md): schedules, forward noise, the loss (reference and fused), the reverse step.

Tensors in, tensors out: nothing here knows about transformers, PEFT or files.
"""

from .fused_loss import fused_xdlm_loss
from .loss import xdlm_loss
from .noise import forward_noise, stationary
from .posterior import reverse_posterior
from .schedule import SCHEDULES, Schedule, make_schedule

__all__ = [
    "SCHEDULES",
    "Schedule",
    "forward_noise",
    "fused_xdlm_loss",
    "make_schedule",
    "reverse_posterior",
    "stationary",
    "xdlm_loss",
]
