"""Deterministic, resumable batch streams, and `build_data` which wires everything up.

Both loaders are endless iterators of collated batches for one rank. Their position is a
small JSON-able dict (`state_dict`), saved with every checkpoint; `load_state_dict`
puts a fresh loader at the exact next batch, so a resumed run sees the same data as an
uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ..config import DataConfig
from .encode import Collator, encode_dataset, example_encoder, make_collator
from .sources import DataError, load_records

Batch = dict[str, Any]


class ResumableLoader:
    """Batches from a map-style dataset in an order fixed by (seed, epoch).

    Each epoch is a permutation drawn from numpy's default_rng([seed, epoch]). Global batch
    g covers permutation[g*B*W : (g+1)*B*W] and rank r takes its r-th slice of B, so W
    processes with batch B see exactly what one process with batch B*W sees. The last
    incomplete global batch of an epoch is dropped.
    """

    def __init__(
        self,
        dataset,
        collate: Callable[[list], Batch],
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        self.dataset, self.collate = dataset, collate
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.num_examples = len(dataset)
        self.global_batch = batch_size * world_size
        if self.num_examples < self.global_batch:
            raise DataError(
                f"{self.num_examples} training examples, fewer than one global batch "
                f"({batch_size} per device x {world_size} processes = {self.global_batch}); "
                "lower training.per_device_batch_size or add data"
            )
        self.epoch = 0
        self.batch = 0  # next batch within the epoch

    @property
    def batches_per_epoch(self) -> int:
        return self.num_examples // self.global_batch

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            order = self.order(self.epoch)
            while self.batch < self.batches_per_epoch:
                start = self.batch * self.global_batch + self.rank * self.batch_size
                idx = order[start : start + self.batch_size]
                self.batch += 1  # counted before the yield: the state names the NEXT batch
                yield self.collate([self.dataset[int(i)] for i in idx])
            self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "seed": self.seed,
            "num_examples": self.num_examples,
            "global_batch": self.global_batch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "num_examples", "global_batch"):
            if state.get(key) != getattr(self, key):
                raise DataError(
                    f"cannot resume the data position: {key} was {state.get(key)} at the checkpoint "
                    f"and is {getattr(self, key)} now (the data or batch geometry changed)"
                )
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


class StreamLoader:
    """Batches from a streamed datasets.IterableDataset, packed on the fly (pretrain) or not.

    The position is the dataset's own state_dict (exact without shuffle buffers) plus the
    tokens already read but not yet batched. Each pass over the stream is an epoch; the
    leftover tokens and the last incomplete batch of a pass are dropped.
    """

    def __init__(
        self,
        stream,
        encode: Callable[[list[dict], list[int]], list[dict]],
        collate: Callable[[list], Batch],
        batch_size: int,
        *,
        pack_len: int | None = None,
    ):
        self.stream, self.encode, self.collate = stream, encode, collate
        self.batch_size, self.pack_len = batch_size, pack_len
        self.epoch, self.batch = 0, 0
        self._buffer: list[int] = []
        self._records = 0  # records read this epoch (for error messages)
        self._source: dict[str, Any] | None = None  # the stream's state_dict at the last batch

    def _examples(self) -> Iterator[dict[str, Any]]:
        for record in self.stream:
            examples = self.encode([record], [self._records])
            self._records += 1
            if self.pack_len is None:
                yield from examples
                continue
            for e in examples:
                self._buffer.extend(e["input_ids"])
            while len(self._buffer) >= self.pack_len:
                block = self._buffer[: self.pack_len]
                del self._buffer[: self.pack_len]
                yield {"input_ids": block, "prompt_len": 0}

    def __iter__(self) -> Iterator[Batch]:
        while True:
            self.stream.set_epoch(self.epoch)
            batch = []
            for example in self._examples():
                batch.append(example)
                if len(batch) == self.batch_size:
                    self.batch += 1
                    # the stream sits right after the last record used: that is the position
                    self._source = self.stream.state_dict()
                    yield self.collate(batch)
                    batch = []
            if self.batch == 0:
                raise DataError(f"the streamed dataset gave no complete batch of {self.batch_size} in a whole pass")
            self.epoch, self.batch, self._buffer, self._records, self._source = self.epoch + 1, 0, [], 0, None

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "records": self._records,
            "source": self._source,
            "buffer": list(self._buffer),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch, self._records = int(state["epoch"]), int(state["batch"]), int(state["records"])
        self._buffer, self._source = list(state["buffer"]), state["source"]
        if self._source is not None:
            self.stream.load_state_dict(self._source)


@dataclass
class DataBundle:
    """What the trainer needs: an endless train loader, a fixed held-out set, the collator."""

    train: ResumableLoader | StreamLoader
    eval: Any  # encoded map-style Dataset of held-out examples (fixed across runs)
    collator: Collator

    def eval_batches(
        self, batch_size: int, *, max_batches: int | None = None, rank: int = 0, world_size: int = 1
    ) -> Iterator[Batch]:
        """The held-out batches in a fixed order (the last may be smaller); rank r gets r, r+W, ..."""
        n = -(-len(self.eval) // batch_size)
        if max_batches is not None:
            n = min(n, max_batches)
        for b in range(rank, n, world_size):
            stop = min((b + 1) * batch_size, len(self.eval))
            yield self.collator([self.eval[i] for i in range(b * batch_size, stop)])


def build_data(
    cfg: DataConfig, tokenizer, *, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1
) -> DataBundle:
    """Load, hold out, tokenize and batch the data of a recipe's `data` section."""
    import datasets

    from .cache import cached_encode

    records = load_records(cfg, rank=rank, world_size=world_size)
    collator = make_collator(tokenizer)
    eval_set = datasets.Dataset.from_list(records.eval) if records.eval else None
    reused = []
    eval_ds = []
    if eval_set is not None:
        eval_ds, hit = cached_encode(eval_set, cfg, tokenizer, encode_dataset)
        reused += [hit] if hit else []
    if cfg.streaming:
        train = StreamLoader(
            records.train,
            example_encoder(cfg, tokenizer),
            collator,
            batch_size,
            pack_len=cfg.seq_len if cfg.mode == "pretrain" else None,
        )
    else:
        encoded, hit = cached_encode(records.train, cfg, tokenizer, encode_dataset)
        reused += [hit] if hit else []
        train = ResumableLoader(encoded, collator, batch_size, seed=seed, rank=rank, world_size=world_size)
    if reused and rank == 0:
        from ..console import write

        write(
            f"data: reused the tokenized {cfg.source} from {reused[-1].parent}/ (same records, data settings, "
            "tokenizer and encoding code)"
        )
    return DataBundle(train=train, eval=eval_ds, collator=collator)
