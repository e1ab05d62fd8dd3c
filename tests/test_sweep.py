"""`xdlm-tune sweep` on a tiny stand-in: one run per k, the files and their fields, resume."""

from __future__ import annotations

import json
import shutil

import pytest
from test_train import make_tiny

from xdlm_tune.checkpoints.protocol import list_checkpoints
from xdlm_tune.cli import main
from xdlm_tune.train.metrics import read_metrics

ARGS = [
    "--k",
    "0",
    "1",
    "--steps",
    "2",
    "4",
    "--num-samples",
    "3",
    "--gen-length",
    "4",
    "--code",
    "training.max_steps=4",
    "training.save_every=2",
    "training.eval_every=4",
    "training.keep_last=2",
]


def test_sweep_files_fields_and_resume(tmp_path, capsys):
    tiny = make_tiny(tmp_path / "w")
    out = tmp_path / "sweep"
    assert main(["sweep", str(tiny), "--out", str(out), *ARGS]) == 0
    result = json.loads((out / "sweep.json").read_text())
    rows = result["rows"]
    assert [(r["k"], r["steps"]) for r in rows] == [(0, 2), (0, 4), (1, 2), (1, 4)]
    for r in rows:
        assert set(r) >= {"k", "steps", "heldout_nelbo", "gen_ppl", "entropy", "syntax_valid"}
        assert r["gen_ppl"] > 1 and 0 <= r["syntax_valid"] <= 1 and r["n"] == 3
    # the x-axis is each run's own held-out NELBO at its last step
    for k in (0, 1):
        evals = {m["step"]: m["eval/nelbo"] for m in read_metrics(out / f"k={k}") if "eval/nelbo" in m}
        assert sorted(evals) == [0, 4] and all(r["heldout_nelbo"] == evals[4] for r in rows if r["k"] == k)
    labels = [r["label"] for r in result["reference"]]
    assert labels[:2] == ["model AR greedy", "model AR sampled"] and labels[2:] == ["untrained", "untrained"]
    assert "| 1 | 4 |" in (out / "sweep.md").read_text() and (out / "pareto.png").stat().st_size > 0
    assert all(len(r["gen_ppl_ci"]) == 2 and len(r["syntax_valid_ci"]) == 2 for r in rows)
    # k = 1 against k = 0 at each budget, paired on the same prompts by compare's code
    pairs = result["comparisons"]
    assert [(c["k"], c["steps"], c["n"]) for c in pairs] == [(1, 2, 3), (1, 4, 3)]
    assert all(
        c["allowed_differences"] == {"k": "A 0.0, B 1.0"} and c["metrics"]["gen-PPL"]["ratio"] > 0 for c in pairs
    )
    assert "| k vs 0 | steps | n | gen-PPL ratio k / 0 |" in (out / "sweep.md").read_text()
    assert "3 samples of 4 tokens (unconditional)" in (out / "sweep.md").read_text()
    first = capsys.readouterr().out
    assert "k=0: training 4 steps" in first and "k=1: training 4 steps" in first

    # Interrupted during k=1 (after its step-2 checkpoint, before sampling): k=0 is reused as it
    # is, k=1 resumes from step 2; the finished sweep's numbers for k=0 do not move.
    shutil.rmtree(out / "k=1" / "checkpoint-00000004")
    (out / "k=1" / "sweep_gen.json").unlink()
    (out / "sweep.json").unlink()
    assert main(["sweep", str(tiny), "--out", str(out), *ARGS]) == 0
    again = capsys.readouterr().out
    assert "k=0: finished run reused" in again and "k=1: training 4 steps" in again
    assert "resuming from" in again and [s for s, _ in list_checkpoints(out / "k=1")] == [2, 4]
    rows2 = json.loads((out / "sweep.json").read_text())["rows"]
    assert rows2[:2] == rows[:2] and len(rows2) == 4

    # eval --benchmark genppl on one of the runs: the judge defaults to the recipe's base model
    gp = tmp_path / "gp"
    assert (
        main(
            [
                "eval",
                "--benchmark",
                "genppl",
                "--checkpoint",
                str(out / "k=1"),
                "--steps",
                "4",
                "--gen-length",
                "4",
                "--num-samples",
                "2",
                "--sampler",
                "ancestral",
                "--code",
                "--out",
                str(gp),
            ]
        )
        == 0
    )
    gen = json.loads((gp / "genppl.json").read_text())
    assert [(r["label"], r["steps"]) for r in gen] == [
        ("model AR greedy", None),
        ("model AR sampled", None),
        ("k=1 step 4", 4),  # the default label names the run and the checkpoint step it used
    ]
    assert all(r["syntax_valid"] is not None for r in gen)


def test_sweep_refuses_bad_arguments(tmp_path):
    with pytest.raises(SystemExit, match="every k must be in"):
        main(["sweep", "recipe.yaml", "--k", "0", "2"])
    with pytest.raises(SystemExit, match="--steps \\[9\\]"):
        main(["sweep", "recipe.yaml", "--k", "0", "--steps", "9", "--gen-length", "8"])
