"""findings: the findings table and a plain answer, generated from the other analyses' saved data.

Runs last (``DEPENDS``); reads only their data, so every number in ``figures/findings.md`` and
``figures/findings.json`` comes from code in this repository (``python -m analyses`` reproduces them; the
source of each number is named in the table's notes). Classification of a per-step rate r (natural log per
step): "explodes" if r > +θ, "vanishes" if r < −θ, else "neutral", with θ = ``threshold`` (0.01 ln/step: the
norm changes by less than a factor e over 100 steps).

Example::

    from analyses import runner, findings
    inputs = {n: runner.load_data(f"figures/data/{n}") for n in findings.DEPENDS}
    data = findings.run(findings.CONFIG, inputs=inputs)
    print(data["table_md"])
"""

from __future__ import annotations

import json

import numpy as np

from analyses import style
from gradflow.summary import verdict_of

NAME = "findings"
DEPENDS = ("decay", "lengths", "lyapunov", "spectra", "bn_modes", "batch_coupling", "gamma_init", "dropout",
           "theory")
CONFIG = {"threshold": 0.01, "reference_gain": 1.0}
QUICK: dict = {}
FULL: dict = {}

COMMAND = "make figures  (python -m analyses; add --force to recompute, --only NAME to select)"


VERB = {"vanishes": "vanish", "explodes": "explode", "neutral": "stay neutral"}


def _fmt(x: float, nd: int = 3) -> str:
    return f"{x:+.{nd}f}"


def _find(names, name) -> int | None:
    names = list(names)
    return names.index(name) if name in names else None


def run(config: dict, progress=None, inputs: dict | None = None) -> dict:
    """Build the table rows and the answer text.

    Args:
        config: ``threshold`` (ln/step) and ``reference_gain`` (the gain whose rate is tabulated).
        progress: progress callback (unused but for one line).
        inputs: name -> data of the analyses in ``DEPENDS`` that are present.

    Returns:
        dict with per-preset columns (lists / arrays of equal length P): ``preset``, ``rate`` (decay slope
        at the reference gain, mean over seeds), ``rate_sd`` (sd over seeds), ``rate_se`` (fit s.e.),
        ``verdict``, ``explodes_at`` / ``vanishes_at`` / ``neutral_at`` (gains, as text), ``lam1`` /
        ``lam1_se`` / ``has_lam1`` (top Lyapunov exponent at the reference gain), ``theory`` / ``has_theory``,
        ``rate_long`` / ``has_long`` ((1/T) ln‖∂h_T/∂h_0‖₂ at the longest T), ``eff_rank`` / ``has_rank``
        (effective rank / n at the longest lag); ``table_md``, ``answer_md``, ``notes_md`` (Markdown); the
        thresholds.
    """
    inputs = inputs or {}
    th = float(config["threshold"])
    g_ref = float(config["reference_gain"])
    dec = inputs["decay"]
    presets = list(dec["presets"])
    gains = np.asarray(dec["gains"], float)
    cols: dict = {k: [] for k in COLUMNS}
    for i, p in enumerate(presets):
        row = {**_decay_columns(dec, i, gains, g_ref, th),
               **_lyapunov_columns(inputs.get("lyapunov"), p, g_ref),
               **_long_columns(inputs.get("lengths"), inputs.get("spectra"), p)}
        for k in COLUMNS:
            cols[k].append(row[k])
    table = _table_md(presets, cols, g_ref, inputs)
    answer = _answer(presets, cols, gains, inputs, th)
    notes = _notes_md(dec, gains, th, inputs)
    if progress is not None:
        progress(f"{len(presets)} presets tabulated")
    arrays = {k: (v if isinstance(v[0], str) else np.asarray(v)) for k, v in cols.items()}
    return {"preset": presets, **arrays,
            "table_md": table, "answer_md": answer, "notes_md": notes, "threshold": th,
            "reference_gain": g_ref, "gains": gains}


COLUMNS = ("rate", "rate_sd", "rate_se", "verdict", "explodes_at", "vanishes_at", "neutral_at", "lam1",
           "lam1_se", "has_lam1", "theory", "has_theory", "rate_long", "has_long", "eff_rank", "has_rank",
           "gain_spread")


def _decay_columns(dec: dict, i: int, gains, g_ref: float, th: float) -> dict:
    """The decay fit's columns of preset ``i``: rate at the reference gain, verdicts over the gains."""
    j_ref = int(np.argmin(np.abs(gains - g_ref)))
    r = np.asarray(dec["rate"][i])  # (G, S)
    mean = r.mean(axis=1)
    by = {"explodes": [], "vanishes": [], "neutral": []}
    for j, g in enumerate(gains):
        by[verdict_of(float(mean[j]), threshold=th)].append(f"{g:g}")
    return {"rate": float(mean[j_ref]), "rate_sd": float(r[j_ref].std(ddof=1)) if r.shape[1] > 1 else 0.0,
            "rate_se": float(np.asarray(dec["rate_se"][i])[j_ref].mean()),
            "verdict": verdict_of(float(mean[j_ref]), threshold=th),
            "explodes_at": ", ".join(by["explodes"]) or "none",
            "vanishes_at": ", ".join(by["vanishes"]) or "none",
            "neutral_at": ", ".join(by["neutral"]) or "none", "gain_spread": float(mean.max() - mean.min())}


def _lyapunov_columns(ly: dict | None, p: str, g_ref: float) -> dict:
    """λ₁ ± s.e. and the theory value of preset ``p`` at the reference gain (has_* = 0 where absent)."""
    out = {"lam1": 0.0, "lam1_se": 0.0, "has_lam1": 0, "theory": 0.0, "has_theory": 0}
    if ly is None:
        return out
    at_ref = np.abs(np.asarray(ly["top_gain"]) - g_ref) < 1e-9
    m = np.flatnonzero((np.asarray(ly["top_preset"]) == p) & at_ref)
    if m.size:
        k = int(m[0])
        out.update(lam1=float(ly["top_exp"][k]), lam1_se=float(ly["top_se"][k]), has_lam1=1)
        if int(ly["top_has_theory"][k]):
            out.update(theory=float(ly["top_theory"][k]), has_theory=1)
    return out


def _long_columns(le: dict | None, sp: dict | None, p: str) -> dict:
    """The long-run rate (analysis `lengths`) and the effective rank fraction (analysis `spectra`)."""
    out = {"rate_long": 0.0, "has_long": 0, "eff_rank": 0.0, "has_rank": 0}
    if le is not None and (k := _find(le["presets"], p)) is not None:
        out.update(rate_long=float(np.asarray(le["rate"])[k, -1]), has_long=1)
    if sp is not None and (k := _find(sp["presets"], p)) is not None:
        out.update(eff_rank=float(np.asarray(sp["eff_rank"])[k, -1] / np.asarray(sp["n"])[k]), has_rank=1)
    return out


def _table_md(presets, cols, g_ref: float, inputs: dict) -> str:
    le, sp = inputs.get("lengths"), inputs.get("spectra")
    T_long = int(np.asarray(le["lengths"])[-1]) if le is not None else 0
    max_lag = int(np.asarray(sp["rank_lags"])[-1]) if sp is not None else 0
    lines = [
        f"| preset | rate at g = {g_ref:g} (ln/step) | verdict | explodes at g ∈ | vanishes at g ∈ | "
        f"λ₁ at g = {g_ref:g} | theory λ₁ | (1/T) ln‖∂h_T/∂h_0‖₂, T = {T_long} | eff. rank / n, lag "
        f"{max_lag} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(presets):
        rate = f"{_fmt(cols['rate'][i])} ± {cols['rate_sd'][i]:.3f}"
        lam = f"{_fmt(cols['lam1'][i])} ± {cols['lam1_se'][i]:.3f}" if cols["has_lam1"][i] else "—"
        theo = _fmt(cols["theory"][i]) if cols["has_theory"][i] else "—"
        lon = _fmt(cols["rate_long"][i], 4) if cols["has_long"][i] else "—"
        rk = f"{cols['eff_rank'][i]:.3f}" if cols["has_rank"][i] else "—"
        lines.append(f"| `{p}` | {rate} | {cols['verdict'][i]} | {cols['explodes_at'][i]} | "
                     f"{cols['vanishes_at'][i]} | {lam} | {theo} | {lon} | {rk} |")
    return "\n".join(lines)


def _notes_md(dec: dict, gains, th: float, inputs: dict) -> str:
    le = inputs.get("lengths")
    T_long = int(np.asarray(le["lengths"])[-1]) if le is not None else 0
    seeds = len(np.asarray(dec["seeds"]))
    return "\n".join([
        f"- Rate: least-squares slope of ln‖∂h_T/∂h_t‖₂ against the lag over lags "
        f"{dec['fit_from']}–{dec['T']} "
        f"(analysis `decay`: d = {dec['hidden']}, batch {dec['batch']}, train mode, driven by N(0, "
        f"1) inputs, "
        f"at initialization), mean ± sd over {seeds} seeds; gains tried: "
        f"{', '.join(f'{g:g}' for g in gains)}.",
        f"- Verdict: explodes if rate > +{th:g}, vanishes if rate < −{th:g} ln/step (a factor e per "
        f"{1 / th:.0f} steps), else neutral.",
        "- λ₁: top Lyapunov exponent ± s.e. over segments (analysis `lyapunov`, Benettin QR); theory: "
        "`gradflow.theory.predict_rate` (mean field) for the same size, batch and input variance; for "
        "`linear` the exact ln ρ(W_hh) of the measured matrix. The verdict uses the decay fit over lags "
        f"{dec['fit_from']}–{dec['T']}; the T = {T_long} column shows the long-run rate beside it.",
        f"- (1/T) ln‖∂h_T/∂h_0‖₂ at T = {T_long}: analysis `lengths` (forward product, log-renormalized).",
        "- Effective rank: exp(entropy of σ_i/Σσ) of ∂h_T/∂h_t divided by the state size n "
        "(analysis `spectra`).",
        f"- Reproduce: `{COMMAND}`; this table is `figures/findings.md`, its numbers "
        f"`figures/findings.json`.",
    ])


def _answer(presets, cols, gains, inputs, th) -> str:
    """The plain-language answer, each number read from the data, each adjective chosen by a threshold."""
    ctx = {"presets": presets, "cols": cols, "gains": gains, "inputs": inputs, "th": th}
    out = [text for para in PARAGRAPHS if (text := para(ctx))]
    verdict = _verdict_para(ctx)
    return "\n\n".join(([verdict] if verdict else []) + out)


def _rate_of(ctx, p):
    cols = ctx["cols"]
    i = ctx["presets"].index(p)
    return cols["rate"][i], cols["rate_sd"][i], cols["verdict"][i], cols["gain_spread"][i], i


def _gain_clause(ctx, p) -> str:
    _, _, _, spread, i = _rate_of(ctx, p)
    gains, cols = ctx["gains"], ctx["cols"]
    if spread < ctx["th"]:
        return (f"the recurrent gain has no effect (rates at g = {gains[0]:g}…{gains[-1]:g} differ by "
                f"{spread:.4f} ln/step: the normalization removes W_hh's scale)")
    return (f"it explodes at g ∈ {{{cols['explodes_at'][i]}}} and vanishes at g ∈ "
            f"{{{cols['vanishes_at'][i]}}}")


def _proposals_para(ctx) -> str:
    out, cols = [], ctx["cols"]
    for p, name in (("bn_notanh", "BN in place of tanh (`bn_notanh`)"),
                    ("ln_notanh", "LN on the recurrent path, BN on the input, dropout 0.2 (`ln_notanh`)")):
        if p not in ctx["presets"]:
            continue
        r, sd, verdict, _, i = _rate_of(ctx, p)
        s = (f"**{name}**: at initialization its gradients **{VERB[verdict]}**: ‖∂h_T/∂h_t‖₂ changes by "
             f"{_fmt(r)} ± {sd:.3f} ln per step (a factor {np.exp(100 * r):.2g} over 100 steps); "
             f"{_gain_clause(ctx, p)}.")
        if cols["has_theory"][i]:
            s += (f" The mean-field prediction is {_fmt(cols['theory'][i])} ln/step against a measured top "
                  f"Lyapunov exponent of {_fmt(cols['lam1'][i])} ± {cols['lam1_se'][i]:.3f}.")
        if cols["has_long"][i]:
            s += f" Over the longest sequences the rate is {_fmt(cols['rate_long'][i], 4)} ln/step."
        out.append(s)
    return "\n\n".join(out)


def _tanh_para(ctx) -> str | None:
    if "tanh" not in ctx["presets"]:
        return None
    r, sd, verdict, _, i = _rate_of(ctx, "tanh")
    gains = ctx["gains"]
    return (f"**For comparison, `tanh`** at g = {gains[np.argmin(np.abs(gains - 1))]:g}: {verdict} "
            f"({_fmt(r)} ± {sd:.3f} ln/step); {_gain_clause(ctx, 'tanh')}.")


def _bn_modes_para(ctx) -> str | None:
    bm, th = ctx["inputs"].get("bn_modes"), ctx["th"]
    if bm is None:
        return None
    tr, ev = float(bm["rate_train"]), float(bm["rate_eval"])
    return (f"**Train vs eval mode (`{bm['preset']}`)**: beyond the {int(bm['T_stats'])} steps its running "
            f"statistics came from, train mode {verdict_of(tr, threshold=th)} at {_fmt(tr)} and eval "
            f"mode {verdict_of(ev, threshold=th)} at {_fmt(ev)} ln/step (eval mode is a fixed linear "
            f"map there: exact rate ln ρ(A) = {_fmt(float(bm['eval_rate_theory']))}).")


def _batch_coupling_para(ctx) -> str | None:
    bc = ctx["inputs"].get("batch_coupling")
    if bc is None:
        return None
    Bs = list(np.asarray(bc["batch_sizes"]))
    i = _find(bc["presets"], "bn_notanh")
    i = 0 if i is None else i
    T = int(np.asarray(bc["lags"])[-1])
    over = ", ".join(f"B = {B}: {float(np.asarray(bc['overstatement'])[i, j, -1]):.3g}×"
                     for j, B in enumerate(Bs))
    ratio = ", ".join(f"{float(np.asarray(bc['ratio'])[i, j, -1]):.2f}" for j in range(len(Bs)))
    return (f"**Batch coupling (`{list(bc['presets'])[i]}`, train mode)**: at lag {T} the cross-example "
            f"blocks of ∂h_T/∂h_t have {ratio} times the norm of the per-example blocks (B = "
            f"{', '.join(str(b) for b in Bs)}); a per-example Jacobian with the BN statistics frozen "
            f"overstates the true diagonal block by {over}.")


def _gamma_init_para(ctx) -> str | None:
    gi = ctx["inputs"].get("gamma_init")
    if gi is None:
        return None
    gam = np.asarray(gi["gammas"])
    a = len(np.asarray(gi["input_sizes"])) - 1
    n_in = int(np.asarray(gi["input_sizes"])[a])
    parts = [f"`{p}` " + ", ".join(f"γ={g:g}: {_fmt(float(x))}"
                                   for g, x in zip(gam, np.asarray(gi["rate"])[a, k], strict=True))
             for k, p in enumerate(gi["presets"])]
    return (f"**BN γ initialisation** (rate of ‖∂L/∂h_t‖ going back in time, {n_in} inputs/step, ln/step; "
            f"positive = grows): " + "; ".join(parts) + ".")


def _dropout_para(ctx) -> str | None:
    dr, th = ctx["inputs"].get("dropout"), ctx["th"]
    if dr is None:
        return None
    p_, modes = np.asarray(dr["p"]), list(dr["modes"])
    i0 = next((i for i in range(len(p_)) if p_[i] == 0), None)
    i2 = next((i for i in range(len(p_)) if abs(p_[i] - 0.2) < 1e-9 and modes[i] == "step"), None)
    if i0 is None or i2 is None:
        return None
    l0, l2 = float(np.asarray(dr["lyap"])[i0]), float(np.asarray(dr["lyap"])[i2])
    v0, v2 = verdict_of(l0, threshold=th), verdict_of(l2, threshold=th)
    head = (f"**Dropout 0.2 on `{dr['preset']}`**: top Lyapunov exponent {_fmt(l0)} without and "
            f"{_fmt(l2)} with a fresh mask per step")
    if v0 != v2:
        return head + ": it changes the verdict."
    return head + f" (difference {_fmt(l2 - l0)} ln/step); it does not change the verdict ({v0} → {v2})."


def _theory_para(ctx) -> str | None:
    tv, th = ctx["inputs"].get("theory"), ctx["th"]
    if tv is None or "families" not in tv:
        return None
    fams = list(tv["families"])
    worst = ", ".join(f"`{f}` {float(w):.3f}" for f, w in zip(fams, tv["max_abs_diff"], strict=True))
    text = (f"**Mean field against measurement** (analysis `theory`, d = {tv['hidden']}, top exponent "
            f"of a jvp tangent, mean over {tv['n_seeds']} seed(s)): largest |measured − predicted| "
            f"per family, ln/step: {worst}; the causes of the larger ones are in docs/theory.md §6 "
            "(small batches and few input features for BN, tied weights for LN, the draw-to-draw "
            "scatter of autonomous chaotic runs, ln ρ(W_hh) ≠ ln g at finite d below the edge of "
            "chaos).")
    if "bn_notanh" in fams and 0.0 in list(np.asarray(tv["bn_notanh_x"])):
        j = list(np.asarray(tv["bn_notanh_x"])).index(0.0)
        m = np.asarray(tv["bn_notanh_measured"])[:, j].mean(-1)
        pr = np.asarray(tv["bn_notanh_predicted"])[:, j].mean(-1)
        pairs = "; ".join(f"{lab}: {_fmt(float(a))} (predicted {_fmt(float(b))}, "
                          f"{verdict_of(float(a), threshold=th)})"
                          for lab, a, b in zip(tv["bn_notanh_curves"], m, pr, strict=True))
        text += (" Without input (γ_x = 0) `bn_notanh` in train mode measures " + pairs
                 + ": the balance of γ_x against γ_h and the batch size, not the gain, set the rate.")
    return text


def _verdict_para(ctx) -> str | None:
    """The plain answer to the question, from the verdicts of the two proposals."""
    presets, cols = ctx["presets"], ctx["cols"]
    verdicts = {p: cols["verdict"][presets.index(p)] for p in ("bn_notanh", "ln_notanh") if p in presets}
    if not verdicts:
        return None
    what = "; ".join(f"the gradients of `{p}` {VERB[v]}" for p, v in verdicts.items())
    explode_any = [p for p in verdicts if cols["explodes_at"][presets.index(p)] != "none"]
    if all(v == "neutral" for v in verdicts.values()):
        text = ("Yes, at initialization: with normalization in place of tanh the gradient norms stay within "
                f"the neutral band ({what}).")
    elif not explode_any:
        text = (f"No. Normalization in place of tanh does not remove the problem at initialization: {what}. "
                "No gain we tried makes them explode, so it trades exploding gradients for vanishing ones "
                "rather than curing both.")
    else:
        text = (f"No. Normalization in place of tanh does not remove the problem at initialization: {what}; "
                f"{', '.join(explode_any)} also explode at some gains.")
    return "**Answer.** " + text


#: The answer's paragraphs after the verdict, in order; each returns None when its analysis is absent.
PARAGRAPHS = (_proposals_para, _tanh_para, _bn_modes_para, _batch_coupling_para, _gamma_init_para,
              _dropout_para, _theory_para)

def write_extra(data: dict) -> dict:
    """``findings.md`` (table, answer, notes) and ``findings.json`` (rows with their numbers)."""
    md = "\n\n".join(["# Findings (generated by `python -m analyses`; do not edit by hand)",
                      data["answer_md"], "## Per-preset rates at initialization", data["table_md"],
                      "### How each number is made", data["notes_md"]]) + "\n"
    rows = []
    for i, p in enumerate(data["preset"]):
        row = {"preset": p, "rate": float(data["rate"][i]), "rate_sd": float(data["rate_sd"][i]),
               "rate_fit_se": float(data["rate_se"][i]), "verdict": data["verdict"][i],
               "explodes_at_gains": data["explodes_at"][i], "vanishes_at_gains": data["vanishes_at"][i],
               "neutral_at_gains": data["neutral_at"][i], "gain_spread": float(data["gain_spread"][i])}
        if int(data["has_lam1"][i]):
            row.update(lambda1=float(data["lam1"][i]), lambda1_se=float(data["lam1_se"][i]))
        if int(data["has_theory"][i]):
            row["theory_lambda1"] = float(data["theory"][i])
        if int(data["has_long"][i]):
            row["rate_longest_T"] = float(data["rate_long"][i])
        if int(data["has_rank"][i]):
            row["effective_rank_fraction"] = float(data["eff_rank"][i])
        rows.append(row)
    js = {"threshold_ln_per_step": data["threshold"], "reference_gain": data["reference_gain"], "rows": rows,
          "answer_md": data["answer_md"], "command": COMMAND}
    return {"findings.md": md, "findings.json": json.dumps(js, indent=1) + "\n"}


def plot(data: dict) -> dict:
    """``findings``: per-step rate per preset with the neutral band, λ₁ and the theory where they exist."""
    presets = list(data["preset"])
    P = len(presets)
    fig, ax = style.figure(1, 1, width=10.0, height=3.4)
    x = np.arange(P)
    th = data["threshold"]
    ax.axhspan(-th, th, color="0.85", lw=0, label=f"neutral band (|rate| ≤ {th:g})")
    ax.axhline(0, color="0.4", lw=0.7)
    for i, p in enumerate(presets):
        ax.bar(i, data["rate"][i], color=style.color(p, i), alpha=0.75, width=0.6)
    ax.errorbar(x, data["rate"], yerr=data["rate_sd"], fmt="none", ecolor="k", capsize=2, lw=0.8)
    has = np.asarray(data["has_lam1"], bool)
    ax.errorbar(x[has], np.asarray(data["lam1"])[has], yerr=np.asarray(data["lam1_se"])[has], fmt="o",
                color="k", ms=3.5, mfc="white", capsize=2, lw=0.8, label="λ₁ (lyapunov)")
    ht = np.asarray(data["has_theory"], bool)
    ax.plot(x[ht], np.asarray(data["theory"])[ht], "_", color="#d62728", ms=14, mew=2,
            label="theory λ₁ (mean field)")
    from matplotlib.patches import Patch

    handles, labels = ax.get_legend_handles_labels()
    handles.append(Patch(color="0.6", alpha=0.75))
    labels.append(f"rate at g = {data['reference_gain']:g} (decay fit, colour per preset) ± sd over seeds")
    ax.set_xticks(x)
    ax.set_xticklabels(presets, rotation=35, ha="right")
    style.finish(ax, ylabel=style.RATE, legend=False,
                  title="Per-step gradient growth at initialization: < 0 vanishes, > 0 explodes")
    ax.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=6.5)
    return {"findings": fig}
