"""Pure step functions from Flax cells, and `unroll` (a `lax.scan` over time).

The step contract: ``step(carry, x_t) -> carry``, pure and jittable; ``carry`` a pytree whose array leaves
have a leading batch axis B, ``x_t`` of shape (B, input_size). A batch-coupled step (BN in train mode) acts on
the whole batch at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gradflow import cache
from gradflow.cells import GradflowCell, init_cell, with_sequence_stats
from gradflow.checks import flag, prng_key, raise_if_nonfinite
from gradflow.statemap import check_carry_and_inputs, check_finite, dtype_hint, eval_step, is_traced

__all__ = ["as_step", "unroll", "unroll_cell", "check_finite"]

Step = Callable[[Any, jax.Array], Any]


def _expected_shapes(cell: GradflowCell):
    """The shapes of ``init_cell(cell, ·)``'s variables (computed once per cell)."""
    return cache.cached(("expected_shapes", cell),
                        lambda: jax.eval_shape(lambda: init_cell(cell, jax.random.key(0))))


def _check_shapes_against(cell: GradflowCell, variables: dict) -> None:
    if not isinstance(variables, dict) or "params" not in variables:
        raise ValueError("variables must be a dict with a 'params' entry (see gradflow.init_cell)")
    expected = _expected_shapes(cell)
    _check_no_extra(expected, variables)
    for col, exp in expected.items():
        if col not in variables:
            raise ValueError(f"variables lack the {col!r} collection this cell needs")
        got_leaves = jax.tree_util.tree_flatten_with_path(variables[col])[0]
        exp_leaves = jax.tree_util.tree_flatten_with_path(exp)[0]
        got = {jax.tree_util.keystr(p): jnp.shape(v) for p, v in got_leaves}
        for p, v in exp_leaves:
            k = jax.tree_util.keystr(p)
            if k not in got:
                raise ValueError(f"variables[{col!r}] lack {k} (shape {v.shape}) for this cell")
            if got[k] != v.shape:
                hint = ""
                if k.endswith("['W_xh']"):
                    hint = f" (input_size mismatch: the cell has input_size={cell.input_size})"
                elif k.endswith("['W_hh']"):
                    hint = f" (hidden_size mismatch: the cell has hidden_size={cell.hidden_size})"
                raise ValueError(
                    f"variables[{col!r}]{k} has shape {got[k]}, the cell expects {v.shape}{hint}"
                )


def _check_no_extra(expected: dict, variables: dict) -> None:
    """Refuse variables this cell would ignore (another cell's variables: e.g. BN parameters given to a cell
    without BN would be silently unused)."""
    for col, tree in variables.items():
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        if col == "sequence_stats" or not leaves:  # BN_x's sequence statistics (with_sequence_stats)
            continue
        if col not in expected:
            raise ValueError(f"variables have a {col!r} collection this cell does not use (variables of "
                             "another "
                             "cell? build them with gradflow.init_cell(cell, key))")
        known = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(expected[col])[0]}
        extra = [jax.tree_util.keystr(p) for p, _ in leaves if jax.tree_util.keystr(p) not in known]
        if extra:
            raise ValueError(f"variables[{col!r}] have entries this cell does not use: "
                             f"{', '.join(extra[:6])} "
                             "(variables of another cell? build them with gradflow.init_cell(cell, key))")


def _leaf_dtype(leaf):
    """A leaf's dtype, or None for a leaf that is no number (a string, an arbitrary object)."""
    if isinstance(leaf, str | bytes):
        return None
    try:
        return jnp.result_type(leaf)
    except TypeError:
        return None


def check_floating(tree: Any, what: str = "variables") -> None:
    """Raise ValueError naming every leaf of ``tree`` whose dtype is not floating (an integer ``W_hh`` is
    silently truncated: ``jnp.array([[0.5]], int)`` is 0, and it has no gradient)."""
    bad = []
    for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dt = _leaf_dtype(v)
        if dt is None or not jnp.issubdtype(dt, jnp.floating):
            bad.append(f"{jax.tree_util.keystr(p)} ({type(v).__name__ if dt is None else dt})")
    if bad:
        raise ValueError(f"{what} must be floating-point arrays; not so at {', '.join(bad)} "
                         "(e.g. write 0.5 or use .astype(jnp.float32))")


def _check_step_inputs(carry: Any, x: jax.Array) -> None:
    shape = jnp.shape(x)
    if len(shape) != 2:
        raise ValueError(f"x_t must have shape (B, input_size), got shape {shape}")
    for path, leaf in jax.tree_util.tree_flatten_with_path(carry)[0]:
        s = jnp.shape(leaf)
        if len(s) == 0 or s[0] != shape[0]:
            raise ValueError(
                f"carry leaf carry{jax.tree_util.keystr(path)} has shape {s}; its leading axis must be the "
                f"batch B={shape[0]} of x_t (inputs xs are time-major: (T, B, ...))"
            )


def as_step(cell: Any, variables: Any = None, train: bool = False, key: jax.Array | None = None) -> Step:
    """Turn a cell and its variables into a pure step ``step(carry, x_t) -> carry``.

    Works for our cells (`gradflow.make_cell`), a user's linen cell (``nn.GRUCell``, ``nn.LSTMCell``, any
    module called as ``carry, y = module.apply(variables, carry, x)``) and an nnx cell (``nnx.LSTMCell``, ...;
    its state is split out once with ``nnx.split`` and merged inside the step, so ``jax.jacrev`` and
    ``jax.jit`` work through it; pass ``variables=None`` to use the module's own state or an ``nnx.State``
    to override it).

    Variables are checked once, eagerly: non-finite values, integer-typed parameters and (our cells) shapes
    against the cell raise ValueError. In train mode BN uses the batch's statistics (the step couples the
    batch) but running averages are NOT updated: the step is pure. Dropout acts in train mode only and
    needs ``key`` (the same key for every step: per-step masks fold in the step counter t).

    Args:
        cell: our cell, a linen module or an nnx module.
        variables: the variables dict (linen) or None / an nnx.State (nnx).
        train: batch statistics and dropout (True) or running statistics, no dropout (False).
        key: PRNG key for dropout (required in train mode when the cell has dropout).

    Returns:
        ``step(carry, x_t) -> carry``.

    Example:
        >>> import jax, jax.numpy as jnp, gradflow
        >>> cell = gradflow.make_cell("tanh", 3, 2)
        >>> step = gradflow.as_step(cell, gradflow.init_cell(cell, jax.random.key(0)))
        >>> step(cell.initialize_carry(5), jnp.ones((5, 2)))["h"].shape
        (5, 3)
    """
    train = flag("train", train)
    key = prng_key("key", key)
    if isinstance(cell, GradflowCell):
        return _gradflow_step(cell, variables, train, key)
    if isinstance(cell, nn.Module):
        return _linen_step(cell, variables, key)
    if isinstance(cell, nnx.Module):
        return _nnx_step(cell, variables, train)
    raise ValueError(f"as_step: unsupported cell type {type(cell).__name__} (a gradflow, linen or nnx cell)")


def _gradflow_step(cell: GradflowCell, variables: Any, train: bool, key) -> Step:
    _check_shapes_against(cell, variables)
    check_floating(variables)
    check_finite(variables, "variables")
    needs_key = train and cell.spec.dropout > 0
    if needs_key and key is None:
        raise ValueError(
            f"cell has hidden dropout {cell.spec.dropout} and train=True: pass key=... (or dropout=0.0)"
        )
    rngs = {"dropout": key} if needs_key else {}

    def step(carry, x):
        new_carry, _ = cell.apply(variables, carry, x, train=train, rngs=rngs)
        return new_carry

    step.check_carry = check_step_counter  # called on a concrete carry0 by the engine and unroll
    return step


def check_step_counter(carry: Any) -> None:
    """Raise ValueError for a negative step counter ``carry["t"]`` of our cells (concrete values only): BN's
    per-step statistics row min(t, t_max - 1) would wrap around to the last rows."""
    t = carry.get("t") if isinstance(carry, dict) else None
    if t is None or is_traced(t):
        return
    t = np.asarray(t)
    if np.issubdtype(t.dtype, np.number) and np.any(t < 0):
        raise ValueError(f"the step counter carry['t'] must be >= 0 (it picks BN's per-step statistics row "
                         f"min(t, t_max - 1)), got a minimum of {t.min()}; start from "
                         "cell.initialize_carry(B)")


def _linen_step(cell: nn.Module, variables: Any, key) -> Step:
    if variables is None:
        raise ValueError("a linen cell needs its variables (e.g. cell.init(key, carry, x))")
    if isinstance(variables, dict) and "params" in variables:
        check_floating(variables["params"], "variables['params']")
    check_finite(variables, "variables")
    rngs = {"dropout": key} if key is not None else {}

    def step(carry, x):
        _check_step_inputs(carry, x)
        new_carry, _ = cell.apply(variables, carry, x, rngs=rngs)
        return new_carry

    return step


def _nnx_step(cell: nnx.Module, variables: Any, train: bool) -> Step:
    graphdef, state = nnx.split(cell)
    if variables is not None:
        state = variables
    check_finite(state, "the nnx module's state")

    def step(carry, x):
        _check_step_inputs(carry, x)
        module = nnx.merge(graphdef, state)
        if train:
            module.train()
        else:
            module.eval()
        new_carry, _ = module(carry, x)
        return new_carry

    return step


def unroll(step: Step, carry0: Any, xs: Any) -> Any:
    """Run ``step`` over a sequence with ``lax.scan`` and return every state.

    Args:
        step: ``step(carry, x_t) -> carry``.
        carry0: h_0, leaves with a leading batch axis B.
        xs: (T, B, input_size) (or a pytree of arrays with leading axes T, B).

    Returns:
        The carry pytree with a leading time axis T: ``states[t-1]`` = h_t (h_0 not included).

    Raises:
        ValueError: ``step`` not callable, ``carry0`` or ``xs`` not fitting the step or each other, or
            (concrete values; traced ones are not checked) NaN/inf in them, or float64 values beyond
            float32's range while ``jax_enable_x64`` is off.

    Example:
        >>> import jax, jax.numpy as jnp, gradflow
        >>> cell = gradflow.make_cell("linear", 3, 2)
        >>> step = gradflow.as_step(cell, gradflow.init_cell(cell, jax.random.key(0)))
        >>> gradflow.unroll(step, cell.initialize_carry(4), jnp.ones((7, 4, 2)))["h"].shape
        (7, 4, 3)
    """
    if not callable(step):
        raise ValueError(f"step must be callable, step(carry, x_t) -> carry; got {type(step).__name__}")
    _check_sequence(carry0, xs)
    _check_carry_kept(step, carry0, xs)
    getattr(step, "check_carry", lambda c: None)(carry0)
    check_carry_and_inputs(carry0, xs)

    def body(carry, x):
        new = step(carry, x)
        return new, new

    _, states = jax.lax.scan(body, carry0, xs)
    return states


def _check_carry_kept(step: Step, carry0: Any, xs: Any) -> None:
    """Raise ValueError when ``step`` changes a carry leaf's dtype (lax.scan's TypeError, with the fix)."""
    c0, out = eval_step(step, carry0, xs)
    if jax.tree_util.tree_structure(out) != jax.tree_util.tree_structure(c0):
        return  # lax.scan names the structures
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(c0)[0], jax.tree_util.tree_leaves(out),
                            strict=True):
        if a.dtype != b.dtype and a.shape == b.shape:
            raise ValueError(f"step changes carry leaf carry0{jax.tree_util.keystr(path)} from {a.dtype} to "
                             f"{b.dtype}{dtype_hint(a, b, xs)}")


def _check_sequence(carry0: Any, xs: Any) -> None:
    leaves = jax.tree_util.tree_leaves(xs)
    if not leaves:
        raise ValueError("xs is empty")
    shapes = [jnp.shape(v) for v in leaves]
    if any(len(s) < 2 for s in shapes):
        raise ValueError(
            f"xs must have a leading time axis and a batch axis: (T, B, ...), got shapes {shapes}"
        )
    if len({s[0] for s in shapes}) != 1:
        raise ValueError(f"xs leaves disagree on the time axis T: shapes {shapes}")
    if not jax.tree_util.tree_leaves(carry0):
        raise ValueError(f"carry0 has no array leaves (got {type(carry0).__name__}): pass the initial carry, "
                         "e.g. cell.initialize_carry(B)")
    B = shapes[0][1]
    for path, leaf in jax.tree_util.tree_flatten_with_path(carry0)[0]:
        s = jnp.shape(leaf)
        if len(s) == 0 or s[0] != B:
            raise ValueError(
                f"carry0 leaf carry0{jax.tree_util.keystr(path)} has shape {s}; its leading axis must be the "
                f"batch B={B} of xs (T, B, ...): xs is time-major"
            )


def unroll_cell(
    cell: GradflowCell,
    variables: dict,
    carry0: Any,
    xs: jax.Array,
    train: bool = False,
    key: jax.Array | None = None,
) -> tuple[Any, dict]:
    """Run one of our cells over a sequence, updating BN running averages in train mode (for training code).

    Unlike ``unroll(as_step(...))``, which is pure, in train mode the running averages of every BN are updated
    step by step (row min(t, t_max − 1) at step t for per-step statistics) and returned. A cell with
    ``input_stats="sequence"`` gets BN_x's statistics over ``xs`` (`gradflow.cells.with_sequence_stats`)
    unless ``variables`` already holds them.

    Args:
        cell: one of our cells (`gradflow.make_cell`).
        variables: ``{"params": ..., "batch_stats": ...}``.
        carry0: initial carry (``cell.initialize_carry(B)``).
        xs: (T, B, input_size), T >= 1.
        train: batch statistics, running-average updates and dropout (True) or eval mode (False).
        key: dropout key (required in train mode when the cell has dropout).

    Returns:
        ``(states, variables)``: states with a leading time axis T (``states[t-1]`` = h_t) and the variables
        with updated ``batch_stats`` (unchanged in eval mode or without BN).

    Example:
        >>> import jax, jax.numpy as jnp, gradflow
        >>> cell = gradflow.make_cell("bn_tanh", 3, 2, t_max=5)
        >>> v = gradflow.init_cell(cell, jax.random.key(0))
        >>> carry0, xs = cell.initialize_carry(4), jnp.ones((5, 4, 2))
        >>> states, v = gradflow.unroll_cell(cell, v, carry0, xs, train=True)
        >>> states["h"].shape, v["batch_stats"]["bn_h"]["mean"].shape
        ((5, 4, 3), (5, 3))
    """
    if not isinstance(cell, GradflowCell):
        raise ValueError(f"unroll_cell expects a gradflow cell (make_cell), got {type(cell).__name__}")
    as_step(cell, variables, train=train, key=key)  # the same eager checks (shapes, finiteness, dropout key)
    _check_sequence(carry0, xs)
    if jnp.shape(jax.tree_util.tree_leaves(xs)[0])[0] == 0:
        raise ValueError("xs is empty: the sequence length T (leading axis of xs) must be > 0")
    check_step_counter(carry0)
    check_carry_and_inputs(carry0, xs)  # as unroll: finite, and within float32's range without x64
    rngs = {"dropout": key} if (train and cell.spec.dropout > 0) else {}
    params, stats = variables["params"], variables.get("batch_stats")
    update = train and stats is not None
    if train and cell.spec.input_stats == "sequence" and "sequence_stats" not in variables:
        variables = with_sequence_stats(cell, variables, xs)  # BN_x's statistics over the whole sequence
    extra = {"sequence_stats": variables["sequence_stats"]} if "sequence_stats" in variables else {}

    def body(c, x):
        carry, stats = c
        v = {"params": params} if stats is None else {"params": params, "batch_stats": stats}
        v = {**v, **extra}
        if update:
            (new, _), upd = cell.apply(v, carry, x, train=True, mutable=["batch_stats"], rngs=rngs)
            stats = upd["batch_stats"]
        else:
            new, _ = cell.apply(v, carry, x, train=train, rngs=rngs)
        return (new, stats), new

    (_, stats), states = jax.lax.scan(body, (carry0, stats), xs)
    _raise_if_nonfinite_states(states, stats)
    out = {"params": params}
    if stats is not None:
        out["batch_stats"] = stats
    return states, out


def _raise_if_nonfinite_states(states: Any, stats: Any) -> None:
    """Raise naming the first non-finite state (or running statistic) after an eager unroll (a state that
    overflowed float32 would otherwise spread NaN into every later state and into the BN averages)."""
    if is_traced(states):
        return
    flags = np.ones(jax.tree_util.tree_leaves(states)[0].shape[0], bool)
    for leaf in jax.tree_util.tree_leaves(states):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            flags &= np.all(np.isfinite(np.asarray(leaf).reshape(leaf.shape[0], -1)), axis=1)
    raise_if_nonfinite(flags, "unroll_cell cannot continue (input or parameters too large for the dtype?)")
    if stats is not None:
        check_finite(stats, "the updated BN running averages (a batch variance overflowed the dtype)")
