"""gamma_init: ‖∂L/∂h_t‖ across time for the BN cells at initialization, for several BN γ initialisations.

The question of the Recurrent Batch Normalization paper's Figure 1a (Cooijmans et al. 2017): with large γ
the gradient norm of a BN tanh RNN quickly vanishes going back in time, with small γ (0.1) it stays nearly
constant. Here: every BN γ of the cell (γ_h, γ_x, and γ_c of the LSTM) set to the same value, train mode
(batch statistics), one input per step (as in sequential MNIST) and, for comparison, 8 inputs per step, a
loss L = mean squared error of a random linear readout of the last state h_T against random targets.
∂L/∂h_t for every t comes from one backward pass through the unrolled scan with zero perturbations added
to each h_t; the norm is over the whole batch.
float64: at γ = 1 the gradient falls by e^-150 or more over 784 steps, below float32's range.
The dashed lines are the mean-field slopes ``gradflow.theory.predict_rate`` for the RNN cells (it assumes an
input drive independent across units: with a single input W_xh x_t is rank one, BN_x(W_xh x_t) is the same
±x̂_t in every unit, and the prediction does not apply).

Example::

    from analyses import gamma_init
    data = gamma_init.run({**gamma_init.CONFIG, **gamma_init.QUICK})
    gamma_init.plot(data)["gamma_init"]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import gradflow
from analyses import common, style
from analyses.runner import memo, say
from gradflow import measure

NAME = "gamma_init"
CONFIG = {
    "presets": ["bn_tanh", "bn_notanh", "bn_lstm"],
    "gammas": [0.1, 0.3, 0.5, 0.7, 1.0],
    "hidden": 64,
    "input_sizes": [1, 8],
    "outputs": 10,
    "batch": 32,
    "T": 784,
    "input_scale": 1.0,
    "seed": 0,
    "dtype": "float64",
}
QUICK = {"presets": ["bn_tanh", "bn_notanh"], "gammas": [0.1, 1.0], "hidden": 6, "batch": 6, "T": 30,
         "input_sizes": [1, 4]}
FULL = {"hidden": 128, "batch": 64}

THEORY = ("bn_tanh", "bn_notanh")


def _grad_norms(cell, variables, carry0, xs, R, y):
    """‖∂loss/∂h_t‖ for every t of a squared-error loss on R h_T (compiled via gradflow.measure)."""
    step = gradflow.as_step(cell, variables, train=True)

    def loss(eps):
        def body(c, inp):
            x, e = inp
            c = step(c, x)
            return {**c, "h": c["h"] + e}, None

        cT, _ = jax.lax.scan(body, carry0, (xs, eps))
        return jnp.mean(jnp.sum(jnp.square(cT["h"] @ R.T - y), axis=-1))

    g = jax.grad(loss)(jnp.zeros(xs.shape[:2] + carry0["h"].shape[1:], xs.dtype))
    return jnp.sqrt(jnp.sum(jnp.square(g), axis=(1, 2)))


def run(config: dict, progress=None) -> dict:
    """Gradient norms across time.

    Returns:
        dict with ``input_sizes`` (I,), ``presets`` (P,), ``gammas`` (G,), ``t`` (T,) 1..T, ``grad_norm``
        (I, P, G, T) ‖∂L/∂h_t‖ (Frobenius over the batch), ``ratio_first_last`` (I, P, G)
        ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖, ``rate`` (I, P, G): slope of ln‖∂L/∂h_t‖ against T − t over the second half
        of the lags, ``has_theory`` (P,), ``theory_rate`` (P, G) (0 where there is none; for the largest
        input size), plus configuration scalars.
    """
    c = config
    NI, P, G, T = len(c["input_sizes"]), len(c["presets"]), len(c["gammas"]), c["T"]
    gn = np.zeros((NI, P, G, T))
    rate = np.zeros((NI, P, G))
    th = np.zeros((P, G))
    lags = T - np.arange(1, T + 1)  # lag of h_t relative to h_T
    with jax.enable_x64(c["dtype"] == "float64"):
        for a, n_in in enumerate(c["input_sizes"]):
            for i, p in enumerate(c["presets"]):
                def one(p=p, n_in=n_in):
                    rows = []
                    for gam in c["gammas"]:
                        cell, v, c0, xs, _ = common.setup(
                            p, c["hidden"], n_in, c["batch"], T, c["seed"], c["input_scale"],
                            bn_gamma_init=float(gam), dtype=c["dtype"])
                        kr, ky = jax.random.split(jax.random.key(c["seed"] + 7))
                        R = jax.random.normal(kr, (c["outputs"], c["hidden"]), xs.dtype)
                        R = R / np.sqrt(c["hidden"])
                        y = jax.random.normal(ky, (c["batch"], c["outputs"]), xs.dtype)
                        g = measure.compiled(_grad_norms, cell)(v, c0, xs, R, y)
                        rows.append(np.asarray(g, np.float64))
                    return {"g": np.stack(rows)}

                gn[a, i] = memo(progress, f"{p}_in{n_in}", one)["g"]
                for j in range(G):
                    sel = lags >= T // 2
                    rate[a, i, j] = common.fit_rate(lags[sel], np.log(gn[a, i, j, sel]))[0]
                say(progress, f"{p}, {n_in} inputs: ‖∂L/∂h_1‖/‖∂L/∂h_T‖ = "
                    + ", ".join(f"γ={g}: {gn[a, i, j, 0] / gn[a, i, j, -1]:.3g}"
                                for j, g in enumerate(c["gammas"])))
    for i, p in enumerate(c["presets"]):
        for j, gam in enumerate(c["gammas"]):
            if p in THEORY:
                th[i, j] = gradflow.theory.predict_rate(p, hidden_size=c["hidden"], batch_size=c["batch"],
                                                        gamma=float(gam), gamma_x=float(gam))
    return {"input_sizes": np.asarray(c["input_sizes"]), "presets": list(c["presets"]),
            "gammas": np.asarray(c["gammas"], float), "t": np.arange(1, T + 1), "grad_norm": gn,
            "ratio_first_last": gn[..., 0] / gn[..., -1], "rate": rate,
            "has_theory": np.asarray([int(p in THEORY) for p in c["presets"]]), "theory_rate": th,
            "hidden": c["hidden"], "batch": c["batch"], "T": T}


def plot(data: dict) -> dict:
    """``gamma_init``: a row per input size, a panel per preset: ‖∂L/∂h_t‖ against t, a line per γ."""
    NI, P = len(data["input_sizes"]), len(data["presets"])
    fig, axes = style.figure(NI, P, width=min(3.6 * P, 11.0), height=2.9 * NI, squeeze=False)
    cols = style.shades(len(data["gammas"]), "viridis")
    t, T = data["t"], data["T"]
    last = NI - 1
    for a, n_in in enumerate(data["input_sizes"]):
        for i, p in enumerate(data["presets"]):
            ax = axes[a, i]
            theory = bool(data["has_theory"][i]) and a == last and n_in > 1
            for j, g in enumerate(data["gammas"]):
                y = data["grad_norm"][a, i, j]
                ax.semilogy(t, y, "-", color=cols[j], label=f"γ = {g:g} (rate {data['rate'][a, i, j]:+.3f})")
                if theory:
                    ax.semilogy(t, y[-1] * np.exp(-data["theory_rate"][i, j] * (T - t)), "--", color=cols[j],
                                lw=0.8)
            if theory:
                ax.plot([], [], "--", color="0.4", lw=0.8, label="mean-field slope")
            lo = max(float(np.min(data["grad_norm"][a, i])) * 0.3, 1e-300)
            ax.set_ylim(lo, float(np.max(data["grad_norm"][a, i])) * 3)
            style.finish(ax, xlabel=style.TIME if a == last else None,
                          ylabel=f"‖∂L/∂h_t‖, {n_in} input{'s' if n_in > 1 else ''}/step" if i == 0 else None,
                          title=style.label(p) if a == 0 else None, legend="best", fontsize=5.5)
    fig.suptitle(f"Gradient of a last-step loss across time at initialization, BN γ swept (Cooijmans et al. "
                 f"Fig. 1a; d = {data['hidden']}, batch {data['batch']}, T = {T}, train mode; norm over the "
                 "batch)", fontsize=9)
    return {"gamma_init": fig}
