"""The recipe schema: one dataclass per YAML section, each with its own value checks.

`Recipe.validate()` collects every problem into one RecipeError whose lines start with
the key path (`diffusion.k: must be in [0, 1] ...`). Loading and overrides are in load.py.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SCHEDULES = ("linear", "cosine", "loglinear")  # = xdlm_tune.diffusion.SCHEDULES (no torch import here)
BUILTIN_SOURCES = ("python-stdlib", "mbpp-train")
_DS_AUTO = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")


class RecipeError(ValueError):
    """A recipe (file or override) that cannot be used; the message says how to fix it."""


# --------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    """The base model and how to load it."""

    name_or_path: str = "smollm2-135m"  # the embedded default, a Hub id, a local folder or a .gguf file
    kind: Literal["causal", "diffusion"] = "causal"  # causal: made bidirectional; diffusion: LLaDA/Dream
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: str | None = "sdpa"  # None lets transformers (or remote code) choose
    gguf_file: str | None = None  # a .gguf file inside name_or_path, dequantized on load
    quantization: Literal["nf4"] | None = None  # 4-bit bitsandbytes base (QLoRA); needs LoRA
    trust_remote_code: bool = False

    def _errors(self, recipe: Recipe) -> list[tuple[str, str]]:
        errs = []
        if not self.name_or_path:
            errs.append(("name_or_path", "is empty; give a Hub id or a local directory"))
        if self.quantization is not None and not recipe.lora.enabled:
            errs.append(("quantization", "a quantized base can only be trained with LoRA; set lora.enabled: true or quantization: null"))
        return errs


@dataclass
class AdaptationConfig:
    """Turning the base into a denoiser: mask token, shift, attention annealing."""

    mask_token: str | None = None  # token string to use as [MASK]; None: a reserved token, else a new one
    mask_id: int | None = None  # explicit id (e.g. 126336 for LLaDA); wins over mask_token
    shift: bool | None = None  # predict token i at position i-1 (Dream/DiffuLLaMA); None: true for causal
    #                            bases, read from an exported model's config for diffusion ones
    attention_annealing_steps: int = 0  # causal -> full attention over this many steps; 0: full at once

    def _errors(self, recipe: Recipe) -> list[tuple[str, str]]:
        errs = []
        if self.mask_id is not None and self.mask_id < 0:
            errs.append(("mask_id", f"must be >= 0, got {self.mask_id}"))
        if self.attention_annealing_steps < 0:
            errs.append(("attention_annealing_steps", f"must be >= 0, got {self.attention_annealing_steps}"))
        if self.attention_annealing_steps > 0 and recipe.model.kind == "diffusion":
            errs.append(("attention_annealing_steps", "a diffusion base is already bidirectional; set it to 0"))
        return errs


@dataclass
class LoraConfig:
    """LoRA adapters (PEFT). enabled: false means a full fine-tune."""

    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    use_rslora: bool = False
    use_dora: bool = False
    train_mask_row: bool = True  # train the [MASK] embedding row (needed when the token is new)

    def to_dict(self) -> dict[str, Any] | None:
        """The `lora` argument of model.prepare_model: None for a full fine-tune."""
        if not self.enabled:
            return None
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "enabled"}

    def _errors(self, recipe: Recipe) -> list[tuple[str, str]]:
        errs = []
        if self.r < 1:
            errs.append(("r", f"must be a positive integer, got {self.r}"))
        if self.alpha <= 0:
            errs.append(("alpha", f"must be > 0, got {self.alpha}"))
        if not 0.0 <= self.dropout < 1.0:
            errs.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        if isinstance(self.target_modules, list) and not self.target_modules:
            errs.append(("target_modules", 'is an empty list; name modules (e.g. [q_proj, v_proj]) or use "all-linear"'))
        return errs


@dataclass
class DiffusionConfig:
    """The XDLM objective: mixing ratio k, noise schedule, loss weighting."""

    k: float = 0.1  # 0: MDLM (absorbing), 1: UDLM (uniform), in between: XDLM
    schedule: str = "linear"
    eps: float = 1e-3  # t ~ U[eps, 1]; keeps alpha_t inside (0, 1)
    loss_weighting: Literal["elbo", "unit"] = "elbo"  # elbo: -dalpha/dt (1 - eps if linear); unit: 1 (the 8B run)
    antithetic: bool = True  # stratified t across the batch: lower-variance loss
    chunk_size: int | None = None  # tokens per chunk in the fused loss; None: from chunk_mib
    chunk_mib: float | None = None  # MiB per [chunk, V] float32 buffer of the fused loss; None: 64

    def _errors(self, recipe: Recipe) -> list[tuple[str, str]]:
        errs = []
        if not 0.0 <= self.k <= 1.0:
            errs.append(("k", f"must be in [0, 1] (0 = MDLM, 1 = UDLM), got {self.k}"))
        if self.schedule not in SCHEDULES:
            errs.append(("schedule", _enum_msg(self.schedule, SCHEDULES)))
        if not 0.0 < self.eps < 0.5:
            errs.append(("eps", f"must be in (0, 0.5) so that alpha_t stays inside (0, 1), got {self.eps}; 1e-3 is the usual value"))
        if self.chunk_size is not None and self.chunk_size < 1:
            errs.append(("chunk_size", f"must be a positive integer or null, got {self.chunk_size}"))
        if self.chunk_mib is not None and not self.chunk_mib > 0:
            errs.append(("chunk_mib", f"must be > 0 (MiB per fused-loss buffer) or null, got {self.chunk_mib}"))
        return errs


@dataclass
class ColumnsConfig:
    """Column names in the source dataset."""

    text: str = "text"  # pretrain
    prompt: str = "prompt"  # sft, prompt/answer pairs
    answer: str = "answer"
    messages: str | None = None  # sft with chat messages: the column holding [{role, content}, ...]


@dataclass
class DataConfig:
    """Where the training text comes from and how it becomes token blocks."""

    mode: Literal["pretrain", "sft"] = "pretrain"
    source: str = "python-stdlib"  # Hub id, local file/dir, or builtin: python-stdlib, mbpp-train
    subset: str | None = None  # Hub config name (e.g. fineweb-edu "sample-10BT")
    data_files: str | list[str] | None = None  # passed to datasets.load_dataset; mbpp-train: path to mbpp.jsonl
    split: str = "train"
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    streaming: bool = False  # iterate without downloading everything (large corpora)
    seq_len: int = 256  # packed block length (pretrain) or max prompt+answer length (sft)
    max_prompt_len: int | None = None  # sft: left-truncate longer prompts to this many tokens
    eval_holdout: int = 32  # source records held out for the held-out ELBO
    max_records: int | None = None  # cap on training records (files, rows); None: all
    num_proc: int | None = None  # processes for tokenization (non-streaming)

    def _errors(self, recipe: Recipe) -> list[tuple[str, str]]:
        errs = []
        if not self.source:
            errs.append(("source", "is empty; give a Hub id, a local path or one of " + ", ".join(BUILTIN_SOURCES)))
        if self.seq_len < 2:
            errs.append(("seq_len", f"must be an integer >= 2, got {self.seq_len}"))
        if self.eval_holdout < 0:
            errs.append(("eval_holdout", f"must be >= 0, got {self.eval_holdout}"))
        if self.max_records is not None and self.max_records < 1:
            errs.append(("max_records", f"must be a positive integer or null, got {self.max_records}"))
        if self.num_proc is not None and self.num_proc < 1:
            errs.append(("num_proc", f"must be a positive integer or null, got {self.num_proc}"))
        if self.max_prompt_len is not None:
            if self.mode != "sft":
                errs.append(("max_prompt_len", "only applies to data.mode: sft; remove it or set it to null"))
            elif not 1 <= self.max_prompt_len < self.seq_len:
                errs.append(("max_prompt_len", f"must be in [1, seq_len) to leave room for the answer, got {self.max_prompt_len} with seq_len {self.seq_len}"))
        if self.source == "python-stdlib" and self.mode == "sft":
            errs.append(("mode", "python-stdlib is raw code with no prompt/answer pairs; use mode: pretrain"))
        if self.source == "python-stdlib" and self.data_files:
            errs.append(("data_files", "does not apply to python-stdlib (it reads this Python's own library); remove it"))
        if self.source == "mbpp-train" and not self.data_files:
            errs.append(("data_files", "mbpp-train reads a local MBPP file; set it to the path of mbpp.jsonl (e.g. ../shared/data/mbpp.jsonl)"))
        return errs


@dataclass
class TrainingConfig:
    """The optimisation loop, logging and checkpoints."""

    output_dir: str = "runs/xdlm"
    max_steps: int = 300  # optimizer steps
    per_device_batch_size: int = 4
    grad_accum: int = 1
    lr: float = 5e-4
    warmup_steps: int = 20
    lr_scheduler: Literal["cosine", "constant"] = "cosine"  # applied after linear warmup
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0  # null or 0: no clipping
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100  # held-out ELBO every N steps; 0: never
    eval_batches: int = 8  # batches of the held-out set per evaluation
    save_every: int = 100  # checkpoint every N steps (and at the end); 0: only at the end
    keep_last: int = 2  # checkpoints kept on disk
    resume: bool | str = False  # true / "latest": newest checkpoint in output_dir; or a checkpoint path

    def _errors(self, recipe: Recipe) -> list[tuple[str, str]]:
        errs = []
        if not self.output_dir:
            errs.append(("output_dir", "is empty; give a directory for checkpoints and logs"))
        for name in ("max_steps", "per_device_batch_size", "grad_accum", "log_every", "eval_batches", "keep_last"):
            if getattr(self, name) < 1:
                errs.append((name, f"must be a positive integer, got {getattr(self, name)}"))
        for name in ("warmup_steps", "eval_every", "save_every", "seed"):
            if getattr(self, name) < 0:
                errs.append((name, f"must be >= 0, got {getattr(self, name)}"))
        if self.lr <= 0:
            errs.append(("lr", f"must be > 0, got {self.lr}"))
        if self.weight_decay < 0:
            errs.append(("weight_decay", f"must be >= 0, got {self.weight_decay}"))
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            errs.append(("max_grad_norm", f"must be >= 0 or null, got {self.max_grad_norm}"))
        if self.resume == "":
            errs.append(("resume", 'is empty; use false, true / "latest", or a checkpoint directory'))
        return errs


@dataclass
class DeepSpeedConfig:
    """DeepSpeed ZeRO through accelerate. config and zero_stage both null: no DeepSpeed."""

    config: str | None = None  # a JSON from deepspeed_configs/ ("auto" fields filled by accelerate)
    zero_stage: int | None = None  # replaces the JSON's zero_optimization.stage when set

    @property
    def enabled(self) -> bool:
        return self.config is not None or self.zero_stage is not None

    def resolve(self) -> dict[str, Any] | None:
        """The dict for accelerate's DeepSpeedPlugin(hf_ds_config=...): the JSON (relative
        paths from the working directory) with zero_stage applied; None without DeepSpeed."""
        if not self.enabled:
            return None
        if self.config is None:
            ds: dict[str, Any] = {key: "auto" for key in _DS_AUTO}
            ds.update(bf16={"enabled": "auto"}, fp16={"enabled": "auto"})
        else:
            path = Path(self.config)
            if not path.is_file():
                raise RecipeError(f"deepspeed.config: {path} not found (relative paths start at the working directory)")
            ds = json.loads(path.read_text())
        if self.zero_stage is not None:
            ds.setdefault("zero_optimization", {})["stage"] = self.zero_stage
        return ds

    def _errors(self, recipe: Recipe) -> list[tuple[str, str]]:
        errs = []
        if self.zero_stage is not None and self.zero_stage not in (0, 1, 2, 3):
            errs.append(("zero_stage", f"must be 0, 1, 2, 3 or null, got {self.zero_stage}"))
        if self.config is not None and not self.config.endswith(".json"):
            errs.append(("config", f"must be a .json DeepSpeed config (see deepspeed_configs/), got {self.config!r}"))
        return errs


@dataclass
class EvalConfig:
    """Benchmark evaluation of checkpoints (generation with the XDLM sampler)."""

    tasks: list[str] = field(default_factory=lambda: ["mbpp"])
    steps: list[int] = field(default_factory=lambda: [32])  # sampler step budgets to evaluate
    gen_length: int = 256
    block_length: int = 256
    sampler: Literal["confidence", "xdlm", "ancestral"] = "confidence"  # see xdlm_tune.sampling
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 4  # prompts per sampler call
    ar_baseline: bool = True  # also score the original causal model with greedy AR decoding
    limit: int | None = None  # first N problems only; None: all
    data_dir: str | None = None  # local benchmark files (e.g. ../shared/data); None: the Hub

    def _errors(self, recipe: Recipe) -> list[tuple[str, str]]:
        errs = []
        if not self.steps or any(s < 1 for s in self.steps):
            errs.append(("steps", f"must be a non-empty list of positive integers, got {self.steps}"))
        if self.gen_length < 1:
            errs.append(("gen_length", f"must be a positive integer, got {self.gen_length}"))
        if self.block_length < 1 or self.gen_length % self.block_length:
            errs.append(("block_length", f"must be positive and divide gen_length ({self.gen_length}), got {self.block_length}"))
        if self.temperature < 0:
            errs.append(("temperature", f"must be >= 0, got {self.temperature}"))
        if not 0 < self.top_p <= 1:
            errs.append(("top_p", f"must be in (0, 1], got {self.top_p}"))
        if self.batch_size < 1:
            errs.append(("batch_size", f"must be a positive integer, got {self.batch_size}"))
        if self.limit is not None and self.limit < 1:
            errs.append(("limit", f"must be a positive integer or null, got {self.limit}"))
        return errs


@dataclass
class ExportConfig:
    """Writing a self-contained Hub folder (merged weights + sampler code)."""

    out_dir: str | None = None  # None: <training.output_dir>/export (LoRA is always merged)
    push_to_hub: str | None = None  # a Hub repo id to upload to; None: local only

    def _errors(self, recipe: Recipe) -> list[tuple[str, str]]:
        return []


@dataclass
class Recipe:
    """A whole recipe: one field per YAML section."""

    model: ModelConfig = field(default_factory=ModelConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def validate(self) -> Recipe:
        """Check values and cross-field rules; raise one RecipeError listing every problem."""
        errs = []
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            errs += [f"{f.name}.{key}: {msg}" for key, msg in section._errors(self)]
        if errs:
            raise RecipeError("invalid recipe:\n  " + "\n  ".join(errs))
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _enum_msg(value: Any, choices: tuple | list) -> str:
    hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    did = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}{did}"
