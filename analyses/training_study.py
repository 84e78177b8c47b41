"""training_study: presets × tasks × learning rates × seeds; rate chosen on validation data; seed spreads.

Every run is one ``gradflow.train.train`` call (Adam, gradient clipping at a global norm) of one preset on one
task at one learning rate and one seed. After training the model is evaluated in eval mode (cells with BN:
with their statistics re-estimated for the final parameters, ``train.recalibrate_bn``) on

- a **validation** set: for synthetic tasks fresh sequences from a fixed key (``VAL_KEY``), for datasets a
  split of the training data that the training sampler never draws (``gradflow.tasks.with_validation``);
- the **test** set: synthetic tasks fresh sequences from another fixed key (``TEST_KEY``), datasets their held
  out test split.

Per preset and task the learning rate is the one with the best median *validation* metric over seeds
(:func:`choose_rate`); at that rate the study reports the *test* metric's median and [min, max] over seeds
and the fraction of seeds that solve (adding: MSE below 1% of the baseline 1/6; copy: cross-entropy below
10% of its baseline; datasets have no criterion and report test accuracy). The rate of the gradient at
initialization (``init_rate``: minus the least-squares slope of ln ‖∂L/∂h_t‖ over t at step 0, ln per step,
negative when the gradient reaching early steps vanishes) is recorded per run for the findings.

Runs are keyed by their own configuration (cell spec, sizes, task, steps, rate, seed, ``RUN_VERSION``) and
stored one JSON file per run in ``config["store"]`` (:class:`RunStore`), so a study interrupted at any point
resumes with the runs not yet done, and a study whose configuration grows reuses every run it already has.
The runs go one after another (on a CPU, vmapping training runs does not pay: ``benchmarks.bench_train``);
``config["vmap"]`` vmaps each (preset, task)'s rates × seeds through ``gradflow.sweep`` (accelerators).

Variants beyond the presets (:data:`VARIANTS`): ``irnn`` (ReLU, W_hh = I, b = 0; the preset when present,
else the same CellSpec), ``lru`` and ``lru_ring`` (|λ| in [0.9, 0.999]), ``bn_notanh_crit`` and
``ln_notanh_crit`` (the input path's γ at ``gradflow.theory.critical_input_gamma``), ``tanh_floss`` and
``bn_notanh_floss`` (gradient flossing during training, ``TrainConfig.floss_k``). A variant whose building
blocks are not in this gradflow is skipped with a note in the data and the tables.

Files (``write_extra``): ``training_study.csv`` (every run, one row per split: preset, task, seq_len,
learning_rate, seed, split, metric, baseline, solved, steps, wall_s, ...), ``training_study_table.md`` (the
summary table) and ``training_study_findings.md`` (one paragraph per preset and the practical answer).

Example::

    from analyses import training_study as ts
    data = ts.run({**ts.CONFIG, **ts.QUICK}, progress=print)
    print(ts.write_extra(data)["training_study_table.md"])
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import gradflow
from analyses import style
from analyses.runner import ROOT, say
from gradflow import cache, tasks, train

NAME = "training_study"

#: Bump when what a stored run means changes (its evaluation, its metric): older stored runs are then ignored.
RUN_VERSION = 1

#: Keys of the synthetic validation and test sets (shared by every run, independent of the training batches,
#: which come from ``key(seed)``).
VAL_KEY = 10_001
TEST_KEY = 10_002

CONFIG = {
    "presets": ["tanh", "bn_notanh", "ln_notanh", "lstm", "irnn", "irnn_small_in"],
    # (task, length) pairs; length is T for adding / copy and null for the datasets
    "tasks": [["adding", 50]],
    "learning_rates": [0.001, 0.003, 0.01],
    # extra rates for cells that need them (the IRNN and the LRU at small rates)
    "extra_rates": {},
    "seeds": [0, 1, 2],
    "hidden": 32,
    "batch": 64,
    "steps": 400,
    "clip_norm": 1.0,
    "val_fraction": 0.2,
    "val_size": 512,
    "test_size": 512,
    "recal_batches": 20,
    # vmap each (preset, task)'s learning rates × seeds through gradflow.sweep (accelerators; on a CPU running
    # them in turn is faster: benchmarks/bench_train.py); variants with training options run in turn anyway
    "vmap": False,
    # "fused": each run one compiled call (gradflow.trainsweep.train_fn); "train": gradflow.train.train
    "engine": "fused",
    # one JSON file per run (relative to the repository root; null: keep runs in memory only)
    "store": "figures/.cache/training_study",
}
QUICK = {"presets": ["tanh", "irnn"], "tasks": [["adding", 5]], "learning_rates": [0.003, 0.03],
         "seeds": [0, 1], "hidden": 8, "batch": 16, "steps": 20, "val_size": 64, "test_size": 64,
         "recal_batches": 2, "store": None}
FULL = {
    "presets": ["tanh", "bn_notanh", "ln_notanh", "bn_tanh", "lstm", "gru", "irnn", "irnn_small_in", "lru",
                "lru_ring", "lru_block", "bn_notanh_crit", "ln_notanh_crit", "tanh_floss", "bn_notanh_floss"],
    # adding T = 400 is left out: with 15 variants it alone would cost as much as the rest (about 2 h more)
    "tasks": [["adding", 50], ["adding", 100], ["adding", 200], ["digits_permuted", None], ["mnist1d", None]],
    "learning_rates": [0.001, 0.003, 0.01],
    # the IRNN diverges at high rates on long sequences and the LRU is trained at small rates in its paper
    "extra_rates": {"irnn": [0.0003], "irnn_small_in": [0.0003], "lru": [0.0003], "lru_ring": [0.0003],
                    "lru_block": [0.0003]},
    "seeds": [0, 1, 2],
    "hidden": 32,
    "steps": 800,
    # the positive control: the gate-free candidates on adding T = 200 with the budget they need (wider,
    # 12× the steps; docs/positive_control.md)
    "control": {"presets": ["irnn_small_in", "lru_block"], "tasks": [["adding", 200]],
                "learning_rates": [0.001], "extra_rates": {}, "seeds": [0, 1, 2], "hidden": 64,
                "steps": 10000},
}

#: Study variants that are not plain presets: the preset they start from, cell options, training options.
#: ``"critical": True`` sets the input path's γ to ``theory.critical_input_gamma``.
VARIANTS = {
    "irnn": {"base": "irnn", "fallback": {"activation": "relu", "recurrent_init": "identity"}},
    # the IRNN with small input weights (W_xh × 0.01, std ≈ 0.007), as Le et al. 2015 initialize it: with
    # W_hh = I the state integrates the inputs, and the default W_xh makes h_T (the first loss) grow with T
    "irnn_small_in": {"base": "irnn", "fallback": {"activation": "relu", "recurrent_init": "identity"},
                      "input_scale": 0.01},
    "lru_ring": {"base": "lru", "cell": {"r_min": 0.9, "r_max": 0.999}},
    "bn_notanh_crit": {"base": "bn_notanh", "critical": True},
    "ln_notanh_crit": {"base": "ln_notanh", "critical": True},
    "tanh_floss": {"base": "tanh", "train": {"floss_k": 1}},
    "bn_notanh_floss": {"base": "bn_notanh", "train": {"floss_k": 1}},
}

#: Adding lengths' gradient budget in the findings: the rate at init "predicts" a vanishing gradient when
#: the gradient from h_T reaches h_1 below this fraction of its size (e^{rate·(T−1)} < 1e-3).
VANISHED = 1e-3

CSV_COLUMNS = ("preset", "task", "seq_len", "learning_rate", "seed", "split", "metric", "baseline", "solved",
               "steps", "wall_s", "metric_name", "loss", "accuracy", "diverged", "steps_done", "init_rate")


#: Per-run columns that can be missing (a diverged run's losses, an unmeasurable rate): saved as 0 with a
#: boolean ``<key>_valid`` beside them, read back as NaN by :func:`records`.
MASKED = ("val_loss", "val_acc", "test_loss", "test_acc", "init_rate")


#: The key, in a variant's extra options, of the input-weight factor at initialization (fused engine only).
INPUT_SCALE = "input_scale"


class Unavailable(Exception):
    """A study variant whose building blocks this gradflow lacks (the message says which)."""


# ----------------------------------------------------------------------------------------------- store


class RunStore:
    """One JSON file per run, named by a hash of the run's configuration; ``path=None`` keeps them in memory.

    Writes are atomic (a temporary file in the same folder, then ``os.replace``): an interrupted study leaves
    only complete runs.
    """

    def __init__(self, path: str | os.PathLike | None):
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
        self.path.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"config": config, "record": record}, sort_keys=True, indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{k}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, self.path / f"{k}.json")
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def get_or_run(self, config: dict, fn) -> tuple[dict, bool]:
        """``(record, computed)``: the stored record, or ``fn()`` stored then returned."""
        rec = self.get(config)
        if rec is not None:
            return rec, False
        rec = fn()
        self.put(config, rec)
        return rec, True


# ----------------------------------------------------------------------------------------------- one run


def study_task(name: str, length, val_fraction: float) -> tasks.Task:
    """The task with its validation split (one object per configuration, kept in gradflow's compile cache,
    so compiled steps keyed on the task are reused)."""
    return cache.cached(("study_task", name, length, float(val_fraction)),
                        lambda: tasks.with_validation(tasks.make_task(name, length), val_fraction))


def build(name: str, c: dict, task: tasks.Task) -> tuple[gradflow.cells.GradflowCell, dict]:
    """The cell and extra ``TrainConfig`` options of a preset or variant.

    Raises:
        Unavailable: the variant needs a preset, CellSpec option or TrainConfig option this gradflow lacks.
    """
    v = VARIANTS.get(name, {"base": name})
    base, opts = v["base"], {"t_max": task.seq_len, **v.get("cell", {})}
    if base not in gradflow.PRESETS:
        if "fallback" not in v:
            raise Unavailable(f"{name}: preset {base!r} is not in this gradflow (issue #10's presets)")
        base = gradflow.CellSpec(**v["fallback"])
    fields = {f.name for f in dataclasses.fields(gradflow.CellSpec)}
    if v.get("critical"):
        crit = getattr(gradflow.theory, "critical_input_gamma", None)
        if crit is None or "input_gamma_init" not in fields:
            raise Unavailable(f"{name}: needs theory.critical_input_gamma and CellSpec.input_gamma_init")
        size = {"batch_size": c["batch"]} if base == "bn_notanh" else {"hidden_size": c["hidden"]}
        opts["input_gamma_init"] = float(crit(base, **size))
    missing = sorted(set(opts) - fields)
    if missing:
        raise Unavailable(f"{name}: CellSpec lacks {missing}")
    extra = dict(v.get("train", {}))
    tfields = {f.name for f in dataclasses.fields(train.TrainConfig)}
    if set(extra) - tfields:
        raise Unavailable(f"{name}: TrainConfig lacks {sorted(set(extra) - tfields)} (flossing, issue #10)")
    if "input_scale" in v:  # an initialization only the fused engine (trainsweep.train_fn) offers
        extra[INPUT_SCALE] = float(v["input_scale"])
    return gradflow.make_cell(base, c["hidden"], task.input_size, **opts), extra


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


def run_config(c: dict, name: str, task_name: str, length, lr: float, seed: int,
               cell: gradflow.cells.GradflowCell, extra: dict) -> dict:
    """What identifies a run in the store."""
    return {"version": RUN_VERSION, "variant": name, "cell": repr(cell.spec), "hidden": c["hidden"],
            "task": task_name, "length": length, "steps": c["steps"], "batch": c["batch"],
            "learning_rate": float(lr), "seed": int(seed), "clip_norm": c["clip_norm"],
            "val_fraction": c["val_fraction"], "val_size": c["val_size"], "test_size": c["test_size"],
            "recal_batches": c["recal_batches"], "train_extra": extra}


def one_run(c: dict, name: str, task: tasks.Task, lr: float, seed: int, cell, extra: dict,
            progress=None) -> dict:
    """Train once and evaluate on the validation and test sets (eval mode; BN statistics re-estimated).

    ``c["engine"]``: ``"fused"`` runs the whole training loop as one compiled call
    (``gradflow.trainsweep.train_fn``, the same steps as ``train.train``; 0.9–1.6× the speed of
    ``train.train`` in ``benchmarks/bench_train.py`` on the shared 2-core CPU, and the only engine with
    ``input_scale``),
    ``"train"`` calls ``gradflow.train.train``. The two agree step for step to float rounding, but over
    hundreds of steps a trajectory can separate (LSTM, adding T = 50, lr 3e-3, seed 2, 400 steps: 18% of the
    baseline through ``train.train``, 9.1% fused); a stored run records its ``path``. Variants with training
    options (flossing) always go through ``train.train``.
    """
    scale = extra.get(INPUT_SCALE)
    if (c.get("engine", "train") == "fused" and not extra) or (scale is not None and len(extra) == 1):
        t0 = time.perf_counter()
        f = fused_fn(c, cell, task, input_scale=scale)
        r = f({"learning_rate": np.float32(lr), "seed": np.int32(seed)})
        return record_of({k: np.asarray(v) for k, v in r.items()}, time.perf_counter() - t0, "fused")
    cfg = train.TrainConfig(steps=c["steps"], batch_size=c["batch"], learning_rate=float(lr),
                            clip_norm=c["clip_norm"], seed=int(seed), eval_every=c["steps"], eval_size=64,
                            record_every=c["steps"], **extra)
    r = train.train(cell, task, cfg, progress=progress)
    bs = r.batch_stats
    if cell.spec.has_bn and not r.diverged:
        bs = train.recalibrate_bn(r, c["recal_batches"])
    out = {"steps_done": int(r.steps_done), "diverged": bool(r.diverged),
           "init_rate": init_rate(r.history["grad_flow"][0]) if len(r.history["grad_flow"]) else float("nan")}
    for split, (xs, ys) in eval_sets(c, task).items():
        loss, acc = train.evaluate(cell, task, r.params, bs, xs, ys)
        out[f"{split}_loss"], out[f"{split}_acc"] = loss, acc
    out["wall_s"] = r.elapsed_s
    out["path"] = "sequential"
    return out


def fused_fn(c: dict, cell, task: tasks.Task, vmapped: bool = False, input_scale: float | None = None):
    """``trainsweep.train_fn`` for this study's sizes and evaluation sets, jitted (and vmapped), kept in
    gradflow's compile cache per configuration so that every rate and seed of a (preset, task) reuses one
    compilation."""
    from gradflow import trainsweep

    def build():
        f = trainsweep.train_fn(cell, task, steps=c["steps"], batch_size=c["batch"], clip_norm=c["clip_norm"],
                                eval_sets=eval_sets(c, task), input_scale=input_scale,
                                recal_batches=c["recal_batches"] if cell.spec.has_bn else 0)
        return f if vmapped else jax.jit(f)

    key = ("study_fused", cell, task, c["steps"], c["batch"], c["clip_norm"], c["recal_batches"],
           c["val_size"], c["test_size"], vmapped, input_scale)
    return cache.cached(key, build)


def record_of(r: dict, wall: float, path: str) -> dict:
    """A stored record from one row of ``train_fn``'s results."""
    return {"steps_done": int(r["steps_done"]), "diverged": bool(r["diverged"]),
            "init_rate": init_rate(r["init_flow"]), "wall_s": float(wall), "path": path,
            **{k: float(r[k]) for k in ("val_loss", "val_acc", "test_loss", "test_acc")}}


def eval_sets(c: dict, task: tasks.Task) -> dict:
    """The validation and test sets of a task (the same for every run)."""
    return {"val": task.validation_set(jax.random.key(VAL_KEY), c["val_size"]),
            "test": task.eval_set(jax.random.key(TEST_KEY), c["test_size"])}


def run_group_vmapped(c: dict, store: RunStore, name: str, task_name: str, length, rates: list[float],
                      progress=None) -> int:
    """The missing runs of one (variant, task) as one vmapped sweep (``gradflow.sweep.run_sweep`` over
    ``gradflow.trainsweep.train_fn``: the same steps as ``train.train``), stored like the sequential runs.

    Returns:
        the number of runs computed (0 when all were stored, or for variants with training options, which
        ``train_fn`` does not have: those run in turn).
    """
    from gradflow.sweep import Grid, run_sweep

    task = study_task(task_name, length, c["val_fraction"])
    cell, extra = build(name, c, task)
    seeds = [int(s) for s in c["seeds"]]
    configs = {(lr, s): run_config(c, name, task_name, length, lr, s, cell, extra)
               for lr in rates for s in seeds}
    scale = extra.get(INPUT_SCALE)
    if (extra and not (scale is not None and len(extra) == 1)) or all(
            store.get(rc) is not None for rc in configs.values()):
        return 0
    f = fused_fn(c, cell, task, vmapped=True, input_scale=scale)
    t0 = time.perf_counter()
    table = run_sweep(lambda _s: f, Grid(traced={"learning_rate": rates, "seed": seeds}), chunk=len(configs))
    wall = (time.perf_counter() - t0) / len(configs)
    for j in range(len(configs)):
        key = (float(rates[j // len(seeds)]), seeds[j % len(seeds)])
        store.put(configs[key], record_of({k: v[j] for k, v in table.items()}, wall, "vmap"))
    say(progress, f"{name} {label(task_name, length)}: {len(configs)} runs vmapped in "
                  f"{wall * len(configs):.1f}s")
    return len(configs)


def metric_of(task_name: str) -> str:
    """The reported metric: ``"loss"`` (adding MSE, copy cross-entropy; lower is better) or ``"accuracy"``."""
    return "loss" if task_name in ("adding", "copy") else "accuracy"


# ----------------------------------------------------------------------------------------------- the study


def rates_of(c: dict, name: str) -> list[float]:
    """The learning rates of a preset: the common grid and its ``extra_rates``, ascending."""
    return sorted({float(x) for x in [*c["learning_rates"], *c.get("extra_rates", {}).get(name, [])]})


def blocks(c: dict) -> list[tuple[dict, str]]:
    """The study's blocks: ``(configuration, tag)``, the main grid (tag "") and, when configured, the
    ``control`` block (its overrides merged on top; its presets tagged " (N steps)" in the tables)."""
    out = [(c, "")]
    if c.get("control"):
        ctrl = {**c, **c["control"]}
        out.append((ctrl, f" ({ctrl['steps']} steps)"))
    return out


def plan(c: dict) -> list[tuple[dict, str, str, str, object, float, int]]:
    """Every (block configuration, tag, preset, task, length, rate, seed); blocks and tasks outermost."""
    out = []
    for bc, tag in blocks(c):
        for task_name, length in bc["tasks"]:
            for name in bc["presets"]:
                out += [(bc, tag, name, task_name, length, lr, int(s))
                        for lr in rates_of(bc, name) for s in bc["seeds"]]
    return out


def run(config: dict, progress=None) -> dict:
    """Run (or load) every run of the study; returns the runs as columns and the notes on skipped variants.

    Returns:
        dict with per run (R,): ``run_preset``, ``run_task`` (lists of str), ``seq_len``, ``length`` (-1 for
        datasets), ``learning_rate``, ``seed``, ``baseline``, ``val_loss``, ``val_acc``, ``test_loss``,
        ``test_acc``, ``solved`` (1, 0, -1 no criterion; judged on the test loss), ``diverged``,
        ``steps_done``, ``run_steps``, ``wall_s``, ``init_rate``; ``steps`` (of the main grid), ``hidden``,
        ``batch``, ``seeds`` and ``presets`` (those run, control presets tagged); ``notes`` (why variants were
        skipped, one per line); ``total_wall_s``.
    """
    c = config
    store = RunStore(None if c["store"] is None else ROOT / c["store"])
    todo = plan(c)
    if c.get("vmap"):
        for bc, _tag in blocks(c):
            for task_name, length in bc["tasks"]:
                for name in bc["presets"]:
                    try:
                        run_group_vmapped(bc, store, name, task_name, length, rates_of(bc, name), progress)
                    except Unavailable:
                        pass  # noted below
    rows, notes, skipped = [], [], set()
    t0, computed = time.perf_counter(), 0
    for i, (bc, tag, name, task_name, length, lr, seed) in enumerate(todo, 1):
        if name in skipped:
            continue
        task = study_task(task_name, length, bc["val_fraction"])
        try:
            cell, extra = build(name, bc, task)
        except Unavailable as e:
            skipped.add(name)
            notes.append(f"skipped {e}")
            say(progress, f"skipped {e}")
            continue
        rc = run_config(bc, name, task_name, length, lr, seed, cell, extra)
        rec, new = store.get_or_run(rc, lambda bc=bc, cell=cell, extra=extra, task=task, lr=lr, seed=seed,
                                    name=name: one_run(bc, name, task, lr, seed, cell, extra))
        computed += new
        rows.append({"preset": name + tag, "task": task_name, "length": -1 if length is None else int(length),
                     "seq_len": task.seq_len, "learning_rate": lr, "seed": seed, "baseline": task.baseline,
                     "steps": bc["steps"], **rec})
        say(progress, _progress_line(i, len(todo), rows[-1], new, computed, time.perf_counter() - t0))
    return _columns(c, rows, notes)


def _progress_line(i: int, n: int, row: dict, new: bool, computed: int, elapsed: float) -> str:
    m = row["test_loss"] / row["baseline"] if metric_of(row["task"]) == "loss" else row["test_acc"]
    what = "test loss/baseline" if metric_of(row["task"]) == "loss" else "test acc"
    eta = f", ~{elapsed / computed * (n - i) / 60:.1f} min left at this pace" if computed else ""
    return (f"[{i}/{n}] {row['preset']} {label(row['task'], row['length'])} lr {row['learning_rate']:g} "
            f"seed {row['seed']}: {what} {m:.4g}{' (diverged)' if row['diverged'] else ''}, "
            f"{format(row['wall_s'], '.1f') + 's' if new else 'stored'}{eta}")


def label(task_name: str, length) -> str:
    """``"adding T=50"``, ``"mnist1d"``."""
    return task_name if length is None or int(length) < 0 else f"{task_name} T={int(length)}"


def _columns(c: dict, rows: list[dict], notes: list[str]) -> dict:
    def col(k, dtype=float):
        return np.asarray([r[k] for r in rows], dtype)

    solved = []
    for r in rows:
        t = study_task(r["task"], None if r["length"] < 0 else r["length"], c["val_fraction"])
        s = t.solved(r["test_loss"])
        solved.append(-1 if s is None else int(s))
    names = [p + tag for bc, tag in blocks(c) for p in bc["presets"]]
    presets = [p for p in dict.fromkeys(names) if any(r["preset"] == p for r in rows)]
    out = {
        "run_preset": [r["preset"] for r in rows], "run_task": [r["task"] for r in rows],
        "seq_len": col("seq_len", int), "length": col("length", int), "learning_rate": col("learning_rate"),
        "seed": col("seed", int), "baseline": col("baseline"), "val_loss": col("val_loss"),
        "val_acc": col("val_acc"), "test_loss": col("test_loss"), "test_acc": col("test_acc"),
        "solved": np.asarray(solved, int), "diverged": col("diverged", int),
        "steps_done": col("steps_done", int), "run_steps": col("steps", int),
        "wall_s": col("wall_s"), "init_rate": col("init_rate"), "presets": presets or ["(none)"],
        "steps": int(c["steps"]), "hidden": int(c["hidden"]), "batch": int(c["batch"]),
        "seeds": [int(s) for s in c["seeds"]], "notes": "\n".join(notes),
        "total_wall_s": float(sum(r["wall_s"] for r in rows)),
    }
    for k in MASKED:  # saved data hold finite numbers only: a missing value is 0 with ``<key>_valid`` False
        ok = np.isfinite(out[k])
        out[k], out[k + "_valid"] = np.where(ok, out[k], 0.0), ok
    return out


# ----------------------------------------------------------------------------------------------- summary


def records(data: dict) -> list[dict]:
    """The runs of ``data`` as a list of dicts (one per run) with ``val_metric`` and ``test_metric``."""
    out = []
    for i, p in enumerate(data["run_preset"]):
        t = data["run_task"][i]
        m = metric_of(t)
        r = {k: (data[k][i].item() if k not in MASKED or data[k + "_valid"][i] else math.nan)
             for k in ("seq_len", "length", "learning_rate", "seed", "baseline", "val_loss", "val_acc",
                       "test_loss", "test_acc", "solved", "diverged", "steps_done", "wall_s", "init_rate")}
        r["steps"] = int(data["run_steps"][i]) if "run_steps" in data else int(data["steps"])
        key = "loss" if m == "loss" else "acc"
        out.append({"preset": p, "task": t, "metric_name": m, **r,
                    "val_metric": r[f"val_{key}"], "test_metric": r[f"test_{key}"]})
    return out


def _score(metric_name: str, value: float) -> float:
    """Lower is better; a non-finite value (a diverged run) is the worst."""
    if not math.isfinite(value):
        return math.inf
    return value if metric_name == "loss" else -value


def choose_rate(runs: list[dict]) -> float:
    """The learning rate with the best median validation metric over seeds (ties: the smaller rate).

    Only ``val_metric`` is read: the test numbers play no part in the choice.
    """
    by_rate: dict[float, list[float]] = {}
    for r in runs:
        by_rate.setdefault(float(r["learning_rate"]), []).append(_score(r["metric_name"], r["val_metric"]))
    if not by_rate:
        raise ValueError("choose_rate needs at least one run")
    return min(sorted(by_rate), key=lambda lr: float(np.median(by_rate[lr])))


def summarize(data: dict) -> list[dict]:
    """Per (preset, task) in study order: the chosen rate, the test metric's median / min / max over seeds at
    that rate, the number of seeds that solve (``solved`` None for datasets), diverged runs, and the median
    rate at initialization."""
    recs = records(data)
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        groups.setdefault((r["preset"], r["task"], r["length"]), []).append(r)
    out = []
    for (p, t, n), runs in groups.items():
        lr = choose_rate(runs)
        at = [r for r in runs if r["learning_rate"] == lr]
        vals = np.asarray([r["test_metric"] for r in at], np.float64)
        worst = np.inf if at[0]["metric_name"] == "loss" else 0.0
        vals = np.where(np.isfinite(vals), vals, worst)
        solved = [r["solved"] for r in at]
        out.append({
            "preset": p, "task": t, "length": n, "label": label(t, n), "metric_name": at[0]["metric_name"],
            "baseline": at[0]["baseline"], "learning_rate": lr, "n": len(at),
            "median": float(np.median(vals)), "min": float(np.min(vals)), "max": float(np.max(vals)),
            "solved": None if solved[0] < 0 else int(sum(solved)),
            "diverged": int(sum(r["diverged"] for r in at)),
            "init_rate": float(np.nanmedian([r["init_rate"] for r in at]))
            if any(math.isfinite(r["init_rate"]) for r in at) else float("nan"),
            "rates": sorted({r["learning_rate"] for r in runs}),
        })
    return out


def _fmt(s: dict, v: float) -> str:
    if s["metric_name"] == "loss":
        ratio = v / s["baseline"]
        return "∞" if not math.isfinite(ratio) else (f"{100 * ratio:.2g}%" if ratio < 0.1
                                                        else f"{100 * ratio:.0f}%")
    return f"{v:.2f}"


def cell_text(s: dict) -> str:
    """One table cell: median [min, max] (loss as % of the baseline), solved seeds, the chosen rate."""
    solved = "" if s["solved"] is None else f" {s['solved']}/{s['n']}{' ✓' if s['solved'] else ''}"
    div = f" ({s['diverged']} div.)" if s["diverged"] else ""
    spread = f"{_fmt(s, s['median'])} [{_fmt(s, s['min'])}, {_fmt(s, s['max'])}]"
    return f"{spread}{solved}{div}, lr {s['learning_rate']:g}"


def table_markdown(data: dict) -> str:
    """Presets × tasks: the test metric at the validation-chosen rate, median [min, max] over seeds."""
    summ = summarize(data)
    labels = list(dict.fromkeys(s["label"] for s in summ))
    lines = ["| preset | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for p in data["presets"]:
        cells = []
        for lab in labels:
            s = next((s for s in summ if s["preset"] == p and s["label"] == lab), None)
            cells.append("—" if s is None else cell_text(s))
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_text(data: dict) -> str:
    """Every run, one row per split (val, test), columns :data:`CSV_COLUMNS`."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in records(data):
        for split in ("val", "test"):
            loss, acc = r[f"{split}_loss"], r[f"{split}_acc"]
            metric = loss if r["metric_name"] == "loss" else acc
            solved = ("" if r["solved"] < 0
                      else int(bool(tasks.make_task(r["task"], r["length"]).solved(loss))))
            w.writerow([r["preset"], r["task"], r["seq_len"], f"{r['learning_rate']:g}", r["seed"], split,
                        f"{metric:.6g}", f"{r['baseline']:.6g}", solved, r["steps"], f"{r['wall_s']:.2f}",
                        r["metric_name"], f"{loss:.6g}", f"{acc:.6g}", r["diverged"], r["steps_done"],
                        f"{r['init_rate']:.6g}"])
    return buf.getvalue()


def data_from_csv(text: str) -> dict:
    """The run columns back from :func:`csv_text`'s table (what :func:`table_markdown`, :func:`summarize` and
    :func:`findings_markdown` read), so the README tables can be regenerated from the committed CSV alone."""
    rows: dict[tuple, dict] = {}
    for r in csv.DictReader(io.StringIO(text)):
        key = (r["preset"], r["task"], int(r["seq_len"]), float(r["learning_rate"]), int(r["seed"]))
        run = rows.setdefault(key, {"preset": r["preset"], "task": r["task"], "seq_len": int(r["seq_len"]),
                                    "learning_rate": float(r["learning_rate"]), "seed": int(r["seed"]),
                                    "baseline": float(r["baseline"]), "diverged": int(r["diverged"]),
                                    "steps_done": int(r["steps_done"]), "wall_s": float(r["wall_s"]),
                                    "init_rate": float(r["init_rate"]), "steps": int(r["steps"])})
        run[f"{r['split']}_loss"], run[f"{r['split']}_acc"] = float(r["loss"]), float(r["accuracy"])
        if r["split"] == "test":
            run["solved"] = -1 if r["solved"] == "" else int(r["solved"])
    runs = list(rows.values())
    for run in runs:
        run["length"] = run["seq_len"] if run["task"] == "adding" else (
            run["seq_len"] - 2 * tasks.COPY_RECALL if run["task"] == "copy" else -1)
    out = {k: np.asarray([r[k] for r in runs], float)
           for k in (*MASKED, "learning_rate", "baseline", "wall_s")}
    out.update({k: np.asarray([r[k] for r in runs], int)
                for k in ("seq_len", "length", "seed", "solved", "diverged", "steps_done")})
    out["run_steps"] = np.asarray([r["steps"] for r in runs], int)
    for k in MASKED:
        out[k + "_valid"] = np.isfinite(out[k])
    out.update({"run_preset": [r["preset"] for r in runs], "run_task": [r["task"] for r in runs],
                "presets": list(dict.fromkeys(r["preset"] for r in runs)), "notes": "",
                "steps": runs[0]["steps"] if runs else 0})
    return out


# ----------------------------------------------------------------------------------------------- findings


#: How the rate at initialization and the outcome relate, per adding length (see :func:`rate_category`).
CATEGORIES = {
    "vanished-failed": "vanished at init and not learned, as the rate predicts",
    "vanished-learned": "learned although the gradient had vanished at init (against the rate)",
    "alive-learned": "alive at init and learned (consistent)",
    "alive-failed": "alive at init but not learned here (the rate does not explain it)",
}


def reach(s: dict) -> float:
    """e^{rate·(T−1)}: the fraction of ‖∂L/∂h_T‖ that reaches h_1 at the rate at initialization."""
    return math.exp(max(min(s["init_rate"] * (int(s["length"]) - 1), 700.0), -700.0))


def rate_category(s: dict) -> str | None:
    """A key of :data:`CATEGORIES` for one adding summary (vanished: reach below :data:`VANISHED`; learned:
    at least one seed solved at the chosen rate), None without a measured rate. A vanished gradient predicts
    failure; an alive one is necessary, not sufficient, so it predicts nothing on its own."""
    if not math.isfinite(s["init_rate"]) or s["solved"] is None:
        return None
    return f"{'vanished' if reach(s) < VANISHED else 'alive'}-{'learned' if s['solved'] else 'failed'}"


def _verdict(s: dict) -> str:
    cat = rate_category(s)
    if cat is None:
        return f"T={int(s['length'])}: no rate at init measured"
    return (f"T={int(s['length'])}: {s['init_rate']:+.3f} ln/step, so h_1 receives {reach(s):.1g} of "
            f"‖∂L/∂h_T‖; solved {s['solved']}/{s['n']} seeds: {CATEGORIES[cat]}")


def preset_paragraph(preset: str, summ: list[dict]) -> str:
    """One plain paragraph: the rate at initialization on adding against what the preset learned."""
    mine = [s for s in summ if s["preset"] == preset]
    adding = [s for s in mine if s["task"] == "adding"]
    parts = [f"**{preset}.**"]
    if adding:
        parts.append("Adding problem, the rate of ‖∂L/∂h_t‖ at initialization (median over seeds) against "
                     "the outcome at the validation-chosen learning rate: "
                     + "; ".join(_verdict(s) for s in adding) + ".")
        cats = [rate_category(s) for s in adding]
        if "vanished-learned" in cats:
            parts.append("So the rate at initialization did not predict what it learned.")
        elif "alive-failed" in cats:
            lead = ("Where the gradient had vanished it failed, as predicted; w" if "vanished-failed" in cats
                    else "W")
            parts.append(lead + "here it was alive and the cell still did not learn, the limit is elsewhere "
                         "(steps, learning rate, the task itself), which the rate at initialization does not "
                         "see.")
        elif any(cats):
            parts.append("So the rate at initialization predicted what it learned on every adding length.")
    other = [s for s in mine if s["task"] != "adding"]
    if other:
        parts.append("Other tasks (test, median [min, max] over seeds): "
                     + "; ".join(f"{s['label']} {cell_text(s)}" for s in other) + ".")
    return " ".join(parts)


#: The cells that replace (or add to) tanh's role with a normalization, compared against tanh.
REPLACEMENTS = ("bn_notanh", "ln_notanh", "bn_notanh_crit", "ln_notanh_crit", "bn_tanh")


def practical_paragraph(summ: list[dict]) -> str:
    """What the study says to someone about to replace tanh with BN or LN (no tanh), from the seed spreads."""
    def get(p, lab):
        return next((s for s in summ if s["preset"] == p and s["label"] == lab), None)

    labels = list(dict.fromkeys(s["label"] for s in summ))
    lines, verdicts = [], []
    for alt in REPLACEMENTS:
        for lab in labels:
            a, b = get(alt, lab), get("tanh", lab)
            if a is None or b is None:
                continue
            text = _compare(a, b)
            verdicts.append(text.split(" (")[0])
            lines.append(f"{alt} vs tanh on {lab}: {text}")
    if not lines:
        return ("The study did not run tanh beside bn_notanh or ln_notanh: it cannot answer the practical "
                "question.")
    head = ("**Replacing tanh with BN or LN.** Each comparison takes both cells at their own "
            "validation-chosen rate; 'better' needs the whole seed range of one to beat the whole range of "
            "the other.")
    counts = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
    tail = (f" In all, {len(verdicts)} comparisons: "
            + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".")
    return head + " " + "; ".join(lines) + "." + tail


def _compare(a: dict, b: dict) -> str:
    sign = 1.0 if a["metric_name"] == "loss" else -1.0   # lower is better after the sign
    lo_a, hi_a = sorted((sign * a["min"], sign * a["max"]))
    lo_b, hi_b = sorted((sign * b["min"], sign * b["max"]))
    if hi_a < lo_b:
        verdict = "better over every seed"
    elif hi_b < lo_a:
        verdict = "worse over every seed"
    else:
        verdict = "indistinguishable within the seed spread"
    solved = ""
    if a["solved"] is not None:
        solved = f", solved {a['solved']}/{a['n']} vs {b['solved']}/{b['n']}"
    return f"{verdict} ({_fmt(a, a['median'])} vs {_fmt(b, b['median'])}{solved})"


def findings_markdown(data: dict) -> str:
    """The findings text: the practical answer, then one paragraph per preset, all generated from ``data``."""
    summ = summarize(data)
    paras = [practical_paragraph(summ)] + [preset_paragraph(p, summ) for p in data["presets"]]
    if data["notes"]:
        paras.append("Not run: " + "; ".join(data["notes"].splitlines()) + ".")
    return "\n\n".join(paras)


def write_extra(data: dict) -> dict[str, str]:
    """``training_study.csv`` (every run), ``training_study_table.md`` and ``training_study_findings.md``."""
    head = (f"Training study: hidden {data['hidden']}, batch {data['batch']}, {data['steps']} Adam steps "
            f"(clipping at global norm 1), seeds {data['seeds']}, learning rate chosen per preset and task "
            "on a validation set; cells: test metric at that rate, median [min, max] over seeds (adding, "
            "copy: loss as % of the memoryless baseline, ✓ k/n seeds solved; datasets: test accuracy). "
            f"{len(data['run_preset'])} runs, {data['total_wall_s'] / 60:.0f} min of training.\n\n")
    return {"training_study.csv": csv_text(data),
            "training_study_table.md": head + table_markdown(data) + "\n",
            "training_study_findings.md": findings_markdown(data) + "\n"}


# ----------------------------------------------------------------------------------------------- figures


def _plot_outcomes(data: dict):
    summ = summarize(data)
    labels = list(dict.fromkeys(s["label"] for s in summ))
    presets = list(data["presets"])
    nr, nc = style.grid_shape(len(labels), 3)
    fig, axes = style.figure(nr, nc, squeeze=False, width=max(3.3 * nc, 6.5))
    for a, lab in enumerate(labels):
        ax = axes.flat[a]
        loss = False
        for i, p in enumerate(presets):
            s = next((s for s in summ if s["preset"] == p and s["label"] == lab), None)
            if s is None:
                continue
            loss = s["metric_name"] == "loss"
            scale = s["baseline"] if loss else 1.0
            med, lo, hi = (np.clip(s[k] / scale, 1e-6, 1e6) for k in ("median", "min", "max"))
            ax.errorbar([i], [med], yerr=[[med - lo], [hi - med]], fmt="o", color=style.color(p, i),
                        capsize=3)
        ax.set_xticks(range(len(presets)), [style.label(p) for p in presets], rotation=60, ha="right",
                      fontsize=6.5)
        if loss:
            ax.set_yscale("log")
            ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
            ax.axhline(0.01 if lab.startswith("adding") else 0.1, color="0.3", lw=0.8, ls="--")
        style.finish(ax, ylabel="test loss / baseline" if loss else "test accuracy", title=lab, legend=False)
    style.hide_unused(axes, len(labels))
    fig.suptitle("Test metric at the validation-chosen learning rate: median and [min, max] over seeds\n"
                 "(dotted: memoryless baseline; dashed: solved)", fontsize=8)
    return fig


def _plot_rates(data: dict):
    recs = records(data)
    labels = list(dict.fromkeys(label(r["task"], r["length"]) for r in recs))
    presets = list(data["presets"])
    nr, nc = style.grid_shape(len(labels), 3)
    fig, axes = style.figure(nr, nc, squeeze=False, width=max(3.3 * nc, 6.5))
    for a, lab in enumerate(labels):
        ax = axes.flat[a]
        mine = [r for r in recs if label(r["task"], r["length"]) == lab]
        loss = bool(mine) and mine[0]["metric_name"] == "loss"
        for i, p in enumerate(presets):
            rs = [r for r in mine if r["preset"] == p]
            lrs = sorted({r["learning_rate"] for r in rs})
            if not lrs:
                continue
            med = [np.median([(r["val_metric"] / r["baseline"] if loss else r["val_metric"])
                              for r in rs if r["learning_rate"] == lr]) for lr in lrs]
            ax.plot(lrs, np.clip(med, 1e-6, 1e6), "o-", color=style.color(p, i), label=style.label(p), ms=3)
        ax.set_xscale("log")
        if loss:
            ax.set_yscale("log")
        style.finish(ax, xlabel="Adam learning rate",
                     ylabel="val loss / baseline" if loss else "val accuracy", title=lab, legend=a == 0)
    style.hide_unused(axes, len(labels))
    fig.suptitle("Validation metric against the learning rate (median over seeds)", fontsize=8)
    return fig


def plot(data: dict) -> dict:
    """Figures: outcomes at the chosen rate with seed spreads; the validation metric against the rate."""
    if not len(data["run_preset"]):
        return {}
    return {"training_study": _plot_outcomes(data), "training_study_rates": _plot_rates(data)}
