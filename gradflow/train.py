"""Train our cells on the long-range tasks with optax, recording what happens to the gradients.

The model is one of our cells (:func:`gradflow.make_cell`) scanned over the sequence, followed by a linear
readout from the last state h_T (adding, digits) or from every state h_t (copy). Training uses Adam with an
optional global-norm gradient clip; the pre-clip gradient norm is always recorded. In training, BN uses batch
statistics and updates its running averages (row t of the per-step statistics at step t, threaded through the
scan); in evaluation (``train=False``) BN uses the running averages and dropout is off.

Recorded while training (:class:`TrainResult` ``history``):

- ``loss``, ``accuracy``, ``grad_norm`` (pre-clip global norm) for every step;
- ``eval_loss``, ``eval_accuracy`` on the evaluation set every ``eval_every`` steps (and at the end);
- ``grad_flow``: ‖∂L/∂h_t‖ for every t (Frobenius norm over the batch and the features of the gradient of the
  batch-mean loss) every ``record_every`` steps, a (records, T) heatmap over training step and time. It comes
  from one ``jax.grad`` with respect to zero perturbations added to the scanned states (the engine's trick);
- with ``probe_every``: the gradient dynamics on a fixed probe batch in eval mode (:func:`probe`) after 0,
  ``probe_every``, ... updates and at the end: ``probe_rate`` (slope of ln‖∂h_T/∂h_t‖ against the lag),
  ``probe_lyap`` (λ₁), the parameter sensitivity per lag ``probe_log_param_sens`` and the loss gradient's
  share per lag ``probe_log_grad_share`` (natural logs; per parameter group in ``*_groups``).

After training, :func:`mode_gap` compares train-mode and eval-mode results (BN cells), also on sequences
longer than those trained on, and :func:`lyapunov` gives the largest Lyapunov exponents of the trained cell.

Runs are deterministic given ``TrainConfig.seed`` (step i's batch and dropout masks come from
``fold_in(key(seed), i)``), and a run resumed from a checkpoint reproduces the uninterrupted one exactly.
A non-finite loss or gradient stops training and marks the run as diverged (the last finite parameters are
kept); it does not raise.

Example:
    >>> import gradflow
    >>> from gradflow import tasks, train
    >>> task = tasks.adding(10)
    >>> cell = gradflow.make_cell("lstm", 16, task.input_size)
    >>> result = train.train(cell, task, train.TrainConfig(steps=20, batch_size=16, eval_every=10))
    >>> result.history["loss"].shape, result.diverged
    ((20,), False)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
import zipfile
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradflow import cache, measure
from gradflow.cells import GradflowCell, feature_size, init_cell, readout_features, with_sequence_stats
from gradflow.checks import (
    atomic_write_npz,
    finite_float,
    flag,
    int_at_least,
    nonneg_int,
    positive_float,
    positive_int,
    prng_key,
)
from gradflow.checks import seed as check_seed
from gradflow.floss import floss, flossing_loss
from gradflow.lyapunov import LyapunovResult, lyapunov_spectrum
from gradflow.sensitivity import param_groups, param_sensitivity, param_step
from gradflow.spectra import growth_rate
from gradflow.statemap import check_finite_inputs
from gradflow.step import as_step, check_finite
from gradflow.tasks import Task

__all__ = [
    "TrainConfig",
    "TrainResult",
    "adam_step",
    "batch_at",
    "batch_for_step",
    "evaluate",
    "forward",
    "gradient_flow",
    "init_params",
    "load_checkpoint",
    "lyapunov",
    "recalibrate_bn",
    "mode_gap",
    "probe",
    "probe_batch",
    "train",
]


#: The default number of sequences in the probe batch (``TrainConfig.probe_size``).
PROBE_SIZE = 8


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a training run.

    Attributes:
        steps: number of Adam steps.
        batch_size: sequences per step.
        learning_rate: Adam's step size.
        clip_norm: clip the gradient to this global norm (None: no clipping). The pre-clip norm is recorded.
        seed: seeds the initialization, every batch, every dropout mask and the synthetic evaluation set.
        eval_every: evaluate (eval mode) every this many steps, and at the end.
        eval_size: sequences in the evaluation set of synthetic tasks (datasets use their test split).
        record_every: record ‖∂L/∂h_t‖ every this many steps (from step 0), and at the last step.
        checkpoint_every: with a checkpoint path, save every this many steps (0: only at the end).
        floss: the one switch of gradient flossing (Engelken 2023). False (default): no flossing, and the
            other ``floss_*`` options must keep their defaults. True: flossing as the options below say, and
            at least one of ``floss_weight > 0`` (during training) or ``floss_pre_steps > 0`` (before it)
            must be set. A configuration that asks for flossing and would get none is an error.
        floss_k: number of top Lyapunov exponents gradient flossing pushes to zero (``gradflow.floss``).
        floss_weight: weight w of the flossing loss w·Σ_{i≤k} λ_i² added to the task loss on flossing steps
            (0: no flossing during training). The exponents are those of the cell (train mode) along the
            step's batch from h_0 = 0, the first T // 10 steps not averaged.
        floss_every: floss on every this many training steps (from step 0).
        floss_pre_steps: pre-flossing Adam steps on the cell alone before training (``gradflow.floss``
            with its defaults, a fresh batch of the task every step; 0: none).
        probe_every: measure the gradient dynamics (:func:`probe`: the state Jacobian's decay rate, λ₁, the
            parameter sensitivity and the loss gradient's share per lag) on a fixed probe batch after 0,
            ``probe_every``, 2 ``probe_every``, ... updates and at the end (None: no probes). The probes
            read the parameters only: training is the same with and without them.
        probe_size: sequences in the probe batch (the exact parameter sensitivity pulls back
            probe_size × state-size rows per step: keep it small). Only with ``probe_every``.
    """

    steps: int = 300
    batch_size: int = 64
    learning_rate: float = 1e-3
    clip_norm: float | None = None
    seed: int = 0
    eval_every: int = 50
    eval_size: int = 512
    record_every: int = 25
    checkpoint_every: int = 0
    floss: bool = False
    floss_k: int = 1
    floss_weight: float = 0.0
    floss_every: int = 1
    floss_pre_steps: int = 0
    probe_every: int | None = None
    probe_size: int = PROBE_SIZE

    def __post_init__(self):
        # NumPy scalars are accepted and stored as Python numbers (the checkpoint identity is JSON)
        checked = {name: positive_int(f"TrainConfig.{name}", getattr(self, name))
                   for name in ("steps", "batch_size", "eval_every", "eval_size", "record_every", "floss_k",
                                "floss_every")}
        checked["checkpoint_every"] = nonneg_int("TrainConfig.checkpoint_every", self.checkpoint_every)
        checked["floss_pre_steps"] = nonneg_int("TrainConfig.floss_pre_steps", self.floss_pre_steps)
        checked["floss_weight"] = finite_float("TrainConfig.floss_weight", self.floss_weight)
        if checked["floss_weight"] < 0:
            raise ValueError(f"TrainConfig.floss_weight must be >= 0, got {self.floss_weight!r}")
        checked["learning_rate"] = positive_float("TrainConfig.learning_rate", self.learning_rate)
        if self.clip_norm is not None:
            checked["clip_norm"] = positive_float("TrainConfig.clip_norm (or None)", self.clip_norm)
        checked["seed"] = check_seed("TrainConfig.seed", self.seed)
        checked.update(self._checked_probes())
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        self._check_flossing()

    def _checked_probes(self) -> dict:
        """``probe_every`` (None or a positive int) and ``probe_size`` (a positive int, only with probes)."""
        size = positive_int("TrainConfig.probe_size", self.probe_size)
        if self.probe_every is None:
            if size != PROBE_SIZE:
                raise ValueError(f"TrainConfig.probe_size={self.probe_size!r} is set without probe_every: "
                                 "set probe_every to probe, or drop probe_size")
            return {"probe_size": size}
        return {"probe_every": positive_int("TrainConfig.probe_every (or None)", self.probe_every),
                "probe_size": size}

    def _check_flossing(self) -> None:
        """``floss`` is the one switch: no flossing option without it, no inert flossing with it."""
        if not isinstance(self.floss, bool):
            raise ValueError(f"TrainConfig.floss must be True or False, got {self.floss!r}")
        changed = [f"{name}={getattr(self, name)!r}" for name, default in FLOSS_DEFAULTS.items()
                   if getattr(self, name) != default]
        if not self.floss and changed:
            raise ValueError(f"TrainConfig sets flossing options ({', '.join(changed)}) with floss=False: "
                             "set floss=True to floss, or drop them")
        if self.floss and self.floss_weight == 0 and self.floss_pre_steps == 0:
            raise ValueError("TrainConfig(floss=True) needs floss_weight > 0 (flossing during training) or "
                             "floss_pre_steps > 0 (pre-flossing); with neither no flossing would happen")


#: The flossing options and their values without flossing (``TrainConfig.floss=False``).
FLOSS_DEFAULTS = {"floss_k": 1, "floss_weight": 0.0, "floss_every": 1, "floss_pre_steps": 0}


@dataclasses.dataclass
class TrainResult:
    """The outcome of :func:`train`.

    Attributes:
        cell: the trained cell (module).
        task: the task.
        config: the :class:`TrainConfig`.
        params: ``{"cell": cell params, "readout": {"W": (out, d), "b": (out,)}}``.
        batch_stats: the cell's BN running statistics (``{}`` without BN).
        opt_state: the optimizer state at the end (``optax.ScaleByAdamState``: ``count``, ``mu``, ``nu``).
        initial: ``{"params": ..., "batch_stats": ...}`` at initialization (for before/after comparisons).
        history: numpy arrays: ``loss``, ``accuracy``, ``grad_norm`` (steps,), NaN after a divergence;
            ``eval_step``, ``eval_loss``, ``eval_accuracy`` (n_eval,); ``flow_step`` (n_rec,) and
            ``grad_flow`` (n_rec, T). With ``probe_every`` (:func:`probe`, eval mode, the probe batch of
            :func:`probe_batch`): ``probe_step`` (P,) the number of updates applied (like ``eval_step``:
            0, probe_every, ..., and the last step); ``probe_rate``, ``probe_lyap``,
            ``probe_log_param_total``, ``probe_log_grad_total`` (P,); ``probe_log_state_jac``,
            ``probe_log_param_sens``, ``probe_log_grad_share`` (P, T), column t at lag T − t;
            ``probe_log_param_sens_groups``, ``probe_log_grad_share_groups`` (P, T, G) and ``probe_groups``
            (G,) their parameter groups.
        steps_done: steps whose updates were applied.
        diverged: True when a non-finite loss or gradient stopped training.
        message: why training stopped.
        elapsed_s: wall time of this call (seconds).
        variables: (property) the trained cell's variables ``{"params": ..., ["batch_stats": ...]}``, ready
            for ``gradflow.as_step(result.cell, result.variables)``.
    """

    cell: GradflowCell
    task: Task
    config: TrainConfig
    params: dict
    batch_stats: dict
    opt_state: Any
    initial: dict
    history: dict[str, np.ndarray]
    steps_done: int
    diverged: bool
    message: str
    elapsed_s: float

    @property
    def variables(self) -> dict:
        """The trained cell's variables ``{"params": ..., ["batch_stats": ...]}`` (for ``as_step``)."""
        return _cell_variables(self.params["cell"], self.batch_stats)

    @property
    def final_eval(self) -> tuple[float, float]:
        """(loss, accuracy) of the last evaluation."""
        return float(self.history["eval_loss"][-1]), float(self.history["eval_accuracy"][-1])


# --------------------------------------------------------------------------------------------- the model


def _cell_variables(cell_params, batch_stats) -> dict:
    out = {"params": cell_params}
    if batch_stats:
        out["batch_stats"] = batch_stats
    return out


def _check_cell_task(cell, task: Task) -> None:
    if not isinstance(cell, GradflowCell):
        raise ValueError(f"train expects a gradflow cell (gradflow.make_cell), got {type(cell).__name__}")
    if not isinstance(task, Task):
        raise ValueError(f"expected a gradflow.tasks.Task, got {type(task).__name__}")
    if cell.input_size != task.input_size:
        raise ValueError(
            f"input_size mismatch: task {task.name!r} feeds {task.input_size} features per step, "
            f"the cell expects {cell.input_size}"
        )


def init_params(cell: GradflowCell, task: Task, key: jax.Array) -> tuple[dict, dict]:
    """Initial parameters of cell + readout, and the cell's BN statistics.

    The readout ``W`` (output_size, d) has N(0, 1/d) entries, ``b`` is zero.

    Args:
        cell: one of our cells, with ``input_size == task.input_size``.
        task: the task (its ``output_size``).
        key: PRNG key (or an int seed).

    Returns:
        ``(params, batch_stats)``: ``params = {"cell": ..., "readout": {"W", "b"}}``; ``batch_stats`` is
        ``{}`` when the cell has no BN.
    """
    _check_cell_task(cell, task)
    key = prng_key("key", key, required=True)
    kc, kr = jax.random.split(key)
    variables = init_cell(cell, kc)
    d = feature_size(cell)  # hidden_size, or the LRU block's output width
    W = jax.random.normal(kr, (task.output_size, d), cell.dtype) / math.sqrt(d)
    params = {
        "cell": variables["params"],
        "readout": {"W": W, "b": jnp.zeros((task.output_size,), cell.dtype)},
    }
    return params, dict(variables.get("batch_stats", {}))


def forward(
    cell: GradflowCell,
    params: dict,
    batch_stats: dict,
    xs: jax.Array,
    *,
    train: bool,
    key: jax.Array | None = None,
    perturb: jax.Array | None = None,
    readout: str = "last",
):
    """Run cell + readout over a sequence.

    Args:
        cell: one of our cells.
        params: ``{"cell": ..., "readout": {"W", "b"}}``.
        batch_stats: BN running statistics (``{}`` without BN).
        xs: (T, B, input_size), finite (checked when concrete).
        train: True for train mode (batch statistics with running-average updates, dropout), False for eval
            mode.
        key: dropout key (required in train mode when the cell has dropout); one key per sequence, the cell
            folds in the step counter.
        perturb: optional (T, B, d) added to h_t after each step (zeros: the gradient with respect to it is
            ∂L/∂h_t).
        readout: ``"last"`` (outputs (B, out) from h_T) or ``"all"`` (outputs (T, B, out) from every h_t).

    Returns:
        ``(outputs, hs, new_batch_stats)``: ``hs`` (T, B, d) the (perturbed) states h_1..h_T;
        ``new_batch_stats`` the running statistics after the sequence (unchanged in eval mode).

    Raises:
        ValueError: ``xs`` of another shape or (when concrete) not finite, ``train`` not a bool, a bad
            ``readout`` or ``perturb``, train mode with dropout and no ``key``.
    """
    xs = _checked_xs(cell, xs)
    train = flag("train", train)
    if readout not in ("last", "all"):
        raise ValueError(f"readout must be 'last' or 'all', got {readout!r}")
    T, B = xs.shape[:2]
    d = cell.hidden_size
    if train and cell.spec.dropout > 0 and key is None:
        raise ValueError("train mode with dropout needs a dropout key")
    if perturb is None:
        perturb = jnp.zeros((T, B, d), cell.dtype)
    elif perturb.shape != (T, B, d):
        raise ValueError(f"perturb must have shape (T, B, d) = {(T, B, d)}, got {perturb.shape}")
    rngs = {"dropout": key} if key is not None else {}
    has_bn = bool(batch_stats)
    seq = _sequence_stats(cell, params, xs, train)

    def body(state, inp):
        carry, bs = state
        x, eps = inp
        variables = _cell_variables(params["cell"], bs)
        if seq is not None:
            variables = {**variables, "sequence_stats": seq}
        if train and has_bn:
            (new_carry, _), upd = cell.apply(
                variables, carry, x, train=True, mutable=["batch_stats"], rngs=rngs
            )
            bs = upd["batch_stats"]
        else:
            new_carry, _ = cell.apply(variables, carry, x, train=train, rngs=rngs)
        new_carry = {**new_carry, "h": new_carry["h"] + eps}
        return (new_carry, bs), new_carry["h"]

    (_, new_bs), hs = jax.lax.scan(body, (cell.initialize_carry(B), batch_stats), (xs, perturb))
    W, b = params["readout"]["W"], params["readout"]["b"]
    h_out = _readout_input(cell, params, batch_stats, seq, hs, xs, readout, train)
    return h_out @ W.T + b, hs, new_bs


def _checked_xs(cell, xs) -> jax.Array:
    """``xs`` as a (T, B, input_size) array; ValueError naming it for another shape, or (concrete values only:
    a traced call is not checked) a NaN or inf."""
    xs = jnp.asarray(xs)
    if xs.ndim != 3 or xs.shape[-1] != cell.input_size:
        raise ValueError(f"xs must have shape (T, B, input_size={cell.input_size}), got {xs.shape}")
    check_finite_inputs(xs)
    return xs


def _checked_batch(cell, task: Task, xs, ys) -> tuple[jax.Array, jax.Array]:
    """``(xs, ys)`` checked as by :func:`_checked_xs`, ``ys`` of the task's target shape for the batch (B,)
    or, for readout "all", (T, B), and finite when concrete."""
    _check_cell_task(cell, task)
    xs, ys = _checked_xs(cell, xs), jnp.asarray(ys)
    T, B = xs.shape[:2]
    want = (B,) if task.readout == "last" else (T, B)
    if ys.shape != want:
        raise ValueError(f"ys must have shape {want} (task {task.name!r}: the targets of the {B} sequences "
                         f"of xs), got {ys.shape}")
    check_finite(ys, "ys")
    return xs, ys


def _sequence_stats(cell, params, xs, train):
    """BN_x's statistics over the whole sequence (``input_stats="sequence"``, train mode), else None."""
    if not (train and cell.spec.input_stats == "sequence"):
        return None
    return with_sequence_stats(cell, {"params": params["cell"]}, xs)["sequence_stats"]


def _readout_input(cell, params, batch_stats, seq, hs, xs, readout, train):
    """What the readout reads: h_T or every h_t; for the LRU block its output o_t (from h_t and u_t)."""
    last = readout == "last"
    if not cell.spec.lru_block:
        return hs[-1] if last else hs
    fv = _cell_variables(params["cell"], batch_stats)
    fv = fv if seq is None else {**fv, "sequence_stats": seq}
    T = hs.shape[0]
    out = readout_features(
        cell, fv, hs[-1:] if last else hs, xs[-1:] if last else xs, t0=T - 1 if last else 0, train=train
    )
    return out[0] if last else out


def _loss_fn(cell, task, params, perturb, batch_stats, xs, ys, key, train):
    out, _, new_bs = forward(
        cell, params, batch_stats, xs, train=train, key=key, perturb=perturb, readout=task.readout
    )
    return task.loss(out, ys), (new_bs, task.accuracy(out, ys))


def gradient_flow(
    cell: GradflowCell,
    task: Task,
    params: dict,
    batch_stats: dict,
    xs: jax.Array,
    ys: jax.Array,
    *,
    train: bool = True,
    key: jax.Array | None = None,
) -> jax.Array:
    """‖∂L/∂h_t‖ for every t: the Frobenius norm over (B, d) of the gradient of the batch-mean loss.

    One ``jax.grad`` with respect to zero perturbations added to every state. In train mode with BN, the
    gradient includes the paths through the batch statistics.

    Args:
        cell, task, params, batch_stats: the model (see :func:`forward`).
        xs: (T, B, input_size); ys: the task's targets.
        train: train or eval mode.
        key: dropout key (train mode).

    Returns:
        (T,) norms; entry t-1 belongs to h_t.

    Raises:
        ValueError: ``xs`` or ``ys`` of the wrong shape or (when concrete) not finite, ``train`` not a bool.
    """
    xs, ys = _checked_batch(cell, task, xs, ys)
    train = flag("train", train)
    T, B = xs.shape[:2]
    zeros = jnp.zeros((T, B, cell.hidden_size), cell.dtype)
    g = jax.grad(lambda e: _loss_fn(cell, task, params, e, batch_stats, xs, ys, key, train)[0])(zeros)
    return jnp.sqrt(jnp.sum(g * g, axis=(1, 2)))


def batch_for_step(task: Task, config: TrainConfig, step: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The training batch and dropout key of step ``step`` (what :func:`train` uses).

    Returns:
        ``(xs, ys, dropout_key)``.

    Raises:
        ValueError: ``step`` not an int with 0 <= step < 2**32 (it is folded into the key as 32 bits).
    """
    step = check_seed("step", step)
    return batch_at(task, config.batch_size, jax.random.key(config.seed), step)


def batch_at(task: Task, batch_size: int, root: jax.Array, step) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The training batch and dropout key of ``step`` of a run seeded by ``root = jax.random.key(seed)``
    (traceable: ``step`` may be a tracer)."""
    k = jax.random.fold_in(jax.random.fold_in(root, 0), step)
    kdata, kdrop = jax.random.split(k)
    xs, ys = task.sample(kdata, batch_size)
    return xs, ys, kdrop


def eval_key(config: TrainConfig) -> jax.Array:
    """The PRNG key of the held-out evaluation set of a run (``task.eval_set(eval_key(config), size)``)."""
    return jax.random.fold_in(jax.random.key(config.seed), 2)


# Adam's direction (optax.scale_by_adam), then the learning rate, both traced: one compiled step serves every
# seed, learning rate and clip norm of a (cell, task, batch size).
ADAM = optax.scale_by_adam()

def _make_train_step(cell, task, batch_size, floss_k=0):
    key = ("train", cell, task, batch_size, floss_k)
    return cache.cached(key, lambda: _build_train_step(cell, task, batch_size, floss_k))


def _floss_term(cell, params, batch_stats, xs, key, k):
    """Σ_{i≤k} λ_i² of the cell along ``xs`` (train mode, h_0 = 0, the first T // 10 steps not averaged)."""
    step = as_step(cell, _cell_variables(params["cell"], batch_stats), train=True,
                   key=key if cell.spec.dropout > 0 else None)
    return flossing_loss(step, cell.initialize_carry(xs.shape[1]), xs, k=k, transient=xs.shape[0] // 10)


def _build_train_step(cell, task, batch_size, floss_k=0):
    def train_step(state, step, root, lr, clip, weight=0.0):
        return adam_step(cell, task, batch_size, state, step, root, lr, clip, floss_k=floss_k,
                         floss_weight=weight)

    return jax.jit(train_step)


def adam_step(cell, task: Task, batch_size: int, state: dict, step, root, lr, clip, *, floss_k: int = 0,
              floss_weight=0.0) -> tuple[dict, dict]:
    """One training step (traceable): the batch of ``step``, the gradient, clipping at the global norm
    ``clip`` (inf: none, as optax.clip_by_global_norm), Adam's direction times ``lr``.

    Args:
        cell, task, batch_size: the run.
        state: ``{"params", "batch_stats", "opt_state"}``.
        step: the step index (selects the batch and the dropout key).
        root: ``jax.random.key(seed)``.
        lr, clip: learning rate and clipping threshold (traced: one compilation serves every value).
        floss_k, floss_weight: with ``floss_k`` > 0 (static), the gradient is that of the loss plus
            ``floss_weight`` (traced) × Σ_{i≤k} λ_i² (``gradflow.flossing_loss``, train mode, h_0 = 0, the
            first T // 10 steps not averaged); the recorded ``loss`` stays the task's.

    Returns:
        ``(new_state, metrics)``; metrics: ``loss``, ``accuracy``, ``grad_norm`` (before clipping),
        ``grad_flow`` (T,) ‖∂L/∂h_t‖ of this batch.
    """
    xs, ys, kdrop = batch_at(task, batch_size, root, step)
    T, B = xs.shape[:2]
    zeros = jnp.zeros((T, B, cell.hidden_size), cell.dtype)

    def loss_fn(params, perturb):
        loss, (bs, acc) = _loss_fn(cell, task, params, perturb, state["batch_stats"], xs, ys, kdrop, True)
        if floss_k:
            flossing = _floss_term(cell, params, state["batch_stats"], xs, kdrop, floss_k)
            return loss + floss_weight * flossing, (loss, bs, acc)
        return loss, (loss, bs, acc)

    (_, (loss, bs, acc)), (g, g_h) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        state["params"], zeros)
    gnorm = optax.tree.norm(g)
    factor = jnp.where(gnorm < clip, 1.0, clip / gnorm)
    g_clipped = jax.tree.map(lambda x: (x * factor).astype(x.dtype), g)
    direction, opt_state = ADAM.update(g_clipped, state["opt_state"], state["params"])
    params = jax.tree.map(lambda p, u: (p - lr * u).astype(p.dtype), state["params"], direction)
    new = {"params": params, "batch_stats": bs, "opt_state": opt_state}
    return new, {"loss": loss, "accuracy": acc, "grad_norm": gnorm,
                 "grad_flow": jnp.sqrt(jnp.sum(g_h * g_h, axis=(1, 2)))}


def _make_eval(cell, task):
    return cache.cached(("eval", cell, task), lambda: _build_eval(cell, task))


def _build_eval(cell, task):
    def _eval(params, batch_stats, xs, ys, key, train):
        out, _, _ = forward(cell, params, batch_stats, xs, train=train, key=key, readout=task.readout)
        return task.loss(out, ys), task.accuracy(out, ys)

    return jax.jit(_eval, static_argnums=5)


def evaluate(
    cell: GradflowCell,
    task: Task,
    params: dict,
    batch_stats: dict,
    xs: jax.Array,
    ys: jax.Array,
    *,
    train: bool = False,
    key: jax.Array | None = None,
) -> tuple[float, float]:
    """Loss and accuracy of the model on ``(xs, ys)``.

    Args:
        cell, task, params, batch_stats: the model.
        xs, ys: a batch (e.g. ``task.eval_set(key)``).
        train: evaluate in train mode (batch statistics, dropout with ``key``; running averages not kept).
        key: dropout key for train mode.

    Returns:
        ``(loss, accuracy)`` as floats.

    Raises:
        ValueError: ``xs`` or ``ys`` of the wrong shape or (when concrete) not finite, ``train`` not a bool.
    """
    xs, ys = _checked_batch(cell, task, xs, ys)
    f = _make_eval(cell, task)
    loss, acc = f(params, batch_stats, xs, ys, key, flag("train", train))
    return float(loss), float(acc)


# --------------------------------------------------------------------------------------------- probes


def probe_batch(task: Task, config: TrainConfig) -> tuple[jax.Array, jax.Array]:
    """The fixed probe batch ``(xs, ys)`` of a run (``config.probe_size`` sequences of the task, from a key
    of their own: neither a training batch nor the evaluation set)."""
    return task.sample(jax.random.fold_in(jax.random.key(config.seed), 4), config.probe_size)


def _probe_core(cell, task, params, batch_stats, xs, ys):
    """The traced part of :func:`probe` (engine calls on the eval-mode step; no host checks)."""
    variables = _cell_variables(params["cell"], batch_stats)
    T, B = xs.shape[:2]
    carry0 = cell.initialize_carry(B)
    zeros = jnp.zeros((T, B, cell.hidden_size), cell.dtype)
    g = jax.grad(lambda e: _loss_fn(cell, task, params, e, batch_stats, xs, ys, None, False)[0])(zeros)
    cotangent = {**jax.tree_util.tree_map(jnp.zeros_like, carry0), "h": g[-1]}  # ∂L/∂h_T
    pstep, theta = param_step(cell, variables, train=False)
    sens = param_sensitivity(pstep, theta, carry0, xs)
    share = param_sensitivity(pstep, theta, carry0, xs, cotangent=cotangent)
    transient = T // 4
    lyap = lyapunov_spectrum(as_step(cell, variables, train=False), carry0, xs, k=1, transient=transient,
                             segments=min(10, T - transient))
    return {"lyap": lyap.exponents[0], "log_state_jac": sens.log_state_jacobian,
            "log_param_sens": sens.log_contribution_all, "log_param_total": sens.log_total_all,
            "log_param_sens_groups": sens.log_contributions, "log_grad_share": share.log_contribution_all,
            "log_grad_total": share.log_total_all, "log_grad_share_groups": share.log_contributions}


def probe(cell: GradflowCell, task: Task, params: dict, batch_stats: dict, xs: jax.Array,
          ys: jax.Array) -> dict:
    """The gradient dynamics of cell + readout on a probe batch, in eval mode (what ``probe_every`` records).

    The cell runs in eval mode (BN with its running statistics, no dropout: a per-example map), from h_0 = 0
    over ``xs``; the B sequences are one state of size B·n. Every measurement comes from the engine
    (compiled once per cell and task):

    - ``rate``: the slope of ln‖∂h_T/∂h_t‖_F against the lag T − t over lags 1..T
      (``gradflow.growth_rate`` of ``log_state_jac``; NaN when a log norm is not finite);
    - ``lyap``: λ₁, ``gradflow.lyapunov_spectrum(step, h_0, xs, k=1, transient=T // 4)`` (ln per step, the
      mean over the last T − T // 4 steps);
    - ``gradflow.param_sensitivity`` of the cell's parameters θ: ``log_param_sens`` (T,)
      ln‖C_t‖_F, C_t = ∂h_T/∂h_{t+1} · ∂h_{t+1}/∂θ (entry t has lag T − t), ``log_param_total``
      ln‖∂h_T/∂θ‖_F, ``log_param_sens_groups`` (T, G) per parameter group (``groups``: the top-level keys of
      the cell's parameters);
    - the same with the cotangent ∂L/∂h_T of the batch-mean loss in eval mode: ``log_grad_share`` (T,)
      ln‖∂L/∂h_T · C_t‖, the loss gradient's share from the step at lag T − t, ``log_grad_total``
      ln‖∂L/∂θ‖ through h_T, ``log_grad_share_groups`` (T, G). For tasks read out from h_T (adding,
      digits) this is the whole gradient of the loss with respect to the cell's recurrence (an LRU block's
      readout also reads θ directly at h_T: that part is not a lag's share); for a task read out at every
      step (copy) it is the share of the last output's loss term only;
    - ``log_state_jac`` (T,) ln‖∂h_T/∂h_t‖_F (the sensitivity pass's state Jacobian).

    Args:
        cell, task, params, batch_stats: the model (see :func:`forward`).
        xs, ys: the probe batch (:func:`probe_batch`); T = xs.shape[0] >= 3.

    Returns:
        dict of NumPy float64 values (scalars and the arrays above) and ``groups`` (tuple of G names).
    """
    T = int(xs.shape[0])
    if T < 3:
        raise ValueError(f"probe needs sequences of at least 3 steps (a rate fit and λ₁), got T = {T}")
    f = cache.cached(("probe", cell, task), lambda: jax.jit(functools.partial(_probe_core, cell, task)))
    out = {k: np.asarray(v, np.float64) for k, v in f(params, batch_stats, xs, ys).items()}
    y = out["log_state_jac"]
    out["rate"] = growth_rate(y, T - np.arange(T)).rate if np.all(np.isfinite(y)) else math.nan
    out["groups"] = param_groups(params["cell"])[0]
    return out


# --------------------------------------------------------------------------------------------- checkpoints


def _identity(cell: GradflowCell, task: Task, config: TrainConfig, start: dict | None = None) -> str:
    cfg = dataclasses.asdict(config)
    cfg.pop("steps")
    cfg.pop("checkpoint_every")
    for name, default in {"floss": False, **FLOSS_DEFAULTS}.items():
        if cfg[name] == default:  # runs without flossing keep the identity (and checkpoints) they had before
            cfg.pop(name)
    if config.probe_every is None:  # runs without probes keep the identity they had before probes existed
        cfg.pop("probe_every")
        cfg.pop("probe_size")
    inner = getattr(cell, "inner", None)
    return json.dumps(
        {
            "cell": repr(cell.spec) + ("" if inner is None else f" wrapping {inner!r}"),
            "start": None if start is None else _digest(start),
            "hidden": cell.hidden_size,
            "input": cell.input_size,
            "task": task.name,
            "seq_len": task.seq_len,
            "config": cfg,
        },
        sort_keys=True,
    )


def _digest(tree) -> str:
    """A short content hash of a pytree of arrays (the starting variables of a run)."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()[:16]


def _start_from(params: dict, batch_stats: dict, variables: dict) -> tuple[dict, dict]:
    """``params`` with the cell's part replaced by ``variables["params"]`` (shapes checked), and its BN
    statistics."""
    if not isinstance(variables, dict) or "params" not in variables:
        raise ValueError("variables must be a dict with a 'params' entry (as init_cell returns)")
    # a NaN or inf would only show as a divergence at step 0: name the leaf instead
    check_finite(variables, "the starting variables")
    new, old = variables["params"], params["cell"]
    if jax.tree_util.tree_structure(new) != jax.tree_util.tree_structure(old) or any(
            jnp.shape(a) != jnp.shape(b) for a, b in zip(jax.tree_util.tree_leaves(new),
                                                         jax.tree_util.tree_leaves(old), strict=True)):
        raise ValueError("variables['params'] does not match the cell's parameters (structure or shapes)")
    cast = jax.tree_util.tree_map(lambda a, b: jnp.asarray(a, jnp.result_type(b)), new, old)
    return {**params, "cell": cast}, dict(variables.get("batch_stats", batch_stats))


def _save_checkpoint(path: str, state: dict, step: int, history: dict, identity: str) -> None:
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
    for k, v in history.items():
        arrays[f"hist_{k}"] = np.asarray(v)
    arrays["step"] = np.asarray(step)
    arrays["identity"] = np.asarray(identity)
    atomic_write_npz(path, arrays)


def load_checkpoint(path: str, template: dict) -> tuple[dict, int, dict, str]:
    """Read a checkpoint written by :func:`train`.

    Args:
        path: the ``.npz`` file.
        template: a state pytree with the same structure (``{"params", "batch_stats", "opt_state"}``).

    Returns:
        ``(state, step, history, identity)``.

    Raises:
        ValueError: the file is unreadable (truncated, corrupt, not a checkpoint) or does not match the
            template (other cell, task or optimizer); the message names the file.
    """
    z = _read_checkpoint_arrays(path)
    leaves_t, treedef = jax.tree_util.tree_flatten(template)
    n = sum(1 for k in z if k.startswith("leaf_"))
    if n != len(leaves_t):
        raise ValueError(f"checkpoint {path} holds {n} arrays, the model needs {len(leaves_t)}")
    leaves = []
    for i, t in enumerate(leaves_t):
        a = z[f"leaf_{i:05d}"]
        if a.shape != np.shape(t):
            raise ValueError(f"checkpoint {path}: array {i} has shape {a.shape}, expected {np.shape(t)}")
        leaves.append(jnp.asarray(a, dtype=jnp.asarray(t).dtype))
    state = jax.tree_util.tree_unflatten(treedef, leaves)
    history = {k[5:]: z[k] for k in z if k.startswith("hist_")}
    return state, int(z["step"]), history, str(z["identity"])


def _read_checkpoint_arrays(path: str) -> dict[str, np.ndarray]:
    """Every array of a checkpoint file, read in full; an unreadable file raises ValueError naming it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); it may be truncated or "
                         "corrupt: delete it to train from scratch") from e
    missing = [k for k in ("step", "identity") if k not in arrays]
    if missing:
        raise ValueError(f"checkpoint {path} is not a gradflow checkpoint (no {', '.join(missing)})")
    return arrays


def _resumed_history(hist: dict, saved: dict, start: int, config: TrainConfig) -> None:
    """Copy a checkpoint's history (``start`` steps done) into ``hist``, as an uninterrupted run has it.

    Records are kept on the regular grid, plus this run's end-of-run extras (the evaluation at ``steps`` and
    the gradient flow at ``steps - 1``) when the checkpoint is the finished run; a shorter run's extras are
    dropped (an uninterrupted longer run would not have them).
    """
    S = config.steps
    n = min(start, len(saved["loss"]))
    for k in ("loss", "accuracy", "grad_norm"):
        hist[k][:n] = saved[k][:n]
    finished = start == S
    keep = [i for i, st in enumerate(saved["eval_step"])
            if st % config.eval_every == 0 or (finished and st == S)]
    for k in ("eval_step", "eval_loss", "eval_accuracy"):
        hist[k] = [saved[k][i] for i in keep]
    keep = [i for i, st in enumerate(saved["flow_step"])
            if st % config.record_every == 0 or (finished and st == S - 1)]
    hist["flow_step"] = [saved["flow_step"][i] for i in keep]
    hist["grad_flow"] = [saved["grad_flow"][i] for i in keep]


#: The probe records' fields (without the ``probe_`` prefix of their history keys; see :func:`probe`).
PROBE_FIELDS = ("rate", "lyap", "log_param_total", "log_grad_total", "log_state_jac", "log_param_sens",
                "log_grad_share", "log_param_sens_groups", "log_grad_share_groups")


def _probe_history(records: list[dict], T: int, groups: tuple) -> dict[str, np.ndarray]:
    """History arrays from probe records: ``probe_step`` (P,), ``probe_<field>`` (P, ...) and
    ``probe_groups``."""
    G = len(groups)
    shapes = {"log_state_jac": (T,), "log_param_sens": (T,), "log_grad_share": (T,),
              "log_param_sens_groups": (T, G), "log_grad_share_groups": (T, G)}
    out = {"probe_step": np.asarray([r["step"] for r in records], np.int64),
           "probe_groups": np.asarray(groups, dtype=str)}
    for k in PROBE_FIELDS:
        vals = [np.asarray(r[k], np.float64) for r in records]
        out[f"probe_{k}"] = np.stack(vals) if vals else np.zeros((0, *shapes.get(k, ())))
    return out


def _resumed_probes(saved: dict, start: int, config: TrainConfig) -> list[dict]:
    """The probe records of a checkpoint's history that an uninterrupted run has (as :func:`_resumed_history`:
    the regular grid, and the end of the run when the checkpoint is the finished run)."""
    if config.probe_every is None or "probe_step" not in saved:
        return []
    return [{"step": int(st), **{k: saved[f"probe_{k}"][i] for k in PROBE_FIELDS}}
            for i, st in enumerate(saved["probe_step"])
            if st % config.probe_every == 0 or (start == config.steps and st == config.steps)]


# --------------------------------------------------------------------------------------------- training


def train(
    cell: GradflowCell,
    task: Task,
    config: TrainConfig | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
    variables: dict | None = None,
) -> TrainResult:
    """Train cell + readout on a task with Adam (``gradflow.fit`` also takes a user's linen or nnx cell).

    Args:
        cell: one of our cells (``gradflow.make_cell``) with ``input_size == task.input_size``. With per-step
            BN statistics, choose ``t_max >= task.seq_len`` (steps beyond share the last row).
        task: a :class:`gradflow.tasks.Task`.
        config: :class:`TrainConfig` (default values if None).
        checkpoint: path of a ``.npz`` checkpoint. If it exists and matches (same cell, task and
            configuration apart from ``steps``), training resumes from it; it is (re)written atomically every
            ``checkpoint_every`` steps and at the end.
        progress: called with a one-line message at every evaluation (None: silent).
        variables: the cell's starting variables (``{"params": ..., ["batch_stats": ...]}``, e.g. after
            ``gradflow.floss``); default: ``init_cell`` seeded by ``config.seed``. The readout is initialized
            as usual. A NaN or inf in them raises ValueError naming the leaf.

    Returns:
        :class:`TrainResult`. A non-finite loss or gradient ends training with ``diverged=True`` (the last
        finite parameters are kept and the remaining per-step entries are NaN).

    Example:
        >>> import gradflow
        >>> from gradflow import tasks, train
        >>> task = tasks.adding(10)
        >>> cell = gradflow.make_cell("tanh", 16, 2)
        >>> r = train.train(cell, task, train.TrainConfig(steps=10, batch_size=8, eval_every=5))
        >>> r.history["eval_step"].tolist()
        [0, 5, 10]
    """
    t0 = time.perf_counter()
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    _check_cell_task(cell, task)
    say = progress if progress is not None else (lambda _m: None)
    run = _Run(cell, task, config, checkpoint, say, variables)
    diverged, message = run.loop()
    return TrainResult(cell=cell, task=task, config=config, params=run.state["params"],
                       batch_stats=run.state["batch_stats"], opt_state=run.state["opt_state"],
                       initial=run.initial, history=run.snapshot(), steps_done=run.step, diverged=diverged,
                       message=message, elapsed_s=time.perf_counter() - t0)


class _Run:
    """One call of :func:`train`: the state, the history, the checkpoint and the loop over steps."""

    def __init__(self, cell, task: Task, config: TrainConfig, checkpoint, say: Callable[[str], None],
                 variables: dict | None = None):
        if config.probe_every is not None and task.seq_len < 3:
            raise ValueError(f"TrainConfig.probe_every needs sequences of at least 3 steps; task "
                             f"{task.name!r} has T = {task.seq_len}")
        self.cell, self.task, self.config, self.say = cell, task, config, say
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self.root = jax.random.key(config.seed)
        params, batch_stats = init_params(cell, task, jax.random.fold_in(self.root, 1))
        if variables is not None:
            params, batch_stats = _start_from(params, batch_stats, variables)
        self.initial = {"params": params, "batch_stats": batch_stats}
        self.state = {"params": params, "batch_stats": batch_stats, "opt_state": ADAM.init(params)}
        self.train_step = _make_train_step(cell, task, config.batch_size)
        self.floss_step = (_make_train_step(cell, task, config.batch_size, config.floss_k)
                           if config.floss_weight > 0 else None)
        self.eval_fn = _make_eval(cell, task)
        self.eval_data = task.eval_set(eval_key(config), config.eval_size)
        S = config.steps
        self.hist = {"loss": np.full(S, np.nan), "accuracy": np.full(S, np.nan),
                     "grad_norm": np.full(S, np.nan), "eval_step": [], "eval_loss": [], "eval_accuracy": [],
                     "flow_step": [], "grad_flow": []}
        self.hyper = (self.root, jnp.float32(config.learning_rate),
                      jnp.float32(np.inf if config.clip_norm is None else config.clip_norm))
        self.probe_data = None if config.probe_every is None else probe_batch(task, config)
        self.probes: list[dict] = []  # one dict per probe record (probe_every)
        self.identity = _identity(cell, task, config, None if variables is None else self.initial)
        self.step = self._resume()
        if self.step == 0 and config.floss_pre_steps > 0:
            self._prefloss()

    def _prefloss(self) -> None:
        """``config.floss_pre_steps`` steps of ``gradflow.floss`` on the cell (fresh task batches)."""
        config, params = self.config, self.state["params"]
        sample = lambda key: self.task.sample(key, config.batch_size)[0]
        v = floss(self.cell, _cell_variables(params["cell"], self.state["batch_stats"]), sample,
                  k=config.floss_k, steps=config.floss_pre_steps, key=jax.random.fold_in(self.root, 3))
        params = {**params, "cell": v["params"]}
        self.initial = {"params": params, "batch_stats": self.state["batch_stats"]}
        self.state = {**self.state, "params": params, "opt_state": ADAM.init(params)}

    def _resume(self) -> int:
        """The step to start from: 0, or a matching checkpoint's step (its state and history restored)."""
        if self.checkpoint is None or not os.path.exists(self.checkpoint):
            return 0
        self.state, start, saved, saved_id = load_checkpoint(self.checkpoint, self.state)
        if saved_id != self.identity:
            raise ValueError(f"checkpoint {self.checkpoint} was written for another run "
                             f"(cell, task or configuration differ): {saved_id} != {self.identity}")
        if start > self.config.steps:
            raise ValueError(f"checkpoint {self.checkpoint} is at step {start}, "
                             f"beyond steps={self.config.steps}")
        _resumed_history(self.hist, saved, start, self.config)
        self.probes = _resumed_probes(saved, start, self.config)
        self.say(f"resumed from {self.checkpoint} at step {start}")
        return start

    def record_eval(self, step: int) -> None:
        xs, ys = self.eval_data
        loss, acc = self.eval_fn(self.state["params"], self.state["batch_stats"], xs, ys, None, False)
        hist = self.hist
        hist["eval_step"].append(step)
        hist["eval_loss"].append(float(loss))
        hist["eval_accuracy"].append(float(acc))
        train_loss = f"train loss {hist['loss'][step - 1]:.4g}, " if step > 0 else ""
        self.say(f"{self.task.name} T={self.task.seq_len} step {step}/{self.config.steps}: {train_loss}"
                 f"eval loss {float(loss):.4g} (baseline {self.task.baseline:.4g}), "
                 f"eval acc {float(acc):.3f}")

    def snapshot(self) -> dict[str, np.ndarray]:
        hist = self.hist
        out = {k: (np.asarray(v) if not isinstance(v, list) else np.asarray(v, dtype=float))
               for k, v in hist.items() if k != "grad_flow"}
        out["eval_step"] = np.asarray(hist["eval_step"], dtype=np.int64)
        out["flow_step"] = np.asarray(hist["flow_step"], dtype=np.int64)
        out["grad_flow"] = (np.stack(hist["grad_flow"]) if hist["grad_flow"]
                            else np.zeros((0, self.task.seq_len)))
        if self.probe_data is not None:
            out.update(_probe_history(self.probes, self.task.seq_len,
                                      param_groups(self.state["params"]["cell"])[0]))
        return out

    def record_probe(self, force: bool = False) -> None:
        """:func:`probe` of the current parameters, on the probe schedule (or ``force``), once per step."""
        every, step = self.config.probe_every, self.step
        if self.probe_data is None or (self.probes and self.probes[-1]["step"] == step):
            return
        if force or step % every == 0 or step == self.config.steps:
            state = self.state
            out = probe(self.cell, self.task, state["params"], state["batch_stats"], *self.probe_data)
            self.probes.append({**out, "step": step})

    def save(self) -> None:
        if self.checkpoint is not None:
            _save_checkpoint(self.checkpoint, self.state, self.step, self.snapshot(), self.identity)

    def advance(self) -> str | None:
        """One Adam step with its records; a message instead when the loss or the gradient is not finite."""
        config, hist, step = self.config, self.hist, self.step
        if self.floss_step is not None and step % config.floss_every == 0:
            new_state, m = self.floss_step(self.state, step, *self.hyper, jnp.float32(config.floss_weight))
        else:
            new_state, m = self.train_step(self.state, step, *self.hyper)
        loss, gnorm = float(m["loss"]), float(m["grad_norm"])
        if not (math.isfinite(loss) and math.isfinite(gnorm)):
            return (f"diverged at step {step}: loss {loss}, gradient norm {gnorm} "
                    f"(kept the parameters of step {step})")
        self.state = new_state
        hist["loss"][step], hist["grad_norm"][step] = loss, gnorm
        hist["accuracy"][step] = float(m["accuracy"])
        if step % config.record_every == 0 or step == config.steps - 1:
            hist["flow_step"].append(step)
            hist["grad_flow"].append(np.asarray(m["grad_flow"], dtype=np.float64))
        self.step = step + 1
        return None

    def loop(self) -> tuple[bool, str]:
        """Train to ``config.steps`` (evaluating and checkpointing on schedule); (diverged, message)."""
        config = self.config
        if self.step == 0 and not self.hist["eval_step"]:
            self.record_eval(0)
        self.record_probe()
        diverged, message = False, f"finished {config.steps} steps"
        while self.step < config.steps:
            problem = self.advance()
            if problem is not None:
                diverged, message = True, problem
                self.say(message)
                break
            if self.step % config.eval_every == 0 or self.step == config.steps:
                self.record_eval(self.step)
            self.record_probe()
            every = config.checkpoint_every
            if every and self.step % every == 0 and self.step < config.steps:
                self.save()
        if not self.hist["eval_step"] or self.hist["eval_step"][-1] != self.step:  # diverged, or resumed
            self.record_eval(self.step)
        self.record_probe(force=True)
        self.save()
        return diverged, message


# --------------------------------------------------------------------------------------------- recordings


def mode_gap(
    result: TrainResult,
    lengths: Sequence[int] | None = None,
    *,
    key: jax.Array | None = None,
    size: int = 512,
) -> dict[str, np.ndarray]:
    """Train-mode against eval-mode results of a trained model, at the trained length and longer ones.

    Train mode normalizes with the evaluation batch's own statistics (and applies dropout, as in training);
    eval mode uses the running averages (beyond ``t_max`` the last row) and no dropout. For a cell without BN
    or dropout the two coincide.

    Args:
        result: a :class:`TrainResult`.
        lengths: task lengths to evaluate (adding: T, copy: delay). Default: the trained length only.
            Dataset tasks accept only their fixed length.
        key: PRNG key of the evaluation sets and dropout (default: derived from the run's seed).
        size: sequences per synthetic evaluation set.

    Returns:
        ``{"length", "train_loss", "eval_loss", "train_accuracy", "eval_accuracy"}``: arrays over lengths.
    """
    task = result.task
    base = task.length if task.length is not None else task.seq_len
    lengths = [base] if lengths is None else [int(n) for n in lengths]
    key = jax.random.fold_in(eval_key(result.config), 7) if key is None else key
    rows = {k: [] for k in ("length", "train_loss", "eval_loss", "train_accuracy", "eval_accuracy")}
    for i, n in enumerate(lengths):
        t = task if n == base else task.with_length(n)
        kd, ke = jax.random.split(jax.random.fold_in(key, i))
        xs, ys = t.eval_set(kd, size)
        f = _make_eval(result.cell, t)
        tr = f(result.params, result.batch_stats, xs, ys, ke, True)
        ev = f(result.params, result.batch_stats, xs, ys, None, False)
        rows["length"].append(n)
        rows["train_loss"].append(float(tr[0]))
        rows["train_accuracy"].append(float(tr[1]))
        rows["eval_loss"].append(float(ev[0]))
        rows["eval_accuracy"].append(float(ev[1]))
    return {k: np.asarray(v) for k, v in rows.items()}


def recalibrate_bn(result: TrainResult, batches: int = 50, *, seed: int = 1) -> dict:
    """Re-estimate the BN running statistics with the trained parameters frozen ("precise BN").

    During training the running averages trail the parameters (they average batches seen under earlier
    parameters); this runs ``batches`` fresh training batches in train mode through the final model, updating
    only the statistics (momentum as in training, starting from the trained statistics).

    Args:
        result: a :class:`TrainResult` of a cell with BN.
        batches: number of batches (with momentum 0.9, 50 batches leave 0.9^50 ≈ 0.5% of the start).
        seed: seeds the batches and dropout masks (independent of the training batches for seed != config).

    Returns:
        The re-estimated ``batch_stats`` (``{}`` for a cell without BN).
    """
    if not result.batch_stats:
        return {}
    positive_int("batches", batches)
    check_seed("seed", seed)
    cell, task, B = result.cell, result.task, result.config.batch_size
    update = cache.cached(("recal", cell, task, B),
                          lambda: jax.jit(functools.partial(recalibration_step, cell, task, B)))
    root = recalibration_root(seed)
    bs = result.batch_stats
    for i in range(int(batches)):
        bs = update(result.params, bs, root, i)
    return bs


def recalibration_root(seed: int) -> jax.Array:
    """The PRNG root of :func:`recalibrate_bn`'s batches (independent of the training batches' root)."""
    return jax.random.fold_in(jax.random.key(seed), 3)


def recalibration_step(cell: GradflowCell, task, batch_size: int, params, batch_stats, root, i) -> dict:
    """One batch of :func:`recalibrate_bn`: batch ``i`` from ``root`` in train mode through the frozen
    parameters; returns the updated ``batch_stats`` (pure, jittable, usable inside a compiled loop)."""
    xs, _, kdrop = batch_at(task, batch_size, root, i)
    return forward(cell, params, batch_stats, xs, train=True, key=kdrop, readout=task.readout)[2]


def lyapunov(
    cell: GradflowCell,
    variables: dict,
    task: Task,
    *,
    key: jax.Array,
    k: int = 4,
    steps: int | None = None,
    transient: int | None = None,
):
    """The ``k`` largest Lyapunov exponents of a cell (eval mode) driven by the task's inputs.

    The cell runs in eval mode (a per-example map: BN with its running statistics, no dropout) on one input
    sequence of the task: synthetic tasks at about ``steps`` steps (adding and its controls: T = steps; copy:
    delay steps - 20), datasets one test sequence of their own length. ``gradflow.lyapunov_spectrum`` (QR
    method) gives the exponents of the whole state (h, and c for an LSTM), natural log per step.

    Args:
        cell: one of our cells.
        variables: ``{"params": ..., ["batch_stats": ...]}`` (``TrainResult.variables``, or the initial ones:
            ``{"params": r.initial["params"]["cell"], "batch_stats": r.initial["batch_stats"]}``).
        task: the task driving the cell.
        key: PRNG key of the input sequence (or an int seed).
        k: number of exponents (a positive int).
        steps: sequence length for synthetic tasks, an int >= 2 (default 4 × the task's sequence length).
        transient: steps discarded before averaging, a non-negative int (default a quarter of the sequence).

    Returns:
        ``gradflow.LyapunovResult`` (``exponents`` (k,) largest first, ``stderr`` (k,), ``n_steps``).

    Raises:
        ValueError: a bad ``key``, ``k``, ``steps`` or ``transient`` (named); from ``lyapunov_spectrum``,
            e.g. when the states overflow (non-finite).
    """
    _check_cell_task(cell, task)
    key = prng_key("key", key, required=True)
    k = positive_int("k", k)
    steps = None if steps is None else int_at_least("steps", steps, 2)
    transient = None if transient is None else nonneg_int("transient", transient)
    if task.is_dataset:
        xs, _ = task.eval_set(key)
        xs = xs[:, :1]
    else:
        n = steps if steps is not None else 4 * task.seq_len
        t = task.with_length(max(n - 20, 1) if task.name == "copy" else n)
        xs, _ = t.sample(key, 1)
    T = xs.shape[0]
    transient = T // 4 if transient is None else transient
    variables = _cell_variables(variables["params"], variables.get("batch_stats", {}))
    r = measure.lyapunov(cell, variables, cell.initialize_carry(1), xs, train=False, k=k, transient=transient)
    return LyapunovResult(r["exponents"], r["stderr"], T - transient)
