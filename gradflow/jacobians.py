"""Exact all-lag Jacobians ∂h_T/∂h_t of a recurrence, for every t at once.

For a step ``step(carry, x_t) -> carry`` (the step contract in docs/CONTRACT.md) with h_0 = ``carry0`` and
h_t the state after t steps, :func:`jacobians` returns ``matrices[t] = ∂h_T/∂h_t`` for t = 0..T-1 (lag T - t).
It injects a zero perturbation eps_t into h_t at every step of the unrolled scan and takes one ``jax.jacrev``
of h_T with respect to all eps at once: a single reverse pass whose cotangent is the (n, n) matrix ∂h_T/∂h_t,
propagated backwards by one matrix product per step.

:func:`jacobian_norms` computes the same norms by the same reverse pass written as an explicit reverse scan,
but never stores the (T, n, n) matrices (memory O(n^2) beyond the stored forward states).

The compiled functions are cached by ``jax.jit`` keyed on the step function object (static argument): reuse
the same step object to avoid recompiling. All functions may also be called inside a user's ``jit``/``vmap``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradflow.checks import positive_int, raise_if_nonfinite
from gradflow.statemap import StateMap, validate_inputs

__all__ = ["JacobianResult", "jacobians", "jacobian_norms", "step_jacobians", "trajectory"]

_SPECTRAL = ("svd", "power", None)


class JacobianResult(NamedTuple):
    """All-lag Jacobians and their norms (a pytree).

    Attributes:
        matrices: (T, n, n) with ``matrices[t] = ∂h_T/∂h_t`` (rows: components of h_T, columns: of h_t), or
            None when only norms were asked for.
        spectral_norms: (T,) largest singular value of ``matrices[t]`` (exact by SVD, or a power-iteration
            estimate when ``spectral="power"``; NaN when ``spectral=None``).
        frobenius_norms: (T,) Frobenius norm of ``matrices[t]``.
        lags: (T,) int, T - t.
    """

    matrices: jax.Array | None
    spectral_norms: jax.Array
    frobenius_norms: jax.Array
    lags: jax.Array


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
        w = M.T @ (M @ v)
        return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(w.dtype).tiny), None

    v, _ = jax.lax.scan(it, v, None, length=n_iter, unroll=max(1, min(n_iter, 8)))
    return jnp.linalg.norm(M @ v) * jnp.where(scale > 0, scale, jnp.zeros_like(scale)), v


def _spectral_from_matrices(matrices, spectral, power_iters):
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
    return jnp.full(matrices.shape[:1], jnp.nan, matrices.dtype)


@functools.partial(jax.jit, static_argnames=("step", "mask", "spectral", "power_iters"))
def _jacobians_jit(step, mask, spectral, power_iters, carry0, xs):
    smap = StateMap.from_carry(carry0, mask=mask)
    T = jax.tree_util.tree_leaves(xs)[0].shape[0]
    n = smap.n

    def final_state(eps):
        def body(h, inp):
            e, x = inp
            h = step(smap.add(h, e), x)
            return h, h

        hT, states = jax.lax.scan(body, carry0, (eps, xs))
        return smap.flatten(hT), _finite_flags(smap, states)

    eps0 = jnp.zeros((T, n), smap.dtype)
    jac, flags = jax.jacrev(final_state, has_aux=True)(eps0)  # (n_out, T, n_in)
    matrices = jnp.moveaxis(jac, 0, 1)  # (T, n_out, n_in)
    fro = jnp.sqrt(jnp.sum(jnp.square(matrices), axis=(1, 2)))
    spec = _spectral_from_matrices(matrices, spectral, power_iters)
    return matrices, spec, fro, flags


def _check_spectral(spectral):
    if spectral not in _SPECTRAL:
        raise ValueError(f"spectral must be one of {_SPECTRAL}, got {spectral!r}")


def jacobians(step, carry0, xs, *, wrt=None, spectral="svd", power_iters=20) -> JacobianResult:
    """Exact ∂h_T/∂h_t for every t = 0..T-1, by one ``jax.jacrev`` over injected zero perturbations.

    Args:
        step: ``step(carry, x_t) -> carry``, pure and jittable.
        carry0: initial carry pytree h_0 (leaves with a leading batch axis B).
        xs: inputs, leaves with a leading time axis: (T, B, input_size).
        wrt: optional pytree of bools (the carry's structure or a prefix) selecting the leaves that make up
            the state; default all inexact leaves. With a partial selection the result is the corresponding
            block of the whole-state Jacobian (other leaves still carry the dynamics).
        spectral: "svd" (exact spectral norms by batched SVD, the default), "power" (warm-started power
            iteration, ``power_iters`` iterations per lag; a lower-bound estimate) or None (skip: NaN).
        power_iters: iterations per lag for ``spectral="power"``.

    Returns:
        JacobianResult with ``matrices`` (T, n, n), ``spectral_norms`` (T,), ``frobenius_norms`` (T,),
        ``lags`` (T,). Memory: T * n^2 numbers; use :func:`jacobian_norms` or :mod:`gradflow.streaming` when
        that does not fit.

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
    matrices, spec, fro, flags = _jacobians_jit(step, smap.mask, spectral, iters, carry0, xs)
    raise_if_nonfinite(flags)
    return JacobianResult(matrices, spec, fro, T - jnp.arange(T))


# ------------------------------------------------------------------------------------------------------------
# The same reverse pass as an explicit reverse scan (norms without the (T, n, n) matrices; shared with
# streaming).


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


@functools.partial(jax.jit, static_argnames=("step", "mask", "spectral", "power_iters"))
def _norms_jit(step, mask, spectral, power_iters, carry0, xs):
    full = StateMap.from_carry(carry0)
    sel_map = full.with_mask(mask)
    sel = jnp.asarray(sel_map.selection_in(full))
    states = trajectory(step, carry0, xs)
    flags = _finite_flags(full, states)
    prev = previous_states(carry0, states)
    n = sel_map.n
    G0 = jnp.eye(full.n, dtype=full.dtype)[sel]  # (n, n_full)
    v0 = jnp.ones((n,), full.dtype) / jnp.sqrt(n)

    def body(carry, inp):
        G, v = carry
        h, x = inp
        G = step_vjp_rows(step, full, h, x, G)
        M = G if sel_map.n == full.n else G[:, sel]  # no gather when the whole state is selected
        fro = jnp.sqrt(jnp.sum(jnp.square(M)))
        if spectral == "svd":
            s = jnp.linalg.norm(M, ord=2)
        elif spectral == "power":
            s, v = power_norm(M, v, power_iters)
        else:
            s = jnp.full((), jnp.nan, M.dtype)
        return (G, v), (s, fro)

    _, (spec, fro) = jax.lax.scan(body, (G0, v0), (prev, xs), reverse=True)
    return spec, fro, flags


def jacobian_norms(step, carry0, xs, *, wrt=None, spectral="svd", power_iters=20) -> JacobianResult:
    """Norms of ∂h_T/∂h_t for every t, exactly, without storing the (T, n, n) matrices.

    The same reverse pass as :func:`jacobians` written as a reverse ``lax.scan`` that carries the (n, n_full)
    cotangent matrix G_t = ∂h_T/∂h_t and reduces it to norms at each step (no renormalization: values are the
    plain products, so they can over/underflow for long sequences; see
    :func:`gradflow.streaming.streaming_log_norms`).

    Args:
        step, carry0, xs, wrt: as in :func:`jacobians`.
        spectral: "svd" (exact, one SVD per step), "power" (warm-started power iteration) or None.
        power_iters: power iterations per lag for ``spectral="power"``.

    Returns:
        JacobianResult with ``matrices=None``.

    Example:
        >>> import jax.numpy as jnp
        >>> step = lambda h, x: jnp.tanh(h @ jnp.eye(2).T * 0.5 + x)
        >>> r = jacobian_norms(step, jnp.ones((1, 2)), jnp.zeros((4, 1, 2)))
        >>> r.frobenius_norms.shape
        (4,)
    """
    _check_spectral(spectral)
    smap, T = validate_inputs(step, carry0, xs, wrt)
    iters = positive_int("power_iters", power_iters)
    spec, fro, flags = _norms_jit(step, smap.mask, spectral, iters, carry0, xs)
    raise_if_nonfinite(flags)
    return JacobianResult(None, spec, fro, T - jnp.arange(T))


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

