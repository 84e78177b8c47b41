"""batch_coupling: cross-example against per-example Jacobian blocks in train-mode BN, across batch sizes.

In train mode BN normalizes with the batch's statistics, so ∂h_T/∂h_t couples the examples: over the whole
batch state (n = B·d) it has per-example diagonal blocks ∂h_T^(a)/∂h_t^(a) and cross blocks
∂h_T^(a)/∂h_t^(b), a ≠ b (``gradflow.batch_block_norms``, one reverse pass). Shown against the lag for several
batch sizes: the ratio ‖cross‖_F / ‖diagonal‖_F.

The pitfall: a per-example Jacobian that treats the BN statistics as constants ("frozen": the mean and
variance each step actually had, read back into eval-mode statistics rows) is not the diagonal block of the
true batch Jacobian: it misses the projections BN applies to the tangent (the mean and variance directions),
and overstates the gradient. ``gradflow.frozen_statistics_comparison`` puts the two side by side; the frozen
step reproduces the true trajectory exactly (``traj_dev``), so the difference is the Jacobian only.

Example::

    from analyses import batch_coupling
    data = batch_coupling.run({**batch_coupling.CONFIG, **batch_coupling.QUICK})
    batch_coupling.plot(data)["batch_coupling"]
"""

from __future__ import annotations

import jax
import numpy as np

import gradflow
from analyses import common, style
from analyses.runner import memo, say
from gradflow import measure

NAME = "batch_coupling"
CONFIG = {
    "presets": ["bn_notanh", "bn_tanh"],
    "batch_sizes": [4, 8, 16, 32],
    "hidden": 32,
    "input_size": 8,
    "T": 100,
    "gain": 1.0,
    "input_scale": 1.0,
    "burn_in": 20,
    "seed": 0,
    "dtype": "float64",
}
QUICK = {"presets": ["bn_notanh"], "batch_sizes": [4, 8], "hidden": 6, "T": 20, "burn_in": 3}
FULL = {"batch_sizes": [4, 8, 16, 32, 64], "hidden": 64, "T": 300}


def _compare(cell, v_true, v_frozen, carry0, xs):
    """The frozen-statistics comparison and the largest state deviation (compiled via gradflow.measure)."""
    true_step = gradflow.as_step(cell, v_true, train=True)
    frozen_step = gradflow.as_step(cell, v_frozen, train=False)
    r = gradflow.frozen_statistics_comparison(true_step, frozen_step, carry0, xs)
    s_true = gradflow.unroll(true_step, carry0, xs)["h"]
    s_frozen = gradflow.unroll(frozen_step, carry0, xs)["h"]
    return r, jax.numpy.max(jax.numpy.abs(s_true - s_frozen))


def run(config: dict, progress=None) -> dict:
    """Block norms and the frozen-statistics comparison for each preset and batch size.

    Returns:
        dict with ``presets`` (P,), ``batch_sizes`` (Bn,), ``lags`` (T,) 1..T, arrays (P, Bn, T) by ascending
        lag: ``ratio`` ‖cross‖_F/‖diag‖_F, ``diag_total`` ‖diag‖_F, ``cross``, ``diag_spec`` and
        ``frozen_spec`` (geometric means over examples of the diagonal blocks' spectral norms, true and
        frozen),
        ``overstatement`` (geometric mean over examples of frozen / true); (P, Bn): ``frozen_cross_max``
        (max ‖cross‖ of the frozen step: 0 if it is per-example), ``traj_dev`` (max |h_true − h_frozen|).
    """
    c = config
    P, NB, T = len(c["presets"]), len(c["batch_sizes"]), c["T"]
    out = {k: np.zeros((P, NB, T)) for k in ("ratio", "diag_total", "cross", "diag_spec", "frozen_spec",
                                             "overstatement")}
    fcross, dev = np.zeros((P, NB)), np.zeros((P, NB))
    with jax.enable_x64(c["dtype"] == "float64"):
        for i, p in enumerate(c["presets"]):
            for j, B in enumerate(c["batch_sizes"]):
                def one(p=p, B=B):
                    cell, v, c0, xs, _ = common.setup(p, c["hidden"], c["input_size"], B, T, c["seed"],
                                                       c["input_scale"], burn_in=c["burn_in"],
                                                       gain=float(c["gain"]), t_max=int(T), bn_momentum=0.0,
                                                       dtype=c["dtype"])
                    # momentum 0: each statistics row becomes exactly the batch moments of its step.
                    stacked = jax.tree.map(lambda a: a[None], c0)
                    v_frozen = measure.collect_batch_stats(cell, v, stacked, xs[None])
                    r, d = measure.compiled(_compare, cell)(v, v_frozen, c0, xs)
                    rev = lambda a: np.asarray(a, np.float64)[::-1].copy()  # engine order t -> ascending lag
                    gm = lambda a: np.exp(np.mean(np.log(np.asarray(a, np.float64)), axis=1))[::-1].copy()
                    return {"ratio": rev(r.true.ratio), "diag_total": rev(r.true.diagonal_total),
                            "cross": rev(r.true.cross), "diag_spec": gm(r.true.diagonal_spectral),
                            "frozen_spec": gm(r.frozen.diagonal_spectral),
                            "overstatement": gm(r.overstatement),
                            "frozen_cross_max": float(np.max(np.asarray(r.frozen.cross))), "dev": float(d)}

                r = memo(progress, f"{p}_B{B}", one)
                for k in out:
                    out[k][i, j] = r[k]
                fcross[i, j], dev[i, j] = r["frozen_cross_max"], r["dev"]
                say(progress, f"{p} B={B}: cross/diag at lag 1, {T}: {r['ratio'][0]:.3f}, "
                    f"{r['ratio'][-1]:.3f}; frozen overstates lag {T} by {r['overstatement'][-1]:.3g}x "
                    f"(trajectory dev {r['dev']:.1e})")
    return {**out, "presets": list(c["presets"]), "batch_sizes": np.asarray(c["batch_sizes"]),
            "lags": np.arange(1, T + 1), "frozen_cross_max": fcross, "traj_dev": dev, "hidden": c["hidden"],
            "T": T, "gain": float(c["gain"])}


def plot(data: dict) -> dict:
    """``batch_coupling``: cross/diagonal ratio, true vs frozen diagonal norms, the overstatement factor."""
    fig, (a1, a2, a3) = style.figure(1, 3, width=11.0, height=3.4)
    lags, Bs = data["lags"], data["batch_sizes"]
    cols = style.shades(len(Bs), "viridis")
    styles = ["-", "--", ":", "-."]
    for i, p in enumerate(data["presets"]):
        ls = styles[i % len(styles)]
        for j, B in enumerate(Bs):
            a1.plot(lags, data["ratio"][i, j], ls, color=cols[j], label=f"B = {B}" if i == 0 else None)
            a3.semilogy(lags, data["overstatement"][i, j], ls, color=cols[j],
                        label=f"B = {B}" if i == 0 else None)
        a1.plot([], [], ls, color="0.3", label=p)
        a3.plot([], [], ls, color="0.3", label=p)
    a1.set_yscale("log")
    style.finish(a1, xlabel=style.LAG, ylabel="‖cross-example blocks‖_F / ‖per-example blocks‖_F",
                  title="batch coupling through BN statistics", legend="best", fontsize=6.5)
    jmid = int(np.argmin(np.abs(Bs - 8))) if len(Bs) else 0
    for i, p in enumerate(data["presets"]):
        col = style.color(p, i)
        a2.semilogy(lags, data["diag_spec"][i, jmid], "-", color=col, label=f"{p}: true diagonal block")
        a2.semilogy(lags, data["frozen_spec"][i, jmid], "--", color=col, label=f"{p}: frozen statistics")
    style.finish(a2, xlabel=style.LAG, ylabel="per-example block ‖∂h_T^(a)/∂h_t^(a)‖₂",
                  title=f"true vs frozen-statistics Jacobian (B = {Bs[jmid]})", legend="lower left",
                  fontsize=6.5)
    T = int(lags[-1])
    at_T = f"at lag {T}: " + ", ".join(
        f"{p} B={B}: {data['overstatement'][i, j, -1]:.3g}×" for i, p in enumerate(data["presets"])
        for j, B in enumerate(Bs) if B == Bs[jmid])
    a1.set_yticks([0.25, 0.5, 1, 2, 4])
    style.plain_log_ticks(a1)
    # the curves fill the panel: legend (with the lag-T numbers as its title) below it
    style.finish(a3, xlabel=style.LAG, ylabel="frozen / true diagonal-block spectral norm",
                  title="overstatement by the frozen-statistics shortcut", legend=False)
    a3.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=6.5, title=at_T,
              title_fontsize=6.5)
    fig.suptitle(f"Train-mode BN couples the batch (d = {data['hidden']}, gain {data['gain']:g}, n = B·d, "
                 "at initialization, driven by N(0, 1) inputs)", fontsize=9)
    return {"batch_coupling": fig}
