"""Per-example analysis: apply the engine to one example of a batch at a time (a vmap over the batch axis).

A batch of B independent examples is, to the engine, one state of size B * m whose Jacobian is block
diagonal: its SVDs cost B^3 more and its "top exponents" mix examples. With ``per_example=True`` the engine
functions instead run the step on each example alone (carry leaves (1, ...), inputs (T, 1, ...)), vmapped over
the batch axis of the carry (axis 0) and of the inputs (axis 1); results gain a leading batch axis.

That is only meaningful for a step that acts on each example separately. A batch-coupled step (BN with
batch statistics, anything that mixes examples) is detected by comparing ``step(carry0, xs[0])`` with the
step applied to each example alone, and refused with a pointer to :func:`gradflow.batch_block_norms`.

Example:
    >>> import jax.numpy as jnp
    >>> plan = ExamplePlan.build(lambda h, x: jnp.tanh(h + x), jnp.zeros((3, 2)), jnp.ones((5, 3, 2)))
    >>> plan.B
    3
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from gradflow.statemap import is_traced

__all__ = ["ExamplePlan"]


def _axes_of_carry(carry0):
    """(B, axes pytree): axis 0 for every leaf with a leading axis, None for scalar leaves."""
    paths = jax.tree_util.tree_flatten_with_path(carry0)[0]
    sizes = {jax.tree_util.keystr(p) or "carry": int(np.shape(x)[0]) for p, x in paths if np.ndim(x) > 0}
    if not sizes:
        raise ValueError("per_example=True needs carry leaves with a leading batch axis B; all are scalars")
    if len(set(sizes.values())) != 1:
        raise ValueError(
            f"per_example=True needs one batch size B on the leading axis of every carry leaf, got {sizes}"
        )
    B = next(iter(sizes.values()))
    axes = jax.tree_util.tree_map(lambda x: 0 if np.ndim(x) > 0 else None, carry0)
    return B, axes


def _axes_of_xs(xs, B):
    def ax(path, x):
        if np.ndim(x) < 2 or np.shape(x)[1] != B:
            raise ValueError(
                f"per_example=True needs input leaves shaped (T, B, ...) with B = {B} (the carry's batch "
                f"size) on axis 1; xs leaf {jax.tree_util.keystr(path) or 'xs'} has shape "
                f"{tuple(np.shape(x))}"
            )
        return 1

    return jax.tree_util.tree_map_with_path(ax, xs)


def _expand(tree, axes, at):
    return jax.tree_util.tree_map(lambda x, a: x if a is None else jnp.expand_dims(x, at), tree, axes)


def _squeeze(tree, axes, at):
    return jax.tree_util.tree_map(lambda x, a: x if a is None else jnp.squeeze(x, at), tree, axes)


@dataclasses.dataclass(frozen=True)
class ExamplePlan:
    """How to run a function of (carry, xs) on each example alone.

    Attributes:
        B: the batch size.
        carry_axes: pytree (the carry's structure) of 0 (batched leaf) or None (scalar leaf, shared).
        xs_axes: pytree (the inputs' structure) of 1.
    """

    B: int
    carry_axes: object
    xs_axes: object

    @classmethod
    def build(cls, step, carry0, xs, check=True) -> ExamplePlan:
        """Plan for ``carry0`` (B, ...) and ``xs`` (T, B, ...); with ``check``, refuse a batch-coupled step.

        Raises:
            ValueError: leaves without the batch axis, or a step that couples the examples.
        """
        B, carry_axes = _axes_of_carry(carry0)
        plan = cls(B, carry_axes, _axes_of_xs(xs, B))
        if check:
            plan.check_uncoupled(step, carry0, xs)
        return plan

    def one(self, carry):
        """The carry of one example (batch axis removed, as inside the vmap) -> a batch-of-1 carry."""
        return _expand(carry, self.carry_axes, 0)

    def vmap(self, fn, carry0, xs):
        """``fn(carry_1, xs_1)`` for each example (carry leaves (1, ...), inputs (T, 1, ...)), stacked on
        axis 0."""

        def one(c, x):
            return fn(_expand(c, self.carry_axes, 0), _expand(x, self.xs_axes, 1))

        return jax.vmap(one, in_axes=(self.carry_axes, self.xs_axes))(carry0, xs)

    def check_uncoupled(self, step, carry0, xs) -> None:
        """Raise ValueError if ``step`` on the batch differs from ``step`` on each example alone (skipped
        under tracing)."""
        if is_traced(carry0, xs):
            return
        x0 = jax.tree_util.tree_map(lambda a: a[0], xs)
        x0_axes = jax.tree_util.tree_map(lambda a: 0, self.xs_axes)
        batched = jax.jit(step)(carry0, x0)

        def alone(c, x):
            out = step(_expand(c, self.carry_axes, 0), _expand(x, x0_axes, 0))
            return _squeeze(out, self.carry_axes, 0)

        each_fn = jax.vmap(alone, in_axes=(self.carry_axes, x0_axes), out_axes=self.carry_axes)
        each = jax.jit(each_fn)(carry0, x0)
        worst = 0.0
        for a, b in zip(jax.tree_util.tree_leaves(batched), jax.tree_util.tree_leaves(each), strict=True):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            scale = max(1.0, float(np.max(np.abs(a), initial=0.0)))
            worst = max(worst, float(np.max(np.abs(a - b), initial=0.0)) / scale)
        tol = 1000 * float(np.finfo(jnp.result_type(*jax.tree_util.tree_leaves(carry0))).eps)
        if not worst <= tol:
            raise ValueError(
                "per_example=True: the step couples the examples of the batch (step(carry0, xs[0]) differs "
                f"from the step applied to each example alone by {worst:.3g} relative), e.g. batch "
                "normalization with batch statistics; per-example Jacobians are not defined for it. Use "
                "gradflow.batch_block_norms for the per-example diagonal blocks of the batch Jacobian."
            )
