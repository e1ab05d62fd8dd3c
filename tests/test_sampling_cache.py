"""KV cache (prefix / dual) and confidence-threshold decoding: exactness, refreshes, NFE."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model

from xdlm_tune.sampling import SAMPLERS, generate
from xdlm_tune.sampling.cache import BlockCache
from xdlm_tune.sampling.generate import model_logits_fn

MASK = 120


def bidirectional(family="llama", **overrides):
    m = tiny_model(family, **overrides)
    m.config.is_causal = False
    return m.eval()


@pytest.fixture(scope="module")
def model():
    return bidirectional()


class Recording(torch.nn.Module):
    """A PEFT-like wrapper (``get_base_model``) that records every forward pass's input ids."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def get_base_model(self):
        return self.model

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    def forward(self, **kw):
        self.calls.append(kw["input_ids"].clone())
        return self.model(**kw)


def padded(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    P = max(lengths)
    ids, mask = torch.zeros(len(lengths), P, dtype=torch.long), torch.zeros(len(lengths), P, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, P - n :], mask[i, P - n :] = torch.randint(3, 100, (n,), generator=g), 1
    return ids, mask


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("gen, block, steps", [(12, 4, 6), (12, 12, 4)])  # blocks that divide / cover the answer
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_refresh_every_step_equals_the_uncached_sampler(model, sampler, gen, block, steps, shift, cache):
    ids, mask = padded([6, 3, 5], seed=gen + steps)
    kw = dict(
        steps=steps,
        gen_length=gen,
        block_length=block,
        sampler=sampler,
        temperature=0.7,
        k=0.3,
        mask_id=MASK,
        attention_mask=mask,
        shift=shift,
        revise_prompt=sampler == "xdlm",
    )
    want = generate(model, ids, generator=torch.Generator().manual_seed(1), **kw)
    got, stats = generate(
        model, ids, cache=cache, refresh_every=1, return_stats=True, generator=torch.Generator().manual_seed(1), **kw
    )
    assert torch.equal(got, want)
    assert (stats.full_passes, stats.cached_passes) == (steps, 0)
    _, cached = generate(model, ids, cache=cache, return_stats=True, generator=torch.Generator().manual_seed(1), **kw)
    assert cached.full_passes + cached.cached_passes == steps and cached.cached_passes > 0
    assert cached.nfe.tolist() == [steps] * 3 and bool((cached.tokens < stats.tokens).all())


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("shift", [False, True])
def test_cached_block_pass_equals_the_full_pass(family, padding, shift):
    """Bidirectional attention over the cache, exact padding and positions: with the tokens the cache
    was filled from, dual's block logits equal the full pass's (any block), and so do prefix's on the
    last block (nothing after it). No padding is the path where transformers builds no mask at all:
    a causal mask sneaking in there would change the block's logits."""
    m = bidirectional(family, **({"sliding_window": None} if family == "mistral" else {}))
    P, G = 6, 12
    x = torch.randint(3, 100, (3, P + G), generator=torch.Generator().manual_seed(2))
    x[:, P + 5 :] = MASK
    mask = None
    if padding:
        mask = torch.ones_like(x)
        mask[1, :3], mask[2, :1] = 0, 0
    fn = model_logits_fn(m, shift=shift)
    for mode, lo, hi in [("dual", P, P + 4), ("dual", P + 4, P + 8), ("prefix", P + 8, P + G), ("dual", P + 8, P + G)]:
        kv = BlockCache(m, mode, shift=shift, attention_mask=mask, length=P + G)
        full = fn(x, mask, P + G - lo, **kv.fill_kwargs())[:, : hi - lo]
        kv.keep(lo, hi)
        torch.testing.assert_close(kv.block_logits(x, lo, hi), full, atol=2e-5, rtol=1e-5)
        plain = fn(x, mask, P + G - lo)[:, : hi - lo]  # recording the cache changes nothing
        assert torch.equal(full, plain)


def test_prefix_does_not_see_the_masked_tail_and_dual_does(model):
    P, G = 4, 12
    x = torch.randint(3, 100, (1, P + G), generator=torch.Generator().manual_seed(3))
    x[:, P + 4 :] = MASK
    fn = model_logits_fn(model, shift=False)
    logits = {}
    for mode in ("prefix", "dual"):
        kv = BlockCache(model, mode, shift=False, attention_mask=None, length=P + G)
        fn(x, None, G, **kv.fill_kwargs())
        kv.keep(P, P + 4)
        logits[mode] = kv.block_logits(x, P, P + 4)
    without_tail = fn(x[:, : P + 4], None, 4)  # prefix keys came from the full pass, so only close
    assert not torch.allclose(logits["prefix"], logits["dual"], atol=1e-3)
    assert (logits["prefix"] - without_tail).abs().max() < (logits["dual"] - without_tail).abs().max()


def _full_passes(calls, length):
    return [c for c in calls if c.shape[1] == length]


@pytest.mark.parametrize("revise_prompt", [False, True])
def test_a_revision_inside_the_cache_triggers_a_refresh(model, revise_prompt):
    """xdlm rewrites positions of earlier blocks (and of the prompt) whose keys/values are cached:
    with refresh="step" the next step is a full pass, with refresh="block" only block starts are."""
    ids, mask = padded([5, 3], seed=4)
    P, G, block, steps = ids.shape[1], 16, 4, 16
    kw = dict(
        steps=steps,
        gen_length=G,
        block_length=block,
        sampler="xdlm",
        k=0.5,
        temperature=0.0,
        mask_id=MASK,
        attention_mask=mask,
        cache="dual",
        revise_prompt=revise_prompt,
    )
    lazy = Recording(model)
    out_lazy, stats_lazy = generate(lazy, ids, refresh="block", return_stats=True, **kw)
    full_lazy = _full_passes(lazy.calls, P + G)
    assert len(lazy.calls) == steps and len(full_lazy) == stats_lazy.full_passes == G // block
    # Revisions happened inside the cache: tokens before the active block changed between block starts.
    assert any(
        not torch.equal(a[:, : P + i * block], b[:, : P + i * block])
        for i, (a, b) in enumerate(zip(full_lazy, full_lazy[1:]), start=1)
    )

    eager = Recording(model)
    _, stats = generate(eager, ids, return_stats=True, **kw)
    assert len(eager.calls) == steps == stats.full_passes + stats.cached_passes
    assert stats.full_passes > G // block  # refreshes, counted as forward passes
    # Each refresh inside a block follows a rewrite of a cached position: the tokens before the
    # block differ from those at the block's previous full pass.
    per_step = [(c.shape[1] == P + G, c) for c in eager.calls]
    for blk in range(G // block):
        lo = P + blk * block
        q_lo = lo  # shift is off: a cached step runs the block only
        calls = per_step[blk * (steps * block // G) : (blk + 1) * (steps * block // G)]
        assert calls[0][0]  # a block starts with a full pass
        last = calls[0][1]
        for is_full, c in calls[1:]:
            if is_full:
                assert not torch.equal(c[:, :q_lo], last[:, :q_lo])
                last = c


class Sequences(Recording):
    """Records, at every forward pass, the whole sequence the sampler holds: a cached step's
    ``input_ids`` is a slice (a view) of it, so the tokens it does not run are read from its base."""

    def forward(self, **kw):
        ids = kw["input_ids"]
        whole = ids if ids._base is None else ids._base
        self.calls.append((ids.shape[1], whole.clone()))
        return self.model(**kw)


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("revise_prompt", [False, True])
def test_every_rewrite_of_a_held_position_is_followed_by_a_full_pass(model, revise_prompt, shift):
    """refresh="step", exactly: within a block, step j > 0 is a full pass iff step j - 1 rewrote a
    position whose keys/values the cache holds (before the block's first query; with shift the
    position just before the block runs in the cached step itself). Blocks of 8 steps, so that a
    refresh is also followed by cached steps again (the cache is fresh after it)."""
    ids, mask = padded([5, 3], seed=4)
    P, G, block, steps = ids.shape[1], 16, 8, 16
    rec = Sequences(model)
    out = generate(
        rec,
        ids,
        steps=steps,
        gen_length=G,
        block_length=block,
        sampler="xdlm",
        k=0.5,
        temperature=0.0,
        mask_id=MASK,
        attention_mask=mask,
        cache="dual",
        refresh="step",
        shift=shift,
        revise_prompt=revise_prompt,
    )
    assert len(rec.calls) == steps and all(whole.shape[1] == P + G for _, whole in rec.calls)
    full = [n == P + G for n, _ in rec.calls]
    states = [whole for _, whole in rec.calls] + [out]  # the sequence entering each step, then the result
    per_block, r_lo = steps * block // G, 0 if revise_prompt else P
    want = []
    for j in range(steps):
        lo = P + (j // per_block) * block
        held = slice(r_lo, lo - int(shift))
        want.append(j % per_block == 0 or not torch.equal(states[j - 1][:, held], states[j][:, held]))
    assert full == want
    assert sum(want) > G // block  # refreshes happened...
    refreshed_then_cached = [j for j in range(steps - 1) if j % per_block and want[j] and not want[j + 1]]
    assert refreshed_then_cached  # ...and cached steps came after one


def test_threshold_reveals_at_least_one_per_step_and_stops_early(model):
    ids, mask = padded([5, 2, 4], seed=5)
    P, G, block, steps = ids.shape[1], 12, 4, 12
    kw = dict(steps=steps, gen_length=G, block_length=block, temperature=0.0, k=0.3, mask_id=MASK, attention_mask=mask)
    for sampler in ("confidence", "xdlm"):
        plain = generate(model, ids, sampler=sampler, **kw)
        # Nothing reaches probability 1: the schedule's share each step, so the plain sampler exactly.
        assert torch.equal(generate(model, ids, sampler=sampler, threshold=1.0, **kw), plain)
        rec = Recording(model)
        out, stats = generate(rec, ids, sampler=sampler, threshold=0.02, return_stats=True, **kw)
        assert not (out[:, P:] == MASK).any()
        states = [c[:, P:] for c in rec.calls] + [out[:, P:]]
        for before, after in zip(states, states[1:]):
            newly = ((before == MASK) & (after != MASK)).sum(-1)
            masked = (before == MASK).view(3, G // block, block).any(-1)  # [B, blocks]
            active = int(masked.any(0).long().argmax())  # the batch's active block: the first with work
            had = masked[:, active]
            assert bool(had.any()) and bool((newly[had] >= 1).all())
        assert len(rec.calls) < steps  # blocks ended early
        assert bool((stats.nfe <= len(rec.calls)).all()) and bool((stats.nfe >= G // block).all())
        # At temperature 0 a row does not depend on its neighbours, threshold or not.
        for i in range(3):
            n = int(mask[i].sum())
            alone, alone_stats = generate(
                model,
                ids[i : i + 1, P - n :],
                sampler=sampler,
                threshold=0.02,
                return_stats=True,
                **{**kw, "attention_mask": None},
            )
            assert torch.equal(out[i, P - n :], alone[0])
            assert int(alone_stats.nfe[0]) == int(stats.nfe[i])


def test_threshold_reveals_every_confident_position_at_once():
    G, V = 6, 10
    table = torch.zeros(G, V)
    for pos in range(G):
        table[pos, pos + 1] = 10.0 if pos in (1, 4) else 0.5  # p ~ 1 at positions 1 and 4, ~0.17 elsewhere
    seen = []

    def fn(x, mask, keep):
        seen.append(x[0, 1:].clone())
        return table[-keep:].expand(x.shape[0], -1, -1).clone()

    out, stats = generate(
        None,
        torch.tensor([[1]]),
        steps=6,
        gen_length=G,
        sampler="confidence",
        threshold=0.9,
        mask_id=9,
        logits_fn=fn,
        vocab_size=V,
        return_stats=True,
    )
    assert (seen[1] != 9).nonzero()[:, 0].tolist() == [1, 4]  # both above 0.9 at the first step
    assert out[0, 1:].tolist() == [p + 1 for p in range(G)]
    assert int(stats.nfe[0]) == len(seen) == 5  # 2, then one per step


def test_threshold_a_finished_row_neither_revises_nor_counts_passes():
    """Row 0 is confident everywhere and finishes its block at the first step; row 1 is never
    confident and takes every step. Row 0's model keeps preferring another token at its decoded
    positions: it must not be revised after it finished (its result is what it gets alone), and
    its NFE is 1, row 1's the full 4."""
    G, V, MASK_ID = 4, 10, 9

    def fn(x, mask, keep):
        logits = torch.zeros(x.shape[0], keep, V)
        for b in range(x.shape[0]):
            if int(x[b, 0]) != 1:
                continue  # flat: nothing reaches the threshold, the schedule's one per step
            for i in range(keep):
                pos = x.shape[1] - keep + i
                tok = int(x[b, pos])
                logits[b, i, (pos % 8) + 1 if tok == MASK_ID else (tok + 1) % 8] = 20.0
        return logits

    kw = dict(steps=4, gen_length=G, sampler="xdlm", k=0.5, threshold=0.9, mask_id=MASK_ID, vocab_size=V)
    alone, alone_stats = generate(None, torch.tensor([[1]]), logits_fn=fn, return_stats=True, **kw)
    assert alone[0, 1:].tolist() == [2, 3, 4, 5] and alone_stats.nfe.tolist() == [1]
    out, stats = generate(None, torch.tensor([[1], [2]]), logits_fn=fn, return_stats=True, **kw)
    assert torch.equal(out[0], alone[0])
    assert stats.nfe.tolist() == [1, 4] and not (out == MASK_ID).any()


def test_unsupported_models_and_bad_settings_are_named(model):
    prompt = torch.tensor([[5, 6, 7]])
    kw = dict(steps=4, gen_length=8, mask_id=MASK)
    with pytest.raises(ValueError, match="sliding-window"):
        generate(bidirectional("gemma2"), prompt, cache="prefix", **kw)

    class RemoteLLaDA(torch.nn.Module):  # remote code: not a transformers model class
        config = model.config

    with pytest.raises(ValueError, match="transformers-native"):
        generate(RemoteLLaDA(), prompt, cache="dual", **kw)
    with pytest.raises(ValueError, match="bidirectional"):
        generate(tiny_model("llama"), prompt, cache="dual", **kw)
    with pytest.raises(ValueError, match="logits_fn"):
        generate(None, prompt, cache="dual", logits_fn=lambda *a: None, vocab_size=128, **kw)
    for bad, match in [
        (dict(cache="full"), "cache='full'"),
        (dict(cache="dual", refresh="never"), "refresh='never'"),
        (dict(cache="dual", refresh_every=0), "refresh_every=0"),
        (dict(refresh_every=2), "apply to a KV cache only"),
        (dict(threshold=0.0), "threshold=0.0"),
        (dict(threshold=0.9, sampler="ancestral"), "confidence and xdlm"),
    ]:
        with pytest.raises(ValueError, match=match):
            generate(model, prompt, **kw, **bad)


@pytest.mark.parametrize("name, shift", [("llada-a", False), ("dream-a", True)])
def test_native_llada_and_dream_take_the_cache(name, shift):
    """LLaDA / Dream loaded natively (Llama / Qwen2 classes): the same cache path, exact at refresh_every=1."""
    from native_bases import MASK_ID, fixture

    from xdlm_tune.model.native import load_native, read_config_dict

    path = fixture(name)
    m = load_native(path, read_config_dict(path), dtype=torch.float32).eval()
    ids, mask = padded([6, 3], seed=6)
    kw = dict(
        steps=6,
        gen_length=8,
        block_length=4,
        sampler="xdlm",
        k=0.3,
        temperature=0.0,
        mask_id=MASK_ID,
        attention_mask=mask,
        shift=shift,
    )
    want = generate(m, ids, **kw)
    assert torch.equal(generate(m, ids, cache="dual", refresh_every=1, **kw), want)
    _, stats = generate(m, ids, cache="dual", return_stats=True, **kw)
    assert stats.cached_passes > 0
    P = ids.shape[1]
    full_mask = torch.cat([mask, torch.ones(2, 8, dtype=torch.long)], 1)
    x = torch.cat([ids, torch.full((2, 8), MASK_ID)], 1)
    kv = BlockCache(m, "dual", shift=shift, attention_mask=full_mask, length=P + 8)
    full = model_logits_fn(m, shift=shift)(x, full_mask, 8, **kv.fill_kwargs())[:, :4]
    kv.keep(P, P + 4)
    torch.testing.assert_close(kv.block_logits(x, P, P + 4), full, atol=2e-5, rtol=1e-5)
