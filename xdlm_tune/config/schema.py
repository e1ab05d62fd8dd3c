"""The recipe schema: one dataclass per YAML section, each with its own value checks.

`Recipe.validate()` collects every problem into one RecipeError whose lines start with
the key path (`diffusion.k: must be in [0, 1] ...`). Loading and overrides are in load.py.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .sampler import SETTING_NAMES, TRAINED, SamplerSettings

BUILTIN_SOURCES = ("python-stdlib", "mbpp-train")
_DS_AUTO = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")


class RecipeError(ValueError):
    """A recipe (file or override) that cannot be used; the message says how to fix it."""


def embeds_sampler_fields(*names: str, after: str | None = None):
    """Declare the `SamplerSettings` fields `names` on a recipe section (before @dataclass runs), inserted
    after its field `after` (None: first): their type, default and help are SamplerSettings' own, so
    the YAML stays flat while each option is defined once. `sampler_problems` checks them."""

    def wrap(cls: type) -> type:
        hints = typing.get_type_hints(SamplerSettings)
        defaults = {f.name: f.default for f in dataclasses.fields(SamplerSettings)}
        own = dict(cls.__dict__.get("__annotations__", {}))
        at = 0 if after is None else list(own).index(after) + 1
        items = list(own.items())
        cls.__annotations__ = dict(items[:at] + [(n, hints[n]) for n in names] + items[at:])
        for name in names:
            setattr(cls, name, defaults[name])
        cls.SAMPLER_FIELDS = names
        return cls

    return wrap


# --------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    """The base model and how to load it."""

    name_or_path: str = "smollm2-135m"
    """`smollm2-135m` (the embedded default), a Hub id, a local folder or a `.gguf` file."""
    kind: Literal["causal", "diffusion"] = "causal"
    """`causal`: made bidirectional and given a mask token; `diffusion`: LLaDA, Dream or an xdlm-tune export, loaded as
    it is."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """The dtype the base loads in (float32 on CPU)."""
    attn_implementation: str | None = "sdpa"
    """`sdpa`, `eager` or `flash_attention_2` (GPU); null lets transformers (or remote code) choose."""
    gguf_file: str | None = None
    """A `.gguf` file inside `name_or_path`, dequantized on load."""
    quantization: Literal["nf4"] | None = None
    """`nf4`: a 4-bit bitsandbytes base (QLoRA); needs LoRA."""
    trust_remote_code: bool = False
    """Allow the model repo's own modeling code (bases that need it)."""

    def _errors(self, recipe: Recipe) -> list[tuple[str, str]]:
        errs = []
        if not self.name_or_path:
            errs.append(("name_or_path", "is empty; give a Hub id or a local directory"))
        if self.quantization is not None and not recipe.lora.enabled:
            errs.append(
                (
                    "quantization",
                    "a quantized base can only be trained with LoRA; set lora.enabled: true or quantization: null",
                )
            )
        return errs


@dataclass
class AdaptationConfig:
    """Turning the base into a denoiser: mask token, shift, attention annealing."""

    mask_token: str | None = None
    """The token string to use as [MASK]; null: the tokenizer's mask token, else an unused reserved token, else a new
    `<|mask|>`."""
    mask_id: int | None = None
    """An explicit mask id (LLaDA: 126336); wins over `mask_token`."""
    shift: bool | None = None
    """Predict token i from the hidden state at i-1 (Dream, DiffuLLaMA); null: true for causal bases, read from an
    exported model's config for diffusion ones."""
    attention_annealing_steps: int = 0
    """Causal -> full attention over this many steps (DiffuLLaMA); 0: full at once."""

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
    """false: a full fine-tune (every weight trains)."""
    r: int = 16
    """The LoRA rank."""
    alpha: int = 32
    """LoRA scaling: alpha / r (alpha / sqrt(r) with `use_rslora`)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch, in [0, 1)."""
    target_modules: str | list[str] = "all-linear"
    """`all-linear` (every linear layer except the output head) or a list such as `[q_proj, v_proj]`."""
    use_rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(r)."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""
    train_mask_row: bool = True
    """Train the [MASK] embedding row (and its output row for untied heads) as PEFT trainable tokens; needed when the
    token is new."""

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
            errs.append(
                ("target_modules", 'is an empty list; name modules (e.g. [q_proj, v_proj]) or use "all-linear"')
            )
        return errs


@dataclass
@embeds_sampler_fields(*TRAINED)
class DiffusionConfig:
    """The XDLM objective: mixing ratio k, noise schedule, loss weighting."""

    loss_weighting: Literal["elbo", "unit"] = "elbo"
    """`elbo`: -dalpha/dt (1 - eps if linear); `unit`: 1 (the paper's 8B run)."""
    antithetic: bool = True
    """Stratified t across the global batch: a lower-variance loss."""
    chunk_size: int | None = None
    """Tokens per chunk in the fused loss; null: sized from `chunk_mib`."""
    chunk_mib: float | None = None
    """MiB per [chunk, V] float32 buffer of the fused loss (its memory budget); null: 64."""

    def _errors(self, recipe: Recipe) -> list[tuple[str, str]]:
        errs = [(name, msg) for name, msg in recipe.sampler_settings().problems() if name in TRAINED]
        if self.chunk_size is not None and self.chunk_size < 1:
            errs.append(("chunk_size", f"must be a positive integer or null, got {self.chunk_size}"))
        if self.chunk_mib is not None and not self.chunk_mib > 0:
            errs.append(("chunk_mib", f"must be > 0 (MiB per fused-loss buffer) or null, got {self.chunk_mib}"))
        return errs


@dataclass
class ColumnsConfig:
    """Column names in the source dataset."""

    text: str = "text"
    """pretrain: the text column."""
    prompt: str = "prompt"
    """sft: the prompt column."""
    answer: str = "answer"
    """sft: the answer column."""
    messages: str | None = None
    """sft with chat messages: the column of `[{role, content}, ...]`, rendered with the tokenizer's chat template."""


@dataclass
class DataConfig:
    """Where the training text comes from and how it becomes token blocks."""

    mode: Literal["pretrain", "sft"] = "pretrain"
    """`pretrain`: packed blocks; `sft`: prompt -> answer, the prompt never noised, no loss on prompt or padding."""
    source: str = "python-stdlib"
    """A Hub id, a local file or folder, or a builtin: `python-stdlib` (this Python's standard-library source),
    `mbpp-train` (MBPP task ids 601-974, from the copy shipped with xdlm-tune or `data_files`)."""
    subset: str | None = None
    """The Hub config name (e.g. fineweb-edu's `sample-10BT`)."""
    data_files: str | list[str] | None = None
    """Passed to datasets.load_dataset; mbpp-train: the path of an mbpp.jsonl (null: the shipped copy)."""
    split: str = "train"
    """The dataset split to train on."""
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    """Column names in the source dataset."""
    streaming: bool = False
    """Iterate without downloading everything (large corpora)."""
    seq_len: int = 256
    """The packed block length (pretrain) or the longest prompt + answer (sft)."""
    max_prompt_len: int | None = None
    """sft: left-truncate longer prompts to this many tokens."""
    pad_answer_with_eos: bool = True
    """sft: pad each answer with EOS up to seq_len and train on those EOS (LLaDA's SFT: the model learns
    where an answer ends), the loss averaged per answer; false: the padding carries no loss. Ignored in pretrain."""
    eval_holdout: int = 32
    """Source records held out for the held-out ELBO."""
    max_records: int | None = None
    """A cap on training records (files, rows); null: all."""
    num_proc: int | None = None
    """Processes for tokenization (not streaming)."""

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
                errs.append(
                    (
                        "max_prompt_len",
                        f"must be in [1, seq_len) to leave room for the answer, got {self.max_prompt_len} with seq_len {self.seq_len}",
                    )
                )
        if self.source == "python-stdlib" and self.mode == "sft":
            errs.append(("mode", "python-stdlib is raw code with no prompt/answer pairs; use mode: pretrain"))
        if self.source == "python-stdlib" and self.data_files:
            errs.append(
                ("data_files", "does not apply to python-stdlib (it reads this Python's own library); remove it")
            )
        return errs


@dataclass
class TrainingConfig:
    """The optimisation loop, logging and checkpoints."""

    output_dir: str = "runs/xdlm"
    """Checkpoints, metrics.jsonl, TensorBoard events and the resolved recipe."""
    max_steps: int = 300
    """Optimizer steps."""
    per_device_batch_size: int = 4
    """Sequences per process per micro-step."""
    grad_accum: int = 1
    """Micro-steps per optimizer step (global batch = per_device_batch_size x grad_accum x processes)."""
    lr: float = 5e-4
    """The peak learning rate (AdamW)."""
    warmup_steps: int = 20
    """Linear warmup from 0 to `lr` over this many steps."""
    lr_scheduler: Literal["cosine", "constant"] = "cosine"
    """After the warmup: `cosine` to 0 at `max_steps`, or `constant`."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices (not on biases or norm scales)."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping; null or 0: no clipping."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """`no`, `bf16` or `fp16` (accelerate's autocast or DeepSpeed's engine)."""
    gradient_checkpointing: bool = False
    """Non-reentrant activation checkpointing."""
    seed: int = 0
    """Seeds the data order, the noise and the initialisation."""
    log_every: int = 10
    """train/* metrics every N steps."""
    eval_every: int = 100
    """The held-out ELBO every N steps (also at step 0 and at the end); 0: never."""
    eval_batches: int = 8
    """Global batches of the held-out set per evaluation."""
    save_every: int = 100
    """A checkpoint every N steps (and at the end); 0: only at the end."""
    keep_last: int = 2
    """Checkpoints kept on disk."""
    resume: bool | str = False
    """false; true / `latest`: the newest checkpoint in `output_dir`; or a checkpoint path."""

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

    config: str | None = None
    """A DeepSpeed JSON (`deepspeed_configs/zero2.json`, `zero3.json`, `zero3_offload.json`; "auto" fields are filled
    by accelerate), or null."""
    zero_stage: int | None = None
    """Replaces the JSON's zero_optimization.stage when set (with `config` null: accelerate's defaults at this stage).
    Replaces the JSON's zero_optimization.stage when set (with `config` null: accelerate's defaults at this stage)."""

    @property
    def enabled(self) -> bool:
        return self.config is not None or self.zero_stage is not None

    def resolve(self) -> dict[str, Any] | None:
        """The dict for accelerate's DeepSpeedPlugin(hf_ds_config=...): the JSON (relative
        paths from the working directory, else a shipped config: `deepspeed_configs/zero2.json`
        works from any folder) with zero_stage applied; None without DeepSpeed."""
        if not self.enabled:
            return None
        if self.config is None:
            ds: dict[str, Any] = {key: "auto" for key in _DS_AUTO}
            ds.update(bf16={"enabled": "auto"}, fp16={"enabled": "auto"})
        else:
            from .shipped import find_file, names

            path = find_file(self.config, "deepspeed_configs")
            if path is None:
                raise RecipeError(
                    f"deepspeed.config: {self.config} not found (relative paths start at the working "
                    f"directory; shipped configs: {names('deepspeed_configs')})"
                )
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


EVAL_TASKS = ("mbpp", "humaneval", "genppl")


@dataclass
@embeds_sampler_fields(*(n for n in SETTING_NAMES if n not in (*TRAINED, "steps")), after="steps")
class EvalConfig:
    """Benchmark evaluation of checkpoints (generation with the XDLM sampler)."""

    tasks: list[str] = field(default_factory=lambda: ["mbpp"])
    """Benchmarks: `mbpp`, `humaneval`, and `genppl` (gen-PPL, entropy and compile rate of the untrained
    conversion and the trained model on held-out prefixes, under the base as AR judge: what training did)."""
    steps: list[int] = field(default_factory=lambda: [SamplerSettings.steps])
    """Sampler step budgets to evaluate (forward passes per answer); each one is `steps` of the sampler settings."""
    prompt_format: Literal["original", "opencompass", "lm-eval"] = "original"
    """MBPP prompt, answer extraction and scoring: `original`, `opencompass` (the paper's mbpp_gen_830460), `lm-eval`
    (lm-evaluation-harness's mbpp)."""
    batch_size: int = 4
    """Prompts per sampler call."""
    ar_baseline: bool = True
    """Also score the original causal model with greedy AR decoding."""
    genppl_samples: int = 8
    """genppl: held-out prefixes continued, one sample each (sampler ancestral, temperature 1, one block)."""
    genppl_prefix_tokens: int = 32
    """genppl: tokens of each held-out block kept as its prefix (SFT data: the prompt; 0: unconditional)."""
    limit: int | None = None
    """The first N problems only; null: all."""
    data_dir: str | None = None
    """A folder with your own benchmark files (mbpp.jsonl, HumanEval.jsonl.gz); null: the copies shipped with
    xdlm-tune (sha256-checked); `hub`: the Hub's current revision through `datasets`."""

    def _errors(self, recipe: Recipe) -> list[tuple[str, str]]:
        errs = []
        if not self.steps or any(s < 1 for s in self.steps):
            errs.append(("steps", f"must be a non-empty list of positive integers, got {self.steps}"))
        else:  # every budget with the section's sampler choices: SamplerSettings' own checks
            base = recipe.sampler_settings()
            for steps in self.steps:
                problems = dataclasses.replace(base, steps=steps).problems()
                errs += [(n, m) for n, m in problems if n not in TRAINED and (n, m) not in errs]
        if self.batch_size < 1:
            errs.append(("batch_size", f"must be a positive integer, got {self.batch_size}"))
        if self.limit is not None and self.limit < 1:
            errs.append(("limit", f"must be a positive integer or null, got {self.limit}"))
        unknown = [t for t in self.tasks if t not in EVAL_TASKS]
        if unknown or not self.tasks:
            errs.append(("tasks", f"must be a non-empty list of {', '.join(EVAL_TASKS)}, got {self.tasks}"))
        if self.genppl_samples < 1:
            errs.append(("genppl_samples", f"must be a positive integer, got {self.genppl_samples}"))
        if self.genppl_prefix_tokens < 0:
            errs.append(("genppl_prefix_tokens", f"must be >= 0, got {self.genppl_prefix_tokens}"))
        if "genppl" in self.tasks and recipe.model.kind != "causal":
            errs.append(("tasks", "genppl needs a causal base as its AR judge (model.kind is diffusion); drop it"))
        return errs


@dataclass
class ExportConfig:
    """Writing a self-contained Hub folder (merged weights + sampler code)."""

    out_dir: str | None = None
    """The export folder; null: `<training.output_dir>/export`. LoRA is always merged."""
    push_to_hub: str | None = None
    """A Hub repo id to upload the export to; null: local only."""

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

    def problems(self) -> list[tuple[str, str]]:
        """Every bad value and broken cross-field rule, as (key path, message)."""
        return [
            (f"{f.name}.{key}", msg)
            for f in dataclasses.fields(self)
            for key, msg in getattr(self, f.name)._errors(self)
        ]

    def validate(self) -> Recipe:
        """Check values and cross-field rules; raise one RecipeError listing every problem."""
        errs = [f"{key}: {msg}" for key, msg in self.problems()]
        if errs:
            raise RecipeError("invalid recipe:\n  " + "\n  ".join(errs))
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sampler_settings(self) -> SamplerSettings:
        """How this recipe samples: the `eval` section's sampler choices at its first budget, with
        k / schedule / eps as the `diffusion` section trains them (every consumer starts here)."""
        picked = {name: getattr(self.eval, name) for name in self.eval.SAMPLER_FIELDS}
        trained = {name: getattr(self.diffusion, name) for name in TRAINED}
        steps = self.eval.steps[0] if self.eval.steps else SamplerSettings.steps
        return SamplerSettings(steps=steps, **picked, **trained)


def _enum_msg(value: Any, choices: tuple | list) -> str:
    hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    did = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}{did}"
