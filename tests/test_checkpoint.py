"""Checkpoints: atomic save, keep-last-N, killed saves, exact resume, recipe compatibility."""

from __future__ import annotations

import json
import math
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoint_writer import load_torch_state, save_checkpoint

from xdlm_tune.checkpoints import protocol as ck
from xdlm_tune.checkpoints.protocol import CheckpointError, latest_checkpoint, list_checkpoints, recover, resolve_resume
from xdlm_tune.config import load_recipe
from xdlm_tune.data import Collator, ResumableLoader
from xdlm_tune.train.state import TrainState, check_resume_compatible, read_state, write_state


def weights_writer(payload: str):
    def write(d: Path) -> None:
        (d / "weights.txt").write_text(payload)

    return write


def save(out, step, keep_last=3, **kw):
    return save_checkpoint(
        out,
        step,
        keep_last=keep_last,
        state=TrainState(step=step, data={"batch": step}),
        write=weights_writer(f"w{step}"),
        **kw,
    )


def steps(out):
    return [s for s, _ in list_checkpoints(out)]


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def in_child(fn) -> None:
    """Run fn in a forked child that is SIGKILLed (by fn) part-way; wait for it."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            fn()
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def die(*_args, **_kw):
    os.kill(os.getpid(), signal.SIGKILL)


def test_save_list_keep_last(tmp_path):
    out = tmp_path / "run"
    for s in (10, 20, 30, 40):
        path = save(out, s, keep_last=2)
    assert steps(out) == [30, 40] and latest_checkpoint(out) == path
    assert path.name == "checkpoint-00000040" and (path / "weights.txt").read_text() == "w40"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-00000030", "checkpoint-00000040"]  # no leftovers
    assert json.loads((path / ck.STATE_FILE).read_text())["step"] == 40


def test_resaving_a_step_replaces_it(tmp_path):
    save(tmp_path, 10)
    save_checkpoint(tmp_path, 10, keep_last=3, state=TrainState(step=10), write=weights_writer("new"))
    assert steps(tmp_path) == [10] and (tmp_path / "checkpoint-00000010" / "weights.txt").read_text() == "new"


def test_the_checkpoint_just_written_is_never_pruned(tmp_path):
    save(tmp_path, 40)
    save(tmp_path, 20, keep_last=1)  # resumed from an older checkpoint: 40 is newer on disk
    assert steps(tmp_path) == [20]


@needs_fork
def test_killed_while_writing_loses_nothing(tmp_path):
    save(tmp_path, 10)

    def killed_save():
        def write(d):
            (d / "weights.txt").write_text("partial")
            die()

        save_checkpoint(tmp_path, 20, keep_last=1, state=TrainState(step=20), write=write)

    in_child(killed_save)
    assert steps(tmp_path) == [10] and latest_checkpoint(tmp_path).name == "checkpoint-00000010"
    assert (tmp_path / "checkpoint-00000010" / "weights.txt").read_text() == "w10"
    save(tmp_path, 20, keep_last=1)  # the next save cleans the leftover temp dir
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000020"]


@needs_fork
def test_killed_while_pruning_or_swapping(tmp_path, monkeypatch):
    save(tmp_path, 10)
    save(tmp_path, 20)
    monkeypatch.setattr(ck.shutil, "rmtree", die)
    in_child(lambda: save(tmp_path, 30, keep_last=1))  # dies deleting checkpoint 10, renamed away first
    assert steps(tmp_path) == [20, 30]  # never a half-deleted "checkpoint"
    monkeypatch.undo()
    recover(tmp_path)
    assert steps(tmp_path) == [20, 30] and all(p.name.startswith("checkpoint-") for p in tmp_path.iterdir())

    monkeypatch.setattr(ck.shutil, "rmtree", die)
    in_child(
        lambda: save_checkpoint(tmp_path, 30, keep_last=3, state=TrainState(step=30), write=weights_writer("again"))
    )  # dies after a same-step swap
    monkeypatch.undo()
    recover(tmp_path)
    assert steps(tmp_path) == [20, 30] and all(p.name.startswith("checkpoint-") for p in tmp_path.iterdir())
    assert (tmp_path / "checkpoint-00000030" / "weights.txt").read_text() == "again"


def test_recover_restores_a_checkpoint_caught_between_swap_renames(tmp_path):
    path = save(tmp_path, 10)
    os.rename(path, tmp_path / ".replaced-checkpoint-00000010")  # as if killed right after the first rename
    assert steps(tmp_path) == []
    recover(tmp_path)
    assert steps(tmp_path) == [10]


def test_resolve_resume(tmp_path):
    assert resolve_resume(tmp_path, False) is None
    assert resolve_resume(tmp_path, True) is None  # nothing saved yet: a fresh start
    p = save(tmp_path, 5)
    assert resolve_resume(tmp_path, "latest") == p and resolve_resume(tmp_path, str(p)) == p
    with pytest.raises(CheckpointError, match="not a complete checkpoint.*checkpoint-00000005"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-00000099"))


def test_world_size_and_rank_files(tmp_path):
    tmp = ck.begin_save(tmp_path, 7)
    for rank in (0, 1):  # what two processes write
        write_state(tmp, TrainState(step=7, world_size=2, data={"rank": rank}), rank=rank, is_main=rank == 0)
    path = ck.commit_save(tmp, tmp_path, 7, keep_last=1)
    assert read_state(path, rank=1, world_size=2).data == {"rank": 1}
    with pytest.raises(CheckpointError, match="written by 2 processes and this run has 1"):
        read_state(path, world_size=1)


def test_recipe_compatibility(tmp_path):
    recipe = load_recipe(None, ["training.output_dir=runs/a"])
    path = save(tmp_path, 1, recipe=recipe)
    # run length, logging, saving, evaluation may change
    check_resume_compatible(
        path,
        load_recipe(
            None, ["training.max_steps=999", "training.output_dir=runs/b", "eval.limit=3", "training.keep_last=5"]
        ),
    )
    with pytest.raises(CheckpointError) as e:
        check_resume_compatible(
            path,
            load_recipe(
                None,
                [
                    "diffusion.k=0.5",
                    "data.seq_len=128",
                    "training.per_device_batch_size=8",
                    "model.name_or_path=other/model",
                ],
            ),
        )
    msg = str(e.value)
    for line in (
        "diffusion.k: 0.1 in the checkpoint, 0.5 now",
        "data.seq_len: 256 in the checkpoint, 128 now",
        "training.per_device_batch_size: 4 in the checkpoint, 8 now",
        "model.name_or_path",
    ):
        assert line in msg
    assert "training.max_steps" not in msg


# --------------------------------------------------------------------------- exact resume


class Run:
    """A tiny training loop with everything a real one restores: model, AdamW, a warmup +
    cosine schedule, the data order, and RNG used every step (noise and dropout)."""

    def __init__(self, seed=0):
        torch.manual_seed(seed), random.seed(seed), np.random.seed(seed)
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-2, weight_decay=0.1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / 3) * math.cos(s / 20))
        data = [{"input_ids": [i, i + 1, i + 2, i + 3], "prompt_len": 0} for i in range(21)]
        self.loader = ResumableLoader(data, Collator(pad_id=0), 4, seed=seed)
        self.it, self.step = None, 0

    def train(self, n):
        self.it = self.it or iter(self.loader)
        for _ in range(n):
            x = next(self.it)["input_ids"].float() / 20
            x = x + 0.01 * torch.randn_like(x) + random.random() * 1e-3 + float(np.random.rand()) * 1e-3
            loss = self.model(x).pow(2).mean()
            loss.backward()
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad()
            self.step += 1

    def save(self, out):
        state = TrainState(step=self.step, data=self.loader.state_dict())
        return save_checkpoint(
            out,
            self.step,
            keep_last=2,
            state=state,
            optimizer=self.opt,
            scheduler=self.sched,
            write=lambda d: torch.save(self.model.state_dict(), d / "model.pt"),
        )

    @classmethod
    def resume(cls, path):
        run = cls(seed=0)
        torch.manual_seed(1234)  # disturb every RNG: resume must restore them
        random.seed(1234)
        np.random.seed(1234)
        run.model.load_state_dict(torch.load(path / "model.pt", weights_only=True))
        load_torch_state(path, run.opt, run.sched)
        state = read_state(path, world_size=1)
        run.loader.load_state_dict(state.data)
        run.step = state.step
        return run


def test_rng_state_round_trip(tmp_path):
    tmp = ck.begin_save(tmp_path, 1)
    write_state(tmp, TrainState(step=1))
    path = ck.commit_save(tmp, tmp_path, 1, keep_last=1)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    read_state(path)  # restores the RNG states saved above
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_resumed_run_matches_uninterrupted_run(tmp_path):
    straight = Run()
    straight.train(12)  # crosses an epoch boundary (5 batches per epoch)
    rng_end = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())

    first = Run()
    first.train(7)
    path = first.save(tmp_path)
    resumed = Run.resume(path)
    resumed.train(5)

    assert resumed.step == 12
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.opt.state_dict()["state"].values(), resumed.opt.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert straight.sched.get_last_lr() == resumed.sched.get_last_lr()
    assert torch.equal(torch.get_rng_state(), rng_end[0]) and random.getstate() == rng_end[1]
    assert (np.random.get_state()[1] == rng_end[2]).all()
