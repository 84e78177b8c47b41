"""Parameter sensitivity ∂h_T/∂θ of a recurrence, split by the step at which θ acts, for every lag at once.

The state Jacobian ∂h_T/∂h_t (``gradflow.jacobians``) says how a perturbation of the state propagates; it
does not say how much the states move when the *parameters* move, which is what a gradient step does. With a
parameterized step ``pstep(params, carry, x_t) -> carry`` (:func:`param_step` makes one from our cells, a
user's linen or nnx cell; any pure function of that signature works as is), h_T depends on θ through every
step, and

    ∂h_T/∂θ = Σ_{t=0}^{T-1} C_t,   C_t = ∂h_T/∂h_{t+1} · ∂pstep(θ, h_t, x_{t+1})/∂θ,

C_t being the contribution of θ's use in the step that reads h_t (the same as perturbing a private copy of
θ at that step only: the "injected per-step copies" of ``gradflow.jacobians``). Its lag T − t counts the
steps from that use to h_T, that step included, so ``contributions[t]`` lines up with the engine's
``matrices[t] = ∂h_T/∂h_t`` (both perturbations propagate through the same T − t steps).

:func:`param_sensitivity` gets every C_t from one renormalized reverse pass (the engine's, one vjp per step
over the rows of ∂h_T/∂h_{t+1}, which also yields the parameter cotangent of that step), reduces each C_t to
its Frobenius norm per parameter group (top-level keys of the params pytree, or every leaf) and accumulates
the total Σ_t C_t at a running log scale, so both are exact in log space at any length in float32. With
``probes=k`` the rows are k Rademacher vectors instead of the identity: a matrix-free Hutchinson estimate
(||C||_F² = E ||zᵀC||²) with its standard error, for states too large to materialize n rows.

The 1-D closed forms of the curse of memory (Zucchet & Orvieto 2024) are in ``gradflow.theory``
(`memory_state_moment`, `memory_sensitivity_moment`).

Example:
    >>> import jax.numpy as jnp
    >>> pstep = lambda lam, h, x: lam * h + x          # h_t = λ h_{t-1} + x_t, θ = λ
    >>> r = param_sensitivity(pstep, jnp.float32(0.5), jnp.zeros((1, 1)), jnp.ones((3, 1, 1)))
    >>> [round(float(v), 4) for v in jnp.exp(r.log_contribution_all)]  # λ^(T-t-1) h_t: 0, 0.5, 1.5
    [0.0, 0.5, 1.5]
    >>> round(float(jnp.exp(r.log_total_all)), 4)                       # ∂h_3/∂λ = 2λ + 1 ... at λ = 0.5
    2.0
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from gradflow.cells import GradflowCell
from gradflow.checks import positive_int, raise_if_nonfinite
from gradflow.jacobians import forward_and_flags, renormalize, safe_log
from gradflow.per_example import ExamplePlan
from gradflow.reprs import short_repr
from gradflow.statemap import StateMap, validate_inputs
from gradflow.step import as_step, check_finite, check_floating

__all__ = ["ParamSensitivity", "param_step", "param_sensitivity", "param_groups"]

PStep = Callable[[Any, Any, jax.Array], Any]
GROUPINGS = ("top", "leaves", "all")


class ParamSensitivity(NamedTuple):
    """Per-lag parameter sensitivity of h_T (natural logs of Frobenius norms).

    Attributes:
        groups: tuple of G group names (top-level keys of the params pytree, leaf paths, or ("all",)).
        log_contributions: (T, G) ln ||C_t||_F restricted to each group's parameters, C_t = ∂h_T/∂h_{t+1} ·
            ∂pstep(θ, h_t, x_{t+1})/∂θ (-inf where exactly zero).
        log_contribution_all: (T,) the same over all parameters.
        log_total: (G,) ln ||∂h_T/∂θ||_F per group (the norm of the sum over steps, not a sum of norms).
        log_total_all: () the same over all parameters.
        log_state_norm: () ln ||h_T||_F of the selected state (to express sensitivity relative to the state).
        log_state_jacobian: (T,) ln ||∂h_T/∂h_t||_F (rows: the selected h_T, columns: the whole state h_t),
            the state Jacobian of the same pass (= `gradflow.jacobian_norms`' ``log_frobenius_norms`` for
            ``wrt=None``); with ``probes`` its Hutchinson estimate.
        lags: (T,) int, T - t.
        contribution_se: with ``probes``: (T, G) standard error of ``log_contributions`` (delta method: the
            relative standard error of the Frobenius estimate); None when exact.
        total_se: with ``probes``: (G,) the same for ``log_total``; None when exact.

    With ``per_example=True`` every field but ``groups`` and ``lags`` gains a leading batch axis B.
    """

    groups: tuple
    log_contributions: jax.Array
    log_contribution_all: jax.Array
    log_total: jax.Array
    log_total_all: jax.Array
    log_state_norm: jax.Array
    log_state_jacobian: jax.Array
    lags: jax.Array
    contribution_se: jax.Array | None = None
    total_se: jax.Array | None = None

    def __repr__(self) -> str:
        return short_repr(self)


# ------------------------------------------------------------------------------------- parameterized steps


def param_step(cell: Any, variables: Any = None, train: bool = False,
               key: jax.Array | None = None) -> tuple[PStep, Any]:
    """A parameterized step ``pstep(params, carry, x_t) -> carry`` and its parameters, from a cell.

    Our cells and a user's linen cell: ``params = variables["params"]``; the other collections
    (``batch_stats``, ...) stay closed over. An nnx cell: ``params`` is its ``nnx.Param`` state (an
    ``nnx.State``, a pytree), everything else stays closed over (``variables``: None for the module's own
    state, or an ``nnx.State`` to use instead). A plain function ``f(params, carry, x)`` is returned as is,
    with ``variables`` as its params. The same eager checks as `gradflow.as_step` (shapes, finiteness,
    floating parameters, the dropout key) apply.

    Args:
        cell: our cell (`gradflow.make_cell`), a linen module, an nnx module, or a function
            ``f(params, carry, x)``.
        variables: the variables dict (linen, ours), None / an nnx.State (nnx), or the params (function).
        train: batch statistics and dropout (True) or running statistics, no dropout (False); our cells and
            nnx cells.
        key: dropout key (our cells in train mode with dropout; a linen cell's ``dropout`` rng).

    Returns:
        ``(pstep, params)`` with ``pstep(params, carry, x_t) -> carry`` pure and jittable.

    Example:
        >>> import jax, jax.numpy as jnp, gradflow
        >>> cell = gradflow.make_cell("tanh", 3, 2)
        >>> pstep, params = param_step(cell, gradflow.init_cell(cell, jax.random.key(0)))
        >>> sorted(params), pstep(params, cell.initialize_carry(4), jnp.ones((4, 2)))["h"].shape
        (['W_hh', 'W_xh', 'b'], (4, 3))
    """
    if isinstance(cell, GradflowCell | nn.Module):
        as_step(cell, variables, train=train, key=key)  # the eager checks
        if not isinstance(variables, dict) or "params" not in variables:
            raise ValueError("param_step: variables must be a dict with a 'params' collection")
        return _linen_pstep(cell, variables, train, key), variables["params"]
    if isinstance(cell, nnx.Module):
        return _nnx_pstep(cell, variables, train)
    if callable(cell):
        if variables is None:
            raise ValueError("param_step(f, params): a plain function needs its params")
        check_floating(variables, "params")
        check_finite(variables, "params")
        return cell, variables
    raise ValueError(f"param_step: unsupported cell type {type(cell).__name__} (a gradflow, linen or nnx "
                     "cell, or a function f(params, carry, x))")


def _linen_pstep(cell, variables: dict, train: bool, key) -> PStep:
    rest = {k: v for k, v in variables.items() if k != "params"}
    ours = isinstance(cell, GradflowCell)
    rngs = {"dropout": key} if key is not None and (not ours or (train and cell.spec.dropout > 0)) else {}
    kwargs = {"train": train} if ours else {}

    def pstep(params, carry, x):
        return cell.apply({**rest, "params": params}, carry, x, rngs=rngs, **kwargs)[0]

    return pstep


def _nnx_pstep(cell, variables, train: bool) -> tuple[PStep, Any]:
    graphdef, state = nnx.split(cell)
    if variables is not None:
        state = variables
    check_finite(state, "the nnx module's state")
    module = nnx.merge(graphdef, state)
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    check_floating(params, "the nnx module's params")

    def pstep(p, carry, x):
        m = nnx.merge(graphdef, p, rest)
        m.train() if train else m.eval()
        return m(carry, x)[0]

    return pstep, params


# ------------------------------------------------------------------------------------------------ groups


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def param_groups(params: Any, groups: str = "top") -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Group names and, per leaf of ``params`` (``jax.tree_util`` order), the index of its group.

    Args:
        params: the params pytree.
        groups: "top" (top-level keys: ``W_hh``, ``W_xh``, ``bn_h``, ...; a bare array is one group
            "params"), "leaves" (every leaf, named by its key path) or "all" (one group).

    Returns:
        (names (G,), group index of every leaf).

    Example:
        >>> import jax.numpy as jnp
        >>> param_groups({"W": jnp.ones(2), "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)}})
        (('W', 'bn'), (0, 1, 1))
    """
    if groups not in GROUPINGS:
        raise ValueError(f"groups must be one of {GROUPINGS}, got {groups!r}")
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    if not paths:
        raise ValueError("params has no array leaves")
    if groups == "all":
        return ("all",), tuple(0 for _ in paths)
    if groups == "leaves":
        names = [jax.tree_util.keystr(p) or "params" for p in paths]
        names = [n[:-len(".value")] if n.endswith(".value") else n for n in names]  # nnx.Param wrappers
    else:
        names = [_key_name(p[0]) if p else "params" for p in paths]
    order = sorted(set(names))
    return tuple(order), tuple(order.index(n) for n in names)


# ------------------------------------------------------------------------------------------------ engine


def _group_sums(tree, leaf_group, n_groups, keep_rows: bool):
    """Per-group sums of squares of a cotangent pytree whose leaves have a leading row axis k.

    Returns (k, G) when ``keep_rows``, else (G,)."""
    cols = []
    for g in range(n_groups):
        parts = [jnp.sum(jnp.square(x).reshape(x.shape[0], -1), axis=1)
                 for x, i in zip(jax.tree_util.tree_leaves(tree), leaf_group, strict=True) if i == g]
        cols.append(functools.reduce(jnp.add, parts))
    out = jnp.stack(cols, axis=-1)
    return out if keep_rows else jnp.sum(out, axis=0)


def _log_frob(sq, probes: bool):
    """ln of the Frobenius norm from sums of squares (exact: (..., G); probes: rows on axis 0, mean and the
    delta-method standard error of the log)."""
    if not probes:
        return 0.5 * safe_log(sq), None
    k = sq.shape[0]
    m = jnp.mean(sq, axis=0)
    se = jnp.std(sq, axis=0, ddof=1) / jnp.sqrt(k) if k > 1 else jnp.full(m.shape, jnp.nan, m.dtype)
    return 0.5 * safe_log(m), se / (2 * jnp.maximum(m, jnp.finfo(m.dtype).tiny))


def _accumulate(S, sig, C, s):
    """S exp(sig) + C exp(s) as (S', sig') with S' at unit max-abs scale (pytrees of equal structure)."""
    m = jnp.maximum(sig, s)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    a = jnp.where(jnp.isfinite(sig), jnp.exp(sig - m_safe), 0.0)
    b = jnp.where(jnp.isfinite(s), jnp.exp(s - m_safe), 0.0)
    S = jax.tree_util.tree_map(lambda u, v: u * a + v * b, S, C)
    amax = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(x)) for x in jax.tree_util.tree_leaves(S)])
    d = jnp.where(amax > 0, amax, 1.0)
    S = jax.tree_util.tree_map(lambda u: u / d, S)
    return S, jnp.where(amax > 0, m_safe + jnp.log(d), -jnp.inf)


@functools.partial(jax.jit, static_argnames=("pstep", "mask", "leaf_group", "n_groups", "probes"))
def _sensitivity_jit(pstep, mask, leaf_group, n_groups, probes, params, carry0, xs, rows):
    step = functools.partial(pstep, params)
    full = StateMap.from_carry(carry0)
    sel = full.with_mask(mask)
    idx = jnp.asarray(sel.selection_in(full))
    prev, flags = forward_and_flags(step, carry0, xs)
    h_T = step(jax.tree_util.tree_map(lambda a: a[-1], prev), jax.tree_util.tree_map(lambda a: a[-1], xs))
    log_state = safe_log(jnp.linalg.norm(sel.flatten(h_T)))
    G0 = (jnp.eye(full.n, dtype=full.dtype)[idx] if rows is None
          else jnp.zeros((rows.shape[0], full.n), full.dtype).at[:, idx].set(rows.astype(full.dtype)))
    k = G0.shape[0]
    S0 = jax.tree_util.tree_map(lambda p: jnp.zeros((k, *jnp.shape(p)), full.dtype), params)

    def body(carry, inp):
        G, s, c, S, sig = carry
        h, x = inp

        def f(p, v):
            return full.flatten(pstep(p, full.unflatten(v, h), x))

        _, pull = jax.vjp(f, params, full.flatten(h))
        C, G_prev = jax.vmap(pull)(G)
        sq = _group_sums(C, leaf_group, n_groups, keep_rows=probes)
        S, sig = _accumulate(S, sig, C, s)
        G_prev, s_new, c = renormalize(G_prev, s, c)
        return (G_prev, s_new, c, S, sig), (s, s_new, sq)

    zero = jnp.zeros((), full.dtype)
    init = (G0, zero, zero, S0, jnp.full((), -jnp.inf, full.dtype))
    (_, _, _, S, sig), (scales, log_state_jac, sqs) = jax.lax.scan(body, init, (prev, xs), reverse=True)
    if probes:  # ||Z^T M||_F^2 / k estimates ||M||_F^2
        log_state_jac = log_state_jac - 0.5 * jnp.log(jnp.asarray(k, full.dtype))
    sq_tot = _group_sums(S, leaf_group, n_groups, keep_rows=probes)
    log_c, se_c = _log_frob(jnp.moveaxis(sqs, 0, -2) if probes else sqs, probes)  # probes: (k, T, G)
    log_c = log_c + scales[:, None]
    log_t, se_t = _log_frob(sq_tot, probes)
    log_t = log_t + sig
    sq_all = jnp.sum(sqs, axis=-1)
    log_ca, _ = _log_frob(jnp.moveaxis(sq_all, 0, -1) if probes else sq_all, probes)
    log_ta, _ = _log_frob(jnp.sum(sq_tot, axis=-1), probes)
    return log_c, log_ca + scales, log_t, log_ta + sig, log_state, log_state_jac, se_c, se_t, flags


def param_sensitivity(pstep: PStep, params: Any, carry0: Any, xs: Any, *, wrt=None, groups: str = "top",
                      per_example: bool = False, probes: int | None = None,
                      key: jax.Array | None = None, cotangent: Any = None) -> ParamSensitivity:
    """Per-lag contributions ||∂h_T/∂h_{t+1} · ∂h_{t+1}/∂θ||_F and the total ||∂h_T/∂θ||_F, per group.

    One forward scan stores h_0..h_{T-1}; one reverse scan carries the rows of ∂h_T/∂h_{t+1} at unit norm
    (their log scale in a compensated sum, as in `gradflow.jacobians`) and pulls them back through step t+1
    with one vjp per row, which gives both ∂h_T/∂h_t and the step's parameter contribution C_t; the total
    Σ_t C_t is accumulated at its own log scale. Exact in log space at any T (no under- or overflow).

    Args:
        pstep: ``pstep(params, carry, x_t) -> carry``, pure and jittable (:func:`param_step`); compiled once
            per pstep object (reuse it).
        params: the parameters θ (a pytree of floating arrays).
        carry0: h_0 (leaves with a leading batch axis B).
        xs: (T, B, input_size) inputs (or a pytree with leading T axes).
        wrt: optional selection of carry leaves that make up h_T (as in `gradflow.jacobians`); every floating
            leaf still carries the dynamics.
        groups: "top", "leaves" or "all" (see :func:`param_groups`).
        per_example: run each example alone (its own h_T, fields gain a leading axis B); a batch-coupled step
            raises ValueError.
        probes: None (exact: n rows) or k >= 2: Hutchinson estimate from k Rademacher rows (memory k × |θ|
            instead of n × |θ|), with standard errors.
        key: PRNG key for the probes (required with ``probes``).
        cotangent: optional ∂L/∂h_T of a loss L(h_T), a pytree with the carry's structure (its selected
            leaves are used, e.g. ``jax.grad(loss)(h_T)``): the rows become this one vector, so
            ``log_contributions[t]`` is ln ||∂L/∂h_T · C_t|| (the loss gradient's share from step t+1, per
            group) and ``log_total`` ln ||∂L/∂θ||; ``log_state_jacobian`` is then ln ||∂L/∂h_t||.
            Not with ``probes`` or ``per_example``.

    Returns:
        :class:`ParamSensitivity`.

    Raises:
        ValueError: bad step / carry / inputs, non-floating or non-finite params, a non-finite state,
            unknown ``groups``, probes without a key, a non-finite ``cotangent``.
    """
    leaf_group_names, leaf_group = param_groups(params, groups)
    check_floating(params, "params")
    check_finite(params, "params")
    step = functools.partial(pstep, params)
    smap, T = validate_inputs(step, carry0, xs, wrt)
    rows = None
    if probes is not None:
        k = positive_int("probes", probes)
        if k < 2:
            raise ValueError(f"probes must be >= 2 for a standard error, got {probes!r}")
        if key is None:
            raise ValueError("param_sensitivity(probes=...) needs key=... for the Rademacher probes")
    if cotangent is not None:
        if probes is not None or per_example:
            raise ValueError("cotangent=... is one row over the whole batch: not with probes or per_example")
        try:
            rows = smap.flatten(cotangent)[None, :]
        except (ValueError, TypeError) as e:
            raise ValueError(f"cotangent must have the carry's structure and shapes (∂L/∂h_T): {e}") from None
        if rows.shape[1] != smap.n:
            raise ValueError(f"cotangent's selected leaves hold {rows.shape[1]} numbers; the state {smap.n}")
        check_finite(cotangent, "cotangent")
    fn = functools.partial(_sensitivity_jit, pstep, smap.mask, leaf_group, len(leaf_group_names),
                           probes is not None, params)
    if per_example:
        plan = ExamplePlan.build(step, carry0, xs)
        n = StateMap.from_carry(plan.one(jax.tree_util.tree_map(lambda a: a[0], carry0)), wrt).n
        if probes is not None:
            rows = jax.random.rademacher(key, (probes, n), dtype=smap.dtype)
        out = plan.vmap(lambda c, x: fn(c, x, rows), carry0, xs)
        flags = jnp.all(out[-1], axis=0)
    else:
        if probes is not None:
            rows = jax.random.rademacher(key, (probes, smap.n), dtype=smap.dtype)
        out = fn(carry0, xs, rows)
        flags = out[-1]
    raise_if_nonfinite(flags, "the parameter sensitivity is undefined")
    log_c, log_ca, log_t, log_ta, log_state, log_jac, se_c, se_t = out[:-1]
    return ParamSensitivity(leaf_group_names, log_c, log_ca, log_t, log_ta, log_state, log_jac,
                            T - jnp.arange(T), se_c, se_t)


def unrolled_final(pstep: PStep, params: Any, carry0: Any, xs: Any) -> Any:
    """h_T of ``pstep`` over ``xs`` (a plain ``lax.scan``; the reference the tests differentiate)."""
    return jax.lax.scan(lambda h, x: (pstep(params, h, x), None), carry0, xs)[0]
