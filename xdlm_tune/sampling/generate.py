"""Batched diffusion samplers: one ``generate`` for evaluation, the CLI and exported models.

The answer region (``gen_length`` positions after the prompt) starts noisy and is denoised in
``steps`` model forward passes, block by block (semi-autoregressive when ``block_length`` <
``gen_length``). Samplers:

* ``ancestral``: exact XDLM reverse steps (``reverse_posterior``) on the time grid
  ``linspace(1, 1e-5, T + 1)`` of each block, from the stationary law; Gumbel-max in float32.
  The last step's logits also fill any position still masked (the clean-up), so it costs no
  extra forward pass.
* ``confidence``: LLaDA-style parallel decoding from all-mask: each step reveals an even share
  of the block's masked positions, most confident first.
* ``xdlm``: ``confidence`` plus revisions: decoded answer positions whose prediction changed are
  rewritten, most confident first, under the cumulative budget int(revealed * k / (1 - k)).

Temperature 0 means no noise anywhere (argmax decisions; ``ancestral`` then starts from all-mask
and takes the posterior's mode, which reveals nearly everything at its last step: use it with
temperature > 0), so a sample does not depend on its batch neighbours or on left padding. The prompt is never changed. No Python loop over samples.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..diffusion import make_schedule, reverse_posterior
from ..model.forward_args import accepted_kwargs, forward_owner

SAMPLERS = ("ancestral", "confidence", "xdlm")
ANCESTRAL_T_MIN = 1e-5


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of ids whose probability reaches ``top_p`` (others -> -inf). [..., V]."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p  # mass before this id already >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


def _gumbel(shape, generator, device, dtype) -> torch.Tensor:
    tiny = torch.finfo(dtype).tiny
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype).clamp_min(tiny)
    return -torch.log((-torch.log(u)).clamp_min(tiny))


def _rank_mask(score: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: the n[b] highest-scoring entries of each row (entries at -inf never chosen)."""
    order = score.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    return (rank < n[:, None]) & torch.isfinite(score)


def _check_args(prompt_ids, steps, gen_length, block_length, sampler, temperature, top_p, k, mask_id):
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r} is unknown: choose one of {', '.join(SAMPLERS)}")
    if prompt_ids.dim() != 2:
        raise ValueError(f"prompt_ids must be [B, P] token ids, got shape {tuple(prompt_ids.shape)}")
    if gen_length < 1:
        raise ValueError(f"gen_length={gen_length} must be >= 1")
    if not 1 <= steps <= gen_length:
        raise ValueError(f"steps={steps} must be in [1, gen_length={gen_length}]: one forward pass reveals at least one token")
    if gen_length % block_length:
        raise ValueError(f"block_length={block_length} must divide gen_length={gen_length}")
    n_blocks = gen_length // block_length
    if steps % n_blocks:
        raise ValueError(f"steps={steps} must be a multiple of the number of blocks ({n_blocks} = gen_length / block_length)")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1]")
    if not 0 <= k <= 1:
        raise ValueError(f"k={k} is outside [0, 1]")
    if bool((prompt_ids == mask_id).any()):
        raise ValueError("prompt_ids contain mask_id: the prompt must be clean text")
    return n_blocks


def model_logits_fn(model, *, shift: bool) -> Callable:
    """Wrap a transformers model as ``fn(ids [B, L], attention_mask [B, L] | None, keep) -> logits [B, keep, V]``.

    Only the last ``keep`` positions' logits are computed (``logits_to_keep``). With ``shift`` the
    logits for token i come from position i - 1, so one more position is kept and the last dropped.
    Only the keyword arguments the model's forward accepts are passed (remote code, e.g. LLaDA's
    original, takes neither ``logits_to_keep`` nor ``position_ids``); a padded batch for a model
    without ``position_ids`` is refused, since its padded rows' positions would shift.
    """

    def fn(ids, attention_mask, keep):
        kwargs = {"logits_to_keep": keep + int(shift)}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        kwargs = accepted_kwargs(model, **kwargs)
        if attention_mask is not None and "position_ids" not in kwargs:
            raise ValueError(
                f"{type(forward_owner(model)).__name__}.forward takes no position_ids, so a padded batch would "
                "shift the padded rows' positions: give prompts of equal length (or one at a time)"
            )
        out = model(input_ids=ids, **kwargs)
        logits = out.logits if hasattr(out, "logits") else out
        logits = logits[:, -(keep + int(shift)):]
        return logits[:, :-1] if shift else logits

    return fn


@torch.no_grad()
def generate(
    model,
    prompt_ids: torch.Tensor,
    *,
    steps: int,
    gen_length: int,
    block_length: int | None = None,
    sampler: str = "confidence",
    temperature: float = 0.0,
    top_p: float = 1.0,
    k: float = 0.1,
    mask_id: int,
    attention_mask: torch.Tensor | None = None,
    shift: bool = False,
    eos_id: int | None = None,
    stop_sequences: list[list[int]] | None = None,
    schedule: str = "linear",
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    vocab_size: int | None = None,
    logits_fn: Callable | None = None,
) -> torch.Tensor:
    """Denoise ``gen_length`` tokens after left-padded prompts: ids [B, P] -> [B, P + gen_length].

    ``steps`` is exactly the number of model forward passes. ``attention_mask`` [B, P] marks real
    prompt tokens (left padding). ``eos_id``: after the first EOS (or the end of the first stop
    sequence) the rest of the answer is filled with EOS. ``logits_fn(ids, attention_mask, keep)``
    replaces the model call (default ``model_logits_fn(model, shift=shift)``); ``vocab_size``
    (default: the model's output size) is needed by ``ancestral`` with k > 0, which walks the
    time grid of ``make_schedule(schedule, eps)``.
    """
    block_length = block_length or gen_length
    n_blocks = _check_args(prompt_ids, steps, gen_length, block_length, sampler, temperature, top_p, k, mask_id)
    fn = logits_fn or model_logits_fn(model, shift=shift)
    B, P = prompt_ids.shape
    device = prompt_ids.device
    if attention_mask is not None and bool((attention_mask == 1).all()):
        attention_mask = None  # no padding: let attention take its unmasked fast path
    full_mask = None if attention_mask is None else torch.cat(
        [attention_mask.long(), torch.ones(B, gen_length, dtype=torch.long, device=device)], 1)

    x = torch.cat([prompt_ids.long(), torch.full((B, gen_length), mask_id, dtype=torch.long, device=device)], 1)
    if sampler == "ancestral" and k > 0 and temperature > 0:  # the state at t = 1: the stationary law pi
        V = vocab_size or _model_vocab_size(model)
        uniform = torch.rand((B, gen_length), generator=generator, device=device) < k
        noise = torch.randint(0, V, (B, gen_length), generator=generator, device=device)
        x[:, P:] = torch.where(uniform, noise, x[:, P:])
    steps_per_block = steps // n_blocks
    sched = make_schedule(schedule, eps)
    ts = torch.linspace(1.0, ANCESTRAL_T_MIN, steps_per_block + 1, dtype=torch.float64)
    revealed = torch.zeros(B, dtype=torch.long, device=device)  # xdlm: answer tokens revealed so far
    edits = torch.zeros(B, dtype=torch.long, device=device)     # xdlm: revisions made so far

    for blk in range(n_blocks):
        lo, hi = P + blk * block_length, P + (blk + 1) * block_length
        # xdlm may revise any decoded answer position before the block end; others see the block.
        r_lo = P if sampler == "xdlm" else lo
        in_block = torch.arange(r_lo, hi, device=device) >= lo  # [R]
        n_masked = torch.full((B,), block_length, device=device)
        for j in range(steps_per_block):
            logits = fn(x, full_mask, P + gen_length - r_lo)[:, : hi - r_lo].float()  # [B, R, V]
            logits[..., mask_id] = -math.inf
            if temperature > 0:
                logits = top_p_filter(logits / temperature, top_p)
            region = x[:, r_lo:hi]
            if sampler == "ancestral":
                x[:, lo:hi] = _ancestral_step(logits, region, ts[j], ts[j + 1], j == steps_per_block - 1,
                                              temperature, k, mask_id, sched, generator)
                continue
            if temperature > 0:  # Gumbel-max in float64 (as LLaDA), so rare ids are not lost to rounding
                pred = (logits.double() + _gumbel(logits.shape, generator, device, torch.float64)).argmax(-1)
            else:
                pred = logits.argmax(-1)
            conf = logits.softmax(-1).gather(-1, pred[..., None])[..., 0]  # [B, R]
            # An even share of the block's masked positions per step (the remainder goes first).
            left = steps_per_block - j
            n_reveal = n_masked // left + (n_masked % left > 0).long()
            is_masked = region == mask_id
            reveal = _rank_mask(conf.masked_fill(~(is_masked & in_block), -math.inf), n_reveal)
            new = torch.where(reveal, pred, region)
            n_masked = n_masked - reveal.sum(-1)
            revealed = revealed + reveal.sum(-1)
            if sampler == "xdlm" and k > 0:
                if k >= 1:
                    allowed = torch.full_like(edits, hi - r_lo)  # k / (1 - k) = inf: no budget
                else:  # the cumulative budget int(revealed * k / (1 - k)), in the same float order
                    allowed = ((revealed.double() * k / (1 - k)).floor().long() - edits).clamp(min=0)
                changed = ~is_masked & (pred != region)
                rewrite = _rank_mask(conf.masked_fill(~changed, -math.inf), allowed)
                new = torch.where(rewrite, pred, new)
                edits = edits + rewrite.sum(-1)
            x[:, r_lo:hi] = new

    if eos_id is not None:
        x[:, P:] = _fill_after_stop(x[:, P:], eos_id, stop_sequences or [])
    return x


def _ancestral_step(logits, block, t, s, last, temperature, k, mask_id, sched, generator):
    """One exact reverse step for the block: [B, block, V] logits, [B, block] state -> new state."""
    B = block.shape[0]
    a_t = sched.alpha(t.float().expand(B))
    a_s = sched.alpha(s.float().expand(B))
    if temperature == 0:  # x_theta = one-hot of the argmax; then the posterior's mode
        logits = torch.full_like(logits, -math.inf).scatter(-1, logits.argmax(-1, keepdim=True), 0.0)
    probs = reverse_posterior(logits, block, a_t, a_s, k=k, mask_id=mask_id)
    if temperature == 0:
        new = probs.argmax(-1)
    else:
        new = (probs.clamp_min(1e-30).log() + _gumbel(probs.shape, generator, probs.device, torch.float32)).argmax(-1)
    if last:  # clean-up: anything still masked takes the model's best guess from these logits
        new = torch.where(new == mask_id, logits.argmax(-1), new)
    return new


def _model_vocab_size(model) -> int:
    """The model's output size V (the output embedding's rows)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError("pass vocab_size=: it cannot be read from this model")
    return head.weight.shape[0]


def _fill_after_stop(answer: torch.Tensor, eos_id: int, stop_sequences: list[list[int]]) -> torch.Tensor:
    """[B, G]: everything after the first EOS, or after the end of the first stop sequence, becomes EOS."""
    B, G = answer.shape
    pos = torch.arange(G, device=answer.device)
    end = torch.where(answer == eos_id, pos, G).min(-1).values  # first EOS (inclusive)
    for seq in stop_sequences:
        n = len(seq)
        if n == 0 or n > G:
            continue
        windows = answer.unfold(1, n, 1)  # [B, G - n + 1, n]
        hit = (windows == torch.tensor(seq, device=answer.device)).all(-1)
        first = torch.where(hit, pos[: G - n + 1] + n - 1, G).min(-1).values  # its last token
        end = torch.minimum(end, first)
    return torch.where(pos[None] > end[:, None], torch.full_like(answer, eos_id), answer)
