"""Small statistics for comparing training outcomes over seeds: Mann–Whitney U, a bootstrap interval of the
difference of medians, Spearman's rank correlation with a bootstrap interval.

All take plain sequences of floats (NumPy, float64) and are deterministic given their ``seed``.

Example:
    >>> from gradflow import stats
    >>> round(stats.mann_whitney([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]).p_value, 5)   # 2 / C(10, 5)
    0.00794
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np

from gradflow import checks

__all__ = ["MannWhitney", "mann_whitney", "median_difference", "rank", "spearman"]

#: Above this many splits of the pooled sample the exact null distribution gives way to the normal
#: approximation with the tie correction.
EXACT_LIMIT = 20_000


class MannWhitney(NamedTuple):
    """``u``: U of the first sample (the number of pairs (a, b) with a > b, ties counting ½);
    ``p_value``: two-sided; ``exact``: True when computed from the exact permutation distribution."""

    u: float
    p_value: float
    exact: bool


def _clean(name: str, x) -> np.ndarray:
    """``x`` flattened to float64; ValueError naming ``name`` for an empty sample, a NaN, or anything that is
    not real numbers (strings, None, bools, complex numbers)."""
    a = checks.real_array(name, x).ravel()
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if np.isnan(a).any():
        raise ValueError(
            f"{name} holds NaN (a run without a result must be given a value, e.g. +inf for a diverged loss)"
        )
    return a


def rank(x) -> np.ndarray:
    """Ranks 1..n of the values of ``x`` (flattened), ties getting the mean of their ranks (+inf is the
    largest value).

    Raises:
        ValueError: naming ``x``: empty, a NaN (it has no rank), or not real numbers.
    """
    return _rank(_clean("x", x))


def _rank(a: np.ndarray) -> np.ndarray:
    """:func:`rank` of a checked 1-D float64 array."""
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(a.size)
    ranks[order] = np.arange(1, a.size + 1)
    for v in np.unique(a):
        tie = a == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def _u(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a[:, None] > b[None, :]) + 0.5 * np.sum(a[:, None] == b[None, :]))


def mann_whitney(a, b) -> MannWhitney:
    """Two-sided Mann–Whitney U test of ``a`` against ``b`` (no assumption on the distributions).

    Exact (every split of the pooled values into groups of len(a) and len(b), ties included) when there are
    at most :data:`EXACT_LIMIT` splits; otherwise the normal approximation with the tie correction. With
    5 against 5 seeds the smallest possible p-value is 2/252 = 0.0079.

    Raises:
        ValueError: naming the sample: empty, a NaN, or not real numbers (strings, None, bools, complex).
    """
    a, b = _clean("a", a), _clean("b", b)
    u = _u(a, b)
    n, m = a.size, b.size
    mean = n * m / 2.0
    if math.comb(n + m, n) <= EXACT_LIMIT:
        pooled = np.concatenate([a, b])
        dist = np.array(
            [
                _u(pooled[list(idx)], np.delete(pooled, list(idx)))
                for idx in itertools.combinations(range(n + m), n)
            ]
        )
        p = float(np.mean(np.abs(dist - mean) >= abs(u - mean) - 1e-9))
        return MannWhitney(u, min(p, 1.0), True)
    r = _rank(np.concatenate([a, b]))
    ties = np.unique(r, return_counts=True)[1]
    var = n * m / 12.0 * ((n + m + 1) - np.sum(ties**3 - ties) / ((n + m) * (n + m - 1)))
    if var <= 0:
        return MannWhitney(u, 1.0, False)
    z = (abs(u - mean) - 0.5) / math.sqrt(var)
    return MannWhitney(u, float(min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2.0)))), False)


def _bootstrap_args(level, resamples, seed) -> tuple[float, int, int]:
    """Checked (level, resamples, seed) of a percentile bootstrap; ValueError naming a bad one."""
    level = checks.finite_float("level", level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    resamples = checks.int_at_least("resamples", resamples, MIN_RESAMPLES)
    return level, resamples, checks.seed("seed", seed)


#: Fewest bootstrap resamples accepted (fewer leave the tails of a 95 % interval to a handful of values).
MIN_RESAMPLES = 200


def median_difference(
    a, b, *, level: float = 0.95, resamples: int = 4000, seed: int = 0
) -> tuple[float, float, float]:
    """median(a) − median(b) and its percentile bootstrap interval (each sample resampled on its own).

    Returns:
        ``(difference, low, high)``; infinite values are allowed (a diverged run's loss) and can make the
        interval infinite.
    """
    a, b = _clean("a", a), _clean("b", b)
    level, resamples, seed = _bootstrap_args(level, resamples, seed)
    rng = np.random.default_rng(seed)
    ma = np.median(rng.choice(a, (resamples, a.size)), axis=1)
    mb = np.median(rng.choice(b, (resamples, b.size)), axis=1)
    with np.errstate(invalid="ignore"):
        d = ma - mb
    d = d[~np.isnan(d)]  # inf - inf
    lo, hi = (
        np.quantile(d, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
        if d.size
        else (math.nan, math.nan)
    )
    with np.errstate(invalid="ignore"):
        diff = float(np.median(a) - np.median(b))
    return diff, float(lo), float(hi)


def spearman(
    x, y, *, level: float = 0.95, resamples: int = 4000, seed: int = 0
) -> tuple[float, float, float]:
    """Spearman's rank correlation of paired samples and its percentile bootstrap interval (pairs resampled).

    Returns:
        ``(rho, low, high)``; NaN when either sample is constant.

    Raises:
        ValueError: samples of different lengths, fewer than 3 pairs, or NaN values.
    """
    x, y = _clean("x", x), _clean("y", y)
    level, resamples, seed = _bootstrap_args(level, resamples, seed)
    if x.size != y.size or x.size < 3:
        raise ValueError(f"spearman needs paired samples of at least 3, got {x.size} and {y.size}")

    def rho(i):
        rx, ry = _rank(x[i]), _rank(y[i])
        sx, sy = rx.std(), ry.std()
        return (
            math.nan
            if sx == 0 or sy == 0
            else float(np.mean((rx - rx.mean()) * (ry - ry.mean())) / (sx * sy))
        )

    rng = np.random.default_rng(seed)
    boots = np.array([rho(rng.integers(0, x.size, x.size)) for _ in range(resamples)])
    boots = boots[~np.isnan(boots)]
    lo, hi = (
        np.quantile(boots, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
        if boots.size
        else (math.nan, math.nan)
    )
    return rho(np.arange(x.size)), float(lo), float(hi)
