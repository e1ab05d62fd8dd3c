"""Batched diffusion samplers: one ``generate`` for evaluation, the CLI and exported models.

The answer region (``gen_length`` positions after the prompt) starts noisy and is denoised in
``steps`` model forward passes, block by block (semi-autoregressive when ``block_length`` <
``gen_length``). Settings: ``SamplerSettings`` (config/sampler.py). Samplers:

* ``ancestral``: exact XDLM reverse steps (``reverse_posterior``) on the time grid
  ``linspace(1, 1e-5, T + 1)`` of each block, from the stationary law; Gumbel-max in float32.
  By default the last step's logits also fill any position still masked (T passes);
  ``final_step="ancestral"`` instead takes the authors' extra sampled step to alpha_s = 1
  (T + 1 passes per block).
* ``confidence``: LLaDA-style parallel decoding from all-mask (the authors' ``generate_mdm``): each
  step reveals an even share of the block's masked positions (the remainder first), most
  confident first; confidence is the model's untempered probability of its choice.
* ``xdlm``: ``confidence`` plus revisions (the authors' ``generate_xdm``): decoded positions up to
  the block end whose new choice differs from the current token (and, at temperature > 0, is at
  least as probable) are rewritten, most confident first, under a per-block budget: with acc_i
  the block's scheduled reveals up to step i, int(acc_i * k / (1 - k)) revisions by step i
  (float32, 0 at the block's first step); budget unused at a step carries to the next step of the
  same block only. Candidates are answer positions; ``revise_prompt=True`` adds the prompt's real
  tokens, as the authors' code does. No re-masking.

Speed options (``SamplerSettings``): ``threshold=tau`` (confidence / xdlm) reveals every masked
block position whose confidence reaches tau, at least one and at least the schedule's share so far
(so ``steps`` still bounds the passes); a sample whose block is all revealed is finished with it
(no more revisions there), and the block ends when every sample is. NFE per sample is reported
(``return_stats``). ``cache="prefix" | "dual"`` (cache.py): a block's first step is a full pass
that also records keys/values; later steps run only the block. Exactly when it equals the
uncached sampler: with ``refresh_every=1`` (every step a full pass; also whenever a block has one
step) the tokens are identical; on the tokens of the last full pass the cached logits equal the
full pass's (to float rounding; dual anywhere, prefix on the last block). Otherwise a cached step
differs in three ways: the held keys/values are those of the last full pass (bidirectional
attention: later reveals in the block would change them); ``prefix`` does not attend to the
masked positions after the block; ``xdlm`` judges positions outside the block by the last full
pass's choices. A revision of a held position (earlier blocks, or the prompt with
``revise_prompt``) marks the cache stale: ``refresh="step"`` makes the next step a full pass
(for the whole batch), ``refresh="block"`` waits for the next block start.

Differences from the authors' code, on purpose: the mask id is never predicted (its logit is
-inf, p(mask) = 0 as in XDLM.md; theirs keeps it in the softmax), padding is never revised, and
the batch is padding-exact. Temperature 0 means no noise anywhere (argmax decisions;
``ancestral`` then starts from all-mask and takes the posterior's mode, which reveals nearly
everything at its last step: use it with temperature > 0), so a sample does not depend on its
batch neighbours or on left padding. No Python loop over samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..config.sampler import SamplerSettings, with_overrides
from ..diffusion import make_schedule, reverse_posterior
from ..model.forward_args import accepted_kwargs, forward_owner
from .cache import BlockCache
from .rules import (
    ANCESTRAL_T_MIN,
    _choices,
    _gumbel,
    _rank_mask,
    _reveal_schedule,
    _revision_quota,
    top_p_filter,
)


def _check_prompt(prompt_ids: torch.Tensor, mask_id: int) -> None:
    if prompt_ids.dim() != 2:
        raise ValueError(f"prompt_ids must be [B, P] token ids, got shape {tuple(prompt_ids.shape)}")
    if bool((prompt_ids == mask_id).any()):
        raise ValueError("prompt_ids contain mask_id: the prompt must be clean text")


def model_logits_fn(model, *, shift: bool) -> Callable:
    """Wrap a transformers model as ``fn(ids [B, L], attention_mask [B, L] | None, keep, **model_kwargs) -> logits [B, keep, V]``.

    Only the last ``keep`` positions' logits are computed (``logits_to_keep``). With ``shift`` the
    logits for token i come from position i - 1, so one more position is kept and the last dropped;
    a row's first real token (nothing before it) uses its own position, as in training.
    Only the keyword arguments the model's forward accepts are passed (remote code, e.g. LLaDA's
    original, takes neither ``logits_to_keep`` nor ``position_ids``); a padded batch for a model
    without ``position_ids`` is refused, since its padded rows' positions would shift.
    """

    def fn(ids, attention_mask, keep, **model_kwargs):
        kwargs = dict(model_kwargs)
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        n = min(keep + int(shift), ids.shape[1])
        kwargs = accepted_kwargs(model, logits_to_keep=n, **kwargs)
        if attention_mask is not None and "position_ids" not in kwargs:
            raise ValueError(
                f"{type(forward_owner(model)).__name__}.forward takes no position_ids, so a padded batch would "
                "shift the padded rows' positions: give prompts of equal length (or one at a time)"
            )
        out = model(input_ids=ids, **kwargs)
        logits = out.logits if hasattr(out, "logits") else out
        logits = logits[:, -n:]
        if not shift:
            return logits
        if n == keep + 1:
            return logits[:, :-1]
        # keep covers the whole sequence (revise_prompt): position 0 and each row's first real token.
        shifted = torch.cat([logits[:, :1], logits[:, :-1]], 1)
        if attention_mask is None:
            return shifted
        real = attention_mask.bool()
        first_real = real & ~torch.cat([torch.zeros_like(real[:, :1]), real[:, :-1]], 1)
        return torch.where(first_real[..., None], logits, shifted)

    return fn


@dataclass
class SamplerStats:
    """What a ``generate`` call cost: ``nfe`` [B] forward-pass steps each sample needed (its own
    early stop under ``threshold``), ``full_passes`` / ``cached_passes`` over the batch, and
    ``tokens`` [B] positions each sample ran through the model (cached keys/values not counted)."""

    nfe: torch.Tensor
    tokens: torch.Tensor
    full_passes: int = 0
    cached_passes: int = 0

    def count(self, cached: bool, tokens: int, active: torch.Tensor | None) -> None:
        """One forward pass of ``tokens`` positions per sample; ``active`` [B]: the samples that
        still needed it (None: all)."""
        self.cached_passes += int(cached)
        self.full_passes += int(not cached)
        self.tokens += tokens
        self.nfe += 1 if active is None else active.long()


@torch.no_grad()
def generate(
    model,
    prompt_ids: torch.Tensor,
    settings: SamplerSettings | None = None,
    *,
    mask_id: int,
    attention_mask: torch.Tensor | None = None,
    shift: bool = False,
    eos_id: int | None = None,
    stop_sequences: list[list[int]] | None = None,
    generator: torch.Generator | None = None,
    vocab_size: int | None = None,
    logits_fn: Callable | None = None,
    return_stats: bool = False,
    **setting_overrides,
) -> torch.Tensor | tuple[torch.Tensor, SamplerStats]:
    """Denoise an answer after left-padded prompts: ids [B, P] -> [B, P + gen_length].

    ``settings`` (a ``SamplerSettings``) and/or its fields as keywords (``steps=32, sampler="xdlm",
    k=0.1, ...``; keywords win) say how. ``steps`` is exactly the number of model forward passes
    (plus one per block with ``final_step="ancestral"``; fewer with ``threshold`` when blocks finish
    early). ``attention_mask`` [B, P] marks real prompt tokens (left padding; any other padding,
    e.g. right, is moved to the left first and the prompt returned as given). ``eos_id``: after the
    first EOS (or the end of the first stop sequence) the rest of the answer is filled with EOS.
    ``logits_fn(ids, attention_mask, keep)`` replaces the model call (default
    ``model_logits_fn(model, shift=shift)``; not with a cache); ``vocab_size`` (default: the model's
    output size) is needed by ``ancestral`` with k > 0. ``return_stats``: also return a
    ``SamplerStats`` (NFE per sample, passes, tokens processed).
    """
    cfg = with_overrides(settings, setting_overrides).check()
    _check_prompt(prompt_ids, mask_id)
    if logits_fn is not None and cfg.cache != "none":
        raise ValueError(f"cache={cfg.cache!r} runs the model itself; it cannot be used with logits_fn")
    fn = logits_fn or model_logits_fn(model, shift=shift)
    prompt_ids, attention_mask, order = _aligned_prompt(prompt_ids, attention_mask)
    run = _start_run(model, fn, cfg, prompt_ids, attention_mask, mask_id=mask_id, shift=shift, generator=generator)
    x = _initial_sequence(run, prompt_ids, model, vocab_size)
    for blk in range(cfg.blocks):
        _denoise_block(run, x, blk)
    x = _finish(x, run.P, order, eos_id, stop_sequences)
    return (x, run.stats) if return_stats else x


@dataclass
class _SamplerRun:
    """What one ``generate`` call fixes before its first block: B prompts of P tokens, L = P +
    gen_length positions, the model call ``fn`` and its optional KV cache, and the counters."""

    cfg: SamplerSettings
    fn: Callable
    kv: BlockCache | None
    stats: SamplerStats
    mask_id: int
    generator: torch.Generator | None
    B: int
    P: int
    L: int
    full_mask: torch.Tensor | None  # [B, L] real positions (None: no padding)
    revisable: torch.Tensor  # [B, L] bool: positions xdlm may rewrite once decoded
    sched: object  # make_schedule(cfg.schedule, cfg.eps): the ancestral sampler walks it
    ts: torch.Tensor  # [S + 1] float64: the ancestral time grid of every block

    @property
    def sampler(self) -> str:
        return self.cfg.resolved_sampler

    @property
    def block_length(self) -> int:
        return self.cfg.gen_length // self.cfg.blocks

    @property
    def steps_per_block(self) -> int:
        return self.cfg.steps // self.cfg.blocks


def _aligned_prompt(
    prompt_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The prompts left-padded: (ids [B, P], mask [B, P] or None when nothing is padded, the
    ``left_align`` order to undo at the end or None)."""
    if attention_mask is not None and bool((attention_mask == 1).all()):
        attention_mask = None  # no padding: let attention take its unmasked fast path
    if attention_mask is None:
        return prompt_ids, None, None
    if attention_mask.shape != prompt_ids.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, prompt_ids {tuple(prompt_ids.shape)}"
        )
    return left_align(prompt_ids, attention_mask)


def _start_run(model, fn, cfg, prompt_ids, attention_mask, *, mask_id, shift, generator) -> _SamplerRun:
    """The mask over all L positions, the cache, the counters, the time grid and what xdlm may revise."""
    B, P = prompt_ids.shape
    gen_length, device = cfg.gen_length, prompt_ids.device
    L = P + gen_length
    full_mask = (
        None
        if attention_mask is None
        else torch.cat([attention_mask.long(), torch.ones(B, gen_length, dtype=torch.long, device=device)], 1)
    )
    kv = None if cfg.cache == "none" else BlockCache(model, cfg.cache, shift=shift, attention_mask=full_mask, length=L)
    stats = SamplerStats(
        nfe=torch.zeros(B, dtype=torch.long, device=device), tokens=torch.zeros(B, dtype=torch.long, device=device)
    )
    sched = make_schedule(cfg.schedule, cfg.eps)
    ts = torch.linspace(1.0, ANCESTRAL_T_MIN, cfg.steps // cfg.blocks + 1, dtype=torch.float64)
    # xdlm may rewrite decoded positions before the block end: the answer's, or with
    # revise_prompt every real token (the authors' rule); the other samplers see the block only.
    revisable = torch.ones(B, L, dtype=torch.bool, device=device)
    if full_mask is not None:
        revisable &= full_mask.bool()  # never padding
    if not cfg.revise_prompt:
        revisable[:, :P] = False
    return _SamplerRun(cfg, fn, kv, stats, mask_id, generator, B, P, L, full_mask, revisable, sched, ts)


def _initial_sequence(run: _SamplerRun, prompt_ids: torch.Tensor, model, vocab_size: int | None) -> torch.Tensor:
    """[B, L]: the prompt, then the answer at t = 1: all mask, or for ``ancestral`` with k > 0 and
    temperature > 0 the stationary law pi (each position uniform noise with probability k)."""
    cfg, (B, P), device = run.cfg, prompt_ids.shape, prompt_ids.device
    gen_length = cfg.gen_length
    x = torch.cat([prompt_ids.long(), torch.full((B, gen_length), run.mask_id, dtype=torch.long, device=device)], 1)
    if run.sampler == "ancestral" and cfg.k > 0 and cfg.temperature > 0:
        V = vocab_size or _model_vocab_size(model)
        uniform = torch.rand((B, gen_length), generator=run.generator, device=device) < cfg.k
        noise = torch.randint(0, V, (B, gen_length), generator=run.generator, device=device)
        x[:, P:] = torch.where(uniform, noise, x[:, P:])
    return x


@dataclass
class _BlockState:
    """One block x[:, lo:hi] and what one of its passes hands to the next. Each pass scores the
    region x[:, r_lo:hi] (R positions): the block, or for xdlm also the decoded positions before it."""

    lo: int
    hi: int
    r_lo: int
    in_block: torch.Tensor  # [R] bool
    may_revise: torch.Tensor  # [B, R] bool
    reveals: torch.Tensor  # [S] scheduled reveals per step
    quota: torch.Tensor | None  # [S] new revisions per step (None: no budget, or no revisions)
    passes: int
    # Positions [r_lo, r_lo + n_held) are outside what a cached step runs: their keys/values, and their
    # choices (pred, confidence, p(current)), come from the block's last full pass.
    n_held: int
    carry: torch.Tensor  # [B] revision budget left unused, for the next step of this block only
    held: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    stale: bool = False  # a held position was rewritten since the last full pass


def _denoise_block(run: _SamplerRun, x: torch.Tensor, blk: int) -> None:
    """Denoise block ``blk`` of ``x`` [B, L] in place, one model pass per step."""
    b = _open_block(run, blk)
    for j in range(b.passes):
        region = x[:, b.r_lo : b.hi]
        todo = ((region == run.mask_id) & b.in_block).any(-1)  # [B] rows with masked block positions
        if run.cfg.threshold is not None and not bool(todo.any()):
            break  # every block token is revealed: the block ends early
        cached, raw, logits = _pass_logits(run, b, x, j, todo)
        if run.sampler == "ancestral":
            x[:, b.lo : b.hi] = _ancestral_pass(run, j, logits, region)
        else:
            x[:, b.r_lo : b.hi] = _decode_pass(run, b, x, j, region, raw, logits, cached, todo)


def _open_block(run: _SamplerRun, blk: int) -> _BlockState:
    """Block ``blk``'s positions, its reveal schedule and revision budget, and its number of passes."""
    cfg, device, sampler = run.cfg, run.revisable.device, run.sampler
    lo, hi = run.P + blk * run.block_length, run.P + (blk + 1) * run.block_length
    r_lo = lo if sampler != "xdlm" else (0 if cfg.revise_prompt else run.P)
    reveals = _reveal_schedule(run.block_length, run.steps_per_block, device)  # [S]
    return _BlockState(
        lo=lo,
        hi=hi,
        r_lo=r_lo,
        in_block=torch.arange(r_lo, hi, device=device) >= lo,
        may_revise=run.revisable[:, r_lo:hi],
        reveals=reveals,
        quota=_revision_quota(reveals, cfg.k) if sampler == "xdlm" and 0 < cfg.k < 1 else None,
        passes=run.steps_per_block + int(sampler == "ancestral" and cfg.final_step == "ancestral"),
        n_held=(run.kv.query_start(lo) if run.kv is not None else 0) - r_lo,
        carry=torch.zeros(run.B, dtype=torch.long, device=device),
    )


def _pass_logits(
    run: _SamplerRun, b: _BlockState, x: torch.Tensor, j: int, todo: torch.Tensor
) -> tuple[bool, torch.Tensor, torch.Tensor]:
    """Pass j's model call: (cached, raw [B, R', V] float32 with the mask id at -inf, the logits
    sampled from: tempered and top-p filtered). A cached pass runs the block only (R' = block)."""
    cfg, kv = run.cfg, run.kv
    cached = kv is not None and j > 0 and not _refresh_due(j, cfg) and not (b.stale and cfg.refresh == "step")
    if cached:
        raw = kv.block_logits(x, b.lo, b.hi).float()  # [B, block, V]: the block only
    else:  # a full pass; it fills the cache when the next step can use it
        fill = kv is not None and j + 1 < b.passes and not _refresh_due(j + 1, cfg)
        raw = run.fn(x, run.full_mask, run.L - b.r_lo, **(kv.fill_kwargs() if fill else {}))[:, : b.hi - b.r_lo]
        raw = raw.float()
        if fill:
            kv.keep(b.lo, b.hi)
            b.stale = False
    tokens = kv.tokens_per_pass(b.lo, b.hi) if cached else run.L
    run.stats.count(cached, tokens, todo if cfg.threshold is not None else None)
    raw[..., run.mask_id] = -math.inf
    logits = top_p_filter(raw / cfg.temperature, cfg.top_p) if cfg.temperature > 0 else raw
    return cached, raw, logits


def _ancestral_pass(run: _SamplerRun, j: int, logits: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """Pass j of ``ancestral``: the block [B, block] after the reverse step ts[j] -> ts[j + 1] (after
    the grid: the extra step to alpha_s = 1); the last grid step fills what is still masked."""
    cfg, S = run.cfg, run.steps_per_block
    s = run.ts[j + 1] if j < S else None  # None: the extra step at alpha_s = 1
    cleanup = j == S - 1 and cfg.final_step == "none"
    t = run.ts[min(j, S)]
    return _ancestral_step(logits, block, t, s, cleanup, cfg.temperature, cfg.k, run.mask_id, run.sched, run.generator)


def _decode_pass(run, b, x, j, region, raw, logits, cached, todo) -> torch.Tensor:
    """Pass j of ``confidence`` / ``xdlm``: the region [B, R] after its reveals (and revisions)."""
    pred, conf, current = _pass_choices(run, b, x, raw, logits, cached)
    is_masked = region == run.mask_id
    new = _reveal(run, b, j, region, is_masked, pred, conf)
    if run.sampler == "xdlm" and run.cfg.k > 0:
        new = _revise(run, b, j, region, is_masked, new, (pred, conf, current), todo)
    return new


def _pass_choices(run, b, x, raw, logits, cached) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, R] each over the region: the choice, its confidence and p(current token) (``_choices``);
    on a cached pass those of the held positions are the last full pass's."""
    pred, conf, current = _choices(logits, raw, x[:, b.hi - raw.shape[1] : b.hi], run.cfg.temperature, run.generator)
    if cached and b.lo > b.r_lo:  # xdlm outside the block: the choices of the last full pass
        pred, conf, current = (torch.cat([h, c], 1) for h, c in zip(b.held, (pred, conf, current)))
    elif run.kv is not None and b.lo > b.r_lo:
        b.held = (pred[:, : b.lo - b.r_lo], conf[:, : b.lo - b.r_lo], current[:, : b.lo - b.r_lo])
    return pred, conf, current


def _reveal(run, b, j, region, is_masked, pred, conf) -> torch.Tensor:
    """[B, R]: ``region`` with its most confident masked block positions set to ``pred``: the
    schedule's share of step j, or with ``threshold`` all above it (at least 1 and the share so far)."""
    threshold = run.cfg.threshold
    if threshold is None:
        n_reveal = b.reveals[j].expand(run.B)
    else:  # all above the threshold; at least 1, and the schedule's share so far
        masked = is_masked & b.in_block
        behind = b.reveals[: j + 1].sum() - (run.block_length - masked.sum(-1))
        n_reveal = torch.maximum(((conf >= threshold) & masked).sum(-1), behind.clamp(min=1))
    reveal = _rank_mask(conf.masked_fill(~(is_masked & b.in_block), -math.inf), n_reveal)
    return torch.where(reveal, pred, region)


def _revise(run, b, j, region, is_masked, new, choices, todo) -> torch.Tensor:
    """[B, R]: ``new`` with xdlm's revisions of step j, under the block's budget (``b.carry`` updated;
    ``b.stale`` set when a held position is rewritten)."""
    pred, conf, current = choices
    # Candidates: decoded positions whose prediction differs and is at least as likely
    # as the current token (always so at temperature 0), most confident first.
    changed = ~is_masked & b.may_revise & (pred != region) & (conf >= current)
    if run.cfg.threshold is not None:
        changed &= todo[:, None]  # a row whose block is revealed is finished with it
    if b.quota is None:  # k = 1: k / (1 - k) = inf, no budget
        allowed = changed.sum(-1)
    else:
        allowed = b.quota[j] + b.carry
    rewrite = _rank_mask(conf.masked_fill(~changed, -math.inf), allowed)
    # Unused budget carries to the next step of this block only.
    b.carry = allowed - rewrite.sum(-1)
    new = torch.where(rewrite, pred, new)
    if run.kv is not None and b.n_held > 0 and bool(rewrite[:, : b.n_held].any()):
        b.stale = True  # a cached position was rewritten: its keys/values are out of date
    return new


def _finish(x: torch.Tensor, P: int, order: torch.Tensor | None, eos_id, stop_sequences) -> torch.Tensor:
    """[B, L]: EOS after the first stop in each answer, the prompt back in the caller's layout."""
    if eos_id is not None:
        x[:, P:] = _fill_after_stop(x[:, P:], eos_id, stop_sequences or [])
    if order is not None:  # the prompt back in the caller's layout (with any revisions)
        x[:, :P] = torch.empty_like(x[:, :P]).scatter_(1, order, x[:, :P])
    return x


def left_align(
    prompt_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Prompts [B, P] with padding anywhere (right-padded, as most tokenizers pad by default) as
    left-padded ones: (ids [B, P], mask [B, P], order [B, P] with aligned[:, j] = ids[:, order[:, j]],
    None when already left-padded). The answer follows the last prompt position, so a row's real
    tokens must end there; their order is kept."""
    mask = attention_mask.long()
    if bool((mask[:, 1:] >= mask[:, :-1]).all()):
        return prompt_ids, attention_mask, None
    order = torch.sort(mask, dim=1, stable=True).indices  # padding first, real tokens in their order
    return prompt_ids.gather(1, order), attention_mask.gather(1, order), order


def _refresh_due(j: int, cfg: SamplerSettings) -> bool:
    """A scheduled full pass at step j of a block (``refresh_every``)."""
    return cfg.refresh_every is not None and j % cfg.refresh_every == 0


def _ancestral_step(logits, block, t, s, last, temperature, k, mask_id, sched, generator):
    """One exact reverse step for the block: [B, block, V] logits, [B, block] state -> new state.

    ``s`` None is the authors' extra step to alpha_s = 1 (nothing stays masked); ``last``: fill what
    is still masked with the argmax of these logits.
    """
    B = block.shape[0]
    a_t = sched.alpha(t.float().expand(B))
    a_s = torch.ones_like(a_t) if s is None else sched.alpha(s.float().expand(B))
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
