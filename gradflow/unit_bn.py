"""One BN after the sum with W_h = I: the Recurrent BN paper's Figure 1a cell, reduced to independent units.

The cell of Cooijmans et al.'s Figure 1a (their public code, ``construct_rnn``):
h_t = tanh(BN(h_{t-1} W_h + x_t W_x; γ, β = 0)), W_h = I, W_x a unit-norm 1 × d row, batch statistics.
With W_h = I and BN per feature, unit j only ever sees its own column: z_j = h_{t-1, :, j} + w_j x_t ∈ R^B
(x_t ∈ R^B: one scalar input per example), y_j = γ (z_j − mean z_j)/s_j, s_j = √(var_B z_j + ε),
h_{t, :, j} = tanh(y_j). The B·d-dimensional problem splits exactly into d one-unit problems in R^B coupled
only through the batch, and so does the backward pass: for a cotangent g ∈ R^B of unit j,

    ∂L/∂h_{t-1} = (γ/s) P (tanh'(y) ⊙ ∂L/∂h_t),    P = I − 11ᵀ/B − ŷŷᵀ/B,  ŷ = (z − mean z)/s

(P is symmetric; with ε = 0 it is the projection removing 1 and ŷ). Everything here is NumPy (float64),
independent of gradflow's cells: ``forward`` runs the one-unit maps, ``backward_log_norms`` back-propagates
a cotangent in log scale (finite over any length), ``unit_exponents`` gives each unit's mean log gain per
step over a window of steps (its top backward exponent there, whatever the loss).

Closed forms (docs/theory.md §3.9):

- ``zero_variance_log_gain``: while every example has the same z (empty image rows, h_0 = 0), s = √ε, ŷ = 0,
  tanh'(0) = 1 and the Jacobian is (γ/√ε)(I − 11ᵀ/B): going back, the zero-mean part of the gradient grows
  by exactly γ/√ε per step (≈ 316 γ at ε = 1e−5).
- ``two_point_log_gain``: without input the one-unit map converges to a two-cluster law (tanh compresses the
  tails and BN rescales, so the kurtosis falls to its minimum 1); a cluster of fraction q sits at
  ŷ = √((1−q)/q) and the gradient inside it is multiplied per step by γ tanh'(γŷ)/σ_h. For q = ½:
  **2γ / sinh 2γ** (ln: −2γ²/3 at small γ, −0.595 at γ = 1). The input drive slows this vanishing.
"""

from __future__ import annotations

import math

import numpy as np

from gradflow.checks import finite_array, is_int, positive_float, unit_fraction
from gradflow.checks import seed as check_seed

__all__ = [
    "forward",
    "backward_log_norms",
    "unit_exponents",
    "zero_variance_log_gain",
    "two_point_log_gain",
]


def forward(xs, w, gamma: float, eps: float = 1e-5, h0=None) -> dict:
    """Run the d one-unit maps of h_t = tanh(BN(h_{t-1} + x_t wᵀ; γ, 0)) over a batch.

    Args:
        xs: (T, B) one scalar input per step and example.
        w: (d,) the input row W_x (the paper: a unit vector).
        gamma: BN scale γ > 0 (β = 0).
        eps: BN ε > 0.
        h0: (B, d) initial state, or None for zeros.

    Every array must be finite (ValueError naming it).

    Returns:
        dict with ``yhat`` (T, B, d) the normalized pre-activations (z − mean)/√(var + ε), ``s`` (T, d)
        √(var + ε), ``h`` (B, d) the last state, ``gamma``, ``eps``.

    Example:
        >>> import numpy as np
        >>> out = forward(np.zeros((3, 4)), np.ones(2) / np.sqrt(2), 0.5)
        >>> float(out["s"][0, 0]) == float(np.sqrt(1e-5))   # zero variance: s = √ε
        True
    """
    xs, w = finite_array("xs", xs), finite_array("w", w)
    gamma, eps = positive_float("gamma", gamma), positive_float("eps", eps)
    if xs.ndim != 2 or w.ndim != 1:
        raise ValueError(f"xs must be (T, B) and w (d,), got shapes {xs.shape} and {w.shape}")
    T, B = xs.shape
    h = np.zeros((B, w.size)) if h0 is None else finite_array("h0", h0)
    if h.shape != (B, w.size):
        raise ValueError(f"h0 must have shape (B={B}, d={w.size}), got {h.shape}")
    yhat = np.empty((T, B, w.size))
    s = np.empty((T, w.size))
    for t in range(T):
        z = h + xs[t][:, None] * w[None, :]
        zc = z - z.mean(0)
        zc -= zc.mean(0)  # two-pass centering, as gradflow.norm
        s[t] = np.sqrt(np.mean(zc * zc, axis=0) + eps)
        yhat[t] = zc / s[t]
        h = np.tanh(gamma * yhat[t])
    return {"yhat": yhat, "s": s, "h": h, "gamma": gamma, "eps": eps}


def _vjp(fwd: dict, t: int, g: np.ndarray) -> np.ndarray:
    """(B, d) cotangent of h_t -> cotangent of h_{t-1}, per unit (the batch-coupled one-unit Jacobian)."""
    gamma, yhat, s = fwd["gamma"], fwd["yhat"][t], fwd["s"][t]
    u = g * (1.0 - np.tanh(gamma * yhat) ** 2)
    u = u - u.mean(0) - yhat * np.mean(u * yhat, axis=0)
    return (gamma / s) * u


def backward_log_norms(fwd: dict, g_T) -> dict:
    """Back-propagate a cotangent of h_T through the one-unit Jacobians, in log scale.

    Args:
        fwd: the output of :func:`forward` (T steps).
        g_T: (B, d) ∂L/∂h_T (finite).

    Returns:
        dict with ``log_mean_norm`` (T + 1,): ln of the batch mean of the per-example norms over units,
        ln mean_b ‖∂L/∂h_t[b, :]‖ (the paper's plotted quantity), t = 0..T; ``log_unit_norm`` (T + 1, d):
        ln ‖∂L/∂h_t[:, j]‖ over the batch, per unit. An exactly zero cotangent gives −inf (per unit in
        ``log_unit_norm``; at every t in ``log_mean_norm`` when all of g_T is zero).
    """
    g = finite_array("g_T", g_T)
    T = fwd["yhat"].shape[0]
    if g.shape != fwd["h"].shape:
        raise ValueError(f"g_T must have shape {fwd['h'].shape}, got {g.shape}")
    log_mean = np.empty(T + 1)
    log_unit = np.empty((T + 1, g.shape[1]))
    scale = np.zeros(g.shape[1])  # per-unit log scale: the true cotangent is g * exp(scale)
    for t in range(T, -1, -1):
        n = np.linalg.norm(g, axis=0)
        with np.errstate(divide="ignore"):
            log_unit[t] = scale + np.log(n)
        safe = np.where(n > 0, n, 1.0)
        g = g / safe
        scale = scale + np.log(safe)
        with np.errstate(divide="ignore"):
            lg = 2.0 * (np.log(np.abs(g)) + scale)  # (B, d) ln g_{bj}²
        top = np.max(lg)
        if top == -np.inf:  # the whole cotangent is exactly zero (and stays so going back)
            log_mean[t] = -np.inf
        else:
            with np.errstate(divide="ignore"):  # an example whose cotangent is exactly zero: ln 0 = −inf
                per_example = 0.5 * (top + np.log(np.sum(np.exp(lg - top), axis=1)))
            m = np.max(per_example)
            log_mean[t] = m + np.log(np.mean(np.exp(per_example - m)))
        if t > 0:
            g = _vjp(fwd, t - 1, g)
    return {"log_mean_norm": log_mean, "log_unit_norm": log_unit}


def unit_exponents(fwd: dict, t_from: int, t_to: int, seed: int = 0) -> np.ndarray:
    """Each unit's mean log gain per step going back from h_{t_to} to h_{t_from} (its top backward exponent).

    A random zero-mean cotangent (independent of any loss) is started at h_T and propagated back to h_{t_to}
    (so that it aligns with the unit's slowest-decaying directions, as a loss gradient does), then
    (ln‖g_{t_from}‖ − ln‖g_{t_to}‖)/(t_to − t_from) per unit.

    Args:
        fwd: :func:`forward` output (T steps).
        t_from, t_to: ints, 0 ≤ t_from < t_to ≤ T.
        seed: seed of the random start (an int, 0 <= seed < 2**32).

    Returns:
        (d,) rates (natural log per step; negative: the gradient vanishes going back in time).
    """
    T = fwd["yhat"].shape[0]
    if not (is_int(t_from) and is_int(t_to) and 0 <= t_from < t_to <= T):
        raise ValueError(f"need integers 0 <= t_from < t_to <= T = {T}, got {t_from!r}, {t_to!r}")
    start = T
    g = np.random.default_rng(check_seed("seed", seed)).standard_normal(fwd["h"].shape)
    g -= g.mean(0)
    for t in range(start, t_to, -1):
        g = _vjp(fwd, t - 1, g)
        g /= np.linalg.norm(g, axis=0)
    total = np.zeros(g.shape[1])
    for t in range(t_to, t_from, -1):
        g = _vjp(fwd, t - 1, g)
        n = np.linalg.norm(g, axis=0)
        total += np.log(n)
        g /= n
    return total / (t_to - t_from)


def zero_variance_log_gain(gamma: float, eps: float = 1e-5) -> float:
    """ln(γ/√ε): the per-step log growth, going back, of the gradient while the batch variance is zero.

    Example:
        >>> round(zero_variance_log_gain(0.1, 1e-5), 4)   # ln(0.1 / 0.00316)
        3.4539
    """
    gamma, eps = positive_float("gamma", gamma), positive_float("eps", eps)
    return math.log(gamma) - 0.5 * math.log(eps)


def two_point_log_gain(gamma: float, q: float = 0.5) -> float:
    """Per-step log gain of the one-unit Jacobian at the no-input two-cluster fixed point (ε → 0).

    Clusters of fractions q and 1 − q sit at ŷ = √((1−q)/q) and −√(q/(1−q)); a zero-sum cotangent inside a
    cluster is multiplied by γ tanh'(γŷ)/σ_h per step, σ_h = √(q(1−q)) |tanh(γŷ_A) − tanh(γŷ_B)|. Returns the
    larger (slower-vanishing) of the two clusters' log gains; at q = ½ it is ln(2γ / sinh 2γ).

    Example:
        >>> round(two_point_log_gain(1.0), 4) == round(math.log(2 / math.sinh(2)), 4)
        True
    """
    gamma, q = positive_float("gamma", gamma), unit_fraction("q", q)
    ya, yb = math.sqrt((1 - q) / q), -math.sqrt(q / (1 - q))
    # tanh(γ ya) > 0 > tanh(γ yb): the difference is a sum of two positive terms, no cancellation
    log_sigma = 0.5 * math.log(q * (1 - q)) + math.log(math.tanh(gamma * ya) - math.tanh(gamma * yb))
    # in logs: cosh(γ y)² overflows beyond γ|y| ~ 355 (γ = 400, or q = 1e-9 where ya ≈ 3e4)
    return math.log(gamma) + max(_log_sech2(gamma * y) for y in (ya, yb)) - log_sigma


def _log_sech2(x: float) -> float:
    """ln sech²(x) = 2 (ln 2 − |x| − ln(1 + e^{−2|x|})), finite for every finite x."""
    x = abs(x)
    return 2.0 * (math.log(2.0) - x - math.log1p(math.exp(-2.0 * x)))
