"""The command line for a new user: one-paragraph errors (a test per kind of expected failure),
--debug for the traceback, every subcommand's help, eval's closing message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from huggingface_hub.errors import GatedRepoError
from tiny_models import save_tiny_model

from xdlm_tune.cli import main
from xdlm_tune.errors import cli_main, explain

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes" / "smollm2-135m-xdlm-lora.yaml")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse: --help and usage errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_one_paragraph(err: str, prog: str, *needles: str) -> None:
    assert "Traceback" not in err, err
    assert err.startswith(f"{prog}: ") and err.rstrip().endswith("(run again with --debug for the full traceback)"), err
    for needle in needles:
        assert needle in err, (needle, err)


# --------------------------------------------------------------------------- expected failures


def test_no_hub_access_names_the_local_copies_and_debug_shows_the_traceback(tmp_path):
    """The issue's case, for real: `xdlm-tune eval --data hub` (the Hub's current revision) on a machine
    without the Hub. (Without --data the shipped copy is used: tests/test_clean_clone.py.)"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "xdlm_tune.cli",
        "eval",
        "--data",
        "hub",
        "--limit",
        "1",
        "--out",
        str(tmp_path / "ev"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    assert_one_paragraph(
        proc.stderr,
        "xdlm-tune eval",
        "'google-research-datasets/mbpp'",
        "Hugging Face Hub",
        "--data PATH",
        "HF_HUB_OFFLINE",
        "ship with xdlm-tune",
    )
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConnectionError" in debug.stderr


def _gated_error() -> OSError:
    """What transformers raises for a gated repo: an OSError from huggingface_hub's GatedRepoError."""
    url = "https://huggingface.co/meta-llama/Llama-3.1-8B/resolve/main/config.json"
    response = httpx2.Response(401, request=httpx2.Request("GET", url))
    try:
        try:
            raise GatedRepoError(f"401 Client Error. Cannot access gated repo for url {url}.", response=response)
        except GatedRepoError as cause:
            raise OSError(
                "You are trying to access a gated repo.\nMake sure to have access to it at "
                "https://huggingface.co/meta-llama/Llama-3.1-8B.\n401 Client Error."
            ) from cause
    except OSError as err:
        return err


def test_gated_model_says_accept_and_log_in(capsys, monkeypatch, benchmark_data, tmp_path):
    import xdlm_tune.evaluation.entry as eval_run

    def gated(*args, **kwargs):  # what loading a gated Hub model raises (no Hub here)
        raise _gated_error()

    monkeypatch.setattr(eval_run, "load_diffusion_model", gated)
    rc, _, err = run_cli(
        capsys,
        "eval",
        "--data",
        str(benchmark_data / "mbpp.jsonl"),
        "--limit",
        "1",
        "--model",
        "meta-llama/Llama-3.1-8B",
        "--out",
        str(tmp_path),
    )
    assert rc == 2
    assert_one_paragraph(
        err,
        "xdlm-tune eval",
        "meta-llama/Llama-3.1-8B is a gated model",
        "https://huggingface.co/meta-llama/Llama-3.1-8B",
        "huggingface-cli login",
        "HF_TOKEN",
    )


def test_missing_files(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "eval", "--data", str(tmp_path / "nope.jsonl"))
    assert rc == 2
    assert_one_paragraph(err, "xdlm-tune eval", f"benchmark data {tmp_path / 'nope.jsonl'} not found", "check the path")
    rc, _, err = run_cli(capsys, "run", str(tmp_path / "nope.yaml"))
    assert rc == 2
    assert_one_paragraph(err, "xdlm-tune run", f"recipe file not found: {tmp_path / 'nope.yaml'}")
    rc, _, err = run_cli(capsys, "export", str(tmp_path / "no-run"), "--out", str(tmp_path / "x"))
    assert rc == 2 and "Traceback" not in err and "is not a folder" in err


def test_missing_optional_extra_names_the_pip_command(capsys, monkeypatch, tmp_path):
    from xdlm_tune.evaluation.metrics import Summary, plot_summary

    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # as if matplotlib were absent
    rows = [Summary("m", 8, 2, 0.5, 1.0)]
    rc = cli_main("xdlm-tune eval", lambda argv: plot_summary(rows, tmp_path / "p.png") and 0, [])
    assert rc == 2
    assert_one_paragraph(capsys.readouterr().err, "xdlm-tune eval", "'matplotlib'", "pip install 'xdlm-tune[eval]'")


def test_bad_cli_values(capsys):
    rc, _, err = run_cli(capsys, "eval", "--steps", "0")
    assert rc == 2 and "xdlm-tune eval: error: --steps must be positive integers, got [0]" in err
    rc, _, err = run_cli(capsys, "eval", "--steps", "abc")
    assert rc == 2 and "invalid int value: 'abc'" in err and "Traceback" not in err
    rc, _, err = run_cli(capsys, "eval", "--gen-length", "48", "--block-length", "20")
    assert rc == 2 and "--block-length (20) must divide --gen-length (48)" in err
    rc, _, err = run_cli(capsys, "run", RECIPE, "training.max_steps=abc")
    assert rc == 2
    assert_one_paragraph(
        err,
        "xdlm-tune run",
        "training.max_steps: expected an integer, got 'abc'",
        "command-line override 'training.max_steps=abc'",
    )
    assert "recipes/smollm2" not in err


def test_a_bug_keeps_its_traceback():
    def broken(argv):
        raise KeyError("a bug, not a user error")

    assert explain(KeyError("x")) is None
    with pytest.raises(KeyError):
        cli_main("xdlm-tune", broken, [])


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "command, needles",
    [
        (
            "train",
            [
                "Train an XDLM denoiser",
                "a YAML recipe",
                "section.key=value",
                "value read as YAML",
                "example:\n  xdlm-tune train recipes/",
            ],
        ),
        (
            "run",
            [
                "The whole pipeline for one recipe",
                "a YAML recipe",
                "section.key=value",
                "value",
                "example:\n  xdlm-tune run recipes/",
            ],
        ),
        (
            "demo",
            ["recipes/smollm2-135m-xdlm-lora.yaml", "runs/demo/demo.log", "--core", "examples:\n  xdlm-tune demo"],
        ),
        ("eval", ["Score a model on MBPP or HumanEval", "--data", "--steps", "examples:\n  xdlm-tune eval --limit"]),
        ("export", ["Merge a run's adapters", "--push-to-hub", "examples:\n  xdlm-tune export runs/"]),
    ],
)
def test_every_subcommand_help_says_what_it_does_its_arguments_and_an_example(capsys, command, needles):
    rc, out, _ = run_cli(capsys, command, "--help")
    assert rc == 0
    for needle in needles:
        assert needle in out, (needle, out)


def test_top_level_help_lists_commands_and_examples(capsys):
    rc, out, _ = run_cli(capsys, "--help")
    assert rc == 0
    for command in ("train", "eval", "export", "run", "demo"):
        assert f"\n  {command} " in out
    assert "examples:\n  xdlm-tune demo" in out and "--debug" in out


# --------------------------------------------------------------------------- eval's closing message


def test_eval_closing_message_names_the_real_sample_files(capsys, benchmark_data, tmp_path):
    model = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "ev"
    rc, stdout, _ = run_cli(
        capsys,
        "eval",
        "--data",
        str(benchmark_data / "mbpp.jsonl"),
        "--limit",
        "1",
        "--model",
        str(model),
        "--steps",
        "1",
        "--gen-length",
        "2",
        "--out",
        str(out),
    )
    assert rc == 0
    assert (
        f"[eval] samples: {out / 'samples.jsonl'}; table: {out / 'summary.md'}; plot: {out / 'pass_at_1.png'}" in stdout
    )
    assert "*" not in stdout.splitlines()[-1]


def test_a_bad_flag_value_is_one_line_without_the_usage_block(capsys):
    rc, out, err = run_cli(capsys, "eval", "--steps", "0")
    assert rc == 2 and "usage:" not in err
    assert (
        err.strip() == "xdlm-tune eval: error: --steps must be positive integers, got [0] (see `xdlm-tune eval --help`)"
    )


def test_eval_help_lists_genppl_among_the_benchmarks(capsys):
    rc, out, _ = run_cli(capsys, "eval", "--help")
    assert rc == 0 and "{mbpp,humaneval,genppl}" in out
