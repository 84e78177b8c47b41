"""cooijmans_fig1a: the Recurrent BN paper's Figure 1a in its own setting, beside the `bn_tanh` preset.

Cooijmans et al.'s Figure 1a (their public code, ``construct_rnn`` and ``plot_rnn_gradnorm.py``):
h_t = tanh(BN(h_{t-1} W_h + x_t W_x; γ, β = 0)), one BN after the sum, batch statistics per time step,
ε = 1e−5, W_h = I, W_x a unit-norm 1 × 100 row, h_0 = 0 (or primed with white noise), hidden 100, batch 100,
one pixel per step, loss = softmax cross-entropy of h_T W_y (W_y orthogonal 100 × 10, b_y = 0) at
initialization; plotted: ‖∂loss/∂h_t‖₂ over units, averaged over the batch, γ = 0.1 … 1.0.
Here that cell is ``CellSpec(norm_sum="bn", recurrent_init="identity", bias=False)`` (BN's β = 0 is the only
shift) with W_xh replaced by the unit row, float64. MNIST is not available offline: scikit-learn's 8 × 8
digits, upsampled (bilinear) to 20 × 20 and placed in a 28 × 28 frame with MNIST's 4-pixel empty border,
pixels in [0, 1] (784 steps; the first nonzero pixel of the batch comes at step ≈ 117), and MNIST-1D (40
standardized steps, no empty prefix) as a second input. Beside it the `bn_tanh` preset (one BN per path,
Gaussian W_hh, every BN γ set to the swept value) on the same inputs and loss.

∂loss/∂h_t for every t: a forward scan of gradflow's train-mode step, then a reverse scan of its VJP with
a running log scale (the norms span e^−300 … e^+600 at γ = 1, beyond float32 and near float64's limits).
Theory (``gradflow.unit_bn``): with W_h = I the backward pass splits into d one-unit problems in R^B; the
per-unit exponents of the one-unit batch-coupled Jacobians (NumPy, random start, independent of the loss)
are compared with the measured per-unit slopes, and the closed forms ln(γ/√ε) (zero-variance prefix) and
ln(2γ/sinh 2γ) (no-input two-cluster limit) are drawn.

Example::

    from analyses import cooijmans_fig1a as a
    data = a.run({**a.CONFIG, **a.QUICK})
    a.plot(data)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import gradflow
from analyses import style
from analyses.runner import memo, say
from gradflow import measure, unit_bn

NAME = "cooijmans_fig1a"
CONFIG = {
    "gammas": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
    "cells": ["fig1a", "bn_tanh"],
    "inputs": ["digits28", "mnist1d"],
    "h0": ["zero", "noise"],
    "noise_std": 1.0,
    "hidden": 100,
    "batch": 100,
    "eps": 1e-5,
    "frame": 28,
    "window": {"digits28": [250, 700], "mnist1d": [8, 32]},
    "seed": 0,
}
QUICK = {"gammas": [0.1, 1.0], "hidden": 6, "batch": 8, "frame": 12, "inputs": ["digits28"],
         "cells": ["fig1a"], "window": {"digits28": [60, 130]}}
FULL = {}

#: Fit windows shorter than this (MNIST-1D's 40 steps) are dominated by the alignment transient of the
#: backward cotangent, so the one-unit exponents are neither drawn nor quoted for them.
MIN_THEORY_WINDOW = 100


# ------------------------------------------------------------------------------------------------ inputs


def framed_digits(batch: int, seed: int, frame: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8 × 8 digits in an MNIST-like frame, read one pixel per step.

    Each image (values 0..16 → [0, 1]) is upsampled bilinearly to (frame − 8) × (frame − 8) (20 × 20 for a
    28 × 28 frame, MNIST's digit box) and placed with a 4-pixel empty border.

    Returns:
        (xs (frame², B) float64 in [0, 1], labels (B,) int).
    """
    import scipy.ndimage
    from sklearn.datasets import load_digits

    if frame < 12:
        raise ValueError(f"frame must be >= 12 (a 4-pixel border around at least 4 × 4), got {frame}")
    d = load_digits()
    idx = np.random.default_rng(seed).choice(len(d.target), size=batch, replace=False)
    box = frame - 8
    xs = np.zeros((batch, frame, frame))
    for k, i in enumerate(idx):
        img = scipy.ndimage.zoom(d.images[i] / 16.0, box / 8.0, order=1)
        xs[k, 4:4 + box, 4:4 + box] = np.clip(img[:box, :box], 0.0, 1.0)
    return xs.reshape(batch, -1).T.copy(), d.target[idx].astype(int)


def mnist1d_inputs(batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of MNIST-1D sequences (40 standardized steps; ``gradflow.tasks.mnist1d``).

    Returns:
        (xs (40, B) float64, labels (B,) int).
    """
    task = gradflow.tasks.mnist1d(num_samples=max(500, 2 * batch))
    xs, ys = task.sample(jax.random.key(seed), batch)
    return np.asarray(xs[:, :, 0], np.float64), np.asarray(ys, int)


def inputs_for(name: str, batch: int, seed: int, frame: int = 28):
    """(xs (T, B), labels (B,)) of input ``name`` ("digits28" or "mnist1d")."""
    if name == "digits28":
        return framed_digits(batch, seed, frame)
    if name == "mnist1d":
        return mnist1d_inputs(batch, seed)
    raise ValueError(f"unknown input {name!r}; choose 'digits28' or 'mnist1d'")


# ------------------------------------------------------------------------------------------ cells, setup


def orthogonal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """A (rows, cols) matrix with orthonormal columns (rows ≥ cols) or rows (rows < cols)."""
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    return q if rows >= cols else q.T


def make_setup(kind: str, gamma: float, d: int, T: int, seed: int, eps: float = 1e-5):
    """The cell, its variables at initialization (every BN γ = ``gamma``), the input row w and W_y.

    ``kind``: "fig1a" (one BN after the sum, W_hh = I, W_xh = a unit-norm column w) or "bn_tanh" (the preset:
    BN_h and BN_x, Gaussian W_hh, lecun W_xh, b = 0). float64; call under ``jax.enable_x64(True)``.

    Returns:
        (cell, variables, w (d,), W_y (d, 10)).
    """
    rng = np.random.default_rng(seed)
    w = orthogonal(rng, 1, d)[0]
    Wy = orthogonal(rng, d, 10)
    cell = _cell(kind, int(d), int(T), float(eps))
    variables = gradflow.init_cell(cell, jax.random.key(seed))
    variables = measure.with_scales(variables, scales={name: float(gamma) for name in variables["params"]
                                                       if name.startswith("bn_")})
    if kind == "fig1a":
        variables["params"]["W_xh"] = jnp.asarray(w[:, None])
    return cell, variables, w, Wy


def _cell(kind: str, d: int, T: int, eps: float):
    if kind == "fig1a":
        spec = gradflow.CellSpec(norm_sum="bn", recurrent_init="identity", bias=False, t_max=T, bn_eps=eps,
                                 dtype="float64")
        return measure.cell_for(spec, d, 1)
    if kind == "bn_tanh":
        return measure.cell_for("bn_tanh", d, 1, t_max=T, bn_eps=eps, dtype="float64")
    raise ValueError(f"unknown cell kind {kind!r}; choose 'fig1a' or 'bn_tanh'")


# ------------------------------------------------------------------------------------------ measurement


def _grad_log_norms_core(cell, variables, h0, xs, Wy, labels):
    """Log gradient norms going back in time (compiled once per cell through gradflow.measure)."""
    step = gradflow.as_step(cell, variables, train=True)
    B = h0.shape[0]
    c0 = {"h": h0, "t": jnp.zeros((B,), jnp.int32)}

    def fwd(c, x):
        return step(c, x), c

    cT, cs = jax.lax.scan(fwd, c0, xs)

    def loss(h):
        return -jnp.mean(jax.nn.log_softmax(h @ Wy)[jnp.arange(B), labels])

    def record(g, scale):
        absg = jnp.abs(g)
        unit = scale + jnp.log(jnp.linalg.norm(g, axis=0))
        per_example = jnp.log(jnp.linalg.norm(absg, axis=1))
        return scale + jnp.log(jnp.mean(jnp.exp(per_example))), unit

    def back(state, inp):
        g, scale = state
        c, x = inp
        n = jnp.linalg.norm(g)
        g, scale = g / n, scale + jnp.log(n)
        out = record(g, scale)
        _, vjp = jax.vjp(lambda h: step({**c, "h": h}, x)["h"], c["h"])
        return (vjp(g)[0], scale), out

    g = jax.grad(loss)(cT["h"])
    (g0, s0), (lm, lu) = jax.lax.scan(back, (g, jnp.zeros((), g.dtype)), (cs, xs), reverse=True)
    n0 = jnp.linalg.norm(g0)
    m0, u0 = record(g0 / n0, s0 + jnp.log(n0))
    return jnp.concatenate([m0[None], lm]), jnp.concatenate([u0[None], lu])


def grad_log_norms(cell, variables, h0, xs, Wy, labels) -> tuple[np.ndarray, np.ndarray]:
    """ln‖∂loss/∂h_t‖ for t = 0..T through gradflow's train-mode step, loss = softmax CE of h_T W_y.

    Args:
        cell, variables: a gradflow cell with input size 1 and its variables.
        h0: (B, d) initial state.
        xs: (T, B) inputs (one scalar per step).
        Wy: (d, C) readout; labels: (B,) ints.

    Returns:
        (log_mean_norm (T + 1,): ln mean_b ‖∂loss/∂h_t[b, :]‖, the paper's plotted quantity;
        log_unit_norm (T + 1, d): ln ‖∂loss/∂h_t[:, j]‖ over the batch). A running log scale keeps both
        finite over any length.
    """
    dt = jnp.dtype(cell.spec.dtype)
    f = measure.compiled(_grad_log_norms_core, cell)
    lm, lu = f(variables, jnp.asarray(h0, dt), jnp.asarray(xs, dt)[:, :, None], jnp.asarray(Wy, dt),
               jnp.asarray(labels, jnp.int32))
    lm, lu = np.asarray(lm, np.float64), np.asarray(lu, np.float64)
    if not np.all(np.isfinite(lm)):
        raise ValueError("non-finite gradient norm: the scaled backward pass over/underflowed")
    return lm, lu


def first_varying_step(xs: np.ndarray) -> int:
    """The first step t (1-based: x_t drives h_t) at which the input varies over the batch."""
    varying = np.flatnonzero(np.ptp(xs, axis=1) > 0)
    if varying.size == 0:
        raise ValueError("the input never varies over the batch")
    return int(varying[0]) + 1


def back_rate(log_norm: np.ndarray, t_a: int, t_b: int) -> np.ndarray:
    """Per-step log gain going back from h_{t_b} to h_{t_a}: (ln n_{t_a} − ln n_{t_b}) / (t_b − t_a)."""
    return (log_norm[t_a] - log_norm[t_b]) / (t_b - t_a)


# ------------------------------------------------------------------------------------------------- run


def _one_input(c, inp, progress):
    d, B, G = c["hidden"], c["batch"], len(c["gammas"])
    xs, labels = inputs_for(inp, B, c["seed"], c.get("frame", 28))
    T = xs.shape[0]
    t_a, t_b = c["window"][inp]
    if not 0 <= t_a < t_b <= T:
        raise ValueError(f"window {c['window'][inp]} outside 0..T = {T} for input {inp!r}")
    noise = c["noise_std"] * np.random.default_rng(c["seed"] + 1).standard_normal((B, d))
    h0s = {"zero": np.zeros((B, d)), "noise": noise}
    C, H = len(c["cells"]), len(c["h0"])
    out = {"log_norm": np.zeros((C, H, G, T + 1)), "rate": np.zeros((C, H, G)),
           "prefix_rate": np.zeros((C, G)), "unit_meas": np.zeros((H, G, d)),
           "unit_theory": np.zeros((H, G, d)), "T": T, "t0": first_varying_step(xs)}
    out["has_prefix"] = int(out["t0"] > 2 and "zero" in c["h0"])
    with jax.enable_x64(True):
        for i, kind in enumerate(c["cells"]):
            for j, g in enumerate(c["gammas"]):
                cell, v, w, Wy = make_setup(kind, g, d, T, c["seed"], c["eps"])
                for k, h0 in enumerate(c["h0"]):
                    lm, lu = grad_log_norms(cell, v, h0s[h0], xs, Wy, labels)
                    out["log_norm"][i, k, j] = lm
                    out["rate"][i, k, j] = back_rate(lm, t_a, t_b)
                    if h0 == "zero" and out["has_prefix"]:
                        out["prefix_rate"][i, j] = back_rate(lm, 0, out["t0"] - 1)
                    if kind == "fig1a":
                        out["unit_meas"][k, j] = back_rate(lu, t_a, t_b)
                        fwd = unit_bn.forward(xs, w, g, c["eps"], h0s[h0])
                        out["unit_theory"][k, j] = unit_bn.unit_exponents(fwd, t_a, t_b, seed=c["seed"])
            say(progress, f"{inp}, {kind}: rate (t {t_a}..{t_b}) = "
                + ", ".join(f"γ={g}: {r:+.3f}" for g, r in zip(c["gammas"], out["rate"][i, 0], strict=True)))
    return out


def run(config: dict, progress=None) -> dict:
    """Gradient norms across time for every input, cell, h_0 option and γ, with the one-unit theory.

    Returns:
        dict with, per input ``<in>`` in ``inputs``: ``<in>_log_norm`` (C, H, G, T + 1) ln mean_b‖∂loss/∂h_t‖
        for t = 0..T (cells × h_0 options × γ), ``<in>_rate`` (C, H, G) measured log gain per step going
        back over the window, ``<in>_prefix_rate`` (C, G) over the zero-variance prefix (h_0 = 0; 0 when
        ``<in>_has_prefix`` is 0: no empty prefix, or no h_0 = 0 run), ``<in>_t0`` the first step whose
        input varies, ``<in>_window`` (2,), ``<in>_unit_meas`` and ``<in>_unit_theory`` (H, G, d) the paper
        cell's per-unit log gains (measured; one-unit theory);
        plus ``gammas``, ``cells``, ``inputs``, ``h0``, ``two_point`` (G,) ln(2γ/sinh 2γ),
        ``zero_var`` (G,) ln(γ/√ε), and configuration scalars.
    """
    c = config
    if "fig1a" not in c["cells"]:
        raise ValueError("cells must include 'fig1a' (the theory compares against it)")
    data = {}
    for inp in c["inputs"]:
        part = memo(progress, inp, lambda inp=inp: _one_input(c, inp, progress))
        for k, v in part.items():
            data[f"{inp}_{k}"] = np.asarray(v)
        data[f"{inp}_window"] = np.asarray(c["window"][inp])
    gam = np.asarray(c["gammas"], float)
    data.update({
        "gammas": gam, "cells": list(c["cells"]), "inputs": list(c["inputs"]), "h0": list(c["h0"]),
        "two_point": np.array([unit_bn.two_point_log_gain(g) for g in gam]),
        "zero_var": np.array([unit_bn.zero_variance_log_gain(g, c["eps"]) for g in gam]),
        "hidden": c["hidden"], "batch": c["batch"], "eps": c["eps"], "noise_std": c["noise_std"],
    })
    return data


# ------------------------------------------------------------------------------------------------ plot


def _curves(ax, data, inp, i, k):
    t = np.arange(data[f"{inp}_log_norm"].shape[-1])
    cols = style.shades(len(data["gammas"]), "viridis")
    for j, g in enumerate(data["gammas"]):
        ax.plot(t, data[f"{inp}_log_norm"][i, k, j] / np.log(10.0), "-", color=cols[j], lw=1.0,
                label=f"γ = {g:g}")
    t0 = int(data[f"{inp}_t0"])
    if t0 > 2 and data["h0"][k] == "zero":
        ax.axvline(t0, color="0.6", lw=0.6, ls=":")
    lo, hi = data[f"{inp}_window"]
    ax.axvspan(lo, hi, color="0.92", lw=0, zorder=0)


def plot(data: dict) -> dict:
    """``cooijmans_fig1a``: log10 ‖∂loss/∂h_t‖ (mean over the batch of the norm over units; a linear axis of
    the log, since the norms span 10^−130 … 10^+260) against t, a row per input, a panel per cell × h_0
    option; ``cooijmans_fig1a_gain``: the per-step log gain against γ, measured and predicted."""
    inputs, cells, h0s = data["inputs"], data["cells"], data["h0"]
    ncol = len(cells) * len(h0s)
    fig, axes = style.figure(len(inputs), ncol, width=min(2.9 * ncol, 11.5), height=2.7 * len(inputs),
                             squeeze=False)
    for a, inp in enumerate(inputs):
        for i, kind in enumerate(cells):
            for k, h0 in enumerate(h0s):
                ax = axes[a, i * len(h0s) + k]
                _curves(ax, data, inp, i, k)
                title = f"{'paper cell' if kind == 'fig1a' else kind}, h_0 = {h0}" if a == 0 else None
                style.finish(ax, xlabel=style.TIME if a == len(inputs) - 1 else None, title=title,
                             ylabel=f"log10 ‖∂loss/∂h_t‖, {inp}" if i + k == 0 else None,
                             legend="lower right" if a == 0 and i + k == 0 else False, fontsize=5, ncol=2)
    fig.suptitle("Recurrent BN, Figure 1a setting (d = {hidden}, batch {batch}, ε = {eps:g}, softmax loss on "
                 "h_T, at init; γ = 0.1 … 1.0).\ndigits28 = scikit-learn's 8×8 digits upsampled to 20×20 "
                 "in a 28×28 frame with MNIST's empty border (not MNIST); dotted: first step whose pixel "
                 "varies over the batch; grey: fit window".format(hidden=data["hidden"], batch=data["batch"],
                                                      eps=data["eps"]), fontsize=7.5)
    return {"cooijmans_fig1a": fig, "cooijmans_fig1a_gain": _plot_gain(data)}


def _plot_gain(data):
    inputs, cells, h0s, gam = data["inputs"], data["cells"], data["h0"], data["gammas"]
    fig, axes = style.figure(1, len(inputs) + 1, width=min(3.6 * (len(inputs) + 1), 11.5), height=3.0,
                             squeeze=False)
    marks = {"zero": "o", "noise": "s"}
    for a, inp in enumerate(inputs):
        ax = axes[0, a]
        for i, kind in enumerate(cells):
            for k, h0 in enumerate(h0s):
                ax.plot(gam, data[f"{inp}_rate"][i, k], marks[h0] + "-", ms=3, lw=0.8,
                        color=style.color(kind, i), mfc="none" if h0 == "noise" else None,
                        label=f"{'paper cell' if kind == 'fig1a' else kind}, h_0 {h0}: measured")
        ut = data[f"{inp}_unit_theory"]
        lo, hi = data[f"{inp}_window"]
        if hi - lo >= MIN_THEORY_WINDOW:
            ax.plot(gam, ut[0].max(-1), "k--", lw=0.9, label="one-unit theory, slowest unit")
            ax.plot(gam, ut[0].mean(-1), "k:", lw=0.9, label="one-unit theory, unit mean")
        else:
            style.note(ax, f"{hi - lo} steps: too short for\nthe one-unit exponents\n(transient)",
                       "lower left")
        ax.plot(gam, data["two_point"], "-", color="0.6", lw=1.2, label="no-input limit ln(2γ/sinh 2γ)")
        ax.axhline(0, color="0.8", lw=0.5)
        style.finish(ax, xlabel="γ", ylabel="log gain per step going back" if a == 0 else None,
                     title=f"{inp}, steps {lo}..{hi}", legend="upper center" if a == 0 else False,
                     fontsize=6.5, bbox_to_anchor=(0.5, -0.2), ncol=2)  # below: the curves fill the panel
    ax = axes[0, -1]
    inp = next((i for i in inputs if int(data[f"{i}_has_prefix"])), inputs[0])
    for i, kind in enumerate(cells):
        ax.plot(gam, data[f"{inp}_prefix_rate"][i], "o", ms=3.5, color=style.color(kind, i),
                mfc="none" if kind != "fig1a" else None,
                label=f"{'paper cell' if kind == 'fig1a' else kind}, measured")
    ax.plot(gam, data["zero_var"], "k-", lw=0.9, label="ln(γ/√ε)")
    last = int(data[f"{inp}_t0"]) - 1
    style.finish(ax, xlabel="γ", title=f"zero-variance prefix (h_0 = 0, steps 1..{last})",
                 ylabel="log gain per step going back", legend="lower right", fontsize=6)
    fig.suptitle("Per-step log gain of ‖∂loss/∂h_t‖ going back in time: measured slope (markers) and the "
                 "one-unit theory of the paper's cell (W_h = I)", fontsize=8)
    return fig


# -------------------------------------------------------------------------------------------- findings


def write_extra(data: dict) -> dict:
    """``cooijmans_fig1a.md``: the measured and predicted per-step gains per γ, for the README."""
    gam, cells, h0s = data["gammas"], data["cells"], data["h0"]
    kf = cells.index("fig1a")
    lines = [f"Recurrent BN Figure 1a setting: d = {data['hidden']}, batch {data['batch']}, "
             f"ε = {data['eps']:g}; "
             "per-step log gain of mean_b‖∂loss/∂h_t‖ going back in time (negative: vanishes).", ""]
    for inp in data["inputs"]:
        lo, hi = data[f"{inp}_window"]
        ut, um = data[f"{inp}_unit_theory"], data[f"{inp}_unit_meas"]
        head = "| γ | " + " | ".join(f"{'paper cell' if c == 'fig1a' else c}, h_0 {h}" for c in cells
                                       for h in h0s)
        head += " | theory: slowest unit | max per-unit \\|meas − theory\\| | no-input ln(2γ/sinh 2γ) |"
        lines += [f"**{inp}**, steps {lo}..{hi} (first varying pixel: step {int(data[f'{inp}_t0'])}):", "",
                  head, "|" + "---|" * (len(cells) * len(h0s) + 4)]
        for j, g in enumerate(gam):
            row = [f"{data[f'{inp}_rate'][i, k, j]:+.3f}" for i in range(len(cells)) for k in range(len(h0s))]
            if hi - lo >= MIN_THEORY_WINDOW:
                row += [f"{ut[0, j].max():+.3f}", f"{np.abs(um[:, j] - ut[:, j]).max():.4f}"]
            else:
                row += ["–", "–"]
            row.append(f"{data['two_point'][j]:+.3f}")
            lines.append(f"| {g:g} | " + " | ".join(row) + " |")
        if int(data[f"{inp}_has_prefix"]):
            lines += ["", f"Zero-variance prefix ({inp}, h_0 = 0, steps 1..{int(data[f'{inp}_t0']) - 1}): "
                      "measured log gain per step " + ", ".join(
                          f"γ={g:g}: {data[f'{inp}_prefix_rate'][kf, j]:.4f} (ln(γ/√ε) = "
                          f"{data['zero_var'][j]:.4f})" for j, g in enumerate(gam)), ""]
        lines.append("")
    return {"cooijmans_fig1a.md": "\n".join(lines)}
