"""A disk cache of tokenized in-memory datasets (the builtin corpora), so a second run does not
tokenize the same text again (the 400 stdlib files take ~40 s on a 2-core CPU).

datasets caches `map` results of file-backed datasets by itself; in-memory ones (the builtin
python-stdlib and mbpp-train records) it re-tokenizes every time. Their encoded blocks are kept
under `<xdlm-tune cache>/tokenized/<key>/`, where the key hashes the records' content, the data
section of the recipe, the tokenizer and the source of the encoding code. A new entry is written
to a temporary folder and renamed into place; the newest `KEEP` entries are kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

KEEP = 8
_CODE = ("encode.py", "cache.py")  # the files whose change changes the encoded blocks


def cache_root() -> Path:
    from ..model.load import cache_dir

    return cache_dir() / "tokenized"


def tokenizer_digest(tokenizer) -> str:
    """A hash of everything about a tokenizer that changes its ids (vocabulary, merges, specials)."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(
        json.dumps(
            [
                len(tokenizer),
                tokenizer.eos_token_id,
                tokenizer.bos_token_id,
                tokenizer.pad_token_id,
                getattr(tokenizer, "add_bos_token", None),
            ],
            default=str,
        ).encode()
    )
    return h.hexdigest()


def records_digest(ds) -> str:
    """A hash of an in-memory dataset's rows (all columns, in order)."""
    h = hashlib.sha256()
    for col in ds.column_names:
        h.update(col.encode() + b"\0")
        for value in ds[col]:
            h.update(json.dumps(value, sort_keys=True, default=str).encode() + b"\0")
    return h.hexdigest()


def cache_key(ds, cfg, tokenizer) -> str:
    here = Path(__file__).resolve().parent
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("num_proc",)}
    parts = [records_digest(ds), json.dumps(settings, sort_keys=True, default=str), tokenizer_digest(tokenizer)]
    parts += [hashlib.sha256((here / name).read_bytes()).hexdigest() for name in _CODE]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def cached_encode(
    ds, cfg, tokenizer, encode: Callable[[Any, Any, Any], Any], *, root: str | os.PathLike | None = None
) -> tuple[Any, Path | None]:
    """`encode(ds, cfg, tokenizer)`, or its result from the cache; returns (dataset, the cache
    folder it was read from, or None when it was encoded now). File-backed datasets are left to
    datasets' own cache."""
    import datasets

    if ds.cache_files:  # datasets caches map() over files itself
        return encode(ds, cfg, tokenizer), None
    root = Path(root) if root is not None else cache_root()
    folder = root / cache_key(ds, cfg, tokenizer)
    if (folder / "dataset_info.json").is_file():
        try:
            out = datasets.load_from_disk(str(folder))
            os.utime(folder)  # recently used: kept by the pruning below
            return out, folder
        except (OSError, ValueError, FileNotFoundError):
            shutil.rmtree(folder, ignore_errors=True)  # a damaged entry: encode afresh
    out = encode(ds, cfg, tokenizer)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=root))
        out.save_to_disk(str(tmp))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process got there first: its copy is as good
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(root)
    except OSError:
        pass  # a read-only or full cache costs only the time to tokenize again
    return out, None


def _prune(root: Path) -> None:
    entries = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".tmp-")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
