"""A recipe's base at its real size on the meta device: shapes and dtypes, no weights, seconds.

    built = real_size_model("meta-llama/Meta-Llama-3-8B", kind="causal", dtype="bfloat16", lora={...})
    built.prepared.model          # the adapted skeleton (bidirectional, mask token, LoRA), meta tensors
    built.source                  # where the config came from

The config comes from, in order: a local folder (or the embedded default once converted), the
Hub cache, the Hub (config.json alone, when it answers), and last the copies shipped in model/base_configs/
(each file says where its values come from). The tokenizer is the real one when it is on disk
(local folder, converted embedded model, Hub cache); otherwise a stand-in with the real length and
the real special tokens at their real ids (shipped with the config), which is all the mask-token
choice reads. Adaptation is `prepare.adapt_model`, the code training runs.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from xdlm_tune.model.load import DTYPES, EMBEDDED_MODELS, cache_dir
from xdlm_tune.model.native import NATIVE_FAMILIES, load_tokenizer, native_config, native_family, read_config_dict
from xdlm_tune.model.prepare import PreparedModel, adapt_model

logger = logging.getLogger(__name__)

BASE_CONFIGS = Path(__file__).parent / "base_configs"


class RealSizeError(ValueError):
    """The real-size model cannot be built as the recipe describes it."""


class BaseConfigUnavailable(RealSizeError):
    """No config.json for the base: not local, not on the Hub (or unreachable), not shipped."""


@dataclass
class RealSize:
    prepared: PreparedModel
    source: str  # where the config came from
    tokenizer_source: str


def shipped_config_file(name_or_path: str) -> Path:
    """model/base_configs/ file of a Hub id ("org/name" -> org--name.json) or embedded name."""
    return BASE_CONFIGS / (str(name_or_path).replace("/", "--") + ".json")


def shipped_bases() -> list[str]:
    return sorted(json.loads(p.read_text())["repo"] for p in BASE_CONFIGS.glob("*.json"))


def base_config(name_or_path: str, gguf_file: str | None = None) -> tuple[dict[str, Any], str, Path | None]:
    """(config.json as a dict, where it came from, the folder holding it, if any)."""
    name = str(name_or_path)
    if name in EMBEDDED_MODELS:
        for folder in sorted(cache_dir().glob(f"{name}-*/")):
            if (folder / "config.json").is_file():
                return (
                    json.loads((folder / "config.json").read_text()),
                    f"the converted embedded model {folder}",
                    folder,
                )
    else:
        path = Path(name).expanduser()
        if path.suffix == ".gguf" or gguf_file is not None:
            folder, file = (path.parent, path.name) if path.suffix == ".gguf" else (path, gguf_file)
            config = AutoConfig.from_pretrained(str(folder), gguf_file=file)
            return config.to_dict(), f"the GGUF header of {folder / file}", folder
        if path.is_dir():
            raw = read_config_dict(path)
            if raw is None:
                raise RealSizeError(f"model.name_or_path {name!r} is a folder without config.json")
            return raw, f"{path / 'config.json'}", path
        cached = _hub_cache(name)
        if cached is not None:
            return json.loads(Path(cached).read_text()), f"the Hub cache's config.json of {name}", None
        raw = read_config_dict(name) if hub_reachable() else None  # one small file
        if raw is not None:
            return raw, f"the Hub's config.json of {name}", None
    shipped = shipped_config_file(name)
    if shipped.is_file():
        return json.loads(shipped.read_text())["config"], f"the copy shipped with xdlm-tune ({shipped.name})", None
    raise BaseConfigUnavailable(
        f"model.name_or_path {name!r}: no config.json offline (not a local folder, not in the Hub cache, "
        f"the Hub unreachable) and xdlm-tune ships none for it (shipped: {', '.join(shipped_bases())}). "
        "Download its config.json once (`huggingface-cli download REPO config.json`), or point "
        "model.name_or_path at a folder holding it"
    )


def _hub_cache(repo: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, "config.json")
    except Exception:  # not a repo id
        return None
    return found if isinstance(found, str) else None


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub answers a TCP connection within `timeout` s (never when downloads are off):
    an unreachable Hub costs a plan 3 s, not the client's retries."""
    import os
    import socket
    from urllib.parse import urlparse

    from xdlm_tune.model.availability import hub_offline

    if hub_offline():  # the same switch the model loader's availability check reads
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def stand_in_tokenizer(spec: dict[str, Any]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of `spec["length"]` ids whose `spec["special"]` ids carry the real special
    tokens, with the real roles (bos / eos / pad / unk / mask): what setup_mask_token reads."""
    from tokenizers import Tokenizer, models

    special = {int(i): tok for i, tok in spec["special"].items()}
    vocab = {special.get(i, f"<|plan_{i}|>"): i for i in range(int(spec["length"]))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=special.get(0, "<|plan_0|>")))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    roles = dict(spec.get("roles", {}))
    extra = [t for t in special.values() if t not in roles.values()]
    if extra:
        tok.add_special_tokens({"additional_special_tokens": extra})
    tok.add_special_tokens(roles)
    return tok


def _tokenizer(name: str, folder: Path | None, family: str | None, raw: dict) -> tuple[PreTrainedTokenizerBase, str]:
    """The real tokenizer when it is on disk, else the shipped stand-in (else one from the config)."""
    candidates = [folder] if folder is not None else []
    if folder is None and name not in EMBEDDED_MODELS:
        candidates.append(name)  # Hub cache only: nothing is downloaded for a plan
    for source in candidates:
        try:
            if family is not None:
                return load_tokenizer(str(source), family, local_files_only=True), f"{source}"
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(source), local_files_only=True), f"{source}"
        except (OSError, ValueError):
            continue
    shipped = shipped_config_file(name)
    if shipped.is_file():
        spec = json.loads(shipped.read_text())["tokenizer"]
        return stand_in_tokenizer(spec), f"a stand-in with {shipped.name}'s length and special tokens"
    # Only the config: its vocabulary size, and its special ids under neutral names.
    ids = {k: raw.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    special = {str(v): f"<|{k[:-3]}|>" for k, v in ids.items() if isinstance(v, int)}
    roles = {k[:-3]: f"<|{k[:-3]}|>" for k, v in ids.items() if isinstance(v, int)}
    length = int(raw.get("vocab_size") or raw.get("embedding_size"))
    spec = {"length": length, "special": special, "roles": roles}
    return stand_in_tokenizer(spec), "a stand-in from the config's vocab_size and special ids (no tokenizer offline)"


def meta_base(raw: dict[str, Any], *, dtype: torch.dtype, attn_implementation: str | None, source: str):
    """The base model of config `raw` on the meta device (native LLaDA / Dream through their mapping)."""
    family = native_family(raw)
    if family is not None:
        config = native_config(raw, source)
        cls = NATIVE_FAMILIES[family][0]
    else:
        model_type = raw.get("model_type")
        fields = {k: v for k, v in raw.items() if k not in ("model_type", "auto_map", "transformers_version")}
        try:
            config = AutoConfig.for_model(model_type, **fields)
        except ValueError as err:
            raise RealSizeError(
                f"{source}: model_type {model_type!r} is not a transformers architecture ({err}); a plan "
                "builds transformers' own classes only (remote modeling code is not run)"
            ) from err
        cls = AutoModelForCausalLM
    config._attn_implementation = attn_implementation or "sdpa"
    with torch.device("meta"):
        if cls is AutoModelForCausalLM:
            model = cls.from_config(config, dtype=dtype)
        else:
            model = cls._from_config(config, dtype=dtype)
    if family is not None:
        model.config.xdlm_source_model_type = family  # as load_native records it
    return model


def real_size_model(
    name_or_path: str,
    *,
    kind: str = "causal",
    dtype: str = "float32",
    attn_implementation: str | None = "sdpa",
    gguf_file: str | None = None,
    quantization: str | None = None,
    mask_token: str | None = None,
    mask_id: int | None = None,
    shift: bool | None = None,
    lora: dict | None = None,
    gradient_checkpointing: bool = False,
) -> RealSize:
    """The recipe's base built on the meta device and adapted as training adapts it."""
    from xdlm_tune.model.lora import parameter_counts

    raw, source, folder = base_config(name_or_path, gguf_file)
    family = native_family(raw)
    if family is not None and kind == "causal":
        raise RealSizeError(
            f"{name_or_path} is model_type {family!r}, already a diffusion model: set model.kind: diffusion"
        )
    model = meta_base(raw, dtype=DTYPES[dtype], attn_implementation=attn_implementation, source=source)
    tokenizer, tok_source = _tokenizer(str(name_or_path), folder, family, raw)
    # A 4-bit base is built in its compute dtype: LoRA attaches to the same Linear names; the memory
    # plan counts the quantized weights. (adapt_model's nf4 check needs the real quantization.)
    with torch.device("meta"):  # new tensors (LoRA adapters, a resized embedding) on meta too
        model, mask, shift = adapt_model(
            model,
            tokenizer,
            kind=kind,
            quantization=quantization,
            mask_token=mask_token,
            mask_id=mask_id,
            shift=shift,
            lora=lora,
            gradient_checkpointing=gradient_checkpointing,
        )
    prepared = PreparedModel(
        model=model,
        tokenizer=tokenizer,
        mask_id=mask,
        shift=shift,
        kind=kind,
        family=model.config.model_type
        if not hasattr(model, "get_base_model")
        else model.get_base_model().config.model_type,
        parameter_counts=parameter_counts(model),
    )
    return RealSize(prepared=prepared, source=source, tokenizer_source=tok_source)
