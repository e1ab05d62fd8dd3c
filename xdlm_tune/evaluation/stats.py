"""95% intervals and paired tests for the evaluation's rates and means (torch-free; scipy.stats).

* proportions (pass@1 with one sample per problem, syntax-valid, compile and EOS rates): the
  Wilson score interval (`wilson`), right near 0 % and 100 % where the normal one is not;
* pass@k with several samples per problem: the unbiased estimator 1 - C(n-c, k) / C(n, k)
  (Chen et al. 2021) averaged over problems, with a bootstrap over problems (`pass_at_k_ci`);
* means over samples (entropy) and gen-PPL = exp(sum NLL / sum tokens): a percentile bootstrap
  over samples (`bootstrap_ci`, `gen_ppl_ci`);
* two runs on the same problems: the paired bootstrap of the difference (`paired_diff_ci`,
  `paired_gen_ppl_ratio_ci`) and the exact McNemar test on the discordant pairs (`mcnemar_exact`).

Every bootstrap draws from a fixed seed, so a table is the same each time it is written.
An interval is a ``(low, high)`` tuple of floats; ``None`` where it is undefined (no samples).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0

Interval = tuple[float, float]


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval | None:
    """The Wilson score interval of ``successes`` out of ``n`` (None when n = 0)."""
    from scipy.stats import binomtest

    if n <= 0:
        return None
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` of ``n`` samples passing (k <= n)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _bootstrap(data: Sequence[np.ndarray], statistic: Callable, confidence: float, paired: bool) -> Interval | None:
    """scipy.stats.bootstrap (percentile, fixed seed) of a vectorised ``statistic(*arrays, axis)``."""
    from scipy.stats import bootstrap

    n = len(data[0])
    if n == 0:
        return None
    point = float(statistic(*data, axis=-1))
    if n == 1 or all(np.all(d == d[0]) for d in data):  # one sample, or no spread: nothing to resample
        return (point, point)
    res = bootstrap(
        tuple(data),
        statistic,
        paired=paired,
        vectorized=True,
        n_resamples=RESAMPLES,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(SEED),
    )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (min(low, point), max(high, point))


def bootstrap_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval | None:
    """Percentile-bootstrap interval of the mean of ``values`` (e.g. per-sample entropies)."""
    x = np.asarray(values, dtype=float)
    return _bootstrap([x], lambda a, axis: np.mean(a, axis=axis), confidence, paired=False)


def _ppl(nll, tokens, axis=-1):
    return np.exp(np.minimum(np.sum(nll, axis=axis) / np.maximum(np.sum(tokens, axis=axis), 1), 700.0))


def gen_ppl_ci(nll: Sequence[float], tokens: Sequence[int], confidence: float = CONFIDENCE) -> Interval | None:
    """Bootstrap over samples of gen-PPL = exp(sum of per-sample NLLs / sum of their scored tokens)."""
    a, t = np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)
    if a.size == 0 or t.sum() == 0:
        return None
    return _bootstrap([a, t], _ppl, confidence, paired=True)


def pass_at_k_ci(
    per_problem: Sequence[Sequence[bool]], k: int, confidence: float = CONFIDENCE
) -> tuple[float, Interval | None]:
    """Mean unbiased pass@k over problems (each a list of its samples' pass flags) and its interval:
    Wilson when every problem has exactly one sample and k = 1 (a plain proportion), else a
    bootstrap over problems of the per-problem estimates."""
    if not per_problem:
        return math.nan, None
    if k == 1 and all(len(v) == 1 for v in per_problem):
        passed = sum(bool(v[0]) for v in per_problem)
        return passed / len(per_problem), wilson(passed, len(per_problem), confidence)
    est = np.array([pass_at_k(len(v), sum(map(bool, v)), k) for v in per_problem])
    return float(est.mean()), bootstrap_ci(est, confidence)


def paired_diff_ci(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval | None:
    """Paired bootstrap (over the shared problems) of mean(b) - mean(a)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same length, got {x.size} and {y.size}")
    return _bootstrap([y - x], lambda d, axis: np.mean(d, axis=axis), confidence, paired=False)


def paired_gen_ppl_ratio_ci(
    nll_a: Sequence[float],
    tok_a: Sequence[int],
    nll_b: Sequence[float],
    tok_b: Sequence[int],
    confidence: float = CONFIDENCE,
) -> tuple[float, Interval | None]:
    """gen-PPL(b) / gen-PPL(a) on the same prompts and its paired bootstrap interval (prompts
    resampled together in both runs). Below 1: run b has the lower gen-PPL."""
    arrays = [np.asarray(v, dtype=float) for v in (nll_a, tok_a, nll_b, tok_b)]
    if len({a.size for a in arrays}) != 1:
        raise ValueError("paired gen-PPL needs the same prompts in both runs")

    def ratio(na, ta, nb, tb, axis=-1):
        return _ppl(nb, tb, axis) / _ppl(na, ta, axis)

    if arrays[0].size == 0:
        return math.nan, None
    point = float(ratio(*arrays))
    return point, _bootstrap(arrays, ratio, confidence, paired=True)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Exact McNemar p-value (two-sided) from the discordant pairs: problems only run a passes
    (``a_only``) and only run b passes (``b_only``); under no difference each discordant pair is a
    fair coin, so p = P(|Binomial(a_only + b_only, 1/2) - m/2| >= observed), 1 with no discordant pair."""
    from scipy.stats import binom

    m = a_only + b_only
    if m == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(a_only, b_only), m, 0.5)))


# --------------------------------------------------------------------------- formatting


def fmt_rate(value: float | None, ci: Interval | None, digits: int = 1) -> str:
    """'12.5% [3.5, 36.0]' (a rate in [0, 1] as a percentage with its interval)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{100 * value:.{digits}f}%"
    return text if ci is None else f"{text} [{100 * ci[0]:.{digits}f}, {100 * ci[1]:.{digits}f}]"


def fmt_value(value: float | None, ci: Interval | None, spec: str) -> str:
    """'795.76 [612.30, 1032.11]' (a mean or gen-PPL with its interval, in ``spec`` format)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = format(value, spec)
    return text if ci is None else f"{text} [{format(ci[0], spec)}, {format(ci[1], spec)}]"


def leading_number(cell: str) -> float:
    """The value of a formatted cell, without its interval: '12.5% [3.5, 36.0]' -> 12.5."""
    return float(cell.split()[0].rstrip("%"))
