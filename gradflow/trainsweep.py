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
from gradflow.checks import nonneg_int, positive_float, positive_int
from gradflow.checks import seed as check_seed
from gradflow.lyapunov import lyapunov_spectrum
from gradflow.step import as_step
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
    train_mode_eval: bool = False,
    return_state: bool = False,
    probe: Mapping[str, jax.Array] | None = None,
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
        train_mode_eval: also evaluate every set in train mode, as the model runs during training: batch
            statistics of consecutive chunks of ``batch_size`` sequences (BN in train mode couples the
            examples of a batch; eval mode uses the re-estimated running averages). Results
            ``<name>_loss_train``, ``<name>_acc_train``, the mean over the chunks; each set's size must be a
            multiple of ``batch_size``.
        return_state: also return the trained ``params`` and ``batch_stats`` (after recalibration).
        probe: measurements of the cell in eval mode, at initialization and after training:
            ``{"states": xs (T, N, input_size)}`` returns ``probe_states`` (N, n), every floating leaf of the
            trained cell's final carry on these sequences (e.g. for ``gradflow.capacity.memory_curve``);
            ``{"lyapunov": xs (L, B, input_size)}`` returns ``lyap_init`` and ``lyap_final``, the top Lyapunov
            exponent (``gradflow.lyapunov_spectrum``, k = 1, the first L // 4 steps discarded).

    The number of steps may also be given per call as ``{"steps": int}`` in the traced dict (at most a
    loop bound: a run with 10 × the steps reuses the same compiled function).

    Returns:
        ``f({"learning_rate": scalar, "seed": int scalar}) -> dict``: ``steps_done`` (steps applied),
        ``diverged`` (bool), ``init_flow`` (T,) ‖∂L/∂h_t‖ of the first training batch at initialization, and
        ``<name>_loss``, ``<name>_acc`` for every evaluation set (and the options' extra entries).
    """
    steps, batch_size = positive_int("steps", steps), positive_int("batch_size", batch_size)
    recal_batches, recal_seed = (nonneg_int("recal_batches", recal_batches),
                                 check_seed("recal_seed", recal_seed))
    if input_scale is not None:
        input_scale = positive_float("input_scale (or None)", input_scale)
    if clip_norm is not None:  # a negative threshold would flip the gradient's sign (factor clip / norm)
        clip_norm = positive_float("clip_norm (or None)", clip_norm)
    eval_sets = dict(eval_sets or {})
    if train_mode_eval:
        for name, (xs, _) in eval_sets.items():
            if xs.shape[1] % batch_size:
                raise ValueError(f"train_mode_eval: eval set {name!r} has {xs.shape[1]} sequences, not a "
                                 f"multiple of batch_size={batch_size}")
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
        probe_init = _probe_lyapunov(cell, params, bs, probe)
        state, done, ok = jax.lax.fori_loop(0, c.get("steps", steps), lambda i, s: step(i, s, root, lr, clip),
                                            (state, jnp.int32(0), jnp.bool_(True)))
        bs = state["batch_stats"]
        if recal_batches and bs:  # a diverged run keeps its running averages
            new_bs = _recalibrate(cell, task, batch_size, state["params"], bs, recal_batches, recal_seed)
            bs = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_bs, bs)
        out = {"steps_done": done, "diverged": ~ok, "init_flow": flow}
        for name, (xs, ys) in eval_sets.items():
            o, _, _ = train.forward(cell, state["params"], bs, xs, train=False, readout=task.readout)
            out[f"{name}_loss"], out[f"{name}_acc"] = task.loss(o, ys), task.accuracy(o, ys)
            if train_mode_eval:
                loss, acc = _train_mode_eval(cell, task, state["params"], bs, xs, ys, batch_size,
                                             jax.random.fold_in(root, 7))
                out[f"{name}_loss_train"], out[f"{name}_acc_train"] = loss, acc
        if return_state:
            out["params"], out["batch_stats"] = state["params"], bs
        if probe and "states" in probe:
            out["probe_states"] = _final_states(cell, state["params"], bs, probe["states"])
        if probe_init is not None:
            out["lyap_init"] = probe_init
            out["lyap_final"] = _probe_lyapunov(cell, state["params"], bs, probe)
        return out

    return f


def _eval_step(cell, params, bs):
    variables = {"params": params["cell"], **({"batch_stats": bs} if bs else {})}
    return as_step(cell, variables, train=False)


def _final_states(cell, params, bs, xs):
    """Every floating leaf of the final carry (eval mode), as (N, n)."""
    step = _eval_step(cell, params, bs)
    final = jax.lax.scan(lambda c, x: (step(c, x), None), cell.initialize_carry(xs.shape[1]), xs)[0]
    leaves = [v.reshape(xs.shape[1], -1) for v in jax.tree.leaves(final)
              if jnp.issubdtype(v.dtype, jnp.floating)]
    return jnp.concatenate(leaves, axis=1)


def _probe_lyapunov(cell, params, bs, probe):
    """λ₁ in eval mode along ``probe["lyapunov"]`` (None without it)."""
    if not probe or "lyapunov" not in probe:
        return None
    xs = probe["lyapunov"]
    r = lyapunov_spectrum(_eval_step(cell, params, bs), cell.initialize_carry(xs.shape[1]), xs, k=1,
                          transient=xs.shape[0] // 4, segments=4)
    return r.exponents[0]


def _train_mode_eval(cell, task, params, bs, xs, ys, batch_size, key):
    """Mean loss and accuracy over consecutive chunks of ``batch_size`` sequences, each run in train mode."""
    n = xs.shape[1] // batch_size
    xc = jnp.moveaxis(xs.reshape(xs.shape[0], n, batch_size, *xs.shape[2:]), 1, 0)
    yc = ys.reshape(n, batch_size, *ys.shape[1:]) if task.readout == "last" else jnp.moveaxis(
        ys.reshape(ys.shape[0], n, batch_size), 1, 0)

    def one(args):
        x, y = args
        o, _, _ = train.forward(cell, params, bs, x, train=True, key=key, readout=task.readout)
        return task.loss(o, y), task.accuracy(o, y)

    loss, acc = jax.lax.map(one, (xc, yc))
    return jnp.mean(loss), jnp.mean(acc)


def _recalibrate(cell, task, batch_size, params, bs, batches, seed):
    root = train.recalibration_root(seed)
    return jax.lax.fori_loop(
        0, batches, lambda i, b: train.recalibration_step(cell, task, batch_size, params, b, root, i), bs)


def _scale_input(params: dict, factor: float) -> dict:
    if "W_xh" not in params["cell"]:
        raise ValueError(f"input_scale needs a cell with input weights W_xh, not {sorted(params['cell'])}")
    cell = {**params["cell"], "W_xh": params["cell"]["W_xh"] * factor}
    return {**params, "cell": cell}
