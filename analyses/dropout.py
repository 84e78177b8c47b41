"""dropout: what hidden dropout (0.2, as planned) does to the LN variant's (``ln_notanh``) Jacobians.

``ln_notanh`` (h_t = D(LN(W_hh h_{t-1}) + BN(W_xh x_t))) at initialization in train mode, with hidden
dropout p (a fresh mask per step, or one mask per sequence) against none. Dropout multiplies the step
Jacobian by a 0/(1−p)⁻¹ diagonal: it zeroes a fraction p of the directions each step and scales the rest
up. Shown: the spectral norm of ∂h_T/∂h_t against the lag (exact, ``gradflow.jacobians``) over several
seeds (masks), the per-step rate and the top Lyapunov exponent against p with the mean-field prediction
(``gradflow.theory.predict_rate``: LN normalizes the dropped-out state again, so p cancels to leading order),
and the singular values at lags 1 and 10.

Example::

    from analyses import dropout
    data = dropout.run({**dropout.CONFIG, **dropout.QUICK})
    dropout.plot(data)["dropout"]
"""

from __future__ import annotations

import jax
import numpy as np

import gradflow
from analyses import common, style
from analyses.runner import memo, say
from gradflow import measure

NAME = "dropout"
CONFIG = {
    "preset": "ln_notanh",
    "variants": [[0.0, "step"], [0.2, "step"], [0.2, "sequence"], [0.1, "step"], [0.3, "step"],
                 [0.5, "step"]],
    "hidden": 32,
    "input_size": 8,
    "batch": 8,
    "T": 100,
    "T_lyap": 1000,
    "transient": 200,
    "n_lags": 24,
    "fit_from": 10,
    "sv_lags": [1, 10],
    "seeds": [0, 1, 2],
    "input_scale": 1.0,
    "burn_in": 20,
    "dtype": "float64",
}
QUICK = {"variants": [[0.0, "step"], [0.2, "step"]], "hidden": 6, "batch": 4, "T": 20, "T_lyap": 60,
         "transient": 10, "n_lags": 8, "fit_from": 4, "sv_lags": [1, 5], "seeds": [0, 1], "burn_in": 3}
FULL = {"hidden": 64, "batch": 16, "T": 300, "T_lyap": 3000, "transient": 500, "seeds": [0, 1, 2, 3, 4]}


def _label(p: float, mode: str) -> str:
    return "no dropout" if p == 0 else f"p = {p:g}, mask per {mode}"


def run(config: dict, progress=None) -> dict:
    """Norms, rates, exponents and spectra for each (p, mask mode) variant.

    Returns:
        dict with ``labels`` (V,), ``p`` (V,), ``modes`` (V,), ``lags`` (L,), ``spectral`` (V, S, L),
        ``rate`` / ``rate_se`` (V, S) (slope of ln‖·‖₂ over lags [fit_from, T]), ``lyap`` / ``lyap_se`` (V,)
        top Lyapunov exponent (seed 0), ``theory`` (V,), ``sv_lags`` (K,), ``sv`` (V, K, n) at seed 0,
        plus configuration scalars.
    """
    from analyses.decay import select_lags

    c = config
    lags = select_lags(c["T"], c["n_lags"])
    V, S = len(c["variants"]), len(c["seeds"])
    spec = np.zeros((V, S, len(lags)))
    rate, rate_se = np.zeros((V, S)), np.zeros((V, S))
    lyap, lyap_se, theory = np.zeros(V), np.zeros(V), np.zeros(V)
    svs = []
    with jax.enable_x64(c["dtype"] == "float64"):
        for i, (p, mode) in enumerate(c["variants"]):
            def one(p=p, mode=mode):
                opts = {"dropout": float(p), "dropout_mode": mode, "dtype": c["dtype"]}
                sp, sv = [], None
                for k, seed in enumerate(c["seeds"]):
                    cell, v, c0, xs, key = common.setup(
                        c["preset"], c["hidden"], c["input_size"], c["batch"], c["T"], seed, c["input_scale"],
                        burn_in=c["burn_in"], **opts)
                    r = measure.lag_singular_values(cell, v, c0, xs, key, train=True,
                                                    lags=tuple(sorted(set(lags) | set(c["sv_lags"]))))
                    idx = [list(r["sv_lags"]).index(x) for x in lags]
                    sp.append(r["spectral"][idx])
                    if k == 0:
                        sv = r["sv"][[list(r["sv_lags"]).index(x) for x in c["sv_lags"]]]
                cell, v, c0, xs, key = common.setup(c["preset"], c["hidden"], c["input_size"], c["batch"],
                                                     c["T_lyap"], c["seeds"][0], c["input_scale"],
                                                     burn_in=c["burn_in"], **opts)
                ly = measure.lyapunov(cell, v, c0, xs, key, k=1, transient=c["transient"])
                return {"spec": np.stack(sp), "sv": sv, "lyap": ly["exponents"][0],
                        "lyap_se": ly["stderr"][0]}

            r = memo(progress, f"p{p}_{mode}", one)
            spec[i] = r["spec"]
            svs.append(r["sv"])
            lyap[i], lyap_se[i] = r["lyap"], r["lyap_se"]
            for k in range(S):
                rate[i, k], rate_se[i, k] = common.fit_rate(lags, np.log(spec[i, k]), c["fit_from"])
            theory[i] = gradflow.theory.predict_rate(c["preset"], hidden_size=c["hidden"],
                                                     batch_size=c["batch"], dropout=float(p))
            say(progress, f"{_label(p, mode)}: rate {rate[i].mean():+.4f} ± {rate[i].std():.4f} (seeds), "
                f"λ1 {lyap[i]:+.4f} ± {lyap_se[i]:.4f}, theory {theory[i]:+.4f}")
    return {"labels": [_label(p, m) for p, m in c["variants"]],
            "p": np.asarray([p for p, _ in c["variants"]]),
            "modes": [m for _, m in c["variants"]], "lags": np.asarray(lags), "spectral": spec, "rate": rate,
            "rate_se": rate_se, "lyap": lyap, "lyap_se": lyap_se, "theory": theory,
            "sv_lags": np.asarray(c["sv_lags"]), "sv": np.stack(svs), "preset": c["preset"],
            "hidden": c["hidden"], "batch": c["batch"], "T": c["T"], "fit_from": c["fit_from"]}


def plot(data: dict) -> dict:
    """``dropout``: norm against lag per variant; rate and λ₁ against p with theory; singular values."""
    fig, (a1, a2, a3) = style.figure(1, 3, width=11.0, height=3.4)
    main = [i for i, (p, m) in enumerate(zip(data["p"], data["modes"], strict=True))
            if p == 0 or abs(p - 0.2) < 1e-9]
    cols = {i: c for i, c in zip(main, ["0.25", style.color(data["preset"]), "#9467bd"], strict=False)}
    for i in main:
        logs = np.log(data["spectral"][i])
        col = cols[i]
        a1.semilogy(data["lags"], np.exp(logs.mean(0)), "-", color=col,
                    label=f"{data['labels'][i]} (rate {data['rate'][i].mean():+.3f})")
        a1.fill_between(data["lags"], np.exp(logs.min(0)), np.exp(logs.max(0)), color=col, alpha=0.15, lw=0)
    style.finish(a1, xlabel=style.LAG, ylabel=style.JNORM, title="gradient decay (band: seeds / masks)",
                  legend="lower left", fontsize=6.5)
    step = [i for i, m in enumerate(data["modes"]) if m == "step"]
    order = sorted(step, key=lambda i: data["p"][i])
    ps = data["p"][order]
    a2.errorbar(ps, data["rate"][order].mean(1), yerr=data["rate"][order].std(1), fmt="o-", ms=3, capsize=2,
                color=style.color(data["preset"]), label=f"fitted rate, lags {data['fit_from']}–{data['T']}")
    a2.errorbar(ps, data["lyap"][order], yerr=data["lyap_se"][order], fmt="s-", ms=3, capsize=2, mfc="none",
                color="#1f77b4", label="top Lyapunov exponent λ₁")
    a2.plot(ps, data["theory"][order], "k--", lw=1.0, label="mean field (gradflow.theory)")
    seq = [i for i, m in enumerate(data["modes"]) if m == "sequence"]
    if seq:
        a2.plot(data["p"][seq], data["lyap"][seq], "D", color="#9467bd", ms=4, mfc="none",
                label="λ₁, one mask per sequence")
    style.finish(a2, xlabel="hidden dropout rate p", ylabel=style.RATE, title="rate against dropout",
                  legend="lower left", fontsize=6.0)
    K = len(data["sv_lags"])
    for i in main:
        for k in range(K):
            s = data["sv"][i, k]
            n = len(s)
            pos = s > 1e-300
            a3.semilogy(((np.arange(n) + 0.5) / n)[pos], s[pos], ["-", "--", ":"][k % 3], color=cols[i],
                        label=f"{data['labels'][i]}, lag {data['sv_lags'][k]}")
    a3.set_ylim(bottom=1e-12)
    style.finish(a3, xlabel="i / n", ylabel="singular value σ_i of ∂h_T/∂h_t", title="spectra (seed 0)",
                  legend="lower left", fontsize=5.5)
    fig.suptitle(f"{data['preset']} with hidden dropout at initialization (train mode, d = {data['hidden']}, "
                 f"batch {data['batch']}, n = batch·d)", fontsize=9)
    return {"dropout": fig}
