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
from gradflow.reprs import short_repr
from gradflow.statemap import StateMap, all_finite, validate_inputs

__all__ = ["PowerResult", "HutchinsonResult", "top_singular_value", "hutchinson_frobenius"]


class PowerResult(NamedTuple):
    """Top singular value by power iteration.

    Attributes:
        sigma: estimate of ||M||_2 (never above it, up to rounding).
        vector: (n,) the corresponding right singular vector estimate (unit norm).
        residual: ||M^T M v - sigma^2 v|| / sigma^2, small when converged.
    """

    sigma: jax.Array
    vector: jax.Array
    residual: jax.Array

    def __repr__(self) -> str:
        return short_repr(self)


class HutchinsonResult(NamedTuple):
    """Hutchinson estimate of the Frobenius norm.

    Attributes:
        frobenius: sqrt(mean_k ||M z_k||^2).
        stderr: its standard error (delta method from the sample variance of ||M z_k||^2).
        probes: number of probe vectors.
    """

    frobenius: jax.Array
    stderr: jax.Array
    probes: int

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


def _segment(step, smap, carry0, xs, lag):
    """(v_t, g) with v_t the selected state at t = T - lag and g: v -> selected state h_T."""
    T = jax.tree_util.tree_leaves(xs)[0].shape[0]
    t = T - lag
    head = jax.tree_util.tree_map(lambda a: a[:t], xs)
    tail = jax.tree_util.tree_map(lambda a: a[t:], xs)
    h_t = jax.lax.scan(lambda h, x: (step(h, x), None), carry0, head)[0]

    def g(v):
        hT = jax.lax.scan(lambda h, x: (step(h, x), None), smap.unflatten(v, h_t), tail)[0]
        return smap.flatten(hT)

    return smap.flatten(h_t), g


@functools.partial(jax.jit, static_argnames=("step", "mask", "lag", "iters"))
def _power_jit(step, mask, lag, iters, carry0, xs, v0):
    smap = StateMap.from_carry(carry0, mask=mask)
    v_t, g = _segment(step, smap, carry0, xs, lag)
    _, jvp = jax.linearize(g, v_t)
    vjp = jax.linear_transpose(jvp, v_t)
    tiny = jnp.finfo(v_t.dtype).tiny

    def it(v, _):
        w = vjp(jvp(v))[0]
        return w / jnp.maximum(jnp.linalg.norm(w), tiny), None

    v, _ = jax.lax.scan(it, v0 / jnp.linalg.norm(v0), None, length=iters)
    u = jvp(v)
    sigma = jnp.linalg.norm(u)
    w = vjp(u)[0]
    residual = jnp.linalg.norm(w - sigma**2 * v) / jnp.maximum(sigma**2, tiny)
    return sigma, v, residual, _finite_flags_scan(step, carry0, xs)


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
    sigma, v, residual, flags = _power_jit(step, smap.mask, lag, iters, carry0, xs, v0)
    raise_if_nonfinite(flags, "the singular value is undefined")
    return PowerResult(sigma, v, residual)


@functools.partial(jax.jit, static_argnames=("step", "mask", "lag"))
def _hutch_jit(step, mask, lag, carry0, xs, Z):
    smap = StateMap.from_carry(carry0, mask=mask)
    v_t, g = _segment(step, smap, carry0, xs, lag)
    _, jvp = jax.linearize(g, v_t)
    q = jnp.sum(jnp.square(jax.vmap(jvp)(Z)), axis=1)  # (k,) ||M z||^2
    k = Z.shape[0]
    f2 = jnp.mean(q)
    se2 = jnp.std(q, ddof=1) / jnp.sqrt(k) if k > 1 else jnp.full((), jnp.nan, q.dtype)
    f = jnp.sqrt(f2)
    return f, se2 / (2 * jnp.maximum(f, jnp.finfo(f.dtype).tiny)), _finite_flags_scan(step, carry0, xs)


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
    f, se, flags = _hutch_jit(step, smap.mask, lag, carry0, xs, Z)
    raise_if_nonfinite(flags, "the Frobenius norm is undefined")
    return HutchinsonResult(f, se, int(probes))
