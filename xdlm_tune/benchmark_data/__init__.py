"""The benchmark files shipped as package data (this folder), checked by sha256 on load. Standard library only.

    path = shipped_path("mbpp")        # .../benchmark_data/mbpp.jsonl, verified
    shipped_path("mbpp-sanitized")     # sanitized-mbpp.json
    shipped_path("humaneval")          # HumanEval.jsonl.gz

Licenses and provenance: ``NOTICE.md`` beside this file (MBPP CC-BY-4.0, HumanEval MIT).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
# name -> (file, sha256 of the upstream file as published)
SHIPPED = {
    "mbpp": ("mbpp.jsonl", "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f"),
    "mbpp-sanitized": ("sanitized-mbpp.json", "ca95deaa9a01ef0a6f439f88bcf0dd3db3563d22f22aad6cae04ebb9a8d8c8e9"),
    "humaneval": ("HumanEval.jsonl.gz", "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"),
}


class ShippedDataError(RuntimeError):
    """A shipped benchmark file is missing or differs from the published one."""


def shipped_path(name: str) -> Path:
    """The verified path of shipped benchmark ``name`` (a key of ``SHIPPED``)."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped benchmark {name!r}; shipped: {', '.join(SHIPPED)}")
    return _verified(name)


def shipped_label(name: str) -> str:
    """How summaries name the shipped copy: ``shipped mbpp.jsonl (sha256 ccf64cea…)``."""
    file, digest = SHIPPED[name]
    return f"shipped {file} (sha256 {digest[:8]})"


@lru_cache(maxsize=None)
def _verified(name: str) -> Path:
    # Checked once per process: a corrupted or edited copy must not score a benchmark silently.
    file, digest = SHIPPED[name]
    path = DATA_DIR / file
    if not path.is_file():
        raise ShippedDataError(
            f"the shipped benchmark file {path} is missing: reinstall xdlm-tune, "
            "or give the file with --data PATH (eval.data_dir in a recipe)"
        )
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != digest:
        raise ShippedDataError(
            f"the shipped benchmark file {path} has sha256 {actual[:12]}…, not the published {digest[:12]}…: "
            "it was changed after installation. Reinstall xdlm-tune, or give your own file with --data PATH"
        )
    return path
