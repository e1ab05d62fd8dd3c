"""The likelihood bound behind lm-eval's loglikelihood: Monte Carlo vs an exact float64 enumeration.

The exact bound enumerates every noise level of the target (every masked subset for k = 0; every
z_t in V^T and a Gauss-Legendre rule over t for k > 0), with h from the oracle (KL / d from explicit
posterior rows, tests/oracle.py) and the logits of a float64 copy of the model.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from oracle import oracle_h
from tiny_models import tiny_model

from xdlm_tune.diffusion import make_schedule
from xdlm_tune.diffusion.likelihood import bound_noise
from xdlm_tune.lm_eval.likelihood import BoundSettings, nelbo_draws


def _target_logits(model, ids: torch.Tensor, P: int, shift: bool) -> torch.Tensor:
    """[N, T, V] float64 logits for the target positions of ids [N, P + T] (token i from i - 1 under shift)."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()
    return logits[:, P - 1 : -1] if shift else logits[:, P:]


def _log_p(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """log p over the vocabulary with the mask id removed (p(m) = 0), float64."""
    keep = torch.ones(logits.shape[-1], dtype=torch.bool)
    keep[mask_id] = False
    out = torch.full_like(logits, -math.inf)
    out[..., keep] = torch.log_softmax(logits[..., keep], dim=-1)
    return out


def exact_bound_k0(model, context, target, mask_id, shift) -> float:
    """sum_{l=1}^{T} (1/l) mean_{|S| = l} sum_{i in S} -log p(x_i | x with S masked): the MDLM bound (eps -> 0)."""
    T, P = len(target), len(context)
    subsets = [S for l in range(1, T + 1) for S in itertools.combinations(range(T), l)]
    ids = torch.tensor([context + [mask_id if i in S else x for i, x in enumerate(target)] for S in subsets])
    logp = _log_p(_target_logits(model, ids, P, shift), mask_id)
    total = 0.0
    for row, S in enumerate(subsets):
        nll = -sum(float(logp[row, i, target[i]]) for i in S)
        total += nll / len(S) / math.comb(T, len(S))
    return total


def exact_bound(model, context, target, mask_id, shift, k, eps=1e-3, nodes=16) -> float:
    """int_eps^1 (-alpha') sum_z q(z | x) sum_i h_i(z) dt for the linear schedule, every z in V^T."""
    V = model.config.vocab_size
    T, P = len(target), len(context)
    states = list(itertools.product(range(V), repeat=T))
    logits = _target_logits(model, torch.tensor([context + list(s) for s in states]), P, shift)
    pi = np.full(V, k / V)
    pi[mask_id] += 1 - k
    u, w = np.polynomial.legendre.leggauss(nodes)
    total = 0.0
    for ui, wi in zip(u, w):
        t = eps + (1 - eps) * (ui + 1) / 2
        a = 1 - (1 - eps) * t
        inner = 0.0
        for row, z in enumerate(states):
            q = np.prod([a * (zi == xi) + (1 - a) * pi[zi] for zi, xi in zip(z, target)])
            if q == 0:
                continue
            inner += q * sum(float(oracle_h(logits[row, i], z[i], target[i], a, k, mask_id)) for i in range(T))
        total += wi * (1 - eps) / 2 * (1 - eps) * inner  # dt = (1 - eps)/2 du; -alpha' = 1 - eps
    return total


def _mc(model, context, target, mask_id, shift, k, mc_num):
    draws = nelbo_draws(
        model,
        context,
        target,
        mask_id=mask_id,
        shift=shift,
        vocab_size=model.config.vocab_size,
        settings=BoundSettings(k=k, mc_num=mc_num, batch_size=4096, seed=7),
    )
    return float(draws.mean()), float(draws.std() / math.sqrt(mc_num))


@pytest.mark.parametrize("shift", [True, False])
def test_k0_mc_converges_to_the_exact_bound(shift):
    model = tiny_model("llama")
    mask_id = model.config.vocab_size - 1
    context, target = [5, 9, 17], [23, 42, 7, 64]
    exact = exact_bound_k0(model.double(), context, target, mask_id, shift)
    est, se = _mc(model.float(), context, target, mask_id, shift, 0.0, 16384)
    assert se < 0.01 * exact  # enough draws for the comparison to mean something
    assert abs(est - exact) < 4 * se + 1e-4 * exact, (est, se, exact)


@pytest.mark.parametrize("k,shift", [(0.1, True), (0.5, False)])
def test_xdlm_mc_converges_to_the_exact_bound(k, shift):
    model = tiny_model("llama", vocab_size=6)
    mask_id = 5
    context, target = [3, 4, 2], [4, 3]
    exact = exact_bound(model.double(), context, target, mask_id, shift, k)
    # For k > 0 a draw has a heavy tail (a rare corrupted token at low noise weighs 1 / (1 - alpha)):
    # its standard deviation is ~2x the bound here, hence many draws.
    est, se = _mc(model.float(), context, target, mask_id, shift, k, 65536)
    assert se < 0.015 * exact
    assert abs(est - exact) < 4 * se + 1e-4 * exact, (est, se, exact)


def test_k0_draws_mask_exactly_l_targets_with_l_uniform():
    """LLaDA's forward process: each row masks l in 1..T targets, l uniform and spread over the batch."""
    x0 = torch.arange(3, 13).expand(4000, 10)
    gen = torch.Generator().manual_seed(0)
    z, alpha, weight = bound_noise(x0, k=0.0, mask_id=99, vocab_size=100, schedule=make_schedule(), generator=gen)
    n = (z == 99).sum(-1)
    assert torch.equal(z[z != 99], x0[z != 99])  # nothing else changes
    assert torch.allclose(alpha, 1 - n.float() / 10, atol=1e-6) and bool((weight == 1).all())
    counts = torch.bincount(n, minlength=11)[1:]
    assert counts.min() >= 390 and counts.max() <= 410  # stratified: 400 of each l in a batch of 4000
    z10, _, _ = bound_noise(x0[:10], k=0.0, mask_id=99, vocab_size=100, schedule=make_schedule(), generator=gen)
    assert sorted((z10 == 99).sum(-1).tolist()) == list(range(1, 11))  # a batch of T rows: every l once
    per_position = (z == 99).float().mean(0)
    assert torch.allclose(per_position, torch.full((10,), 0.55), atol=0.04)  # positions uniform: E[l]/T


def test_context_is_never_noised_and_errors_are_clear():
    model = tiny_model("llama")
    mask_id = model.config.vocab_size - 1
    calls = []
    original = model.forward

    def spy(*args, **kwargs):
        calls.append(kwargs["input_ids"].clone())
        return original(*args, **kwargs)

    model.forward = spy
    nelbo_draws(
        model,
        [5, 9, 17],
        [23, 42],
        mask_id=mask_id,
        shift=True,
        settings=BoundSettings(k=0.5, mc_num=64, batch_size=32),
    )
    assert len(calls) == 2 and all(bool((c[:, :3] == torch.tensor([5, 9, 17])).all()) for c in calls)
    with pytest.raises(ValueError, match="no tokens"):
        nelbo_draws(model, [5], [], mask_id=mask_id, shift=True, settings=BoundSettings())
    with pytest.raises(ValueError, match="context token"):
        nelbo_draws(model, [], [5], mask_id=mask_id, shift=True, settings=BoundSettings())
    with pytest.raises(ValueError, match="mask token id"):
        nelbo_draws(model, [5], [mask_id], mask_id=mask_id, shift=True, settings=BoundSettings())
