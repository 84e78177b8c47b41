"""Train any recurrent cell on a task: ours, a user's Flax linen cell, or an nnx cell (``gradflow.fit``).

Our cells go straight to ``gradflow.train.train``. A user's cell (any module called as
``new_carry, y = cell(carry, x)``) is wrapped in :class:`UserCell`, which makes it one of ours: its floating
carry leaves are flattened into one state ``h`` (B, n) (for an LSTM, c and h side by side), the readout is
linear in that state, and the gradient-flow records ‖∂L/∂h_t‖ are over the whole state. An nnx cell is
trained as an instance (its current parameters are the starting point) or through
``flax.nnx.bridge.to_linen`` (a linen module).

Example:
    >>> import flax.linen as nn, gradflow as gf
    >>> from gradflow import tasks, train
    >>> cfg = train.TrainConfig(steps=4, batch_size=8, eval_every=2)
    >>> r = gf.fit(nn.GRUCell(features=8), tasks.adding(10), cfg)
    >>> r.cell.hidden_size, r.history["eval_step"].tolist()
    (8, [0, 2, 4])
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gradflow import train as train_mod
from gradflow.cells import GradflowCell
from gradflow.specs import CellSpec
from gradflow.step import check_finite
from gradflow.tasks import Task

__all__ = ["FitResult", "UserCell", "fit", "wrap_cell"]


@dataclasses.dataclass(repr=False)
class FitResult(train_mod.TrainResult):
    """What :func:`fit` returns: a ``gradflow.train.TrainResult`` whose repr is a short summary (the cell,
    the task, steps, final evaluation, divergence) instead of every parameter, the Adam state and the
    history."""

    def __repr__(self) -> str:
        loss, acc = self.final_eval if len(self.history.get("eval_loss", ())) else (float("nan"),) * 2
        return (f"FitResult(cell={self.cell!r}, task={self.task.name!r} (T={self.task.seq_len}), "
                f"steps_done={self.steps_done}, final_eval=(loss {loss:.4g}, accuracy {acc:.4g}), "
                f"diverged={self.diverged}, elapsed_s={self.elapsed_s:.1f}; fields: "
                f"{', '.join(f.name for f in dataclasses.fields(self))}, .variables)")

    @classmethod
    def of(cls, result: train_mod.TrainResult) -> FitResult:
        return cls(**{f.name: getattr(result, f.name) for f in dataclasses.fields(result)})


class UserCell(GradflowCell):
    """A user's cell seen as one of ours: ``carry = {"h": (B, n), "t": (B,)}``, h its floating carry leaves
    flattened.

    Attributes:
        inner: the user's linen module, called as ``new_carry, y = inner(carry, x)``.
        layout: ``(treedef, shapes, dtypes)`` of the inner carry with the batch axis removed (static).
    """

    inner: nn.Module = None
    layout: tuple = None

    def __repr__(self) -> str:
        # not flax's field dump: its ``spec`` is a placeholder (only its dtype is used), not the user's cell
        inner = "an nnx cell" if isinstance(self.inner, _NNXState) else type(self.inner).__name__
        return (f"UserCell(inner={inner}, state size n={self.hidden_size}, input_size={self.input_size}, "
                f"dtype={self.spec.dtype})")

    def initialize_carry(self, batch_size: int) -> dict[str, jax.Array]:
        """Zero state: ``{"h": (B, n), "t": (B,) int32}``."""
        return {
            "h": jnp.zeros((batch_size, self.hidden_size), self.dtype),
            "t": jnp.zeros((batch_size,), jnp.int32),
        }

    def unflatten(self, h: jax.Array):
        """The inner carry from the flat state h (B, n)."""
        treedef, shapes, dtypes = self.layout
        sizes = [math.prod(s) for s in shapes]
        parts = jnp.split(h, np.cumsum(sizes)[:-1], axis=-1)
        leaves = [
            p.reshape((h.shape[0], *s)).astype(d) for p, s, d in zip(parts, shapes, dtypes, strict=True)
        ]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def __call__(self, carry, x, train: bool = False):
        new_inner, _ = self.inner(self.unflatten(carry["h"]), x)
        leaves = jax.tree_util.tree_leaves(new_inner)
        h = jnp.concatenate([leaf.reshape(leaf.shape[0], -1).astype(self.dtype) for leaf in leaves], axis=-1)
        return {"h": h, "t": carry["t"] + 1}, h


def _layout(carry) -> tuple[tuple, int, str]:
    """(treedef, per-example shapes, dtypes), the state size n and the dtype name of an example carry."""
    leaves, treedef = jax.tree_util.tree_flatten(carry)
    if not leaves or not all(jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in leaves):
        raise ValueError("fit: the cell's carry must be made of floating arrays (B, ...) only")
    shapes = tuple(tuple(leaf.shape[1:]) for leaf in leaves)
    dtypes = tuple(str(leaf.dtype) for leaf in leaves)
    if len(set(dtypes)) != 1 or dtypes[0] not in ("float32", "float64"):
        raise ValueError(f"fit: the carry leaves must share one dtype, float32 or float64; got {dtypes}")
    return (treedef, shapes, dtypes), sum(math.prod(s) for s in shapes), dtypes[0]


def wrap_cell(cell: nn.Module, input_size: int) -> UserCell:
    """A user's linen cell as a :class:`UserCell` that ``gradflow.train`` and every engine function accept.

    The cell is called as ``new_carry, y = cell(carry, x)`` and sized by
    ``cell.initialize_carry(key, (B, input_size))``.
    """
    if not isinstance(cell, nn.Module) or isinstance(cell, GradflowCell):
        raise ValueError(f"wrap_cell expects a user's flax.linen cell, got {type(cell).__name__}")
    if not hasattr(cell, "initialize_carry"):
        raise ValueError(
            f"{type(cell).__name__} has no initialize_carry(key, (B, input_size)): cannot size its state"
        )
    carry = jax.eval_shape(lambda: cell.initialize_carry(jax.random.key(0), (1, input_size)))
    layout, n, dtype = _layout(carry)
    return UserCell(
        spec=CellSpec(dtype=dtype), hidden_size=n, input_size=input_size, inner=cell, layout=layout
    )


class _NNXState(nn.Module):
    """An nnx module instance as a linen module: its parameters are one linen parameter (a pure dict)."""

    graphdef: Any = None
    template: tuple = None  # ((path, shape, dtype), ...) of the pure parameter dict

    def initialize_carry(self, key, input_shape):
        return _nnx_carry(nnx.merge(self.graphdef, _zeros_state(self.template)), input_shape)

    @nn.compact
    def __call__(self, carry, x):
        state = self.param("nnx", lambda key: _zeros_state(self.template))
        return nnx.merge(self.graphdef, state)(carry, x)


def _zeros_state(template: tuple):
    flat = {path: jnp.zeros(shape, dtype) for path, shape, dtype in template}
    return nnx.from_flat_state(flat)


def _nnx_carry(module, input_shape):
    if not hasattr(module, "initialize_carry"):
        raise ValueError(
            f"{type(module).__name__} has no initialize_carry(input_shape, rngs): gradflow.fit cannot size "
            "its "
            "state; give the nnx cell an initialize_carry method (as nnx.LSTMCell has)"
        )
    try:
        return module.initialize_carry(input_shape, nnx.Rngs(0))
    except TypeError:
        return module.initialize_carry(input_shape)


def _from_nnx(cell: nnx.Module, input_size: int) -> tuple[UserCell, dict]:
    """An nnx cell instance as a :class:`UserCell`, and its current parameters as the variables to start
    from."""
    if not hasattr(cell, "initialize_carry"):
        _nnx_carry(cell, (1, input_size))  # raises the clear error
    graphdef, state = nnx.split(cell)
    flat = {path: jnp.asarray(v.get_value()) for path, v in nnx.to_flat_state(state)}
    template = tuple((path, tuple(a.shape), str(a.dtype)) for path, a in flat.items())
    wrapped = wrap_cell(_NNXState(graphdef=graphdef, template=template), input_size)
    return wrapped, {"params": {"inner": {"nnx": nnx.from_flat_state(flat)}}}


def fit(
    cell,
    task: Task,
    config: train_mod.TrainConfig | None = None,
    *,
    variables: dict | None = None,
    checkpoint=None,
    progress=None,
) -> train_mod.TrainResult:
    """Train a cell + linear readout on a task with Adam (``gradflow.train.train``).

    Args:
        cell: one of our cells (``gf.make_cell``), a user's linen cell (``nn.GRUCell(features=32)``: any
            module with ``carry, y = cell(carry, x)`` and ``initialize_carry(key, (B, input_size))``), or an
            nnx cell instance (its current parameters are the starting point unless ``variables`` is given).
        task: a ``gradflow.tasks.Task``; its ``input_size`` sets the cell's input size.
        config: ``gradflow.train.TrainConfig`` (defaults if None).
        variables: the cell's starting variables (``{"params": ..., ["batch_stats": ...]}``, as
            ``init_cell`` or ``cell.init`` return them); default: a fresh initialization seeded by
            ``config.seed``.
        checkpoint, progress: as in ``gradflow.train.train``.

    Returns:
        :class:`FitResult` (a ``gradflow.train.TrainResult`` with a short repr); ``result.cell`` is the
        trained cell (a :class:`UserCell` for a user's cell) and ``result.variables`` its variables, ready for
        ``gf.as_step(result.cell, result.variables)``.

    Raises:
        ValueError: a task that is not a ``gradflow.tasks.Task``, a cell of another kind, an nnx cell without
            ``initialize_carry``, non-finite starting variables.
    """
    if not isinstance(task, Task):
        raise ValueError(f"fit: task must be a gradflow.tasks.Task (e.g. gradflow.tasks.adding(50)), got "
                         f"{type(task).__name__}")
    if isinstance(cell, GradflowCell):
        if variables is not None:
            check_finite(variables, "the starting variables")
        return FitResult.of(train_mod.train(
            cell, task, config, checkpoint=checkpoint, progress=progress, variables=variables
        ))
    if isinstance(cell, nnx.Module):
        cell, own = _from_nnx(cell, task.input_size)
        variables = own if variables is None else {"params": {"inner": {"nnx": variables}}}
    elif isinstance(cell, nn.Module):
        cell = wrap_cell(cell, task.input_size)
        if variables is not None:
            variables = {**variables, "params": {"inner": variables["params"]}}
    else:
        raise ValueError(f"fit: expected a gradflow, linen or nnx cell, got {type(cell).__name__}")
    if variables is not None:
        variables = jax.tree_util.tree_map(jnp.asarray, dict(variables))
        check_finite(variables, "the starting variables")
    return FitResult.of(
        train_mod.train(cell, task, config, checkpoint=checkpoint, progress=progress, variables=variables)
    )
