"""dynamics: how a cell's gradient dynamics move while it learns (``TrainConfig.probe_every``).

Each cell is trained on the adding problem (``gradflow.train``: Adam, clipping at a global norm) from several
seeds; after 0, ``probe_every``, ... updates and at the end, :func:`gradflow.train.probe` measures on a fixed
probe batch of task inputs, in eval mode (BN with its running statistics, no dropout; the batch analysed as
one state, from h_0 = 0):

- the state Jacobian's rate: the slope of ln‖∂h_T/∂h_t‖_F against the lag (negative: vanishing);
- λ₁, the top Lyapunov exponent of the same trajectory (``gradflow.lyapunov_spectrum``, k = 1, the first
  T // 4 steps not averaged);
- the parameter sensitivity ‖∂h_T/∂θ‖_F of the cell's parameters and its contributions per lag
  ‖∂h_T/∂h_{t+1} · ∂h_{t+1}/∂θ‖_F (``gradflow.param_sensitivity``);
- the loss gradient's share per lag ‖∂L/∂h_T · C_t‖ (the same, with the cotangent ∂L/∂h_T).

The questions: does the GRU's vanishing state Jacobian come alive as it learns (its rate rising towards 0)?
Does the IRNN's parameter sensitivity explode? Medians over seeds; one task, one length, few steps: an
illustration of the recordings, not a training study (``analyses/training_study.py``).

Example::

    from analyses import dynamics
    data = dynamics.run({**dynamics.CONFIG, **dynamics.QUICK}, progress=print)
    dynamics.plot(data)["dynamics"].savefig("dynamics.png")
"""

from __future__ import annotations

import math

import numpy as np

import gradflow
from analyses import style
from analyses.runner import memo, say
from gradflow import cache, tasks, train

NAME = "dynamics"
CONFIG = {
    "cells": ["tanh", "gru", "bn_notanh", "ln_notanh", "irnn", "lru"],
    "T": 40,
    "hidden": 16,
    "batch": 32,
    "steps": 300,
    "learning_rate": 0.01,
    "clip_norm": 1.0,
    "seeds": [0, 1, 2],
    "probe_every": 25,
    "probe_size": 8,
    "eval_every": 100,
    "eval_size": 256,
}
QUICK = {"cells": ["tanh", "gru"], "T": 8, "hidden": 4, "batch": 8, "steps": 10, "seeds": [0],
         "probe_every": 5, "probe_size": 2, "eval_every": 5, "eval_size": 16}
FULL = {"T": 100, "hidden": 32, "steps": 2000, "seeds": [0, 1, 2, 3, 4], "probe_every": 100,
        "eval_every": 250}

#: The per-probe scalars of a run (history ``probe_<key>``) and the per-lag curves kept at init and the end.
SCALARS = ("rate", "lyap", "log_param_total", "log_grad_total")
CURVES = ("log_param_sens", "log_grad_share")


def schedule(c: dict) -> np.ndarray:
    """The probe steps of an uninterrupted run: 0, probe_every, ..., and the last step."""
    s = list(range(0, c["steps"], c["probe_every"]))
    return np.asarray(s + [c["steps"]], np.int64)


def one_run(c: dict, preset: str, seed: int) -> dict:
    """Train one cell from one seed with probes; the probe records on the full schedule (NaN after a
    divergence) and the final eval loss over the baseline."""
    task = cache.cached(("dynamics_task", c["T"]), lambda: tasks.adding(c["T"]))  # one task: one compile
    cell = gradflow.make_cell(preset, c["hidden"], task.input_size, t_max=task.seq_len)
    cfg = train.TrainConfig(steps=c["steps"], batch_size=c["batch"], learning_rate=c["learning_rate"],
                            clip_norm=c["clip_norm"], seed=seed, eval_every=c["eval_every"],
                            eval_size=c["eval_size"], record_every=c["steps"], probe_every=c["probe_every"],
                            probe_size=c["probe_size"])
    r = train.train(cell, task, cfg)
    h, steps = r.history, schedule(c)
    rows = np.searchsorted(steps, h["probe_step"])  # a diverged run ends early: its last probe is extra
    keep = steps[np.minimum(rows, len(steps) - 1)] == h["probe_step"]
    out = {}
    for k in SCALARS:
        out[k] = np.full(len(steps), np.nan)
        out[k][rows[keep]] = h[f"probe_{k}"][keep]
    for k in CURVES:
        out[f"{k}_init"], out[f"{k}_end"] = h[f"probe_{k}"][0], h[f"probe_{k}"][-1]
    out["loss_ratio"] = r.final_eval[0] / task.baseline
    out["diverged"] = int(r.diverged)
    out["elapsed"] = r.elapsed_s
    return out


def run(config: dict, progress=None) -> dict:
    """Every cell × seed.

    Returns:
        dict: ``cells`` (C,), ``seeds`` (S,), ``probe_step`` (P,); ``rate``, ``lyap``,
        ``log_param_total``, ``log_grad_total`` (C, S, P) (NaN after a divergence); ``log_param_sens_init``,
        ``log_param_sens_end``, ``log_grad_share_init``, ``log_grad_share_end`` (C, S, T) per lag (column t at
        lag T − t) at the first and the last probe; ``loss_ratio`` (C, S) final eval loss / baseline;
        ``diverged`` (C, S); ``elapsed`` (C, S) seconds per run; ``total_wall_s``; the configuration's
        scalars.
    """
    c = config
    cells, seeds = list(c["cells"]), [int(s) for s in c["seeds"]]
    res = {}
    for p in cells:
        for s in seeds:
            res[p, s] = memo(progress, f"{p}_s{s}", lambda p=p, s=s: one_run(c, p, s))
        end = np.median([res[p, s]["rate"][-1] for s in seeds])
        say(progress, f"{p}: rate {np.median([res[p, s]['rate'][0] for s in seeds]):+.3f} -> {end:+.3f} "
                      f"ln/step, loss/baseline {np.median([res[p, s]['loss_ratio'] for s in seeds]):.3g}")
    out = {"cells": cells, "seeds": seeds, "probe_step": schedule(c)}
    for k in (*SCALARS, *(f"{k}_{w}" for k in CURVES for w in ("init", "end")), "loss_ratio", "diverged",
              "elapsed"):
        out[k] = np.asarray([[res[p, s][k] for s in seeds] for p in cells])
    out["total_wall_s"] = float(np.sum(out["elapsed"]))
    out.update({k: c[k] for k in ("T", "hidden", "batch", "steps", "learning_rate", "probe_size")})
    return out


# ------------------------------------------------------------------------------------------------- plot

_COLORS = {"irnn": "#8c564b", "lru": "#2ca02c", "gru": "#9467bd"}


def _color(p: str, i: int):
    return _COLORS.get(p, style.color(p, i))


def _over_training(ax, data, key, scale=1.0):
    x = data["probe_step"]
    for i, p in enumerate(data["cells"]):
        y = data[key][i] * scale
        for row in y:
            ax.plot(x, row, "-", color=_color(p, i), lw=0.5, alpha=0.35)
        ax.plot(x, np.nanmedian(y, axis=0), "-", marker=style.marker(p), ms=3, color=_color(p, i),
                mfc="none", label=p)


def _per_lag(ax, data, key):
    lags = np.arange(data["T"], 0, -1)
    for i, p in enumerate(data["cells"]):
        for w, ls in (("init", ":"), ("end", "-")):
            y = np.nanmedian(data[f"{key}_{w}"][i], axis=0) / math.log(10)
            ax.plot(lags, y, ls, color=_color(p, i), lw=1, label=p if w == "end" else None)


def plot(data: dict) -> dict:
    """Rate, λ₁, parameter sensitivity and ‖∂L/∂θ‖ over training (median over seeds, thin: each seed), and
    the per-lag parameter sensitivity and loss-gradient share at init (dotted) and at the end (solid)."""
    fig, axes = style.figure(2, 3, width=12.0, height=6.4, squeeze=False)
    ax = axes.ravel()
    _over_training(ax[0], data, "rate")
    ax[0].axhline(0, color="0.5", lw=0.6)
    style.finish(ax[0], xlabel="training step", ylabel="rate of ‖∂h_T/∂h_t‖_F (ln/step)",
                 title="state Jacobian's rate", legend=False)
    # the curves fill every panel: the legend goes below the figure, where it covers nothing
    fig.legend(*ax[0].get_legend_handles_labels(), loc="outside lower center", ncol=len(data["cells"]),
               fontsize=7, title="median over seeds (thin lines: each seed)", title_fontsize=7)
    _over_training(ax[1], data, "lyap")
    ax[1].axhline(0, color="0.5", lw=0.6)
    style.finish(ax[1], xlabel="training step", ylabel=style.LYAP, title="top Lyapunov exponent λ₁",
                 legend=False)
    _over_training(ax[2], data, "log_param_total", 1 / math.log(10))
    style.finish(ax[2], xlabel="training step", ylabel="log10 ‖∂h_T/∂θ‖_F", title="parameter sensitivity",
                 legend=False)
    _over_training(ax[3], data, "log_grad_total", 1 / math.log(10))
    style.finish(ax[3], xlabel="training step", ylabel="log10 ‖∂L/∂θ‖ (through h_T)",
                 title="loss gradient (cell parameters)", legend=False)
    _per_lag(ax[4], data, "log_param_sens")
    style.finish(ax[4], xlabel=style.LAG, ylabel="log10 ‖C_t‖_F", title="sensitivity per lag: init ⋯, end —",
                 legend=False)
    _per_lag(ax[5], data, "log_grad_share")
    style.finish(ax[5], xlabel=style.LAG, ylabel="log10 ‖∂L/∂h_T · C_t‖",
                 title="loss gradient's share per lag: init ⋯, end —", legend=False)
    fig.suptitle(f"Gradient dynamics along training: adding T = {data['T']}, d = {data['hidden']}, batch "
                 f"{data['batch']}, {data['steps']} Adam steps, lr {data['learning_rate']:g}, "
                 f"{len(data['seeds'])} seeds; eval mode on a probe batch of {data['probe_size']}",
                 fontsize=9)
    return {"dynamics": fig}


# ---------------------------------------------------------------------------------------------- markdown


def _median(data, key, i, j):
    return float(np.nanmedian(data[key][i][:, j]))


def _verdicts(data) -> list[str]:
    cells, lines = list(data["cells"]), []
    ln10 = math.log(10)
    if "gru" in cells:
        i = cells.index("gru")
        r0, r1 = _median(data, "rate", i, 0), _median(data, "rate", i, -1)
        far = [float(np.nanmedian(data[f"log_grad_share_{w}"][i][:, 0])) / ln10 for w in ("init", "end")]
        alive = r1 > r0 and r1 > -0.05
        lines.append(f"- Does the GRU's vanished gradient come alive as it learns? Its state Jacobian's rate "
                     f"goes from {r0:+.3f} to {r1:+.3f} ln/step (λ₁ {_median(data, 'lyap', i, 0):+.3f} → "
                     f"{_median(data, 'lyap', i, -1):+.3f}) and the loss gradient's share from the step at "
                     f"lag T = {data['T']} from 10^{far[0]:.1f} to 10^{far[1]:.1f}: "
                     + ("yes, the rate rises to within 0.05 ln/step of 0 while it learns (final loss "
                        f"{float(np.median(data['loss_ratio'][i])):.3g} of the baseline)." if alive else
                        "the rate rises but stays below −0.05 ln/step." if r1 > r0 else
                        "no, the rate does not rise here."))
    if "irnn" in cells:
        i = cells.index("irnn")
        med = np.nanmedian(data["log_param_total"][i], axis=0) / ln10
        top = np.nanmax(data["log_param_total"][i], axis=0) / ln10
        grow = float(np.nanmax(med) - med[0])
        lines.append(f"- Does the IRNN's sensitivity explode? ‖∂h_T/∂θ‖_F (median over seeds) goes from "
                     f"10^{med[0]:.2f} at init to 10^{med[-1]:.2f} at the end, its largest value along "
                     f"training 10^{np.nanmax(med):.2f} (the largest seed: 10^{top[0]:.2f} at init, "
                     f"10^{top[-1]:.2f} at the end; rate {_median(data, 'rate', i, 0):+.3f} → "
                     f"{_median(data, 'rate', i, -1):+.3f} ln/step): "
                     + ("yes, it grows by more than two decades while training." if grow > 2 else
                        "no: it is largest at initialization (the identity recurrence sums the inputs' "
                        "contributions over every lag) and falls as the cell learns." if med[-1] < med[0] else
                        "no, it grows by less than two decades."))
    return lines


def write_extra(data: dict) -> dict:
    """``dynamics.md``: per cell the rate, λ₁ and ‖∂h_T/∂θ‖_F at init and at the end (medians over seeds),
    the final loss, and the answers to the two questions."""
    ln10 = math.log(10)
    lines = [f"Adding problem, T = {data['T']}, d = {data['hidden']}, {data['steps']} steps, "
             f"{len(data['seeds'])} seeds (medians); eval mode on a probe batch of {data['probe_size']} "
             "sequences.", "",
             "| cell | rate init → end (ln/step) | λ₁ init → end | log10 ‖∂h_T/∂θ‖_F init → end | "
             "log10 ‖∂L/∂θ‖ init → end | final loss / baseline | diverged |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for i, p in enumerate(data["cells"]):
        def pair(key, scale=1.0, fmt="+.3f", i=i):
            return f"{_median(data, key, i, 0) * scale:{fmt}} → {_median(data, key, i, -1) * scale:{fmt}}"
        lines.append(f"| `{p}` | {pair('rate')} | {pair('lyap')} | "
                     f"{pair('log_param_total', 1 / ln10, '.2f')} | "
                     f"{pair('log_grad_total', 1 / ln10, '.2f')} | "
                     f"{float(np.median(data['loss_ratio'][i])):.3g} | {int(np.sum(data['diverged'][i]))} |")
    lines += ["", *_verdicts(data)]
    return {"dynamics.md": "\n".join(lines) + "\n"}
