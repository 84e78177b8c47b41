"""bn_modes: ``bn_notanh`` in train mode (batch statistics) against eval mode (running averages).

The running averages come from running the cell in train mode with mutable ``batch_stats`` over ``n_stats``
sequences of length ``T_stats`` (per-time-step statistics, t_max = T_stats), as training would. Both modes are
then run on a longer sequence (``T_long`` > T_stats): eval mode reuses the last statistics row (T_stats − 1)
beyond T_stats, so from there on the recurrence is the fixed affine map h ↦ A h + b_t with
A = diag(γ_h / √(var + ε)) W_hh, whose exact growth rate is ln ρ(A) (``gradflow.theory.cell_eval_matrix``).
Shown: ln‖∂h_T/∂h_0‖ against T (forward product of the step Jacobians, log-renormalized), the forward
state norm, and ln ρ(A_t) of every statistics row.

Example::

    from analyses import bn_modes
    data = bn_modes.run({**bn_modes.CONFIG, **bn_modes.QUICK})
    bn_modes.plot(data)["bn_modes"]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import gradflow
from analyses import common, style
from analyses.runner import memo, say
from gradflow import measure

NAME = "bn_modes"
CONFIG = {
    "preset": "bn_notanh",
    "hidden": 32,
    "input_size": 8,
    "batch": 8,
    "T_stats": 100,
    "n_stats": 60,
    "T_long": 1000,
    "checkpoints": [10, 30, 100, 300, 1000],
    "input_scale": 1.0,
    "gain": 1.0,
    "seed": 0,
    "dtype": "float64",
}
QUICK = {"hidden": 6, "batch": 4, "T_stats": 15, "n_stats": 5, "T_long": 60, "checkpoints": [10, 30, 60]}
FULL = {"hidden": 64, "batch": 16, "T_long": 3000, "n_stats": 100,
        "checkpoints": [10, 30, 100, 300, 1000, 3000]}


def run(config: dict, progress=None) -> dict:
    """Collect running statistics, then measure both modes on a long sequence.

    Returns:
        dict with ``T`` (T_long,), ``log_fro_train`` / ``log_fro_eval`` (T_long,) ln‖∂h_T/∂h_0‖_F,
        ``checkpoints`` (K,), ``log_spec_train`` / ``log_spec_eval`` (K,) ln‖∂h_T/∂h_0‖₂,
        ``state_train`` / ``state_eval`` (T_long,) RMS over the batch of ‖h_t‖₂, ``rows`` (T_stats,),
        ``log_rho_rows`` (T_stats,) ln ρ(A_t) and ``log_norm_rows`` (T_stats,) ln‖A_t‖₂ of each statistics
        row, ``eval_rate_theory`` = ln ρ(A_last), ``rate_train`` / ``rate_eval``: slopes of ln‖·‖_F over
        T ∈ [T_stats, T_long], plus configuration scalars.
    """
    c = config

    def compute():
        with jax.enable_x64(c["dtype"] == "float64"):
            opts = {"t_max": int(c["T_stats"]), "dtype": c["dtype"]}
            cell, v, c0, xs, key = common.setup(c["preset"], c["hidden"], c["input_size"], c["batch"],
                                                 c["T_long"], c["seed"], c["input_scale"],
                                                 gain=float(c["gain"]), **opts)
            # Statistics sequences: fresh inputs and random initial states (a zero h_0 would give BN_h a zero
            # batch variance at t = 0 and a running variance near 0 in row 0).
            ks, kh = jax.random.split(jax.random.key(c["seed"] + 1000))
            N, Ts, B, d = c["n_stats"], c["T_stats"], c["batch"], c["hidden"]
            xss = c["input_scale"] * jax.random.normal(ks, (N, Ts, B, c["input_size"]), xs.dtype)
            h0s = jax.random.normal(kh, (N, B, d), xs.dtype)
            c0s = {"h": h0s, "t": jnp.zeros((N, B), jnp.int32)}
            v_eval = measure.collect_batch_stats(cell, v, c0s, xss)
            say(progress, f"running averages from {N} sequences of length {Ts} (batch {B})")
            ck = tuple(c["checkpoints"])
            tr = measure.forward_lognorms(cell, v, c0, xs, key, train=True, checkpoints=ck)
            ev = measure.forward_lognorms(cell, v_eval, c0, xs, key, train=False, checkpoints=ck)
            vnp = jax.tree.map(np.asarray, v_eval)
            rho, nrm = [], []
            for t in range(Ts):
                A = gradflow.theory.cell_eval_matrix(cell.spec, vnp, t)
                rho.append(float(gradflow.theory.linear_lyapunov_spectrum(A)[0]))
                nrm.append(float(np.log(np.linalg.norm(A, 2))))
        return {"T": tr["T"], "log_fro_train": tr["log_fro"], "log_fro_eval": ev["log_fro"],
                "checkpoints": tr["checkpoints"], "log_spec_train": tr["log_spec"],
                "log_spec_eval": ev["log_spec"], "state_train": np.exp(tr["log_state"]),
                "state_eval": np.exp(ev["log_state"]),
                "log_rho_rows": np.asarray(rho), "log_norm_rows": np.asarray(nrm)}

    r = memo(progress, "modes", compute)
    T = r["T"]
    sel = T >= c["T_stats"]
    rate_tr = common.fit_rate(T[sel], r["log_fro_train"][sel])[0]
    rate_ev = common.fit_rate(T[sel], r["log_fro_eval"][sel])[0]
    say(progress, f"rates beyond T_stats: train {rate_tr:+.4f}, eval {rate_ev:+.4f}, "
        f"eval theory ln ρ(A) = {r['log_rho_rows'][-1]:+.4f} ln/step")
    return {**r, "rows": np.arange(c["T_stats"]), "eval_rate_theory": float(r["log_rho_rows"][-1]),
            "rate_train": float(rate_tr), "rate_eval": float(rate_ev), "preset": c["preset"],
            "T_stats": int(c["T_stats"]), "n_stats": int(c["n_stats"]), "hidden": c["hidden"],
            "batch": c["batch"], "T_long": int(c["T_long"])}


def plot(data: dict) -> dict:
    """``bn_modes``: gradient norms, forward state norms and per-row eval growth of train vs eval mode."""
    fig, (a1, a2, a3) = style.figure(1, 3, width=11.0, height=3.3)
    T, Ts = data["T"], data["T_stats"]
    ln10 = np.log(10)
    c_tr, c_ev = style.color(data["preset"]), "#1f77b4"
    for ax in (a1, a2):
        ax.axvspan(Ts, T[-1], color="0.92", lw=0)
        ax.axvline(Ts, color="0.5", lw=0.7, ls="--")
    a1.plot(T, data["log_fro_train"] / ln10, "-", color=c_tr,
            label=f"train mode (rate {data['rate_train']:+.3f})")
    a1.plot(T, data["log_fro_eval"] / ln10, "-", color=c_ev,
            label=f"eval mode (rate {data['rate_eval']:+.3f})")
    a1.plot(data["checkpoints"], data["log_spec_train"] / ln10, "o", color=c_tr, mfc="none")
    a1.plot(data["checkpoints"], data["log_spec_eval"] / ln10, "s", color=c_ev, mfc="none")
    i0 = int(np.searchsorted(T, Ts))
    y0 = data["log_fro_eval"][i0]
    a1.plot(T[i0:], (y0 + data["eval_rate_theory"] * (T[i0:] - T[i0])) / ln10, ":", color="k", lw=1.2,
            label=f"eval theory: ln ρ(A) = {data['eval_rate_theory']:+.3f}")
    style.finish(a1, xlabel=style.SEQLEN, ylabel="log₁₀‖∂h_T/∂h_0‖ (lines: Frobenius, marks: spectral)",
                  title="gradient norm over the sequence", legend="lower left", fontsize=6.5)
    a2.plot(T, data["state_eval"], "-", color=c_ev, lw=0.6, label="eval mode")
    a2.plot(T, data["state_train"], "-", color=c_tr, lw=0.6, label="train mode")
    a2.set_ylim(bottom=0)
    style.finish(a2, xlabel=style.TIME, ylabel="forward state norm ‖h_t‖₂ (RMS over batch)",
                  title="forward state", legend="best")
    a3.plot(data["rows"], data["log_rho_rows"], "-", color=c_ev, label="ln ρ(A_t) (spectral radius)")
    a3.plot(data["rows"], data["log_norm_rows"], "--", color=c_ev, label="ln‖A_t‖₂ (spectral norm)")
    a3.axhline(data["rate_train"], color=c_tr, lw=1.0, label="train-mode rate (measured)")
    a3.axhline(0.0, color="0.4", lw=0.7)
    style.finish(a3, xlabel="statistics row t (time step)", ylabel="ln per step",
                  title="eval-mode step A_t = diag(γ/√(var_t+ε)) W_hh", legend="best", fontsize=6.5)
    fig.suptitle(f"{data['preset']}: train vs eval mode; running averages from {data['n_stats']} sequences "
                 f"of length {Ts} (shaded: beyond them, eval reuses row {Ts - 1}); d = {data['hidden']}, "
                 f"batch {data['batch']}", fontsize=9)
    return {"bn_modes": fig}
