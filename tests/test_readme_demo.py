"""The docs' "real output of `make demo`" block (docs/demo.md) must be what the demo prints, and
the README's shortened copy must be taken from it.

The demo writes its console output to runs/demo/demo.log; benchmarks/results/demo_cpu.log is the
committed copy of the run the README block was pasted from. The comparison logic itself is checked
on fixtures: it must fail on any drift and pass on rounding and wall-clock differences only.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_readme_demo", REPO / "benchmarks" / "check_readme_demo.py")
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

LOG = """\
[xdlm-tune run] 1/4 training smollm2-135m with k=0.1 for 30 steps -> runs/demo
step 15: held-out NELBO 6.0715 nats/token (8.7593 bits/token, perplexity <= 433.45) over 2048 tokens
train:  50%|█████     | 15/30 [01:20<01:20,  5.37s/step, loss=6.1000, lr=4.00e-04, tok_s=100]
step 30: held-out NELBO 5.6241 nats/token (8.1139 bits/token, perplexity <= 277.19) over 2048 tokens
done: step 30, 111 tokens/s; held-out NELBO 7.5167 -> 5.6241 nats/token; last checkpoint runs/demo/checkpoint-00000030
train: 100%|██████████| 30/30 [02:41<00:00,  5.37s/step, loss=5.7391, lr=2.45e-05, tok_s=111]
| base (AR) | AR | 2 | 0.0% | 100.0% | 0 | 1 | 1 | 0 |
def fibonacci(n):
_def__tuple__tuple__
[xdlm-tune run] done in 306 s. Where everything went:
"""


def readme_with(block: str) -> str:
    return f"# x\n\n{check.MARKER} on a CPU:\n\n```\n{block}```\n\nRead it honestly.\n"


def test_readme_block_matches_the_committed_demo_log():
    readme = check.README.read_text()
    assert check.COMMITTED_LOG.is_file(), (
        f"{check.COMMITTED_LOG} is missing: run `make demo`, then `python benchmarks/check_readme_demo.py "
        "runs/demo/demo.log --update && cp runs/demo/demo.log benchmarks/results/demo_cpu.log`"
    )
    log = check.COMMITTED_LOG.read_text()
    assert check.drift(readme, log) == [], "\n".join(check.drift(readme, log))
    front = check.FRONT.read_text()
    assert check.excerpt_drift(front, log) == [], check.excerpt_drift(front, log)


def front_with(block: str) -> str:
    return f"# x\n\n{check.EXCERPT_MARKER} on a CPU:\n\n```\n{block}```\n"


def test_the_shortened_copy_must_be_lines_of_the_log_in_order():
    lines = check.readme_lines(LOG).splitlines()
    first, last = lines[0], lines[-1]
    table = next(line for line in lines if line.startswith("| base (AR)"))
    assert check.excerpt_drift(front_with(f"{first}\n{table}\n{last}\n"), LOG) == []
    assert check.excerpt_drift(front_with(f"{first}\n{table.replace('0.0%', '50.0%')}\n"), LOG) != []  # drift
    assert check.excerpt_drift(front_with(f"{table}\n{first}\n"), LOG) != []  # out of order
    assert check.excerpt_drift(front_with("\n"), LOG) != []  # empty


def test_the_block_written_from_a_log_passes_and_is_what_a_terminal_showed():
    block = check.readme_lines(LOG)
    assert "15/30" not in block and "train: 100%|██████████| 30/30 [02:41<00:00" in block  # bars: last state only
    assert check.drift(readme_with(block), LOG) == []


def test_rounded_numbers_and_other_timings_pass():
    block = check.readme_lines(LOG).replace("6.0715", "6.07").replace("5.6241 nats/token (8", "5.62 nats/token (8")
    slower = (
        LOG.replace("done in 306 s", "done in 512 s")
        .replace("111 tokens/s", "64 tokens/s")
        .replace("[02:41<00:00,  5.37s/step", "[04:10<00:00,  8.33s/step")
        .replace("tok_s=111", "tok_s=64")
    )
    assert check.drift(readme_with(block), slower) == []
    fast = slower.replace("8.33s/step", "1.20step/s")
    assert check.drift(readme_with(block), fast) == []


@pytest.mark.parametrize(
    "change",
    [
        ("6.0715", "6.2767"),  # another held-out NELBO (the case)
        ("5.6241 nats/token (8", "5.6289 nats/token (8"),  # a change beyond the README's rounding
        ("_def__tuple__tuple__", "_def__tuple__"),  # another sample
        ("loss=5.7391", "loss=5.7392"),  # the final bar's loss
        ("| 0 | 1 | 1 | 0 |", "| 0 | 0 | 2 | 0 |"),  # another outcome breakdown
        ("def fibonacci(n):\n", ""),  # a line missing
        ("runs/demo\n", "runs/demo\nxdlm-tune train: a new banner line\n"),  # a line added
    ],
)
def test_any_drift_fails(change, tmp_path, capsys):
    block = check.readme_lines(LOG).replace("6.0715", "6.07")  # rounded in the README
    drifted = LOG.replace(*change)
    assert drifted != LOG
    assert check.drift(readme_with(block), drifted) != []
    readme, log = tmp_path / "README.md", tmp_path / "demo.log"
    readme.write_text(readme_with(block))
    log.write_text(drifted)
    front = ["--front", str(tmp_path / "no-front.md")]  # the shortened copy is tested above
    assert check.main([str(log), "--readme", str(readme), *front]) == 1
    assert "drifted" in capsys.readouterr().out
    assert check.main([str(log), "--readme", str(readme), "--update"]) == 0  # the fix it suggests works
    assert check.main([str(log), "--readme", str(readme), *front]) == 0
    assert readme.read_text().endswith("```\n\nRead it honestly.\n")


def test_more_digits_in_the_readme_than_the_log_is_drift():
    block = check.readme_lines(LOG).replace("6.0715", "6.07150")
    assert check.drift(readme_with(block), LOG) != []


def test_the_demo_log_is_what_the_terminal_shows(tmp_path, monkeypatch):
    """console.tee (how the demo writes runs/demo/demo.log) keeps a bar's final state, not its redraws."""
    from xdlm_tune import console

    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    with console.tee(tmp_path / "demo.log") as path:
        sys.stderr.write("\rtrain:  50%|#####     | 1/2\r                  \r")
        sys.stdout.write("step 1: saved\n")
        sys.stderr.write("\rtrain: 100%|##########| 2/2\n")
        print("done")
    assert path.read_text() == "step 1: saved\ntrain: 100%|##########| 2/2\ndone\n"
    assert "\r" in err.getvalue() and out.getvalue() == "step 1: saved\ndone\n"  # the console got it all
