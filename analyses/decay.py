"""decay: ‖∂h_T/∂h_t‖₂ against the lag T − t for every preset at several gains, driven by input, at init.

Each preset is initialized (seeded), driven by i.i.d. Gaussian inputs from a random initial state, and run
in train mode (BN uses the batch's statistics, the batch analysed as one state of n = B·d; dropout on where
the preset has it, as during training), in float64 (a linear cell at gain 3 grows by 3^100 over the
window). The initial state is the state after ``burn_in`` driven steps from a random one. The exact Jacobians
∂h_T/∂h_t for all t come from one reverse pass (``gradflow.jacobians``); spectral norms (float64 SVD) at a
set of lags, Frobenius norms at every lag.
The per-step rate is the least-squares slope of ln‖∂h_T/∂h_t‖₂ against the lag over [fit_from, T].

Example::

    from analyses import decay
    data = decay.run({**decay.CONFIG, **decay.QUICK})
    decay.plot(data)["decay"].savefig("decay.png")
"""

from __future__ import annotations

import jax
import matplotlib.ticker
import numpy as np

from analyses import common, style
from analyses.runner import memo, say
from gradflow import measure

NAME = "decay"
CONFIG = {
    "presets": ["tanh", "linear", "bn_notanh", "bn_input_tanh", "bn_tanh", "ln_notanh", "ln_tanh", "lstm",
                "bn_lstm", "ln_lstm", "gru"],
    "gains": [0.5, 1.0, 1.5, 3.0],
    "hidden": 32,
    "input_size": 8,
    "batch": 8,
    "T": 100,
    "n_lags": 24,
    "fit_from": 10,
    "input_scale": 1.0,
    "seeds": [0, 1, 2],
    "train": True,
    "dtype": "float64",
    "burn_in": 20,
}
QUICK = {"presets": ["tanh", "bn_notanh", "ln_notanh"], "gains": [0.5, 1.5], "hidden": 6, "batch": 4,
         "T": 20, "n_lags": 8, "fit_from": 4, "seeds": [0], "burn_in": 3}
FULL = {"hidden": 64, "batch": 16, "T": 300, "n_lags": 40, "fit_from": 20, "seeds": [0, 1, 2]}


def select_lags(T: int, n: int) -> tuple[int, ...]:
    """Lags 1..T: a few log-spaced small ones plus evenly spaced ones (for a linear lag axis)."""
    small = common.log_lags(max(T // 10, 2), max(n // 4, 3))
    even = np.linspace(T / (n - len(small)), T, max(n - len(small), 2)).round().astype(int)
    return tuple(int(v) for v in np.unique(np.concatenate([small, even, [T]])) if 1 <= v <= T)


def run(config: dict, progress=None) -> dict:
    """Compute the all-lag norms.

    Returns:
        dict with ``presets`` (P,), ``gains`` (G,), ``seeds`` (S,), ``lags`` (L,) the lags of the spectral
        norms, ``spectral`` (P, G, S, L), ``frobenius`` (P, G, S, T) by lag 1..T, ``rate`` and ``rate_se``
        (P, G, S): slope of ln‖·‖₂ against lag over [fit_from, T] (ln per step) and its standard error,
        ``n_state`` (P,) the analysed state size, plus the configuration's scalars.
    """
    c = config
    lags = select_lags(c["T"], c["n_lags"])
    P, G, S = len(c["presets"]), len(c["gains"]), len(c["seeds"])
    spec = np.zeros((P, G, S, len(lags)))
    fro = np.zeros((P, G, S, c["T"]))
    rate = np.zeros((P, G, S))
    rate_se = np.zeros((P, G, S))
    n_state = np.zeros(P, int)
    for i, preset in enumerate(c["presets"]):
        def one_preset(preset=preset):
            out = {"spec": np.zeros((G, S, len(lags))), "fro": np.zeros((G, S, c["T"])), "n": 0}
            for j, g in enumerate(c["gains"]):
                for k, seed in enumerate(c["seeds"]):
                    cell, v, c0, xs, key = common.setup(
                        preset, c["hidden"], c["input_size"], c["batch"], c["T"], seed, c["input_scale"],
                        burn_in=c["burn_in"], train=c["train"], gain=float(g), dtype=c["dtype"])
                    r = measure.lag_singular_values(cell, v, c0, xs, key, train=c["train"], lags=lags)
                    out["spec"][j, k] = r["spectral"]
                    out["fro"][j, k] = r["frobenius"]
                    out["n"] = r["sv"].shape[1]
            return out

        with jax.enable_x64(c["dtype"] == "float64"):
            r = memo(progress, preset, one_preset)
        spec[i], fro[i], n_state[i] = r["spec"], r["fro"], int(r["n"])
        for j in range(G):
            for k in range(S):
                rate[i, j, k], rate_se[i, j, k] = common.fit_rate(lags, np.log(spec[i, j, k]), c["fit_from"])
        say(progress, f"{preset}: rate at gain {c['gains'][0]}..{c['gains'][-1]} = "
            + ", ".join(f"{x:+.3f}" for x in rate[i].mean(axis=1)) + " ln/step")
    return {"presets": list(c["presets"]), "gains": np.asarray(c["gains"], float),
            "seeds": np.asarray(c["seeds"]), "lags": np.asarray(lags), "spectral": spec, "frobenius": fro,
            "rate": rate, "rate_se": rate_se, "n_state": n_state, "hidden": c["hidden"], "batch": c["batch"],
            "T": c["T"], "fit_from": c["fit_from"], "input_scale": float(c["input_scale"]),
            "train": bool(c["train"])}


def plot(data: dict) -> dict:
    """One panel per preset (norm against lag, a line per gain, geometric mean over seeds) and a summary panel
    of the fitted rate against gain for every preset."""
    presets, gains, lags = data["presets"], data["gains"], data["lags"]
    n = len(presets) + 1
    rows, cols = style.grid_shape(n, 4)
    fig, axes = style.figure(rows, cols, width=11.0, height=2.35 * rows, squeeze=False)
    axes = axes.ravel()
    colors = style.shades(len(gains), "viridis")
    logs = np.log(data["spectral"])  # (P, G, S, L)
    for i, p in enumerate(presets):
        ax = axes[i]
        for j, g in enumerate(gains):
            y = np.exp(logs[i, j].mean(axis=0))
            ax.semilogy(lags, y, "-", color=colors[j], label=f"g = {g:g}")
            if logs.shape[2] > 1:
                ax.fill_between(lags, np.exp(logs[i, j].min(0)), np.exp(logs[i, j].max(0)), color=colors[j],
                                alpha=0.15, lw=0)
        ax.axhline(1.0, color="0.5", lw=0.6, ls=":")
        g_means = logs[i].mean(axis=1)  # (G, L)
        if len(gains) > 1 and float(np.max(np.ptp(g_means, axis=0))) < 0.05:
            # lower left: a decaying curve leaves it empty, and two short lines stay inside the panel
            style.note(ax, "all gains coincide\n(W_hh's scale is\nnormalized away)", loc="lower left")
        style.finish(ax, xlabel=style.LAG if i >= len(presets) - cols else None,
                      ylabel=style.JNORM if i % cols == 0 else None, title=style.label(p),
                      legend="lower left" if i == 0 else False)
    ax = axes[len(presets)]
    for i, p in enumerate(presets):
        r = data["rate"][i].mean(axis=1)
        ax.plot(gains, r, "-", marker=style.marker(p), color=style.color(p, i), label=p, ms=3, mfc="none")
    ax.axhline(0.0, color="0.4", lw=0.7)
    ax.set_xscale("log")
    ax.set_xticks(gains)
    ax.set_xticklabels([f"{g:g}" for g in gains])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    style.finish(ax, xlabel=style.GAIN, ylabel=style.RATE,
                  title=f"fitted rate, lags {data['fit_from']}–{data['T']}", legend=False)
    # the curves fill this panel: their legend goes below the figure, where it covers nothing
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=min(len(presets), 6),
               fontsize=6.5, title="fitted-rate panel", title_fontsize=6.5)
    style.hide_unused(axes, n)
    mode = "train mode (batch statistics)" if data["train"] else "eval mode"
    fig.suptitle(f"Gradient decay at initialization: d = {data['hidden']}, batch {data['batch']}, {mode}, "
                 f"inputs N(0, {data['input_scale']:g}²); band = range over {len(data['seeds'])} seeds",
                 fontsize=9)
    return {"decay": fig}
