"""The sandbox child's process-level confinement, applied before any program code runs.

Imported by sandbox_runner.py (by file location: the child runs with ``python -I -B -S``).
Standard library only. A new network namespace where the kernel allows one (only a down
loopback inside), and resource limits whose soft and hard values are equal, so the program
cannot raise them again.
"""

from __future__ import annotations

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


def isolate_network() -> None:
    """Move this process into a new network namespace (only a down loopback), if allowed."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(_CLONE_NEWNET) != 0:  # needs root; else try an unprivileged user namespace
            libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
    except Exception:  # no ctypes or no libc: the Python-level socket guards still apply
        pass


def set_limits(job: dict) -> None:
    """Resource limits; soft and hard equal (CPU: +1 s hard) so the program cannot raise them."""
    import resource

    memory = job["memory_mb"] * 1024 * 1024
    file_size = job["max_file_mb"] * 1024 * 1024
    cpu = job["cpu_seconds"]
    limits = {
        resource.RLIMIT_AS: (memory, memory),
        resource.RLIMIT_DATA: (memory, memory),
        resource.RLIMIT_CPU: (cpu, cpu + 1),  # SIGXCPU first, then SIGKILL
        resource.RLIMIT_FSIZE: (file_size, file_size),
        resource.RLIMIT_CORE: (0, 0),
        resource.RLIMIT_NPROC: (job["max_procs"], job["max_procs"]),
    }
    for which, (soft, hard) in limits.items():
        old_soft, old_hard = resource.getrlimit(which)
        if old_hard != resource.RLIM_INFINITY:  # a limit can only be lowered
            hard, soft = min(hard, old_hard), min(soft, old_hard)
        resource.setrlimit(which, (soft, hard))
