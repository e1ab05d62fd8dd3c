"""Samplers: exact step budgets, untouched prompts, padding invariance, seeds, the three XDLM moves."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model

from xdlm_tune.diffusion import make_schedule, reverse_posterior
from xdlm_tune.sampling import SAMPLERS, generate, top_p_filter

MASK = 120  # inside the tiny vocabulary (128), not a special id
EOS = 2


@pytest.fixture(scope="module")
def model():
    m = tiny_model("llama")
    m.config.is_causal = False  # bidirectional, transformers' own switch
    return m.eval()


class Counting:
    """Wraps a model; counts forward passes."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, **kw):
        self.calls += 1
        return self.model(**kw)

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("steps, gen, block", [(4, 8, 8), (6, 12, 4), (8, 8, 2)])
def test_step_budget_is_exact_and_prompt_untouched(model, sampler, steps, gen, block):
    prompt = torch.randint(3, 100, (3, 5), generator=torch.Generator().manual_seed(1))
    counting = Counting(model)
    out = generate(
        counting,
        prompt,
        steps=steps,
        gen_length=gen,
        block_length=block,
        sampler=sampler,
        temperature=0.7,
        k=0.5,
        mask_id=MASK,
        generator=torch.Generator().manual_seed(0),
    )
    assert counting.calls == steps  # one forward per step, for the whole batch
    assert out.shape == (3, 5 + gen)
    assert torch.equal(out[:, :5], prompt)
    assert not (out[:, 5:] == MASK).any()  # fully decoded


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_padded_batch_equals_each_prompt_alone(model, sampler, side, shift):
    """Either padding side: a right-padded batch (most tokenizers' default) is left-aligned inside
    and its prompt returned as given (with shift, the answer's first token would otherwise be
    predicted from a padding position)."""
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 100, (n,), generator=g) for n in (7, 3, 5)]
    P = max(len(p) for p in prompts)
    batch = torch.zeros(3, P, dtype=torch.long)
    mask = torch.zeros(3, P, dtype=torch.long)
    for i, p in enumerate(prompts):
        where = slice(P - len(p), P) if side == "left" else slice(0, len(p))
        batch[i, where], mask[i, where] = p, 1
    kw = dict(steps=4, gen_length=8, block_length=4, sampler=sampler, temperature=0.0, k=0.3, mask_id=MASK, shift=shift)
    out = generate(model, batch, attention_mask=mask, **kw)
    assert torch.equal(out[:, :P], batch)
    together = out[:, P:]
    for i, p in enumerate(prompts):
        alone = generate(model, p[None], **kw)[0, len(p) :]
        assert torch.equal(together[i], alone), (i, together[i], alone)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("shift", [False, True])
def test_revise_prompt_padded_batch_equals_each_prompt_alone(model, shift, side):
    """revise_prompt needs logits at every position, the first real token's included (with shift it
    uses its own state, as in training); padding stays padding and rows stay independent; a
    right-padded prompt comes back revised in its own layout."""
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, 100, (n,), generator=g) for n in (6, 2, 4)]
    P = max(len(p) for p in prompts)
    batch, mask = torch.zeros(3, P, dtype=torch.long), torch.zeros(3, P, dtype=torch.long)
    wheres = [slice(P - len(p), P) if side == "left" else slice(0, len(p)) for p in prompts]
    for i, p in enumerate(prompts):
        batch[i, wheres[i]], mask[i, wheres[i]] = p, 1
    kw = dict(
        steps=4,
        gen_length=8,
        block_length=4,
        sampler="xdlm",
        temperature=0.0,
        k=0.5,
        mask_id=MASK,
        shift=shift,
        revise_prompt=True,
    )
    together = generate(model, batch, attention_mask=mask, **kw)
    assert torch.equal(together[:, :P][mask == 0], batch[mask == 0])
    for i, p in enumerate(prompts):
        alone = generate(model, p[None], **kw)[0]
        assert torch.equal(together[i, wheres[i]], alone[: len(p)]), (i, together[i], alone)
        assert torch.equal(together[i, P:], alone[len(p) :]), (i, together[i], alone)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_fixed_seed_reproducible(model, sampler):
    prompt = torch.randint(3, 100, (2, 4), generator=torch.Generator().manual_seed(5))
    kw = dict(steps=4, gen_length=8, sampler=sampler, temperature=8.0, top_p=0.98, k=0.5, mask_id=MASK)
    a = generate(model, prompt, generator=torch.Generator().manual_seed(11), **kw)
    b = generate(model, prompt, generator=torch.Generator().manual_seed(11), **kw)
    c = generate(model, prompt, generator=torch.Generator().manual_seed(12), **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def _fixed_logits(table):
    """A fake model: logits_fn returning the same [G, V] table for every step (answer region)."""
    calls = []

    def fn(x, mask, keep):
        calls.append(x.clone())
        return table[-keep:].expand(x.shape[0], -1, -1).clone()

    return fn, calls


def test_confidence_reveals_even_share_most_confident_first():
    G, V = 6, 10
    table = torch.full((G, V), -5.0)
    confidence_order = [3, 0, 5, 1, 4, 2]  # position 3 is the most confident
    for rank, pos in enumerate(confidence_order):
        table[pos, pos + 1] = 10.0 - rank
    fn, calls = _fixed_logits(table)
    out = generate(
        None, torch.tensor([[1]]), steps=3, gen_length=G, sampler="confidence", mask_id=9, logits_fn=fn, vocab_size=V
    )
    # Two tokens per step, in confidence order; the state each step sees shows it.
    assert (calls[1][0, 1:] != 9).nonzero()[:, 0].tolist() == sorted(confidence_order[:2])
    assert (calls[2][0, 1:] != 9).nonzero()[:, 0].tolist() == sorted(confidence_order[:4])
    assert out[0, 1:].tolist() == [p + 1 for p in range(G)]


def test_xdlm_revises_within_cumulative_budget_and_k0_equals_confidence():
    """Predictions flip between steps: xdlm rewrites decoded positions, at most int(n k / (1 - k))."""
    G, V, mask = 8, 12, 11
    tables = []
    for step in range(4):
        t = torch.full((G, V), -4.0)
        for pos in range(G):
            t[pos, (pos + step) % 10] = 5.0 + pos * 0.1  # the prediction changes every step
        tables.append(t)
    seen = []

    def fn(x, m, keep):
        seen.append(x[0, 1:].clone())
        return tables[len(seen) - 1][-keep:][None].clone()

    for k, expect_edits in [(0.0, 0), (0.2, None), (0.5, None)]:
        seen.clear()
        out = generate(
            None,
            torch.tensor([[1]]),
            steps=4,
            gen_length=G,
            sampler="xdlm",
            k=k,
            mask_id=mask,
            logits_fn=fn,
            vocab_size=V,
        )
        states = seen + [out[0, 1:]]
        edits = 0
        for step in range(4):
            before, after = states[step], states[step + 1]
            revised = ((before != mask) & (after != before)).sum().item()
            revealed_so_far = (after != mask).sum().item()
            edits += revised
            assert edits <= int(revealed_so_far * k / (1 - k))
        if expect_edits is not None:
            assert edits == expect_edits
        else:
            assert edits > 0
    seen.clear()
    conf = generate(
        None,
        torch.tensor([[1]]),
        steps=4,
        gen_length=G,
        sampler="confidence",
        k=0.0,
        mask_id=mask,
        logits_fn=fn,
        vocab_size=V,
    )
    seen.clear()
    xk0 = generate(
        None,
        torch.tensor([[1]]),
        steps=4,
        gen_length=G,
        sampler="xdlm",
        k=0.0,
        mask_id=mask,
        logits_fn=fn,
        vocab_size=V,
    )
    assert torch.equal(conf, xk0)


@pytest.mark.parametrize("k", [0.0, 0.5, 1.0])
def test_ancestral_step_matches_exact_posterior(k):
    """The empirical law of z_s after one ancestral step equals reverse_posterior, per start state."""
    V, mask, N = 6, 5, 15000
    logits = torch.tensor([[1.0, 0.2, -0.5, 0.7, 0.0, 0.0]]).expand(2, V)  # the same at both positions
    fn, calls = _fixed_logits(logits)
    generate(
        None,
        torch.ones(N, 1, dtype=torch.long),
        steps=2,
        gen_length=2,
        sampler="ancestral",
        temperature=1.0,
        k=k,
        mask_id=mask,
        logits_fn=fn,
        vocab_size=V,
        generator=torch.Generator().manual_seed(0),
    )
    # States seen by step 1 and step 2, both positions pooled (they are independent given the logits).
    z_t, z_s = calls[0][:, 1:].reshape(-1), calls[1][:, 1:].reshape(-1)
    sched = make_schedule("linear")
    a_t, a_s = sched.alpha(torch.tensor([1.0])), sched.alpha(torch.tensor([0.5 * (1 + 1e-5)]))
    moves = set()
    for start in z_t.unique().tolist():
        rows = z_t == start
        exact = reverse_posterior(
            logits[:1][None].double(), torch.tensor([[start]]), a_t.double(), a_s.double(), k=k, mask_id=mask
        )[0, 0]
        counts = torch.bincount(z_s[rows], minlength=V).double()
        n = rows.sum().item()
        sd = (exact * (1 - exact) / n).sqrt()
        assert ((counts / n - exact).abs() <= 5 * sd + 1e-9).all(), (start, counts / n, exact)
        for end in z_s[rows].unique().tolist():
            moves.add(
                "unmask"
                if start == mask and end != mask
                else "remask"
                if start != mask and end == mask
                else "revise"
                if start != end
                else "stay"
            )
    if k == 0.5:
        assert {"unmask", "remask", "revise"} <= moves
    if k == 0.0:
        assert "revise" not in moves and "remask" not in moves


def test_eos_and_stop_sequences_fill_the_rest():
    G, V = 8, 10
    table = torch.full((G, V), -5.0)
    answer = [4, 5, 6, 7, 3, 4, 5, 6]
    for pos, tok in enumerate(answer):
        table[pos, tok] = 5.0
    fn, _ = _fixed_logits(table)
    kw = dict(steps=2, gen_length=G, mask_id=9, logits_fn=fn, vocab_size=V)
    out = generate(None, torch.tensor([[1]]), eos_id=3, **kw)[0, 1:].tolist()
    assert out == [4, 5, 6, 7, 3, 3, 3, 3]
    out = generate(None, torch.tensor([[1]]), eos_id=3, stop_sequences=[[5, 6]], **kw)[0, 1:].tolist()
    assert out == [4, 5, 6, 3, 3, 3, 3, 3]


def test_top_p_filter_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(top_p_filter(logits, 0.75))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.1)).sum() == 1  # always at least one id


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(steps=9, gen_length=8), "steps=9"),
        (dict(steps=4, gen_length=8, block_length=3), "block_length"),
        (dict(steps=3, gen_length=8, block_length=4), "multiple of the number of blocks"),
        (dict(steps=4, gen_length=8, sampler="beam"), "sampler"),
        (dict(steps=4, gen_length=8, top_p=0.0), "top_p"),
    ],
)
def test_bad_arguments_are_named(model, kw, match):
    with pytest.raises(ValueError, match=match):
        generate(model, torch.tensor([[5, 6]]), mask_id=MASK, **kw)


@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_confidence_sampling_follows_tempered_softmax(temperature):
    """Gumbel-max in float64 draws from softmax(logits / T) restricted to non-mask ids."""
    V, mask, N = 5, 4, 20000
    logits = torch.tensor([[0.5, -0.3, 1.0, 0.0, 3.0]])
    fn, _ = _fixed_logits(logits)
    out = generate(
        None,
        torch.ones(N, 1, dtype=torch.long),
        steps=1,
        gen_length=1,
        temperature=temperature,
        mask_id=mask,
        logits_fn=fn,
        vocab_size=V,
        generator=torch.Generator().manual_seed(0),
    )
    freq = torch.bincount(out[:, 1], minlength=V).double() / N
    expect = torch.softmax(logits[0, :4].double() / temperature, -1)
    assert freq[mask] == 0
    assert torch.allclose(freq[:4], expect, atol=5 * (expect * (1 - expect) / N).sqrt().max().item())
