"""Exact all-lag Jacobians ∂h_T/∂h_t of a recurrence, for every t at once.

For a step ``step(carry, x_t) -> carry`` (the step contract in docs/CONTRACT.md) with h_0 = ``carry0`` and
h_t the state after t steps, :func:`jacobians` returns ``matrices[t] = ∂h_T/∂h_t`` for t = 0..T-1 (lag T - t).
One forward scan stores h_0..h_{T-1}; one reverse scan carries the cotangent matrix G_t = ∂h_T/∂h_t (n rows),
multiplies it by one step Jacobian per step (a vmapped vjp) and renormalizes it to unit Frobenius norm, adding
the log of the scale to a compensated running log scale. The log norms (``log_spectral_norms``,
``log_frobenius_norms``) are therefore exact at every lag, in float32 too, where the plain product over- or
underflows; the plain norms and matrices are their exp. With a partial ``wrt`` the selected columns of G_t
and the others carry separate log scales (two vjps' worth of rows per step), so a small selected block
beside large unselected columns does not underflow.

:func:`jacobian_norms` reduces G_t to its norms at each step and never stores the (T, n, n) matrices (memory
O(n^2) beyond the stored forward states).

The compiled functions are cached by ``jax.jit`` keyed on the step function object (static argument): reuse
the same step object to avoid recompiling. All functions may also be called inside a user's ``jit``/``vmap``.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow.checks import flag, positive_int, raise_if_nonfinite
from gradflow.per_example import ExamplePlan
from gradflow.progress import tick
from gradflow.reprs import short_repr
from gradflow.statemap import StateMap, all_finite, is_traced, validate_inputs

__all__ = ["JacobianResult", "jacobians", "jacobian_norms", "step_jacobians", "trajectory", "lower_engine"]

_SPECTRAL = ("certified", "svd", "power", None)


class JacobianResult(NamedTuple):
    """All-lag Jacobians and their norms (a pytree).

    Attributes:
        matrices: (T, n, n) with ``matrices[t] = ∂h_T/∂h_t`` (rows: components of h_T, columns: of h_t), or
            None when only norms were asked for.
        spectral_norms: (T,) largest singular value of ``matrices[t]`` (exact by SVD, or a power-iteration
            estimate when ``spectral="power"``; NaN when ``spectral=None``).
        frobenius_norms: (T,) Frobenius norm of ``matrices[t]``.
        lags: (T,) int, T - t.
        log_spectral_norms: (T,) natural log of the spectral norm, exact at every lag (the reverse pass
            carries a log scale): finite where the plain norm over- or underflows.
        log_frobenius_norms: (T,) natural log of the Frobenius norm (>= ``log_spectral_norms``).

    The plain norms are ``exp`` of the log norms: 0 or inf only where the true value lies outside the
    dtype's range (a warning then points to the log fields). With ``per_example=True`` every per-lag field
    gains a leading batch axis (B, T, ...); ``lags`` stays (T,).
    """

    matrices: jax.Array | None
    spectral_norms: jax.Array
    frobenius_norms: jax.Array
    lags: jax.Array
    log_spectral_norms: jax.Array | None = None
    log_frobenius_norms: jax.Array | None = None

    def __repr__(self) -> str:
        return short_repr(self)


def trajectory(step, carry0, xs):
    """Unroll ``step`` with ``lax.scan``; returns the states h_1..h_T (carry pytree with a leading T axis)."""

    def body(h, x):
        h = step(h, x)
        return h, h

    return jax.lax.scan(body, carry0, xs)[1]


def _finite_flags(smap: StateMap, states):
    """(T,) bool: whether the selected part of each state is finite."""
    leaves = smap.treedef.flatten_up_to(states)
    flags = [
        jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1)
        for x, m in zip(leaves, smap.mask, strict=True)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return functools.reduce(jnp.logical_and, flags)


def power_norm(M, v, n_iter):
    """``n_iter`` power iterations on M^T M from ``v``; returns (||M v||, v), v normalized (a lower bound).

    The warm start ``v`` is mixed with a fixed spread-out vector so that a direction that decayed at earlier
    lags can be picked up again. M is scaled by its largest entry first: M^T M squares the values, which would
    underflow (float32: below ~1e-19) or overflow where M itself is still representable.
    """
    scale = jnp.max(jnp.abs(M))
    safe = jnp.where(scale > 0, scale, jnp.ones_like(scale))
    M = M / safe
    n = v.shape[0]
    r = jnp.cos(jnp.arange(n, dtype=v.dtype) * 2.399963) / jnp.sqrt(n / 2.0)
    v = v + 0.1 * r / jnp.maximum(jnp.linalg.norm(r), jnp.finfo(v.dtype).tiny)
    v = v / jnp.linalg.norm(v)

    def it(v, _):
        w = (M @ v) @ M  # = M^T M v (a row times M: no transposed copy of M)
        return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(w.dtype).tiny), None

    v, _ = jax.lax.scan(it, v, None, length=n_iter, unroll=max(1, min(n_iter, 8)))
    return jnp.linalg.norm(M @ v) * jnp.where(scale > 0, scale, jnp.zeros_like(scale)), v


def _spectral_from_matrices(matrices, spectral, power_iters):
    """(T,) spectral norms of (T, n, n) matrices (renormalized ones: entries of order 1)."""
    if spectral == "svd":
        return jnp.linalg.svd(matrices, compute_uv=False)[..., 0]
    if spectral == "power":
        # warm start along decreasing t (increasing lag): carry the right singular vector estimate
        n = matrices.shape[-1]
        v0 = jnp.ones((n,), matrices.dtype) / jnp.sqrt(n)

        def body(v, M):
            s, v = power_norm(M, v, power_iters)
            return v, s

        return jax.lax.scan(body, v0, matrices, reverse=True)[1]
    if spectral == "certified":
        reduce = spectral_reducer("certified", 0, matrices.shape[-1])
        init = spectral_init("certified", matrices.shape[-1], matrices.dtype)
        return jnp.exp(jax.lax.scan(lambda v, M: reduce(M, v), init, matrices, reverse=True)[1][1])
    return jnp.full(matrices.shape[:1], jnp.nan, matrices.dtype)


def _check_spectral(spectral):
    if spectral not in _SPECTRAL:
        raise ValueError(f"spectral must be one of {_SPECTRAL}, got {spectral!r}")


# ------------------------------------------------------------------------------------------------------------
# The renormalized reverse pass shared by jacobians, jacobian_norms, streaming, spectra and batch: the
# cotangent matrix G_t = ∂h_T/∂h_t is carried at unit Frobenius norm, its log scale in a compensated sum.


def step_vjp_rows(step, full: StateMap, h_prev, x, G):
    """Rows of ``G @ J`` where J = ∂step(h_prev, x)/∂h_prev in the coordinates of ``full``.

    Args:
        step: the step function.
        full: StateMap of the whole differentiable state (all inexact leaves).
        h_prev: carry at which the step Jacobian is taken.
        x: the input x_t.
        G: (k, n_full) cotangent rows.

    Returns:
        (k, n_full) array ``G @ J``.
    """

    def f(v):
        return full.flatten(step(full.unflatten(v, h_prev), x))

    _, pull = jax.vjp(f, full.flatten(h_prev))
    return jax.vmap(lambda g: pull(g)[0])(G)


def previous_states(carry0, states):
    """h_0..h_{T-1}: ``carry0`` followed by all but the last of ``states`` (leading axis T)."""
    return jax.tree_util.tree_map(lambda c, s: jnp.concatenate([c[None], s[:-1]], axis=0), carry0, states)


def kahan_add(s, c, x):
    """Compensated (Kahan) sum: add ``x`` to the running sum ``s`` with compensation ``c``; returns (s, c)."""
    y = x - c
    t = s + y
    return t, jnp.where(jnp.isfinite(t), (t - s) - y, jnp.zeros_like(t))


def renormalize(G, s, c, groups=1):
    """Scale G to unit Frobenius norm and add the log of the scale to the compensated log scale (s, c).

    Max-abs first, so the norm itself cannot overflow; an all-zero G stays zero and adds -inf (an exactly
    zero Jacobian, not an underflow). With ``groups`` > 1 the rows are split into that many equal consecutive
    blocks, each scaled on its own (s and c then have shape (groups,)): rows evolve independently under
    G <- G J, so blocks that grow at different rates (different examples) never underflow one another.
    """
    tiny = jnp.finfo(G.dtype).tiny
    Gg = G.reshape(groups, -1, G.shape[-1])
    amax = jnp.max(jnp.abs(Gg), axis=(1, 2))
    d = jnp.where(amax > 0, jnp.maximum(amax, tiny), 1.0)
    Gg = Gg / d[:, None, None]
    fn = jnp.sqrt(jnp.sum(jnp.square(Gg), axis=(1, 2)))  # >= 1 unless the block is 0
    fn = jnp.where(fn > 0, fn, 1.0)
    Gg = Gg / fn[:, None, None]
    log_scale = jnp.where(amax > 0, jnp.log(d) + jnp.log(fn), -jnp.inf)
    if groups == 1:
        log_scale = log_scale[0]
    s, c = kahan_add(s, c, log_scale)
    return Gg.reshape(G.shape), s, c


def forward_and_flags(step, carry0, xs):
    """One forward scan: (h_0..h_{T-1} stacked, (T,) finiteness flags of h_1..h_T)."""

    def body(h, x):
        new = step(h, x)
        return new, (h, all_finite(new))

    _, (prev, flags) = jax.lax.scan(body, carry0, xs)
    return prev, flags


def reverse_pass(step, mask, carry0, xs, reduce, init, rows=None, groups=1, final_aux=False, every=0):
    """The renormalized reverse pass: G_t = ∂h_T/∂h_t (selected rows) by one vjp per step, at unit norm.

    Args:
        step, carry0, xs: as in :func:`jacobians`.
        mask: the selection (one bool per carry leaf).
        reduce: ``reduce(M, aux) -> (aux, out)`` applied at every t (from t = T-1 down to 0) to the
            renormalized (k, n) selected block M of G_t (true block = M * exp(log_scale[t])).
        init: initial ``aux``.
        rows: optional (k, n_full) starting cotangent rows (default the identity rows of the selection).
        groups: renormalize this many equal consecutive row blocks separately (see :func:`renormalize`);
            M's row block g is then the true one times exp(log_scale[t, g]).
        final_aux: also return the ``aux`` after the last step (t = 0), as a fourth value.
        every: report progress every that many steps of the reverse pass (0: off; see gradflow.progress).

    Returns:
        (log_scale (T,) or (T, groups), outs stacked along t, finiteness flags (T,)). With a partial
        ``mask`` log_scale is the scale of the selected columns (the others carry their own).
    """
    full = StateMap.from_carry(carry0)
    sel_map = full.with_mask(mask)
    idx = jnp.asarray(sel_map.selection_in(full))
    whole = sel_map.n == full.n
    prev, flags = forward_and_flags(step, carry0, xs)
    G0 = jnp.eye(full.n, dtype=full.dtype)[idx] if rows is None else rows.astype(full.dtype)

    T = prev_len = jax.tree_util.tree_leaves(xs)[0].shape[0]
    zero = jnp.zeros(() if groups == 1 else (groups,), full.dtype)
    inputs = (prev, xs, jnp.arange(T))

    if whole:
        def body(carry, inp):
            G, s, c, aux = carry
            h, x, t = inp
            tick(prev_len - t, T, every)
            G, s, c = renormalize(step_vjp_rows(step, full, h, x, G), s, c, groups)
            aux, out = reduce(G, aux)
            return (G, s, c, aux), (s, out)

        last, (log_scale, outs) = jax.lax.scan(body, (G0, zero, zero, init), inputs, reverse=True)
        return (log_scale, outs, flags, last[3]) if final_aux else (log_scale, outs, flags)

    # A partial selection: the selected columns of G (A) and the others (U) carry separate log scales. One
    # common scale lets large unselected columns push the selected block below the dtype's range (its logs
    # -inf). Each part of G J = exp(s_A) A J + exp(s_U) U J is formed relative to the larger of its two
    # contributions, each taken at unit max-abs first: a contribution vanishes only where it is negligible.
    cols = jnp.zeros((full.n,), bool).at[idx].set(True)
    k, tiny = G0.shape[0], jnp.finfo(full.dtype).tiny

    def contribution(P, keep, s, c):
        """P's columns ``keep`` per group at max-abs 1; their compensated log scale (s, c) + log max-abs."""
        Pg = jnp.where(keep, P, 0.0).reshape(groups, -1, full.n)
        amax = jnp.max(jnp.abs(Pg), axis=(1, 2))
        d = jnp.where(amax > 0, jnp.maximum(amax, tiny), 1.0)
        ls, lc = kahan_add(jnp.reshape(s, (-1,)), jnp.reshape(c, (-1,)),
                           jnp.where(amax > 0, jnp.log(d), -jnp.inf))
        return Pg / d[:, None, None], ls, lc

    def part(PA, PU, sa, ca, su, cu, keep):
        """Columns ``keep`` of exp(s_A) PA + exp(s_U) PU, renormalized, with their log scale."""
        (GA, la, ka), (GU, lu, ku) = contribution(PA, keep, sa, ca), contribution(PU, keep, su, cu)
        first = la >= lu
        ms, mc = jnp.where(first, la, lu), jnp.where(first, ka, ku)
        ok = jnp.isfinite(ms)
        ms, mc = jnp.where(ok, ms, 0.0), jnp.where(ok, mc, 0.0)
        wa = jnp.where(jnp.isfinite(la), jnp.exp((la - ms) - (ka - mc)), 0.0)
        wu = jnp.where(jnp.isfinite(lu), jnp.exp((lu - ms) - (ku - mc)), 0.0)
        G = (wa[:, None, None] * GA + wu[:, None, None] * GU).reshape(k, full.n)
        shape = () if groups == 1 else (groups,)
        return renormalize(G, ms.reshape(shape), mc.reshape(shape), groups)  # all-zero: s = -inf

    def body(carry, inp):
        A, sa, ca, U, su, cu, aux = carry
        h, x, t = inp
        tick(prev_len - t, T, every)
        P = step_vjp_rows(step, full, h, x, jnp.concatenate([A, U]))  # one vmapped vjp for both parts
        new_A, new_sa, new_ca = part(P[:k], P[k:], sa, ca, su, cu, cols)
        U, su, cu = part(P[:k], P[k:], sa, ca, su, cu, ~cols)
        aux, out = reduce(new_A[:, idx], aux)
        return (new_A, new_sa, new_ca, U, su, cu, aux), (new_sa, out)

    start = (jnp.where(cols, G0, 0.0), zero, zero, jnp.where(cols, 0.0, G0), zero, zero, init)
    last, (log_scale, outs) = jax.lax.scan(body, start, inputs, reverse=True)
    return (log_scale, outs, flags, last[6]) if final_aux else (log_scale, outs, flags)


def safe_log(x):
    """log(x) with log(0) = -inf and no NaN gradient trouble (x >= 0)."""
    return jnp.log(jnp.where(x > 0, x, 0.0))


def plain_from_log(log_norms):
    """exp(log_norms): 0 or inf only where the true value lies outside the dtype's range."""
    return jnp.exp(log_norms)


def warn_out_of_range(
    plain, log_norms, what="norms", fields="log_spectral_norms / log_frobenius_norms", stacklevel=3
):
    """Warn when plain norms are 0, subnormal or inf although their logs are finite (skipped under jit)."""
    if is_traced(plain, log_norms):
        return
    plain, log_norms = np.asarray(plain), np.asarray(log_norms)
    tiny = np.finfo(plain.dtype).tiny
    bad = np.isfinite(log_norms) & ~((plain >= tiny) & np.isfinite(plain))
    if bad.any():
        warnings.warn(
            f"{int(bad.sum())} of {bad.size} {what} lie outside {plain.dtype}'s range (the plain values are "
            f"0, subnormal or inf there); the exact natural logs are in {fields}",
            RuntimeWarning,
            stacklevel=stacklevel,
        )


ZERO_HINT = (
    "an exact zero: either the step's Jacobian is exactly singular there (a dead relu, a zero weight) "
    "or a derivative rounded to 0 (jnp.tanh's 1 - tanh(a)**2 for |a| > 9 and jax.nn.sigmoid's "
    "s(1 - s) for a > 17 in float32; gradflow's cells use gradflow.stable.tanh / sigmoid, whose "
    "derivatives do not cancel: use them in a user step too)"
)


def warn_neg_inf(log_values, what, where="lag", positions=None, axis=-1, stacklevel=3):
    """Warn when natural logs hold -inf, naming how many and the first position (skipped under jit).

    Args:
        log_values: the logs; ``axis`` runs over ``positions``.
        what: what the values are ("log spectral norms", "log|R_ii| of the QR iteration", ...).
        where: the name of the position ("lag", "step").
        positions: (T,) labels of the positions along ``axis`` (default 0..T-1).
        axis: the position axis (negative).
    """
    if is_traced(log_values):
        return
    v = np.asarray(log_values)
    bad = np.isneginf(v)
    if not bad.any():
        return
    hit = np.any(bad, axis=tuple(i for i in range(v.ndim) if i != v.ndim + axis))
    labels = np.arange(hit.size) if positions is None else np.asarray(positions)
    warnings.warn(
        f"{int(bad.sum())} of {bad.size} {what} are -inf (first at {where} {int(labels[np.argmax(hit)])}): "
        + ZERO_HINT,
        RuntimeWarning,
        stacklevel=stacklevel,
    )


def temple_step(M, u, mass):
    """One power step on A = M M^T from the unit vector ``u``, with Temple's bound on the top eigenvalue.

    theta = u^T A u <= lambda_1 (a Rayleigh quotient). Since A is positive semidefinite and trace(A) =
    ||M||_F^2 = ``mass``, lambda_2 <= a = mass - theta; when a < theta, Temple's inequality gives
    lambda_1 <= theta + ||A u - theta u||^2 / (theta - a). Returns (theta, bound on (lambda_1 - theta) /
    theta (inf when a >= theta), the next unit vector A u / ||A u|| (a uniform one where A u = 0, so that
    a lag with an exactly zero Jacobian block does not leave the warm start at zero for the later lags)).
    """
    tiny = jnp.finfo(M.dtype).tiny
    v = u @ M  # = M^T u (a row times M: no transposed copy of M)
    th = jnp.sum(jnp.square(v))
    w = M @ v
    r2 = jnp.sum(jnp.square(w - th * u))
    a = mass - th
    bound = jnp.where(a < th, r2 / jnp.maximum(th - a, tiny), jnp.inf) / jnp.maximum(th, tiny)
    nw = jnp.linalg.norm(w)
    spread = jnp.ones_like(u) / jnp.sqrt(jnp.asarray(u.shape[0], u.dtype))  # restart where A u = 0
    return th, bound, jnp.where(nw > 0, w / jnp.where(nw > 0, nw, 1.0), spread)


def certified_sigma(M, u, max_iters=20):
    """Largest singular value of M, certified to 1e-3 relative (float32; 1e-12 in float64), else by SVD.

    Power steps on M M^T from the unit left vector ``u`` warm-started from the previous lag (the left
    singular vectors of ∂h_T/∂h_t live in h_T's space and settle as the lag grows), each with Temple's
    rigorous bound (:func:`temple_step`), until the bound on lambda_1 = sigma^2 is below 2e-3 (2e-12), at
    most ``max_iters`` extra steps, and at most 3 while Temple does not apply (a flat spectrum, where the top
    eigenvalue holds under half the Frobenius mass, typical of short lags, or a poor start vector).
    Certified, sigma is the midpoint of the bracket [theta, theta (1 + bound)] on lambda_1 (error <= bound / 4
    on sigma); otherwise an exact SVD norm.
    Returns (sigma, next unit vector u, certified flag).
    """
    tol = 2e-3 if jnp.finfo(M.dtype).bits <= 32 else 2e-12
    mass = jnp.sum(jnp.square(M))
    th, bound, u = temple_step(M, u, mass)

    def more(c):
        i, u, _, _ = c
        th, bound, u = temple_step(M, u, mass)
        return i + 1, u, th, bound

    def go_on(c):
        return (c[3] > tol) & (jnp.isfinite(c[3]) | (c[0] < 3)) & (c[0] < max_iters)

    _, u, th, bound = jax.lax.while_loop(go_on, more, (0, u, th, bound))
    ok = bound <= tol
    s = jax.lax.cond(ok, lambda: jnp.sqrt(th * (1 + 0.5 * bound)), lambda: jnp.linalg.norm(M, ord=2))
    return s, u, ok


def spectral_init(spectral, n, dtype):
    """The warm-start vector carried by :func:`spectral_reducer` (power: right; certified: left)."""
    return jnp.ones((n,), dtype) / jnp.sqrt(jnp.asarray(n, dtype))


def spectral_reducer(spectral, power_iters, n):
    """``reduce`` for :func:`reverse_pass` giving (log Frobenius, log spectral) of the renormalized M.

    The carried ``aux`` is the warm start of the iterative methods (see :func:`spectral_init`).
    """

    def reduce(M, v):
        log_f = safe_log(jnp.sqrt(jnp.sum(jnp.square(M))))
        if spectral == "svd":
            log_s = safe_log(jnp.linalg.norm(M, ord=2))
        elif spectral == "power":
            sig, v = power_norm(M, v, power_iters)
            log_s = safe_log(sig)
        elif spectral == "certified":
            sig, v, _ = certified_sigma(M, v)
            log_s = safe_log(sig)
        else:
            log_s = jnp.full((), jnp.nan, M.dtype)
        return v, (log_f, jnp.minimum(log_s, log_f))  # rounding must not put spectral above Frobenius

    return reduce


@functools.partial(jax.jit, static_argnames=("step", "mask", "spectral", "power_iters"))
def _jacobians_jit(step, mask, spectral, power_iters, carry0, xs):
    log_scale, Ms, flags = reverse_pass(step, mask, carry0, xs, lambda M, a: (a, M), ())
    log_f = log_scale + safe_log(jnp.sqrt(jnp.sum(jnp.square(Ms), axis=(1, 2))))
    log_s = jnp.minimum(log_scale + safe_log(_spectral_from_matrices(Ms, spectral, power_iters)), log_f)
    half = jnp.exp(0.5 * log_scale)[:, None, None]  # two halves: exp(log_scale) alone may overflow
    return (Ms * half) * half, log_s, log_f, flags


@functools.partial(jax.jit, static_argnames=("step", "mask", "spectral", "power_iters"))
def _norms_jit(step, mask, spectral, power_iters, carry0, xs):
    n = StateMap.from_carry(carry0, mask=mask).n
    dt = StateMap.from_carry(carry0).dtype
    log_scale, (log_f, log_s), flags = reverse_pass(
        step, mask, carry0, xs, spectral_reducer(spectral, power_iters, n), spectral_init(spectral, n, dt)
    )
    return log_scale + log_s, log_scale + log_f, flags


def _result(matrices, log_s, log_f, T, spectral) -> JacobianResult:
    spec, fro = plain_from_log(log_s), plain_from_log(log_f)
    warn_out_of_range(fro, log_f, "Frobenius norms", "log_frobenius_norms", stacklevel=4)
    warn_neg_inf(log_f, "log Frobenius norms of dh_T/dh_t", "lag", T - np.arange(T), stacklevel=4)
    if spectral is not None:
        warn_out_of_range(spec, log_s, "spectral norms", "log_spectral_norms", stacklevel=4)
    return JacobianResult(matrices, spec, fro, T - jnp.arange(T), log_s, log_f)


def run_engine(fn, step, carry0, xs, per_example):
    """``fn(carry0, xs)`` -> (..., flags), on the batch or (``per_example``) on each example alone; the
    non-finite check is applied to the flags (any example)."""
    if flag("per_example", per_example):
        out = ExamplePlan.build(step, carry0, xs).vmap(fn, carry0, xs)
        flags = jnp.all(out[-1], axis=0)
    else:
        out = fn(carry0, xs)
        flags = out[-1]
    raise_if_nonfinite(flags)
    return out[:-1]


def jacobians(
    step, carry0, xs, *, wrt=None, spectral="svd", power_iters=20, per_example=False
) -> JacobianResult:
    """Exact ∂h_T/∂h_t for every t = 0..T-1, by one renormalized reverse pass (one vjp per step).

    Args:
        step: ``step(carry, x_t) -> carry``, pure and jittable.
        carry0: initial carry pytree h_0 (leaves with a leading batch axis B).
        xs: inputs, leaves with a leading time axis: (T, B, input_size).
        wrt: optional pytree of bools (the carry's structure or a prefix) selecting the leaves that make up
            the state; default all inexact leaves. With a partial selection the result is the corresponding
            block of the whole-state Jacobian (other leaves still carry the dynamics).
        spectral: "svd" (exact spectral norms by batched SVD, the default), "certified" (see
            :func:`jacobian_norms`), "power" (warm-started power iteration, ``power_iters`` iterations per
            lag; a lower-bound estimate) or None (skip: NaN).
        power_iters: iterations per lag for ``spectral="power"``.
        per_example: run the step on each example of the batch alone (carry (1, ...), inputs (T, 1, ...),
            vmapped): every per-lag field gains a leading batch axis, n is the per-example state size.
            A batch-coupled step raises ValueError (see :mod:`gradflow.per_example`).

    Returns:
        JacobianResult with ``matrices`` (T, n, n), ``spectral_norms`` (T,), ``frobenius_norms`` (T,),
        ``lags`` (T,), ``log_spectral_norms`` (T,), ``log_frobenius_norms`` (T,). The log norms are exact at
        every lag; the matrices and plain norms are their exp (entries can under/overflow at long lags).
        Memory: T * n^2 numbers; use :func:`jacobian_norms` or :mod:`gradflow.streaming` when that does
        not fit.

    Raises:
        ValueError: if the step does not accept (carry0, xs[0]) or changes the carry's
            structure/shapes/dtypes,
            T = 0, carry0 or a later state is non-finite, or ``spectral`` is unknown.

    Example:
        >>> import jax.numpy as jnp
        >>> W = jnp.array([[0.5, 0.1], [0.0, 0.9]])
        >>> step = lambda h, x: h @ W.T + x
        >>> r = jacobians(step, jnp.ones((1, 2)), jnp.zeros((3, 1, 2)))
        >>> bool(jnp.allclose(r.matrices[0], W @ W @ W))
        True
    """
    _check_spectral(spectral)
    smap, T = validate_inputs(step, carry0, xs, wrt)
    iters = positive_int("power_iters", power_iters)
    fn = functools.partial(_jacobians_jit, step, smap.mask, spectral, iters)
    matrices, log_s, log_f = run_engine(fn, step, carry0, xs, per_example)
    return _result(matrices, log_s, log_f, T, spectral)


def jacobian_norms(
    step, carry0, xs, *, wrt=None, spectral="certified", power_iters=20, per_example=False
) -> JacobianResult:
    """Norms of ∂h_T/∂h_t for every t, exactly, without storing the (T, n, n) matrices.

    The same renormalized reverse pass as :func:`jacobians`, reducing the cotangent matrix to its norms at
    each step (memory O(n^2) beyond the stored forward states). The log norms are exact at every lag in
    float32 even where the plain norms over/underflow.

    Args:
        step, carry0, xs, wrt: as in :func:`jacobians`.
        spectral: "certified" (default: power steps from a vector warm-started at the previous lag, until
            Temple's bound guarantees 1e-3 relative accuracy in float32 (1e-12 in float64), an exact SVD where
            it cannot; see :func:`certified_sigma`), "svd" (exact, one SVD per step), "power"
            (warm-started power iteration, no accuracy check) or None.
        power_iters: power iterations per lag for ``spectral="power"``.
        per_example: as in :func:`jacobians` (results (B, T)).

    Returns:
        JacobianResult with ``matrices=None``.

    Example:
        >>> import jax.numpy as jnp
        >>> step = lambda h, x: 0.7 * h
        >>> r = jacobian_norms(step, jnp.ones((1, 2)), jnp.zeros((125, 1, 1)))
        >>> f"{float(r.frobenius_norms[0]):.3e}"  # sqrt(2) 0.7^125 = 6.134e-20: its square underflows float32
        '6.134e-20'
    """
    _check_spectral(spectral)
    smap, T = validate_inputs(step, carry0, xs, wrt)
    fn = functools.partial(_norms_jit, step, smap.mask, spectral, positive_int("power_iters", power_iters))
    log_s, log_f = run_engine(fn, step, carry0, xs, per_example)
    return _result(None, log_s, log_f, T, spectral)


@functools.partial(jax.jit, static_argnames=("step", "mask"))
def _step_jacobians_jit(step, mask, carry0, xs):
    full = StateMap.from_carry(carry0)
    sel_map = full.with_mask(mask)
    states = trajectory(step, carry0, xs)
    prev = previous_states(carry0, states)

    def one(h, x):
        def f(v):
            return sel_map.flatten(step(sel_map.unflatten(v, h), x))

        return jax.jacfwd(f)(sel_map.flatten(h))

    return jax.vmap(one)(prev, xs), _finite_flags(full, states)


def step_jacobians(step, carry0, xs, *, wrt=None):
    """Per-step Jacobians J_t = ∂h_t/∂h_{t-1} (t = 1..T) along the trajectory, by ``jax.jacfwd``.

    With a partial ``wrt`` this is the selected block of each one-step Jacobian (other leaves held fixed), so
    the product of these blocks is *not* the multi-step block; it is with ``wrt=None``.

    Returns:
        (T, n, n) array, entry t-1 is J_t; ``matrices[t]`` of :func:`jacobians` = J_T ... J_{t+1}.

    Raises:
        ValueError: bad step/carry/xs, a non-finite state h_t (as :func:`jacobians`).
    """
    smap, _ = validate_inputs(step, carry0, xs, wrt)
    matrices, flags = _step_jacobians_jit(step, smap.mask, carry0, xs)
    raise_if_nonfinite(flags)
    return matrices



def lower_engine(kind, step, carry0, xs, *, wrt=None, spectral=None, power_iters=4):
    """The engine's compiled function, lowered (``jax.stages.Lowered``) for XLA's cost and memory analysis:
    ``lower_engine(...).compile().memory_analysis()``. Nothing is run; carry0 and xs may be
    ``jax.ShapeDtypeStruct``.

    Args:
        kind: "jacobians" (the (T, n, n) matrices) or "norms" (:func:`jacobian_norms`); for the streaming
            mode see :func:`gradflow.streaming.lower_streaming`.
        step, carry0, xs, wrt: as in :func:`jacobians`.
        spectral, power_iters: the spectral-norm method.
    """
    mask = StateMap.from_carry(carry0, wrt).mask
    if kind == "jacobians":
        return _jacobians_jit.lower(step, mask, spectral, power_iters, carry0, xs)
    if kind == "norms":
        return _norms_jit.lower(step, mask, spectral, power_iters, carry0, xs)
    raise ValueError(f"kind must be 'jacobians' or 'norms', got {kind!r}")
