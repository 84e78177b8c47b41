"""lyapunov: full Lyapunov spectra per preset, and the largest exponent against gain with theory overlaid.

The exponents (``gradflow.lyapunov_spectrum``: Benettin's QR method, natural log per step, standard errors
from independent segments) are the asymptotic growth rates of the singular values of ∂h_T/∂h_t: λ₁ > 0 means
gradients explode, λ₁ < 0 that every direction vanishes. Cells run in train mode at initialization, driven by
i.i.d. N(0, 1) inputs from a typical state; batch-coupled cells are analysed over the whole batch state.
The predictions are ``gradflow.theory.predict_rate`` (mean field, large width, with the finite-B / finite-d
factors of the BN and LN formulas), evaluated with the input-drive variance of the measured cell's W_xh; for
``linear`` the tabulated prediction (``top_theory``) is exact, ln ρ(W_hh) of the measured matrix, and the
curve is the mean-field ln g.

Example::

    from analyses import lyapunov
    data = lyapunov.run({**lyapunov.CONFIG, **lyapunov.QUICK})
    figs = lyapunov.plot(data)   # {"lyapunov_spectra": ..., "lyapunov_gain": ...}
"""

from __future__ import annotations

import jax
import matplotlib.ticker
import numpy as np

import gradflow
from analyses import common, style
from analyses.runner import memo, say
from gradflow import measure

NAME = "lyapunov"
CONFIG = {
    "spectra_presets": ["tanh", "linear", "bn_notanh", "bn_input_tanh", "bn_tanh", "ln_notanh", "ln_tanh",
                        "lstm", "bn_lstm", "ln_lstm", "gru"],
    "spectra_hidden": 16,
    "spectra_batch": 8,
    "spectra_T": 400,
    "spectra_transient": 100,
    "dropout_margin": 0.2,
    "top_presets": ["tanh", "linear", "bn_notanh", "bn_tanh", "ln_notanh", "ln_tanh", "lstm", "gru"],
    "gains": [0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0],
    "max_gain": {"linear": 1.4},
    "hidden": 32,
    "batch": 8,
    "input_size": 8,
    "input_scale": 1.0,
    "T": 1000,
    "transient": 200,
    "segments": 10,
    "burn_in": 20,
    "seed": 0,
    "theory_points": 41,
    "dtype": "float64",
}
QUICK = {"spectra_presets": ["tanh", "bn_notanh"], "spectra_hidden": 6, "spectra_batch": 4, "spectra_T": 60,
         "spectra_transient": 10, "top_presets": ["tanh", "bn_notanh"], "gains": [0.5, 1.0, 2.0], "hidden": 6,
         "batch": 4, "T": 60, "transient": 10, "burn_in": 3, "theory_points": 9}
FULL = {"spectra_hidden": 32, "spectra_T": 2000, "spectra_transient": 300, "hidden": 64, "batch": 16,
        "T": 3000, "transient": 500}

THEORY = ("tanh", "linear", "bn_notanh", "bn_tanh", "ln_notanh", "ln_tanh")


def _sigma_x2(variables, gates: int, input_scale: float) -> float:
    W_xh = np.asarray(variables["params"]["W_xh"])
    return gradflow.theory.input_drive_variance(W_xh, input_scale ** 2, gates)


def run(config: dict, progress=None) -> dict:
    """Compute the spectra, the top exponent across gains and the predictions.

    Returns:
        dict with ``spectra_presets`` (P,), ``spectra`` (P, n_max) exponents descending, padded at the end
        with the last exponent, ``spectra_n`` (P,) the number of exponents computed (all n, or the finite
        top (1 − p − margin)·n under dropout p), ``spectra_state`` (P,) the state size n, ``spectra_se``
        (P, n_max);
        long-format rows of the gain sweep ``top_preset`` (R,) names, ``top_gain`` (R,), ``top_exp`` (R,),
        ``top_se`` (R,), ``top_theory`` (R,) (0 where ``top_has_theory`` is 0); the theory curves
        ``curve_preset`` (C,), ``curve_gain`` (C,), ``curve_rate`` (C,); and configuration scalars.
    """
    c = config
    with jax.enable_x64(c["dtype"] == "float64"):
        out = _spectra(c, progress)
        rows = {"p": [], "g": [], "e": [], "se": [], "th": [], "has": []}
        curves = {"p": [], "g": [], "r": []}
        for p in c["top_presets"]:
            _gain_sweep(c, p, rows, curves, progress)
    return {**out, "top_preset": rows["p"], "top_gain": np.asarray(rows["g"]),
            "top_exp": np.asarray(rows["e"]), "top_se": np.asarray(rows["se"]),
            "top_theory": np.asarray(rows["th"]),
            "top_has_theory": np.asarray(rows["has"]), "curve_preset": curves["p"],
            "curve_gain": np.asarray(curves["g"]), "curve_rate": np.asarray(curves["r"]),
            "hidden": c["hidden"], "batch": c["batch"], "T": c["T"], "transient": c["transient"],
            "spectra_hidden": c["spectra_hidden"], "spectra_batch": c["spectra_batch"],
            "spectra_T": c["spectra_T"], "input_scale": c["input_scale"]}


def _spectrum(c: dict, p: str) -> dict:
    """The full (or, under dropout, the finite top) Lyapunov spectrum of preset ``p``."""
    cell, v, c0, xs, key = common.setup(
        p, c["spectra_hidden"], c["input_size"], c["spectra_batch"], c["spectra_T"], c["seed"],
        c["input_scale"], burn_in=c["burn_in"], dtype=c["dtype"])
    n = sum(int(np.prod(a.shape)) for k_, a in c0.items() if k_ != "t")
    # Dropout zeroes a fraction p of the units each step: those directions have exponent -inf,
    # so only the top (1 - p - margin)·n exponents are finite and computed.
    k = n if cell.spec.dropout == 0 else int((1.0 - cell.spec.dropout - c["dropout_margin"]) * n)
    out = measure.lyapunov(cell, v, c0, xs, key, k=k, transient=c["spectra_transient"],
                           segments=c["segments"])
    return {**out, "n": n}


def _spectra(c: dict, progress) -> dict:
    spectra, ses, ns, states = [], [], [], []
    for p in c["spectra_presets"]:
        r = memo(progress, f"spectrum_{p}", lambda p=p: _spectrum(c, p))
        spectra.append(r["exponents"])
        ses.append(r["stderr"])
        ns.append(len(r["exponents"]))
        states.append(int(r["n"]))
        say(progress, f"spectrum {p}: n = {ns[-1]}, λ1 = {r['exponents'][0]:+.4f} ± {r['stderr'][0]:.4f}")
    n_max = max(ns)
    pad = lambda a: np.concatenate([a, np.full(n_max - len(a), a[-1])])
    return {"spectra_presets": list(c["spectra_presets"]), "spectra": np.stack([pad(a) for a in spectra]),
            "spectra_se": np.stack([pad(a) for a in ses]), "spectra_n": np.asarray(ns),
            "spectra_state": np.asarray(states)}


def _top_exponents(c: dict, p: str, gains: list) -> dict:
    """λ₁ ± s.e. of preset ``p`` at each gain, the input-drive variance and (linear) the exact ln ρ(W_hh)."""
    e, se, sx, ex = [], [], [], []
    for g in gains:
        cell, v, c0, xs, key = common.setup(p, c["hidden"], c["input_size"], c["batch"], c["T"], c["seed"],
                                             c["input_scale"], burn_in=c["burn_in"], gain=float(g),
                                             dtype=c["dtype"])
        r = measure.lyapunov(cell, v, c0, xs, key, k=1, transient=c["transient"], segments=c["segments"])
        e.append(r["exponents"][0])
        se.append(r["stderr"][0])
        sx.append(_sigma_x2(v, cell.gates, c["input_scale"]))
        ex.append(float(gradflow.theory.linear_lyapunov_spectrum(np.asarray(v["params"]["W_hh"]))[0])
                  if p == "linear" else 0.0)
    return {"e": np.array(e), "se": np.array(se), "sx": np.array(sx), "exact": np.array(ex)}


def _gain_sweep(c: dict, p: str, rows: dict, curves: dict, progress) -> None:
    """Append preset ``p``'s rows (measured λ₁ and prediction per gain) and its theory curve."""
    gains = [g for g in c["gains"] if g <= c["max_gain"].get(p, np.inf)]
    r = memo(progress, f"top_{p}", lambda: _top_exponents(c, p, gains))
    dropout = gradflow.PRESETS[p].dropout
    for j, g in enumerate(gains):
        if p == "linear":  # exact, no mean field: ln ρ(W_hh) of the measured cell's matrix
            th = float(r["exact"][j])
        elif p in THEORY:
            th = gradflow.theory.predict_rate(p, hidden_size=c["hidden"], batch_size=c["batch"], gain=g,
                                              sigma_x2=float(r["sx"][j]), dropout=dropout)
        else:
            th = 0.0
        for k, val in (("p", p), ("g", g), ("e", float(r["e"][j])), ("se", float(r["se"][j])),
                       ("th", float(th)), ("has", int(p in THEORY))):
            rows[k].append(val)
    if p in THEORY:
        sx = float(np.mean(r["sx"]))
        for g in np.geomspace(min(gains), max(gains), c["theory_points"]):
            curves["p"].append(p)
            curves["g"].append(float(g))
            curves["r"].append(gradflow.theory.predict_rate(p, hidden_size=c["hidden"], batch_size=c["batch"],
                                                            gain=float(g), sigma_x2=sx, dropout=dropout))
    say(progress, f"top exponent {p}: " + ", ".join(f"g={g:g}: {e:+.3f}" for g, e in zip(gains, r["e"],
                                                                                         strict=True)))


def plot(data: dict) -> dict:
    """``lyapunov_spectra``: λ_i against i/n per preset; ``lyapunov_gain``: λ₁ against gain with theory."""
    fig, axes = style.figure(1, 2, width=11.0, height=3.4)
    rnn = [p for p in data["spectra_presets"] if gradflow.PRESETS.get(p) is None
           or gradflow.PRESETS[p].family == "rnn"]
    for ax, group, title in ((axes[0], rnn, "simple recurrences"),
                             (axes[1], [p for p in data["spectra_presets"] if p not in rnn], "gated cells")):
        drawn = []
        for p in group:
            i = data["spectra_presets"].index(p)
            k, n = int(data["spectra_n"][i]), int(data["spectra_state"][i])
            lam = data["spectra"][i, :k]
            lab = style.label(p) + (f" (top {k}/{n}: dropout)" if k < n else "")
            # a spectrum that coincides with one drawn before (bn_notanh and bn_tanh) is dashed on top of it
            same = any(len(d) == len(lam) and float(np.quantile(np.abs(np.clip(d, -3, None)
                                                                      - np.clip(lam, -3, None)), 0.9)) < 0.05
                       for d in drawn)
            ax.plot((np.arange(k) + 0.5) / n, lam, "--" if same else "-", color=style.color(p, i), label=lab,
                    lw=1.6 if same else 1.2, zorder=3 if same else 2)
            drawn.append(lam)
        ax.axhline(0.0, color="0.4", lw=0.7)
        lo = max(float(np.min(data["spectra"])), -3.0)
        ax.set_ylim(lo - 0.1, max(0.3, float(np.max(data["spectra"][:, 0])) + 0.1))
        style.finish(ax, xlabel="exponent index i / n (n = state size)", ylabel=style.LYAP, title=title,
                      legend=False)
        cut = (f"axis cut at −3: lower exponents (down to {float(np.min(data['spectra'])):.0f})\n"
               "are directions BN/LN/dropout remove") if float(np.min(data["spectra"])) < -3.0 else None
        if group:  # below the panel (the curves fill it); the axis-cut note as the legend's title
            ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, title=cut,
                      title_fontsize=6.5)
        else:
            style.note(ax, "no cells of this kind in the configuration", loc="upper left")
    fig.suptitle(f"Full Lyapunov spectra at initialization (d = {data['spectra_hidden']}, batch "
                 f"{data['spectra_batch']}: n = batch·state, T = {data['spectra_T']}, train mode, driven)",
                 fontsize=9)

    fig2, (a1, a2) = style.figure(1, 2, width=9.5, height=3.6)
    preset_rows = np.asarray(data["top_preset"])
    curve_p = np.asarray(data["curve_preset"])
    order = list(dict.fromkeys(data["top_preset"]))
    for i, p in enumerate(order):
        ax = a1 if p in ("tanh", "linear", "ln_tanh", "lstm", "gru") else a2
        m = preset_rows == p
        col = style.color(p, i)
        ax.errorbar(data["top_gain"][m], data["top_exp"][m], yerr=data["top_se"][m], fmt=style.marker(p),
                    color=col, ms=4, mfc="none", capsize=2, label=f"{p} (measured)")
        if p == "linear":
            ax.plot(data["top_gain"][m], data["top_theory"][m], "+", color="k", ms=6,
                    label="linear (exact: ln ρ(W_hh))")
        mc = curve_p == p
        if mc.any():
            ax.plot(data["curve_gain"][mc], data["curve_rate"][mc], "-", color=col, lw=1.0, alpha=0.8,
                    label=f"{p} (theory)")
    for ax, title in ((a1, "gain-dependent cells"), (a2, "normalized recurrent path")):
        ax.axhline(0.0, color="0.4", lw=0.7)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([0.25, 0.5, 1, 2, 4])
        style.finish(ax, xlabel=style.GAIN, ylabel=style.LYAP, title=title,  # legend below: curves fill it
                      legend="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=6.5)
    fig2.suptitle(f"Largest Lyapunov exponent against gain (d = {data['hidden']}, batch {data['batch']}, "
                  f"T = {data['T']}; markers ± s.e., lines: gradflow.theory mean field)", fontsize=9)
    return {"lyapunov_spectra": fig, "lyapunov_gain": fig2}
