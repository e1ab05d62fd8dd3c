"""LLaDA and Dream as transformers-native bidirectional models: no remote code.

Both are standard architectures with full attention, so they load into transformers' own
classes with `config.is_causal = False`, the same path as the converted causal bases:

* `model_type: llada` (LLaDA-8B-Base/Instruct, LLaDA-1.5) -> `LlamaForCausalLM`. The config
  fields are renamed (`d_model` -> `hidden_size`, ...) and the weights renamed while they load
  (`key_mapping`, shard by shard: the checkpoint never exists twice in memory), so bf16, nf4
  (QLoRA) and ZeRO-3 loading work as for any Llama. Only LLaDA's Llama-style configuration is
  supported; anything else (another block type, activation, norm, biases, ...) is refused with
  the field named.
* `model_type: Dream` (Dream-v0-Base/Instruct-7B) -> `Qwen2ForCausalLM`: Dream's config fields
  and weight names are already Qwen2's.

Checked against the original modeling code: tests/test_model_native.py reproduces logits that
code computed (shared/fixtures/). The original LLaDA code turns causal whenever its attention
mask contains a zero; the native model stays bidirectional, so a padded batch equals each
sequence alone.

Tokenizers: a base whose tokenizer_config.json names a class transformers does not have
(Dream's `DreamTokenizer` in tokenization_dream.py) gets transformers' own class instead:
`tokenizer.json` as a fast tokenizer when the base ships one, else (Dream: vocab.json +
merges.txt) Qwen2's byte-level BPE, which DreamTokenizer reimplements. Special tokens come
from the base's tokenizer_config.json / special_tokens_map.json as usual. A folder with none of
these files is refused (`TokenizerFilesError`) naming the files looked for and the fix.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import transformers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
)

from ..errors import UserError

logger = logging.getLogger(__name__)

# config.json model_type -> (transformers class, shift default: does position i-1 predict token i?)
NATIVE_FAMILIES: dict[str, tuple[type[PreTrainedModel], bool]] = {
    "llada": (LlamaForCausalLM, False),
    "Dream": (Qwen2ForCausalLM, True),
}

# LLaDA parameter names -> Llama's (regexes on the checkpoint's keys, as `key_mapping` takes them;
# transformers joins the patterns into one, so each may use only the group \1).
_BLOCK = r"^model\.transformer\.blocks\.(\d+)\."
LLADA_KEY_MAPPING = {
    r"^model\.transformer\.wte\.": "model.embed_tokens.",
    r"^model\.transformer\.ln_f\.": "model.norm.",
    r"^model\.transformer\.ff_out\.": "lm_head.",
    _BLOCK + r"q_proj\.": r"model.layers.\1.self_attn.q_proj.",
    _BLOCK + r"k_proj\.": r"model.layers.\1.self_attn.k_proj.",
    _BLOCK + r"v_proj\.": r"model.layers.\1.self_attn.v_proj.",
    _BLOCK + r"attn_out\.": r"model.layers.\1.self_attn.o_proj.",
    _BLOCK + r"ff_proj\.": r"model.layers.\1.mlp.gate_proj.",  # the SiLU branch
    _BLOCK + r"up_proj\.": r"model.layers.\1.mlp.up_proj.",
    _BLOCK + r"ff_out\.": r"model.layers.\1.mlp.down_proj.",
    _BLOCK + r"attn_norm\.": r"model.layers.\1.input_layernorm.",
    _BLOCK + r"ff_norm\.": r"model.layers.\1.post_attention_layernorm.",
}

# LLaDA config fields the Llama mapping needs to hold, with the value it supports (the
# original code's other options: fused / sequential blocks, GELU, LayerNorm, ALiBi, ...).
_LLADA_REQUIRED = {
    "block_type": "llama",
    "activation_type": "silu",
    "rope": True,
    "alibi": False,
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "include_bias": False,
    "include_qkv_bias": False,
    "attention_layer_norm": False,
    "block_group_size": 1,
    "scale_logits": False,
    "input_emb_norm": False,
    "clip_qkv": None,
    "rope_scaling": None,
}
# Dropouts Llama does not have: only 0 can be honoured.
_LLADA_ZERO = ("residual_dropout", "embedding_dropout")


class NativeConfigError(ValueError):
    """A LLaDA / Dream config.json that the native mapping cannot represent exactly."""


def read_config_dict(source: str | os.PathLike) -> dict[str, Any] | None:
    """config.json of a local folder or Hub repo as a dict (the Hub: that one file); None if absent."""
    path = _file(source, "config.json")
    return None if path is None else json.loads(Path(path).read_text())


def native_family(config: dict[str, Any] | None) -> str | None:
    """The config's model_type when it loads natively ("llada", "Dream"), else None."""
    family = (config or {}).get("model_type")
    return family if family in NATIVE_FAMILIES else None


def default_shift(family: str) -> bool:
    """LLaDA predicts token i at i (False); Dream at i-1 (True)."""
    return NATIVE_FAMILIES[family][1]


def native_config(raw: dict[str, Any], source: str = "config.json") -> LlamaConfig | Qwen2Config:
    """The transformers config (is_causal False) equivalent to a LLaDA / Dream config.json dict."""
    family = native_family(raw)
    if family == "llada":
        config = _llada_config(raw, source)
    elif family == "Dream":
        config = _dream_config(raw)
    else:
        raise NativeConfigError(
            f"{source}: model_type {raw.get('model_type')!r} has no native mapping "
            f"(native: {', '.join(NATIVE_FAMILIES)})"
        )
    config.is_causal = False
    config.use_cache = False
    return config


def load_native(source: str | os.PathLike, raw: dict[str, Any], **kwargs) -> PreTrainedModel:
    """`from_pretrained` of the native class with the mapped config (and, for LLaDA, the weight
    renaming); `kwargs` (dtype, attn_implementation, quantization_config, ...) go through."""
    family = native_family(raw)
    cls = NATIVE_FAMILIES[family][0]
    config = native_config(raw, f"{source}/config.json")
    if family == "llada":
        kwargs["key_mapping"] = LLADA_KEY_MAPPING
    model, info = cls.from_pretrained(source, config=config, output_loading_info=True, **kwargs)
    # A missing or unexpected weight would silently leave random values: refuse it.
    bad = {k: sorted(info.get(k) or ()) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    bad["missing_keys"] = [k for k in bad["missing_keys"] if k not in tied]
    if any(bad.values()):
        raise NativeConfigError(
            f"{source}: the {family} checkpoint does not map onto {cls.__name__}: "
            + "; ".join(f"{k} {v[:4]}" for k, v in bad.items() if v)
        )
    # transformers remembers the renaming and would undo it in save_pretrained, writing LLaDA names
    # under a Llama config.json; everything saved from here on (checkpoints, exports) is a Llama.
    ours = {tuple(p) for p in ([k] for k in LLADA_KEY_MAPPING)}
    model._weight_conversions = [
        c
        for c in (getattr(model, "_weight_conversions", None) or [])
        if tuple(getattr(c, "source_patterns", ())) not in ours
    ]
    # Recorded (and saved with the model) so that prepare_model knows the family's shift default.
    model.config.xdlm_source_model_type = family
    logger.info("%s: model_type %s loaded natively as a bidirectional %s", source, family, cls.__name__)
    return model


def load_tokenizer(source: str | os.PathLike, family: str | None = None, **kwargs) -> PreTrainedTokenizerBase:
    """The base's tokenizer without running tokenizer code it ships (see the module docstring).

    The class is chosen here, never by AutoTokenizer: that would follow config.json's auto_map
    to the base's remote code."""
    local_only = bool(kwargs.get("local_files_only"))  # then no file lookup may reach the Hub either
    tok_config = _file(source, "tokenizer_config.json", local_only)
    declared = json.loads(Path(tok_config).read_text()) if tok_config else {}
    name = declared.get("tokenizer_class")
    cls = getattr(transformers, name, None) if name else None
    if "AutoTokenizer" in (declared.get("auto_map") or {}) or not isinstance(cls, type):
        if _file(source, "tokenizer.json", local_only) is not None:
            cls = PreTrainedTokenizerFast
        elif family == "Dream" and _file(source, "vocab.json", local_only) and _file(source, "merges.txt", local_only):
            cls = Qwen2Tokenizer  # DreamTokenizer is Qwen2's byte-level BPE (same regex, NFC, merges)
        else:
            raise _no_tokenizer(source, family, name, local_only)
        if name is not None and name != cls.__name__:
            logger.info("%s: tokenizer class %s replaced by transformers' %s", source, name, cls.__name__)
        tokenizer = cls.from_pretrained(source, **kwargs)
        # Saved copies (checkpoints, exports) name transformers' class, not the shipped code.
        tokenizer.init_kwargs.pop("auto_map", None)
        return tokenizer
    return cls.from_pretrained(source, **kwargs)


class TokenizerFilesError(UserError, ValueError):
    """A LLaDA / Dream-format model without tokenizer files transformers can load."""


def _no_tokenizer(source, family: str | None, name: str | None, local_only: bool) -> TokenizerFilesError:
    """Why `load_tokenizer` found nothing to load in `source`, and the fix."""
    if name is not None:  # a tokenizer class is named, but it is the base's own code
        return TokenizerFilesError(
            f"{source}: its tokenizer is the custom class {name!r} (code shipped with the model) and it has "
            "no tokenizer.json to load as a fast tokenizer instead; save one with that class's "
            "save_pretrained under a transformers version its code supports"
        )
    looked = ["tokenizer_config.json", "tokenizer.json"] + (["vocab.json", "merges.txt"] if family == "Dream" else [])
    found = [f for f in looked if _file(source, f, local_only) is not None]
    have = f"only {', '.join(found)}" if found else "none of them"
    if "tokenizer_config.json" in found:
        have += " (it names no tokenizer_class)"
    files = "tokenizer.json" + (" (or vocab.json + merges.txt)" if family == "Dream" else "")
    return TokenizerFilesError(
        f"{source} holds no tokenizer: looked there for {', '.join(looked)} and found {have}. The tokenizer "
        f"is read from the model folder itself (there is no separate tokenizer option). Fix: ship {files} "
        "with tokenizer_config.json and special_tokens_map.json beside the weights: copy them from the base "
        "the weights came from, or write them there with `tokenizer.save_pretrained(folder)`"
    )


def save_llada_format(model: LlamaForCausalLM, path: str | os.PathLike, *, mask_token_id: int) -> Path:
    """Write `model` (a Llama) as LLaDA lays out a checkpoint: LLaDA's config.json fields and
    parameter names, no modeling code. The inverse of `native_config` + LLADA_KEY_MAPPING (the
    dry run's stand-in for LLaDA bases)."""
    from safetensors.torch import save_file

    c = model.config
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {}
    for name, tensor in model.state_dict().items():
        state[_to_llada_name(name)] = tensor.detach().contiguous().clone()
    if c.tie_word_embeddings:
        state.pop("model.transformer.ff_out.weight", None)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    rope = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", getattr(c, "rope_theta", 10000.0))
    config = {
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModel": "modeling_llada.LLaDAModelLM",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
        },
        "d_model": c.hidden_size,
        "n_heads": c.num_attention_heads,
        "n_kv_heads": c.num_key_value_heads,
        "n_layers": c.num_hidden_layers,
        "mlp_hidden_size": c.intermediate_size,
        "mlp_ratio": 4,
        "embedding_size": c.vocab_size,
        "vocab_size": c.vocab_size,
        "weight_tying": bool(c.tie_word_embeddings),
        "rope_theta": rope,
        "rms_norm_eps": c.rms_norm_eps,
        "max_sequence_length": c.max_position_embeddings,
        "mask_token_id": mask_token_id,
        "pad_token_id": c.pad_token_id,
        "eos_token_id": c.eos_token_id,
        "bos_token_id": c.bos_token_id,
        "use_cache": False,
        **{k: v for k, v in _LLADA_REQUIRED.items() if v is not None},
        "attention_dropout": 0.0,
        "residual_dropout": 0.0,
        "embedding_dropout": 0.0,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------- internals


def _file(source: str | os.PathLike, name: str, local_files_only: bool = False) -> str | None:
    """A file of a local folder or Hub repo (downloaded alone; with `local_files_only` the Hub cache
    only), None when it does not exist."""
    local = Path(source).expanduser()
    if local.is_dir():
        return str(local / name) if (local / name).is_file() else None
    try:
        from transformers.utils import cached_file

        return cached_file(
            str(source),
            name,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            local_files_only=local_files_only,
        )
    except (OSError, ValueError):
        return None


def _llada_config(raw: dict[str, Any], source: str) -> LlamaConfig:
    for key, want in _LLADA_REQUIRED.items():
        have = raw.get(key, want)
        if have != want:
            raise NativeConfigError(
                f"{source}: LLaDA field {key}={have!r} is not supported natively (only {key}={want!r}, "
                "the Llama-style LLaDA of LLaDA-8B and LLaDA-1.5, maps exactly onto LlamaForCausalLM)"
            )
    if raw.get("bias_for_layer_norm") not in (None, False):
        raise NativeConfigError(
            f"{source}: LLaDA field bias_for_layer_norm={raw['bias_for_layer_norm']!r} "
            "is not supported natively (Llama's RMSNorm has no bias)"
        )
    for key in _LLADA_ZERO:
        if raw.get(key, 0.0):
            raise NativeConfigError(
                f"{source}: LLaDA field {key}={raw[key]!r} is not supported natively "
                "(Llama has no such dropout; set it to 0.0)"
            )
    n_heads = raw["n_heads"]
    n_kv = raw.get("n_kv_heads")
    if n_kv is None:
        n_kv = 1 if raw.get("multi_query_attention") else n_heads
    elif raw.get("multi_query_attention") and n_kv != 1:
        raise NativeConfigError(f"{source}: LLaDA fields multi_query_attention and n_kv_heads={n_kv} contradict")
    hidden = raw["d_model"]
    special = {
        k: raw[k] for k in ("pad_token_id", "eos_token_id", "bos_token_id", "mask_token_id") if raw.get(k) is not None
    }
    return LlamaConfig(
        hidden_size=hidden,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        num_hidden_layers=raw["n_layers"],
        intermediate_size=raw.get("mlp_hidden_size") or raw.get("mlp_ratio", 4) * hidden,
        # The embedding rows: LLaDA's vocab_size may be smaller than its embedding matrix.
        vocab_size=raw.get("embedding_size") or raw["vocab_size"],
        tie_word_embeddings=bool(raw.get("weight_tying", False)),
        rope_theta=float(raw.get("rope_theta", 10000.0)),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
        max_position_embeddings=raw.get("max_sequence_length", 4096),
        attention_dropout=float(raw.get("attention_dropout", 0.0)),
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        **special,
    )


def _dream_config(raw: dict[str, Any]) -> Qwen2Config:
    fields = {
        k: v
        for k, v in raw.items()
        if k
        not in (
            "model_type",
            "auto_map",
            "architectures",
            "transformers_version",
            "_name_or_path",
            "torch_dtype",
            "dtype",
        )
    }
    return Qwen2Config(**fields)


def _to_llada_name(name: str) -> str:
    """A Llama parameter name as LLaDA's checkpoint spells it."""
    import re

    inverse = (
        (r"^model\.embed_tokens\.", "model.transformer.wte."),
        (r"^model\.norm\.", "model.transformer.ln_f."),
        (r"^lm_head\.", "model.transformer.ff_out."),
        (r"^model\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj)\.", r"model.transformer.blocks.\1.\2."),
        (r"^model\.layers\.(\d+)\.self_attn\.o_proj\.", r"model.transformer.blocks.\1.attn_out."),
        (r"^model\.layers\.(\d+)\.mlp\.gate_proj\.", r"model.transformer.blocks.\1.ff_proj."),
        (r"^model\.layers\.(\d+)\.mlp\.up_proj\.", r"model.transformer.blocks.\1.up_proj."),
        (r"^model\.layers\.(\d+)\.mlp\.down_proj\.", r"model.transformer.blocks.\1.ff_out."),
        (r"^model\.layers\.(\d+)\.input_layernorm\.", r"model.transformer.blocks.\1.attn_norm."),
        (r"^model\.layers\.(\d+)\.post_attention_layernorm\.", r"model.transformer.blocks.\1.ff_norm."),
    )
    for pattern, repl in inverse:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    raise ValueError(f"{name}: no LLaDA name for this Llama parameter")
