"""Metrics: one JSON object per line in <output_dir>/metrics.jsonl, the same scalars in
TensorBoard (<output_dir>/tensorboard, when tensorboard is installed), and the progress bar.

Keys are "train/..." and "eval/..." plus "step". A resumed run first drops the lines past its
checkpoint's step, so the file always reads as one run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .. import console

METRICS_FILE = "metrics.jsonl"


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsWriter:
    """Writes on the main process only (pass enabled=False elsewhere)."""

    def __init__(self, output_dir: str | Path, *, enabled: bool, start_step: int = 0):
        self.enabled = enabled
        self.path = Path(output_dir) / METRICS_FILE
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [m for m in read_metrics(output_dir) if m.get("step", 0) <= start_step] if start_step else []
        self.path.write_text("".join(json.dumps(m) + "\n" for m in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dev extra
            return
        self.tb = SummaryWriter(
            str(Path(output_dir) / "tensorboard"), purge_step=start_step + 1 if start_step else None
        )

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key, value, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Progress:
    """A bar over optimizer steps (it shows the ETA) with loss and tokens/s; lines printed with
    `write` do not break it. The bar starts with the first step of this invocation, so a run
    resumed at its last step prints no bar (see xdlm_tune.console for log files)."""

    def __init__(self, *, total: int, start: int, enabled: bool):
        self.total, self.start, self.enabled = total, start, enabled
        self.bar = None
        self.tokens, self.seconds = 0, 0.0

    def _bar(self):
        if self.bar is None:
            self.bar = console.progress(
                total=self.total,
                initial=self.start,
                disable=not self.enabled,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                mininterval=1.0,
            )
        return self.bar

    def update(self, *, loss: float, tokens: int, lr: float, seconds: float) -> float:
        """Advance one step of `tokens` (all processes) that took `seconds`; returns the training
        throughput in tokens/s over this invocation's steps (held-out ELBO and saves excluded).
        `loss`: the loop passes metrics.jsonl's train/loss (the mean since the last logged step)."""
        self.tokens += tokens
        self.seconds += seconds
        rate = self.tokens / max(self.seconds, 1e-9)
        bar = self._bar()
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}", refresh=False)
        bar.update(1)
        return rate

    def write(self, text: str) -> None:
        if self.enabled:
            console.write(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
