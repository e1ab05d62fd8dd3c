"""`xdlm-tune plan RECIPE`: the recipe's model at its real size on the meta device, checked and sized.

Builds the base from its config (no weights; model/real_size.py), adapts it with the training
code (bidirectional, mask token, LoRA / QLoRA, trainable mask row), and reports what a run would
meet only on a booked node: LoRA targets that do not exist, a mask id outside the vocabulary, the
DeepSpeed batch arithmetic, and the per-GPU memory (train/memory_plan.py) with a verdict and, when
it does not fit, the smallest single change that does.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass

from ..config import Recipe
from ..errors import UserError
from .memory_plan import Estimate, GiB, ModelProfile, RunShape, estimate, profile_model, suggestions

logger = logging.getLogger(__name__)

DEFAULT_GPU_GIB = 80.0


@dataclass
class Plan:
    recipe: Recipe
    built: object  # model.real_size.RealSize
    profile: ModelProfile
    shape: RunShape
    estimate: Estimate
    without_checkpointing: Estimate
    with_checkpointing: Estimate
    fixes: list  # (what, RunShape, Estimate), the least invasive first
    ds_batch: dict

    def verdict(self) -> str:
        """One line: fits or not, and the smallest change that fits."""
        e, s = self.estimate, self.shape
        where = f"{_gib(e.total)} of {_gib(e.budget)} GiB per GPU ({_setup(s)})"
        if e.fits:
            return f"plan: fits: {where}"
        fix = (
            f"; smallest change that fits: {self.fixes[0][0]} ({_gib(self.fixes[0][2].total)} GiB)"
            if self.fixes
            else ("; no single change fits: add GPUs (--gpus/--nodes) or lower data.seq_len")
        )
        return f"plan: does NOT fit: {where}{fix}"


def run_shape(
    recipe: Recipe,
    *,
    gpus: int,
    nodes: int,
    gpu_memory_gib: float,
    hidden: int | None = None,
    foreach: bool = True,
) -> RunShape:
    """The RunShape of `recipe` on `nodes` x `gpus` GPUs of `gpu_memory_gib` each (`foreach`: AdamW's
    multi-tensor path, torch's default on CUDA; a CPU run takes the per-parameter loop)."""
    from ..diffusion.fused_loss import DEFAULT_CHUNK_MIB

    t = recipe.training
    ds = recipe.deepspeed.resolve()
    zero = (ds or {}).get("zero_optimization", {}) if ds else {}
    stage = int(zero.get("stage", 0)) if ds is not None else None
    bucket = zero.get("reduce_bucket_size", "auto")
    return RunShape(
        micro_batch=t.per_device_batch_size,
        seq_len=recipe.data.seq_len,
        grad_accum=t.grad_accum,
        gpus_per_node=gpus,
        nodes=nodes,
        zero_stage=stage,
        offload_optimizer=_offloaded(zero.get("offload_optimizer")),
        offload_params=_offloaded(zero.get("offload_param")),
        gradient_checkpointing=t.gradient_checkpointing,
        half=ds is not None and t.mixed_precision in ("bf16", "fp16"),
        quantization=recipe.model.quantization,
        chunk_mib=recipe.diffusion.chunk_mib or DEFAULT_CHUNK_MIB,
        gpu_memory=gpu_memory_gib * GiB,
        reduce_bucket=int((hidden or 0) ** 2 if bucket == "auto" else float(bucket)) if ds is not None else 0,
        foreach=foreach,
        max_live_parameters=int(float(zero.get("stage3_max_live_parameters", 1e9))),
    )


def _offloaded(section) -> bool:
    return isinstance(section, dict) and section.get("device", "none") not in ("none", None)


def plan_recipe(
    recipe: Recipe,
    *,
    gpus: int = 1,
    nodes: int = 1,
    gpu_memory_gib: float = DEFAULT_GPU_GIB,
    foreach: bool = True,
) -> Plan:
    """Build, adapt and size `recipe`'s model at its real size; refuse what training would refuse.
    `foreach=False` sizes the run as it goes on a CPU (benchmarks/plan_memory.py)."""
    import dataclasses

    from ..model.prepare import model_options
    from ..model.real_size import RealSizeError, real_size_model

    m = recipe.model
    try:
        built = real_size_model(**model_options(recipe))
    except (RealSizeError, ValueError) as err:
        field = _field_of(str(err))
        raise UserError(
            f"{m.name_or_path} at its real size (a meta-device build, no weights): {field}{err}. Fix the recipe "
            "(or give the override on the command line) and run `xdlm-tune plan` again; a training run would "
            "stop at the same point after downloading the weights"
        ) from err
    first = run_shape(recipe, gpus=gpus, nodes=nodes, gpu_memory_gib=gpu_memory_gib)
    profile = profile_model(built.prepared.model, seq_len=first.seq_len, half=first.half)
    shape = run_shape(
        recipe, gpus=gpus, nodes=nodes, gpu_memory_gib=gpu_memory_gib, hidden=profile.hidden, foreach=foreach
    )
    est = estimate(profile, shape)
    return Plan(
        recipe=recipe,
        built=built,
        profile=profile,
        shape=shape,
        estimate=est,
        without_checkpointing=estimate(profile, dataclasses.replace(shape, gradient_checkpointing=False)),
        with_checkpointing=estimate(profile, dataclasses.replace(shape, gradient_checkpointing=True)),
        fixes=[] if est.fits else suggestions(profile, shape),
        ds_batch=_ds_batch(recipe, shape),
    )


def _field_of(message: str) -> str:
    if "target_modules" in message:
        return ""  # the message names lora.target_modules itself
    if "mask_id" in message or "mask_token" in message or "mask token" in message:
        return "adaptation.mask_id / adaptation.mask_token: "
    if "shift" in message:
        return "adaptation.shift: "
    return "model: "


def _ds_batch(recipe: Recipe, shape: RunShape) -> dict:
    """DeepSpeed's batch fields as the run fills them, and a train_batch_size the JSON fixes that disagrees."""
    ds = recipe.deepspeed.resolve()
    train_batch = shape.micro_batch * shape.grad_accum * shape.gpus
    fixed = (ds or {}).get("train_batch_size", "auto")
    if ds is not None and fixed != "auto" and int(fixed) != train_batch:
        raise UserError(
            f"deepspeed.config {recipe.deepspeed.config}: train_batch_size {fixed} but training.per_device_batch_size "
            f"{shape.micro_batch} x training.grad_accum {shape.grad_accum} x {shape.gpus} GPU(s) = {train_batch}; "
            'DeepSpeed refuses that at start. Set "train_batch_size": "auto" in the JSON (the recipe owns the batch)'
        )
    return {"micro": shape.micro_batch, "accum": shape.grad_accum, "gpus": shape.gpus, "train_batch": train_batch}


# --------------------------------------------------------------------------- the report


def _gib(n: float) -> str:
    return f"{n / GiB:.1f}"


def _setup(s: RunShape) -> str:
    parts = [f"ZeRO-{s.zero_stage}" if s.zero_stage is not None else "no DeepSpeed"]
    parts.append(f"{s.gpus} GPU(s)" + (f" on {s.nodes} nodes" if s.nodes > 1 else ""))
    parts.append(f"micro-batch {s.micro_batch} x {s.seq_len} tokens")
    parts.append("checkpointing" if s.gradient_checkpointing else "no checkpointing")
    if s.quantization:
        parts.append(s.quantization)
    return ", ".join(parts)


def render(plan: Plan) -> str:
    """The plan as the command prints it."""
    p, s, e, r = plan.profile, plan.shape, plan.estimate, plan.recipe
    prep, c = plan.built.prepared, plan.built.prepared.parameter_counts
    vocab_rows = p.vocab
    weights = s.quantization or r.model.dtype
    lines = [
        f"xdlm-tune plan: {r.model.name_or_path} ({prep.family}, {prep.kind}) at its real size, meta device",
        f"  config: {plan.built.source}",
        f"  tokenizer: {plan.built.tokenizer_source}",
        f"  layers {p.layers}, hidden {p.hidden}, MLP {p.intermediate}, vocabulary rows {vocab_rows:,}",
        f"  parameters: {c['total']:,} total, {c['trainable']:,} trainable ({100 * c['trainable'] / max(c['total'], 1):.3f}%): "
        f"LoRA {c['lora']:,}, mask/token rows {c['token_rows']:,}, other {c['other']:,}",
    ]
    if p.lora_modules:
        per_layer = ", ".join(f"{n} x{k}" if k > 1 else n for n, k in sorted(p.lora_modules.items()))
        lines.append(f"  LoRA per layer ({len(p.lora_modules)} modules x {p.layers} layers): {per_layer}")
    else:
        lines.append("  LoRA: none (full fine-tune: every weight trains)")
    lines.append(
        f"  mask id {prep.mask_id} ({prep.tokenizer.convert_ids_to_tokens(prep.mask_id) if prep.mask_id < len(prep.tokenizer) else 'no token'}) "
        f"inside the vocabulary (0..{vocab_rows - 1}); shift {prep.shift}"
    )
    b = plan.ds_batch
    lines.append(
        f"  batch: per-device {b['micro']} x grad-accum {b['accum']} x {b['gpus']} GPU(s) = {b['train_batch']} sequences"
        f"{' (DeepSpeed train_batch_size)' if s.zero_stage is not None else ''} x {s.seq_len} tokens = {s.tokens_per_step:,} tokens per optimizer step"
    )
    lines.append(f"  per-GPU memory, {_setup(s)}, weights {weights}:")
    for name, value in e.terms.items():
        lines.append(f"    {name:<28} {_gib(value):>7} GiB")
    lines.append(f"    {'total':<28} {_gib(e.total):>7} GiB of {_gib(e.budget)} GiB")
    ph = e.phases
    lines.append(
        f"    (the total is the step's largest moment plus the margin, not the sum: weights + optimizer states + "
        f"{_gib(ph['forward'])} GiB in the loss's forward, {_gib(ph['backward'])} in backward, {_gib(ph['step'])} in "
        "the optimizer step)"
    )
    lines.append(
        f"  activations per micro-batch: {_gib(plan.without_checkpointing.terms['activations'])} GiB without gradient "
        f"checkpointing, {_gib(plan.with_checkpointing.terms['activations'])} GiB with"
    )
    lines.append("  " + plan.verdict().replace("plan: ", "verdict: "))
    if plan.fixes:
        lines.append("  changes that fit (one at a time, the least invasive first):")
        for what, _, est in plan.fixes:
            lines.append(f"    {what}: {_gib(est.total)} GiB")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the command


def preflight(recipe: Recipe, *, force: bool = False, dry_run: bool = False, quiet: bool = False) -> str | bool:
    """The plan's verdict line at the start of a run (main process); False when the run cannot fit on
    the detected GPUs and `force` is off. A recipe the real-size build refuses raises UserError; a base
    whose config is unavailable offline only skips the check. `quiet`: return the line (or "")
    instead of printing it."""
    from ..model.real_size import BaseConfigUnavailable

    per_node, nodes, memory = detected_gpus()
    main = os.environ.get("RANK", "0") == "0"
    try:
        plan = plan_recipe(recipe, gpus=per_node, nodes=nodes, gpu_memory_gib=memory or DEFAULT_GPU_GIB)
    except UserError as err:
        if isinstance(err.__cause__, BaseConfigUnavailable):
            logger.warning("real-size plan skipped: %s", err.__cause__)
            return "" if quiet else True
        raise
    gpus = "the detected GPUs" if memory else f"{DEFAULT_GPU_GIB:g} GiB GPUs (none detected)"
    what = "real size" if dry_run else "this launch"
    line = f"{plan.verdict()} [{what}, {gpus}; details: xdlm-tune plan]"
    if quiet:
        return line if main else ""
    if main:
        print(line, flush=True)
    if plan.estimate.fits or force:
        return True
    if main:
        print(
            f"xdlm-tune train: the plan says this run does not fit: {_gib(plan.estimate.total)} GiB per GPU are "
            f"needed, {_gib(plan.estimate.budget)} GiB are there. "
            + (f"The smallest change that fits: {plan.fixes[0][0]}. " if plan.fixes else "")
            + "See `xdlm-tune plan RECIPE` for the breakdown; add --force to start anyway.",
            file=sys.stderr,
        )
    return False


def detected_gpus() -> tuple[int, int, float | None]:
    """(GPUs per node, nodes, GiB per GPU) of this launch: the launcher's variables, else this machine."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "0") or 0)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0)
    if not torch.cuda.is_available():
        return max(local or world, 1), max(world // max(local, 1), 1) if world else 1, None
    per_node = local or world or torch.cuda.device_count()
    nodes = max(world // per_node, 1) if world else 1
    index = int(os.environ.get("LOCAL_RANK", "0") or 0) % torch.cuda.device_count()
    return per_node, nodes, torch.cuda.get_device_properties(index).total_memory / GiB


def plan_main(argv: list[str] | None = None) -> int:
    """`xdlm-tune plan` (the CLI's registry calls this with the arguments after `plan`)."""
    from ..config import RecipeError, load_recipe
    from ..console import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="xdlm-tune plan",
        formatter_class=HelpFormatter,
        description="Check a recipe at its model's real size without weights (meta device, seconds, offline): "
        "LoRA targets, mask id, batch arithmetic, per-GPU memory and whether the run fits.",
        epilog="example:\n  xdlm-tune plan recipes/llama3-8b-xdlm-lora-zero3.yaml --gpus 8 --gpu-memory 80\n"
        "  xdlm-tune plan llada-8b-xdlm-cpt-zero2 training.per_device_batch_size=2 --gpus 8",
    )
    parser.add_argument("recipe", help="a YAML recipe (a shipped name works from any folder)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="change any recipe field")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs per node (default: this machine's, else 1)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    parser.add_argument(
        "--gpu-memory",
        type=float,
        default=None,
        help=f"GiB per GPU (default: this machine's, else {DEFAULT_GPU_GIB:g})",
    )
    args = parser.parse_intermixed_args(argv)
    from ..console import setup_logging

    setup_logging(logging.WARNING, "%(levelname)s %(name)s: %(message)s")
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        recipe.deepspeed.resolve()
    except RecipeError as e:
        print(f"xdlm-tune plan: {e}", file=sys.stderr)
        return 2
    per_node, _, memory = detected_gpus()
    gpus = args.gpus or per_node
    if gpus < 1 or args.nodes < 1:
        print("xdlm-tune plan: --gpus and --nodes must be at least 1", file=sys.stderr)
        return 2
    plan = plan_recipe(recipe, gpus=gpus, nodes=args.nodes, gpu_memory_gib=args.gpu_memory or memory or DEFAULT_GPU_GIB)
    print(render(plan))
    return 0 if plan.estimate.fits else 1
