"""Forward corruption ``forward_noise`` and the noise schedules ``make_schedule``.

``forward_noise`` must sample ``q(z_t = e | x) = alpha [e == x] + (1 - alpha) pi(e)`` with
``pi(e) = k / V + (1 - k) [e == m]`` (XDLM.md, "Forward"), independently per token, with
``alpha`` per batch row. Frequencies are checked with a chi-square statistic at fixed seeds.
"""

from __future__ import annotations

import mpmath
import pytest
import torch
from oracle import forward_probs

V = 7
KS = [0.0, 0.1, 0.5, 1.0]


@pytest.fixture(scope="module")
def D():
    import xdlm_tune.diffusion as D

    return D


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square p-value; cells of probability 0 must be empty (asserted)."""
    n = counts.sum().item()
    zero = probs == 0
    assert (counts[zero] == 0).all(), f"impossible values drawn: counts {counts.tolist()}"
    exp = probs[~zero] * n
    stat = (((counts[~zero].double() - exp) ** 2) / exp).sum().item()
    df = int((~zero).sum().item()) - 1
    if df == 0:
        return 1.0
    return float(mpmath.gammainc(df / 2.0, stat / 2.0, mpmath.inf, regularized=True))


# ----------------------------------------------------------------------------- 4. forward noise
@pytest.mark.parametrize("mask_id", [V - 1, 0, 3])
@pytest.mark.parametrize("k", KS)
def test_forward_noise_frequencies(D, k, mask_id):
    """Row b has one clean id x_b and its own alpha_b: counts over V ids vs q(. | x_b)."""
    alphas = [1e-3, 0.25, 0.5, 0.8, 0.999, 0.6]
    ids = [e for e in range(V) if e != mask_id]
    xs = [ids[b % len(ids)] for b in range(len(alphas))]
    N = 30000
    x0 = torch.tensor(xs)[:, None].expand(len(alphas), N).clone()
    x0_before = x0.clone()
    alpha = torch.tensor(alphas, dtype=torch.float64)
    g = torch.Generator().manual_seed(1234 + mask_id + int(100 * k))
    z = D.forward_noise(x0, alpha, k=k, mask_id=mask_id, vocab_size=V, generator=g)
    assert torch.equal(x0, x0_before), "forward_noise modified x0 in place"
    assert z.dtype == torch.long and z.shape == x0.shape
    assert ((z >= 0) & (z < V)).all()
    for b, (x, a) in enumerate(zip(xs, alphas)):
        counts = torch.bincount(z[b], minlength=V)
        probs = forward_probs(x, V, a, k, mask_id)
        pval = _chi2_pvalue(counts, probs)
        assert pval > 1e-6, (
            f"k={k} mask_id={mask_id} x={x} alpha={a}: counts {counts.tolist()} vs expected "
            f"{(probs * N).round().tolist()} (chi-square p={pval:.2e})"
        )


@pytest.mark.parametrize("k", [0.1, 0.5])
def test_forward_noise_mixed_tokens(D, k):
    """Different clean ids along a row: per row, kept / masked / other-id rates are right."""
    mask_id = 2
    B, L = 4, 40000
    alphas = [0.1, 0.4, 0.7, 0.95]
    g = torch.Generator().manual_seed(99)
    ids = torch.tensor([e for e in range(V) if e != mask_id])
    x0 = ids[torch.randint(len(ids), (B, L), generator=g)]
    z = D.forward_noise(x0, torch.tensor(alphas)[:, None], k=k, mask_id=mask_id, vocab_size=V, generator=g)
    for b, a in enumerate(alphas):
        keep = (z[b] == x0[b]).sum()
        masked = (z[b] == mask_id).sum()
        counts = torch.stack([keep, masked, L - keep - masked])
        p_keep = a + (1 - a) * k / V
        p_mask = (1 - a) * (k / V + 1 - k)
        probs = torch.tensor([p_keep, p_mask, 1 - p_keep - p_mask], dtype=torch.float64)
        assert _chi2_pvalue(counts, probs) > 1e-6, (a, counts.tolist(), (probs * L).tolist())


def test_forward_noise_independent_positions(D):
    """Corruption is drawn per token, not once per row or per column."""
    mask_id = V - 1
    B, L = 64, 64
    x0 = torch.zeros(B, L, dtype=torch.long)
    g = torch.Generator().manual_seed(5)
    z = D.forward_noise(x0, torch.full((B,), 0.5), k=0.0, mask_id=mask_id, vocab_size=V, generator=g)
    kept = (z == 0).double()
    # every row and every column has both kept and masked tokens (P(fail) ~ 64 * 2^-63)
    assert (kept.mean(1) > 0).all() and (kept.mean(1) < 1).all()
    assert (kept.mean(0) > 0).all() and (kept.mean(0) < 1).all()
    assert abs(kept.mean().item() - 0.5) < 0.05


def test_forward_noise_k0_only_mask(D):
    mask_id = 4
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(4, (3, 500), generator=g)
    z = D.forward_noise(x0, torch.tensor([0.2, 0.5, 0.9]), k=0.0, mask_id=mask_id, vocab_size=V, generator=g)
    assert ((z == x0) | (z == mask_id)).all()


def test_forward_noise_reproducible(D):
    mask_id = V - 1
    x0 = torch.randint(V - 1, (4, 257))
    alpha = torch.tensor([0.1, 0.3, 0.6, 0.9])
    kw = dict(k=0.3, mask_id=mask_id, vocab_size=V)
    z1 = D.forward_noise(x0, alpha, generator=torch.Generator().manual_seed(7), **kw)
    z2 = D.forward_noise(x0, alpha, generator=torch.Generator().manual_seed(7), **kw)
    z3 = D.forward_noise(x0, alpha, generator=torch.Generator().manual_seed(8), **kw)
    assert torch.equal(z1, z2)
    assert not torch.equal(z1, z3)
    # alpha as [B, 1] is the same thing
    z4 = D.forward_noise(x0, alpha[:, None], generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(z1, z4)
    # without a generator: global RNG, still valid output
    z5 = D.forward_noise(x0, alpha, **kw)
    assert z5.dtype == torch.long and z5.shape == x0.shape and ((z5 >= 0) & (z5 < V)).all()


def test_forward_noise_large_vocab_uniform_part(D):
    """k = 1, V large: the uniform part reaches every id, the mask included (pi(m) = 1/V)."""
    Vb, mask_id = 50, 17
    N = 200000
    x0 = torch.zeros(1, N, dtype=torch.long)
    g = torch.Generator().manual_seed(3)
    z = D.forward_noise(x0, torch.tensor([0.2]), k=1.0, mask_id=mask_id, vocab_size=Vb, generator=g)
    counts = torch.bincount(z[0], minlength=Vb)
    probs = forward_probs(0, Vb, 0.2, 1.0, mask_id)
    assert _chi2_pvalue(counts, probs) > 1e-6, counts.tolist()


# ----------------------------------------------------------------------------- 5. schedules
SCHEDULES = ["linear", "cosine", "loglinear"]


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("eps", [1e-3, 1e-2])
def test_schedule_range_and_monotone(D, name, eps):
    s = D.make_schedule(name, eps=eps)
    t = torch.linspace(eps, 1.0, 2001, dtype=torch.float64)
    a = s.alpha(t)
    assert a.shape == t.shape
    assert torch.isfinite(a).all()
    assert (a > 0).all() and (a < 1).all(), (a.min(), a.max())
    diff = a[1:] - a[:-1]
    assert (diff <= 0).all(), "alpha must not increase with t"
    assert (diff < 0).double().mean() > 0.99 and a[0] > a[-1]
    r = s.neg_dalpha_dt(t)
    assert r.shape == t.shape and torch.isfinite(r).all() and (r >= 0).all()


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_schedule_derivative_is_finite_difference(D, name, dtype):
    eps = 1e-3
    s = D.make_schedule(name, eps=eps)
    t = torch.linspace(eps + 0.01, 1.0 - 0.01, 97, dtype=torch.float64)
    step = 1e-5 if dtype == torch.float64 else 2e-3
    fd = -(s.alpha((t + step).to(dtype)).double() - s.alpha((t - step).to(dtype)).double()) / (
        (t + step).to(dtype).double() - (t - step).to(dtype).double()
    )
    got = s.neg_dalpha_dt(t.to(dtype)).double()
    rtol = 1e-6 if dtype == torch.float64 else 2e-3
    scale = got.abs().max().item()
    assert ((got - fd).abs() <= rtol * got.abs() + rtol * 1e-2 * scale).all(), (
        name,
        dtype,
        (got - fd).abs().max().item(),
        got,
        fd,
    )


def test_linear_schedule_formula(D):
    """XDLM.md default: alpha_t = 1 - (1 - eps) t, so alpha in [eps, 1 - (1 - eps) eps]."""
    for eps in (1e-3, 0.05):
        s = D.make_schedule("linear", eps=eps)
        t = torch.linspace(eps, 1.0, 101, dtype=torch.float64)
        torch.testing.assert_close(s.alpha(t), 1 - (1 - eps) * t, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(s.neg_dalpha_dt(t), torch.full_like(t, 1 - eps), rtol=1e-12, atol=1e-15)
