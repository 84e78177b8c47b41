"""spectra: singular values of ∂h_T/∂h_t at lags 1, 10 and 100 per preset (does the product collapse?).

Each preset at initialization (gain 1, train mode, driven by N(0, 1) inputs from a typical state); the exact
Jacobians come from ``gradflow.jacobians`` and are decomposed in float64. A product that collapses to low rank
has a few singular values far above the rest: the effective rank (exp of the entropy of σ_i / Σσ_j, Roy &
Vetterli 2007) falls towards 1 as the lag grows. The stable rank ‖M‖_F² / ‖M‖₂² is given beside it.

Example::

    from analyses import spectra
    data = spectra.run({**spectra.CONFIG, **spectra.QUICK})
    spectra.plot(data)["spectra"]
"""

from __future__ import annotations

import jax
import numpy as np

from analyses import common, style
from analyses.runner import memo, say
from gradflow import measure

NAME = "spectra"
CONFIG = {
    "presets": ["tanh", "linear", "bn_notanh", "bn_input_tanh", "bn_tanh", "ln_notanh", "ln_tanh", "lstm",
                "bn_lstm", "ln_lstm", "gru"],
    "lags": [1, 10, 100],
    "rank_lags": [1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100],
    "hidden": 32,
    "input_size": 8,
    "batch": 8,
    "gain": 1.0,
    "input_scale": 1.0,
    "burn_in": 20,
    "seed": 0,
    "train": True,
    "dtype": "float64",
}
QUICK = {"presets": ["tanh", "bn_notanh"], "lags": [1, 5, 20], "rank_lags": [1, 2, 5, 10, 20], "hidden": 6,
         "batch": 4, "burn_in": 3}
FULL = {"hidden": 64, "batch": 16, "lags": [1, 10, 100, 300],
        "rank_lags": [1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300]}


def effective_rank(sv: np.ndarray) -> np.ndarray:
    """exp(H(p)), p = σ / Σσ, over the last axis."""
    p = sv / np.sum(sv, axis=-1, keepdims=True)
    return np.exp(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1))


def run(config: dict, progress=None) -> dict:
    """Singular values at ``lags`` and effective / stable ranks at ``rank_lags``.

    Returns:
        dict with ``presets`` (P,), ``lags`` (K,), ``sv`` (P, K, n_max) singular values descending, padded
        with the smallest one past ``n`` (P,) (the state size), ``rank_lags`` (R,), ``eff_rank`` (P, R),
        ``stable_rank`` (P, R), ``spectral`` (P, R) ‖∂h_T/∂h_t‖₂, plus configuration scalars.
    """
    c = config
    all_lags = sorted(set(c["lags"]) | set(c["rank_lags"]))
    T = max(all_lags)
    res = []
    with jax.enable_x64(c["dtype"] == "float64"):
        for p in c["presets"]:
            def one(p=p):
                cell, v, c0, xs, key = common.setup(
                    p, c["hidden"], c["input_size"], c["batch"], T, c["seed"], c["input_scale"],
                    burn_in=c["burn_in"], train=c["train"], gain=float(c["gain"]), dtype=c["dtype"])
                r = measure.lag_singular_values(cell, v, c0, xs, key, train=c["train"], lags=all_lags)
                return {"sv": r["sv"]}

            sv = memo(progress, p, one)["sv"]
            res.append(sv)
            er = effective_rank(sv)
            say(progress, f"{p}: n = {sv.shape[1]}, effective rank at lags {all_lags[0]}/{all_lags[-1]}: "
                f"{er[0]:.1f}/{er[-1]:.1f}")
    n = np.array([s.shape[1] for s in res])
    nmax = int(n.max())
    k_idx = [all_lags.index(v) for v in c["lags"]]
    r_idx = [all_lags.index(v) for v in c["rank_lags"]]
    sv = np.stack([np.concatenate([s[k_idx], np.repeat(s[k_idx][:, -1:], nmax - s.shape[1], 1)], 1)
                   for s in res])
    eff = np.stack([effective_rank(s[r_idx]) for s in res])
    stable = np.stack([np.sum(s[r_idx] ** 2, 1) / s[r_idx][:, 0] ** 2 for s in res])
    spec = np.stack([s[r_idx][:, 0] for s in res])
    return {"presets": list(c["presets"]), "lags": np.asarray(c["lags"]), "sv": sv, "n": n,
            "rank_lags": np.asarray(c["rank_lags"]), "eff_rank": eff, "stable_rank": stable, "spectral": spec,
            "hidden": c["hidden"], "batch": c["batch"], "gain": float(c["gain"]), "train": bool(c["train"])}


def plot(data: dict) -> dict:
    """``spectra``: σ_i / σ₁ against i / n at each lag, one panel per preset, and effective rank / n
    against lag."""
    presets = data["presets"]
    P = len(presets)
    rows, cols = style.grid_shape(P + 1, 4)
    fig, axes = style.figure(rows, cols, width=11.0, height=2.3 * rows, squeeze=False)
    axes = axes.ravel()
    colors = style.shades(len(data["lags"]), "plasma", 0.05, 0.75)
    for i, p in enumerate(presets):
        ax = axes[i]
        n = int(data["n"][i])
        x = (np.arange(n) + 0.5) / n
        for k, lag in enumerate(data["lags"]):
            s = data["sv"][i, k, :n]
            pos = s > 0
            ax.semilogy(x[pos], s[pos] / s[0], "-", color=colors[k],
                        label=f"lag {lag}: σ₁ = {s[0]:.2g}")
        ax.set_ylim(bottom=max(1e-16, ax.get_ylim()[0]))
        style.finish(ax, xlabel="i / n" if i >= P - cols + 1 else None,
                      ylabel="σ_i / σ₁" if i % cols == 0 else None, title=f"{style.label(p)} (n = {n})",
                      legend="lower left", fontsize=6)
    ax = axes[P]
    for i, p in enumerate(presets):
        ax.plot(data["rank_lags"], data["eff_rank"][i] / data["n"][i], "-", marker=style.marker(p),
                color=style.color(p, i), ms=3, mfc="none", label=p)
    ax.set_xscale("log")
    ax.set_yscale("log")
    style.finish(ax, xlabel=style.LAG, ylabel="effective rank / n", title="collapse of the product",
                  legend=False)
    ax.legend(fontsize=5.5, ncol=2, loc="lower left")
    style.hide_unused(axes, P + 1)
    fig.suptitle(f"Singular values of ∂h_T/∂h_t at initialization (gain {data['gain']:g}, "
                 f"d = {data['hidden']}, batch {data['batch']}: n = batch·state, train mode)", fontsize=9)
    return {"spectra": fig}
