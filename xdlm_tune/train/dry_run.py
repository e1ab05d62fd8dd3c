"""`--dry-run`: check a recipe end to end without its model or data.

The recipe is resolved as for a real run; then, in a temporary directory,
  * the model becomes a tiny random stand-in of the same family (2 layers, hidden 64, a
    byte-level tokenizer of ~260 ids), saved like a Hub checkpoint and loaded through the
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
(trust_remote_code, registered under AutoModel and AutoModelForCausalLM) whose forward has
LLaDA's original strict signature: no **kwargs, no position_ids, no logits_to_keep.
LLaDA's mask id 126336 would need a 126k-row vocabulary; the stand-ins keep the same mask
semantics (an explicit id naming a dedicated vocabulary entry, `<|mdm_mask|>`, no new token,
shift as in the recipe) with that entry as the last id of their small vocabulary.
What a dry run cannot check: downloads (model, gated licences, Hub datasets), memory, speed.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..config import Recipe
from ..model import SUPPORTED_FAMILIES

logger = logging.getLogger(__name__)

STANDIN_DIMS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)
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
# Structure per family (as the 7-8B bases have it): untied heads; Gemma ties and soft-caps.
_FAMILY_EXTRAS: dict[str, dict[str, Any]] = {
    "llama": dict(tie_word_embeddings=False),
    "qwen2": dict(tie_word_embeddings=False),
    "qwen3": dict(tie_word_embeddings=False),
    "mistral": dict(tie_word_embeddings=False, sliding_window=16),
    "gemma2": dict(
        tie_word_embeddings=True,
        sliding_window=16,
        final_logit_softcapping=30.0,
        layer_types=["sliding_attention", "full_attention"],
        query_pre_attn_scalar=16,
    ),
    "gemma3_text": dict(
        tie_word_embeddings=True,
        sliding_window=16,
        query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention"],
    ),
}
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


# --------------------------------------------------------------------------- tokenizer


def byte_tokenizer(extra_special: list[str] = (), mask_token: str | None = None):
    """A byte-level tokenizer: <pad>=0, <s>=1, </s>=2, the 256 bytes, then `extra_special`
    (and `mask_token`, registered as the mask token, last). Any text encodes exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    extra = [s for s in extra_special if s != mask_token]
    if extra:
        tok.add_special_tokens({"additional_special_tokens": extra})
    if mask_token is not None:
        tok.add_special_tokens({"mask_token": mask_token})
    return tok


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
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = byte_tokenizer(extra_special=[mask_token] if mask_token else [])
    kwargs = {
        **STANDIN_DIMS,
        **_FAMILY_EXTRAS[family],
        **real,
        "vocab_size": len(tok),
        "max_position_embeddings": 4 * MAX_SEQ_LEN,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    config = AutoConfig.for_model(family, **kwargs)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
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
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..model.native import save_llada_format

    tok = byte_tokenizer(mask_token=mask_token or DIFFUSION_MASK)
    arch = "llama" if family == "llada" else "qwen2"
    config = AutoConfig.for_model(
        arch,
        **STANDIN_DIMS,
        **_FAMILY_EXTRAS[arch],
        vocab_size=len(tok),
        max_position_embeddings=4 * MAX_SEQ_LEN,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    if family == "llada":
        save_llada_format(model, path, mask_token_id=tok.mask_token_id)
    else:  # Dream's checkpoints are Qwen2's, under their own model_type and remote classes
        model.save_pretrained(path)
        raw = json.loads((path / "config.json").read_text())
        raw.update(
            model_type="Dream",
            architectures=["DreamModel"],
            mask_token_id=tok.mask_token_id,
            auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        )
        (path / "config.json").write_text(json.dumps(raw, indent=2))
    tok.save_pretrained(path)
    return str(path), tok.mask_token_id


_MODELING = '''
"""A tiny bidirectional denoiser with its own modeling code: the dry-run stand-in for remote-code
diffusion bases. Its forward has the signature of LLaDA's original one (no **kwargs, no
position_ids, no logits_to_keep) and exposes no hidden states, so a call that passes anything
else fails here as it would there."""
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutput


class XdlmStandInConfig(PretrainedConfig):
    model_type = "xdlm_standin"

    def __init__(self, vocab_size=264, hidden_size=64, n_layers=2, n_heads=4, max_positions=256, **kwargs):
        self.vocab_size, self.hidden_size, self.n_layers = vocab_size, hidden_size, n_layers
        self.n_heads, self.max_positions = n_heads, max_positions
        super().__init__(**kwargs)


class Block(GradientCheckpointingLayer):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.up_proj, self.down_proj = nn.Linear(d, 2 * d, bias=False), nn.Linear(2 * d, d, bias=False)

    def forward(self, x, attention_mask=None):
        B, L, D = x.shape
        h = self.norm1(x)
        q, k, v = (p(h).view(B, L, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # bidirectional
        x = x + self.o_proj(a.transpose(1, 2).reshape(B, L, D))
        return x + self.down_proj(F.gelu(self.up_proj(self.norm2(x))))


class XdlmStandInModel(PreTrainedModel):
    config_class = XdlmStandInConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True

    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_positions, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config.hidden_size, config.n_heads) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size)
        self.ff_out = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def get_output_embeddings(self):
        return self.ff_out

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, attention_bias=None,
                past_key_values=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        if inputs_embeds is not None or attention_bias is not None or past_key_values is not None:
            raise NotImplementedError("the stand-in takes input_ids and attention_mask only")
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)[None]
        for block in self.blocks:
            x = block(x, attention_mask)
        return CausalLMOutput(logits=self.ff_out(self.ln_f(x)))
'''


def _diffusion_stand_in(path: Path, *, mask_token: str | None) -> tuple[str, int]:
    """Write, instantiate and save the remote-code stand-in; returns (path, mask id)."""
    import torch

    src = path.parent / "standin_src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "modeling_xdlm_standin.py").write_text(_MODELING)
    spec = importlib.util.spec_from_file_location("modeling_xdlm_standin", src / "modeling_xdlm_standin.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["modeling_xdlm_standin"] = module
    try:
        spec.loader.exec_module(module)
        module.XdlmStandInConfig.register_for_auto_class()
        module.XdlmStandInModel.register_for_auto_class("AutoModel")
        module.XdlmStandInModel.register_for_auto_class("AutoModelForCausalLM")
        tok = byte_tokenizer(mask_token=mask_token or DIFFUSION_MASK)
        config = module.XdlmStandInConfig(
            vocab_size=len(tok), max_positions=4 * MAX_SEQ_LEN, pad_token_id=0, bos_token_id=1, eos_token_id=2
        )
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = module.XdlmStandInModel(config)
        model.save_pretrained(path)  # copies the modeling file beside the weights
    finally:
        del sys.modules["modeling_xdlm_standin"]
    tok.save_pretrained(path)
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
