"""A KV cache for the diffusion samplers: the keys and values of the positions outside the active
block, taken from one full pass and reused by the block's later steps.

``BlockCache`` works on transformers-native models (Llama, Qwen2/3, Mistral, and the native
LLaDA / Dream paths) with bidirectional attention (``config.is_causal = False``), through
transformers' own ``DynamicCache``:

* a full pass (a block's first step, or a refresh) runs the whole sequence with an empty
  ``DynamicCache``; ``keep`` then holds, per layer, the keys/values of the positions before the
  block (``prefix``) and, for ``dual``, also of those after it (still masked);
* a cached step runs only the block (with ``shift`` also the position before it, whose output
  predicts the block's first token) against a fresh ``DynamicCache`` made of those keys/values;
  the block's own new keys/values are appended to it by the model's layers.

The cache layout is [kept positions..., block...], not sequence order. That is exact for
full (non-windowed) bidirectional attention: keys carry their rotary positions from the pass that
made them, ``position_ids`` of the queries are passed explicitly (left padding:
``(mask.cumsum(-1) - 1).clamp(min=0)``, as ``model_logits_fn``), the 2D padding mask is passed in
the cache's order, and transformers then builds a bidirectional mask (``create_causal_mask``
hands over to ``create_bidirectional_mask`` when ``is_causal`` is False; without padding it is
None and sdpa gets ``is_causal=False`` from the config). Sliding-window layers index keys by
their place in the cache, so a model whose window is shorter than the sequence is refused.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache

from ..model.forward_args import forward_owner

CACHE_BACKENDS = ("sdpa", "eager", "flash_attention_2")


def native_model(model):
    """The transformers-native model inside ``model`` (PEFT / DDP wrappers are looked through), or
    a ValueError saying why the KV cache cannot run on it."""
    hf = forward_owner(model)
    if not any(k.__module__.startswith("transformers.models.") for k in type(hf).__mro__):
        raise ValueError(
            f"cache needs a transformers-native model; {type(hf).__name__} ({type(hf).__module__}) brings its own "
            "modeling code without transformers' Cache support: load LLaDA / Dream natively (kind='diffusion' "
            "without trust_remote_code) or use cache='none'"
        )
    config = hf.config
    if getattr(config, "is_causal", True):
        raise ValueError(
            "cache needs a bidirectional model (config.is_causal = False); this one is causal: "
            "convert it with make_bidirectional or use cache='none'"
        )
    backend = getattr(config, "_attn_implementation", None)
    if backend not in CACHE_BACKENDS:
        raise ValueError(
            f"cache supports attn_implementation {', '.join(CACHE_BACKENDS)}, not {backend!r}; "
            "use cache='none' or load the model with attn_implementation='sdpa'"
        )
    return hf


def sliding_window(config) -> int | None:
    """The window of the model's sliding-attention layers, None when every layer attends fully."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    types = getattr(config, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    return getattr(config, "sliding_window", None)


class BlockCache:
    """Keys/values of the positions outside the active block, for ``generate(..., cache=mode)``.

    ``attention_mask`` [B, L] covers prompt + answer (None: no padding). ``mode`` is "prefix" or
    "dual". Use: ``fill_kwargs()`` into a full forward pass, then ``keep(lo, hi)``; afterwards
    ``block_logits(x, lo, hi)`` gives the block's logits [B, hi - lo, V] from one short pass.
    """

    def __init__(self, model, mode: str, *, shift: bool, attention_mask: torch.Tensor | None, length: int):
        hf = native_model(model)
        window = sliding_window(hf.config)
        if window is not None and window < length:
            raise ValueError(
                f"cache={mode!r} needs full attention, but this model has sliding-window layers "
                f"(sliding_window={window} < sequence length {length}): use cache='none'"
            )
        params = inspect.signature(type(hf).forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.24
        self.model, self.mode, self.shift, self.mask, self.length = model, mode, bool(shift), attention_mask, length
        self.positions = None if attention_mask is None else (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        self._filling: DynamicCache | None = None
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.index: torch.Tensor | None = None

    def query_start(self, lo: int) -> int:
        """The first position a cached step runs: the block's, or with shift the one before it."""
        return max(lo - int(self.shift), 0)

    def fill_kwargs(self) -> dict:
        """Model keywords that make a full forward pass record every position's keys/values."""
        self._filling = DynamicCache()
        return {self.cache_kw: self._filling, "use_cache": True}

    def keep(self, lo: int, hi: int) -> None:
        """Hold the filled keys/values of the positions a cached step of block [lo, hi) does not run."""
        device = self._filling.layers[0].keys.device
        q_lo = self.query_start(lo)
        index = torch.arange(q_lo, device=device)
        if self.mode == "dual":
            index = torch.cat([index, torch.arange(hi, self.length, device=device)])
        self.kept = [
            (layer.keys.index_select(2, index), layer.values.index_select(2, index)) for layer in self._filling.layers
        ]
        self.index, self._filling = index, None

    def block_logits(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Logits [B, hi - lo, V] for the tokens of block [lo, hi) of ``x`` [B, L], from the held
        keys/values plus the block's fresh ones (token i from position i - 1 with shift)."""
        q_lo = self.query_start(lo)
        B = x.shape[0]
        if self.positions is None:
            positions = torch.arange(q_lo, hi, device=x.device).expand(B, -1)
            mask = None  # no padding: transformers makes no mask, sdpa runs with is_causal=False
        else:
            positions = self.positions[:, q_lo:hi]
            mask = torch.cat([self.mask[:, self.index], self.mask[:, q_lo:hi]], 1)
        cache = DynamicCache(ddp_cache_data=self.kept)
        kwargs = {} if mask is None else {"attention_mask": mask}
        out = self.model(
            input_ids=x[:, q_lo:hi], position_ids=positions, use_cache=True, **{self.cache_kw: cache}, **kwargs
        )
        logits = out.logits if hasattr(out, "logits") else out
        return logits[:, : hi - lo]  # with shift: positions lo - 1 .. hi - 2 predict lo .. hi - 1

    def tokens_per_pass(self, lo: int, hi: int) -> int:
        """Positions a cached step of block [lo, hi) runs through the model, per sample."""
        return hi - self.query_start(lo)
