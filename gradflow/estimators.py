"""Matrix-free estimates of ∂h_T/∂h_t for states too large to materialize (n x n never formed).

With M = ∂h_T/∂h_t at a given lag T - t, products M v come from one ``jax.jvp`` through the scan from h_t to
h_T and products M^T u from the transposed linearization (one reverse pass); memory is that of the stored
forward states, O((T - t) * state size).

* :func:`top_singular_value`: power iteration on M^T M (a lower bound that converges to ||M||_2 at a rate set
  by the gap between the top two singular values; a relative residual is reported).
* :func:`hutchinson_frobenius`: ||M||_F^2 = E ||M z||^2 for Rademacher z, with its standard error.
* For every lag at once, see ``gradflow.streaming.streaming_log_norms(..., probes=k)`` (Hutchinson by vjp).

Example:
    >>> import jax, jax.numpy as jnp
    >>> W = jnp.diag(jnp.array([0.9, 0.5, 0.1]))
    >>> r = top_singular_value(lambda h, x: h @ W.T, jnp.ones((1, 3)), jnp.zeros((10, 1, 1)), lag=4)
    >>> round(float(r.sigma), 4)  # 0.9 ** 4
    0.6561
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradflow.checks import is_int, positive_int, prng_key, raise_if_nonfinite
from gradflow.jacobians import plain_from_log, safe_log, warn_out_of_range
from gradflow.reprs import short_repr
from gradflow.statemap import StateMap, all_finite, validate_inputs

__all__ = ["PowerResult", "HutchinsonResult", "top_singular_value", "hutchinson_frobenius"]


class PowerResult(NamedTuple):
    """Top singular value by power iteration.

    Attributes:
        sigma: estimate of ||M||_2 (never above it, up to rounding).
        vector: (n,) the corresponding right singular vector estimate (unit norm).
        residual: ||M^T M v - sigma^2 v|| / sigma^2, small when converged.
        log_sigma: natural log of sigma, exact where sigma under/overflows (the products are renormalized
            at every step).
    """

    sigma: jax.Array
    vector: jax.Array
    residual: jax.Array
    log_sigma: jax.Array | None = None

    def __repr__(self) -> str:
        return short_repr(self)


class HutchinsonResult(NamedTuple):
    """Hutchinson estimate of the Frobenius norm.

    Attributes:
        frobenius: sqrt(mean_k ||M z_k||^2).
        stderr: its standard error (delta method from the sample variance of ||M z_k||^2).
        probes: number of probe vectors.
        log_frobenius: natural log of ``frobenius``, exact where it under/overflows.
        log_frobenius_stderr: its standard error (= stderr / frobenius, delta method), finite where the plain
            values under/overflow.
    """

    frobenius: jax.Array
    stderr: jax.Array
    probes: int
    log_frobenius: jax.Array | None = None
    log_frobenius_stderr: jax.Array | None = None

    def __repr__(self) -> str:
        return short_repr(self)


def _check_lag(lag, T):
    if not is_int(lag) or not 1 <= lag <= T:
        raise ValueError(f"lag must be an int with 1 <= lag <= T = {T}, got {lag!r}")
    return int(lag)


def _finite_flags_scan(step, carry0, xs) -> jax.Array:
    """(T,) bool: every floating leaf of h_t finite, t = 1..T (one forward pass, states not kept)."""

    def body(h, x):
        h = step(h, x)
        return h, all_finite(h)

    return jax.lax.scan(body, carry0, xs)[1]


def _rescale(u):
    """u / 2^k with 2^k ~ max|u| (exact), and log 2^k (0 for u = 0)."""
    amax = jnp.max(jnp.abs(u))
    scale = jnp.exp2(jnp.round(jnp.log2(jnp.where(amax > 0, amax, 1.0))))
    return u / scale, jnp.log(scale)


class _Segment(NamedTuple):
    """The steps t+1..T of ∂h_T/∂h_t: their input states, inputs, the full state map, the selected indices."""

    prevs: object
    tail: object
    full: StateMap
    idx: jax.Array


def _segment(step, mask, carry0, xs, lag):
    T = jax.tree_util.tree_leaves(xs)[0].shape[0]
    t = T - lag
    head = jax.tree_util.tree_map(lambda a: a[:t], xs)
    tail = jax.tree_util.tree_map(lambda a: a[t:], xs)
    h_t = jax.lax.scan(lambda h, x: (step(h, x), None), carry0, head)[0]
    prevs = jax.lax.scan(lambda h, x: (step(h, x), h), h_t, tail)[1]
    full = StateMap.from_carry(carry0)
    idx = jnp.asarray(full.with_mask(mask).selection_in(full))
    return _Segment(prevs, tail, full, idx)


def _apply(step, seg, v, transpose=False):
    """M v (or M^T v) for the selected state, renormalized each step: (unit-scale vector, its log scale), the
    true product being vector * exp(log scale) (no under/overflow however long the lag)."""
    u = jnp.zeros((seg.full.n,), v.dtype).at[seg.idx].set(v)

    def body(c, inp):
        u, log_s = c
        h, x = inp
        f = lambda w: seg.full.flatten(step(seg.full.unflatten(w, h), x))  # noqa: E731
        hv = seg.full.flatten(h)
        u = jax.vjp(f, hv)[1](u)[0] if transpose else jax.jvp(f, (hv,), (u,))[1]
        u, ls = _rescale(u)
        return (u, log_s + ls), None

    (u, log_s), _ = jax.lax.scan(body, (u, jnp.zeros((), v.dtype)), (seg.prevs, seg.tail), reverse=transpose)
    return u[seg.idx], log_s


def _log_norm(u, log_s):
    return safe_log(jnp.linalg.norm(u)) + log_s


@functools.partial(jax.jit, static_argnames=("step", "mask", "lag", "iters"))
def _power_jit(step, mask, lag, iters, carry0, xs, v0):
    seg = _segment(step, mask, carry0, xs, lag)
    tiny = jnp.finfo(v0.dtype).tiny

    def mtm(v):  # M^T M v = w * exp(log_w), with M v = u * exp(log_u)
        u, log_u = _apply(step, seg, v)
        w, log_w = _apply(step, seg, u, transpose=True)
        return u, log_u, w, log_u + log_w

    def it(v, _):
        w = mtm(v)[2]
        return w / jnp.maximum(jnp.linalg.norm(w), tiny), None

    v, _ = jax.lax.scan(it, v0 / jnp.linalg.norm(v0), None, length=iters)
    u, log_u, w, log_w = mtm(v)
    log_sigma = _log_norm(u, log_u)
    residual = jnp.linalg.norm(w * jnp.exp(log_w - 2 * log_sigma) - v)  # ||M^T M v - s^2 v|| / s^2
    return log_sigma, v, residual, _finite_flags_scan(step, carry0, xs)


def top_singular_value(step, carry0, xs, lag, *, wrt=None, iters=100, key=None) -> PowerResult:
    """Largest singular value of ∂h_T/∂h_t (t = T - lag) by power iteration with jvp and vjp through the scan.

    Args:
        step, carry0, xs, wrt: as in :func:`gradflow.jacobians`.
        lag: T - t, 1 <= lag <= T.
        iters: power iterations (each one jvp and one vjp through ``lag`` steps).
        key: PRNG key for the start vector (default ``jax.random.PRNGKey(0)``).

    Returns:
        PowerResult(sigma, vector (n,), residual).

    Raises:
        ValueError: lag out of range, iters < 1, bad step/carry/xs, a non-finite state h_t (t <= T).
    """
    smap, T = validate_inputs(step, carry0, xs, wrt)
    lag = _check_lag(lag, T)
    iters = positive_int("iters", iters)
    key = prng_key("key", key)
    key = jax.random.PRNGKey(0) if key is None else key
    v0 = jax.random.normal(key, (smap.n,), smap.dtype)
    log_sigma, v, residual, flags = _power_jit(step, smap.mask, lag, iters, carry0, xs, v0)
    raise_if_nonfinite(flags, "the singular value is undefined")
    sigma = plain_from_log(log_sigma)
    warn_out_of_range(sigma, log_sigma, "top singular value", "log_sigma")
    return PowerResult(sigma, v, residual, log_sigma)


@functools.partial(jax.jit, static_argnames=("step", "mask", "lag"))
def _hutch_jit(step, mask, lag, carry0, xs, Z):
    seg = _segment(step, mask, carry0, xs, lag)
    log_q = 2.0 * jax.vmap(lambda z: _log_norm(*_apply(step, seg, z)))(Z)  # (k,) log ||M z||^2
    k = Z.shape[0]
    top = jnp.max(log_q)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    q = jnp.exp(log_q - top)  # ||M z||^2 relative to the largest
    log_f = 0.5 * (safe_log(jnp.mean(q)) + top)
    rel_se2 = jnp.std(q, ddof=1) / jnp.sqrt(k) / jnp.maximum(jnp.mean(q), jnp.finfo(q.dtype).tiny)
    rel_se = 0.5 * rel_se2 if k > 1 else jnp.full((), jnp.nan, q.dtype)  # delta method: se(f) / f
    return log_f, rel_se, _finite_flags_scan(step, carry0, xs)


def hutchinson_frobenius(step, carry0, xs, lag, *, key, probes=32, wrt=None) -> HutchinsonResult:
    """Hutchinson estimate of ||∂h_T/∂h_t||_F (t = T - lag) from ``probes`` Rademacher jvps through the scan.

    Args:
        step, carry0, xs, wrt: as in :func:`gradflow.jacobians`.
        lag: T - t, 1 <= lag <= T.
        key: PRNG key for the probes.
        probes: number of Rademacher probe vectors (>= 2 for a standard error).

    Returns:
        HutchinsonResult(frobenius, stderr, probes). The relative standard deviation of the squared estimate
        is at most sqrt(2 / probes).

    Raises:
        ValueError: lag out of range, probes < 1, bad step/carry/xs, a non-finite state h_t (t <= T).
    """
    smap, T = validate_inputs(step, carry0, xs, wrt)
    lag = _check_lag(lag, T)
    probes = positive_int("probes", probes)
    key = prng_key("key", key, required=True)
    Z = jax.random.rademacher(key, (int(probes), smap.n), dtype=smap.dtype)
    log_f, rel_se, flags = _hutch_jit(step, smap.mask, lag, carry0, xs, Z)
    raise_if_nonfinite(flags, "the Frobenius norm is undefined")
    f = plain_from_log(log_f)
    warn_out_of_range(f, log_f, "Frobenius norm estimate", "log_frobenius")
    return HutchinsonResult(f, rel_se * f, int(probes), log_f, rel_se)
