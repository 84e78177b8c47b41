"""Singular-value spectra of ∂h_T/∂h_t at chosen lags, effective rank, condition number, growth-rate fits.

Example:
    >>> import jax.numpy as jnp
    >>> W = jnp.diag(jnp.array([0.9, 0.5]))
    >>> sp = spectra(lambda h, x: h @ W.T, jnp.ones((1, 2)), jnp.zeros((10, 1, 1)), lags=[1, 10])
    >>> [round(float(s), 4) for s in sp.singular_values[1]]
    [0.3487, 0.001]
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow.checks import finite_float, float32_representable, real_array
from gradflow.checks import singular_values as check_singular_values
from gradflow.jacobians import (
    JacobianResult,
    plain_from_log,
    reverse_pass,
    run_engine,
    safe_log,
    warn_out_of_range,
)
from gradflow.reprs import short_repr
from gradflow.statemap import StateMap, all_finite, check_finite, is_traced, validate_inputs

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
        log_singular_values: (L, n) their natural logs (from the renormalized reverse pass: no under/overflow;
            the plain values are their exp and can under/overflow).
        resolved: (L, n) bool: False where the value lies below the precision of the computation,
            s_i < PRECISION_FACTOR * eps * sqrt(n) * s_1 (the rounding of the product and of its SVD is
            about eps * sqrt(n) * s_1 in absolute terms, so each resolved value is within ~1 % of the truth,
            an unresolved one is rounding noise). Unresolved values are NaN in ``singular_values`` and
            ``log_singular_values``, ``condition_number`` is NaN at such a lag (the true one exceeds
            1 / (PRECISION_FACTOR * eps * sqrt(n))), ``effective_rank`` counts them as 0 (they move it by less
            than n * 1e-4), and a warning says how many there are.

    With ``per_example=True`` every field but ``lags`` gains a leading batch axis.
    """

    singular_values: jax.Array
    effective_rank: jax.Array
    condition_number: jax.Array
    lags: jax.Array
    log_singular_values: jax.Array | None = None
    resolved: jax.Array | None = None

    def __repr__(self) -> str:
        return short_repr(self)


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

    def __repr__(self) -> str:
        return short_repr(self)


def _relative(singular_values):
    """s / c per row, c = max(s) (a power of two near it under tracing): the scale-free values the rank and
    the condition number depend on. A concrete input is divided on the host in float64, so float64 values
    beyond float32's range keep their ratios without x64; a row of zeros stays zero; a traced row with an inf
    becomes NaN (an overflowed spectrum has no ratios; a concrete one is refused before)."""
    if is_traced(singular_values):
        s = jnp.asarray(singular_values)
        top = jnp.max(s, axis=-1)
        # exponent arithmetic, not s / top: XLA divides by multiplying with 1 / top, which is flushed to zero
        # for top above ~1e38 in float32
        mant, ex = jnp.frexp(s)
        _, ex_top = jnp.frexp(jnp.where(top > 0, top, 1.0))
        return jnp.where(jnp.isfinite(s), jnp.ldexp(mant, ex - ex_top[..., None]), s / top[..., None])
    a = np.asarray(singular_values, np.float64)
    top = np.max(a, axis=-1)
    with np.errstate(invalid="ignore", over="ignore"):
        return jnp.asarray(a / np.where(top > 0, top, 1.0)[..., None])


def effective_rank(singular_values):
    """Roy–Vetterli effective rank exp(H(p)), p = s / sum(s), of singular values (..., n) -> (...).

    0 for a row of zeros (the rank of a zero matrix); NaN where a value is NaN (unresolved); ValueError for an
    empty, negative, infinite (overflowed) or non-numeric spectrum (traced values are not checked: an inf
    gives NaN). Computed from s / max(s), so the scale of s does not matter.
    """
    check_singular_values("singular_values", singular_values)
    r = _relative(singular_values)
    total = jnp.sum(r, axis=-1, keepdims=True)
    p = r / jnp.where(total > 0, total, 1.0)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    rank = jnp.where(total[..., 0] > 0, jnp.exp(-jnp.sum(plogp, axis=-1)), 0.0)
    return jnp.where(jnp.any(jnp.isnan(r), axis=-1), jnp.nan, rank)


def condition_number(singular_values):
    """s_max / s_min of singular values (..., n) -> (...); inf where s_min is 0, NaN where a value is NaN
    (unresolved). ValueError for an empty, negative, infinite (overflowed) or non-numeric spectrum (traced
    values are not checked: an inf gives NaN); a warning where the ratio of concrete float64 values exceeds
    the result dtype's range (it is inf there; enable x64)."""
    check_singular_values("singular_values", singular_values)
    r = _relative(singular_values)
    hi, lo = jnp.max(r, axis=-1), jnp.min(r, axis=-1)  # max/min propagate NaN
    cond = jnp.where(lo > 0, hi / jnp.where(lo > 0, lo, 1.0), jnp.where(jnp.isnan(lo), jnp.nan, jnp.inf))
    if not is_traced(singular_values):
        a = np.asarray(singular_values, np.float64)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            exact = np.max(a, axis=-1) / np.min(a, axis=-1)
        lost = np.isfinite(exact) & ~np.isfinite(np.asarray(cond))
        if np.any(lost):
            warnings.warn(
                f"condition_number: {int(lost.sum())} condition number(s) (largest "
                f"{np.max(exact[lost]):.3g}) "
                f"exceed {cond.dtype}'s range and are inf; enable x64 (jax.config.update('jax_enable_x64', "
                "True)) for float64", RuntimeWarning, stacklevel=2)
    return cond


#: a singular value is resolved when it is at least this many times the rounding floor eps * sqrt(n) * s_1
PRECISION_FACTOR = 100.0


def resolve_spectrum(log_sv, rank, cond, what="spectra", stacklevel=3):
    """Mark singular values below the precision of the computation (see :class:`SpectrumResult`).

    Args:
        log_sv: (..., n) natural-log singular values, each row descending.
        rank, cond: (...) effective rank and condition number of the same rows.

    Returns:
        (log_sv with NaN where unresolved, effective rank with those values counted as 0, condition number
        NaN where a row has one, resolved (..., n) bool). A warning names how many are unresolved.
    """
    log_sv = jnp.asarray(log_sv)
    n = log_sv.shape[-1]
    floor = log_sv[..., :1] + float(np.log(PRECISION_FACTOR * np.finfo(log_sv.dtype).eps * np.sqrt(n)))
    resolved = (log_sv >= floor) | (jnp.arange(n) == 0)
    unresolved_row = ~jnp.all(resolved, axis=-1)
    rel = jnp.exp(log_sv - log_sv[..., :1])  # s_i / s_1, exact ratios for the resolved values
    rank = jnp.where(unresolved_row, effective_rank(jnp.where(resolved, rel, 0.0)), rank)
    cond = jnp.where(unresolved_row, jnp.nan, cond)
    bad = int(np.sum(~np.asarray(resolved)))
    if bad:
        warnings.warn(
            f"{what}: {bad} of {resolved.size} singular values lie below the precision of the computation "
            f"({PRECISION_FACTOR:g} * eps * sqrt(n) * s_1 in {log_sv.dtype}) and are NaN (mask: resolved); "
            "the condition number is NaN at those lags (it exceeds 1 / that factor)"
            + ("; float64 resolves more" if log_sv.dtype == jnp.float32 else ""),
            RuntimeWarning,
            stacklevel=stacklevel,
        )
    return jnp.where(resolved, log_sv, jnp.nan), rank, cond, resolved


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

    Raises:
        ValueError: matrices that are not (T, n, n) real numbers, hold NaN or inf, or (float64 without x64)
            values beyond float32's range; bad ``lags``.
    """
    M = result_or_matrices.matrices if isinstance(result_or_matrices, JacobianResult) else result_or_matrices
    if M is None:
        raise ValueError("the JacobianResult has no matrices (computed with norms only)")
    if not is_traced(M):
        real_array("matrices", M)  # None, strings, bools, complex numbers
        check_finite(M, "matrices (entries that overflowed? spectra(...) gives log singular values)")
    float32_representable("matrices", M)
    M = jnp.asarray(M)
    if M.ndim != 3 or M.shape[1] != M.shape[2]:
        raise ValueError(f"matrices must have shape (T, n, n), got {M.shape}")
    idx, lag_values = _lag_indices(M.shape[0], lags)
    s = _svals(M if lags is None else M[jnp.asarray(idx)])
    log_sv, rank, cond, ok = resolve_spectrum(safe_log(s), effective_rank(s), condition_number(s),
                                              "spectrum_of")
    return SpectrumResult(jnp.where(ok, s, jnp.nan), rank, cond, jnp.asarray(lag_values), log_sv, ok)


@functools.partial(jax.jit, static_argnames=("step", "mask", "head", "slots"))
def _spectra_jit(step, mask, head, slots, carry0, xs):
    """Singular values at the requested lags only: a plain forward scan over the first ``head`` steps (no
    stored states), then the renormalized reverse pass over the last len(slots) steps, copying the matrix of
    each requested lag into a buffer (``slots[lag - 1]``: its row, or -1). Returns (log singular values
    (L, n), effective rank (L,), condition number (L,), flags (T,))."""
    first = jax.tree_util.tree_map(lambda a: a[:head], xs)
    tail = jax.tree_util.tree_map(lambda a: a[head:], xs)

    def fwd(h, x):
        h = step(h, x)
        return h, all_finite(h)

    h, head_flags = jax.lax.scan(fwd, carry0, first)
    n = StateMap.from_carry(carry0, mask=mask).n
    slot_of = jnp.asarray(slots, jnp.int32)
    L = max(slots) + 1

    def reduce(M, aux):
        buf, lag = aux  # lag - 1: this step's lag minus one (the reverse scan starts at lag 1)
        i = slot_of[lag]
        j = jnp.maximum(i, 0)
        buf = jax.lax.dynamic_update_index_in_dim(buf, jnp.where(i >= 0, M, buf[j]), j, 0)
        return (buf, lag + 1), None

    # the log scale of each requested lag comes from reverse_pass's per-step output
    dt = StateMap.from_carry(carry0).dtype
    init = (jnp.zeros((L, n, n), dt), jnp.zeros((), jnp.int32))
    log_scale, _, flags, (buf, _) = reverse_pass(step, mask, h, tail, reduce, init, final_aux=True)
    lag_of_slot = np.full(L, -1)
    for lag, i in enumerate(slots, start=1):
        if i >= 0:
            lag_of_slot[i] = lag
    scale = log_scale[len(slots) - jnp.asarray(lag_of_slot)]  # t index in the tail of each slot's lag
    sv = jnp.linalg.svd(buf, compute_uv=False)
    log_sv = safe_log(sv) + scale[:, None]
    return log_sv, effective_rank(sv), condition_number(sv), jnp.concatenate([head_flags, flags])


def spectra(step, carry0, xs, *, lags=None, wrt=None, per_example=False) -> SpectrumResult:
    """Singular-value spectra of ∂h_T/∂h_t at the chosen lags (exact: renormalized reverse pass, SVDs).

    Only the last max(lags) steps are differentiated (the earlier ones are a plain forward pass) and only the
    requested lags' matrices are kept: memory O(L n^2 + max(lags) * state size).

    Args:
        step, carry0, xs, wrt: as in :func:`gradflow.jacobians`.
        lags: ints in 1..T; default every lag (in the order t = 0..T-1, i.e. decreasing lag).
        per_example: run the step on each example alone (see :func:`gradflow.jacobians`): fields (B, L, ...).

    Returns:
        SpectrumResult with ``singular_values`` (L, n) sorted descending, ``effective_rank`` (L,),
        ``condition_number`` (L,), ``lags`` (L,), ``log_singular_values`` (L, n).
    """
    smap, T = validate_inputs(step, carry0, xs, wrt)
    _, lag_values = _lag_indices(T, lags)
    uniq = sorted({int(v) for v in lag_values})
    Lmax = uniq[-1]
    slot = {lag: i for i, lag in enumerate(uniq)}
    slots = tuple(slot.get(lag, -1) for lag in range(1, Lmax + 1))
    fn = functools.partial(_spectra_jit, step, smap.mask, T - Lmax, slots)
    log_sv, rank, cond = run_engine(fn, step, carry0, xs, per_example)
    order = jnp.asarray([slot[int(v)] for v in lag_values])
    log_sv, rank, cond = log_sv[..., order, :], rank[..., order], cond[..., order]
    log_sv, rank, cond, ok = resolve_spectrum(log_sv, rank, cond)
    sv = plain_from_log(log_sv)
    warn_out_of_range(sv[..., 0], log_sv[..., 0], "largest singular values", "log_singular_values")
    return SpectrumResult(sv, rank, cond, jnp.asarray(lag_values), log_sv, ok)


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
            Per-example log norms (B, T) (``per_example=True`` results) are fitted row by row.
        lags: (T,) lags of ``log_norms`` (taken from the result when one is given).
        min_lag, max_lag: the fit window.

    Returns:
        GrowthRate(rate, stderr, intercept, n_points): floats, or (B,) arrays for per-example log norms.

    Raises:
        ValueError: fewer than 3 finite points in the window, or mismatched shapes.
    """
    if hasattr(log_norms, "lags"):
        lags, log_norms = log_norms.lags, _log_norms_of(log_norms)
    y = real_array("log_norms", log_norms, min_ndim=1)
    if lags is None:
        lags = y.shape[-1] - np.arange(y.shape[-1])
    x = real_array("lags", lags, min_ndim=1)
    finite_float("min_lag", min_lag)
    if max_lag is not None:
        finite_float("max_lag", max_lag)
    if y.ndim == 2 and x.ndim == 2 and x.shape == y.shape and np.all(x == x[:1]):
        x = x[0]  # per-example lags repeated per row
    if y.ndim == 2 and x.ndim == 1 and y.shape[1] == x.shape[0]:  # per example (B, T): one fit per row
        fits = [growth_rate(row, x, min_lag=min_lag, max_lag=max_lag) for row in y]
        return GrowthRate(*(np.array(v) for v in zip(*fits, strict=True)))
    if y.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"log_norms and lags must be 1-D of equal length, got {y.shape} and {x.shape}")
    window = x >= min_lag
    if max_lag is not None:
        window &= x <= max_lag
    keep = window & np.isfinite(y)
    x_all = x
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
        raise ValueError(
            f"growth_rate needs at least 3 finite log norms in the lag window min_lag={min_lag!r} .. "
            f"max_lag={max_lag!r}, got {m} (the lags run {x_all.min():g} .. {x_all.max():g}; "
            f"{int(window.sum())} in the window): widen min_lag/max_lag"
            if x_all.size else "growth_rate needs at least 3 finite log norms, got none")
    xm, ym = x.mean(), y.mean()
    sxx = np.sum((x - xm) ** 2)
    rate = np.sum((x - xm) * (y - ym)) / sxx
    intercept = ym - rate * xm
    resid = y - intercept - rate * x
    stderr = np.sqrt(np.sum(resid**2) / (m - 2) / sxx)
    return GrowthRate(float(rate), float(stderr), float(intercept), int(m))
