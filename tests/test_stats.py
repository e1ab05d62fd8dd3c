"""The interval and test helpers (evaluation/stats.py) against closed forms, brute force and scipy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from xdlm_tune.evaluation import stats

Z = 1.959963984540054  # the 97.5% normal quantile


def _wilson_closed_form(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(0, 4), (1, 4), (2, 4), (4, 4), (3, 16), (37, 500)])
def test_wilson_matches_the_closed_form(k, n):
    low, high = stats.wilson(k, n)
    want = _wilson_closed_form(k, n)
    assert low == pytest.approx(max(want[0], 0.0), abs=1e-9) and high == pytest.approx(min(want[1], 1.0), abs=1e-9)
    assert stats.wilson(0, 0) is None


@pytest.mark.parametrize("n,c,k", [(5, 2, 1), (5, 2, 3), (6, 0, 2), (6, 5, 2), (4, 4, 4), (10, 3, 5)])
def test_pass_at_k_is_the_chance_a_random_k_subset_holds_a_pass(n, c, k):
    flags = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(flags[i] for i in s) for s in subsets) / len(subsets)
    assert stats.pass_at_k(n, c, k) == pytest.approx(brute)
    with pytest.raises(ValueError, match="at least"):
        stats.pass_at_k(2, 1, 3)


@pytest.mark.parametrize("a_only,b_only", [(0, 0), (0, 1), (1, 5), (5, 1), (3, 3), (0, 7), (12, 30), (2, 9)])
def test_mcnemar_exact_is_scipys_two_sided_binomial_test_on_the_discordant_pairs(a_only, b_only):
    m = a_only + b_only
    want = 1.0 if m == 0 else binomtest(a_only, m, 0.5, alternative="two-sided").pvalue
    assert stats.mcnemar_exact(a_only, b_only) == pytest.approx(want, rel=1e-12)


def test_pass_at_k_ci_is_wilson_for_one_sample_and_a_bootstrap_over_problems_for_several():
    one = [[True], [False], [False], [True]]
    assert stats.pass_at_k_ci(one, 1) == (0.5, stats.wilson(2, 4))
    several = [[True, False], [False, False], [True, True], [False, True]]
    value, (low, high) = stats.pass_at_k_ci(several, 1)
    assert value == pytest.approx(0.5) and 0 <= low < value < high <= 1
    assert stats.pass_at_k_ci(several, 2)[0] == pytest.approx((1 + 0 + 1 + 1) / 4)


def test_bootstraps_are_deterministic_and_hold_the_point_estimate():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 1.0, size=40)
    ci = stats.bootstrap_ci(x)
    assert ci == stats.bootstrap_ci(x) and ci[0] < x.mean() < ci[1]
    assert ci[1] - ci[0] == pytest.approx(2 * Z * x.std(ddof=1) / math.sqrt(40), rel=0.25)
    assert stats.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0) and stats.bootstrap_ci([]) is None
    nll, tok = rng.uniform(10, 50, size=16), rng.integers(5, 20, size=16)
    point = math.exp(nll.sum() / tok.sum())
    low, high = stats.gen_ppl_ci(nll, tok)
    assert low < point < high
    # paired: the same draws in both runs give a ratio of exactly 1, whatever the spread
    ratio, ratio_ci = stats.paired_gen_ppl_ratio_ci(nll, tok, nll, tok)
    assert ratio == 1.0 and ratio_ci == pytest.approx((1.0, 1.0))
    assert stats.paired_diff_ci([0, 1, 0, 1], [1, 2, 1, 2]) == (1.0, 1.0)


def test_cells_format_and_read_back():
    assert stats.fmt_rate(0.25, (0.046, 0.699)) == "25.0% [4.6, 69.9]"
    assert stats.fmt_value(795.7648, (612.3, 1032.11), ".2f") == "795.76 [612.30, 1032.11]"
    assert stats.leading_number("25.0% [4.6, 69.9]") == 25.0 and stats.leading_number("25.0%") == 25.0
    assert stats.fmt_rate(None, None) == "-"
