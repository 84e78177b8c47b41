"""training: what happens to a cell's gradients while it trains (one seed per run: an illustration).

Which cells learn what, and why, is the training study's question (``analyses/training_study.py``: seeds,
rate grids, controls and tests); this analysis shows the dynamics of single runs.

Each preset is trained (``gradflow.train``: Adam, gradient clipping at a global norm, BN running statistics
updated in training and used in evaluation, hidden dropout in training only) on the adding problem at several
lengths T (and, where configured, copy memory and the sequential-digit datasets). Recorded per run:

- learning curves: eval-mode loss on a fixed evaluation set (synthetic tasks) or the test split (datasets);
- ‖∂L/∂h_t‖ for every t at intervals during training (a heatmap over training step and time);
- the largest Lyapunov exponents of the cell (eval mode, driven by task inputs of 4T steps) at initialization
  and after training;
- for cells with BN or dropout: train-mode (batch statistics, dropout) against eval-mode (running statistics)
  loss, at the trained length and at ``gap_factors`` × longer sequences.

Solved: adding MSE below 1% of the baseline 1/6; copy cross-entropy below 10% of 10 ln 8 / (T + 20);
datasets report test accuracy. One seed per run: no claim about which cell learns rests on these runs.

Example::

    from analyses import training
    data = training.run({**training.CONFIG, **training.QUICK}, progress=print)
    figs = training.plot(data)   # {"training_curves": ..., "training_gradflow": ..., ...}
"""

from __future__ import annotations

import jax
import matplotlib.colors
import numpy as np

import gradflow
from analyses import style
from analyses.runner import memo, say
from gradflow import tasks, train

NAME = "training"
CONFIG = {
    "presets": ["tanh", "bn_notanh", "ln_notanh", "bn_tanh", "lstm"],
    # (task, length) pairs; length is T for adding / copy and null for the datasets
    "runs": [["adding", 10], ["adding", 20], ["adding", 40]],
    "hidden": 32,
    "batch": 64,
    "steps": 600,
    "learning_rate": 0.01,
    "clip_norm": 1.0,
    "seed": 0,
    "eval_every": 50,
    "eval_size": 512,
    "record_every": 25,
    "gap_factors": [1, 2],
    "lyapunov_k": 4,
    "lyapunov_factor": 4,
    "recal_batches": 50,
}
QUICK = {"presets": ["tanh", "bn_notanh"], "runs": [["adding", 5]], "hidden": 8, "batch": 16, "steps": 30,
         "eval_every": 10, "eval_size": 64, "record_every": 10, "lyapunov_k": 2, "gap_factors": [2],
         "recal_batches": 5}
FULL = {
    "runs": [["adding", 50], ["adding", 100], ["adding", 200], ["adding", 400], ["copy", 50], ["copy", 100],
             ["digits", None], ["digits_permuted", None], ["mnist1d", None]],
    "hidden": 64,
    "steps": 2000,
    "eval_every": 100,
    "record_every": 100,
}


#: Legend keywords that put a legend below its panel (the training curves fill the panel).
BELOW = {"bbox_to_anchor": (0.5, -0.22), "ncol": 2, "fontsize": 6.5}

def _label(task: str, length) -> str:
    return task if length is None else f"{task} T={length}"


def _one_run(c: dict, preset: str, task_name: str, length, progress) -> dict:
    task = tasks.make_task(task_name, length)
    cell = gradflow.make_cell(preset, c["hidden"], task.input_size, t_max=task.seq_len)
    cfg = train.TrainConfig(steps=c["steps"], batch_size=c["batch"], learning_rate=c["learning_rate"],
                            clip_norm=c["clip_norm"], seed=c["seed"], eval_every=c["eval_every"],
                            eval_size=c["eval_size"], record_every=c["record_every"])
    r = train.train(cell, task, cfg, progress=progress)
    h = r.history
    loss, acc = r.final_eval
    # Lyapunov exponents, eval mode, at initialization and after training (same input sequence)
    key = jax.random.fold_in(jax.random.key(c["seed"]), 11)
    steps = c["lyapunov_factor"] * task.seq_len
    lyap = {}
    for tag, variables in (("init", {"params": r.initial["params"]["cell"],
                                     "batch_stats": r.initial["batch_stats"]}),
                           ("trained", r.variables)):
        try:
            res = train.lyapunov(cell, variables, task, key=key, k=c["lyapunov_k"], steps=steps)
            lyap[tag] = np.asarray(res.exponents, np.float64)
        except ValueError:  # the trained cell's states left the finite range: no exponents
            lyap[tag] = np.zeros(0)
    # eval mode with BN statistics re-estimated for the final parameters (stale running averages aside)
    loss_recal, acc_recal, has_recal = 0.0, 0.0, 0  # (no BN statistics to recalibrate)
    if cell.spec.has_bn and not r.diverged:
        xs_e, ys_e = task.eval_set(train.eval_key(cfg), cfg.eval_size)
        bs_recal = train.recalibrate_bn(r, c["recal_batches"])
        loss_recal, acc_recal = train.evaluate(cell, task, r.params, bs_recal, xs_e, ys_e)
        has_recal = 1
    # train-mode against eval-mode results (cells with BN or dropout; equal by construction otherwise)
    G = len(c["gap_factors"]) if task.length is not None else 1
    gap_len = np.zeros(G, int)
    gap_tr, gap_ev = np.zeros(0), np.zeros(0)  # (train and eval mode are the same computation)
    if cell.spec.has_bn or cell.spec.dropout > 0:
        lengths = ([int(f * task.length) for f in c["gap_factors"]] if task.length is not None else None)
        g = train.mode_gap(r, lengths, size=c["eval_size"])
        gap_len, gap_tr, gap_ev = g["length"], g["train_loss"], g["eval_loss"]
    elif task.length is not None:
        gap_len = np.asarray([int(f * task.length) for f in c["gap_factors"]])
    else:
        gap_len = np.asarray([task.seq_len])
    return {
        "train_loss": h["loss"], "grad_norm": h["grad_norm"], "eval_step": h["eval_step"],
        "eval_loss": h["eval_loss"], "eval_acc": h["eval_accuracy"], "flow_step": h["flow_step"],
        "grad_flow": h["grad_flow"], "final_loss": loss, "final_acc": acc, "baseline": task.baseline,
        "final_loss_recal": loss_recal, "final_acc_recal": acc_recal, "has_recal": has_recal,
        "seq_len": task.seq_len, "diverged": int(r.diverged), "steps_done": r.steps_done,
        "message": r.message, "elapsed": r.elapsed_s, "lyap_init": lyap["init"],
        "lyap_trained": lyap["trained"], "gap_len": np.asarray(gap_len), "gap_train": np.asarray(gap_tr),
        "gap_eval": np.asarray(gap_ev),
    }


def _pad(rows: list[np.ndarray], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Stack ragged rows into zeros of ``(len(rows), *shape)``; returns (values, filled mask)."""
    out = np.zeros((len(rows), *shape))
    valid = np.zeros((len(rows), *shape), bool)
    for i, a in enumerate(rows):
        a = np.asarray(a, np.float64)
        where = (i, *tuple(slice(0, n) for n in a.shape))
        out[where], valid[where] = a, True
    return out, valid


# Saved arrays hold only measured numbers: entries that do not exist (padding of ragged curves, BN
# recalibration of a cell without BN, ...) are zero in the file and False in ``<key>_valid``. ``_nan_view``
# turns them back into NaN for the table and the plots.
_MASKED = ("train_loss", "grad_norm", "eval_step", "eval_loss", "eval_acc", "flow_step", "grad_flow",
           "lyap_init", "lyap_trained", "gap_len", "gap_train", "gap_eval", "final_loss_recal",
           "final_acc_recal", "loss_ratio_recal", "flow_ratio_init", "flow_ratio_final")


def _nan_view(data: dict) -> dict:
    """A copy of ``data`` with NaN wherever ``<key>_valid`` is False (what the plots and the table read)."""
    out = dict(data)
    for k in _MASKED:
        if k + "_valid" in data:
            out[k] = np.where(np.asarray(data[k + "_valid"], bool), np.asarray(data[k], np.float64), np.nan)
    return out


def run(config: dict, progress=None) -> dict:
    """Train every preset on every (task, length) of the configuration.

    Returns:
        dict with, per run r (long format, R = presets × runs): ``run_preset``, ``run_task``, ``run_label``
        (R,) strings; ``run_length`` (R,) (-1 for datasets), ``seq_len``, ``baseline``, ``final_loss``,
        ``final_acc``, ``loss_ratio`` (final eval loss / baseline), ``solved`` (1 solved, 0 not, -1 no
        criterion), ``diverged``, ``steps_done``, ``elapsed`` (s); curves ``train_loss`` (R, steps),
        ``grad_norm`` (R, steps), ``eval_step`` (R, E), ``eval_loss`` (R, E), ``eval_acc`` (R, E);
        ``flow_step`` (R, F), ``grad_flow`` (R, F, T_max) ‖∂L/∂h_t‖; ``lyap_init``,
        ``lyap_trained`` (R, k); ``gap_len``, ``gap_train``, ``gap_eval`` (R, G) train- vs eval-mode loss;
        ``flow_ratio_init``, ``flow_ratio_final`` (R,) log10 ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ at the first and last
        recording (negative: the gradient reaching the first step has vanished by that many decades);
        ``final_loss_recal``, ``final_acc_recal``, ``loss_ratio_recal`` (R,) eval mode with the BN statistics
        re-estimated for the final parameters (``gradflow.train.recalibrate_bn``; cells with BN only);
        for each of those ragged or optional arrays a boolean ``<key>_valid`` of the same shape marks the
        entries that exist (the others are 0; ``_nan_view`` makes them NaN);
        ``total_elapsed`` (s).
    """
    c = config
    rows, meta = _train_all(c, progress)
    final_loss = np.array([float(r["final_loss"]) for r in rows])
    baseline = np.array([float(r["baseline"]) for r in rows])
    data = {
        "run_preset": meta["preset"], "run_task": meta["task"], "run_label": meta["label"],
        "run_length": np.asarray(meta["length"]),
        "seq_len": np.array([int(r["seq_len"]) for r in rows]),
        "baseline": baseline, "final_loss": final_loss,
        "final_acc": np.array([float(r["final_acc"]) for r in rows]),
        "loss_ratio": final_loss / baseline,
        "solved": _solved(meta, final_loss),
        "diverged": np.array([int(r["diverged"]) for r in rows]),
        "steps_done": np.array([int(r["steps_done"]) for r in rows]),
        "elapsed": np.array([float(r["elapsed"]) for r in rows]),
        "presets": list(c["presets"]),
        "labels": [_label(t, n) for t, n in c["runs"]],
        "steps": int(c["steps"]), "hidden": int(c["hidden"]), "batch": int(c["batch"]),
        "learning_rate": float(c["learning_rate"]), "seed": int(c["seed"]),
        **_ragged_columns(c, rows), **_flow_ratios(rows),
    }
    data["loss_ratio_recal"] = data["final_loss_recal"] / baseline
    data["loss_ratio_recal_valid"] = data["final_loss_recal_valid"]
    data["total_elapsed"] = float(np.sum(data["elapsed"]))
    return data


def _train_all(c: dict, progress) -> tuple[list[dict], dict]:
    """Every (task, length) × preset run (each resumable), with the long-format labels."""
    rows = []
    meta = {"preset": [], "task": [], "label": [], "length": []}
    for task_name, length in c["runs"]:
        for preset in c["presets"]:
            tag = f"{preset} on {_label(task_name, length)}"
            say(progress, f"training {tag}")

            def part(preset=preset, task_name=task_name, length=length, tag=tag):
                prog = (lambda m: progress(f"  {tag}: {m}")) if progress is not None else None
                return _one_run(c, preset, task_name, length, prog)

            r = memo(progress, f"{preset}_{task_name}_{length}", part)
            ratio = r["final_loss"] / r["baseline"]
            say(progress, f"{tag}: eval loss {r['final_loss']:.4g} ({100 * ratio:.2f}% of baseline), "
                          f"acc {r['final_acc']:.3f}, {r['message']}, {r['elapsed']:.1f}s")
            rows.append(r)
            meta["preset"].append(preset)
            meta["task"].append(task_name)
            meta["label"].append(_label(task_name, length))
            meta["length"].append(-1 if length is None else int(length))
    return rows, meta


def _solved(meta: dict, final_loss) -> np.ndarray:
    """1 solved, 0 not, -1 no criterion (datasets), by the task's own ``solved``."""
    solved = []
    for name, length, loss in zip(meta["task"], meta["length"], final_loss, strict=True):
        t = tasks.make_task(name, None if length < 0 else length) if name in ("adding", "copy") else None
        solved.append(-1 if t is None else int(bool(t.solved(loss))))
    return np.asarray(solved)


def _ragged_columns(c: dict, rows: list[dict]) -> dict:
    """The ragged or optional per-run arrays zero-padded, each with its ``<key>_valid`` mask."""
    S, k = c["steps"], c["lyapunov_k"]
    E = max(len(r["eval_step"]) for r in rows)
    F = max(len(r["flow_step"]) for r in rows)
    Tm = max(int(r["seq_len"]) for r in rows)
    G = max(len(r["gap_len"]) for r in rows)
    ragged = {
        "train_loss": ([r["train_loss"] for r in rows], (S,)),
        "grad_norm": ([r["grad_norm"] for r in rows], (S,)),
        "eval_step": ([r["eval_step"] for r in rows], (E,)),
        "eval_loss": ([r["eval_loss"] for r in rows], (E,)),
        "eval_acc": ([r["eval_acc"] for r in rows], (E,)),
        "flow_step": ([r["flow_step"] for r in rows], (F,)),
        "grad_flow": ([np.reshape(r["grad_flow"], (-1, int(r["seq_len"]))) for r in rows], (F, Tm)),
        "lyap_init": ([r["lyap_init"] for r in rows], (k,)),
        "lyap_trained": ([r["lyap_trained"] for r in rows], (k,)),
        "gap_len": ([r["gap_len"] for r in rows], (G,)),
        "gap_train": ([r["gap_train"] for r in rows], (G,)),
        "gap_eval": ([r["gap_eval"] for r in rows], (G,)),
        "final_loss_recal": ([[r["final_loss_recal"]] if int(r["has_recal"]) else [] for r in rows], ()),
        "final_acc_recal": ([[r["final_acc_recal"]] if int(r["has_recal"]) else [] for r in rows], ()),
    }
    out = {}
    for key, (values, shape) in ragged.items():
        if shape == ():  # a scalar per run, or none
            a, v = _pad(values, (1,))
            a, v = a[:, 0], v[:, 0]
        else:
            a, v = _pad(values, shape)
        out[key], out[key + "_valid"] = a, v
    return out


def _flow_ratios(rows: list[dict]) -> dict:
    """Gradient-flow summary: log10 ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ at the first and the last recording."""
    first, last = np.zeros(len(rows)), np.zeros(len(rows))
    has_flow = np.zeros(len(rows), bool)
    for i, r in enumerate(rows):
        g = np.reshape(np.asarray(r["grad_flow"], np.float64), (-1, int(r["seq_len"])))
        if len(g) and np.all(g[[0, -1]][:, [0, -1]] > 0):
            ratio = np.log10(g[:, 0] / g[:, -1])
            first[i], last[i], has_flow[i] = ratio[0], ratio[-1], True
    return {"flow_ratio_init": first, "flow_ratio_final": last, "flow_ratio_init_valid": has_flow,
            "flow_ratio_final_valid": has_flow}


# ----------------------------------------------------------------------------------------------- figures


def _index(data, preset, label):
    for j in range(len(data["run_preset"])):
        if data["run_preset"][j] == preset and data["run_label"][j] == label:
            return j
    return None


def _plot_curves(data):
    labels, presets = list(data["labels"]), list(data["presets"])
    nr, nc = style.grid_shape(len(labels), 3)
    fig, axes = style.figure(nr, nc, squeeze=False)
    for a, lab in enumerate(labels):
        ax = axes.flat[a]
        dataset = False
        for i, p in enumerate(presets):
            j = _index(data, p, lab)
            if j is None:
                continue
            steps = data["eval_step"][j]
            ok = np.isfinite(steps)
            if data["solved"][j] < 0:
                dataset = True
                y = data["eval_acc"][j][ok]
            else:
                y = data["eval_loss"][j][ok] / data["baseline"][j]
            ax.plot(steps[ok], y, color=style.color(p, i), label=style.label(p))
            if data["diverged"][j]:
                ax.plot(steps[ok][-1:], y[-1:], "x", color=style.color(p, i))
        if dataset:
            style.finish(ax, xlabel="training step", ylabel="test accuracy", title=lab,
                          legend="upper center" if a == 0 else False, **BELOW)
        else:
            ax.set_yscale("log")
            thr = 0.01 if lab.startswith("adding") else 0.1
            ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
            ax.axhline(thr, color="0.3", lw=0.8, ls="--")
            style.finish(ax, xlabel="training step", ylabel="eval loss / memoryless baseline", title=lab,
                          legend="upper center" if a == 0 else False, **BELOW)
    style.hide_unused(axes, len(labels))
    fig.suptitle("Learning curves (dotted: memoryless baseline; dashed: solved threshold; ×: diverged)",
                 fontsize=8.5)
    return fig


def _plot_gradflow(data):
    """‖∂L/∂h_t‖ heatmaps (log10) for each preset at the longest synthetic length (and the shortest)."""
    presets = list(data["presets"])
    synthetic = [lab for lab in data["labels"] if not lab.startswith(("digits", "mnist1d"))]
    labels = synthetic or list(data["labels"])
    picks = [labels[-1]] if len(labels) == 1 else [labels[0], labels[-1]]
    fig, axes = style.figure(len(picks), len(presets), squeeze=False, width=min(2.3 * len(presets), 11.0),
                              height=2.2 * len(picks))
    vals = np.log10(np.where(data["grad_flow"] > 0, data["grad_flow"], np.nan))
    finite = vals[np.isfinite(vals)]
    lo, hi = (np.percentile(finite, 2), np.percentile(finite, 98)) if finite.size else (-3, 0)
    norm = matplotlib.colors.Normalize(vmin=lo, vmax=hi)
    im = None
    for r, lab in enumerate(picks):
        for i, p in enumerate(presets):
            ax = axes[r, i]
            j = _index(data, p, lab)
            if j is None:
                ax.set_visible(False)
                continue
            T = int(data["seq_len"][j])
            steps = data["flow_step"][j]
            ok = np.isfinite(steps)
            grid = vals[j][ok][:, :T]
            if grid.size == 0:
                ax.set_visible(False)
                continue
            top = steps[ok][-1] if ok.sum() > 1 else 1
            im = ax.imshow(grid, aspect="auto", origin="lower", cmap="magma", norm=norm,
                           extent=(0.5, T + 0.5, steps[ok][0], top), interpolation="nearest")
            ax.grid(False)
            title = f"{style.label(p)}\n{lab}"
            if data["diverged"][j]:
                title += " (diverged)"
            style.finish(ax, xlabel=style.TIME if r == len(picks) - 1 else None,
                          ylabel="training step" if i == 0 else None, title=title, legend=False)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="log₁₀ ‖∂L/∂h_t‖")
    return fig


def _plot_dynamics(data):
    """Left: largest Lyapunov exponent at init and after training. Right: train- vs eval-mode loss gap."""
    presets, labels = list(data["presets"]), list(data["labels"])
    fig, (ax1, ax2) = style.figure(1, 2, width=10.0, height=3.0)
    x = np.arange(len(labels))
    w = 0.8 / max(len(presets), 1)
    for i, p in enumerate(presets):
        js = [_index(data, p, lab) for lab in labels]
        xi = x + (i - (len(presets) - 1) / 2) * w
        li = np.array([data["lyap_init"][j][0] if j is not None else np.nan for j in js])
        lt = np.array([data["lyap_trained"][j][0] if j is not None else np.nan for j in js])
        ax1.plot(xi, li, "o", mfc="none", color=style.color(p, i))
        ax1.plot(xi, lt, "o", color=style.color(p, i), label=style.label(p))
        G = data["gap_len"].shape[1]
        for g, marker in ((0, "o"), (G - 1, "s")) if G > 1 else ((0, "s"),):
            gt = np.array([data["gap_train"][j][g] if j is not None else np.nan for j in js])
            ge = np.array([data["gap_eval"][j][g] if j is not None else np.nan for j in js])
            if np.any(np.isfinite(ge)):
                ax2.plot(xi, ge / np.where(gt > 0, gt, np.nan), marker, color=style.color(p, i),
                         label=style.label(p) if marker == "s" else None)
    ax1.axhline(0, color="0.4", lw=0.8)
    ax1.set_xticks(x, labels, rotation=15)
    style.finish(ax1, ylabel=style.LYAP, title="λ₁ (eval mode): open at init, filled after training",
                  legend=True)
    ax2.axhline(1, color="0.4", lw=0.8)
    ax2.set_yscale("log")
    ax2.set_xticks(x, labels, rotation=15)
    style.finish(ax2, ylabel="eval-mode loss / train-mode loss",
                  title="BN / dropout cells: ● trained length, ■ longest test length", legend=True)
    return fig


def plot(data: dict) -> dict:
    """Figures: learning curves, gradient-flow heatmaps, the solved table, exponents and mode gaps."""
    data = _nan_view(data)
    return {
        "training_curves": _plot_curves(data),
        "training_gradflow": _plot_gradflow(data),
        "training_dynamics": _plot_dynamics(data),
    }
