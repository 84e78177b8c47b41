"""cures: what keeps the gradients alive at initialization, beside the proposals, with the predictions.

Candidates: ``irnn`` (ReLU, W_hh = I), ``lru`` with a ring reaching 1 (r_min 0, r_max 1) and a ring
[0.9, 0.999], ``bn_notanh`` and ``ln_notanh`` with the input path's γ at the critical value
``gradflow.theory.critical_input_gamma`` (mean-field rate 0), and ``tanh`` and ``bn_notanh`` after
pre-flossing (``gradflow.floss``: Adam on Σλ₁², k = 1, fresh inputs every step), and the registry families
(``gradflow.families.NAMES``: mingru, minlstm, rglru, s6, lru_stack, with their default options, labelled by
name); beside them the baselines ``tanh``, ``bn_notanh``, ``ln_notanh`` and ``lstm`` as initialized.

Every cell runs in train mode (BN batch statistics, the batch analysed as one state; dropout on where the
preset has it) in float64, driven by i.i.d. N(0, input_scale²) inputs from a burned-in random state, as in
``decay``. Per seed: the exact ∂h_T/∂h_t at a set of lags (``gradflow.measure.lag_singular_values``), the
rate (least-squares slope of ln‖∂h_T/∂h_t‖₂ against lag over [fit_from, T]) and λ₁
(``gradflow.measure.lyapunov`` on a longer sequence). Pre-flossing runs in float32 on its own inputs; the
flossed parameters are then measured in float64 on the analysis' inputs (fresh to the flossing).

Predictions: ``tanh``, ``bn_notanh``, ``ln_notanh``: ``gradflow.theory.predict_rate`` (mean field; at the
critical γ_x it is 0 by construction); ``lru``: ``gradflow.theory.lru_rate`` of the seed's parameters, exact
(ln max|λ_j|); ``irnn``: the bound ``gradflow.theory.relu_rate_bound`` (ln‖W_hh‖₂ = 0 at init); a registry
family: its own ``rate`` where it has one (``lru_stack``: ln max|λ| over its layers, asymptotic), else none;
``lstm`` and the flossed cells: none (flossing's target is 0).

Example::

    from analyses import cures
    data = cures.run({**cures.CONFIG, **cures.QUICK})
    cures.plot(data)["cures"].savefig("cures.png")
    print(cures.write_extra(data)["cures.md"])
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

import gradflow
from analyses import common, style
from analyses.runner import memo, say
from gradflow import families, measure, theory
from gradflow.summary import verdict_of

NAME = "cures"
CONFIG = {
    "hidden": 32,
    "input_size": 8,
    "batch": 8,
    "T": 100,
    "n_lags": 20,
    "fit_from": 10,
    "lyap_T": 400,
    "lyap_transient": 100,
    "segments": 10,
    "input_scale": 1.0,
    "burn_in": 20,
    "seeds": [0, 1, 2],
    "dtype": "float64",
    "baselines": ["tanh", "bn_notanh", "ln_notanh", "lstm"],
    "irnn": True,
    "lru_rings": [[0.0, 1.0], [0.9, 0.999]],
    "critical": ["bn_notanh", "ln_notanh"],
    "floss_presets": ["tanh", "bn_notanh"],
    "floss_steps": 300,
    "floss_T": 200,
    "families": list(families.NAMES),
    "threshold": 0.01,
}
QUICK = {"hidden": 6, "batch": 5, "T": 20, "n_lags": 8, "fit_from": 4, "lyap_T": 60, "lyap_transient": 10,
         "burn_in": 3, "seeds": [0], "dtype": "float32", "baselines": ["tanh", "bn_notanh"], "irnn": False,
         "lru_rings": [[0.9, 0.999]], "critical": ["ln_notanh"], "floss_presets": ["tanh"], "floss_steps": 3,
         "floss_T": 20, "families": []}
FULL = {"hidden": 64, "batch": 16, "T": 300, "n_lags": 30, "fit_from": 20, "lyap_T": 1000,
        "lyap_transient": 200, "floss_steps": 500, "floss_T": 300}

def candidates(c: dict, cells: dict | None = None) -> list[dict]:
    """The rows of the table: label, preset (a name, or the user's cell object), cell options, kind
    ("baseline", "candidate", "flossed", "user": one per entry of ``cells``)."""
    rows = [{"label": p, "preset": p, "options": {}, "kind": "baseline"} for p in c["baselines"]]
    if c["irnn"]:
        rows.append({"label": "irnn", "preset": "irnn", "options": {}, "kind": "candidate"})
    for lo, hi in c["lru_rings"]:
        rows.append({"label": f"lru [{lo:g}, {hi:g}]", "preset": "lru",
                     "options": {"r_min": float(lo), "r_max": float(hi)}, "kind": "candidate"})
    for p in c["critical"]:
        gx = theory.critical_input_gamma(p, batch_size=c["batch"], hidden_size=c["hidden"])
        rows.append({"label": f"{p} γx*", "preset": p, "options": {"input_gamma_init": gx},
                     "kind": "candidate"})
    for p in c["floss_presets"]:
        rows.append({"label": f"{p} flossed", "preset": p, "options": {}, "kind": "flossed"})
    for p in c.get("families", []):
        rows.append({"label": p, "preset": p, "options": {}, "kind": "candidate"})
    for label, cell in (cells or {}).items():
        if any(r["label"] == label for r in rows):
            raise ValueError(f"cells: the label {label!r} is already a row of the comparison")
        rows.append({"label": str(label), "preset": cell, "options": {}, "kind": "user"})
    return rows


def _prediction(row: dict, c: dict, variables) -> tuple[float, str]:
    """(predicted rate, what it is) for one row and one seed's variables; nan where none exists."""
    p, opts = row["preset"], row["options"]
    if row["kind"] in ("flossed", "user") or p == "lstm":
        return math.nan, "none"
    if families.is_family(p):  # the family's own rate, or none (generic: no entry here per family)
        return families.predicted_rate(p, variables["params"], families.get(p).options(**opts))
    if p == "lru":
        return theory.lru_rate(variables["params"]), "exact"
    if p == "irnn":
        return theory.relu_rate_bound(variables["params"]["W_hh"]), "bound"
    spec = gradflow.PRESETS[p]
    sx2 = theory.input_drive_variance(np.asarray(variables["params"]["W_xh"]), c["input_scale"] ** 2, 1) \
        if p == "tanh" else 0.0
    rate = theory.predict_rate(p, hidden_size=c["hidden"], batch_size=c["batch"], sigma_x2=sx2,
                               gamma_x=opts.get("input_gamma_init"), dropout=spec.dropout)
    return rate, "mean field"


def _flossed(row: dict, c: dict, seed: int) -> tuple[dict, float]:
    """Pre-floss the row's cell in float32 from the seed's initialization; return the variables in the
    analysis' dtype and the wall time (s)."""
    cell, v, c0, _, _ = common.setup(row["preset"], c["hidden"], c["input_size"], c["batch"], 2, seed,
                                     c["input_scale"], burn_in=c["burn_in"], dtype="float32",
                                     **row["options"])
    shape = (c["floss_T"], c["batch"], c["input_size"])
    sample = lambda key: c["input_scale"] * jax.random.normal(key, shape, jnp.float32)
    t0 = time.perf_counter()
    v2 = gradflow.floss(cell, v, sample, steps=c["floss_steps"], carry0=c0, key=jax.random.key(1000 + seed))
    seconds = time.perf_counter() - t0
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, c["dtype"]), v2), seconds


def _one_row(row: dict, c: dict, lags) -> dict:
    S = len(c["seeds"])
    out = {"spec": np.zeros((S, len(lags))), "lam": np.zeros(S), "lam_se": np.zeros(S), "pred": np.zeros(S),
           "floss_s": np.zeros(S), "what": ""}
    for k, seed in enumerate(c["seeds"]):
        args = (row["preset"], c["hidden"], c["input_size"], c["batch"])
        opts = {**row["options"], "dtype": c["dtype"]}
        cell, v, c0, xs, key = common.setup(*args, c["T"], seed, c["input_scale"], burn_in=c["burn_in"],
                                            **opts)
        if row["kind"] == "flossed":
            v, out["floss_s"][k] = _flossed(row, c, seed)
        out["spec"][k] = measure.lag_singular_values(cell, v, c0, xs, key, train=True, lags=lags)["spectral"]
        _, _, _, xl, _ = common.setup(*args, c["lyap_T"], seed + 500, c["input_scale"], **opts)
        r = measure.lyapunov(cell, v, c0, xl, key, train=True, k=1, transient=c["lyap_transient"],
                             segments=c["segments"])
        out["lam"][k], out["lam_se"][k] = r["exponents"][0], r["stderr"][0]
        out["pred"][k], out["what"] = _prediction(row, c, v)
    return out


def run(config: dict, progress=None, cells: dict | None = None) -> dict:
    """Measure every row, and the user's cells beside them.

    Args:
        config: :data:`CONFIG` (with :data:`QUICK` or :data:`FULL` merged in).
        progress: the runner's progress (or a callable, or None).
        cells: ``{label: cell}``, cells of your own measured like the rows (a gradflow cell whose input size
            is ``config["input_size"]``, or a flax.linen cell, e.g. ``nn.GRUCell(features=32)``, which keeps
            its own state size); no prediction. Example (REPL)::

                import flax.linen as nn
                from analyses import cures
                data = cures.run({**cures.CONFIG, **cures.QUICK}, cells={"my gru": nn.GRUCell(features=6)})
                print(cures.write_extra(data)["cures.md"])

    Returns:
        dict with ``labels``, ``presets``, ``kinds``, ``prediction_kind`` (R,) strings; ``seeds`` (S,),
        ``lags`` (L,); ``spectral`` (R, S, L) ‖∂h_T/∂h_t‖₂; ``rate``, ``rate_se`` (R, S) the fitted rates;
        ``lam``, ``lam_se`` (R, S) λ₁; ``prediction`` (R, S) (0 and ``prediction_valid`` False: none);
        ``floss_seconds`` (R, S) the pre-flossing wall time (0 for other rows); ``gamma_x`` (R,) the input γ
        (``gamma_x_valid`` False: the preset's);
        ``input_share`` (R,) the input path's share γ_x²/(γ_h² + γ_x²) of the state's variance for the
        normalized rows (``input_share_valid`` False otherwise); and the configuration's scalars.
    """
    c = config
    from analyses.decay import select_lags

    lags = select_lags(c["T"], c["n_lags"])
    rows = candidates(c, cells)
    R, S = len(rows), len(c["seeds"])
    res = {k: np.zeros((R, S)) for k in ("rate", "rate_se", "lam", "lam_se", "prediction", "floss_seconds")}
    spectral = np.zeros((R, S, len(lags)))
    what = []
    with jax.enable_x64(c["dtype"] == "float64"):
        for i, row in enumerate(rows):
            r = memo(progress, row["label"], lambda row=row: _one_row(row, c, lags))
            spectral[i], res["lam"][i], res["lam_se"][i] = r["spec"], r["lam"], r["lam_se"]
            res["prediction"][i], res["floss_seconds"][i] = r["pred"], r["floss_s"]
            what.append(str(r["what"]))
            for k in range(S):
                res["rate"][i, k], res["rate_se"][i, k] = common.fit_rate(lags, np.log(spectral[i, k]),
                                                                        c["fit_from"])
            say(progress, f"{row['label']}: rate {res['rate'][i].mean():+.4f} ln/step, "
                f"λ1 {res['lam'][i].mean():+.4f}, prediction {res['prediction'][i].mean():+.4f} ({what[-1]})")
    gx = [float(row["options"].get("input_gamma_init", math.nan)) for row in rows]
    share = [theory.input_variance_share(1.0 if math.isnan(g) else g)
             if row["preset"] in ("bn_notanh", "ln_notanh") and row["kind"] != "flossed" else math.nan
             for g, row in zip(gx, rows, strict=True)]
    return {"labels": [r["label"] for r in rows],
            "presets": [r["preset"] if isinstance(r["preset"], str) else r["label"] for r in rows],
            "kinds": [r["kind"] for r in rows], "prediction_kind": what, "seeds": np.asarray(c["seeds"]),
            "lags": np.asarray(lags), "spectral": spectral, **res, "gamma_x": np.asarray(gx),
            "input_share": np.asarray(share), "hidden": c["hidden"], "batch": c["batch"], "T": c["T"],
            "fit_from": c["fit_from"], "lyap_T": c["lyap_T"], "floss_steps": c["floss_steps"],
            "floss_T": c["floss_T"], "threshold": float(c["threshold"]),
            "input_scale": float(c["input_scale"])} | _masked(res["prediction"], gx, share)


#: Entries that do not exist for every row (no prediction, the preset's own γ_x, no input share): saved as
#: 0 with a ``<key>_valid`` mask, so the data hold only measured numbers; ``nan_view`` makes them NaN again.
OPTIONAL = ("prediction", "gamma_x", "input_share")


def _masked(prediction, gx, share) -> dict:
    out = {}
    for key, values in zip(OPTIONAL, (prediction, gx, share), strict=True):
        a = np.asarray(values, float)
        out[key], out[key + "_valid"] = np.where(np.isnan(a), 0.0, a), ~np.isnan(a)
    return out


def nan_view(data: dict) -> dict:
    """``data`` with the entries of :data:`OPTIONAL` that do not exist set to NaN (for tables and plots)."""
    return {**data, **{k: np.where(np.asarray(data[k + "_valid"], bool), np.asarray(data[k], float), np.nan)
                       for k in OPTIONAL if k + "_valid" in data}}


def plot(data: dict) -> dict:
    """``cures``: the decay curves (geometric mean over seeds, band = range) of baselines and candidates, and
    λ₁ and the rate per row against the prediction."""
    data = nan_view(data)
    fig, axes = style.figure(1, 3, width=12.0, height=3.6)
    labels, lags = data["labels"], data["lags"]
    logs = np.log(data["spectral"])
    groups = (("baselines (as initialized)", ("baseline",)),
              ("candidates and flossed" + (", yours" if "user" in data["kinds"] else ""),
               ("candidate", "flossed", "user")))
    for ax, (title, kinds) in zip(axes[:2], groups, strict=True):
        idx = [i for i, k in enumerate(data["kinds"]) if k in kinds]
        for j, i in enumerate(idx):
            base = kinds == ("baseline",)
            col = style.color(labels[i], j) if base else style.shades(len(idx), "viridis")[j]
            ax.semilogy(lags, np.exp(logs[i].mean(0)), "-", color=col, label=labels[i])
            if logs.shape[1] > 1:
                ax.fill_between(lags, np.exp(logs[i].min(0)), np.exp(logs[i].max(0)), color=col, alpha=0.15,
                                lw=0)
        ax.axhline(1.0, color="0.5", lw=0.6, ls=":")
        style.finish(ax, xlabel=style.LAG, ylabel=style.JNORM, title=title, legend=False)
        if idx:
            ax.legend(fontsize=6, loc="lower left")
        else:
            style.note(ax, "none in this configuration", loc="upper right")
    ax = axes[2]
    y = np.arange(len(labels))
    one = data["lam"].shape[1] == 1  # one seed: no spread to draw
    ax.errorbar(data["lam"].mean(1), y, xerr=None if one else data["lam"].std(1), fmt="o", ms=4, mfc="none",
                capsize=2, label="λ₁ (measured)")
    ax.plot(data["rate"].mean(1), y, "s", ms=3, label="rate (fit)")
    pred = data["prediction"].mean(axis=1)  # nan where there is none
    ax.plot(pred, y, "k+", ms=7, label="prediction")
    th = data["threshold"]
    ax.axvspan(-th, th, color="0.85", lw=0)
    ax.axvline(0.0, color="0.4", lw=0.7)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    lo = max(float(np.nanmin(data["lam"])) - 0.05, -1.5)
    ax.set_xlim(lo, max(0.1, float(np.nanmax(data["lam"])) + 0.05))
    style.finish(ax, xlabel="ln per step", title=f"λ₁, rate and prediction (band: |·| ≤ {th:g})",
                 legend=False)
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"What keeps the gradients alive at initialization: d = {data['hidden']}, "
                 f"batch {data['batch']}, train mode, inputs N(0, {data['input_scale']:g}²), "
                 f"{_seeds(len(data['seeds']))}", fontsize=9)
    return {"cures": fig}


def table_rows(data: dict) -> list[dict]:
    """One dict per row: label, rate (mean, sd), λ₁ (mean, sd), prediction (mean or nan), its kind, verdict
    (``gradflow.summary.verdict_of`` of the mean rate at ``threshold``)."""
    data = nan_view(data)
    out = []
    for i, label in enumerate(data["labels"]):
        rate = data["rate"][i]
        pred = data["prediction"][i]
        out.append({"label": label, "kind": data["kinds"][i], "rate": float(rate.mean()),
                    "rate_sd": float(rate.std()),
                    "lam": float(data["lam"][i].mean()), "lam_sd": float(data["lam"][i].std()),
                    "prediction": float(np.mean(pred)) if not np.any(np.isnan(pred)) else math.nan,
                    "prediction_kind": data["prediction_kind"][i],
                    "verdict": verdict_of(float(rate.mean()), threshold=data["threshold"])})
    return out


def _seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def _spread(mean: float, sd: float, n_seeds: int) -> str:
    """``mean ± sd`` over seeds; the mean alone for one seed (its sd of 0 is no measured spread)."""
    return f"{mean:+.3f}" if n_seeds == 1 else f"{mean:+.3f} ± {sd:.3f}"


def legend(data: dict, rows: list[dict]) -> str:
    """The table's legend: what the rate, λ₁ and the verdict are, over how many seeds (one seed: "one seed (no
    spread)", and the table prints no ± for it), and, where a row has a mean-field prediction, that it is
    the wide layer's (d → ∞) at the measured d."""
    S = len(data["seeds"])
    over = "one seed (no spread)" if S == 1 else f"mean ± sd over {S} seeds"
    text = (f"Rate: slope of ln‖∂h_T/∂h_t‖₂ against lag (lags {data['fit_from']}–{data['T']}), {over}; λ₁: "
            f"top Lyapunov exponent (T = {data['lyap_T']}); verdict at ±{data['threshold']:g} ln/step.")
    if any(r["prediction_kind"] == "mean field" and not math.isnan(r["prediction"]) for r in rows):
        text += (f" Mean field: the prediction for a wide layer (d → ∞; here d = {data['hidden']}), so "
                 "measurement and prediction can differ at small d.")
    return text


def _findings(data: dict, rows: list[dict]) -> str:
    th = data["threshold"]
    alive = [r["label"] for r in rows if r["verdict"] == "neutral"]
    dead = [f"{r['label']} ({r['rate']:+.3f})" for r in rows if r["verdict"] != "neutral"]
    parts = [f"At initialization (d = {data['hidden']}, batch {data['batch']}, train mode, "
             f"{_seeds(len(data['seeds']))}), |rate| ≤ {th:g} ln/step holds for: "
             + (", ".join(alive) if alive else "none") + "; not for "
             + (", ".join(dead) if dead else "none") + "."]
    for i, label in enumerate(data["labels"]):
        if not math.isnan(data["gamma_x"][i]):
            parts.append(f"{label}: γ_x = {data['gamma_x'][i]:.3f}, the input carries "
                         f"{100 * data['input_share'][i]:.1f}% of the state's variance (50% at γ_x = γ_h).")
    fl = [i for i, k in enumerate(data["kinds"]) if k == "flossed"]
    if fl:
        secs = ", ".join(f"{data['labels'][i]} {data['floss_seconds'][i].mean():.1f} s" for i in fl)
        parts.append(f"Pre-flossing costs {data['floss_steps']} forward-and-backward passes over "
                     f"{data['floss_T']} steps with a QR per step ({secs} per network here, float32, CPU).")
    lru = [r for r, p in zip(rows, data["presets"], strict=True) if p == "lru"]
    for r in lru:
        parts.append(f"{r['label']}: rate {r['rate']:+.4f} against the exact ln max|λ| "
                     f"{r['prediction']:+.4f}.")
    return " ".join(parts)


def write_extra(data: dict) -> dict:
    """``cures.md``: the table "what keeps the gradients alive" and a findings paragraph from the data."""
    data = nan_view(data)
    rows = table_rows(data)
    S = len(data["seeds"])
    lines = ["### What keeps the gradients alive", "", legend(data, rows), "",
             "| cell | kind | rate at init | λ₁ | prediction | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        pred = "—" if math.isnan(r["prediction"]) else f"{r['prediction']:+.3f} ({r['prediction_kind']})"
        lines.append(f"| {r['label']} | {r['kind']} | {_spread(r['rate'], r['rate_sd'], S)} | "
                     f"{_spread(r['lam'], r['lam_sd'], S)} | {pred} | {r['verdict']} |")
    lines += ["", _findings(data, rows), ""]
    return {"cures.md": "\n".join(lines)}
