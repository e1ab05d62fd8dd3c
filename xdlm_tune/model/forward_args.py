"""Call a model with only the keyword arguments its `forward` accepts.

transformers' own models take `**kwargs`; remote modeling code often does not (LLaDA's
original `forward` has no `position_ids`, no `logits_to_keep` and no `**kwargs`, so passing
either raises TypeError). Every call into a model that may be remote code (the sampler, the
denoiser's hidden states, evaluation) filters its arguments here. Standard library only: the
sampler's exported modeling file embeds this module.
"""

from __future__ import annotations

import inspect


def forward_owner(model):
    """The module whose `forward` finally runs: through PEFT (`get_base_model`) and DDP /
    DeepSpeed (`.module`) wrappers, which pass every keyword on."""
    while True:
        if callable(getattr(model, "get_base_model", None)):
            inner = model.get_base_model()
        else:
            inner = getattr(model, "module", None)
            if inner is not None and not callable(getattr(inner, "forward", None)):
                inner = None
        if inner is None or inner is model:
            return model
        model = inner


def _parameters(model) -> dict | None:
    """The named parameters of what calling `model` runs; None when any keyword is taken."""
    owner = forward_owner(model)
    try:  # a module's forward, else the callable itself (e.g. a wrapper defining __call__)
        params = inspect.signature(getattr(owner, "forward", owner)).parameters
    except (TypeError, ValueError):  # no signature to read: pass everything, as before
        return None
    return None if any(p.kind is p.VAR_KEYWORD for p in params.values()) else params


def accepts(model, name: str) -> bool:
    """Whether the model's forward takes the keyword argument `name` (any, with **kwargs)."""
    params = _parameters(model)
    return params is None or name in params


def accepted_kwargs(model, **kwargs) -> dict:
    """`kwargs` without those the model's forward does not take (all of them with **kwargs)."""
    params = _parameters(model)
    return kwargs if params is None else {k: v for k, v in kwargs.items() if k in params}
