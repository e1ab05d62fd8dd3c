"""Golden values: a fixed tiny run's loss and held-out NELBO equal checked-in numbers (torchtune's
expected-loss tests). The other training tests compare two runs with each other; this one notices a
change that moves every run alike (noise keying, data order, the schedule, the loss weighting).
Regenerate, when a change is meant to move them: python tests/golden.py --write (see golden.py)."""

from __future__ import annotations

import json

import pytest
from golden import GOLDEN, RTOL, golden_run, mismatches


@pytest.fixture(scope="module")
def pinned() -> dict:
    return json.loads(GOLDEN.read_text())


def test_fixed_run_matches_the_golden_values(pinned, tmp_path):
    bad = mismatches(golden_run(tmp_path), pinned)
    assert not bad, (
        "the fixed tiny run moved; if that is intended, run `python tests/golden.py --write` and say "
        "why in the commit:\n  " + "\n  ".join(bad)
    )


def test_the_pins_are_tight_enough_to_notice_a_shifted_run(pinned, tmp_path):
    assert len(pinned["loss"]) == 4 and len(pinned["heldout_nelbo"]) == 3  # steps 1-4; ELBO at 0, 2, 4
    moved = golden_run(tmp_path, ("diffusion.eps=2e-3",))  # a small shift of the schedule's end point
    assert len(mismatches(moved, pinned)) == 7
    nudged = {
        m: {s: v * (1 + 3 * RTOL) for s, v in vals.items()} for m, vals in pinned.items() if m != "generated_with"
    }
    assert len(mismatches(nudged, pinned)) == 7 and not mismatches(pinned, pinned)
