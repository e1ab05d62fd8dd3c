"""Where training records come from: the Hub, local files, or the builtin offline corpora.

A record is a dict of columns. The builtin corpora use the default column names, so the
rest of the pipeline treats them like any other dataset:
  python-stdlib: {"path", "text"}, one record per .py file of this Python's stdlib.
  mbpp-train:    {"task_id", "prompt", "answer", "text"}, MBPP task ids 601-974.
"""

from __future__ import annotations

import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig

# Fixed seed for the held-out split: it must not move when training.seed changes.
HOLDOUT_SEED = 1234
# Tests, vendored packages and caches are skipped: the corpus is the library's own code.
STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
MBPP_TRAIN_IDS = range(601, 975)
_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


class DataError(ValueError):
    """The data cannot be used as configured; the message names the setting to change."""


@dataclass
class Records:
    """Raw records: `train` (a Dataset, or an IterableDataset when streaming) and a small
    held-out list for the ELBO, disjoint from train."""

    train: Any
    eval: list[dict[str, Any]]


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The stdlib's .py files, sorted by relative path (deterministic on every machine)."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_SKIP_DIRS]
        files += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def python_stdlib_records(root: str | Path | None = None) -> list[dict[str, str]]:
    """One record per stdlib source file; files that are not UTF-8 are skipped."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    out = []
    for path in stdlib_files(root):
        try:
            text = path.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            out.append({"path": path.relative_to(root).as_posix(), "text": text})
    return out


def mbpp_prompt(text: str, tests: list[str]) -> str:
    """The MBPP task as a prompt: problem statement, then the asserts the code must pass."""
    return (
        f"You are an expert Python programmer, and here is your task: {text} "
        "Your code should pass these tests:\n\n" + "\n".join(tests) + "\n"
    )


def mbpp_records(path: str | Path | None, task_ids: range = MBPP_TRAIN_IDS) -> list[dict[str, Any]]:
    """MBPP rows from a local mbpp.jsonl (None: the copy shipped with xdlm-tune), restricted to
    task_ids (the train split by default)."""
    if path is None:
        from ..benchmark_data import shipped_path

        path = shipped_path("mbpp")
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"data.data_files: MBPP file not found: {path} (give the path of an mbpp.jsonl, "
            "or data.data_files=null for the copy shipped with xdlm-tune)"
        )
    out = []
    with path.open() as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if row["task_id"] not in task_ids:
                continue
            prompt = mbpp_prompt(row["text"], row["test_list"])
            answer = row["code"].replace("\r\n", "\n").strip() + "\n"  # the file has CRLF line ends
            out.append({"task_id": row["task_id"], "prompt": prompt, "answer": answer, "text": prompt + answer})
    out.sort(key=lambda r: r["task_id"])
    if not out:
        raise DataError(f"{path}: no MBPP records with task_id in {task_ids.start}..{task_ids.stop - 1}")
    return out


def load_records(cfg: DataConfig, *, rank: int = 0, world_size: int = 1) -> Records:
    """Load the source, hold out cfg.eval_holdout records, cap training at cfg.max_records.

    Map-style data is split by a fixed-seed permutation (the held-out set does not depend
    on max_records or training.seed). Streaming data holds out its first records and is
    then split across ranks, so each process reads only its share.
    """
    import datasets

    if cfg.source in ("python-stdlib", "mbpp-train"):
        rows = python_stdlib_records() if cfg.source == "python-stdlib" else mbpp_records(_one_file(cfg.data_files))
        ds = datasets.Dataset.from_list(rows)
        if cfg.streaming:
            ds = ds.to_iterable_dataset()
    else:
        ds = _load_hf(cfg)

    name = _describe(cfg)
    _require_columns(ds, cfg, name)
    h = cfg.eval_holdout
    if not cfg.streaming:
        n = len(ds)
        if n == 0:
            raise DataError(f"{name} is empty")
        if n <= h:
            raise DataError(
                f"{name} has {n} records and data.eval_holdout is {h}: nothing left to train on; lower data.eval_holdout"
            )
        perm = np.random.default_rng(HOLDOUT_SEED).permutation(n)
        train_idx = perm[h:] if cfg.max_records is None else perm[h : h + cfg.max_records]
        # sorted: contiguous reads while tokenizing; the loader shuffles every epoch anyway
        return Records(train=ds.select(np.sort(train_idx)), eval=[ds[int(i)] for i in perm[:h]])

    held = list(ds.take(h)) if h else []
    train = ds.skip(h)
    if cfg.max_records is not None:
        train = train.take(cfg.max_records)
    if world_size > 1:
        from datasets.distributed import split_dataset_by_node

        train = split_dataset_by_node(train, rank=rank, world_size=world_size)
    return Records(train=train, eval=held)


def _one_file(data_files: Any) -> str | None:
    if isinstance(data_files, list):
        if len(data_files) != 1:
            raise DataError(f"data.data_files: mbpp-train reads one mbpp.jsonl, got {data_files}")
        return data_files[0]
    return data_files


def _describe(cfg: DataConfig) -> str:
    sub = f" ({cfg.subset})" if cfg.subset else ""
    return f"dataset {cfg.source!r}{sub}, split {cfg.split!r}"


def _load_hf(cfg: DataConfig):
    """datasets.load_dataset for a Hub id, a local file (builder from its suffix) or a dir."""
    import datasets

    path = Path(cfg.source).expanduser()
    try:
        if path.is_file():
            suffix = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
            builder = _BUILDERS.get(suffix)
            if builder is None:
                raise DataError(f"data.source: cannot read {path}: use .jsonl/.json/.csv/.parquet/.txt")
            return datasets.load_dataset(builder, data_files=str(path), split=cfg.split, streaming=cfg.streaming)
        return datasets.load_dataset(
            cfg.source, cfg.subset, data_files=cfg.data_files, split=cfg.split, streaming=cfg.streaming
        )
    except DataError:
        raise
    except Exception as e:  # the datasets error says what was missing; we add which setting it came from
        if "corresponds to no data" in str(e):  # how datasets reports a split with no rows
            raise DataError(f"{_describe(cfg)} is empty") from e
        raise DataError(f"data.source: could not load {_describe(cfg)}: {type(e).__name__}: {e}") from e


def _require_columns(ds: Any, cfg: DataConfig, name: str) -> None:
    """Fail early, naming the missing column, the setting and what the data does have."""
    if cfg.mode == "pretrain":
        needed = {"text": cfg.columns.text}
    elif cfg.columns.messages:
        needed = {"messages": cfg.columns.messages}
    else:
        needed = {"prompt": cfg.columns.prompt, "answer": cfg.columns.answer}
    cols = ds.column_names
    if cols is None:  # a streamed dataset with unknown features: look at one record
        first = next(iter(ds), None)
        if first is None:
            raise DataError(f"{name} is empty")
        cols = list(first)
    for key, col in needed.items():
        if col not in cols:
            raise DataError(
                f"data.columns.{key}: column {col!r} not found in {name}; available columns: "
                f"{', '.join(cols)}. Set data.columns.{key} to one of them."
            )
