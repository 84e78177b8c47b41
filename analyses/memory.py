"""memory: parameter sensitivity ‖∂h_T/∂θ‖ relative to the state ‖h_T‖ as memory grows (the curse of memory).

Zucchet & Orvieto (NeurIPS 2024): as a recurrence's memory lengthens, its states move ever more under a small
change of its recurrent parameters, even where ∂h_T/∂h_t neither explodes nor vanishes. Two parts:

(a) The one-dimensional recurrence h_t = λ h_{t−1} + x_t, AR(1) inputs of unit variance and autocorrelation ρ:
    E[h²] and E[(∂h/∂λ)²] measured with the engine (``gradflow.param_sensitivity``, per example: each of
    ``chains`` independent chains, from h_0 = 0 over T = ⌈burn / (1 − λ_max)⌉ steps) against the closed forms
    ``gradflow.theory.memory_state_moment`` / ``memory_sensitivity_moment``; and the same under the LRU's
    parametrization λ = exp(−e^ν), whose E[(∂h/∂ν)²] = (λ ln λ)² E[(∂h/∂λ)²].
(b) Cell families at a common memory knob λ (memory ~ 1/(1 − λ)), each run from a random N(0, 1) state over T
    steps of i.i.d. N(0, 1) inputs, the batch analysed as one state:
    ``linear``, ``tanh``, ``irnn``: W_hh = λ · W_hh(gain 1) (Gaussian / identity init);
    ``lru`` (exponential parametrization, γ normalization γ = √(1 − λ²)), ``lru_nogamma`` (γ = 1),
    ``lru_polar`` (a pure function: λ_j = r_j e^{iφ_j} with r, φ the parameters, γ = √(1 − r²) fixed): every
    mode at |λ_j| = λ, the phases of the init;
    ``bn_notanh`` (batch statistics, n = B) and ``ln_notanh`` (LN over the features, n = d): the input path's
    γ_x at which the mean-field rate is ln λ, γ_x² = γ_h² ((n − 2)/((n − 3) λ²) − 1) (docs/theory.md §3.5,
    §4.1; λ → 1 is ``gradflow.theory.critical_input_gamma``);
    ``gru``: update-gate bias logit(λ) (z ≈ λ); ``lstm``: forget-gate bias logit(λ).
    Recurrent parameters θ_rec: ``W_hh`` (dense cells), ``nu_log`` + ``theta_log`` (lru, lru_nogamma),
    ``r`` + ``phase`` (lru_polar). Measured: ‖∂h_T/∂θ_rec‖_F / ‖h_T‖_F (relative sensitivity), the same for
    all parameters, the LRUs' magnitude and phase groups apart, and the state Jacobian's rate (slope of
    ln‖∂h_T/∂h_t‖_F against lag over [fit_from, T]) from the same reverse pass.

Example::

    from analyses import memory
    data = memory.run({**memory.CONFIG, **memory.QUICK})
    memory.plot(data)["memory"].savefig("memory.png")
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import gradflow
from analyses import common, style
from analyses.runner import memo, say
from gradflow import measure, theory

NAME = "memory"
FAMILIES = ("linear", "tanh", "irnn", "lru", "lru_nogamma", "lru_polar", "bn_notanh", "ln_notanh", "gru",
            "lstm")
LRU_FAMILIES = ("lru", "lru_nogamma", "lru_polar")
CONFIG = {
    "lams_1d": [0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995],
    "rhos": [0.0, 0.9],
    "chains": 1000,
    "burn": 10.0,
    "families": list(FAMILIES),
    "lams": [0.5, 0.8, 0.9, 0.95, 0.98],
    "hidden": 16,
    "input_size": 4,
    "batch": 8,
    "T": 400,
    "fit_from": 10,
    "seeds": [0, 1],
}
QUICK = {"lams_1d": [0.5, 0.9], "chains": 100, "families": ["tanh", "lru", "bn_notanh"], "lams": [0.5, 0.9],
         "hidden": 4, "batch": 4, "T": 30, "fit_from": 3, "seeds": [0]}
FULL = {"lams_1d": [0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999], "rhos": [0.0, 0.5, 0.9], "chains": 4000,
        "lams": [0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995], "hidden": 32, "batch": 8, "T": 2000,
        "seeds": [0, 1, 2]}


# ---------------------------------------------------------------------------------------- (a) one dimension


def pair_step(p, h, x):
    """Two copies of h_t = λ h_{t−1} + x_t side by side (carry (B, 2), the same inputs): column 0 with θ = λ
    (``p["lam"]``), column 1 with θ = ν, λ = exp(−e^ν) (``p["nu"]``, the LRU's parametrization); at
    ν = ln(−ln λ) the two columns are equal, so one pass gives both sensitivities."""
    lam = jnp.stack([p["lam"], jnp.exp(-jnp.exp(p["nu"]))])
    return lam * h + x


def ar1(rng: np.random.Generator, rho: float, T: int, chains: int) -> np.ndarray:
    """(T, chains, 1) stationary AR(1) inputs of unit variance, autocorrelation ρ^|Δ|."""
    x = np.empty((T, chains))
    x[0] = rng.standard_normal(chains)
    eps = rng.standard_normal((T, chains)) * math.sqrt(1.0 - rho**2)
    for t in range(1, T):
        x[t] = rho * x[t - 1] + eps[t]
    return x[..., None]


def _mean_se(log_norms) -> tuple[float, float]:
    v = np.exp(2.0 * np.asarray(log_norms, np.float64).ravel())
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))


def one_d(c: dict, progress=None) -> dict:
    """Part (a): measured and closed-form moments, arrays (R, L) over ρ and λ."""
    lams, rhos = np.asarray(c["lams_1d"], float), np.asarray(c["rhos"], float)
    T = int(math.ceil(c["burn"] / (1.0 - lams.max())))
    keys = ("h2", "h2_se", "d2", "d2_se", "nu2", "nu2_se", "th_h2", "th_d2", "th_nu2")
    out = {k: np.zeros((len(rhos), len(lams))) for k in keys}
    h0 = jnp.zeros((int(c["chains"]), 2), jnp.float64)
    for i, rho in enumerate(rhos):
        xs = jnp.asarray(ar1(np.random.default_rng(1000 + i), float(rho), T, int(c["chains"])))
        for j, lam in enumerate(lams):
            p = {"lam": jnp.float64(lam), "nu": jnp.float64(math.log(-math.log(lam)))}
            r = gradflow.param_sensitivity(pair_step, p, h0, xs, per_example=True)
            out["h2"][i, j], out["h2_se"][i, j] = _mean_se(np.asarray(r.log_state_norm) - 0.5 * math.log(2))
            out["d2"][i, j], out["d2_se"][i, j] = _mean_se(r.log_total[:, r.groups.index("lam")])
            out["nu2"][i, j], out["nu2_se"][i, j] = _mean_se(r.log_total[:, r.groups.index("nu")])
            out["th_h2"][i, j] = theory.memory_state_moment(lam, rho)
            out["th_d2"][i, j] = theory.memory_sensitivity_moment(lam, rho)
            out["th_nu2"][i, j] = (lam * math.log(lam)) ** 2 * out["th_d2"][i, j]
        z = (out["d2"][i] - out["th_d2"][i]) / out["d2_se"][i]
        ratios = ", ".join(f"{a:.3f}" for a in out["d2"][i] / out["th_d2"][i])
        say(progress, f"1-D, ρ = {rho:g}: E[(∂h/∂λ)²] measured/theory = {ratios}"
            f" (max |z| {np.abs(z).max():.2f})")
    return {f"a_{k}": v for k, v in out.items()} | {"a_T": T}


# ---------------------------------------------------------------------------------------- (b) cell families


def lru_polar_step(p, carry, x):
    """The bare LRU with λ_j = r_j e^{iφ_j} parametrized directly (r, φ) and a fixed γ; carry as `lru`."""
    N = p["r"].shape[0]
    lr, li = p["r"] * jnp.cos(p["phase"]), p["r"] * jnp.sin(p["phase"])
    h = carry["h"]
    re, im = h[:, :N], h[:, N:]
    bu_re, bu_im = p["gamma"] * (x @ p["B_re"].T), p["gamma"] * (x @ p["B_im"].T)
    h_new = jnp.concatenate([lr * re - li * im + bu_re, li * re + lr * im + bu_im], axis=-1)
    return {"h": h_new, "t": carry["t"] + 1}


def gamma_x_for_rate(n: int, lam: float, gamma_h: float = 1.0) -> float:
    """γ_x at which the mean-field rate ½ ln(γ_h²/(γ_h² + γ_x²) · (n − 2)/(n − 3)) of bn_notanh / ln_notanh
    equals ln λ (n = B or d)."""
    g2 = gamma_h**2 * ((n - 2) / ((n - 3) * lam**2) - 1.0)
    if g2 <= 0:
        raise ValueError(f"no γ_x gives the rate ln {lam} at n = {n}")
    return math.sqrt(g2)


def _preset(family: str) -> str:
    return "lru" if family.startswith("lru") else family


def family_step(family: str, c: dict):
    """(pstep, base params (seed 0), rec groups, train, key) for a family; other seeds reinit params only."""
    cell = gradflow.make_cell(_preset(family), c["hidden"], c["input_size"])
    v = gradflow.init_cell(cell, jax.random.key(0))
    train = family in ("bn_notanh", "ln_notanh")
    key = jax.random.key(17) if family == "ln_notanh" else None
    if family == "lru_polar":
        return lru_polar_step, ("r", "phase"), cell
    pstep, _ = gradflow.param_step(cell, v, train=train, key=key)
    rec = ("nu_log", "theta_log") if family.startswith("lru") else ("W_hh",)
    return pstep, rec, cell


def knob_params(family: str, params: dict, lam: float, c: dict) -> dict:
    """The seed's params with the family's memory knob set to λ."""
    p = dict(params)
    d = c["hidden"]
    if family in ("linear", "tanh", "irnn"):
        p["W_hh"] = params["W_hh"] * lam
    elif family in ("lru", "lru_nogamma"):
        p["nu_log"] = jnp.full_like(params["nu_log"], math.log(-math.log(lam)))
        g = math.sqrt(1.0 - lam**2) if family == "lru" else 1.0
        p["gamma_log"] = jnp.full_like(params["gamma_log"], math.log(g))
    elif family == "lru_polar":
        N = params["nu_log"].shape[0]
        p = {"r": jnp.full((N,), lam, params["nu_log"].dtype), "phase": jnp.exp(params["theta_log"]),
             "gamma": jnp.full((N,), math.sqrt(1.0 - lam**2), params["nu_log"].dtype),
             "B_re": params["B_re"], "B_im": params["B_im"]}
    elif family in ("bn_notanh", "ln_notanh"):
        n = c["batch"] if family == "bn_notanh" else d
        gx = gamma_x_for_rate(n, lam)
        p["bn_x"] = {**params["bn_x"], "scale": jnp.full_like(params["bn_x"]["scale"], gx)}
    elif family == "gru":
        p["b"] = params["b"].at[d:2 * d].set(math.log(lam / (1.0 - lam)))
    elif family == "lstm":
        p["b"] = params["b"].at[:d].set(math.log(lam / (1.0 - lam)))
    return p


def _log_group_norm(r, names) -> float:
    """ln of the Frobenius norm over several groups (from their log norms)."""
    idx = [r.groups.index(n) for n in names]
    return float(jax.scipy.special.logsumexp(2.0 * np.asarray(r.log_total, np.float64)[idx]) / 2.0)


def one_family(family: str, c: dict) -> dict:
    """Part (b) for one family: arrays (K, S) over the knob λ and the seeds, and the per-lag contribution
    curve at the largest λ (seed 0)."""
    pstep, rec, cell = family_step(family, c)
    K, S, T = len(c["lams"]), len(c["seeds"]), c["T"]
    out = {k: np.zeros((K, S)) for k in ("rel_rec", "rel_all", "abs_rec", "rms", "rate", "mag", "phase")}
    out["curve"] = np.zeros(T)
    lags = np.arange(T, 0, -1)
    for s, seed in enumerate(c["seeds"]):
        k_init, k_x, k_h = jax.random.split(jax.random.key(seed), 3)
        base = measure.init_variables(cell, c["batch"], k_init)["params"]
        xs = jax.random.normal(k_x, (T, c["batch"], c["input_size"]))
        carry0 = {**cell.initialize_carry(c["batch"]), "h": jax.random.normal(k_h, (c["batch"], c["hidden"]))}
        if family == "lstm":
            carry0["c"] = jnp.zeros_like(carry0["h"])
        for k, lam in enumerate(c["lams"]):
            r = gradflow.param_sensitivity(pstep, knob_params(family, base, float(lam), c), carry0, xs)
            ls = float(r.log_state_norm)
            out["rel_rec"][k, s] = math.exp(_log_group_norm(r, rec) - ls)
            out["rel_all"][k, s] = math.exp(float(r.log_total_all) - ls)
            n = math.sqrt(c["batch"] * c["hidden"])
            out["abs_rec"][k, s] = math.exp(_log_group_norm(r, rec)) / n
            out["rms"][k, s] = math.exp(ls) / n
            if family in LRU_FAMILIES:
                out["mag"][k, s] = math.exp(_log_group_norm(r, rec[:1]) - ls)
                out["phase"][k, s] = math.exp(_log_group_norm(r, rec[1:]) - ls)
            out["rate"][k, s] = state_rate(lags, np.asarray(r.log_state_jacobian, np.float64), c["fit_from"])
            if s == 0 and k == K - 1:
                idx = [r.groups.index(n) for n in rec]
                lc = np.asarray(r.log_contributions, np.float64)[:, idx]
                out["curve"] = np.asarray(jax.scipy.special.logsumexp(2 * lc, axis=1) / 2 - ls)
    return out


#: ln of float64's smallest positive number: where a contribution is exactly 0 (ln = −inf; a ReLU cell
#: whose units all switched off) ``curve`` stores this and ``curve_zero`` says so.
ZERO_LN = math.log(np.finfo(np.float64).smallest_subnormal)


def exact_zeros(log_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values with −inf replaced by :data:`ZERO_LN`, mask of those entries); a NaN or +inf is an error."""
    a = np.asarray(log_values, np.float64)
    zero = a == -np.inf
    if not np.all(np.isfinite(a[~zero])):
        raise FloatingPointError(f"memory: {int(np.sum(~np.isfinite(a[~zero])))} per-lag contributions "
                                 "are NaN or +inf")
    return np.where(zero, ZERO_LN, a), zero


#: The rate recorded where ∂h_T/∂h_t is exactly zero beyond lag 2 (an IRNN whose units all switched off).
ZERO_RATE = -10.0


def state_rate(lags, log_norms, fit_from: int) -> float:
    """Slope of ln‖∂h_T/∂h_t‖_F against lag over the finite values at lags >= ``fit_from`` (a ReLU cell's
    Jacobian can be exactly 0, ln = −inf, beyond some lag); fewer than 3 such values: over every finite
    lag, and :data:`ZERO_RATE` when fewer than 2 lags are finite."""
    ok = np.isfinite(log_norms)
    win = ok & (lags >= fit_from)
    if win.sum() >= 3:
        return common.fit_rate(lags[win], log_norms[win], fit_from)[0]
    if ok.sum() >= 2:
        return float(np.polyfit(lags[ok], log_norms[ok], 1)[0])
    return ZERO_RATE


def slope(lams, rel) -> float:
    """Least-squares slope of ln(rel) against ln(1/(1 − λ)) over the upper half of the λ grid (the exponent
    of the growth with memory; 1-D closed forms: 1 for θ = λ, 0 for θ = ν)."""
    m = -np.log1p(-np.asarray(lams, float))
    y = np.log(np.asarray(rel, float))
    h = max(len(m) // 2, 2) if len(m) > 2 else len(m)
    return float(np.polyfit(m[-h:], y[-h:], 1)[0])


def run(config: dict, progress=None) -> dict:
    """Both parts.

    Returns:
        dict with ``a_*`` (part (a), arrays (R, L) over ``rhos`` × ``lams_1d``: measured ``h2``, ``d2``,
        ``nu2`` and their standard errors ``*_se``, closed forms ``th_h2``, ``th_d2``, ``th_nu2``; ``a_T``);
        ``families`` (F,), ``lams`` (K,), ``rel_rec``, ``rel_all``, ``abs_rec`` (‖∂h_T/∂θ_rec‖_F / √(B d)),
        ``rms`` (‖h_T‖_F / √(B d)), ``rate`` (F, K, S), ``curve`` (F, T) (ln of
        the relative per-lag contribution of θ_rec at the largest λ, lags T..1; exact zeros flagged in
        ``curve_zero`` and stored as :data:`ZERO_LN`), ``slope_rec`` (F,) the
        growth exponent of the mean relative sensitivity with memory (:func:`slope`), ``lru_families``,
        ``lru_mag``, ``lru_phase`` (3, K, S), and the configuration's scalars.
    """
    c = config
    with jax.enable_x64(True):
        a = memo(progress, "one_d", lambda: one_d(c, progress))
    fams = list(c["families"])
    res = {}
    for f in fams:
        res[f] = memo(progress, f, lambda f=f: one_family(f, c))
        say(progress, f"{f}: ‖∂h_T/∂θ_rec‖/‖h_T‖ at λ = {c['lams'][0]}..{c['lams'][-1]}: "
            + ", ".join(f"{v:.3g}" for v in res[f]["rel_rec"].mean(axis=1))
            + f"; state rate {res[f]['rate'].mean(axis=1)[-1]:+.3f} ln/step at the largest λ")
    lru = [f for f in fams if f in LRU_FAMILIES]
    out = {**a, "families": fams, "lams": np.asarray(c["lams"], float),
           "lams_1d": np.asarray(c["lams_1d"], float), "rhos": np.asarray(c["rhos"], float)}
    for k in ("rel_rec", "rel_all", "abs_rec", "rms", "rate", "curve"):
        out[k] = np.stack([res[f][k] for f in fams])
    out["curve"], out["curve_zero"] = exact_zeros(out["curve"])
    out["slope_rec"] = np.array([slope(c["lams"], res[f]["rel_rec"].mean(axis=1)) for f in fams])
    out["lru_families"] = lru
    out["lru_mag"] = np.stack([res[f]["mag"] for f in lru]) if lru else np.zeros((0, len(c["lams"]), 1))
    out["lru_phase"] = np.stack([res[f]["phase"] for f in lru]) if lru else np.zeros((0, len(c["lams"]), 1))
    out.update({"hidden": c["hidden"], "batch": c["batch"], "T": c["T"], "chains": c["chains"]})
    return out


# ------------------------------------------------------------------------------------------- plot


#: Colours of the families that are not presets (the presets keep style.color's).
_COLORS = {"irnn": "#e6550d", "lru": "#2ca02c", "lru_nogamma": "#98df8a", "lru_polar": "#17becf"}


def _color(f: str, i: int):
    return _COLORS.get(f, style.color(f, i))


def _memory_axis(ax) -> None:
    ax.set_xscale("log")
    style.plain_log_ticks(ax, "x")


def _plot_one_d(ax, data):
    lams = data["lams_1d"]
    m = 1.0 / (1.0 - lams)
    colors = style.shades(len(data["rhos"]), "viridis")
    for i, rho in enumerate(data["rhos"]):
        for key, th, mk, lab in (("d2", "th_d2", "o", "θ = λ"), ("nu2", "th_nu2", "s", "θ = ν")):
            rel = np.sqrt(data[f"a_{key}"][i] / data["a_h2"][i])
            ax.loglog(m, np.sqrt(data[f"a_{th}"][i] / data["a_th_h2"][i]), "-", color=colors[i], lw=1)
            ax.loglog(m, rel, mk, color=colors[i], mfc="none", label=f"ρ = {rho:g}, {lab}")
    _memory_axis(ax)
    style.finish(ax, xlabel="memory 1/(1 − λ)", ylabel="√(E[(∂h/∂θ)²] / E[h²])",
                 title="1-D: measured (markers) vs closed form (lines)", legend="upper left", fontsize=6)


def _plot_families(ax, data, key, ylabel, title):
    m = 1.0 / (1.0 - data["lams"])
    for i, f in enumerate(data["families"]):
        y = data[key][i].mean(axis=1)
        ls = "--" if f.startswith("lru") else "-"
        ax.loglog(m, y, ls, marker=style.marker(f), color=_color(f, i), mfc="none",
                  label=f"{f} ({data['slope_rec'][i]:+.2f})" if key == "rel_rec" else f)
    _memory_axis(ax)
    style.finish(ax, xlabel="memory 1/(1 − λ)", ylabel=ylabel, title=title, legend=False)


def plot(data: dict) -> dict:
    """(a) the 1-D closed forms vs measurement; (b) relative sensitivity of θ_rec against memory per family
    (legend: growth exponent), the state Jacobian's rate at the same knob, the LRUs' magnitude vs phase
    groups, the per-lag contributions at the largest λ, and the relative sensitivity against the measured
    memory −1/rate."""
    fig, axes = style.figure(2, 4, width=13.0, height=6.2, squeeze=False)
    ax = axes.ravel()
    _plot_one_d(ax[0], data)
    _plot_families(ax[1], data, "rel_rec", "‖∂h_T/∂θ_rec‖_F / ‖h_T‖_F", "cells: recurrent parameters")
    ax[1].legend(fontsize=5.5, ncol=2, loc="upper left", title="family (exponent)", title_fontsize=6)
    _plot_families(ax[2], data, "abs_rec", "‖∂h_T/∂θ_rec‖_F / √(B d)", "cells: absolute (unit inputs)")
    m = 1.0 / (1.0 - data["lams"])
    for i, f in enumerate(data["families"]):
        ax[3].semilogx(m, data["rate"][i].mean(axis=1), "-", marker=style.marker(f), color=_color(f, i),
                       mfc="none", label=f)
    ax[3].semilogx(m, np.log(data["lams"]), "k:", lw=1, label="ln λ")
    ax[3].axhline(0, color="0.5", lw=0.6)
    _memory_axis(ax[3])
    style.finish(ax[3], xlabel="memory 1/(1 − λ)", ylabel="rate of ‖∂h_T/∂h_t‖_F (ln/step)",
                 title="state Jacobian at the same knob", legend="lower left", fontsize=5.5)
    for j, f in enumerate(data["lru_families"]):
        ax[4].loglog(m, data["lru_mag"][j].mean(axis=1), "-", marker="o", color=_color(f, j),
                     mfc="none", label=f"{f}: magnitude")
        ax[4].loglog(m, data["lru_phase"][j].mean(axis=1), "--", marker="s", color=_color(f, j),
                     mfc="none", label=f"{f}: phase")
    _memory_axis(ax[4])
    style.finish(ax[4], xlabel="memory 1/(1 − λ)", ylabel="‖∂h_T/∂θ‖_F / ‖h_T‖_F",
                 title="LRU: eigenvalue magnitude vs phase", legend="upper left", fontsize=5.5)
    lags = np.arange(data["T"], 0, -1)
    curve = np.where(data["curve_zero"], np.nan, data["curve"])  # exact zeros are not drawn
    top = float(np.nanmax(curve)) if curve.size else 0.0
    for i, f in enumerate(data["families"]):
        ax[5].semilogy(lags, style.log_from_ln(curve[i]), "-", color=_color(f, i), lw=1, label=f)
    ax[5].set_ylim(math.exp(top) * 1e-8, math.exp(top) * 3)
    for i, f in enumerate(data["families"]):  # against the measured memory −1/rate
        tau = -1.0 / np.minimum(data["rate"][i].mean(axis=1), -1.0 / data["T"])
        ax[6].loglog(tau, data["rel_rec"][i].mean(axis=1), "-", marker=style.marker(f), color=_color(f, i),
                     mfc="none", label=f)
    _memory_axis(ax[6])
    style.finish(ax[6], xlabel="measured memory −1/rate (steps, ≤ T)", ylabel="‖∂h_T/∂θ_rec‖_F / ‖h_T‖_F",
                 title="against the state Jacobian's memory", legend=False)
    ax[7].set_visible(False)
    style.finish(ax[5], xlabel=style.LAG, ylabel="‖C_t(θ_rec)‖_F / ‖h_T‖_F",
                 title=f"per-lag contributions, λ = {data['lams'][-1]:g}", legend=False)
    fig.suptitle(f"The curse of memory: parameter sensitivity as memory grows (d = {data['hidden']}, batch "
                 f"{data['batch']}, T = {data['T']}; 1-D: {data['chains']} chains, T = {data['a_T']}; "
                 "λ = exp(−e^ν))", fontsize=9)
    return {"memory": fig}


def write_extra(data: dict) -> dict:
    """``memory.md``: the growth exponent of each family's relative sensitivity and the 1-D check."""
    lo, hi = f"{data['lams'][0]:g}", f"{data['lams'][-1]:g}"
    lines = [f"| family | ‖∂h_T/∂θ_rec‖/‖h_T‖ at λ = {lo} | at λ = {hi} | growth exponent vs 1/(1 − λ) | "
             f"‖∂h_T/∂θ_rec‖/√(Bd) at λ = {hi} | ‖h_T‖/√(Bd) at λ = {hi} | state rate at λ = {hi} "
             "(ln/step) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for i, f in enumerate(data["families"]):
        rel = data["rel_rec"][i].mean(axis=1)
        lines.append(f"| `{f}` | {rel[0]:.3g} | {rel[-1]:.3g} | {data['slope_rec'][i]:+.2f} | "
                     f"{data['abs_rec'][i].mean(axis=1)[-1]:.3g} | {data['rms'][i].mean(axis=1)[-1]:.3g} | "
                     f"{data['rate'][i].mean(axis=1)[-1]:+.4f} |")
    for j, f in enumerate(data["lru_families"]):
        mag, ph = data["lru_mag"][j].mean(axis=1), data["lru_phase"][j].mean(axis=1)
        lines += ["" if j == 0 else None,
                  f"- `{f}`: ‖∂h_T/∂θ‖/‖h_T‖ of the eigenvalue magnitudes {mag[0]:.3g} → {mag[-1]:.3g}, "
                  f"of the phases {ph[0]:.3g} → {ph[-1]:.3g} (λ = {lo} → {hi})."]
    lines = [ln for ln in lines if ln is not None]
    z = np.abs(data["a_d2"] - data["a_th_d2"]) / data["a_d2_se"]
    rhos = ", ".join(f"{r:g}" for r in data["rhos"])
    lines += ["", f"1-D closed forms (h_t = λ h_{{t−1}} + x_t, AR(1) inputs, {data['chains']} chains): "
              f"measured E[(∂h/∂λ)²] within {z.max():.2f} standard errors of the closed form at every "
              f"λ ≤ {data['lams_1d'][-1]:g}, ρ ∈ {{{rhos}}}; the closed form's exponent is 1 for θ = λ and 0 "
              "for θ = ν (λ = exp(−e^ν))."]
    return {"memory.md": "\n".join(lines) + "\n"}
