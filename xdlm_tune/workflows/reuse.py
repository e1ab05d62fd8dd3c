"""Reusing what a pipeline stage already made, when nothing it depends on has changed.

Each stage of `xdlm-tune run` (evaluation, export, export sample) has a key: a hash of what its
output depends on (the checkpoint, the recipe's sections it reads, the code version). The key and
the outputs are recorded in ``<output_dir>/reuse.json`` when the stage finishes; a later run with
the same key and all outputs still there reuses them and says so. Any change (another checkpoint,
another recipe value, an edited source file of xdlm-tune) reruns the stage.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

STAMP_FILE = "reuse.json"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus a hash of every xdlm_tune source file: '0.1.0+3f2a9c1b7d04'."""
    from .. import __version__

    root = Path(__file__).resolve().parents[1]  # the whole package
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{__version__}+{h.hexdigest()[:12]}"


def file_digest(path: str | os.PathLike | None) -> str | None:
    """sha256 of a file's bytes (None for no file)."""
    if path is None:
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def checkpoint_id(ckpt: str | os.PathLike) -> dict[str, Any]:
    """What identifies a checkpoint's weights: its resolved path and the state file it committed
    (a checkpoint is written once, atomically, so the state's bytes change when it is rewritten)."""
    from ..checkpoints.protocol import STATE_FILE

    ckpt = Path(ckpt).resolve()
    return {"path": str(ckpt), "state": file_digest(ckpt / STATE_FILE) if (ckpt / STATE_FILE).is_file() else None}


def stage_key(**parts: Any) -> dict[str, str]:
    """A digest of each of a stage's inputs (JSON-able values; paths as strings), the code version
    included: two keys are equal when every input is; `changed` names the ones that differ."""
    parts = {"code": code_version(), **parts}
    return {
        name: hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
        for name, value in sorted(parts.items())
    }


def changed(old: dict[str, str] | None, new: dict[str, str]) -> list[str]:
    """The inputs whose digests differ between two keys (all of them when there is no old key)."""
    if not isinstance(old, dict) or not old:
        return sorted(new)
    return sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))


class Stamps:
    """``<run_dir>/reuse.json``: for each stage, the key it was made with and its outputs."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / STAMP_FILE
        try:
            self.data: dict[str, dict] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def fresh(self, stage: str, key: dict[str, str]) -> bool:
        """True when `stage` was finished with `key` and all its outputs still exist."""
        entry = self.data.get(stage)
        return bool(
            entry
            and entry.get("key") == key
            and entry.get("outputs")
            and all(Path(p).exists() for p in entry["outputs"])
        )

    def changed(self, stage: str, key: dict[str, str]) -> list[str]:
        """Why `stage` is not reusable: the inputs that changed ('outputs' when they are gone)."""
        entry = self.data.get(stage)
        if entry is None:
            return []
        diff = changed(entry.get("key"), key)
        return diff or ["outputs"]

    def record(self, stage: str, key: dict[str, str], outputs: Iterable[str | os.PathLike]) -> None:
        self.data[stage] = {"key": key, "outputs": [str(p) for p in outputs]}
        self._write()

    def forget(self, stage: str) -> None:
        if self.data.pop(stage, None) is not None:
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)
