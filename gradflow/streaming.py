"""All-lag log-norms of ∂h_T/∂h_t for long sequences, by a renormalized reverse scan.

One forward ``lax.scan`` stores the states h_0..h_{T-1}; one reverse scan carries the cotangent matrix
G_t = ∂h_T/∂h_t (n rows, or k random probe rows), multiplies it by one step Jacobian per step (a vmapped vjp),
and renormalizes it to unit Frobenius norm, adding the log of the scale to a running log-scale
(Kahan-compensated sum). Norms are therefore reported as natural logs that stay finite and accurate in float32
for T up to 10^5 and beyond, where the plain product over- or underflows. Memory beyond the stored forward
states is O(k n), independent of T.

Spectral log-norms (``spectral=``):
    "svd": exact, one SVD of the renormalized (n, n) matrix per step (cost O(n^3) per step, like the product).
    "power": ``power_iters`` warm-started power iterations on the renormalized matrix per step (O(n^2) each);
        a lower-bound estimate, accurate when the top singular value is separated.
    "auto" (default): "svd" when n <= 64, else "power".
    None: skipped (NaN).
With probe rows the spectral log-norm is not available (NaN).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradflow.checks import is_int, positive_int
from gradflow.checks import raise_if_nonfinite as _raise_if_nonfinite
from gradflow.jacobians import power_norm, step_vjp_rows
from gradflow.statemap import StateMap, validate_inputs

__all__ = ["StreamingResult", "streaming_log_norms", "forward_states"]


class StreamingResult(NamedTuple):
    """Log-norms of ∂h_T/∂h_t for t = 0..T-1 (a pytree).

    Attributes:
        log_frobenius: (T,) natural log of the Frobenius norm (with probes: of the Hutchinson estimate
            sqrt(||P M||_F^2 / k), P a (k, n) probe matrix with unit-variance entries).
        log_spectral: (T,) natural log of the spectral norm (see the module docstring; NaN when skipped).
        lags: (T,) int, T - t.
    """

    log_frobenius: jax.Array
    log_spectral: jax.Array
    lags: jax.Array


def forward_states(step, carry0, xs):
    """One forward scan: (h_0..h_{T-1} stacked, h_T, (T,) finiteness flags of h_1..h_T).

    h_0..h_{T-1} are the states each step's Jacobian is taken at.
    """

    def finite(h):
        leaves = [a for a in jax.tree_util.tree_leaves(h) if jnp.issubdtype(a.dtype, jnp.inexact)]
        return functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(a)) for a in leaves])

    def body(h, x):
        new = step(h, x)
        return new, (h, finite(new))

    hT, (prev, flags) = jax.lax.scan(body, carry0, xs)
    return prev, hT, flags


def _kahan_add(s, c, x):
    y = x - c
    t = s + y
    return t, jnp.where(jnp.isfinite(t), (t - s) - y, jnp.zeros_like(t))


@functools.partial(jax.jit, static_argnames=("step", "mask", "spectral", "power_iters"))
def _stream_jit(step, mask, spectral, power_iters, carry0, xs, probes):
    full = StateMap.from_carry(carry0)
    sel_map = full.with_mask(mask)
    sel = jnp.asarray(sel_map.selection_in(full))
    dt = full.dtype
    prev, _, flags = forward_states(step, carry0, xs)
    n = sel_map.n
    if probes is None:
        G0 = jnp.eye(full.n, dtype=dt)[sel]
        offset = jnp.zeros((), dt)
    else:
        G0 = jnp.zeros((probes.shape[0], full.n), dt).at[:, sel].set(probes.astype(dt))
        offset = -0.5 * jnp.log(jnp.asarray(probes.shape[0], dt))
    tiny = jnp.finfo(dt).tiny
    v0 = jnp.ones((n,), dt) / jnp.sqrt(jnp.asarray(n, dt))

    def body(carry, inp):
        G, s, c, v = carry
        h, x = inp
        G = step_vjp_rows(step, full, h, x, G)
        # unit Frobenius norm; the scale goes to the log-scale. max-abs first so the norm itself cannot
        # overflow
        # (an all-zero G stays zero: the divisors are 1 then, so XLA's reciprocal products stay finite)
        amax = jnp.max(jnp.abs(G))
        G = G / jnp.where(amax > 0, jnp.maximum(amax, tiny), 1.0)
        fn = jnp.sqrt(jnp.sum(jnp.square(G)))  # >= 1 unless G == 0
        G = G / jnp.where(fn > 0, fn, 1.0)
        s, c = _kahan_add(s, c, jnp.log(amax) + jnp.log(fn))
        M = G if sel_map.n == full.n else G[:, sel]  # no gather when the whole state is selected
        log_f = s + jnp.log(jnp.sqrt(jnp.sum(jnp.square(M)))) + offset
        if spectral == "svd":
            log_s = s + jnp.log(jnp.linalg.norm(M, ord=2))
        elif spectral == "power":
            sig, v = power_norm(M, v, power_iters)
            log_s = s + jnp.log(sig)
        else:
            log_s = jnp.full((), jnp.nan, dt)
        return (G, s, c, v), (log_f, log_s)

    init = (G0, jnp.zeros((), dt), jnp.zeros((), dt), v0)
    _, (log_f, log_s) = jax.lax.scan(body, init, (prev, xs), reverse=True)
    return log_f, log_s, flags


def streaming_log_norms(
    step, carry0, xs, *, wrt=None, probes=None, key=None, spectral="auto", power_iters=10
) -> StreamingResult:
    """Natural-log Frobenius and spectral norms of ∂h_T/∂h_t for every t, stable for long sequences.

    Args:
        step: ``step(carry, x_t) -> carry``, pure and jittable.
        carry0: initial carry h_0.
        xs: inputs with a leading time axis (T, B, input_size).
        wrt: optional bool pytree (prefix) selecting the state leaves (see :func:`gradflow.jacobians`).
        probes: None (carry the whole n x n cotangent matrix: exact) or an int k: carry k Gaussian probe rows
            in the output space and report the Hutchinson estimate of the Frobenius norm (cost O(k n) per step
            beyond the step's vjp instead of O(n^2)).
        key: PRNG key for the probes (required when ``probes`` is given).
        spectral: "auto", "svd", "power" or None (see the module docstring). Ignored (NaN) with probes.
        power_iters: power iterations per step for ``spectral="power"``.

    Returns:
        StreamingResult with ``log_frobenius`` (T,), ``log_spectral`` (T,), ``lags`` (T,). An exactly zero
        Jacobian gives -inf (not an underflow).

    Raises:
        ValueError: bad step/carry/xs (see :func:`gradflow.jacobians`), non-finite states, probes < 1 or
            without a key, unknown ``spectral``.

    Example:
        >>> import jax.numpy as jnp
        >>> step = lambda h, x: 1.5 * h  # norms 1.5**lag: overflow float32 beyond lag ~219
        >>> r = streaming_log_norms(step, jnp.zeros((1, 2)), jnp.zeros((1000, 1, 1)))
        >>> round(float(r.log_spectral[0] / 1000), 4), bool(jnp.isfinite(r.log_frobenius).all())
        (0.4055, True)
    """
    if spectral not in ("auto", "svd", "power", None):
        raise ValueError(f"spectral must be 'auto', 'svd', 'power' or None, got {spectral!r}")
    smap, T = validate_inputs(step, carry0, xs, wrt)
    P = None
    if probes is not None:
        if not is_int(probes) or probes < 1:
            raise ValueError(f"probes must be a positive int or None, got {probes!r}")
        if key is None:
            raise ValueError("probes need an explicit PRNG key: pass key=jax.random.PRNGKey(...)")
        P = jax.random.normal(key, (probes, smap.n), smap.dtype)
        spectral = None
    elif spectral == "auto":
        spectral = "svd" if smap.n <= 64 else "power"
    iters = positive_int("power_iters", power_iters)
    log_f, log_s, flags = _stream_jit(step, smap.mask, spectral, iters, carry0, xs, P)
    _raise_if_nonfinite(flags)
    return StreamingResult(log_f, log_s, T - jnp.arange(T))
