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

from gradflow.cells import _Cell, init_cell

__all__ = ["as_step", "unroll", "check_finite"]

Step = Callable[[Any, jax.Array], Any]


def check_finite(tree: Any, what: str = "variables") -> None:
    """Raise ValueError naming every leaf of ``tree`` that holds a NaN or an inf (eager, host-side check)."""
    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.core.Tracer):
            continue
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
            bad.append(jax.tree_util.keystr(path))
    if bad:
        raise ValueError(f"non-finite values (NaN or inf) in {what} at {', '.join(bad)}")


def _check_shapes_against(cell: _Cell, variables: dict) -> None:
    if not isinstance(variables, dict) or "params" not in variables:
        raise ValueError("variables must be a dict with a 'params' entry (see gradflow.init_cell)")
    expected = jax.eval_shape(lambda: init_cell(cell, jax.random.key(0)))
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


def _check_step_inputs(carry: Any, x: jax.Array) -> None:
    shape = jnp.shape(x)
    if len(shape) != 2:
        raise ValueError(f"x_t must have shape (B, input_size), got shape {shape}")
    for path, leaf in jax.tree_util.tree_flatten_with_path(carry)[0]:
        s = jnp.shape(leaf)
        if len(s) == 0 or s[0] != shape[0]:
            raise ValueError(
                f"carry leaf {jax.tree_util.keystr(path)} has shape {s}; its leading axis must be the batch "
                f"B={shape[0]} of x_t"
            )


def as_step(cell: Any, variables: Any = None, train: bool = False, key: jax.Array | None = None) -> Step:
    """Turn a cell and its variables into a pure step ``step(carry, x_t) -> carry``.

    Works for our cells (`gradflow.make_cell`), a user's linen cell (``nn.GRUCell``, ``nn.LSTMCell``, any
    module called as ``carry, y = module.apply(variables, carry, x)``) and an nnx cell (``nnx.LSTMCell``, ...;
    its state is split out once with ``nnx.split`` and merged inside the step, so ``jax.jacrev`` and
    ``jax.jit`` work through it; pass ``variables=None`` to use the module's own state or an ``nnx.State``
    to override it).

    Variables are checked once, eagerly: non-finite values, and (our cells) shapes against the cell, raise
    ValueError. In train mode BN uses the batch's statistics (the step couples the batch) but running averages
    are NOT updated: the step is pure. Dropout acts in train mode only and needs ``key`` (the same key for
    every step: per-step masks fold in the step counter t).

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
    if isinstance(cell, _Cell):
        _check_shapes_against(cell, variables)
        check_finite(variables)
        needs_key = train and cell.spec.dropout > 0
        if needs_key and key is None:
            raise ValueError(
                f"cell has hidden dropout {cell.spec.dropout} and train=True: pass key=... (or dropout=0.0)"
            )
        rngs = {"dropout": key} if needs_key else {}

        def step(carry, x):
            new_carry, _ = cell.apply(variables, carry, x, train=train, rngs=rngs)
            return new_carry

        return step

    if isinstance(cell, nn.Module):
        if variables is None:
            raise ValueError("a linen cell needs its variables (e.g. cell.init(key, carry, x))")
        check_finite(variables)
        rngs = {"dropout": key} if key is not None else {}

        def step(carry, x):
            _check_step_inputs(carry, x)
            new_carry, _ = cell.apply(variables, carry, x, rngs=rngs)
            return new_carry

        return step

    if isinstance(cell, nnx.Module):
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

    raise ValueError(f"as_step: unsupported cell type {type(cell).__name__} (a gradflow, linen or nnx cell)")


def unroll(step: Step, carry0: Any, xs: Any) -> Any:
    """Run ``step`` over a sequence with ``lax.scan`` and return every state.

    Args:
        step: ``step(carry, x_t) -> carry``.
        carry0: h_0, leaves with a leading batch axis B.
        xs: (T, B, input_size) (or a pytree of arrays with leading axes T, B).

    Returns:
        The carry pytree with a leading time axis T: ``states[t-1]`` = h_t (h_0 not included).

    Example:
        >>> import jax, jax.numpy as jnp, gradflow
        >>> cell = gradflow.make_cell("linear", 3, 2)
        >>> step = gradflow.as_step(cell, gradflow.init_cell(cell, jax.random.key(0)))
        >>> gradflow.unroll(step, cell.initialize_carry(4), jnp.ones((7, 4, 2)))["h"].shape
        (7, 4, 3)
    """
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
    B = shapes[0][1]
    for path, leaf in jax.tree_util.tree_flatten_with_path(carry0)[0]:
        s = jnp.shape(leaf)
        if len(s) == 0 or s[0] != B:
            raise ValueError(
                f"carry0 leaf {jax.tree_util.keystr(path)} has shape {s}; its leading axis must be the batch "
                f"B={B} of xs (T, B, ...)"
            )

    def body(carry, x):
        new = step(carry, x)
        return new, new

    _, states = jax.lax.scan(body, carry0, xs)
    return states
