"""The paper's sampler, exactly: the authors' per-block revision budget, revise_prompt, final_step,
and one typed settings object from recipe / CLI / export.

The oracle below is a plain per-row Python loop written from the rule as XDLM.md states it (the
authors' `generate_xdm` in MzeroMiko/LLaDA-XDLM `generate.py`, read there: per block, reveals
`M // S` per step with the remainder first; cumulative edit budget `int(acc_i * k / (1 - k))` in
float32, 0 at the block's first step, unused budget carried to the next step of the block only;
candidates are decoded positions up to the block end whose argmax differs, most confident first).
It shares no code with `generate`'s vectorised implementation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xdlm_tune.config import load_recipe
from xdlm_tune.config.sampler_args import settings_from_args
from xdlm_tune.evaluation.entry import build_parser
from xdlm_tune.sampling import SamplerSettings, generate
from xdlm_tune.sampling.generate import _revision_quota

V, MASK, PAD = 12, 11, 0


def sticky_logits(seed: int, flip: float = 0.2):
    """A scripted model: fresh random logits per call, but decoded tokens are usually confirmed
    (logit +20), so only some positions become revision candidates and budgets bind or carry."""
    calls = [0]

    def fn(ids, attention_mask, keep):
        g = torch.Generator().manual_seed(seed * 1000 + calls[0])
        calls[0] += 1
        B, L = ids.shape
        logits = 2.0 * torch.randn(B, L, V, generator=g)
        stick = (torch.rand(B, L, generator=g) > flip) & (ids != MASK)
        logits += 20.0 * torch.nn.functional.one_hot(ids.clamp(max=V - 1), V) * stick[..., None]
        return logits[:, L - keep :]

    return fn


def oracle(
    prompt: torch.Tensor,
    fn,
    *,
    steps: int,
    gen: int,
    block: int,
    k: float,
    revise_prompt: bool,
    prompt_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[list[int]]]:
    """The authors' rule, one row at a time; returns the tokens and each row's edits per step."""
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen), MASK)], 1)
    real = torch.ones(B, P + gen, dtype=torch.bool)
    if prompt_mask is not None:
        real[:, :P] = prompt_mask.bool()
    n_blocks, S = gen // block, steps // (gen // block)
    edits: list[list[int]] = [[] for _ in range(B)]
    for blk in range(n_blocks):
        lo, hi = P + blk * block, P + (blk + 1) * block
        n = [block // S + (1 if i < block % S else 0) for i in range(S)]
        acc = np.cumsum(n)
        budget = [int(np.float32(a) * np.float32(k) / np.float32(1 - k)) for a in acc]
        budget[0] = 0
        quota = [budget[0]] + [budget[i] - budget[i - 1] for i in range(1, S)]
        carry = [0] * B
        for i in range(S):
            logits = fn(x, None, P + gen).float()
            logits[..., MASK] = -float("inf")
            probs = logits.softmax(-1)
            new = x.clone()
            for b in range(B):
                pred = probs[b].argmax(-1)
                conf = [float(probs[b, j, pred[j]]) for j in range(P + gen)]
                masked = [j for j in range(lo, hi) if x[b, j] == MASK]
                for j in sorted(masked, key=lambda j: -conf[j])[: n[i]]:
                    new[b, j] = pred[j]
                cands = [
                    j
                    for j in range(hi)
                    if x[b, j] != MASK and real[b, j] and (j >= P or revise_prompt) and pred[j] != x[b, j]
                ]
                allowed = quota[i] + carry[b]
                chosen = sorted(cands, key=lambda j: -conf[j])[:allowed]
                carry[b] = allowed - len(chosen)
                for j in chosen:
                    new[b, j] = pred[j]
                edits[b].append(len(chosen))
            x = new
    return x, edits


def test_revision_quota_by_hand():
    # Block of 8 in 4 steps at k = 0.5: reveals 2 per step, acc 2 4 6 8, budget int(acc) = 2 4 6 8
    # forced to 0 first: 0 4 6 8, so new edits per step 0 4 2 2.
    assert _revision_quota(torch.tensor([2, 2, 2, 2]), 0.5).tolist() == [0, 4, 2, 2]
    # The paper's setting: 256 tokens in 32 steps at k = 0.1: acc = 8 i, budget int(8 i / 9).
    q = _revision_quota(torch.full((32,), 8), 0.1)
    assert q.cumsum(0).tolist() == [0] + [
        int(np.float32(8 * i) * np.float32(0.1) / np.float32(0.9)) for i in range(2, 33)
    ]
    # Uneven reveals (remainder first) at k = 0.3: 10 tokens in 4 steps -> 3 3 2 2.
    assert _revision_quota(torch.tensor([3, 3, 2, 2]), 0.3).cumsum(0).tolist() == [0, 2, 3, 4]


# (k, acc) where int(acc * k / (1 - k)) differs between float32 (the authors') and float64.
FLOAT32_SENSITIVE = [(0.2, 172), (0.15, 119), (1 / 3, 2)]


@pytest.mark.parametrize("k, acc", FLOAT32_SENSITIVE)
def test_revision_budget_is_the_authors_float32_rule_where_float64_differs(k, acc):
    """The cumulative budget at acc scheduled reveals, against a plain transcription of the
    authors' int(acc * k / (1 - k)) with every operand a numpy float32."""
    want = int(np.float32(acc) * np.float32(k) / np.float32(1 - k))
    assert want != int(acc * k / (1 - k))  # the pair really tells float32 from float64
    # Two steps: acc_0 = 1 (its budget is forced to 0), acc_1 = acc.
    assert _revision_quota(torch.tensor([1, acc - 1]), k).cumsum(0).tolist() == [0, want]
    # The same acc reached at the last of several steps (even shares: acc = steps * share).
    steps = min(s for s in range(2, acc + 1) if acc % s == 0)
    quota = _revision_quota(torch.full((steps,), acc // steps), k)
    assert int(quota.sum()) == want


@pytest.mark.parametrize("revise_prompt", [False, True])
@pytest.mark.parametrize("gen,block,steps,k", [(12, 12, 4, 0.3), (12, 4, 6, 0.3), (16, 4, 8, 0.5), (18, 9, 6, 0.1)])
def test_xdlm_budget_matches_the_authors_rule_step_by_step(gen, block, steps, k, revise_prompt):
    prompt = torch.randint(1, MASK, (3, 5), generator=torch.Generator().manual_seed(gen + steps))
    want, edits = oracle(prompt, sticky_logits(7), steps=steps, gen=gen, block=block, k=k, revise_prompt=revise_prompt)
    got = generate(
        None,
        prompt,
        steps=steps,
        gen_length=gen,
        block_length=block,
        sampler="xdlm",
        k=k,
        mask_id=MASK,
        revise_prompt=revise_prompt,
        logits_fn=sticky_logits(7),
    )
    assert torch.equal(got, want)
    assert sum(map(sum, edits)) > 0  # the trace exercised revisions
    if revise_prompt:
        assert not torch.equal(got[:, :5], prompt)  # prompt tokens were rewritten, as the authors do
    else:
        assert torch.equal(got[:, :5], prompt)


def test_budget_is_per_block_not_global():
    """Several blocks: the authors' per-block budget and a global one differ on this trace."""
    prompt = torch.randint(1, MASK, (4, 3), generator=torch.Generator().manual_seed(3))
    kw = dict(steps=8, gen=16, block=4, k=0.3, revise_prompt=False)
    per_block, edits = oracle(prompt, sticky_logits(11), **kw)
    got = generate(
        None,
        prompt,
        steps=8,
        gen_length=16,
        block_length=4,
        sampler="xdlm",
        k=0.3,
        mask_id=MASK,
        logits_fn=sticky_logits(11),
    )
    assert torch.equal(got, per_block)
    # Per block of 4 in 2 steps at k = 0.3 the budget is int(4 * 0.3 / 0.7) = 1 at the block's second
    # step and never more: at most one edit per block, whatever the earlier blocks left unused.
    assert all(e[0::2] == [0] * 4 and max(e) <= 1 for e in edits)


def test_revise_prompt_never_touches_padding():
    prompt = torch.randint(1, MASK, (2, 6), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :3] = 0
    prompt[1, :3] = PAD
    got = generate(
        None,
        prompt,
        steps=6,
        gen_length=6,
        sampler="xdlm",
        k=0.5,
        mask_id=MASK,
        revise_prompt=True,
        attention_mask=mask,
        logits_fn=sticky_logits(2, flip=0.9),
    )
    assert torch.equal(got[1, :3], prompt[1, :3])
    assert not torch.equal(got[:, :6], prompt)


def test_revision_at_temperature_needs_the_new_token_at_least_as_likely():
    """At temperature > 0 a sampled token less probable than the current one is never written over it."""

    def fn(ids, attention_mask, keep):  # every decoded token is already the model's favourite
        logits = torch.zeros(*ids.shape, V)
        logits.scatter_(-1, ids.clamp(max=V - 1)[..., None], 3.0)
        return logits[:, ids.shape[1] - keep :]

    prompt = torch.ones(16, 2, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    out = generate(
        None,
        prompt,
        steps=4,
        gen_length=8,
        sampler="xdlm",
        k=0.9,
        temperature=5.0,
        mask_id=MASK,
        generator=g,
        logits_fn=fn,
    )
    # The first step's reveals sample from the uniform-over-non-mask logits of masked positions...
    assert not (out == MASK).any()
    # ...and afterwards no decoded token is replaced: each would be less likely than the current one.
    g2 = torch.Generator().manual_seed(0)
    conf = generate(
        None,
        prompt,
        steps=4,
        gen_length=8,
        sampler="confidence",
        k=0.9,
        temperature=5.0,
        mask_id=MASK,
        generator=g2,
        logits_fn=fn,
    )
    assert torch.equal(out, conf)


@pytest.mark.parametrize("blocks", [1, 2])
def test_final_step_ancestral_adds_one_pass_per_block(blocks):
    calls = [0]

    def fn(ids, attention_mask, keep):
        calls[0] += 1
        return torch.randn(ids.shape[0], keep, V, generator=torch.Generator().manual_seed(calls[0]))

    prompt = torch.ones(3, 2, dtype=torch.long)
    kw = dict(
        steps=4,
        gen_length=8,
        block_length=8 // blocks,
        sampler="ancestral",
        k=0.3,
        temperature=1.0,
        mask_id=MASK,
        vocab_size=V,
        logits_fn=fn,
    )
    generate(None, prompt, generator=torch.Generator().manual_seed(0), **kw)
    assert calls[0] == 4
    calls[0] = 0
    out = generate(None, prompt, final_step="ancestral", generator=torch.Generator().manual_seed(0), **kw)
    assert calls[0] == 4 + blocks
    assert not (out == MASK).any()  # at alpha_s = 1 nothing stays masked


def test_settings_object_equals_keywords_and_rejects_unknown_names():
    fn = sticky_logits(4)
    prompt = torch.randint(1, MASK, (2, 3), generator=torch.Generator().manual_seed(1))
    s = SamplerSettings(steps=4, gen_length=8, block_length=4, sampler="xdlm", k=0.3)
    a = generate(None, prompt, s, mask_id=MASK, logits_fn=sticky_logits(4))
    b = generate(None, prompt, steps=4, gen_length=8, block_length=4, sampler="xdlm", k=0.3, mask_id=MASK, logits_fn=fn)
    assert torch.equal(a, b)
    with pytest.raises(TypeError, match="unknown sampler setting"):
        generate(None, prompt, s, mask_id=MASK, logits_fn=fn, stepz=3)
    with pytest.raises(ValueError, match="revise_prompt"):
        generate(None, prompt, s.replace(sampler="confidence", revise_prompt=True), mask_id=MASK, logits_fn=fn)
    with pytest.raises(ValueError, match="final_step"):
        generate(None, prompt, s, final_step="ancestral", mask_id=MASK, logits_fn=fn)


def test_default_sampler_follows_k():
    assert SamplerSettings(k=0.1).resolved_sampler == "xdlm"
    assert SamplerSettings(k=0.0).resolved_sampler == "confidence"
    assert SamplerSettings(k=0.1, sampler="confidence").resolved_sampler == "confidence"


@pytest.mark.parametrize("schedule", ["linear", "cosine", "loglinear"])
def test_recipe_and_cli_settings_carry_the_trained_schedule(schedule):
    """The bug this fixes: evaluation sampled every recipe on the linear schedule."""
    recipe = load_recipe(
        None,
        [
            f"diffusion.schedule={schedule}",
            "diffusion.eps=0.01",
            "diffusion.k=0.2",
            "eval.sampler=ancestral",
            "eval.final_step=ancestral",
        ],
    )
    s = recipe.sampler_settings()
    assert (s.schedule, s.eps, s.k, s.sampler, s.final_step) == (schedule, 0.01, 0.2, "ancestral", "ancestral")
    args = build_parser().parse_args(["--steps", "8", "--gen-length", "16"])
    cli, _ = settings_from_args(args, SamplerSettings(k=0.2, schedule=schedule, eps=0.01))
    assert (cli.schedule, cli.eps, cli.k, cli.resolved_sampler) == (schedule, 0.01, 0.2, "xdlm")


def test_ancestral_walks_the_schedule_it_is_given():
    def fn(ids, attention_mask, keep):
        return torch.randn(ids.shape[0], keep, V, generator=torch.Generator().manual_seed(int(ids.sum())))

    prompt = torch.ones(8, 2, dtype=torch.long)
    outs = {
        sch: generate(
            None,
            prompt,
            steps=4,
            gen_length=8,
            sampler="ancestral",
            k=0.3,
            temperature=1.0,
            schedule=sch,
            mask_id=MASK,
            vocab_size=V,
            logits_fn=fn,
            generator=torch.Generator().manual_seed(0),
        )
        for sch in ("linear", "cosine")
    }
    assert not torch.equal(outs["linear"], outs["cosine"])


def test_recipe_refuses_sampler_options_that_do_not_apply():
    from xdlm_tune.config import RecipeError

    with pytest.raises(RecipeError, match="eval.revise_prompt"):
        load_recipe(None, ["diffusion.k=0", "eval.revise_prompt=true"])
    with pytest.raises(RecipeError, match="eval.final_step"):
        load_recipe(None, ["eval.final_step=ancestral"])
