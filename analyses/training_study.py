"""training_study: why a cell fails to learn, separated by cause (expressivity, length, memory, budget).

Every run trains one cell (Adam, gradient clipping at a global norm) on one task at one length T, one learning
rate and one seed, then measures it on a **validation** set (fresh sequences from ``VAL_KEY``; datasets: a
split of the training data the sampler never draws) and a **test** set (``TEST_KEY``; datasets: the test
split). Per (cell, task, T) the learning rate is the one with the best median *validation* metric over seeds;
the test metric at that rate is what the tables report. The causes are separated by controls:

- **Expressivity.** The adding target Σ m_t·u_t multiplies two inputs of one step: a cell that is affine in
  its inputs (:func:`is_affine`: a linear RNN, BN without tanh in eval mode, a single LRU with a linear
  readout) cannot go below the affine floor 1 − 2/T of the baseline (``gradflow.tasks.adding_affine_floor``,
  checked by least squares in the tests), at any T, whatever its gradients do. Two *representable* controls
  (``adding_product``: the product given as an input; ``recall``: a value from step 1 among distractors) are
  affine targets every cell can represent at any T.
- **Length.** On the controls, T doubles from the first length until the cell has not learned the task
  (its median test loss is at least :data:`LEARNED` of the baseline; ``doubling``): the loss against T on a
  task the cell can represent. A failure that grows with T there is a trainability failure.
- **Memory.** The memory curve of the trained cell (r² of a linear readout of u_{T−k} from h_T,
  k = 0..K−1) and its sum, the memory capacity (``gradflow.capacity``). On adding, a loss near 50 % of the
  baseline means one of the two values carried, near 0 both.
- **Budget.** Where a cell fails, one run with ``budget["factor"]`` × the steps at its chosen rate says
  whether more training changes it: at most half the loss (:data:`BUDGET_GAIN`) and the failure is the
  budget's.

Statistics: ``seeds`` (≥ 5 in the default and full designs); the rate grid is extended by factors of 3 until
the chosen rate is interior (or a limit / divergence explains the edge, reported); comparisons against tanh
use the two-sided Mann–Whitney U test on the test metric over seeds at each cell's chosen rate and a
bootstrap interval of the difference of medians (``gradflow.stats``). Cells with BN are reported in eval
mode (statistics re-estimated for the final parameters) and in train mode (batch statistics of chunks of
``batch`` test sequences) as two rows of the same runs. The top Lyapunov exponent λ₁ of every cell is
measured at initialization and after training (eval mode, task inputs), so a flossed run can be told
from its base run.

Runs are stored one JSON file per run (:class:`RunStore`, keyed by the run's configuration), so an interrupted
study resumes with the runs not yet done and a study whose configuration grows reuses every run it has. The
store (``figures/store/training_study``) is committed: the default and the full design share it, and a fresh
clone re-reads its runs. A run is keyed by its configuration and :data:`RUN_VERSION` (not by gradflow's code):
bump RUN_VERSION when a change alters what a run computes, or delete the folder to retrain everything.

Files (:func:`write_extra`): ``training_study.csv`` (every run × split × mode), ``training_study_table.md``
(the one table) and ``training_study_findings.md`` (the answer with the numbers and tests behind it).

Example::

    from analyses import training_study as ts
    data = ts.run({**ts.CONFIG, **ts.QUICK}, progress=print)
    print(ts.write_extra(data)["training_study_table.md"])
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from pathlib import Path

import jax
import numpy as np

import gradflow
from analyses import common, style
from analyses.runner import ROOT, relieve_memory_maps, say
from gradflow import cache, measure, stats, tasks, train
from gradflow.capacity import memory_curve
from gradflow.cells import GradflowCell
from gradflow.checks import atomic_write_json
from gradflow.fitting import UserCell

NAME = "training_study"

#: Bump when what a stored run means changes (its evaluation, its metric): older stored runs are then ignored.
RUN_VERSION = 2

#: Keys of the synthetic validation, test and memory-probe sets (shared by every run, independent of the
#: training batches, which come from ``key(seed)``).
VAL_KEY = 10_001
TEST_KEY = 10_002
PROBE_KEY = 10_003

CONFIG = {
    "cells": ["tanh", "linear", "bn_notanh", "ln_notanh", "gru", "mingru", "tanh_floss"],
    # [task, lengths]; tasks in "doubling" stop, per cell, after the first length it has not learned
    "tasks": [["adding", [10, 40]], ["adding_product", [10, 20, 40]], ["recall", [10, 20, 40]]],
    "doubling": ["adding_product", "recall"],
    # cells run on these tasks only (default: every task)
    "cell_tasks": {"tanh_floss": ["adding"]},
    "learning_rates": [0.001, 0.003, 0.01],
    "extra_rates": {},
    # the grid grows by factors of 3 while the chosen rate sits at an edge, within these limits
    "rate_limits": [0.0001, 1.0],
    "seeds": [0, 1, 2, 3, 4],
    "hidden": 16,
    "batch": 32,
    "steps": 400,
    "clip_norm": 1.0,
    "val_fraction": 0.2,
    "val_size": 256,
    "test_size": 256,
    "probe_size": 512,
    "recal_batches": 10,
    # one longer run (factor × steps, seed of the first) of each failing (cell, task, T) on these tasks
    "budget": {"factor": 5, "tasks": ["adding"]},
    # one JSON file per run, committed and shared by the default and the full design (a run is the same run
    # in both): a fresh clone re-reads the runs instead of retraining them; delete the folder to retrain all
    "store": "figures/store/training_study",
}
QUICK = {
    "cells": ["tanh", "linear", "bn_notanh"],
    "tasks": [["adding", [4]], ["recall", [4, 8]]],
    "learning_rates": [0.003, 0.03],
    "rate_limits": [0.003, 0.03],
    "seeds": [0, 1, 2],
    "hidden": 8,
    "batch": 16,
    "steps": 20,
    "val_size": 64,
    "test_size": 64,
    "probe_size": 128,
    "recal_batches": 2,
    "budget": {"factor": 2, "tasks": ["adding"]},
    "store": None,
}
FULL = {
    # every cell of the study at the default sizes, longer controls and 10x budget runs on every task: the
    # evidence for each cause (the default design is its subset for the question's cells)
    "cells": [
        "tanh",
        "linear",
        "bn_notanh",
        "bn_tanh",
        "ln_notanh",
        "gru",
        "lstm",
        "irnn_small_in",
        "lru",
        "lru_block",
        "bn_notanh_crit",
        "ln_notanh_crit",
        "tanh_floss",
        "bn_notanh_floss",
        "mingru",
        "minlstm",
        "rglru",
        "s6",
        "lru_stack",
    ],
    # controls double to T = 80 (160 for 19 cells does not fit the ~3 h budget on 2 cores; "solved at 80"
    # reads "at least 80")
    "tasks": [
        ["adding", [10, 20, 40]],
        ["adding_product", [10, 20, 40, 80]],
        ["recall", [10, 20, 40, 80]],
    ],
    "budget": {"factor": 10, "tasks": ["adding", "adding_product", "recall"]},
    "cell_tasks": {},
}

#: Flossing as in the study's flossing variants: pre-flossing, then flossing every 10th step during training.
FLOSSING = {"floss": True, "floss_k": 1, "floss_pre_steps": 100, "floss_weight": 1.0, "floss_every": 10}

#: Study variants that are not plain presets: the preset they start from, cell options, training options.
#: ``"critical": True`` sets the input path's γ to ``theory.critical_input_gamma``.
VARIANTS = {
    # the IRNN with small input weights (W_xh × 0.01), as Le et al. 2015 initialize it
    "irnn_small_in": {"base": "irnn", "input_scale": 0.01},
    "lru_ring": {"base": "lru", "cell": {"r_min": 0.9, "r_max": 0.999}},
    "bn_notanh_crit": {"base": "bn_notanh", "critical": True},
    "ln_notanh_crit": {"base": "ln_notanh", "critical": True},
    # S6 with 4 states per channel (Mamba uses 16; at the study's hidden sizes that leaves 1-2 channels)
    "s6": {"base": "s6", "cell": {"state_size": 4}},
    "tanh_floss": {"base": "tanh", "train": FLOSSING},
    "bn_notanh_floss": {"base": "bn_notanh", "train": FLOSSING},
}

#: The key, in a variant's extra options, of the input-weight factor at initialization (fused engine only).
INPUT_SCALE = "input_scale"

#: A (cell, task, T) is solved when at least this share of its seeds solve it at the chosen rate.
MAJORITY = 0.5

#: A (cell, task, T) is learned when its median test loss at the chosen rate is below this share of the
#: baseline (more than half of the target's variance explained); the controls' lengths double while it is.
LEARNED = 0.5

#: The findings' first line: how to read the losses in them.
LEGEND = (
    "Losses are test loss as % of the memoryless baseline (the loss of predicting the target's mean; "
    f"100 % = nothing learned, < {100 * LEARNED:.0f} % = learned)."
)

#: A failure is the budget's when ``budget["factor"]`` × the steps bring the loss to at most this share of it.
BUDGET_GAIN = 0.5

#: Cells with gates (left out of the rate-at-initialization correlation: a gate sets its own memory).
GATED = ("gru", "lstm", "bn_lstm", "ln_lstm", "mingru", "minlstm", "rglru", "s6")

#: The cells compared against tanh in the findings (those that replace tanh's role, or add to it).
REPLACEMENTS = (
    "linear",
    "bn_notanh",
    "ln_notanh",
    "bn_notanh_crit",
    "ln_notanh_crit",
    "bn_tanh",
    "tanh_floss",
    "bn_notanh_floss",
)


class Unavailable(Exception):
    """A study variant whose building blocks this gradflow lacks (the message says which)."""


# ----------------------------------------------------------------------------------------------- store


class RunStore:
    """One JSON file per run, named by a hash of the run's configuration; ``path=None`` keeps them in memory.

    Writes go through ``gradflow.checks.atomic_write_json``: an interrupted study leaves only complete runs.
    A file whose stored configuration is not the run's (another run's file, a corrupt one) is not trusted.
    """

    def __init__(self, path):
        self.path = None if path is None else Path(path)
        self.memory: dict[str, dict] = {}

    @staticmethod
    def key(config: dict) -> str:
        """The run's key: a hash of its configuration (JSON, sorted keys)."""
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:24]

    def get(self, config: dict) -> dict | None:
        """The stored record of a run, or None."""
        k = self.key(config)
        if self.path is None:
            return self.memory.get(k)
        try:
            stored = json.loads((self.path / f"{k}.json").read_text())
        except (OSError, ValueError):
            return None
        return stored["record"] if stored.get("config") == config else None

    def put(self, config: dict, record: dict) -> None:
        """Store a run's record (atomically)."""
        k = self.key(config)
        if self.path is None:
            self.memory[k] = record
            return
        atomic_write_json(self.path / f"{k}.json", {"config": config, "record": record})

    def get_or_run(self, config: dict, fn) -> tuple[dict, bool]:
        """``(record, computed)``: the stored record, or ``fn()`` stored then returned."""
        rec = self.get(config)
        if rec is not None:
            return rec, False
        rec = fn()
        self.put(config, rec)
        return rec, True


# ----------------------------------------------------------------------------------------------- cells


def study_task(name: str, length, val_fraction: float) -> tasks.Task:
    """The task with its validation split (one object per configuration, kept in gradflow's compile cache,
    so compiled steps keyed on the task are reused)."""
    return cache.cached(
        ("study_task", name, length, float(val_fraction)),
        lambda: tasks.with_validation(tasks.make_task(name, length), val_fraction),
    )


def build(name: str, c: dict, task: tasks.Task, user: dict | None = None) -> tuple[GradflowCell, dict]:
    """The cell and extra training options of a preset, a variant or a user's cell (``user[name]``: a gradflow
    cell or a flax.linen cell, ``analyses.common.as_cell``; no extra options).

    Raises:
        Unavailable: the variant needs a preset or option this gradflow lacks.
    """
    if user and name in user:
        return common.as_cell(user[name], c["hidden"], task.input_size), {}
    v = VARIANTS.get(name, {"base": name})
    base = v["base"]
    if base not in gradflow.CELLS:
        raise Unavailable(f"{name}: cell {base!r} is not in this gradflow")
    # presets keep per-step BN statistics up to the task's length; registry families have no t_max
    opts = {**({"t_max": task.seq_len} if base in gradflow.PRESETS else {}), **v.get("cell", {})}
    if v.get("critical"):
        size = {"batch_size": c["batch"]} if base == "bn_notanh" else {"hidden_size": c["hidden"]}
        opts["input_gamma_init"] = float(gradflow.theory.critical_input_gamma(base, **size))
    extra = dict(v.get("train", {}))
    if INPUT_SCALE in v:  # an initialization only the fused engine (trainsweep.train_fn) offers
        extra[INPUT_SCALE] = float(v[INPUT_SCALE])
    return measure.cell_for(base, c["hidden"], task.input_size, **opts), extra


def is_affine(cell, mode: str) -> bool:
    """Whether the cell's final state is an affine function of its inputs in this mode (per example).

    True for a recurrence without a nonlinearity whose normalizations are fixed affine maps: an RNN with
    activation "identity" and no LN (BN only in eval mode, where it uses running statistics), and a single LRU
    (its readout is linear). With a linear readout such a cell cannot go below a task's affine floor.
    ``tests/test_training_study.py`` checks the classification against the states themselves. A user's cell
    (``gradflow.fitting.UserCell``) is tested on its states: :func:`measured_affine`.
    """
    if isinstance(cell, UserCell):
        return measured_affine(cell)
    spec = cell.spec
    norms = {spec.norm_x, spec.norm_h, spec.norm_sum}
    if spec.family == "lru":
        return not spec.lru_block
    return (
        spec.family == "rnn"
        and spec.activation == "identity"
        and "ln" not in norms
        and (mode == "eval" or "bn" not in norms)
    )


def measured_affine(cell, T: int = 6, B: int = 3, tol: float = 1e-5) -> bool:
    """Whether ``h_T(a x1 + (1 − a) x2) = a h_T(x1) + (1 − a) h_T(x2)`` (a = 0.3) holds for random inputs at a
    random initialization, to ``tol`` relative (float32 rounding): exact for an affine cell, violated by any
    nonlinearity the inputs reach."""
    v = gradflow.init_cell(cell, jax.random.key(0))
    k1, k2 = jax.random.split(jax.random.key(1))
    x1, x2 = (2 * jax.random.normal(k, (T, B, cell.input_size), cell.dtype) for k in (k1, k2))
    final = lambda xs: np.asarray(gradflow.unroll_cell(cell, v, cell.initialize_carry(B), xs)[0]["h"][-1])
    line = 0.3 * final(x1) + 0.7 * final(x2)
    gap = np.max(np.abs(final(0.3 * x1 + 0.7 * x2) - line)) / max(np.max(np.abs(line)), 1e-12)
    return bool(gap < tol)


def modes_of(cell) -> tuple[str, ...]:
    """The evaluation modes reported: eval, and train for cells with BN (their batch coupling)."""
    return ("eval", "train") if cell.spec.has_bn else ("eval",)


# ----------------------------------------------------------------------------------------------- one run


def init_rate(grad_flow_row) -> float:
    """Minus the least-squares slope of ln ‖∂L/∂h_t‖ over t (ln per step; NaN with < 2 positive entries).

    Negative: the gradient reaching earlier steps shrinks by that much per step. Entries that are zero
    (underflow) or non-finite are left out of the fit.
    """
    g = np.asarray(grad_flow_row, np.float64)
    t = np.arange(1, g.size + 1, dtype=np.float64)
    ok = np.isfinite(g) & (g > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(-np.polyfit(t[ok], np.log(g[ok]), 1)[0])


def run_config(
    c: dict, name: str, task_name: str, length, lr: float, seed: int, cell, extra: dict, steps: int
) -> dict:
    """What identifies a run in the store."""
    return {
        "version": RUN_VERSION,
        "variant": name,
        "cell": repr(cell.inner) if isinstance(cell, UserCell) else repr(cell.spec),
        "hidden": c["hidden"],
        "task": task_name,
        "length": length,
        "steps": int(steps),
        "batch": c["batch"],
        "learning_rate": float(lr),
        "seed": int(seed),
        "clip_norm": c["clip_norm"],
        "val_fraction": c["val_fraction"],
        "val_size": c["val_size"],
        "test_size": c["test_size"],
        "probe_size": c["probe_size"],
        "recal_batches": c["recal_batches"],
        "train_extra": extra,
    }


def eval_sets(c: dict, task: tasks.Task) -> dict:
    """The validation and test sets of a task (the same for every run)."""
    return {
        "val": task.validation_set(jax.random.key(VAL_KEY), c["val_size"]),
        "test": task.eval_set(jax.random.key(TEST_KEY), c["test_size"]),
    }


def fused_fn(c: dict, cell, task: tasks.Task, input_scale: float | None = None):
    """``trainsweep.train_fn`` for this study's sizes, evaluation sets and probes, jitted, kept in gradflow's
    compile cache per configuration (every rate, seed and step count of a (cell, task) reuses one
    compilation)."""
    from gradflow import trainsweep

    def build_fn():
        probe = {"states": memory_inputs(c, task), "lyapunov": probe_inputs(task)}
        return jax.jit(
            trainsweep.train_fn(
                cell,
                task,
                steps=c["steps"],
                batch_size=c["batch"],
                clip_norm=c["clip_norm"],
                eval_sets=eval_sets(c, task),
                input_scale=input_scale,
                recal_batches=c["recal_batches"] if cell.spec.has_bn else 0,
                train_mode_eval=cell.spec.has_bn,
                probe=probe,
            )
        )

    key = (
        "study_fused",
        cell,
        task,
        c["steps"],
        c["batch"],
        c["clip_norm"],
        c["recal_batches"],
        c["val_size"],
        c["test_size"],
        c["probe_size"],
        input_scale,
    )
    return cache.cached(key, build_fn)


def _fused(c: dict, task, lr: float, seed: int, cell, extra: dict, steps: int) -> dict:
    """One run through the fused engine, measured inside the same compiled call."""
    f = fused_fn(c, cell, task, extra.get(INPUT_SCALE))
    r = f({"learning_rate": np.float32(lr), "seed": np.int32(seed), "steps": np.int32(steps)})
    m = {k: float(v) for k, v in r.items() if np.ndim(v) == 0}
    m["init_rate"] = init_rate(np.asarray(r["init_flow"]))
    m["capacity"] = (
        capacity_of(task, np.asarray(r["probe_states"]), memory_inputs(c, task))
        if not m["diverged"]
        else math.nan
    )
    if m["diverged"]:
        m["lyap_final"] = math.nan
    return m


def _train(c: dict, task, lr: float, seed: int, cell, extra: dict, steps: int) -> tuple[dict, dict, dict]:
    """Train once through ``gradflow.train.train`` (runs with flossing, which the fused engine lacks):
    ``(metrics, params, batch_stats)``."""
    cfg = train.TrainConfig(
        steps=steps,
        batch_size=c["batch"],
        learning_rate=float(lr),
        clip_norm=c["clip_norm"],
        seed=int(seed),
        eval_every=steps,
        eval_size=64,
        record_every=steps,
        **extra,
    )
    r = train.train(cell, task, cfg)
    bs = r.batch_stats
    if cell.spec.has_bn and not r.diverged:
        bs = train.recalibrate_bn(r, c["recal_batches"])
    m = {
        "steps_done": float(r.steps_done),
        "diverged": float(r.diverged),
        "init_rate": init_rate(r.history["grad_flow"][0]) if len(r.history["grad_flow"]) else math.nan,
    }
    for split, (xs, ys) in eval_sets(c, task).items():
        m[f"{split}_loss"], m[f"{split}_acc"] = train.evaluate(cell, task, r.params, bs, xs, ys)
        if cell.spec.has_bn:
            m[f"{split}_loss_train"], m[f"{split}_acc_train"] = _train_mode(
                cell, task, r.params, bs, xs, ys, c["batch"], seed
            )
    return m, r.params, bs


def _train_mode(cell, task, params, bs, xs, ys, batch: int, seed: int) -> tuple[float, float]:
    """Train-mode loss and accuracy over chunks of ``batch`` sequences (as ``trainsweep`` computes them)."""
    out = [
        train.evaluate(
            cell,
            task,
            params,
            bs,
            xs[:, i : i + batch],
            ys[i : i + batch],
            train=True,
            key=jax.random.fold_in(jax.random.key(seed), 7),
        )
        for i in range(0, xs.shape[1], batch)
    ]
    return float(np.mean([o[0] for o in out])), float(np.mean([o[1] for o in out]))


def memory_inputs(c: dict, task: tasks.Task) -> jax.Array:
    """The ``probe_size`` sequences the memory curve is measured on (one array per task, cached)."""
    return cache.cached(
        ("study_memory_probe", task.name, task.seq_len, c["probe_size"]),
        lambda: task.sample(jax.random.key(PROBE_KEY), c["probe_size"])[0],
    )


def _variables(params: dict, bs: dict) -> dict:
    return {"params": params["cell"], **({"batch_stats": bs} if bs else {})}


def top_exponent(cell, task: tasks.Task, variables: dict) -> float:
    """λ₁ of the cell in eval mode along task inputs of max(4T, 100) steps (8 sequences), ln per step; NaN
    where the states overflow."""
    xs = probe_inputs(task)
    L = xs.shape[0]
    try:
        r = measure.lyapunov(
            cell, variables, cell.initialize_carry(8), xs, train=False, k=1, transient=L // 4, segments=4
        )
    except ValueError:
        return math.nan
    return float(r["exponents"][0])


def probe_inputs(task: tasks.Task) -> jax.Array:
    """The 8 input sequences λ₁ is measured on: the task at max(4T, 100) steps (one array per task,
    cached)."""

    def make():
        L = max(4 * task.seq_len, 100)
        longer = task.with_length(L) if task.name in tasks.LENGTH_TASKS else task
        return longer.sample(jax.random.key(PROBE_KEY + 1), 8)[0]

    return cache.cached(("study_probe", task.name, task.seq_len), make)


#: The input channel whose i.i.d. stream the memory curve reads, per task.
PROBE_CHANNEL = {"adding": 0, "adding_product": 0, "recall": 1}


def capacity_of(task: tasks.Task, states, xs) -> float:
    """Memory capacity of final states (N, n) for the probe inputs ``xs`` (T, N, F): Σ_k r²(u_{T−k} from h_T)
    over k < min(T, 64) on the task's i.i.d. channel (``gradflow.capacity.memory_curve``); NaN where the task
    has no such channel or the states are not finite."""
    h = np.asarray(states, np.float64)
    if task.name not in PROBE_CHANNEL or not np.all(np.isfinite(h)):
        return math.nan
    u = np.asarray(xs[:, :, PROBE_CHANNEL[task.name]], np.float64).T
    return memory_curve(h, u, min(task.seq_len, 64)).capacity


def capacity(c: dict, cell, task: tasks.Task, variables: dict) -> float:
    """:func:`capacity_of` the cell's final states (eval mode) on the memory probe."""
    xs = memory_inputs(c, task)
    final = measure.burn(cell, False, variables, cell.initialize_carry(xs.shape[1]), xs, None)
    h = np.concatenate(
        [
            np.asarray(v, np.float64).reshape(xs.shape[1], -1)
            for v in jax.tree.leaves(final)
            if jax.numpy.issubdtype(v.dtype, jax.numpy.floating)
        ],
        axis=1,
    )
    return capacity_of(task, h, xs)


def one_run(c: dict, task: tasks.Task, lr: float, seed: int, cell, extra: dict, steps: int) -> dict:
    """Train once, then measure: eval-mode (and, with BN, train-mode) validation and test metrics, memory
    capacity, λ₁ at initialization and after training."""
    t0 = time.perf_counter()
    if set(extra) <= {INPUT_SCALE}:
        return {**_fused(c, task, lr, seed, cell, extra, steps), "wall_s": time.perf_counter() - t0}
    m, params, bs = _train(c, task, lr, seed, cell, extra, steps)
    wall = time.perf_counter() - t0
    p0, bs0 = train.init_params(cell, task, jax.random.fold_in(jax.random.key(int(seed)), 1))
    m["lyap_init"] = top_exponent(cell, task, _variables(p0, bs0))
    ok = not m["diverged"]
    m["lyap_final"] = top_exponent(cell, task, _variables(params, bs)) if ok else math.nan
    m["capacity"] = capacity(c, cell, task, _variables(params, bs)) if ok else math.nan
    return {**{k: float(v) for k, v in m.items()}, "wall_s": wall}


# ----------------------------------------------------------------------------------------------- the study


def metric_of(task_name: str) -> str:
    """The reported metric: ``"loss"`` (synthetic tasks; lower is better) or ``"accuracy"`` (datasets)."""
    return "loss" if task_name in (*tasks.LENGTH_TASKS, "copy") else "accuracy"


def _score(metric_name: str, value: float) -> float:
    """Lower is better; a non-finite value (a diverged run) is the worst."""
    if not math.isfinite(value):
        return math.inf
    return value if metric_name == "loss" else -value


def _metric(rec: dict, split: str, mode: str, metric_name: str) -> float:
    suffix = "_train" if mode == "train" else ""
    v = rec.get(f"{split}_{'loss' if metric_name == 'loss' else 'acc'}{suffix}", math.nan)
    return math.inf if metric_name == "loss" and rec.get("diverged") else v


def choose_rate(runs: list[dict], mode: str = "eval") -> float:
    """The learning rate with the best median validation metric over seeds in ``mode`` (ties: the smaller
    rate). Only validation numbers are read: the test numbers play no part in the choice."""
    by_rate: dict[float, list[float]] = {}
    for r in runs:
        v = _metric(r, "val", mode, r["metric_name"])
        by_rate.setdefault(float(r["learning_rate"]), []).append(_score(r["metric_name"], v))
    if not by_rate:
        raise ValueError("choose_rate needs at least one run")
    return min(sorted(by_rate), key=lambda lr: float(np.median(by_rate[lr])))


def _next_rate(lr: float, up: bool) -> float:
    """A factor of 3 beyond ``lr``, rounded to one significant digit (0.01 → 0.03, 0.001 → 0.0003)."""
    return float(f"{lr * 3.0 if up else lr / 3.0:.0e}")


def edge_of(runs: list[dict], mode: str, limits) -> str:
    """Where the chosen rate sits in its grid: "interior", "high" / "low" (an edge of the grid), or
    "high (limit)" / "low (limit)" (an edge the grid could not be extended past: the next rate,
    :func:`_next_rate` as :func:`_extend` adds it, lies beyond ``limits``, the configured ``rate_limits``).
    :func:`edge_words` says it in words."""
    rates = sorted({r["learning_rate"] for r in runs})
    lr = choose_rate(runs, mode)
    if len(rates) > 1 and rates[0] < lr < rates[-1]:
        return "interior"
    up = lr == rates[-1] and len(rates) > 1
    nxt = _next_rate(lr, up)
    if up and nxt > limits[1] * 1.001 or not up and nxt < limits[0] * 0.999:
        return f"{'high' if up else 'low'} (limit)"
    return f"{'high' if up else 'low'}"


def edge_words(edge: str) -> str:
    """:func:`edge_of`'s answer in words: "" (interior), "high edge" / "low edge", or "high edge, at the grid
    limit" / "low edge, at the grid limit" (the grid could not be extended further: the best rate may lie
    beyond ``rate_limits``)."""
    if edge == "interior":
        return ""
    side, _, why = edge.partition(" ")
    if side not in ("high", "low") or why not in ("", "(limit)"):
        raise ValueError(f"not an edge of edge_of: {edge!r}")
    return f"{side} edge" + (", at the grid limit" if why else "")


def _extend(runs: list[dict], modes, limits) -> float | None:
    """The rate to add so that every mode's chosen rate becomes interior, or None (interior, or the next rate
    would pass a limit, or every seed diverged at the highest rate)."""
    rates = sorted({r["learning_rate"] for r in runs})
    for mode in modes:
        lr = choose_rate(runs, mode)
        top = [r for r in runs if r["learning_rate"] == lr]
        if (
            lr == rates[-1]
            and _next_rate(lr, True) <= limits[1] * 1.001
            and not all(r["diverged"] for r in top)
        ):
            return _next_rate(lr, True)
        if lr == rates[0] and _next_rate(lr, False) >= limits[0] * 0.999:
            return _next_rate(lr, False)
    return None


def _learned(task: tasks.Task, runs: list[dict], mode: str) -> bool:
    """The median test loss at the chosen rate is below :data:`LEARNED` of the baseline."""
    lr = choose_rate(runs, mode)
    at = [_metric(r, "test", mode, "loss") for r in runs if r["learning_rate"] == lr]
    return float(np.median(at)) < LEARNED * task.baseline


def _solved(task: tasks.Task, runs: list[dict], mode: str) -> bool:
    """The majority of seeds at the chosen rate solve the task (test loss below its criterion)."""
    lr = choose_rate(runs, mode)
    at = [r for r in runs if r["learning_rate"] == lr]
    return sum(bool(task.solved(_metric(r, "test", mode, "loss"))) for r in at) >= MAJORITY * len(at)


class _Study:
    """One invocation of :func:`run`: the store, the progress, the rows gathered so far."""

    def __init__(self, c: dict, progress, user: dict | None = None):
        self.c, self.progress, self.user = c, progress, dict(user or {})
        self.store = RunStore(None if c["store"] is None else ROOT / c["store"])
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.t0, self.computed, self.done = time.perf_counter(), 0, 0

    def runs(self, name, task_name, length, task, cell, extra, rates, steps, seeds) -> list[dict]:
        out = []
        for lr in rates:
            for seed in seeds:
                rc = run_config(self.c, name, task_name, length, lr, seed, cell, extra, steps)
                rec, new = self.store.get_or_run(
                    rc, lambda lr=lr, seed=seed: one_run(self.c, task, lr, seed, cell, extra, steps)
                )
                self.computed += new
                self.done += 1
                row = {
                    "cell": name,
                    "task": task_name,
                    "length": int(length),
                    "seq_len": task.seq_len,
                    "learning_rate": float(lr),
                    "seed": int(seed),
                    "baseline": task.baseline,
                    "affine_floor": task.affine_floor,
                    "run_steps": int(steps),
                    "budget": False,
                    "metric_name": metric_of(task_name),
                    "has_bn": bool(cell.spec.has_bn),
                    "affine_eval": is_affine(cell, "eval"),
                    "affine_train": is_affine(cell, "train"),
                    **rec,
                }
                out.append(row)
                if new:
                    say(self.progress, _progress_line(row, self.computed, time.perf_counter() - self.t0))
        return out

    def group(self, name, task_name, length) -> list[dict] | None:
        """Every seed of one (cell, task, T), the rate grid extended until the chosen rate is interior."""
        c = self.c
        task = study_task(task_name, length, c["val_fraction"])
        try:
            cell, extra = build(name, c, task, self.user)
        except Unavailable as e:
            self.notes.append(f"skipped {e}")
            return None
        rates = sorted({float(x) for x in [*c["learning_rates"], *c.get("extra_rates", {}).get(name, [])]})
        seeds = [int(s) for s in c["seeds"]]
        runs = self.runs(name, task_name, length, task, cell, extra, rates, c["steps"], seeds)
        while (nxt := _extend(runs, modes_of(cell), c["rate_limits"])) is not None and nxt not in rates:
            rates.append(nxt)
            runs += self.runs(name, task_name, length, task, cell, extra, [nxt], c["steps"], seeds)
        self.rows += runs
        budget = c.get("budget") or {}
        if task_name in budget.get("tasks", []) and not _solved(task, runs, "eval"):
            lr = choose_rate(runs, "eval")
            extra_runs = self.runs(
                name,
                task_name,
                length,
                task,
                cell,
                extra,
                [lr],
                c["steps"] * int(budget["factor"]),
                seeds[:1],
            )
            self.rows += [{**r, "budget": True} for r in extra_runs]
        return runs

    def cell_task(self, name, task_name, lengths) -> None:
        for length in lengths:
            runs = self.group(name, task_name, length)
            if runs is None:
                return
            if task_name in self.c["doubling"]:
                task = study_task(task_name, length, self.c["val_fraction"])
                if not any(
                    _learned(task, runs, m) for m in ("eval", "train") if m == "eval" or runs[0]["has_bn"]
                ):
                    return


def run(config: dict, progress=None, cells: dict | None = None) -> dict:
    """Run (or load) every run of the study, for ``config["cells"]`` and the user's ``cells``.

    Args:
        config: :data:`CONFIG` (with :data:`QUICK` or :data:`FULL` merged in).
        progress: the runner's progress (or a callable such as ``print``, or None).
        cells: ``{label: cell}``, cells of your own studied like ours (a gradflow cell, or a flax.linen cell
            such as ``nn.GRUCell(features=16)``, which keeps its own state size), after ``config["cells"]``.
            Example (REPL)::

                import flax.linen as nn
                from analyses import training_study as ts
                data = ts.run({**ts.CONFIG, **ts.QUICK, "cells": ["tanh"]}, cells={"my gru": nn.GRUCell(8)})
                print(ts.write_extra(data)["training_study_table.md"])

    Returns:
        dict: per run (R,) the columns of :data:`RUN_COLUMNS` (``cell`` and ``task`` as lists of str, masked
        floats with ``<key>_valid``), and ``cells``, ``tasks``, ``seeds``, ``hidden``, ``batch``, ``steps``,
        ``notes`` (why variants were skipped), ``total_wall_s``.
    """
    clash = set(cells or {}) & {*config["cells"], *VARIANTS, *gradflow.CELLS}
    if clash:
        raise ValueError(f"cells: the labels {sorted(clash)} name our cells; choose other labels")
    st = _Study(config, progress, cells)
    only = config.get("cell_tasks", {})
    for task_name, lengths in config["tasks"]:
        for name in [*config["cells"], *(cells or {})]:
            if task_name in only.get(name, [task_name]):
                st.cell_task(name, task_name, [int(x) for x in lengths])
                relieve_memory_maps()  # a full study compiles ~1000 programs: more than the kernel maps
    say(progress, f"{st.done} runs ({st.computed} computed) in {time.perf_counter() - st.t0:.0f}s")
    return _columns(config, st.rows, sorted(set(st.notes)))


def _progress_line(row: dict, computed: int, elapsed: float) -> str:
    m = row["test_loss"] / row["baseline"]
    return (
        f"{row['cell']} {label(row['task'], row['length'])} lr {row['learning_rate']:g} seed {row['seed']}"
        f" ({row['run_steps']} steps): test loss/baseline {m:.3g}{' (diverged)' if row['diverged'] else ''}, "
        f"{row['wall_s']:.1f}s "
        f"[{computed} computed, {elapsed / 60:.1f} min]"
    )


def label(task_name: str, length) -> str:
    """``"adding T=50"``, ``"mnist1d"``."""
    return task_name if length is None or int(length) < 0 else f"{task_name} T={int(length)}"


#: Per-run numeric columns; those in :data:`MASKED` can be missing (NaN), saved as 0 with ``<key>_valid``.
RUN_COLUMNS = (
    "length",
    "seq_len",
    "learning_rate",
    "seed",
    "baseline",
    "affine_floor",
    "run_steps",
    "budget",
    "has_bn",
    "affine_eval",
    "affine_train",
    "diverged",
    "steps_done",
    "wall_s",
    "init_rate",
    "lyap_init",
    "lyap_final",
    "capacity",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "val_loss_train",
    "val_acc_train",
    "test_loss_train",
    "test_acc_train",
)
MASKED = (
    "affine_floor",
    "init_rate",
    "lyap_init",
    "lyap_final",
    "capacity",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "val_loss_train",
    "val_acc_train",
    "test_loss_train",
    "test_acc_train",
)


def _columns(c: dict, rows: list[dict], notes: list[str]) -> dict:
    def value(r, k):
        v = r.get(k)
        return math.nan if v is None else float(v)

    out = {k: np.asarray([value(r, k) for r in rows], np.float64) for k in RUN_COLUMNS}
    for k in MASKED:  # saved data hold finite numbers only: a missing value is 0 with ``<key>_valid`` False
        ok = np.isfinite(out[k])
        out[k], out[k + "_valid"] = np.where(ok, out[k], 0.0), ok
    out.update(
        {
            "cell": [r["cell"] for r in rows],
            "task": [r["task"] for r in rows],
            "cells": list(dict.fromkeys(r["cell"] for r in rows)) or ["(none)"],
            "tasks": [t for t, _ in c["tasks"]],
            "seeds": [int(s) for s in c["seeds"]],
            "hidden": int(c["hidden"]),
            "batch": int(c["batch"]),
            "steps": int(c["steps"]),
            "rate_limits": [float(x) for x in c["rate_limits"]],
            "doubling": list(c["doubling"]),
            "notes": "\n".join(notes),
            "total_wall_s": float(sum(r["wall_s"] for r in rows)),
        }
    )
    return out


def records(data: dict) -> list[dict]:
    """The runs of ``data`` as a list of dicts (NaN where a masked value is missing)."""
    out = []
    for i, name in enumerate(data["cell"]):
        r = {
            k: (float(data[k][i]) if k not in MASKED or data[k + "_valid"][i] else math.nan)
            for k in RUN_COLUMNS
        }
        for k in ("length", "seq_len", "seed", "run_steps", "steps_done"):
            r[k] = int(r[k])
        for k in ("budget", "has_bn", "affine_eval", "affine_train", "diverged"):
            r[k] = bool(r[k])
        out.append({"cell": name, "task": data["task"][i], "metric_name": metric_of(data["task"][i]), **r})
    return out


# ----------------------------------------------------------------------------------------------- summary


def _ratio(r: dict, mode: str) -> float:
    """The test metric: loss / baseline (inf for a diverged run), or accuracy."""
    v = _metric(r, "test", mode, r["metric_name"])
    return v / r["baseline"] if r["metric_name"] == "loss" else v


def _median(values) -> float:
    v = [x for x in values if math.isfinite(x)]
    return float(np.median(v)) if v else math.nan


def summarize(data: dict) -> list[dict]:
    """Per (cell, mode, task, T), in study order: the chosen rate and where it sits in its grid, the test
    metric (loss / baseline) over seeds at that rate (``values``, median, min, max), seeds solved, diverged
    runs, whether the cell is affine in this mode and the task's affine floor, the medians of memory capacity,
    rate at initialization and λ₁ (initial, final), and the budget run's test ratio (NaN if none)."""
    recs = records(data)
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        groups.setdefault((r["cell"], r["task"], r["length"], r["budget"]), []).append(r)
    out = []
    for (name, task, length, budget), runs in groups.items():
        if budget:
            continue
        for mode in ("eval", "train") if runs[0]["has_bn"] else ("eval",):
            lr = choose_rate(runs, mode)
            at = [r for r in runs if r["learning_rate"] == lr]
            vals = [_ratio(r, mode) for r in at]
            more = groups.get((name, task, length, True), [])
            t = study_task(task, length, 0.2)
            out.append(
                {
                    "cell": name,
                    "mode": mode,
                    "label": name + (" [train mode]" if mode == "train" else ""),
                    "task": task,
                    "length": length,
                    "col": label(task, length),
                    "learning_rate": lr,
                    "edge": edge_of(runs, mode, data["rate_limits"]),
                    "rates": sorted({r["learning_rate"] for r in runs}),
                    "n": len(at),
                    "values": vals,
                    "median": float(np.median(vals)),
                    "min": float(np.min(vals)),
                    "max": float(np.max(vals)),
                    "solved": sum(bool(t.solved(v * t.baseline)) for v in vals),
                    "diverged": sum(r["diverged"] for r in at),
                    "affine": at[0][f"affine_{mode}"],
                    "floor": at[0]["affine_floor"],
                    "capacity": _median(r["capacity"] for r in at),
                    "init_rate": _median(r["init_rate"] for r in at),
                    "lyap_init": _median(r["lyap_init"] for r in at),
                    "lyap_final": _median(r["lyap_final"] for r in at),
                    "lyap_final_values": [r["lyap_final"] for r in at],
                    "budget": _median(_ratio(r, mode) for r in more) if more else math.nan,
                    "budget_steps": more[0]["run_steps"] if more else 0,
                }
            )
    return out


def solved_majority(s: dict) -> bool:
    """At least :data:`MAJORITY` of the seeds solve at the chosen rate."""
    return s["solved"] >= MAJORITY * s["n"]


def longest_solved(summ: list[dict], lab: str, task: str) -> tuple[int | None, int | None]:
    """``(longest T solved, first T failed)`` of one cell label on one task (None where there is none)."""
    mine = sorted((s for s in summ if s["label"] == lab and s["task"] == task), key=lambda s: s["length"])
    ok = [s["length"] for s in mine if solved_majority(s)]
    bad = [s["length"] for s in mine if not solved_majority(s)]
    return (max(ok) if ok else None), (min(bad) if bad else None)


def compare(a: dict, b: dict) -> dict:
    """``a`` against ``b`` (two summaries of one task and T): Mann–Whitney on the seeds' test ratios, the
    bootstrap 95 % interval of the difference of medians, and a verdict at p < 0.05 ("better", "worse",
    "no difference detected")."""
    mw = stats.mann_whitney(a["values"], b["values"])
    diff, lo, hi = stats.median_difference(a["values"], b["values"])
    verdict = "no difference detected"
    if mw.p_value < 0.05:
        verdict = "better" if diff < 0 else "worse"
    return {"verdict": verdict, "p": mw.p_value, "diff": diff, "lo": lo, "hi": hi}


def control_curve(summ: list[dict], lab: str, task: str) -> str:
    """One cell label's medians on one task over its lengths, e.g. ``"recall 0.5 %, 12 % at T = 10, 20"``."""
    mine = sorted((s for s in summ if s["label"] == lab and s["task"] == task), key=lambda s: s["length"])
    if not mine:
        return f"{task} not run"
    vals = ", ".join(_pct(s["median"]) for s in mine)
    return f"{task} {vals} at T = {', '.join(str(s['length']) for s in mine)}"


def cause(summ: list[dict], lab: str, controls) -> dict:
    """Why one cell (label) fails or learns adding, from the controls: ``kind`` and ``text`` with the numbers.

    "Fails" and "solves" use the tasks' criterion (a majority of seeds below 1 % of the baseline). Kinds, in
    the order they are tested:

    - "learns": every adding length solved;
    - "expressivity": affine in its inputs (at the floor even at the shortest T);
    - "budget": the longer run at the first failed length has at most :data:`BUDGET_GAIN` of the loss
      (still learning when the budget ended);
    - "training": it solves not even the representable controls at their shortest length;
    - "length": it solves the controls at short T and fails them below the first adding length it fails;
    - "product": it solves the controls at that length but not adding (forming the product, not carrying
      the gradient over T steps, is what it fails at);
    - "untested": no adding runs.

    The text quotes the controls' medians at every length run.
    """
    adding = sorted(
        (s for s in summ if s["label"] == lab and s["task"] == "adding"), key=lambda s: s["length"]
    )
    if not adding:
        return {"kind": "untested", "text": "no adding runs"}
    failed = [s for s in adding if not solved_majority(s)]
    ctrl = "; ".join(control_curve(summ, lab, t) for t in controls)
    if not failed:
        return {"kind": "learns", "text": f"solves adding to T = {adding[-1]['length']}; {ctrl}"}
    s0, f0 = adding[0], failed[0]
    if s0["affine"]:
        return {
            "kind": "expressivity",
            "text": (
                f"affine in its inputs: adding T = {s0['length']} at {_pct(s0['median'])} of the "
                f"baseline against the affine floor {_pct(s0['floor'])}; the controls: {ctrl}"
            ),
        }
    head = f"fails adding from T = {f0['length']} ({_pct(f0['median'])})"
    if not any(s["label"] == lab and s["task"] in controls for s in summ):
        return {"kind": "not separated", "text": f"{head}; the controls were not run for it"}
    if math.isfinite(f0["budget"]):
        head += f", with {f0['budget_steps']} steps {_pct(f0['budget'])}"
        if f0["budget"] <= BUDGET_GAIN * f0["median"]:
            text = f"{head}: still learning when the budget ended; the controls: {ctrl}"
            return {"kind": "budget", "text": text}
    longest = {t: longest_solved(summ, lab, t) for t in controls}
    short = [t for t, (lo, _hi) in longest.items() if lo is None or lo < f0["length"]]
    if short and all(longest[t][0] is None for t in short):
        kind, why = "training", "it solves not even the representable controls at their shortest length"
    elif short:
        kind, why = "length", "the representable controls fail from a shorter T"
    else:
        kind, why = "product", "it solves the representable controls at that length: the product fails"
    return {"kind": kind, "text": f"{head}; {why}: {ctrl}"}


def _pct(ratio: float) -> str:
    if not math.isfinite(ratio):
        return "∞" if ratio > 0 else "—"
    return f"{100 * ratio:.2g} %" if ratio < 0.1 else f"{100 * ratio:.0f} %"


def init_rate_correlation(data: dict) -> dict | None:
    """Spearman's ρ between the rate at initialization and the test ratio over the adding runs of cells
    without gates that can represent adding (not affine in eval mode: an affine cell's loss is set by its
    floor, not its gradients), every rate and seed, with its bootstrap interval; None with < 5 runs."""
    recs = [
        r
        for r in records(data)
        if r["task"] == "adding"
        and not r["budget"]
        and math.isfinite(r["init_rate"])
        and not r["affine_eval"]
        and r["cell"] not in GATED
    ]
    if len(recs) < 5:
        return None
    x = [r["init_rate"] for r in recs]
    y = [min(_ratio(r, "eval"), 1e6) for r in recs]
    rho, lo, hi = stats.spearman(x, y)
    return {"rho": rho, "lo": lo, "hi": hi, "n": len(recs)}


# ----------------------------------------------------------------------------------------------- outputs


CSV_COLUMNS = (
    "cell",
    "mode",
    "task",
    "seq_len",
    "learning_rate",
    "seed",
    "steps",
    "budget_run",
    "split",
    "metric_name",
    "loss",
    "accuracy",
    "baseline",
    "loss_over_baseline",
    "affine_floor",
    "affine_in_inputs",
    "solved",
    "diverged",
    "steps_done",
    "wall_s",
    "init_rate",
    "lyap_init",
    "lyap_final",
    "memory_capacity",
)


def _g(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.6g}"


def csv_text(data: dict) -> str:
    """Every run, one row per split (val, test) and mode (eval; train too for cells with BN)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in records(data):
        t = study_task(r["task"], r["length"], 0.2)
        for mode in ("eval", "train") if r["has_bn"] else ("eval",):
            for split in ("val", "test"):
                suffix = "_train" if mode == "train" else ""
                loss, acc = r[f"{split}_loss{suffix}"], r[f"{split}_acc{suffix}"]
                solved = "" if t.solve_fraction is None else int(bool(t.solved(loss)) and not r["diverged"])
                w.writerow(
                    [
                        r["cell"],
                        mode,
                        r["task"],
                        r["seq_len"],
                        f"{r['learning_rate']:g}",
                        r["seed"],
                        r["run_steps"],
                        int(r["budget"]),
                        split,
                        r["metric_name"],
                        _g(loss),
                        _g(acc),
                        _g(r["baseline"]),
                        _g(loss / r["baseline"]),
                        _g(r["affine_floor"]),
                        int(r[f"affine_{mode}"]),
                        solved,
                        int(r["diverged"]),
                        r["steps_done"],
                        f"{r['wall_s']:.2f}",
                        _g(r["init_rate"]),
                        _g(r["lyap_init"]),
                        _g(r["lyap_final"]),
                        _g(r["capacity"]),
                    ]
                )
    return buf.getvalue()


def cell_text(s: dict) -> str:
    """One table cell: median [min, max] of loss / baseline, seeds solved, the chosen rate (edge marked)."""
    words = edge_words(s["edge"])
    edge = f" ({words})" if words else ""
    div = f", {s['diverged']} div." if s["diverged"] else ""
    return (
        f"{_pct(s['median'])} [{_pct(s['min'])}, {_pct(s['max'])}] {s['solved']}/{s['n']}"
        f"{' ✓' if solved_majority(s) else ''}{div}, lr {s['learning_rate']:g}{edge}"
    )


def table_markdown(data: dict) -> str:
    """The one table: cells (and BN's train mode) × (task, T), plus memory capacity and λ₁ on adding."""
    summ = summarize(data)
    cols = list(dict.fromkeys(s["col"] for s in summ))
    labels = list(dict.fromkeys(s["label"] for s in summ))
    lines = [
        "| cell | " + " | ".join(cols) + " | capacity (adding, longest T) | λ₁ init → trained |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for lab in labels:
        row = []
        for col in cols:
            s = next((s for s in summ if s["label"] == lab and s["col"] == col), None)
            row.append("—" if s is None else cell_text(s))
        adding = sorted(
            (s for s in summ if s["label"] == lab and s["task"] == "adding"), key=lambda s: s["length"]
        )
        last = adding[-1] if adding else None
        cap = "—" if last is None or not math.isfinite(last["capacity"]) else f"{last['capacity']:.2f}"
        lyap = (
            "—"
            if last is None or last["mode"] == "train"
            else f"{last['lyap_init']:+.3f} → {last['lyap_final']:+.3f}"
        )
        lines.append(f"| {lab} | " + " | ".join(row) + f" | {cap} | {lyap} |")
    return "\n".join(lines)


def _comparisons(summ: list[dict]) -> tuple[list[str], list[float]]:
    """The table of :data:`REPLACEMENTS` against tanh (rows: cell and mode; columns: task and T) and every
    comparison's p-value."""
    cols = list(dict.fromkeys(s["col"] for s in summ))
    rows, ps = {}, []
    for s in summ:
        b = next((x for x in summ if x["label"] == "tanh" and x["col"] == s["col"]), None)
        if s["cell"] not in REPLACEMENTS or b is None:
            continue
        k = compare(s, b)
        ps.append(k["p"])
        word = {"better": "**better**", "worse": "**worse**"}.get(k["verdict"], "n.s.")
        rows.setdefault(s["label"], {})[s["col"]] = (
            f"{word}: {_pct(s['median'])} vs {_pct(b['median'])}, Δ {100 * k['diff']:+.0f} "
            f"[{100 * k['lo']:+.0f}, {100 * k['hi']:+.0f}], p {k['p']:.2g}"
        )
    if not rows:
        return [], ps
    used = [c for c in cols if any(c in r for r in rows.values())]
    lines = ["| cell | " + " | ".join(used) + " |", "|---" * (len(used) + 1) + "|"]
    lines += [f"| {lab} | " + " | ".join(r.get(c, "—") for c in used) + " |" for lab, r in rows.items()]
    return lines, ps


def in_short(summ: list[dict], controls) -> list[str]:
    """One line per normalization cell (eval and train mode): its cause on adding with the measurement that
    shows it, and how it fares against tanh on the representable controls (counts of better / worse / no
    difference at p < 0.05, each better or worse named with its p)."""
    out = []
    for s0 in summ:
        if s0["cell"] not in ("bn_notanh", "ln_notanh") or s0["task"] != "adding" or s0["length"] != min(
            x["length"] for x in summ if x["task"] == "adding"
        ):
            continue
        tests = [
            (s["col"], compare(s, b))
            for s in summ
            if s["label"] == s0["label"] and s["task"] in controls
            for b in summ
            if b["label"] == "tanh" and b["col"] == s["col"]
        ]
        counts = []
        for v in ("better", "worse", "no difference detected"):
            named = [f"{col} p {c['p']:.2g}" for col, c in tests if c["verdict"] == v]
            shown = named and v != "no difference detected"
            counts.append(f"{v} {len(named)}" + (f" ({'; '.join(named)})" if shown else ""))
        why = cause(summ, s0["label"], controls)
        out.append(
            f"**{s0['label']}**: {why['kind']} on adding ({why['text'].split('; ')[0]}); against "
            f"tanh on the representable controls ({len(tests)} task × T): {', '.join(counts)}"
        )
    return out


def holm(ps: list[float], alpha: float = 0.05) -> int:
    """How many of the p-values Holm's step-down procedure rejects at family-wise level ``alpha``."""
    for i, p in enumerate(sorted(ps)):
        if p > alpha / (len(ps) - i):
            return i
    return len(ps)


def _flossing(summ: list[dict]) -> list[str]:
    out = []
    for s in summ:
        base = VARIANTS.get(s["cell"], {})
        if not base.get("train", {}).get("floss") or s["mode"] != "eval":
            continue
        b = next(
            (x for x in summ if x["cell"] == base["base"] and x["mode"] == "eval" and x["col"] == s["col"]),
            None,
        )
        fin = [v for v in s["lyap_final_values"] if math.isfinite(v)]
        bfin = [] if b is None else [v for v in b["lyap_final_values"] if math.isfinite(v)]
        if not fin or not bfin:
            continue
        p = stats.mann_whitney(fin, bfin).p_value
        out.append(
            f"{s['cell']} on {s['col']}: λ₁ after training {np.median(fin):+.3f} against "
            f"{np.median(bfin):+.3f} for {base['base']} (median over seeds, Mann–Whitney p = {p:.3g})"
        )
    return out


def findings_markdown(data: dict) -> str:
    """The answer: per cell the cause with the number that shows it, the comparisons with tanh with their
    tests, BN's two modes, flossing, and the rate at initialization with its rank correlation."""
    summ = summarize(data)
    controls = [t for t in data["tasks"] if t != "adding"]
    labels = list(dict.fromkeys(s["label"] for s in summ))
    lines = [LEGEND, ""]
    short = in_short(summ, controls)
    if short:
        lines += ["**In short** (the normalizations that replace tanh; details below):", ""]
        lines += [f"- {x}." for x in short] + [""]
    lines += [
        "**Why each cell fails or learns the adding problem** (cause, and the measurement that shows it):",
        "",
    ]
    lines += [f"- **{lab}** ({(k := cause(summ, lab, controls))['kind']}): {k['text']}." for lab in labels]
    comp, ps = _comparisons(summ)
    if comp:
        n = min((s["n"] for s in summ), default=0)
        floor_p = 2 / math.comb(2 * n, n) if n else math.nan
        lines += [
            "",
            "**Against tanh** (test loss / baseline at each cell's validation-chosen rate, medians over "
            "seeds; Δ: difference of medians in points of the baseline with its 95 % bootstrap interval; "
            "two-sided exact Mann–Whitney p; **better**/**worse** at p < 0.05 uncorrected). "
            f"{len(ps)} comparisons: about {0.05 * len(ps):.0f} would pass p < 0.05 by chance; Holm's "
            f"correction keeps {holm(ps)} of them ({n} vs {n} seeds cannot give p below {floor_p:.2g}).",
            "",
            *comp,
        ]
    fl = _flossing(summ)
    if fl:
        lines += ["", "**Flossing** (the flossed runs' top exponent against their base cell's):", ""]
        lines += [f"- {f}." for f in fl]
    corr = init_rate_correlation(data)
    if corr is not None:
        lines += [
            "",
            (
                f"**The rate at initialization** against the test loss on adding (cells without gates that "
                f"can represent it, every rate and seed, {corr['n']} runs): Spearman ρ = {corr['rho']:+.2f}, "
                f"95 % bootstrap [{corr['lo']:+.2f}, {corr['hi']:+.2f}]."
            ),
        ]
    edges = [s for s in summ if s["edge"] != "interior"]
    if edges:
        lo, hi = data["rate_limits"]
        lines += [
            "",
            f"Chosen learning rates at an edge of their grid ({len(edges)} of {len(summ)}; the best rate may "
            f"lie beyond it; \"at the grid limit\": the grid could not be extended past rate_limits "
            f"[{lo:g}, {hi:g}]): "
            + "; ".join(
                f"{s['label']} {s['col']} lr {s['learning_rate']:g} ({edge_words(s['edge'])})" for s in edges
            )
            + ".",
        ]
    if data["notes"]:
        lines += ["", "Not run: " + "; ".join(data["notes"].splitlines()) + "."]
    return "\n".join(lines)


def write_extra(data: dict) -> dict[str, str]:
    """``training_study.csv`` (every run), ``training_study_table.md`` and ``training_study_findings.md``."""
    head = (
        f"Training study: hidden {data['hidden']}, batch {data['batch']}, {data['steps']} Adam steps "
        f"(clipping at global norm 1), seeds {data['seeds']}; per cell, task and T the learning rate is "
        "chosen on validation data (grid extended by ×3 until interior); cells: test loss as % of the "
        "memoryless baseline, median [min, max] over seeds at that rate, seeds solved (below 1 %), the rate. "
        "Adding: a cell affine in its inputs cannot go below 1 − 2/T (80 % at T = 10); 50 % means one "
        "of the two values carried. Controls (adding_product, recall) are representable by every cell; "
        f"their lengths double until a cell has not learned one (median ≥ {LEARNED:.0%} of the baseline). "
        "A failure is the budget's when the longer run (one seed) halves the loss. "
        f"{len(data['cell'])} runs, "
        f"{data['total_wall_s'] / 60:.0f} min of training.\n\n"
    )
    return {
        "training_study.csv": csv_text(data),
        "training_study_table.md": head + table_markdown(data) + "\n",
        "training_study_findings.md": findings_markdown(data) + "\n",
    }


# ----------------------------------------------------------------------------------------------- figures


def _plot_outcomes(data: dict):
    summ = summarize(data)
    cols = list(dict.fromkeys(s["col"] for s in summ))
    labels = list(dict.fromkeys(s["label"] for s in summ))
    nr, nc = style.grid_shape(len(cols), 3)
    fig, axes = style.figure(nr, nc, squeeze=False, width=max(3.3 * nc, 6.5))
    for a, col in enumerate(cols):
        ax = axes.flat[a]
        for i, lab in enumerate(labels):
            s = next((s for s in summ if s["label"] == lab and s["col"] == col), None)
            if s is None:
                continue
            v = np.clip(np.asarray(s["values"], float), 1e-4, 1e2)
            ax.plot(np.full(v.size, i), v, "o", ms=3, alpha=0.6, color=style.color(s["cell"], i))
            ax.plot([i - 0.3, i + 0.3], [np.median(v)] * 2, "-", lw=2, color=style.color(s["cell"], i))
        floor = next((s["floor"] for s in summ if s["col"] == col), math.nan)
        if math.isfinite(floor) and floor > 0:
            ax.axhline(floor, color="C3", lw=0.8, ls="-.")
        ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
        ax.axhline(0.01, color="0.3", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xticks(
            range(len(labels)), [style.label(x) for x in labels], rotation=60, ha="right", fontsize=6
        )
        style.finish(ax, ylabel="test loss / baseline", title=col, legend=False)
    style.hide_unused(axes, len(cols))
    fig.suptitle(
        "Test loss at the validation-chosen rate, every seed (bar: median). Dotted: baseline; "
        "dashed: solved; dash-dot: affine floor",
        fontsize=8,
    )
    return fig


def _plot_lengths(data: dict):
    summ = summarize(data)
    labels = list(dict.fromkeys(s["label"] for s in summ))
    tasks_ = list(dict.fromkeys(s["task"] for s in summ))
    fig, axes = style.figure(1, len(tasks_), squeeze=False, width=max(3.3 * len(tasks_), 6.5))
    for a, task in enumerate(tasks_):
        ax = axes.flat[a]
        for i, lab in enumerate(labels):
            mine = sorted(
                (s for s in summ if s["label"] == lab and s["task"] == task), key=lambda s: s["length"]
            )
            if mine:
                ax.plot(
                    [s["length"] for s in mine],
                    [np.clip(s["median"], 1e-4, 1e2) for s in mine],
                    marker="o",
                    ms=3,
                    color=style.color(mine[0]["cell"], i),
                    label=style.label(lab),
                    ls="--" if mine[0]["mode"] == "train" else "-",
                )
        ax.axhline(0.01, color="0.3", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        style.finish(
            ax, xlabel="T", ylabel="test loss / baseline (median)", title=task, legend=a == len(tasks_) - 1
        )
    fig.suptitle(
        "Loss against length: adding needs the product; the controls are representable by every cell",
        fontsize=8,
    )
    return fig


def plot(data: dict) -> dict:
    """Figures: every seed's outcome at the chosen rate per (task, T); the median against T per task."""
    if not len(data["cell"]):
        return {}
    return {"training_study": _plot_outcomes(data), "training_study_lengths": _plot_lengths(data)}
