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


# What a collective raises when another process of the group died or cannot be reached (gloo and
# NCCL wording; torch.distributed's own error classes are matched by name, so no torch here).
_PEER_LOST_TYPES = {"DistError", "DistBackendError", "DistNetworkError", "DistStoreError"}
_PEER_LOST_WORDS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "connection refused",
    "socket timeout",
    "timed out",
    "nccl communicator was aborted",
    "ncclremoteerror",
)


def peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means another process of this launched run died or became unreachable."""
    if not launched():
        return False
    if _PEER_LOST_TYPES & {c.__name__ for c in type(exc).__mro__}:
        return True
    return any(w in str(exc).lower() for w in _PEER_LOST_WORDS)
