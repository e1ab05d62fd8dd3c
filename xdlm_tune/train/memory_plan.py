"""Per-GPU memory of a training run, from the adapted model at its real size (torch only).

The model is the meta-device skeleton `xdlm-tune plan` builds (no weights): its parameters give
the weights, gradients and optimizer states exactly (dtypes and trainable flags as training has
them), and one decoder layer run forward on the meta device gives the activations autograd keeps
per token. Everything is bytes on one GPU:

  weights      frozen + trainable parameters as stored (nf4: 4-bit linear weights plus their
               quantization constants; the other parameters float32, as peft's kbit preparation
               leaves them); ZeRO-3 partitions them over the GPUs and gathers the largest module
  gradients    one per trainable parameter (ZeRO-2/3: the 16-bit and float32 partitions)
  optimizer    AdamW's two moments (ZeRO: plus the float32 master copy, partitioned); under
               DeepSpeed these come from DeepSpeed's own estimators when the run is 16-bit
  activations  what autograd saves for one micro-batch: every layer's saved tensors, or with
               gradient checkpointing one [B, L, H] input per layer plus one layer recomputed
  loss         the fused XDLM loss: its [chunk, V] float32 work buffers (diffusion.chunk_mib), and
               the hidden states and their gradient it keeps for backward
  backward     the gradients of one layer's activations while it back-propagates
  margin       CUDA context, the caching allocator's fragmentation: 5% of the total plus 0.75 GiB

The peak is the largest of three moments, each on top of the weights and optimizer states: the end
of the loss's forward (activations, the loss's buffers and what it keeps, a trainable head's
gradient), backward (the larger of what forward kept and the gradients: activations are freed as
the gradients appear; under ZeRO both, its gradient partitions being allocated at the first reduced
bucket; plus the backward workspace), and the optimizer step (gradients and AdamW's
temporaries).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

GiB = 2**30
MiB = 2**20
MARGIN_FRACTION, MARGIN_FIXED = 0.05, 0.75 * GiB
NF4_BITS = 4.127  # 4 bits + double-quantized absmax (8 bits per 64 weights, float32 per 256 blocks)


@dataclass
class RunShape:
    """What the recipe and the machines decide (everything but the model)."""

    micro_batch: int
    seq_len: int
    grad_accum: int = 1
    gpus_per_node: int = 1
    nodes: int = 1
    zero_stage: int | None = None  # None: no DeepSpeed
    offload_optimizer: bool = False
    offload_params: bool = False
    gradient_checkpointing: bool = False
    half: bool = False  # bf16 / fp16 mixed precision
    quantization: str | None = None  # "nf4": QLoRA
    chunk_mib: float = 64.0
    foreach: bool = True  # AdamW's multi-tensor path (the default on CUDA): one full-size temporary
    gpu_memory: float = 80 * GiB
    reduce_bucket: int = 0  # DeepSpeed reduce_bucket_size (elements)
    max_live_parameters: int = 10**9  # ZeRO-3 stage3_max_live_parameters (elements)

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch * self.seq_len * self.grad_accum * self.gpus


@dataclass
class ModelProfile:
    """What the adapted meta model says, independent of the run shape."""

    total: int
    trainable: int
    frozen_bytes: int  # as stored (16/32-bit)
    trainable_bytes: int
    frozen_elements: int
    frozen_linear: int  # frozen elements in decoder linear layers (what nf4 quantizes)
    largest_module: int  # elements of the largest module's own parameters (DeepSpeed's "largest layer")
    largest_trainable_bytes: int
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    head_trainable: bool
    act_bytes: int  # activation element size in the profiled run
    layer_saved_per_token: float  # bytes autograd keeps per token in one decoder layer
    lora_modules: dict[str, int] = field(default_factory=dict)  # short name -> modules per layer


@dataclass
class Estimate:
    terms: dict[str, int]  # bytes per GPU
    peak: int  # before the margin
    total: int  # with the margin
    budget: int
    # Bytes above the weights and optimizer states at three moments of a step: "kept" (start of
    # backward), "forward" (the loss's peak), "backward", "step" (the optimizer's).
    phases: dict[str, int] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.total <= self.budget


# --------------------------------------------------------------------------- the model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder layers (the longest ModuleList)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no list of decoder layers")
    return max(lists, key=len)


def profile_model(model: nn.Module, *, seq_len: int, half: bool = False) -> ModelProfile:
    """Count `model`'s parameters and measure one layer's saved activations per token (meta device).

    `half`: DeepSpeed casts the whole module to 16 bits (LoRA adapters included) before training;
    the profile then counts the parameters and runs the layer in that precision."""
    from ..model.common import unwrap

    hf = unwrap(model)
    head = hf.get_output_embeddings()
    # The head's own weight (not PEFT's trainable mask row beside it): a full fine-tune trains it.
    head_params = (
        {id(p) for n, p in head.named_parameters() if "trainable_tokens" not in n and "lora_" not in n}
        if head is not None
        else set()
    )
    layers = decoder_layers(hf)
    in_layers = {id(p) for p in layers.parameters()}
    seen: set[int] = set()
    total = trainable = frozen_bytes = trainable_bytes = frozen_linear = frozen_elements = largest_tb = 0
    head_trainable = False
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        size = 2 if half and p.is_floating_point() else p.element_size()
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
            trainable_bytes += n * size
            largest_tb = max(largest_tb, n * size)
            head_trainable |= id(p) in head_params
        else:
            frozen_bytes += n * size
            frozen_elements += n
            if id(p) in in_layers and p.dim() == 2 and "lora_" not in name:
                frozen_linear += n
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    cfg = hf.config
    hidden = hf.get_input_embeddings().weight.shape[1]
    vocab = head.weight.shape[0] if head is not None else hf.get_input_embeddings().weight.shape[0]
    dtype = torch.bfloat16 if half else next(layers.parameters()).dtype
    saved = _layer_saved_bytes(hf, layers[0], hidden, seq_len, dtype)
    lora: dict[str, int] = {}
    for name, module in layers[0].named_modules():
        if hasattr(module, "lora_A") and len(getattr(module, "lora_A", {})):
            short = name.rsplit(".", 1)[-1]
            lora[short] = lora.get(short, 0) + 1
    return ModelProfile(
        total=total,
        trainable=trainable,
        frozen_bytes=frozen_bytes,
        frozen_elements=frozen_elements,
        trainable_bytes=trainable_bytes,
        frozen_linear=frozen_linear,
        largest_module=largest,
        largest_trainable_bytes=largest_tb,
        layers=len(layers),
        hidden=hidden,
        intermediate=int(getattr(cfg, "intermediate_size", 4 * hidden)),
        vocab=vocab,
        head_trainable=head_trainable,
        act_bytes=torch.empty((), dtype=dtype).element_size(),
        layer_saved_per_token=saved / seq_len,
        lora_modules=lora,
    )


class _FlashSDPA(torch.autograd.Function):
    """What a fused attention kernel (flash / memory-efficient, CUDA or CPU) keeps for backward:
    q, k, v, the output and a float32 log-sum-exp per head and query; never the [L, L] scores."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: the profile only counts what forward saves
        raise NotImplementedError


@contextlib.contextmanager
def _fused_attention():
    original = torch.nn.functional.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return _FlashSDPA.apply(q, k, v)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def _layer_saved_bytes(hf: nn.Module, layer: nn.Module, hidden: int, seq_len: int, dtype: torch.dtype) -> int:
    """Bytes autograd saves when `layer` runs forward on one [1, seq_len, hidden] input (meta device,
    training mode, dropout on, checkpointing off); the parameters themselves are not counted."""
    params = {p.untyped_storage()._cdata for p in hf.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            saved[storage._cdata] = storage.nbytes()
        return t

    was_training = layer.training
    checkpointing = getattr(layer, "gradient_checkpointing", None)
    layer.train()
    if checkpointing is not None:
        layer.gradient_checkpointing = False
    try:
        x = torch.empty(1, seq_len, hidden, dtype=dtype, device="meta", requires_grad=True)
        pos = torch.arange(seq_len, device="meta")[None]
        kwargs = {"attention_mask": None, "position_ids": pos}
        rotary = getattr(getattr(hf, "model", hf), "rotary_emb", None)
        if rotary is not None:
            cos, sin = rotary(x, pos)
            kwargs["position_embeddings"] = (cos.to(dtype), sin.to(dtype))
        casts = _cast_parameters(layer, dtype)
        with _fused_attention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x, **kwargs)
        for p, old in casts:
            p.data = old
    finally:
        layer.train(was_training)
        if checkpointing is not None:
            layer.gradient_checkpointing = checkpointing
    return sum(saved.values())


def _cast_parameters(layer: nn.Module, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cast the layer's floating parameters to `dtype` in place (meta: free); returns what to restore."""
    casts = []
    for p in layer.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            casts.append((p, p.data))
            p.data = p.data.to(dtype)
    return casts


# --------------------------------------------------------------------------- the estimate


def estimate(profile: ModelProfile, shape: RunShape) -> Estimate:
    """Per-GPU bytes of `shape` on the profiled model, term by term."""
    p = profile
    t = {}
    weights, grads, optim, temp = _model_states(p, shape)
    t["weights"], t["gradients"], t["optimizer states"] = weights, grads, optim
    a = p.act_bytes if not shape.half else 2
    tokens = shape.micro_batch * shape.seq_len
    layer = p.layer_saved_per_token * tokens * (a / p.act_bytes)
    # Checkpointing keeps each layer's input; backward recomputes one layer at a time.
    recompute = layer if shape.gradient_checkpointing else 0
    if shape.gradient_checkpointing:
        acts = p.layers * tokens * p.hidden * a + layer
    else:
        acts = p.layers * layer
    # Outside the layers: the final norm (float32 upcast + output) and the embedding output.
    acts += tokens * p.hidden * (4 + 2 * a)
    t["activations"] = int(acts)
    t["loss buffers"], t["loss kept"] = _loss_bytes(p, tokens, a, shape.chunk_mib)
    t["backward"] = int(tokens * (2 * p.intermediate + 2 * p.hidden) * a)
    t["optimizer step temporaries"] = temp
    states = weights + optim
    # A trainable head gets its gradient inside the loss's forward; the others appear during
    # backward while the activations they need are freed, so the peak holds the larger of the two.
    early = min(grads, p.vocab * p.hidden * (2 if shape.half else p.act_bytes)) if p.head_trainable else 0
    # ZeRO-3 gathers each module's parameters for its forward and keeps them while they stay within
    # stage3_max_live_parameters (the shipped configs: 1e9 elements), beyond DeepSpeed's largest layer.
    gathered = 0
    if shape.zero_stage == 3:
        pb = 2 if shape.half else 4
        gathered = max(0, min(p.total, shape.max_live_parameters) * pb - 4 * p.largest_module)
    if shape.zero_stage == 3:
        t["ZeRO-3 gathered parameters"] = int(gathered)
    kept = t["activations"] - recompute + t["loss kept"] + gathered
    forward_phase = states + kept + t["loss buffers"] + early
    if shape.zero_stage is None:
        backward_phase = states + max(kept + early, grads) + recompute + t["backward"]
    else:  # ZeRO's gradient partitions exist from the first reduced bucket on, beside the activations
        backward_phase = states + kept + early + grads + recompute + t["backward"]
    step_phase = states + grads + temp
    peak = max(forward_phase, backward_phase, step_phase)
    margin = int(MARGIN_FRACTION * peak + MARGIN_FIXED)
    t["margin"] = margin
    phases = {
        "kept": int(kept + early),
        "forward": int(forward_phase - states),
        "backward": int(backward_phase - states),
        "step": int(step_phase - states),
    }
    return Estimate(terms=t, peak=int(peak), total=int(peak + margin), budget=int(shape.gpu_memory), phases=phases)


def _model_states(p: ModelProfile, s: RunShape) -> tuple[int, int, int, int]:
    """(weights, gradients, optimizer states, optimizer-step temporaries) per GPU."""
    G = s.gpus
    frozen = p.frozen_bytes
    if s.quantization == "nf4":
        # The decoder's linear weights in 4 bits; every other frozen parameter float32 (kbit prep).
        frozen = int(p.frozen_linear * NF4_BITS / 8 + (p.frozen_elements - p.frozen_linear) * 4)
    T, tb = p.trainable, p.trainable_bytes
    if s.zero_stage is None:
        ddp_bucket = tb if G > 1 else 0
        # foreach: one sqrt(v) per parameter at once; the per-parameter loop: sqrt(v) and its quotient.
        temp = tb if s.foreach else 2 * p.largest_trainable_bytes
        return frozen + tb, tb + ddp_bucket, 2 * tb, temp
    pb = 2 if s.half else 4  # DeepSpeed's module dtype: 16-bit when bf16/fp16 is on
    if s.zero_stage == 3 and s.offload_params:
        weights = 4 * p.largest_module
    elif s.zero_stage == 3:
        weights = (frozen + T * pb) // G + 4 * p.largest_module
    else:
        weights = frozen + T * pb
    grads = (0 if s.offload_optimizer else T * (pb + (4 if s.half else 0)) // G) + s.reduce_bucket * pb
    optim = 0 if s.offload_optimizer else (4 + 8) * T // G
    temp = 0 if s.offload_optimizer else 4 * T // G  # one flat float32 partition: a full-size temporary
    ds = deepspeed_trainable_states(p, s)
    if ds is not None:  # DeepSpeed's own number for the trainable parameters' states (16-bit runs)
        frozen_part = 0 if s.offload_params else frozen // G if s.zero_stage == 3 else frozen
        weights = frozen_part + max(ds - grads - optim, 0)
    return int(weights), int(grads), int(optim), int(temp)


def deepspeed_trainable_states(p: ModelProfile, s: RunShape) -> int | None:
    """DeepSpeed's estimate_zero{2,3}_model_states_mem_needs (GPU bytes) for the trainable parameters
    (16-bit ZeRO-2/3 runs; None otherwise, or without DeepSpeed installed). It counts 16-bit
    parameters, their gradients, float32 master copies and Adam moments (ZeRO-3: plus the largest
    module gathered); the frozen weights are added by the caller."""
    if s.zero_stage not in (2, 3) or not s.half:
        return None
    try:
        with _quiet_deepspeed():
            if s.zero_stage == 2:
                from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

                _, gpu = estimate_zero2_model_states_mem_needs(
                    p.trainable, s.gpus_per_node, s.nodes, cpu_offload=s.offload_optimizer
                )
                return int(gpu)
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

            _, gpu, _ = estimate_zero3_model_states_mem_needs(
                p.trainable,
                p.largest_module,
                s.gpus_per_node,
                s.nodes,
                cpu_offload=s.offload_optimizer,
                cpu_offload_params=s.offload_params,
            )
            return int(gpu)
    except ImportError:
        return None


@contextlib.contextmanager
def _quiet_deepspeed():
    import logging

    level = logging.getLogger("DeepSpeed").level
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    try:
        yield
    finally:
        logging.getLogger("DeepSpeed").setLevel(level)


def _loss_bytes(p: ModelProfile, tokens: int, a: int, chunk_mib: float) -> tuple[int, int]:
    """The fused loss (torch path): (its work buffers while it runs: the reused [chunk, V] float32
    buffer, a quarter-size scratch, a copy in the 16-bit matmul dtype, or a trainable 16-bit head's
    second pass over vocabulary blocks; what it keeps until backward: the [N, H] hidden states and
    their gradient, a few float32 values per token)."""
    from ..diffusion.fused_loss import default_chunk_size

    rows = min(default_chunk_size(p.vocab, chunk_mib), tokens)
    buffers = rows * p.vocab * (4 * 1.25 + (a if a != 4 else 0))
    held = 2 * tokens * p.hidden * a + 8 * tokens * 4
    if p.head_trainable and a != 4:
        block = max(1, int(chunk_mib * MiB) // (4 * tokens))
        buffers = max(buffers, tokens * min(block, p.vocab) * (4 * 1.25 + a))
    return int(buffers), int(held)


# --------------------------------------------------------------------------- what to change


def suggestions(profile: ModelProfile, shape: RunShape) -> list[tuple[str, RunShape, Estimate]]:
    """The single changes that make a run that does not fit fit, least invasive first: (what, shape, estimate).

    Tried: ZeRO-3, gradient checkpointing, a smaller micro-batch (more accumulation keeps the
    tokens per step), QLoRA (LoRA runs only: a 4-bit base cannot be fully fine-tuned)."""
    tries: list[tuple[str, RunShape]] = []
    if shape.zero_stage != 3 and shape.quantization is None:
        tries.append(
            ("deepspeed.config=deepspeed_configs/zero3.json (ZeRO-3)", dataclasses.replace(shape, zero_stage=3))
        )
    if not shape.gradient_checkpointing:
        tries.append(("training.gradient_checkpointing=true", dataclasses.replace(shape, gradient_checkpointing=True)))
    b = shape.micro_batch
    while b > 1:
        b //= 2
        accum = math.ceil(shape.micro_batch * shape.grad_accum / b)
        tries.append(
            (
                f"training.per_device_batch_size={b} training.grad_accum={accum}",
                dataclasses.replace(shape, micro_batch=b, grad_accum=accum),
            )
        )
    if shape.quantization is None and profile.lora_modules and shape.zero_stage != 3:
        tries.append(("model.quantization=nf4 (QLoRA)", dataclasses.replace(shape, quantization="nf4")))
    if not shape.offload_optimizer:
        tries.append(
            (
                "deepspeed.config=deepspeed_configs/zero3_offload.json (ZeRO-3, parameters and optimizer on CPU)",
                dataclasses.replace(shape, zero_stage=3, offload_optimizer=True, offload_params=True),
            )
        )
    found = []
    for what, new in tries:
        est = estimate(profile, new)
        if est.fits:
            found.append((what, new, est))
    return found  # in the order tried: the least invasive change first
