"""lengths: ‖∂h_T/∂h_0‖₂ and the per-step rate across sequence lengths T, and a gain × T phase diagram.

For each preset (at its default gain, 1) one driven sequence of length max(lengths) is run in train mode from
a typical state (after a burn-in); ∂h_T/∂h_0 for every prefix length T is the forward product of the step
Jacobians, renormalized in log space so it stays finite in float32 for any T (``measure.forward_lognorms``).
The per-step rate is (1/T) ln‖∂h_T/∂h_0‖₂ (natural log per step); as T grows it tends to the largest Lyapunov
exponent. The phase diagram repeats this over a grid of recurrent gains for ``tanh``, ``bn_notanh`` and
``ln_notanh``, vectorized over the gains with ``gradflow.sweep.run_sweep`` (one compiled ``vmap`` per preset).

Example::

    from analyses import lengths
    data = lengths.run({**lengths.CONFIG, **lengths.QUICK})
    figs = lengths.plot(data)   # {"lengths": ..., "lengths_phase": ...}
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import matplotlib.colors
import numpy as np

import gradflow
import gradflow.sweep
from analyses import common, style
from analyses.runner import memo, say
from gradflow import measure

NAME = "lengths"
CONFIG = {
    "presets": ["tanh", "linear", "bn_notanh", "bn_input_tanh", "bn_tanh", "ln_notanh", "ln_tanh", "lstm",
                "bn_lstm", "ln_lstm", "gru"],
    "lengths": [10, 30, 100, 300, 1000, 3000],
    "phase_presets": ["tanh", "bn_notanh", "ln_notanh"],
    "phase_gains": [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0],
    "hidden": 32,
    "input_size": 8,
    "batch": 8,
    "input_scale": 1.0,
    "burn_in": 20,
    "seed": 0,
    "train": True,
    "dtype": "float64",
}
QUICK = {"presets": ["tanh", "bn_notanh"], "phase_presets": ["tanh", "bn_notanh"], "lengths": [10, 30, 60],
         "phase_gains": [0.5, 1.0, 2.0], "hidden": 6, "batch": 4, "burn_in": 3}
FULL = {"lengths": [10, 30, 100, 300, 1000, 3000, 10000], "hidden": 64, "batch": 16,
        "phase_gains": [0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 4.0]}


def _measure(c: dict, preset: str, gain: float) -> dict:
    T = max(c["lengths"])
    cell, v, c0, xs, key = common.setup(preset, c["hidden"], c["input_size"], c["batch"], T, c["seed"],
                                         c["input_scale"], burn_in=c["burn_in"], train=c["train"],
                                         gain=float(gain), dtype=c["dtype"])
    return measure.forward_lognorms(cell, v, c0, xs, key, train=c["train"], checkpoints=tuple(c["lengths"]))


def _phase_row(c: dict, preset: str, progress=None) -> np.ndarray:
    """ln‖∂h_T/∂h_0‖₂ (G, K) over the gains: one ``gradflow.sweep.run_sweep`` (vmap over the gain)."""
    T, ck = max(c["lengths"]), tuple(int(v) for v in c["lengths"])
    idx = np.asarray(ck) - 1

    def fn(static):
        cell, v, c0, xs, key, xb = common.setup_parts(
            static["preset"], c["hidden"], c["input_size"], c["batch"], T, c["seed"], c["input_scale"],
            burn_in=c["burn_in"], dtype=c["dtype"])

        def f(traced):
            vg = common.with_gain(cell, v, traced["gain"])
            c0b = common.burn_carry(cell, c["train"], vg, c0, xb, key) if c["burn_in"] > 0 else c0
            log_fro, _, Q = measure.forward_core(cell, c["train"], ck, vg, c0b, xs, key)
            top = jnp.linalg.svd(Q, compute_uv=False)[:, 0]
            return {"log_spec": jnp.log(jnp.maximum(top, jnp.finfo(top.dtype).tiny)) + log_fro[idx]}

        return f

    def report(info):
        lo, hi = info["rows"]
        say(progress, f"  sweep {preset}: chunk {info['index'] + 1}/{info['total']}, {hi - lo} gains "
                      f"in {info['seconds']:.1f}s")

    grid = gradflow.sweep.Grid(static={"preset": [preset]},
                               traced={"gain": [float(g) for g in c["phase_gains"]]})
    table = gradflow.sweep.run_sweep(fn, grid, chunk=len(c["phase_gains"]), progress=report)
    _, arr = gradflow.sweep.pivot(table, ["gain"], "log_spec")
    return np.asarray(arr, np.float64)


def run(config: dict, progress=None) -> dict:
    """Compute norms across lengths and the phase diagram.

    Returns:
        dict with ``presets`` (P,), ``lengths`` (K,), ``log_spec`` (P, K) ln‖∂h_T/∂h_0‖₂, ``rate`` (P, K)
        = log_spec / T, ``log_fro`` (P, T_max) ln‖∂h_T/∂h_0‖_F for every T, ``log_state`` (P, T_max)
        ln of the RMS over the batch of ‖h_T‖₂,
        ``phase_presets`` (Q,), ``phase_gains`` (G,), ``phase_rate`` (Q, G, K), plus configuration scalars.
    """
    c = config
    K, Tm = len(c["lengths"]), max(c["lengths"])
    P = len(c["presets"])
    log_spec, log_fro, state = np.zeros((P, K)), np.zeros((P, Tm)), np.zeros((P, Tm))
    with jax.enable_x64(c["dtype"] == "float64"):
        for i, p in enumerate(c["presets"]):
            r = memo(progress, f"preset_{p}", lambda p=p: _measure(c, p, 1.0))
            log_spec[i], log_fro[i], state[i] = r["log_spec"], r["log_fro"], r["log_state"]
            say(progress, f"{p}: rate at T = {c['lengths'][-1]}: {log_spec[i, -1] / Tm:+.4f} ln/step")
        Q, G = len(c["phase_presets"]), len(c["phase_gains"])
        phase = np.zeros((Q, G, K))
        for i, p in enumerate(c["phase_presets"]):
            def row(p=p):
                return {"log_spec": _phase_row(c, p, progress)}

            phase[i] = memo(progress, f"phase_{p}", row)["log_spec"] / np.asarray(c["lengths"], float)
            say(progress, f"phase diagram: {p} done")
    lengths = np.asarray(c["lengths"])
    return {"presets": list(c["presets"]), "lengths": lengths, "log_spec": log_spec,
            "rate": log_spec / lengths, "log_fro": log_fro, "log_state": state,
            "phase_presets": list(c["phase_presets"]), "phase_gains": np.asarray(c["phase_gains"], float),
            "phase_rate": phase, "hidden": c["hidden"], "batch": c["batch"], "input_scale": c["input_scale"],
            "train": bool(c["train"])}


def plot(data: dict) -> dict:
    """Figure ``lengths``: norm and rate against T per preset; ``lengths_phase``: the gain × T diagrams."""
    L = data["lengths"]
    fig, (a1, a2) = style.figure(1, 2, width=9.0, height=3.4)
    for i, p in enumerate(data["presets"]):
        col = style.color(p, i)
        T = np.arange(1, data["log_fro"].shape[1] + 1)
        a1.plot(T, data["log_fro"][i] / np.log(10), "-", color=col, lw=0.6, alpha=0.35)
        mk = style.marker(p)
        a1.plot(L, data["log_spec"][i] / np.log(10), mk, color=col, label=style.label(p), mfc="none")
        a2.plot(L, data["rate"][i], "-", marker=mk, color=col, label=style.label(p), mfc="none")
    a1.set_xscale("log")
    a1.axhline(0.0, color="0.5", lw=0.6, ls=":")
    style.finish(a1, xlabel=style.SEQLEN, ylabel="log₁₀‖∂h_T/∂h_0‖ (dots: spectral, lines: Frobenius)",
                  title="gradient across the whole sequence", legend=False)
    a2.set_xscale("log")
    a2.axhline(0.0, color="0.4", lw=0.7)
    style.finish(a2, xlabel=style.SEQLEN, ylabel="(1/T) ln‖∂h_T/∂h_0‖₂ (ln per step)",
                  title="per-step rate", legend=False)
    a2.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"Sequence length at initialization (gain 1, d = {data['hidden']}, batch {data['batch']}, "
                 "train mode, driven by N(0, 1) inputs)", fontsize=9)

    Q = len(data["phase_presets"])
    fig2, axes = style.figure(1, Q, width=3.4 * Q, height=3.0, squeeze=False)
    rates = data["phase_rate"]
    vmax = max(float(np.max(np.abs(rates))), 1e-3)
    norm = matplotlib.colors.TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)
    gains = data["phase_gains"]
    for i, p in enumerate(data["phase_presets"]):
        ax = axes[0, i]
        im = ax.imshow(rates[i], origin="lower", aspect="auto", cmap="RdBu_r", norm=norm,
                       extent=(-0.5, len(L) - 0.5, -0.5, len(gains) - 0.5))
        ax.set_xticks(range(len(L)))
        ax.set_xticklabels([str(v) for v in L])
        ax.set_yticks(range(len(gains)))
        ax.set_yticklabels([f"{g:g}" for g in gains])
        ax.grid(False)
        for gi in range(len(gains)):
            for li in range(len(L)):
                r = rates[i, gi, li]
                ax.text(li, gi, f"{r:+.2f}", ha="center", va="center", fontsize=5.5,
                        color="white" if abs(r) > 0.6 * vmax else "black")
        style.finish(ax, xlabel=style.SEQLEN, ylabel=style.GAIN if i == 0 else None, title=style.label(p),
                      legend=False)
    cb = fig2.colorbar(im, ax=axes[0, -1], shrink=0.9)
    cb.set_label("(1/T) ln‖∂h_T/∂h_0‖₂ (ln per step)\nred: explodes, blue: vanishes")
    fig2.suptitle("Phase diagram: per-step rate of ‖∂h_T/∂h_0‖₂ over gain × sequence length", fontsize=9)
    return {"lengths": fig, "lengths_phase": fig2}
