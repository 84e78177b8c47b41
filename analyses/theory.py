"""theory: the mean-field prediction against the measured rate, one panel per family (docs/theory.md).

Each point is one cell at initialization in train mode: its top Lyapunov exponent measured by one tangent
vector propagated with ``jax.jvp`` through the cell's own ``apply``
(``gradflow.measure.theory_vs_measurement``, float64, independent of the Jacobian engine), beside the
mean-field rate ½ ln χ that ``gradflow.theory.predict_rate`` derives for the same configuration (gain,
γ's, batch size B, hidden size d, input variance of the drawn W_xh, dropout p). The families and their knobs:

- ``tanh``: the gain g, with input x_t ~ N(0, 1) and without (Poole / Schoenholz / Engelken).
- ``bn_notanh`` (train mode): the input scale γ_x (γ_h = 1) at several batch sizes B; g has no effect.
- ``ln_notanh``: γ_x, without dropout and with hidden dropout 0.2 (a fresh mask per step).
- ``bn_tanh``: γ = γ_h = γ_x (the Recurrent BN paper's 0.1 against 1.0), with input and without.
- ``ln_tanh``: the gain g, with input and without.
- deep BN feed-forward network h_l = φ(BN(W_l h_{l-1})) with a fresh W_l per layer (Yang et al. 2019): the
  per-layer gradient growth against B, linear and tanh; ``gradflow.theory.bn_feedforward_rate``.

Where measurement and mean field disagree beyond the finite-size effects the cause is in docs/theory.md §6:
small batches (B = 4) and few input features (§6.3) for BN, the tied-weight term ln ρ(W_hh)/g for
``ln_notanh`` (§6.1, drawn dotted; it is not a mean-field effect, and without input, γ_x = 0, LN is a power
iteration, §6.2).

Example::

    from analyses import theory
    data = theory.run({**theory.CONFIG, **theory.QUICK})
    theory.plot(data)["theory"]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import gradflow
from analyses import style
from analyses.runner import memo, say
from gradflow import measure

th = gradflow.theory

NAME = "theory"
CONFIG = {
    "families": ["tanh", "bn_notanh", "ln_notanh", "bn_tanh", "ln_tanh", "bn_feedforward"],
    "hidden": 128,
    "input_size": 16,
    "steps": 600,
    "seeds": [0, 1],
    # family -> knob swept (values) and the curves (extra configuration keys, batch size)
    "tanh_gains": [0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0],
    "bn_gamma_x": [0.0, 0.25, 0.5, 1.0, 2.0],
    "bn_batches": [4, 8, 32],
    "ln_gamma_x": [0.0, 0.25, 0.5, 1.0, 2.0],
    "ln_dropouts": [0.0, 0.2],
    "bn_tanh_gammas": [0.1, 0.3, 0.5, 0.7, 1.0],
    "bn_tanh_batch": 8,
    "ln_tanh_gains": [0.5, 1.0, 1.5, 2.0, 3.0],
    "ff_batches": [4, 6, 8, 16, 32],
    "ff_layers": 300,
    "ff_burn": 100,
}
QUICK = {"families": ["bn_notanh", "ln_notanh", "bn_feedforward"], "hidden": 12, "input_size": 4, "steps": 60,
         "seeds": [0], "tanh_gains": [2.0],
         "bn_gamma_x": [1.0], "bn_batches": [4], "ln_gamma_x": [1.0], "ln_dropouts": [0.0],
         "bn_tanh_gammas": [0.1], "ln_tanh_gains": [1.0], "ff_batches": [6], "ff_layers": 40,
         "ff_burn": 10}
FULL = {"hidden": 256, "seeds": [0, 1, 2], "steps": 900}


def _sweep(c: dict, name: str, knob: str, values, curves: list[tuple[str, dict, int]],
           tie: tuple[str, ...] = ()) -> dict:
    """theory_vs_measurement over ``values`` of ``knob`` (and of the ``tie`` keys, set equal to it) for each
    curve (label, extra configuration, batch size)."""
    P, V, S = len(curves), len(values), len(c["seeds"])
    pred, meas, se, tied = (np.zeros((P, V, S)) for _ in range(4))
    for i, (_, extra, B) in enumerate(curves):
        configs = [{**extra, **dict.fromkeys((knob, *tie), float(v)), "seed": int(s)}
                   for v in values for s in c["seeds"]]
        with jax.enable_x64(True):
            out = measure.theory_vs_measurement(name, configs, hidden_size=c["hidden"], batch_size=B,
                                           input_size=c["input_size"], steps=c["steps"],
                                           key=jax.random.PRNGKey(7))
        pred[i] = out["predicted"].reshape(V, S)
        meas[i] = out["measured"].reshape(V, S)
        se[i] = out["stderr"].reshape(V, S)
        tied[i] = out["tied_correction"].reshape(V, S)
    return {"x": np.asarray(values, float), "predicted": pred, "measured": meas, "stderr": se, "tied": tied,
            "curves": [lab for lab, _, _ in curves], "knob": knob}


def _feedforward(c: dict) -> dict:
    """Deep BN feed-forward nets (fresh W_l per layer, no input): measured per-layer growth against B."""
    d, L = c["hidden"], c["ff_layers"]
    acts = ["linear", "tanh"]
    B_ = c["ff_batches"]
    S = len(c["seeds"])
    pred, meas, se = np.zeros((2, len(B_), S)), np.zeros((2, len(B_), S)), np.zeros((2, len(B_), S))
    with jax.enable_x64(True):
        for a, act in enumerate(acts):
            phi = jnp.tanh if act == "tanh" else (lambda z: z)
            for b, B in enumerate(B_):
                for s, seed in enumerate(c["seeds"]):
                    k = jax.random.fold_in(jax.random.PRNGKey(11), 1000 * seed + B)

                    def layer(h, l, k=k, phi=phi):  # a fresh Gaussian W_l per layer, drawn from l
                        W = jax.random.normal(jax.random.fold_in(k, l), (d, d), jnp.float64) / np.sqrt(d)
                        return phi(gradflow.batch_norm(h @ W.T, jnp.ones(d, jnp.float64), eps=1e-12))

                    h0 = jax.random.normal(jax.random.fold_in(k, L + 1), (B, d), jnp.float64)
                    meas[a, b, s], se[a, b, s] = measure.top_exponent(
                        layer, h0, jnp.arange(L), jax.random.fold_in(k, L + 2), burn=c["ff_burn"])
                    pred[a, b, s] = th.bn_feedforward_rate(int(B), act)
    return {"x": np.asarray(B_, float), "predicted": pred, "measured": meas, "stderr": se,
            "tied": np.zeros_like(pred), "curves": acts, "knob": "batch size B"}


def run(config: dict, progress=None) -> dict:
    """Predicted and measured rates for every family.

    Returns:
        dict with, per family f in ``families``: ``f_x`` (V,) the knob's values, ``f_predicted``,
        ``f_measured``, ``f_stderr``, ``f_tied`` (P, V, S) over curves × values × seeds (``f_tied``: the
        tied-weight term ln ρ(W_hh)/g of docs/theory.md §6.1, used for ``ln_notanh``), ``f_curves`` (P,)
        labels, ``f_knob`` the knob's name; ``max_abs_diff`` (F,) the largest |measured − predicted| of the
        seed means per family (plain mean field everywhere); ``families`` and the sizes.
    """
    c = config
    d_in = c["input_size"]
    jobs = {
        "tanh": lambda: _sweep(c, "tanh", "gain", c["tanh_gains"], [
            (f"x ~ N(0, 1), {d_in} inputs", {}, 2), ("no input", {"has_input": False}, 2)]),
        "bn_notanh": lambda: _sweep(c, "bn_notanh", "gamma_x", c["bn_gamma_x"], [
            (f"B = {B}", {"gamma": 1.0}, B) for B in c["bn_batches"]]),
        "ln_notanh": lambda: _sweep(c, "ln_notanh", "gamma_x", c["ln_gamma_x"], [
            ("no dropout" if p == 0 else f"dropout {p:g}", {"gamma": 1.0, "dropout": p}, 2)
            for p in c["ln_dropouts"]]),
        "bn_tanh": lambda: _sweep(c, "bn_tanh", "gamma", c["bn_tanh_gammas"], [
            (f"γ_x = γ, {d_in} inputs", {}, c["bn_tanh_batch"]),
            ("no input", {"has_input": False}, c["bn_tanh_batch"])], tie=("gamma_x",)),
        "ln_tanh": lambda: _sweep(c, "ln_tanh", "gain", c["ln_tanh_gains"], [
            (f"x ~ N(0, 1), {d_in} inputs", {}, 2), ("no input", {"has_input": False}, 2)]),
        "bn_feedforward": lambda: _feedforward(c),
    }
    unknown = set(c["families"]) - set(jobs)
    if unknown:
        raise ValueError(f"unknown families {sorted(unknown)}; known: {list(jobs)}")
    data: dict = {"families": list(c["families"]), "hidden": int(c["hidden"]), "steps": int(c["steps"]),
                  "n_seeds": len(c["seeds"])}
    worst = []
    for f in c["families"]:
        r = memo(progress, f, jobs[f])
        for k, v in r.items():
            data[f"{f}_{k}"] = v
        diff = np.abs(r["measured"].mean(-1) - r["predicted"].mean(-1))
        worst.append(float(diff.max()))
        say(progress, f"{f}: max |measured − predicted| {worst[-1]:.3f} ln/step over "
                      f"{diff.size} configurations")
    data["max_abs_diff"] = np.asarray(worst)
    return data


def plot(data: dict) -> dict:
    """``theory``: measured rate (markers, ± s.d. over seeds) and mean-field prediction (lines) per family."""
    fams = list(data["families"])
    nr, nc = style.grid_shape(len(fams), 3)
    fig, axes = style.figure(nr, nc, squeeze=False, width=11.0, height=3.0 * nr)
    titles = {"tanh": "tanh RNN", "bn_notanh": "bn_notanh (train mode), γ_h = 1",
              "ln_notanh": "ln_notanh, γ_h = 1", "bn_tanh": "bn_tanh, γ_h = γ_x = γ",
              "ln_tanh": "ln_tanh", "bn_feedforward": "deep BN feed-forward (Yang et al. 2019)"}
    xlabels = {"gain": style.GAIN, "gamma_x": "input BN scale γ_x", "gamma": "BN scale γ",
               "batch size B": "batch size B"}
    for a, f in enumerate(fams):
        ax = axes.flat[a]
        x = data[f"{f}_x"]
        order = np.argsort(x)
        cols = style.shades(len(data[f"{f}_curves"]), "viridis", 0.1, 0.75)
        for i, lab in enumerate(data[f"{f}_curves"]):
            m, p = data[f"{f}_measured"][i], data[f"{f}_predicted"][i]
            ax.plot(x[order], p.mean(-1)[order], "-", color=cols[i], lw=1.2)
            ax.errorbar(x[order], m.mean(-1)[order], yerr=m.std(-1)[order] if m.shape[-1] > 1 else None,
                        fmt="o", ms=3.5, mfc="white", color=cols[i], capsize=2, lw=0.8, label=lab)
            if f == "ln_notanh":
                corr = (p + data[f"{f}_tied"][i]).mean(-1)
                ax.plot(x[order], corr[order], ":", color=cols[i], lw=1.0)
        ax.axhline(0, color="0.5", lw=0.7)
        knob = str(data[f"{f}_knob"])
        if f == "bn_feedforward":
            ax.set_xscale("log", base=2)
            style.plain_log_ticks(ax, "x")
        ylab = "growth per layer (ln)" if f == "bn_feedforward" else style.LYAP
        style.finish(ax, xlabel=xlabels.get(knob, knob), ylabel=ylab if a % nc == 0 or
                      f == "bn_feedforward" else None,
                      title=f"{titles.get(f, f)}\nmax |meas. − pred.| = {data['max_abs_diff'][a]:.3f}",
                      legend="best", fontsize=6.5)
    style.hide_unused(axes, len(fams))
    fig.suptitle(f"Mean field (lines; dotted: with the tied-weight term of docs/theory.md §6.1) against "
                 f"measurement (markers, jvp tangent, d = {data['hidden']}, {data['n_seeds']} seed(s))",
                 fontsize=8.5)
    return {"theory": fig}
