"""What a run prints: progress bars that do not fight with log lines, and no noise that is not news.

* On a terminal, bars are tqdm's and every message goes through `tqdm.write`, which lifts the
  bar, prints the line and redraws the bar below it.
* In a log file (stderr is not a terminal) redrawing would leave a copy of the bar before every
  line, so `progress` gives a bar that prints a plain status line every `every` seconds and its
  final state once, at close, and only when it advanced; messages are plain prints. Third-party
  bars (weight loading, tokenising, shard writing) are turned off there: they are `\\r` noise.
* `quiet_known_noise` drops two messages that say nothing to a user of this toolkit (see there).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm
from tqdm.utils import _supports_unicode


def interactive() -> bool:
    """Whether progress is shown on a terminal (stderr is a TTY)."""
    return bool(getattr(sys.stderr, "isatty", None) and sys.stderr.isatty())


def write(text: str, file=None) -> None:
    """Print a line without breaking a progress bar (stdout unless `file`)."""
    if interactive():
        tqdm.write(text, file=file)
        return
    print(text, file=file or sys.stdout, flush=True)


class _Discard:
    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


class LogBar(tqdm):
    """tqdm for a log file: a full status line every `every` seconds, the final state once at
    close (if it advanced in this process), never carriage returns or redraws."""

    def __init__(self, *args, every: float = 30.0, **kwargs):
        self._stream = kwargs.pop("file", None) or sys.stderr
        kwargs.pop("dynamic_ncols", None)
        self._every, self._printed_at = every, None
        kwargs.setdefault("ascii", not _supports_unicode(self._stream))
        super().__init__(*args, file=_Discard(), **kwargs)
        self._start_n = self.n

    def display(self, msg=None, pos=None):  # tqdm's redraws go nowhere
        return True

    def _line(self) -> None:
        print(str(self), file=self._stream, flush=True)
        self._printed_at = time.time()

    def update(self, n=1):
        out = super().update(n)
        now = time.time()
        if (
            not self.disable
            and self.n < (self.total or float("inf"))
            and now - (self._printed_at or self.start_t) >= self._every
        ):
            sys.stdout.flush()
            self._line()
        return out

    def close(self) -> None:
        if not self.disable and self.n > self._start_n:
            self._ema_dt = lambda: None  # the overall rate, as tqdm shows at close
            sys.stdout.flush()
            self._line()
        super().close()


def progress(**kwargs) -> tqdm:
    """A progress bar (tqdm's arguments): tqdm on a terminal, a `LogBar` in a log file."""
    return tqdm(**kwargs) if interactive() else LogBar(**kwargs)


class _TqdmHandler(logging.StreamHandler):
    """Log records through `write`, so they do not break a bar on a terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write(self.format(record), file=sys.stderr)  # the current stderr: it may be a `tee`
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(
    level: int = logging.WARNING, fmt: str = "%(levelname)s %(name)s: %(message)s", datefmt: str | None = None
) -> None:
    """One tqdm-aware handler on the root logger; xdlm_tune at `level`, libraries at WARNING."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _TqdmHandler):
            root.removeHandler(h)
    handler = _TqdmHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt=datefmt))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("xdlm_tune").setLevel(level)
    _one_handler("huggingface_hub", "huggingface_hub.utils.logging")
    quiet_known_noise()


def _one_handler(library: str, adds_handler: str) -> None:
    """Drop the plain StreamHandler a library adds to its own logger at import (huggingface_hub
    does, and lets records propagate too): with the root handler above each warning, a Hub
    retry line for instance, printed twice."""
    import importlib

    importlib.import_module(adds_handler)  # the module that adds the handler at import: import it first
    logger = logging.getLogger(library)
    for h in list(logger.handlers):
        if type(h) is logging.StreamHandler and logger.propagate:
            logger.removeHandler(h)


class _Tee:
    """A stream that also writes to a log file, as a terminal would show it: of each line only
    what is left after its last carriage return (a bar's final state, not its redraws)."""

    def __init__(self, stream, log):
        self._stream, self._log, self._line = stream, log, ""

    def write(self, text: str) -> int:
        self._stream.write(text)
        *lines, self._line = (self._line + text).split("\n")
        for line in lines:
            shown = next((seg for seg in reversed(line.split("\r")) if seg.strip()), "")
            self._log.write(shown.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()
        self._log.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the real stream's
        return getattr(self._stream, name)


@contextlib.contextmanager
def tee(path: str | os.PathLike) -> Iterator[Path]:
    """Copy everything printed to stdout and stderr (this process) into the file at `path`."""

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as log:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        try:
            yield path
        finally:
            for s in (sys.stdout, sys.stderr):
                if s._line.strip():
                    s.write("\n")
                s.flush()
            sys.stdout, sys.stderr = out, err


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_known_noise() -> None:
    """Drop what is not news to a user of this toolkit:

    * bitsandbytes (the qlora extra, imported by peft whenever it is installed) logs at import that
      it could not fetch an optional CPU 4-bit kernel from the Hub; it falls back to its own code,
      and runs without `quantization: nf4` do not use it at all;
    * in a log file, the third-party progress bars (their `\\r` redraws are unreadable there).
    * DeepSpeed's "Setting accelerator to CPU ... we were unable to detect it" warning: transformers
      imports DeepSpeed in passing whenever it is installed (save_pretrained unwraps models through
      accelerate); on a machine without CUDA we name the accelerator (DS_ACCELERATOR=cpu), which is
      what DeepSpeed would pick anyway."""
    if "DS_ACCELERATOR" not in os.environ and _only_a_cpu():
        os.environ["DS_ACCELERATOR"] = "cpu"
    drop_library_notes()
    if not interactive():
        import datasets
        import transformers

        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()


def drop_library_notes() -> None:
    """The logging filters of `quiet_known_noise` alone: cheap (imports nothing), so the command line
    installs them before any module that imports peft (and so bitsandbytes) is loaded."""
    # bitsandbytes' note about an optional CPU kernel, and (kernels >= 0.19) the kernels package's own
    # "Skipping publisher trust check for 'kernels-community/...' ... offline mode" when it looks that kernel up
    for name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) for f in logger.filters):
            logger.addFilter(_DropMessage("kernels-community"))


# Packages through which DeepSpeed finds a non-CUDA accelerator (XPU, NPU, HPU, MLU, ...).
_OTHER_ACCELERATORS = (
    "intel_extension_for_pytorch",
    "torch_npu",
    "torch_sdaa",
    "habana_frameworks",
    "torch_mlu",
    "torch_supa",
    "torch_xmlir",
)


def _only_a_cpu() -> bool:
    import importlib.util

    import torch

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        return False
    return all(importlib.util.find_spec(name) is None for name in _OTHER_ACCELERATORS)


@contextlib.contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around PEFT's model wrappers: peft (0.21) reads transformers' deprecated
    `is_gradient_checkpointing` alias on every PeftModel it builds, a FutureWarning per wrap
    that names neither our code nor anything a user can change."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (`prog: error: ...; see prog --help`),
    not the whole usage block before it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped to the terminal; lines of examples (indented by two spaces) kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out, para = [], []
        for line in text.splitlines() + [""]:
            if line.strip() and not line.startswith("  "):
                para.append(line.strip())
                continue
            if para:  # a paragraph ends: wrap it
                out.append(super()._fill_text(" ".join(para), width, indent))
                para = []
            if line.strip() or out:
                out.append(indent + line)
        return "\n".join(out).rstrip()
