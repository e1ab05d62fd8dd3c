"""Triton backend of fused_xdlm_loss (placeholder while the kernel is written)."""
from __future__ import annotations

import os

import torch


def triton_available(hidden: torch.Tensor, *, explicit: bool = False) -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "triton is not installed (pip install 'xdlm-tune[triton]')"
    if hidden.is_cuda:
        return True, ""
    if explicit and os.environ.get("TRITON_INTERPRET") == "1":
        return True, ""
    return False, f"hidden is on {hidden.device.type}, not CUDA (set TRITON_INTERPRET=1 to run the kernel on CPU)"
