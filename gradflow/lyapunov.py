"""Lyapunov spectrum of a recurrence by QR re-orthonormalization (Benettin's method).

Along the trajectory h_t = step(h_{t-1}, x_t), an orthonormal (n, k) matrix Q is pushed forward by the step
Jacobian, Z = J_t Q (k jvps in one vmapped call), and re-orthonormalized, Z = Q' R. The exponents are the
means of log|R_ii| over the steps after a transient (natural log per step). Standard errors come from the
spread of the means over independent consecutive segments of the post-transient steps.

Example:
    >>> import jax.numpy as jnp
    >>> W = jnp.diag(jnp.array([2.0, 0.5]))
    >>> r = lyapunov_spectrum(lambda h, x: h @ W.T, jnp.zeros((1, 2)), jnp.zeros((100, 1, 1)), transient=10)
    >>> [round(float(e), 4) for e in r.exponents]
    [0.6931, -0.6931]
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow.checks import is_int, prng_key, state_k
from gradflow.jacobians import run_engine, warn_neg_inf
from gradflow.per_example import ExamplePlan
from gradflow.progress import reporting, resolve, tick
from gradflow.reprs import short_repr
from gradflow.statemap import StateMap, all_finite, is_traced, validate_inputs

__all__ = [
    "LyapunovResult", "SpectrumStatistics", "lyapunov_spectrum", "lyapunov_statistics", "qr_log_diagonals",
    "kaplan_yorke_dimension",
]


class LyapunovResult(NamedTuple):
    """Lyapunov exponents (a pytree).

    Attributes:
        exponents: (k,) sorted in descending order, natural log per step.
        stderr: (k,) standard errors from ``segments`` independent segments (same order as ``exponents``).
        n_steps: number of steps averaged (after the transient).
        segment_exponents: (segments, k) the exponents of each segment (means over its steps), columns in the
            order of ``exponents``; the standard errors are their spread (None in a result built by hand).
        n: the state size (the spectrum is complete when k = n).

    With ``per_example=True`` ``exponents`` and ``stderr`` are (B, k), ``segment_exponents`` (B, segments, k).
    """

    exponents: jax.Array
    stderr: jax.Array
    n_steps: int
    segment_exponents: jax.Array | None = None
    n: int | None = None

    def __repr__(self) -> str:
        return short_repr(self)


@functools.partial(jax.jit, static_argnames=("step", "k", "every"))
def _qr_jit(step, k, carry0, xs, Q0, every=0):
    full = StateMap.from_carry(carry0)
    T = jax.tree_util.tree_leaves(xs)[0].shape[0]

    def body(carry, inp):
        x, t = inp
        tick(t + 1, T, every)
        h, Qt = carry  # Qt = Q^T, (k, n): the tangent vectors as rows (a vmap over rows is 3x faster on CPU)
        v = full.flatten(h)

        def f(u):
            return full.flatten(step(full.unflatten(u, h), x))

        Zt = jax.vmap(lambda q: jax.jvp(f, (v,), (q,))[1])(Qt)  # (J Q)^T
        h_new = step(h, x)
        Q, R = jnp.linalg.qr(Zt.T)
        d = jnp.abs(jnp.diagonal(R))
        return (h_new, Q.T), (jnp.log(d), all_finite(h_new))

    _, (logs, flags) = jax.lax.scan(body, (carry0, Q0.T), (xs, jnp.arange(T)))
    return logs, flags  # flags last: run_engine checks them


def _log_cond_max(dtype) -> float:
    """Largest log condition number the accumulated product may reach between two QRs: rounding then
    moves each log|R_ii| by about eps * cond per QR: <= 1e-4 in float32 (cond <= ~840), 2e-10 in float64
    (cond <= 1e6)."""
    return float(np.log(min(1e-4 / np.finfo(dtype).eps, 1e6)))


def _next_interval(d, since, log_cond, max_interval):
    """Steps until the next QR, from one QR's log|R_ii| ``d`` accumulated over ``since`` steps: the product's
    log condition number grows by the spread of d per step; allow half of ``log_cond`` (the spread
    fluctuates), at least 1 and at most ``max_interval``."""
    spread = (jnp.max(d) - jnp.min(d)) / since
    nxt = jnp.floor(0.5 * log_cond / jnp.maximum(spread, 1e-12))
    return jnp.clip(jnp.where(jnp.isfinite(nxt), nxt, 1), 1, max_interval).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("step", "k", "every", "max_interval"))
def _qr_adaptive_jit(step, k, carry0, xs, Q0, next_forced, every=0, max_interval=16):
    """Benettin with an adaptive orthonormalization interval. An outer loop over intervals, each: Z <- J Z
    for L steps (an inner loop with no branch, Z rescaled by a power of 2 each step), then one QR, whose
    log|R_ii| (the sum over the interval) is reported at the interval's last step (zeros elsewhere). L is
    the interval that the last QR's spread allows (:func:`_next_interval`), cut at ``next_forced[t]`` (the
    next step whose QR is forced) and at T."""
    full = StateMap.from_carry(carry0)
    T = jax.tree_util.tree_leaves(xs)[0].shape[0]
    log_cond = _log_cond_max(full.dtype)

    def propagate(i, c):  # one step: the state and the tangent vectors (rows of Zt)
        h, Zt, log_s, flags, t0 = c
        t = t0 + i
        x = jax.tree_util.tree_map(lambda a: jax.lax.dynamic_index_in_dim(a, t, keepdims=False), xs)
        tick(t + 1, T, every)
        f = lambda u: full.flatten(step(full.unflatten(u, h), x))  # noqa: E731
        Zt = jax.vmap(lambda q: jax.jvp(f, (full.flatten(h),), (q,))[1])(Zt)
        amax = jnp.max(jnp.abs(Zt))  # a power-of-2 rescale (exact) keeps the columns representable
        scale = jnp.exp2(jnp.round(jnp.log2(jnp.where(amax > 0, amax, 1.0))))
        h = step(h, x)
        return h, Zt / scale, log_s + jnp.log(scale), flags.at[t].set(all_finite(h)), t0

    def interval_then_qr(c):
        t, h, Zt, interval, logs, flags = c
        L = jnp.minimum(interval, next_forced[t] + 1 - t)
        zero = jnp.zeros((), Zt.dtype)
        h, Zt, log_s, flags, _ = jax.lax.fori_loop(0, L, propagate, (h, Zt, zero, flags, t))
        Q, R = jnp.linalg.qr(Zt.T)
        d = jnp.log(jnp.abs(jnp.diagonal(R))) + log_s
        logs = logs.at[t + L - 1].set(d)
        return t + L, h, Q.T, _next_interval(d, L, log_cond, max_interval), logs, flags

    init = (jnp.zeros((), jnp.int32), carry0, Q0.T, jnp.ones((), jnp.int32), jnp.zeros((T, k), Q0.dtype),
            jnp.ones((T,), bool))
    _, _, _, _, logs, flags = jax.lax.while_loop(lambda c: c[0] < T, interval_then_qr, init)
    return logs, flags


def _next_forced(boundaries, T):
    """(T,) int32: for each step t the first step >= t after which a QR is forced (``boundaries`` and T-1)."""
    forced = sorted({int(b) for b in boundaries if 0 <= int(b) < T} | {T - 1})
    return np.asarray(forced, np.int32)[np.searchsorted(forced, np.arange(T))]


def qr_log_diagonals(
    step, carry0, xs, *, k=None, key=None, per_example=False, progress=None, interval=1, boundaries=()
):
    """The per-step log|R_ii| of Benettin's QR iteration, (T, k), unsorted (column order of Q).

    Args:
        step, carry0, xs: as in :func:`gradflow.jacobians`.
        k: number of directions (default n).
        key: PRNG key for the random orthonormal start (default ``jax.random.PRNGKey(0)``).
        per_example: run on each example alone (n the per-example state size): (B, T, k).
        progress: see :func:`lyapunov_spectrum`.
        interval: 1 (a QR every step: Benettin's per-step loop) or "auto" (an adaptive orthonormalization
            interval, see :func:`lyapunov_spectrum`: the log|R_ii| of each QR, summed over its interval, sit
            at the step of the QR and the other rows are 0, so sums over steps are unchanged).
        boundaries: with "auto", steps (0-based) after which a QR is forced (segment ends; the last step
            always is one).

    Returns:
        (T, k) array (B, T, k) with ``per_example``).
    """
    smap, T = validate_inputs(step, carry0, xs)
    n = smap.n // (ExamplePlan.build(step, carry0, xs, check=False).B if per_example else 1)
    k = n if k is None else state_k(k, n)
    key = prng_key("key", key)
    key = jax.random.PRNGKey(0) if key is None else key
    Q0, _ = jnp.linalg.qr(jax.random.normal(key, (n, k), smap.dtype))
    every = resolve(progress, T, long=T * k * n >= 10**8)
    with reporting(progress, f"lyapunov_spectrum (k={k}, n={n})", every):
        if interval == 1 and not isinstance(interval, bool):  # True == 1
            fn = lambda c, x: _qr_jit(step, k, c, x, Q0, every=every)  # noqa: E731
        elif isinstance(interval, str) and interval == "auto":
            nxt = jnp.asarray(_next_forced(boundaries, T))
            fn = lambda c, x: _qr_adaptive_jit(step, k, c, x, Q0, nxt, every=every)  # noqa: E731
        else:
            raise ValueError(f"interval must be 1 or 'auto', got {interval!r}")
        (logs,) = run_engine(fn, step, carry0, xs, per_example)
    warn_neg_inf(logs, "log|R_ii| of the QR iteration (Lyapunov)", "step", np.arange(1, T + 1), axis=-2)
    warn_precision_limited(logs, n)
    return logs


#: a direction is precision-limited when at more than this fraction of the QRs its |R_ii| is below
#: PRECISION_FACTOR * eps * sqrt(n) times that QR's largest |R_jj|
PRECISION_FRACTION = 0.5
PRECISION_FACTOR = 1.0


def warn_precision_limited(logs, n, stacklevel=3):
    """Warn when some exponents are limited by the dtype's precision (skipped under jit).

    The QR of Z = J Q is computed to about eps * sqrt(n) * ||J|| >= eps * sqrt(n) * max_j |R_jj| (absolute):
    an |R_ii| below ``PRECISION_FACTOR`` times that is mostly rounding. When that happens at more than
    ``PRECISION_FRACTION`` of the QRs, that direction's exponent (the most negative ones: float32, a tanh
    RNN at gain 3, n = 128, bottom exponent -14.9 against -12.9 in float64) is uncertain beyond its
    standard error.

    Args:
        logs: (..., T, k) per-step log|R_ii| (rows of zeros: steps without a QR).
        n: the state size.
    """
    if is_traced(logs):
        return
    L = np.asarray(logs, np.float64)
    qr = np.any(L != 0, axis=-1, keepdims=True)
    floor = np.log(PRECISION_FACTOR * np.finfo(np.asarray(logs).dtype).eps * np.sqrt(n))
    low = (L - np.max(L, axis=-1, keepdims=True) < floor) & qr
    frac = np.sum(low, axis=-2) / np.maximum(np.sum(qr, axis=-2), 1)
    bad = int(np.sum(np.any(frac > PRECISION_FRACTION, axis=tuple(range(frac.ndim - 1)))))
    if bad:
        warnings.warn(
            f"{bad} of {L.shape[-1]} Lyapunov directions are limited by {np.asarray(logs).dtype} precision: "
            f"at more than {PRECISION_FRACTION:.0%} of the QRs their |R_ii| is below {PRECISION_FACTOR:g} * "
            "eps * sqrt(n) times the largest, i.e. mostly rounding; their exponents (the most negative ones) "
            "are uncertain beyond the standard errors: compute in float64 for them",
            RuntimeWarning,
            stacklevel=stacklevel,
        )


def lyapunov_spectrum(
    step, carry0, xs, k=None, transient=0, *, segments=10, key=None, wrt=None, per_example=False,
    progress=None, interval=None,
):
    """Top-k Lyapunov exponents of ``step`` along the trajectory driven by ``xs`` (Benettin / QR).

    Args:
        step: ``step(carry, x_t) -> carry``.
        carry0: initial carry h_0.
        xs: inputs (T, B, input_size).
        k: number of exponents (1 <= k <= n; default n). The state is every inexact leaf of the carry (for a
            batch-coupled step, the whole batch state).
        transient: number of initial steps whose QR factors are discarded (0 <= transient < T).
        segments: number of consecutive segments of the post-transient steps used for the standard errors
            (2 <= segments <= T - transient).
        key: PRNG key for the random orthonormal start (default ``jax.random.PRNGKey(0)``).
        wrt: must be None or select every inexact leaf: Lyapunov exponents belong to the whole tangent
            dynamics.
        per_example: run the step on each example alone (n the per-example state size; see
            :func:`gradflow.jacobians`): ``exponents`` and ``stderr`` are (B, k), each row that example's.
        progress: None/"auto" (progress lines on stderr every ~10 % of the steps for long runs, T k n >=
            10^8), True, False, or a callable receiving the lines (see :mod:`gradflow.progress`).
        interval: None (default): "auto" when k < n, 1 for the full spectrum (k = n: its most negative
            exponents spread so fast that float32 needs a QR every step anyway, and the adaptive loop's
            bookkeeping then only costs time, ~3 % at n = 128). "auto": re-orthonormalize only as often as the
            conditioning of the accumulated product allows: after each QR the next interval is
            log(cond_max) / (2 x the spread of that QR's log|R_ii| per step), at most 16 steps, cond_max =
            840 in float32 (1e6 in float64), so rounding moves no exponent by more than ~1e-4 per QR
            (float64: 2e-10); per step where the spread demands it. A QR is forced at the end of the
            transient and of every segment. 1: a QR every step (Benettin's loop).

    Returns:
        LyapunovResult with ``exponents`` (k,) sorted descending, ``stderr`` (k,), ``n_steps``.

    Raises:
        ValueError: k outside 1..n, transient or segments out of range, a partial ``wrt``, bad step/carry/xs,
            non-finite states, a batch-coupled step with ``per_example``.
    """
    smap, T = validate_inputs(step, carry0, xs)
    if wrt is not None and StateMap.from_carry(carry0, wrt).mask != smap.mask:
        raise ValueError(
            "lyapunov_spectrum needs the whole state: wrt must be None or select every inexact carry leaf "
            "(the exponents of a sub-state are not defined)"
        )
    if isinstance(transient, bool) or not isinstance(transient, (int, np.integer)) or not 0 <= transient < T:
        raise ValueError(f"transient must be an int with 0 <= transient < T = {T}, got {transient!r}")
    m = T - int(transient)
    if not is_int(segments) or not 2 <= segments <= m:
        raise ValueError(f"segments must satisfy 2 <= segments <= T - transient = {m}, got {segments}")
    if k is not None and not is_int(k):
        raise ValueError(f"k must be an int (1 <= k <= the state size) or None, got {k!r}")
    n_state = smap.n // (ExamplePlan.build(step, carry0, xs, check=False).B if per_example else 1)
    if interval is None:
        interval = "auto" if k is not None and k < n_state else 1
    L = m // segments
    ends = [int(transient) - 1] + [int(transient) + L * i - 1 for i in range(1, segments + 1)]
    logs = qr_log_diagonals(
        step, carry0, xs, k=k, key=key, per_example=per_example, progress=progress, interval=interval,
        boundaries=ends,
    )
    logs = logs[..., int(transient) :, :]
    exps, se = exponent_statistics(logs, segments)
    return LyapunovResult(exps, se, m, segment_means(logs, segments), n_state)


def exponent_statistics(logs, segments):
    """(exponents, stderr) sorted descending by exponent from per-step log|R_ii| (..., m, k): means over the
    m steps, standard errors from ``segments`` consecutive segment means."""
    exps = jnp.mean(logs, axis=-2)
    se = jnp.std(_raw_segment_means(logs, segments), axis=-2, ddof=1) / jnp.sqrt(segments)
    order = jnp.argsort(-exps, axis=-1)
    return jnp.take_along_axis(exps, order, -1), jnp.take_along_axis(se, order, -1)


def _raw_segment_means(logs, segments):
    L = logs.shape[-2] // segments
    seg = logs[..., : L * segments, :]
    return jnp.mean(seg.reshape(seg.shape[:-2] + (segments, L, seg.shape[-1])), axis=-2)


def segment_means(logs, segments):
    """(..., segments, k) means of per-step log|R_ii| (..., m, k) over ``segments`` consecutive segments of
    m // segments steps, columns in the order of :func:`exponent_statistics`' exponents (descending mean)."""
    order = jnp.argsort(-jnp.mean(logs, axis=-2), axis=-1)
    return jnp.take_along_axis(_raw_segment_means(logs, segments), order[..., None, :], -1)


class SpectrumStatistics(NamedTuple):
    """What the field reports from a Lyapunov spectrum, each with its standard error (the spread of its value
    over the segments, as for the exponents: std over segments (ddof 1) / sqrt(segments)).

    Attributes:
        kaplan_yorke: the Kaplan–Yorke (Lyapunov) dimension j + S_j / |λ_{j+1}|, S_j = λ_1 + ... + λ_j the
            largest partial sum >= 0 (0 when λ_1 < 0; k when every partial sum is >= 0 and k = n; NaN when the
            spectrum is partial, k < n, and all k partial sums are >= 0: the dimension is then >= k).
        kaplan_yorke_stderr: its standard error.
        entropy_rate: sum of the positive exponents (Pesin's upper bound on the Kolmogorov–Sinai entropy, nats
            per step).
        entropy_rate_stderr: its standard error.
        mean_exponent: (λ_1 + ... + λ_n) / n = <ln|det J_t|> / n (NaN for a partial spectrum).
        mean_exponent_stderr: its standard error.

    Fields are floats, or (B,) arrays for a per-example result.
    """

    kaplan_yorke: float | np.ndarray
    kaplan_yorke_stderr: float | np.ndarray
    entropy_rate: float | np.ndarray
    entropy_rate_stderr: float | np.ndarray
    mean_exponent: float | np.ndarray
    mean_exponent_stderr: float | np.ndarray

    def __repr__(self) -> str:
        return short_repr(self)


def kaplan_yorke_dimension(exponents, complete=True):
    """Kaplan–Yorke dimension of exponents (..., k) (any order; float64 NumPy) -> (...); see
    :class:`SpectrumStatistics`. ``complete``: k = n (else NaN where every partial sum is >= 0)."""
    lam = -np.sort(-np.asarray(exponents, np.float64), axis=-1)
    S = np.cumsum(lam, axis=-1)
    j = np.sum(S >= 0, axis=-1)  # S is increasing then decreasing: the partial sums >= 0 are a prefix
    k = lam.shape[-1]
    jj = np.clip(j, 1, k - 1 if k > 1 else 1)
    Sj = np.take_along_axis(S, (jj - 1)[..., None], -1)[..., 0]
    nxt = np.take_along_axis(lam, np.minimum(jj, k - 1)[..., None], -1)[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):  # the branch not taken may divide by 0
        inner = jj + Sj / np.abs(nxt)
    return np.where(j == 0, 0.0, np.where(j >= k, float(k) if complete else np.nan, inner))


def lyapunov_statistics(result: LyapunovResult) -> SpectrumStatistics:
    """Kaplan–Yorke dimension, entropy rate and mean exponent of a spectrum, with standard errors.

    Args:
        result: a :class:`LyapunovResult` from :func:`lyapunov_spectrum` (it carries the per-segment
            exponents the standard errors come from). The dimension and the mean need the full spectrum
            (k = n, the default); with k < n they are NaN where undetermined (:class:`SpectrumStatistics`).

    Returns:
        SpectrumStatistics.

    Example:
        >>> import jax.numpy as jnp
        >>> W = jnp.diag(jnp.array([2.0, 0.25]))  # exponents ln 2, -2 ln 2: dimension 1 + 1/2
        >>> st = lyapunov_statistics(lyapunov_spectrum(lambda h, x: h @ W.T, jnp.zeros((1, 2)),
        ...                                            jnp.zeros((40, 1, 1)), transient=10, segments=3))
        >>> round(st.kaplan_yorke, 4), round(st.entropy_rate, 4), round(st.mean_exponent, 4)
        (1.5, 0.6931, -0.3466)
    """
    if not isinstance(result, LyapunovResult) or result.segment_exponents is None or result.n is None:
        raise ValueError("lyapunov_statistics needs a LyapunovResult from lyapunov_spectrum (with its "
                         "segment_exponents and n)")
    lam = np.asarray(result.exponents, np.float64)
    seg = np.asarray(result.segment_exponents, np.float64)
    complete = lam.shape[-1] == result.n

    def stats(e):
        mean = np.mean(e, axis=-1) if complete else np.full(e.shape[:-1], np.nan)
        return kaplan_yorke_dimension(e, complete), np.sum(np.maximum(e, 0.0), axis=-1), mean

    whole, parts = stats(lam), stats(seg)
    S = seg.shape[-2]
    out = []
    with np.errstate(invalid="ignore"):  # inf - inf in the spread: reported below
        for w, p in zip(whole, parts, strict=True):
            out += [_scalar(w), _scalar(np.std(p, axis=-1, ddof=1) / np.sqrt(S))]
    if not np.all(np.isfinite(lam)):
        bad = [f for f, v in zip(SpectrumStatistics._fields, out, strict=True) if not np.all(np.isfinite(v))]
        odd = sorted(set(map(str, lam[~np.isfinite(lam)])))
        warnings.warn(f"lyapunov_statistics: the exponents include {odd}"
                      f" (−inf: a singular Jacobian), so {', '.join(bad)} are not finite", RuntimeWarning,
                      stacklevel=2)
    return SpectrumStatistics(*out)


def _scalar(x):
    x = np.asarray(x, np.float64)
    return float(x) if x.ndim == 0 else x
