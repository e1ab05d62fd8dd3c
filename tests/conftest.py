"""Shared test fixtures: the shipped benchmark data, markers, CPU determinism."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# Without CUDA, Triton kernels can only run in its interpreter, which must be chosen before triton
# is first imported (tests/test_fused_loss_triton.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def benchmark_data() -> Path:
    """The folder of benchmark files shipped as package data (mbpp.jsonl, sanitized-mbpp.json,
    HumanEval.jsonl.gz): the same files in every clone, checked by sha256."""
    from xdlm_tune.benchmark_data import DATA_DIR, SHIPPED, shipped_path

    for name in SHIPPED:
        shipped_path(name)
    return DATA_DIR


def pytest_report_header(config):
    """The sandbox's jail mode in the log's header: CI's log says which one its tests ran in."""
    from xdlm_tune.sandbox import jail

    mode = jail.mode()
    return f"sandbox jail: {mode}" + ("" if mode == "bwrap" else f" ({jail.HOW_TO_GET_BWRAP})")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot on a busy shared CPU
    (modules opt in: `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _log_handlers_on_live_streams():
    """Libraries (lm-eval) bind logging handlers to the sys.stderr of the moment they are imported,
    which under pytest is a capture stream closed after that test; point such handlers at today's
    stderr so a later test's log lines are not "--- Logging error ---" tracebacks."""
    import logging
    import sys

    for logger in [
        logging.getLogger(),
        *(l for l in logging.Logger.manager.loggerDict.values() if isinstance(l, logging.Logger)),
    ]:
        for h in logger.handlers:
            stream = getattr(h, "stream", None)
            if isinstance(h, logging.StreamHandler) and stream is not None and getattr(stream, "closed", False):
                h.stream = sys.stderr  # not setStream: it would flush the closed stream first
    yield
