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
    "certified": warm-started power steps with Temple's error bound (1e-3 relative in float32) and an SVD
        where it cannot be certified (see :func:`gradflow.jacobians.certified_sigma`).
    "auto" (default): "svd" when n <= 64, else "certified".
    None: skipped (NaN).
With probe rows the spectral log-norm is not available (NaN).

Cost: every step of the reverse pass is n vector-Jacobian products of the step (one per cotangent row,
vmapped) plus the spectral reduction, so time grows as T·n·(cost of one vjp) + T·(spectral cost): with a
whole-batch state n = B·d it grows fast. The README's quick-start line (BN cell, n = 8·64 = 512, T = 10^4,
``spectral="auto"``) took about 15 minutes on 2 CPU cores in a user trial. To cut it: ``per_example=True``
(n = d per example, for steps without batch coupling), ``probes=k`` (k rows instead of n: a Hutchinson
estimate of the Frobenius norm), ``spectral=None``, or ``wrt=`` to select part of the state.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow.checks import is_int, positive_int, prng_key
from gradflow.jacobians import reverse_pass, run_engine, spectral_init, spectral_reducer, warn_neg_inf
from gradflow.per_example import ExamplePlan
from gradflow.progress import reporting, resolve
from gradflow.reprs import short_repr
from gradflow.statemap import StateMap, all_finite, validate_inputs

__all__ = ["StreamingResult", "streaming_log_norms", "forward_states", "lower_streaming"]


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

    def __repr__(self) -> str:
        return short_repr(self)


def forward_states(step, carry0, xs):
    """One forward scan: (h_0..h_{T-1} stacked, h_T, (T,) finiteness flags of h_1..h_T).

    h_0..h_{T-1} are the states each step's Jacobian is taken at.
    """

    def body(h, x):
        new = step(h, x)
        return new, (h, all_finite(new))

    hT, (prev, flags) = jax.lax.scan(body, carry0, xs)
    return prev, hT, flags


@functools.partial(jax.jit, static_argnames=("step", "mask", "spectral", "power_iters", "every"))
def _stream_jit(step, mask, spectral, power_iters, carry0, xs, probes, every=0):
    full = StateMap.from_carry(carry0)
    sel_map = full.with_mask(mask)
    dt = full.dtype
    n = sel_map.n
    if probes is None:
        rows, offset = None, jnp.zeros((), dt)
    else:
        sel = jnp.asarray(sel_map.selection_in(full))
        rows = jnp.zeros((probes.shape[0], full.n), dt).at[:, sel].set(probes.astype(dt))
        offset = -0.5 * jnp.log(jnp.asarray(probes.shape[0], dt))
    v0 = spectral_init(spectral, n, dt)
    reduce = spectral_reducer(spectral, power_iters, n)
    log_scale, (log_f, log_s), flags = reverse_pass(
        step, mask, carry0, xs, reduce, v0, rows=rows, every=every
    )
    return log_scale + log_f + offset, log_scale + log_s, flags


def streaming_log_norms(
    step, carry0, xs, *, wrt=None, probes=None, key=None, spectral="auto", power_iters=10, per_example=False,
    progress=None,
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
        per_example: run the step on each example alone (see :func:`gradflow.jacobians`): results (B, T);
            the probes (k, m) are shared by the examples, m the per-example state size.
        progress: None/"auto" (progress lines on stderr every ~10 % of the reverse pass when T >= 10^4),
            True, False, or a callable receiving the lines (see :mod:`gradflow.progress`).

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
    if spectral not in ("auto", "certified", "svd", "power", None):
        raise ValueError(f"spectral must be 'auto', 'certified', 'svd', 'power' or None, got {spectral!r}")
    smap, T = validate_inputs(step, carry0, xs, wrt)
    n = smap.n // (ExamplePlan.build(step, carry0, xs, check=False).B if per_example else 1)
    P = None
    if probes is not None:
        if not is_int(probes) or probes < 1:
            raise ValueError(f"probes must be a positive int or None, got {probes!r}")
        if key is None:
            raise ValueError("probes need an explicit PRNG key: pass key=jax.random.PRNGKey(...) or an int "
                             "seed")
        key = prng_key("key", key)
        P = jax.random.normal(key, (probes, n), smap.dtype)
        spectral = None
    elif spectral == "auto":
        spectral = "svd" if n <= 64 else "certified"
    fn = functools.partial(_stream_jit, step, smap.mask, spectral, positive_int("power_iters", power_iters))
    every = resolve(progress, T)
    with reporting(progress, "streaming_log_norms (reverse pass)", every):
        log_f, log_s = run_engine(lambda c, x: fn(c, x, P, every=every), step, carry0, xs, per_example)
    warn_neg_inf(log_f, "log Frobenius norms of dh_T/dh_t", "lag", T - np.arange(T))
    return StreamingResult(log_f, log_s, T - jnp.arange(T))


def lower_streaming(step, carry0, xs, *, wrt=None, spectral="power", power_iters=4):
    """The compiled reverse scan of :func:`streaming_log_norms` (no probes), lowered for XLA's cost and
    memory analysis (``.compile().memory_analysis()``); nothing is run, carry0/xs may be ShapeDtypeStructs."""
    mask = StateMap.from_carry(carry0, wrt).mask
    return _stream_jit.lower(step, mask, spectral, power_iters, carry0, xs, None)
