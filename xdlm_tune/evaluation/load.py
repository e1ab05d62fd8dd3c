"""The models an evaluation scores, loaded the way `xdlm-tune eval`, lm-eval's `xdlm`, genppl and the
sweep all load them: a training run or checkpoint, an export (its own sampler settings from
config.json), a causal base converted on the fly (untrained), and the causal base itself as the
greedy AR baseline; plus the process group of a launched evaluation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..config.sampler import SamplerSettings, settings_of_export
from .harness import EvalModel


def add_model_arguments(ap: argparse.ArgumentParser) -> None:
    """The flags that choose and load the model to evaluate (`xdlm-tune eval`, `--benchmark genppl`)."""
    ap.add_argument("--model", default="smollm2-135m", help="base or exported model (name, Hub id or folder)")
    ap.add_argument("--checkpoint", help="a training run directory or checkpoint to evaluate")
    ap.add_argument(
        "--kind", choices=("causal", "diffusion"), help="default: diffusion for xdlm-tune exports and LLaDA / Dream"
    )
    ap.add_argument("--mask-id", type=int, help="diffusion bases: the mask token id (LLaDA: 126336)")
    ap.add_argument(
        "--shift",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="diffusion bases: token i is predicted at position i-1 (Dream: yes, LLaDA: no)",
    )
    ap.add_argument("--trust-remote-code", action="store_true", help="run the model's own modeling code (LLaDA, Dream)")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 (CUDA default), float16")
    ap.add_argument("--attn-implementation", default="sdpa", help="sdpa (default), eager, flash_attention_2")


def _xdlm_block(path: str) -> dict | None:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get("xdlm")


def checkpoint_model(path: str | Path, device: torch.device, label: str | None = None) -> EvalModel:
    """A training run's newest checkpoint (or a given checkpoint folder) as the model to evaluate."""
    from ..checkpoints.load import find_checkpoint, load_checkpoint

    model, tok, mask_id, shift, recipe = load_checkpoint(path)
    ckpt = find_checkpoint(path).resolve()  # the default label names the run and the step it used
    step = ckpt.name.removeprefix("checkpoint-").lstrip("0") or "0"
    return EvalModel(
        model.to(device).eval(),
        tok,
        label or f"{ckpt.parent.name} step {step}",
        mask_id=mask_id,
        shift=shift,
        settings=recipe.sampler_settings(),
    )


def ar_baseline_model(
    name_or_path: str,
    device: torch.device,
    *,
    label: str,
    dtype: str,
    attn_implementation: str = "sdpa",
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
) -> EvalModel:
    """The original causal model, for the greedy autoregressive baseline row."""
    from ..model import load_base

    model, tok = load_base(
        name_or_path,
        kind="causal",
        dtype=dtype,
        attn_implementation=attn_implementation,
        gguf_file=gguf_file,
        trust_remote_code=trust_remote_code,
    )
    return EvalModel(model.to(device).eval(), tok, label)


def _default_dtype(args, device) -> str:
    return args.dtype or ("bfloat16" if device.type == "cuda" else "float32")


def load_diffusion_model(args, device) -> EvalModel:
    """The denoiser under evaluation, from --checkpoint, an export, or a (converted) base."""
    from ..model import prepare_model

    if args.checkpoint:
        return checkpoint_model(args.checkpoint, device, args.label)
    block = _xdlm_block(args.model)
    prepared = prepare_model(
        args.model,
        kind=args.kind or ("diffusion" if block or _native(args.model) else "causal"),
        dtype=_default_dtype(args, device),
        attn_implementation=args.attn_implementation,
        trust_remote_code=args.trust_remote_code or block is not None,
        mask_id=args.mask_id if args.mask_id is not None else (block or {}).get("mask_id"),
        shift=args.shift if args.shift is not None else (block or {}).get("shift"),
    )
    label = args.label or (Path(args.model).name if block else f"{Path(args.model).name}+xdlm-sampler")
    return EvalModel(
        prepared.model.to(device).eval(),
        prepared.tokenizer,
        label,
        mask_id=prepared.mask_id,
        shift=prepared.shift,
        settings=settings_of_export(block) if block else SamplerSettings(),
    )


def _native(name_or_path: str) -> bool:
    """LLaDA / Dream: already diffusion models, loaded natively (model/native.py)."""
    from ..model.load import resolve_source
    from ..model.native import native_family, read_config_dict

    source, gguf = resolve_source(name_or_path)
    return gguf is None and native_family(read_config_dict(source)) is not None


def load_ar_baseline(args, device) -> EvalModel:
    return ar_baseline_model(
        args.model,
        device,
        label=f"{Path(args.model).name} (AR)",
        dtype=_default_dtype(args, device),
        attn_implementation=args.attn_implementation,
        trust_remote_code=args.trust_remote_code,
    )


def _process_state():
    """accelerate's view of the launch: several launched CPU processes form one gloo group."""
    from accelerate import PartialState

    from ..launch import cpu_requested, launched

    cpu = cpu_requested(torch.cuda.is_available())
    return PartialState(cpu=True, backend="gloo") if cpu and launched() else PartialState(cpu=cpu)
