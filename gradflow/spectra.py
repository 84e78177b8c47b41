"""Singular-value spectra of ∂h_T/∂h_t at chosen lags, effective rank, condition number, growth-rate fits.

Example:
    >>> import jax.numpy as jnp
    >>> W = jnp.diag(jnp.array([0.9, 0.5]))
    >>> sp = spectra(lambda h, x: h @ W.T, jnp.ones((1, 2)), jnp.zeros((10, 1, 1)), lags=[1, 10])
    >>> [round(float(s), 4) for s in sp.singular_values[1]]
    [0.3487, 0.001]
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow.jacobians import JacobianResult, jacobians

__all__ = [
    "SpectrumResult",
    "GrowthRate",
    "spectra",
    "spectrum_of",
    "effective_rank",
    "condition_number",
    "growth_rate",
]


class SpectrumResult(NamedTuple):
    """Singular-value spectra at chosen lags (a pytree).

    Attributes:
        singular_values: (L, n), each row sorted in descending order.
        effective_rank: (L,) exp of the entropy of the normalized singular values (Roy & Vetterli 2007):
            exp(-sum p_i log p_i), p_i = s_i / sum_j s_j; between 1 and n.
        condition_number: (L,) s_max / s_min (inf when s_min = 0).
        lags: (L,) int, the lags T - t, in the order requested.
    """

    singular_values: jax.Array
    effective_rank: jax.Array
    condition_number: jax.Array
    lags: jax.Array


class GrowthRate(NamedTuple):
    """Least-squares slope of a log-norm against lag.

    Attributes:
        rate: per-step growth rate (natural log per step; > 0 explodes, < 0 vanishes).
        stderr: its ordinary-least-squares standard error (assumes independent residuals; the residuals of a
            log-norm curve are correlated along the lag, so treat it as a lower bound on the uncertainty).
        intercept: the fitted log-norm at lag 0.
        n_points: number of lags in the fit.
    """

    rate: float
    stderr: float
    intercept: float
    n_points: int


def effective_rank(singular_values):
    """Roy–Vetterli effective rank exp(H(p)), p = s / sum(s), of singular values (..., n) -> (...)."""
    s = jnp.asarray(singular_values)
    p = s / jnp.sum(s, axis=-1, keepdims=True)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    return jnp.exp(-jnp.sum(plogp, axis=-1))


def condition_number(singular_values):
    """s_max / s_min of singular values (..., n) sorted descending -> (...); inf where s_min is 0."""
    s = jnp.asarray(singular_values)
    return jnp.where(s[..., -1] > 0, s[..., 0] / jnp.where(s[..., -1] > 0, s[..., -1], 1.0), jnp.inf)


def _lag_indices(T, lags):
    if lags is None:
        return np.arange(T), T - np.arange(T)
    lags = np.atleast_1d(np.asarray(lags))
    if lags.ndim != 1 or not np.issubdtype(lags.dtype, np.integer):
        raise ValueError(f"lags must be a 1-D sequence of ints, got {lags!r}")
    bad = lags[(lags < 1) | (lags > T)]
    if bad.size:
        raise ValueError(f"lags must lie in 1..T = 1..{T}; got {bad.tolist()}")
    return T - lags, lags


@jax.jit
def _svals(M):
    return jnp.linalg.svd(M, compute_uv=False)


def spectrum_of(result_or_matrices, lags=None) -> SpectrumResult:
    """Spectra of already computed all-lag Jacobians.

    Args:
        result_or_matrices: a :class:`JacobianResult` with matrices, or an array (T, n, n) with
            ``matrices[t] = ∂h_T/∂h_t``.
        lags: lags (1..T) to analyse, default all (in the order of t = 0..T-1, i.e. decreasing lag).

    Returns:
        SpectrumResult.
    """
    M = result_or_matrices.matrices if isinstance(result_or_matrices, JacobianResult) else result_or_matrices
    if M is None:
        raise ValueError("the JacobianResult has no matrices (computed with norms only)")
    M = jnp.asarray(M)
    if M.ndim != 3 or M.shape[1] != M.shape[2]:
        raise ValueError(f"matrices must have shape (T, n, n), got {M.shape}")
    idx, lag_values = _lag_indices(M.shape[0], lags)
    s = _svals(M if lags is None else M[jnp.asarray(idx)])
    return SpectrumResult(s, effective_rank(s), condition_number(s), jnp.asarray(lag_values))


def spectra(step, carry0, xs, *, lags=None, wrt=None) -> SpectrumResult:
    """Singular-value spectra of ∂h_T/∂h_t at the chosen lags (exact: all-lag Jacobians, then batched SVDs).

    Args:
        step, carry0, xs, wrt: as in :func:`gradflow.jacobians`.
        lags: ints in 1..T; default every lag.

    Returns:
        SpectrumResult with ``singular_values`` (L, n) sorted descending, ``effective_rank`` (L,),
        ``condition_number`` (L,), ``lags`` (L,).
    """
    r = jacobians(step, carry0, xs, wrt=wrt, spectral=None)
    return spectrum_of(r, lags)


def _log_norms_of(result):
    """The log norms a growth rate is fitted to, from a result: spectral, or Frobenius where those are NaN."""
    if hasattr(result, "log_spectral"):
        pairs = (result.log_spectral, result.log_frobenius)
    elif getattr(result, "log_spectral_norms", None) is not None:
        pairs = (result.log_spectral_norms, result.log_frobenius_norms)
    else:  # a result built by hand without log fields
        pairs = (jnp.log(result.spectral_norms), jnp.log(result.frobenius_norms))
    y = np.asarray(pairs[0], np.float64)
    return np.asarray(pairs[1], np.float64) if np.all(np.isnan(y)) else y


def growth_rate(log_norms, lags=None, *, min_lag=1, max_lag=None) -> GrowthRate:
    """Fit log-norm = intercept + rate * lag by least squares over ``min_lag <= lag <= max_lag``.

    Args:
        log_norms: (T,) natural-log norms, or a result: a JacobianResult or BatchBlockNorms (its exact
            ``log_spectral_norms``, or ``log_frobenius_norms`` when the spectral ones are NaN; never the plain
            norms, which can under/overflow) or a StreamingResult (``log_spectral``, or ``log_frobenius``).
        lags: (T,) lags of ``log_norms`` (taken from the result when one is given).
        min_lag, max_lag: the fit window.

    Returns:
        GrowthRate(rate, stderr, intercept, n_points).

    Raises:
        ValueError: fewer than 3 finite points in the window, or mismatched shapes.
    """
    if hasattr(log_norms, "lags"):
        lags, log_norms = log_norms.lags, _log_norms_of(log_norms)
    y = np.asarray(log_norms, np.float64)
    if lags is None:
        lags = y.shape[0] - np.arange(y.shape[0])
    x = np.asarray(lags, np.float64)
    if y.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"log_norms and lags must be 1-D of equal length, got {y.shape} and {x.shape}")
    window = x >= min_lag
    if max_lag is not None:
        window &= x <= max_lag
    keep = window & np.isfinite(y)
    if keep.sum() < window.sum():
        warnings.warn(
            f"growth_rate: {int(window.sum() - keep.sum())} of {int(window.sum())} log norms in the lag "
            "window are not finite (an exactly zero Jacobian, or NaN) and are left out of the fit",
            RuntimeWarning,
            stacklevel=2,
        )
    x, y = x[keep], y[keep]
    m = x.size
    if m < 3:
        raise ValueError(f"need at least 3 finite points in the lag window to fit a growth rate, got {m}")
    xm, ym = x.mean(), y.mean()
    sxx = np.sum((x - xm) ** 2)
    rate = np.sum((x - xm) * (y - ym)) / sxx
    intercept = ym - rate * xm
    resid = y - intercept - rate * x
    stderr = np.sqrt(np.sum(resid**2) / (m - 2) / sxx)
    return GrowthRate(float(rate), float(stderr), float(intercept), int(m))
