"""A model that is not there fails in seconds, in one paragraph naming it and the closest known
name, whether the Hub is forbidden (HF_HUB_OFFLINE) or unreachable (a closed local port: the same
with or without a real network)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import constants

from xdlm_tune.cli import main
from xdlm_tune.errors import explain
from xdlm_tune.model.availability import ModelNotFound, check_model_available, closest_name


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["offline", "unreachable"])
def no_hub(request, monkeypatch, tmp_path):
    """An empty Hugging Face cache and no Hub: HF_HUB_OFFLINE=1, or online with the endpoint a closed port."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    offline = request.param == "offline"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    return request.param


def test_closest_name():
    assert closest_name("smollm2-135") == "smollm2-135m"
    assert closest_name("SmolLM2-135m") == "smollm2-135m"
    assert closest_name("GSAI-ML/LLaDA-8B-Bse") == "GSAI-ML/LLaDA-8B-Base"
    assert closest_name("Meta-Llama-3-8B") == "meta-llama/Meta-Llama-3-8B"  # the owner left out
    assert closest_name("completely-different") is None


def test_missing_model_is_refused_at_once(no_hub, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFound) as info:
        check_model_available("smollm2-135")
    assert time.perf_counter() - t0 < 5  # one refused connection at most, no retries
    msg = str(info.value)
    assert msg.startswith("model 'smollm2-135' ") and "Did you mean 'smollm2-135m'?" in msg
    assert ("HF_HUB_OFFLINE=1 forbids" in msg) == (no_hub == "offline")
    assert ("cannot be reached" in msg) == (no_hub == "unreachable")
    (tmp_path / "hub" / "models--someone--cached").mkdir(parents=True)
    check_model_available("someone/cached")  # in the cache: left to transformers, no request
    check_model_available(str(tmp_path))  # a local folder


def test_cli_missing_model_is_one_paragraph_in_seconds(no_hub, capfd, tmp_path):
    """The issue's case: `xdlm-tune eval --model smollm2-135` without the Hub took 75-99 s of
    retries, each retry line printed twice, then advice about benchmarks."""
    t0 = time.perf_counter()
    rc = main(["eval", "--model", "smollm2-135", "--limit", "1", "--out", str(tmp_path / "ev")])
    elapsed = time.perf_counter() - t0
    err = capfd.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[1] == "(run again with --debug for the full traceback)", err
    assert lines[0].startswith("xdlm-tune eval: model 'smollm2-135' ") and "Did you mean 'smollm2-135m'?" in lines[0]
    assert "--data" not in err and "Retry" not in err
    assert elapsed < 20  # the retries alone sleep 23 s per file; this is imports and one refused connection


def test_hub_warnings_print_once():
    """huggingface_hub's own handler plus the root one printed every retry line twice (a fresh
    process: under pytest the library's handler holds the stream of collection time)."""
    code = (
        "import logging\n"
        "from xdlm_tune.console import setup_logging\n"
        "setup_logging(logging.INFO, '%(message)s')\n"
        "logging.getLogger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("Retrying in 1s") == 1, proc.stderr


def test_model_files_unreachable_gives_model_advice_only():
    """transformers' wording for a model's files: no benchmark advice in front of the model's."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        try:
            raise LocalEntryNotFoundError("cannot find the requested files in the disk cache")
        except LocalEntryNotFoundError as cause:
            raise OSError(
                "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the "
                "cached files. Check your connection: https://huggingface.co/someone/some-model/resolve/main/config.json"
            ) from cause
    except OSError as err:
        msg = explain(err)
    assert msg.startswith("cannot download the model 'someone/some-model' from the Hugging Face Hub")
    assert "--data" not in msg and "benchmark" not in msg.lower() and "A model:" in msg
