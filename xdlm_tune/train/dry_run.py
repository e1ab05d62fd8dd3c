"""`--dry-run`: check a recipe end to end without its model or data.

The recipe is resolved as for a real run; then, in a temporary directory,
  * the model becomes a tiny random stand-in of the same family (model/tiny.py: 2 layers,
    hidden 64, a byte-level tokenizer of ~260 ids), saved like a Hub checkpoint and loaded through the
    same `prepare_model` call (mask token, bidirectional attention, LoRA / QLoRA / full);
  * the data becomes a few offline records of the same mode (stdlib source text for
    pretraining, synthetic prompt/answer pairs for SFT), through the same pipeline
    (streaming or not), with blocks of at most 64 tokens;
  * training runs ONE optimizer step (with up to 2 accumulated micro-batches), a held-out
    ELBO and a checkpoint, through the real loop: accelerate, and DeepSpeed when the recipe
    has a deepspeed section (on a machine without CUDA DeepSpeed runs on its CPU accelerator
    with gloo; its first use compiles a small C++ op, cached in $TORCH_EXTENSIONS_DIR).

Family: read from the model's config when it is available offline (a local folder, the
Hub cache, the embedded default once converted), else guessed from the name (llama, qwen,
mistral, gemma, smollm); unknown names use a Llama. Diffusion bases (kind: diffusion) of
the natively loaded families (LLaDA, Dream: from the config, else from the name) get a tiny
checkpoint in that family's own layout (LLaDA's config.json fields and parameter names, or
Dream's model_type with Qwen2 names; no modeling code), so the run takes the native path the
real model takes. Other diffusion bases get a tiny denoiser with its own modeling file
(model/modeling_xdlm_standin.py, copied beside its weights; trust_remote_code, registered
under AutoModelForCausalLM) whose forward has LLaDA's original strict signature: no
**kwargs, no position_ids, no logits_to_keep.
LLaDA's mask id 126336 would need a 126k-row vocabulary; the stand-ins keep the same mask
semantics (an explicit id naming a dedicated vocabulary entry, `<|mdm_mask|>`, no new token,
shift as in the recipe) with that entry as the last id of their small vocabulary.
What a dry run cannot check: downloads (model, gated licences, Hub datasets), memory, speed.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from ..config import Recipe
from ..model import SUPPORTED_FAMILIES
from ..model.tiny import byte_tokenizer, save_native_layout, save_remote_stand_in, tiny_model

logger = logging.getLogger(__name__)

# The stand-in's size (tiny_config's arguments): wide enough for 64-token blocks, windows that
# those blocks cross, the initializer scale of the real bases.
STANDIN_SIZE = dict(hidden_size=64, sliding_window=16, initializer_range=0.02)
MAX_SEQ_LEN = 64
DIFFUSION_MASK = "<|mdm_mask|>"
# Name fragments -> transformers model_type, most specific first.
_NAME_HINTS = (
    ("qwen3", "qwen3"),
    ("qwen", "qwen2"),
    ("mixtral", "mistral"),
    ("mistral", "mistral"),
    ("gemma-3", "gemma3_text"),
    ("gemma3", "gemma3_text"),
    ("gemma", "gemma2"),
    ("llama", "llama"),
    ("smollm", "llama"),
)
_COPIED_FIELDS = ("tie_word_embeddings", "final_logit_softcapping", "attention_bias", "mlp_bias")


def dry_run(recipe: Recipe):
    """Run `recipe` on a stand-in in a temporary directory; print and return the TrainResult."""
    from .loop import train

    with tempfile.TemporaryDirectory(prefix="xdlm-dry-run-") as tmp:
        stand_in, notes = stand_in_recipe(recipe, Path(tmp))
        for note in notes:
            logger.info("dry run: %s", note)
        result = train(stand_in)
        files = sorted(p.name for p in result.checkpoint.iterdir()) if result.checkpoint else []
        loss = result.losses.get(result.step, float("nan"))
        nelbo = result.evals.get(result.step, {}).get("nelbo", float("nan"))
        stage = result.info["zero_stage"]
        print(
            f"dry run OK: {recipe.model.name_or_path} -> {result.info['family']} stand-in "
            f"({'no DeepSpeed' if stage is None else f'ZeRO-{stage}'}, {result.world_size} process(es)); "
            f"step {result.step} loss {loss:.4f}, held-out NELBO {nelbo:.4f}; checkpoint: {', '.join(files)}"
        )
        return result


def stand_in_recipe(recipe: Recipe, workdir: Path) -> tuple[Recipe, list[str]]:
    """A copy of `recipe` that trains a tiny stand-in on offline data inside `workdir`."""
    import torch

    r = copy.deepcopy(recipe)
    notes: list[str] = []
    m, a, t, d = r.model, r.adaptation, r.training, r.data

    # The model.
    if m.kind == "diffusion":
        native = _native_family(m.name_or_path)
        if native is not None:
            m.name_or_path, mask_id = _native_stand_in(workdir / "model", native, mask_token=a.mask_token)
            m.trust_remote_code = False
            notes.append(
                f"model: a 2-layer {native}-format checkpoint (its config.json and weight names, "
                "no modeling code) through the native path"
            )
        else:
            m.name_or_path, mask_id = _diffusion_stand_in(workdir / "model", mask_token=a.mask_token)
            m.trust_remote_code = True
            notes.append(
                "model: a 2-layer bidirectional denoiser with its own modeling file (remote-code path, "
                "LLaDA's strict forward signature)"
            )
        if a.mask_id is not None:
            entry = a.mask_token or DIFFUSION_MASK
            notes.append(f"adaptation.mask_id {a.mask_id} -> {mask_id} ({entry}, the stand-in's last id)")
            a.mask_id = mask_id
    else:
        family, source, real = _family(m.name_or_path)
        m.name_or_path = _causal_stand_in(workdir / "model", family, real, mask_token=a.mask_token)
        m.trust_remote_code = False
        notes.append(f"model: a 2-layer {family} ({source})")
    m.gguf_file = None
    if m.attn_implementation not in (None, "sdpa", "eager"):
        notes.append(f"model.attn_implementation {m.attn_implementation} -> sdpa")
        m.attn_implementation = "sdpa"

    # The data.
    d.seq_len = min(d.seq_len, MAX_SEQ_LEN)
    if d.mode == "sft" and d.max_prompt_len is not None:
        d.max_prompt_len = min(d.max_prompt_len, d.seq_len // 2)
    d.source = str(_offline_records(workdir / "data.jsonl", d.mode))
    d.subset, d.data_files, d.split, d.max_records, d.num_proc = None, None, "train", None, None
    d.columns = type(d.columns)()
    d.eval_holdout = 4
    notes.append(f"data: {d.mode} records from {d.source} (streaming {d.streaming}), seq_len {d.seq_len}")

    # One step, a held-out ELBO and a checkpoint.
    t.output_dir = str(workdir / "run")
    t.max_steps, t.per_device_batch_size, t.grad_accum = 1, min(t.per_device_batch_size, 2), min(t.grad_accum, 2)
    t.eval_every, t.eval_batches, t.save_every, t.keep_last, t.log_every, t.resume = 1, 1, 0, 1, 1, False
    if t.mixed_precision == "fp16" and not torch.cuda.is_available():
        notes.append("training.mixed_precision fp16 -> bf16 (no CUDA)")
        t.mixed_precision = "bf16"
    return r.validate(), notes


# --------------------------------------------------------------------------- models


def _family(name_or_path: str) -> tuple[str, str, dict[str, Any]]:
    """(model_type, where it came from, structural fields of the real config) offline."""
    config = _local_config(name_or_path)
    if config is not None and config.get("model_type") in SUPPORTED_FAMILIES:
        fields = {k: config[k] for k in _COPIED_FIELDS if config.get(k) is not None}
        return config["model_type"], "family and head tying from its config", fields
    lowered = str(name_or_path).lower()
    for hint, family in _NAME_HINTS:
        if hint in lowered:
            return family, f"family guessed from the name {name_or_path!r}", {}
    return "llama", f"family unknown offline for {name_or_path!r}: a Llama", {}


def _local_config(name_or_path: str) -> dict[str, Any] | None:
    """config.json of a local folder, the Hub cache, or the converted embedded model; no download."""
    from ..model import EMBEDDED_MODELS, cache_dir

    candidates = []
    if name_or_path in EMBEDDED_MODELS:
        candidates += sorted(cache_dir().glob(f"{name_or_path}-*/config.json"))
    candidates.append(Path(name_or_path).expanduser() / "config.json")
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text())
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name_or_path), "config.json")
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text())
    except Exception:  # not a repo id, no cache: fall back to the name
        pass
    return None


def _causal_stand_in(path: Path, family: str, real: dict[str, Any], *, mask_token: str | None) -> str:
    """A tiny random causal LM of `family`; a recipe's mask_token becomes a vocabulary entry
    (as Llama 3's reserved tokens are), else prepare_model adds <|mask|> as for most bases."""
    tok = byte_tokenizer(extra_special=[mask_token] if mask_token else [])
    # Heads untied as the 7-8B bases have them (Gemma ties), unless the real config says otherwise.
    structure = {"tie_word_embeddings": family.startswith("gemma"), **real}
    tiny_model(family, vocab_size=len(tok), **STANDIN_SIZE, **structure).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _native_family(name_or_path: str) -> str | None:
    """ "llada" / "Dream" when the diffusion base loads natively (its config offline, else its name)."""
    from ..model.native import NATIVE_FAMILIES

    config = _local_config(name_or_path)
    if config is not None:
        return config.get("model_type") if config.get("model_type") in NATIVE_FAMILIES else None
    lowered = str(name_or_path).lower()
    return "llada" if "llada" in lowered else "Dream" if "dream" in lowered else None


def _native_stand_in(path: Path, family: str, *, mask_token: str | None) -> tuple[str, int]:
    """A tiny random LLaDA- or Dream-format checkpoint (as the Hub models lay theirs out); returns (path, mask id)."""
    tok = byte_tokenizer(mask_token=mask_token or DIFFUSION_MASK)
    arch = "llama" if family == "llada" else "qwen2"  # LLaDA is a Llama, Dream a Qwen2 (both untied)
    model = tiny_model(arch, vocab_size=len(tok), tie_word_embeddings=False, **STANDIN_SIZE)
    save_native_layout(model, path, family, mask_token_id=tok.mask_token_id)
    tok.save_pretrained(path)
    return str(path), tok.mask_token_id


def _diffusion_stand_in(path: Path, *, mask_token: str | None) -> tuple[str, int]:
    """The remote-code stand-in (model/modeling_xdlm_standin.py beside its weights); returns (path, mask id)."""
    tok = byte_tokenizer(mask_token=mask_token or DIFFUSION_MASK)
    save_remote_stand_in(path, tok)
    return str(path), tok.mask_token_id


# --------------------------------------------------------------------------- data


def _offline_records(path: Path, mode: str) -> Path:
    """A small local JSONL in the default columns: text (pretrain) or prompt/answer (sft)."""
    if mode == "pretrain":
        from ..data import stdlib_files

        rows = []
        for f in stdlib_files()[:40]:
            try:
                text = f.read_text(encoding="utf-8")[:3000]
            except (UnicodeDecodeError, OSError):
                continue
            if text.strip():
                rows.append({"text": text})
            if len(rows) == 12:
                break
    else:
        rows = [
            {
                "prompt": f"Write a function that adds {i} to its argument.\n",
                "answer": f"def add_{i}(x):\n    return x + {i}\n",
            }
            for i in range(24)
        ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
