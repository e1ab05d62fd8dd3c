"""Facts about how this process was started, shared by training and evaluation (no torch)."""
from __future__ import annotations

import os
import socket


def launched() -> bool:
    """Started by a distributed launcher (torchrun, accelerate launch, deepspeed)."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def cpu_requested(cuda_available: bool) -> bool:
    """Run on the CPU: no CUDA, or ACCELERATE_USE_CPU set. Several launched CPU processes then
    need a gloo group (without it accelerate treats each as a lone process)."""
    return not cuda_available or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a rendezvous on this machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
