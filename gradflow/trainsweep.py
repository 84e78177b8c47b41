"""Whole training runs as one jittable, vmappable function of (learning rate, seed), for ``gradflow.sweep``.

:func:`train_fn` builds ``f(traced) -> results`` that trains cell + readout for a fixed number of Adam steps
inside ``jax.lax.fori_loop`` and evaluates the trained model, so that ``run_sweep`` can vmap it over learning
rates and seeds (and shard it over devices). Each step is :func:`gradflow.train.adam_step`, the step of
:func:`gradflow.train.train` (same initialization ``init_params`` with ``fold_in(key(seed), 1)``, same batch
and dropout key of every step, Adam's direction scaled by the learning rate, clipping at a global norm);
only the loop differs (``fori_loop`` inside one compiled call, so rounding can differ from ``train`` over
long runs). A step whose loss or gradient is not finite is not applied and ends the run (the parameters stay
those of the last finite step), as in ``train``. After training, cells with BN can have their statistics
re-estimated as :func:`gradflow.train.recalibrate_bn` does (``recal_batches``).

Whether vmapping pays depends on the hardware: on a 2-core CPU it is slower than running the same runs one
after another beyond a small width (``python -m benchmarks.bench_train``); on an accelerator it is the point.

Example:
    >>> import jax, jax.numpy as jnp, gradflow
    >>> from gradflow import tasks, trainsweep
    >>> task = tasks.adding(10)
    >>> cell = gradflow.make_cell("tanh", 8, 2)
    >>> evals = {"test": task.eval_set(jax.random.key(1), 32)}
    >>> f = trainsweep.train_fn(cell, task, steps=5, batch_size=16, eval_sets=evals)
    >>> out = jax.jit(jax.vmap(f))({"learning_rate": jnp.array([1e-3, 1e-2]), "seed": jnp.array([0, 1])})
    >>> out["test_loss"].shape, out["steps_done"].tolist()
    ((2,), [5, 5])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from gradflow import train
from gradflow.tasks import Task

__all__ = ["train_fn"]

def _step_fn(cell, task: Task, batch_size: int):
    """``train.adam_step`` with a divergence guard: a step whose loss or gradient norm is not finite is not
    applied, and no later step is (``ok`` stays False)."""

    def step(i, carry, root, lr, clip):
        state, done, ok = carry
        new, m = train.adam_step(cell, task, batch_size, state, i, root, lr, clip)
        ok = ok & jnp.isfinite(m["loss"]) & jnp.isfinite(m["grad_norm"])
        state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state)
        return state, done + ok.astype(jnp.int32), ok

    return step


def train_fn(
    cell,
    task: Task,
    *,
    steps: int,
    batch_size: int,
    clip_norm: float | None = None,
    eval_sets: Mapping[str, tuple[jax.Array, jax.Array]] | None = None,
    recal_batches: int = 0,
    recal_seed: int = 1,
    input_scale: float | None = None,
) -> Callable[[dict], dict]:
    """``f(traced)``: one training run as a pure function of ``{"learning_rate", "seed"}`` (vmappable).

    Args:
        cell: one of our cells (``gradflow.make_cell``) with ``input_size == task.input_size``.
        task: the task.
        steps: Adam steps.
        batch_size: sequences per step.
        clip_norm: global-norm clipping threshold (None: none).
        eval_sets: ``{name: (xs, ys)}`` evaluated in eval mode after training (e.g. validation and test).
        recal_batches: > 0 re-estimates the BN statistics with that many training-mode batches first
            (``train.recalibrate_bn``'s batches for ``seed=recal_seed``); 0 keeps the running averages.
        recal_seed: seed of the recalibration batches.
        input_scale: multiply the cell's input weights ``W_xh`` at initialization by this factor (None: as
            ``train.init_params`` draws them). Le, Jaitly & Hinton (2015) draw an IRNN's input weights with a
            small standard deviation; ``init_params`` draws them with 1/sqrt(input_size).

    Returns:
        ``f({"learning_rate": scalar, "seed": int scalar}) -> dict``: ``steps_done`` (steps applied),
        ``diverged`` (bool), ``init_flow`` (T,) ‖∂L/∂h_t‖ of the first training batch at initialization, and
        ``<name>_loss``, ``<name>_acc`` for every evaluation set.
    """
    for name, v in (("steps", steps), ("batch_size", batch_size), ("recal_batches", recal_batches + 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if input_scale is not None and not (isinstance(input_scale, int | float) and input_scale > 0):
        raise ValueError(f"input_scale must be None or a number > 0, got {input_scale!r}")
    eval_sets = dict(eval_sets or {})
    step = _step_fn(cell, task, batch_size)
    clip = jnp.inf if clip_norm is None else float(clip_norm)

    def f(c):
        root = jax.random.key(c["seed"])
        params, bs = train.init_params(cell, task, jax.random.fold_in(root, 1))
        if input_scale is not None:
            params = _scale_input(params, input_scale)
        xs0, ys0, k0 = train.batch_at(task, batch_size, root, 0)
        flow = train.gradient_flow(cell, task, params, bs, xs0, ys0, train=True, key=k0)
        state = {"params": params, "batch_stats": bs, "opt_state": train.ADAM.init(params)}
        lr = jnp.asarray(c["learning_rate"], jnp.float32)
        state, done, ok = jax.lax.fori_loop(0, steps, lambda i, s: step(i, s, root, lr, clip),
                                            (state, jnp.int32(0), jnp.bool_(True)))
        bs = state["batch_stats"]
        if recal_batches and bs:  # a diverged run keeps its running averages
            new_bs = _recalibrate(cell, task, batch_size, state["params"], bs, recal_batches, recal_seed)
            bs = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_bs, bs)
        out = {"steps_done": done, "diverged": ~ok, "init_flow": flow}
        for name, (xs, ys) in eval_sets.items():
            o, _, _ = train.forward(cell, state["params"], bs, xs, train=False, readout=task.readout)
            out[f"{name}_loss"], out[f"{name}_acc"] = task.loss(o, ys), task.accuracy(o, ys)
        return out

    return f


def _recalibrate(cell, task, batch_size, params, bs, batches, seed):
    root = train.recalibration_root(seed)
    return jax.lax.fori_loop(
        0, batches, lambda i, b: train.recalibration_step(cell, task, batch_size, params, b, root, i), bs)


def _scale_input(params: dict, factor: float) -> dict:
    if "W_xh" not in params["cell"]:
        raise ValueError(f"input_scale needs a cell with input weights W_xh, not {sorted(params['cell'])}")
    cell = {**params["cell"], "W_xh": params["cell"]["W_xh"] * factor}
    return {**params, "cell": cell}
