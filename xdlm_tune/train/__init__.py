"""Training: a recipe in, a trained XDLM denoiser (adapter or model) and its checkpoints out.

    xdlm-tune train RECIPE [section.key=value ...] [--resume] [--dry-run]
    accelerate launch --config_file deepspeed_configs/... -m xdlm_tune.train RECIPE [...]
    python -c "from xdlm_tune.train import train; from xdlm_tune.config import load_recipe; train(load_recipe(path))"

Importing this package is cheap (torch and transformers load only when a run starts), so a
bad recipe is refused at once.
"""

from __future__ import annotations

from .entry import add_arguments, main, run


def train(recipe):
    """Run a resolved Recipe (see loop.train)."""
    from .loop import train as _train

    return _train(recipe)


__all__ = ["add_arguments", "main", "run", "train"]
