"""The sandbox child's process-level confinement, applied before any program code runs.

Imported by sandbox_runner.py and judge.py (by file location: they run with ``python -I -B -S``).
Standard library only. A new network namespace where the kernel allows one (only a down
loopback inside), and resource limits whose soft and hard values are equal, so the program
cannot raise them again.
"""

from __future__ import annotations

import os

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


def undumpable() -> None:
    """PR_SET_DUMPABLE 0: a process of the same uid can no longer read this one's /proc/<pid>/mem,
    fd or environ, nor ptrace it (the judge, against a program in the in-process mode)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    except Exception:  # no ctypes or no libc: the judge still holds nothing the program sent
        pass


def drop_privileges(ids: list[int] | None) -> None:
    """In the jail, before any program code: become ``ids`` (uid, gid) for good, if given.

    From root, setresuid to another uid clears every capability, and bwrap's no_new_privs keeps
    setuid programs from giving any back.
    """
    if ids:
        os.setgroups([])
        os.setresgid(ids[1], ids[1], ids[1])
        os.setresuid(ids[0], ids[0], ids[0])
