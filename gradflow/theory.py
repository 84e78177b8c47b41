"""Mean-field predictions of gradient growth for gradflow's recurrent cells.

Every prediction is a small pure function of the knobs that set it (gain g, normalization scales γ,
batch size B, hidden size d, input-drive variance, dropout p). The derivations, step by step, are in
``docs/theory.md``.

Rate conventions (natural log, per step):

- ``*_chi`` functions return χ, the mean-field growth factor per step of the **squared** norm of a
  propagated tangent (or back-propagated) vector, E‖J v‖² / ‖v‖².
- ``*_rate`` functions return ½ ln χ: the growth rate per step of the **norm** of such a vector. In the
  large-width limit this is the largest Lyapunov exponent, which is also the asymptotic growth rate (at
  large lag) of both the spectral norm and the Frobenius norm of ∂h_T/∂h_t. At finite width the measured
  top exponent deviates from ½ ln χ by finite-size terms (Jensen: E ln ≤ ln E; fluctuations of the
  normalizing variances; tied weights); docs/theory.md gives their measured size.
- `linear_lyapunov_spectrum` is exact (no mean field): the exponents of a constant recurrent matrix are the
  logs of the moduli of its eigenvalues.

Batch-coupled Jacobians (BN in train mode) are over the whole batch state (n = B·d), as in the engine.
The measurements these predictions are held against (an engine-independent jvp tangent,
``theory_vs_measurement``) live in ``gradflow.measure``; this module holds formulas only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from gradflow.checks import (
    finite_array,
    finite_float,
    flag,
    is_int,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
)
from gradflow.specs import PRESETS, CellSpec

__all__ = [
    "gauss_expectation",
    "normalized_coordinate_expectation",
    "tanh_variance_map",
    "tanh_fixed_point",
    "tanh_chi1",
    "tanh_rnn_rate",
    "input_drive_variance",
    "effective_gain",
    "linear_lyapunov_spectrum",
    "bn_eval_matrix",
    "cell_eval_matrix",
    "bn_train_chi",
    "bn_train_rate",
    "ln_chi",
    "ln_rate",
    "ln_sum_chi",
    "ln_sum_rate",
    "bn_feedforward_rate",
    "predict_rate",
    "tied_weight_correction",
    "ACTIVATIONS",
    "lru_eigenvalues",
    "lru_rate",
    "lru_spectrum",
    "lru_init_rate",
    "relu_rate_bound",
    "critical_input_gamma",
    "input_variance_share",
    "memory_state_moment",
    "memory_sensitivity_moment",
]

ACTIVATIONS = ("linear", "tanh")
_IDENTITY = ("linear", "identity")  # names of φ(a) = a

_GH_POINTS = 121
#: Gauss–Hermite (nodes in z, a = √q z) resolves tanh's transition at |a| ~ 1 only while √q is small: at
#: q = 1 its E[sech⁴] is off by 5e-11, at q = 5 by 4e-4, at q = 1e12 by a factor 2e5. An integrand with a
#: feature sharper than this (varying on less than √2 standard deviations) is integrated on panels instead
#: (`_law_nodes`); so is every expectation over a normalized coordinate of finite size.
_GH_MAX_SHARPNESS = math.sqrt(0.5)
_FINE_REACH = 32.0  # panels of a feature's width within 32 widths of it (tanh's: e^-64 there), then doubling
_LAW_PANEL = 1.0  # and no panel wider than one standard deviation of the law
_TAIL_Z = 16.0  # laws are cut at 16 standard deviations (Gaussian mass beyond: 1e-57)
_KINK_Z = 8.0  # a normalized coordinate's density within 1 sd of its end ±√(n−1) > 8 is < 1e-19 of its peak
_GL_X, _GL_W = np.polynomial.legendre.leggauss(16)  # nodes per panel


def _phi(activation: str) -> tuple[Callable, Callable]:
    if activation in _IDENTITY:
        return (lambda a: a), (lambda a: np.ones_like(a))
    if activation == "tanh":
        return np.tanh, _sech2
    raise ValueError(f"unknown activation {activation!r}; choose from {ACTIVATIONS}")


def _sech2(a):
    """sech²(a) = tanh'(a) without overflow: (2 e^{-|a|} / (1 + e^{-2|a|}))²."""
    e = np.exp(-np.abs(a))
    return (2.0 * e / (1.0 + e * e)) ** 2


def _sech4(a):
    """sech⁴(a) without overflow."""
    return _sech2(a) ** 2


def _half_log(chi: float, what: str) -> float:
    """½ ln χ (a norm rate from a squared-norm growth χ); χ = 0 (an exactly zero Jacobian: γ = 0 or g = 0)
    gives its exact limit -inf."""
    if chi == 0.0:
        return -math.inf
    if not chi > 0.0:
        raise ValueError(f"{what}: the mean field gives χ = {chi!r} (not > 0): no rate")
    return 0.5 * math.log(chi)


def _in_float64(fn: Callable) -> Callable:
    """Turn an OverflowError of the float64 arithmetic into a ValueError naming the function."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            with np.errstate(over="raise"):
                return fn(*args, **kwargs)
        except (OverflowError, FloatingPointError):
            raise ValueError(f"{fn.__name__}{args}: the arguments overflow float64 arithmetic (a gain or γ "
                             "above ~1e150?); no prediction") from None

    return wrapped


def _check_rate_p(p) -> float:
    p = nonneg_float("dropout", p)
    if p >= 1.0:
        raise ValueError(f"dropout must be a rate in [0, 1), got {p}")
    return p


def _gh_nodes(n_points: int) -> tuple[np.ndarray, np.ndarray]:
    if not is_int(n_points) or n_points < 2:
        raise ValueError(f"n_points must be an int >= 2, got {n_points!r}")
    return _gh_table(int(n_points))


@functools.lru_cache(maxsize=8)
def _gh_table(n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Hermite nodes and weights for N(0, 1) (read-only: cached, hermegauss(121) takes 10 ms)."""
    z, w = np.polynomial.hermite_e.hermegauss(n_points)
    w = w / np.sqrt(2.0 * np.pi)
    z.flags.writeable = w.flags.writeable = False
    return z, w


def _panel_edges(L: float, features) -> np.ndarray:
    """Panel edges over [−L, L] (in standard deviations of the law) for an integrand with features.

    A feature (c, k), an integrand varying on the scale 1/k about c, sharper than Gauss–Hermite resolves
    (k > √½), gets panels of width 1/k within 32/k of c, doubling in width beyond (16 Gauss–Legendre nodes
    a panel integrate tanh's transition, poles π/2 off the real axis, to ~1e-25); then every panel wider
    than one standard deviation is split evenly (the law's own scale).
    """
    e = [np.array([-L, L])]
    for c, k in features:
        if k <= _GH_MAX_SHARPNESS or not abs(c) <= L + _FINE_REACH / k:  # smooth, or flat over [−L, L]
            continue  # (c far out, ±inf or NaN)
        reach = _FINE_REACH / k
        m = math.ceil(math.log2(max(1.0, (L + abs(c)) / reach)))
        steps = np.concatenate([np.arange(_FINE_REACH) / k, np.ldexp(reach, np.arange(m + 1))])
        e += [c + steps, c - steps]
    e = np.unique(np.clip(np.concatenate(e), -L, L))
    width = np.diff(e)
    pieces = np.ceil(width / _LAW_PANEL).astype(int)
    j = np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)  # piece j of its panel
    return np.append(np.repeat(e[:-1], pieces) + np.repeat(width / pieces, pieces) * j, L)


def _gl_panels(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights (16 a panel) on the panels between consecutive edges ``e``."""
    half = 0.5 * np.diff(e)[:, None]
    x = half * _GL_X + 0.5 * (e[1:] + e[:-1])[:, None]
    return x.ravel(), (half * _GL_W).ravel()


def _law_nodes(n: int | None, features=(), gh_points: int = _GH_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Nodes y and weights (summing to 1) for E[f(Y)], Y one coordinate of a normalized vector of n entries
    (`normalized_coordinate_expectation`; None: its n → ∞ limit N(0, 1)), for an f with ``features``:
    pairs (c, k), f varying on the scale 1/k about Y = c.

    N(0, 1) and no feature sharper than k = √½: Gauss–Hermite of ``gh_points`` nodes. Otherwise composite
    Gauss–Legendre on the panels of `_panel_edges` over |y| <= min(16, √(n−1)): in y for N(0, 1), in
    θ = arcsin(y/√(n−1)) for a finite n, where the density ∝ cos^{n−3} θ is smooth up to the ends whatever n.
    """
    if n is None and all(k <= _GH_MAX_SHARPNESS for _, k in features):
        return _gh_table(gh_points)
    r = math.inf if n is None else math.sqrt(n - 1.0)
    e = _panel_edges(min(_TAIL_Z, r), features)
    if n is None:
        y, w = _gl_panels(e)
        w = w * np.exp(-0.5 * y * y)
    else:
        t, w = _gl_panels(np.arcsin(np.clip(e / r, -1.0, 1.0)))
        x = np.sin(t)
        x2 = np.minimum(x * x, 0.5)  # log cos θ accurate near 0 (large n) and near ±π/2 (cos θ > 0) alike
        log_cos = np.where(x * x < 0.5, 0.5 * np.log1p(-x2), np.log(np.cos(t)))
        y, w = r * x, w * np.exp((n - 3) * log_cos)
    return y, w / w.sum()


def gauss_expectation(
    f: Callable[[np.ndarray], np.ndarray], q: float = 1.0, n_points: int = _GH_POINTS
) -> float:
    """E_z[f(√q z)], z ~ N(0, 1).

    For q <= 1/2, Gauss–Hermite quadrature of ``n_points`` nodes (probabilists' weight e^{-z²/2}; exact for
    polynomials of degree < 2·n_points). For q > 1/2, a composite Gauss–Legendre rule in a = √q z (16
    nodes per panel): panels of width 1 over |a| <= 32, then panels doubling in width, none wider than √q,
    out to |a| = 16 √q. It resolves features of f at the scale of tanh's transition (|a| ~ 1) however wide
    the Gaussian is (Gauss–Hermite, with nodes spread over √q z, misses them once q >~ 1: E[tanh²] at
    q = 1e12 came out 0.886 instead of 1 − 8e-7), and assumes f varies on the Gaussian's scale beyond
    |a| = 32. The BN/LN predictions (`bn_train_chi`, `ln_chi`, `ln_sum_chi`) use the same rule.

    Args:
        f: vectorized function of a NumPy array.
        q: variance (>= 0).
        n_points: Gauss–Hermite nodes (an int >= 2; used for q <= 1/2).

    Returns:
        The expectation (float).

    Example:
        >>> round(gauss_expectation(lambda a: a**2, q=2.0), 12)
        2.0
    """
    _check_function("f", f)
    q = nonneg_float("q", q)
    _gh_nodes(n_points)  # checks n_points whatever q
    s = math.sqrt(q)
    y, w = _law_nodes(None, [(0.0, s)], int(n_points))
    return float(np.sum(w * f(s * y)))


def _check_function(name: str, f) -> None:
    if not callable(f):
        raise ValueError(f"{name} must be a function of a NumPy array, got {type(f).__name__} {f!r}"[:300])


def normalized_coordinate_expectation(f: Callable[[np.ndarray], np.ndarray], n: int | None) -> float:
    """E[f(Y_b)] for one entry Y_b of a normalized vector Y = √n (u − ū)/‖u − ū‖ of n entries, u ~ N(0,
    I_n).

    This is the exact distribution of one example's BN output (over a batch of n, biased variance) or of one
    feature's LN output (over n features), when the normalized pre-activations are Gaussian and isotropic:
    Y_b = √(n−1)·w with w a coordinate of a uniform unit vector in R^{n−1}, density ∝ (1 − w²)^{(n−4)/2}.
    E[Y_b] = 0, E[Y_b²] = 1 exactly; n = None gives the Gaussian limit. Quadrature: Gauss–Hermite for
    None, else Gauss–Legendre in θ = arcsin(w) on panels no wider than one standard deviation of Y_b
    (any n >= 3); f is assumed to vary on that scale.

    Example:
        >>> round(normalized_coordinate_expectation(lambda y: y**2, 4), 10)
        1.0
    """
    _check_function("f", f)
    if n is not None and (not is_int(n) or n < 3):
        raise ValueError(f"normalized size n must be an int >= 3 (or None for n → ∞), got {n!r}")
    y, w = _law_nodes(n)
    return float(np.sum(w * f(y)))


def _pair_nodes(gh: float, gx: float, b: float, n_u: int | None, n_w: int | None, sharp: bool):
    """Nodes u, w and weights for E[f(u, w)], u and w independent normalized coordinates of sizes n_u, n_w
    (None: N(0, 1)); gh ≠ 0. ``sharp``: f varies fast only through φ(y), y = gh·u + gx·w + b, φ with a
    transition at |y| ~ 1 (tanh); else f is smooth (φ = identity: polynomials in u, w).

    Conditional rule: the outer coordinate is the one with the smaller |γ|; for each of its nodes the inner
    law gets panels about the inner value where y = 0 (`_law_nodes`). The inner expectation varies with the
    outer coordinate on y's scale √(1 + γ_inner²) (φ's transition smoothed by the inner law), and on y's own
    scale where the transition crosses an end of a finite inner law.
    """
    swap = abs(gx) > abs(gh)
    (gi, ni), (go, no) = ((gx, n_w), (gh, n_u)) if swap else ((gh, n_u), (gx, n_w))
    outer = []
    if sharp and go != 0.0:
        outer.append((-b / go, abs(go) / math.hypot(1.0, gi)))
        if ni is not None and ni - 1 <= _KINK_Z**2:  # the inner law's ends ±√(n−1), where it has mass
            outer += [((sign * gi * math.sqrt(ni - 1.0) - b) / go, abs(go)) for sign in (-1.0, 1.0)]
    yo, wo = _law_nodes(no, outer)
    with np.errstate(over="ignore", invalid="ignore"):  # a centre beyond float64 is one far out: no panels
        centres, which = np.unique(-(go * yo + b) / gi, return_inverse=True)
    inner = [_law_nodes(ni, [(c, abs(gi))] if sharp else []) for c in centres.tolist()]
    counts = np.array([y.size for y, _ in inner])[which]
    yi = np.concatenate([inner[j][0] for j in which])
    p = np.concatenate([inner[j][1] for j in which]) * np.repeat(wo, counts)
    yo = np.repeat(yo, counts)
    return (yo, yi, p) if swap else (yi, yo, p)


# ----------------------------------------------------------------------------------------------------
# tanh RNN (Poole et al. 2016; Schoenholz et al. 2017)


def _tanh2(a):
    return np.tanh(a) ** 2


def _variance_map(q: float, g: float, sx: float, sb: float) -> float:
    return g**2 * gauss_expectation(_tanh2, q) + sx + sb


@_in_float64
def tanh_variance_map(q: float, gain: float, sigma_x2: float = 0.0, sigma_b2: float = 0.0) -> float:
    """One step of the pre-activation variance map q ← g² E[tanh(√q z)²] + σ_x² + σ_b².

    Assumes W_hh entries N(0, g²/d) (d → ∞), an input drive W_xh x_t whose per-unit variance is σ_x²
    (independent of h, see `input_drive_variance`) and bias entries of variance σ_b². All four arguments
    are finite numbers >= 0; a result beyond float64 (g above ~1e154) raises a ValueError.
    """
    q = nonneg_float("q", q)
    g = nonneg_float("gain", gain)
    sx = nonneg_float("sigma_x2", sigma_x2)
    return _variance_map(q, g, sx, nonneg_float("sigma_b2", sigma_b2))


@_in_float64
def tanh_fixed_point(
    gain: float, sigma_x2: float = 0.0, sigma_b2: float = 0.0, *, dropout: float = 0.0, tol: float = 1e-13
) -> float:
    """Fixed point q* of the tanh pre-activation variance map (iterated from q = 1 until converged).

    Dropout p on h (inverted, fresh or per-sequence mask) enters as g² → g²/(1−p) (`effective_gain`).
    Returns 0 in the ordered regime without drive (g_eff ≤ 1, σ_x² = σ_b² = 0). A q* beyond float64
    (g_eff above ~1e154) raises a ValueError.

    Example:
        >>> round(tanh_fixed_point(2.0), 4)   # σ_w² = 4, σ_b = 0
        2.1215
    """
    g = effective_gain(nonneg_float("gain", gain), dropout)
    sx = nonneg_float("sigma_x2", sigma_x2)
    sb = nonneg_float("sigma_b2", sigma_b2)
    tol = positive_float("tol", tol)
    if tol > 1e-3:
        raise ValueError(f"tol is a relative tolerance and must be <= 1e-3 (the fixed point would be off "
                         f"by up to tol), got {tol}")
    if sx + sb == 0.0 and g <= 1.0:
        return 0.0
    q = 1.0
    for _ in range(100000):
        qn = _variance_map(q, g, sx, sb)
        if abs(qn - q) <= tol * max(1.0, q):
            return qn
        q = qn
    raise ValueError(f"variance map did not converge (gain={gain}, sigma_x2={sigma_x2}, sigma_b2={sigma_b2})")


def tanh_chi1(gain: float, sigma_x2: float = 0.0, sigma_b2: float = 0.0, *, dropout: float = 0.0) -> float:
    """χ₁ = g_eff² E[tanh'(√q* z)²]: mean-field growth per step of the squared norm of a tangent vector.

    Example:
        >>> round(tanh_chi1(2.0), 4)
        1.3627
    """
    g = effective_gain(gain, dropout)
    q = tanh_fixed_point(gain, sigma_x2, sigma_b2, dropout=dropout)
    return g**2 * gauss_expectation(_sech4, q)


@_in_float64
def tanh_rnn_rate(
    gain: float, sigma_x2: float = 0.0, sigma_b2: float = 0.0, *, dropout: float = 0.0
) -> float:
    """Predicted largest Lyapunov exponent (norm growth rate per step) of a random tanh RNN: ½ ln χ₁.

    In the chaotic regime (q* > 0) this is the mean-field value of the top exponent (Engelken et al.
    2020). Where the zero fixed point is stable (no drive, g ≤ 1) the Jacobian is W_hh itself and the exact
    exponent is ln ρ(W_hh) (`linear_lyapunov_spectrum`), whose large-d limit is ln g = ½ ln χ₁ (circular law).
    """
    g = effective_gain(gain, dropout)
    if g == 0.0:  # W_hh = 0: the Jacobian is exactly 0
        return -math.inf
    q = tanh_fixed_point(gain, sigma_x2, sigma_b2, dropout=dropout)
    # ½ ln χ₁ = ln g_eff + ½ ln E[sech⁴]: no g² to under/overflow
    return math.log(g) + _half_log(gauss_expectation(_sech4, q), "tanh_rnn_rate")


def input_drive_variance(W_xh, x_second_moment: float = 1.0, gates: int = 1) -> float:
    """Per-unit variance σ_x² of the input drive W_xh x_t for inputs with E[x_k²] = x_second_moment, i.i.d.

    σ_x² = mean over units of Σ_k W_xh[i, k]² · E[x²] (first gate block for gated cells). gradflow's cells
    initialise W_xh, shape (G·d, input_size), with fan-in input_size (``lecun_normal(in_axis=-1,
    out_axis=-2)``): entries have variance 1/input_size, so σ_x² ≈ E[x²] whatever input_size, d and G are
    (≈ 1 for unit-variance inputs; a weaker drive is set by the input scale, σ_x² ≈ x_scale²).

    Args:
        W_xh: (G·d, input_size) input matrix (column-vector convention).
        x_second_moment: E[x_k²] of the inputs.
        gates: G (1 RNN, 4 LSTM, 3 GRU).

    Returns:
        σ_x² (float).

    Example:
        >>> W = np.full((8, 4), 0.5)   # each row: Σ_k W_ik² = 1
        >>> input_drive_variance(W, x_second_moment=2.0)
        2.0
    """
    gates = positive_int("gates", gates)
    m2 = nonneg_float("x_second_moment", x_second_moment)
    W = finite_array("W_xh", W_xh)
    if W.ndim != 2 or W.shape[0] == 0:
        raise ValueError(f"W_xh must be 2-D (G*d, input_size) with at least one row, got shape {W.shape}")
    if W.shape[0] % gates:
        raise ValueError(f"W_xh rows {W.shape[0]} not divisible by gates={gates}")
    d = W.shape[0] // gates
    return float(np.mean(np.sum(W[:d] ** 2, axis=1)) * m2)


def effective_gain(gain: float, dropout: float = 0.0) -> float:
    """Mean-field gain seen through inverted dropout on h: g_eff = g / √(1 − p).

    Inverted dropout (keep-probability 1 − p, kept units × 1/(1−p)) multiplies the second moment of the
    state and
    of a tangent vector alike by 1/(1 − p) before they reach W_hh; in the mean field this is g² → g²/(1−p).
    Where the recurrent product is normalized (BN_h or LN_h), g cancels, so dropout leaves χ unchanged.
    """
    g = nonneg_float("gain", gain)
    return g / math.sqrt(1.0 - _check_rate_p(dropout))


# ----------------------------------------------------------------------------------------------------
# exact: linear recurrences and BN in eval mode


def linear_lyapunov_spectrum(W) -> np.ndarray:
    """Exact Lyapunov exponents of h_t = M h_{t-1} + (input): ln |eigenvalues of M|, sorted descending.

    The singular values of M^k grow as |λ_i|^k (k → ∞), so these are the asymptotic per-step growth rates of
    the singular values of ∂h_T/∂h_t = M^{T-t}.

    Args:
        W: (n, n) recurrent matrix (column-vector convention, ∂h_t/∂h_{t-1} = W).

    Returns:
        (n,) exponents, largest first (−inf for a zero eigenvalue). A triangular W (diagonal included) has
        its eigenvalues on its diagonal: they are read there, exact whatever their range (LAPACK's eigvals
        scales the whole matrix by its norm, so diag(1e-300, 1e300) gave 0 for the small one).

    Example:
        >>> linear_lyapunov_spectrum(np.diag([2.0, 0.5])).round(4).tolist()
        [0.6931, -0.6931]
    """
    M = finite_array("W", W)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"W must be a square matrix, got shape {M.shape}")
    triangular = not np.any(np.tril(M, -1)) or not np.any(np.triu(M, 1))
    lam = np.diag(M) if triangular else np.linalg.eigvals(M)
    with np.errstate(divide="ignore"):
        return np.sort(np.log(np.abs(lam)))[::-1]


def bn_eval_matrix(W_hh, scale, var, eps: float = 1e-5) -> np.ndarray:
    """Effective recurrent matrix of BN_h(W_hh h) in eval mode: diag(γ / √(var + ε)) W_hh.

    Args:
        W_hh: (d, d).
        scale: (d,) BN γ.
        var: (d,) running variance (>= 0; for per-step statistics pass the row used, e.g. the last one,
        t_max − 1).
        eps: BN ε (a finite number > 0).

    Every array must be finite.
    """
    W, s, v = finite_array("W_hh", W_hh), finite_array("scale", scale), finite_array("var", var)
    eps = positive_float("eps", eps)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"W_hh must be square (d, d), got {W.shape}")
    if s.shape != (W.shape[0],) or v.shape != (W.shape[0],):
        raise ValueError(f"scale and var must have shape ({W.shape[0]},), got {s.shape}, {v.shape}")
    if np.any(v < 0):
        raise ValueError(f"var must be >= 0 (a running variance), got {float(v.min())!r}")
    return (s / np.sqrt(v + eps))[:, None] * W


def cell_eval_matrix(spec, variables, t: int | None = None) -> np.ndarray:
    """Exact ∂h_t/∂h_{t-1} of a linear-recurrence preset in eval mode (``linear``, ``bn_notanh``).

    Args:
        spec: a preset name or `gradflow.CellSpec` of the rnn family with identity activation and
        no LN.
        variables: the cell's variables ({"params", "batch_stats"}).
        t: the step whose per-step statistics row is used, an int >= 0 (row min(t, t_max − 1)); default:
            the last row, t_max − 1, i.e. the asymptotic regime t ≥ t_max − 1.

    Returns:
        (d, d) matrix M; the exact exponents are `linear_lyapunov_spectrum(M)`.
    """
    if isinstance(spec, str) and spec not in PRESETS:
        raise ValueError(f"unknown cell {spec!r}; choose from the presets {tuple(PRESETS)}")
    s = PRESETS[spec] if isinstance(spec, str) else spec
    if not isinstance(s, CellSpec):
        raise ValueError(f"spec must be a preset name or a gradflow.CellSpec, got {type(spec).__name__} "
                         f"{spec!r}"[:300])
    t = None if t is None else nonneg_int("t", t)
    if s.family != "rnn" or s.activation != "identity" or "ln" in (s.norm_h, s.norm_sum):
        raise ValueError(
            "cell_eval_matrix needs an rnn cell with identity activation and no LN (linear in h)"
        )
    if s.norm_sum == "bn":
        raise ValueError("norm_sum='bn' is not supported by cell_eval_matrix")
    W = finite_array("variables['params']['W_hh']", _variable(variables, "params", "W_hh"))
    if s.norm_h != "bn":
        return W
    var = finite_array("variables['batch_stats']['bn_h']['var']",
                       _variable(variables, "batch_stats", "bn_h", "var"))
    if var.ndim == 2:
        var = var[var.shape[0] - 1 if t is None else min(t, var.shape[0] - 1)]
    return bn_eval_matrix(W, _variable(variables, "params", "bn_h", "scale"), var, s.bn_eps)


def _variable(variables, *path):
    """``variables[path[0]][path[1]]...``; a ValueError naming what is missing (the cell's variables)."""
    node = variables
    for i, key in enumerate(path):
        if not hasattr(node, "keys") or key not in node.keys():
            where = "variables" + "".join(f"[{k!r}]" for k in path[:i])
            have = f"has keys {sorted(map(str, node.keys()))}" if hasattr(node, "keys") else \
                f"is {type(node).__name__}"
            raise ValueError(f"variables must be the cell's variables, with "
                             f"{'variables' + ''.join(f'[{k!r}]' for k in path)}; {where} {have}"[:300])
        node = node[key]
    return node


# ----------------------------------------------------------------------------------------------------
# batch norm in train mode (batch-coupled), layer norm


def _bn_bracket(activation, gamma_h, gamma_x, bias, n, n_x):
    """Moments shared by the BN/LN predictions (see docs/theory.md §3): expectations over
    y = γ_h u + γ_x w + b, u, w the normalized coordinates of sizes n, n_x (None: n → ∞) (`_pair_nodes`)."""
    phi, dphi = _phi(activation)
    u, w, p = _pair_nodes(gamma_h, gamma_x, bias, n, n_x, sharp=activation not in _IDENTITY)
    y = gamma_h * u + gamma_x * w + bias
    h, dh = phi(y), dphi(y)
    E = lambda v: float(np.sum(p * v))
    mu = E(h)
    # centred about E φ (two passes): a large bias b would otherwise cancel catastrophically in E φ² − (E φ)²
    return {
        "dphi2": E(dh**2),
        "dphi": E(dh),
        "u2dphi2": E(u**2 * dh**2),
        "phi2": E(h**2),
        "phi": mu,
        "var_phi": E((h - mu) ** 2),
        "uphi": E(u * (h - mu)),
        "wphi": E(w * (h - mu)),
    }


def _unit_scale(activation: str, *values: float) -> tuple[float, tuple[float, ...]]:
    """(c, values / c) with c = max |value| for φ = identity, (1, values) otherwise.

    φ(c y) = c φ(y) for the identity, so the BN/LN χ depends on (γ, γ_x, b) only up to a common factor:
    dividing it out keeps γ = 1e-200 or 1e200 from underflowing or overflowing in γ² and the variances.
    """
    if activation not in _IDENTITY:
        return 1.0, values
    c = max(abs(v) for v in values)
    return c, tuple(v / c for v in values)


def _positive_moment(value: float, what: str, where: str, floor: float = 0.0) -> float:
    """``value`` when > ``floor``; else a ValueError: a moment of h that is 0 in float64 (a vanishing φ),
    or a variance lost in the rounding of φ's mean (a tanh saturated by a huge bias), leaves χ = 0/0."""
    if not value > floor:
        raise ValueError(f"{where}: {what} is {value!r}, not resolved in float64 (underflow: φ vanishes, or "
                         "is constant to rounding over the whole Gaussian, e.g. a tanh saturated by a huge "
                         "bias); no prediction")
    return value


def bn_train_chi(
    gamma_h: float,
    gamma_x: float = 0.0,
    batch_size: int = 32,
    activation: str = "linear",
    bias: float = 0.0,
    dropout: float = 0.0,
) -> float:
    """Mean-field χ per step of h_t = φ(γ_h·BN(W_hh h_{t-1}) + γ_x·BN(W_xh x_t) + b), BN in train mode.

    The per-step Jacobian over the whole batch state (n = B·d) couples the examples through the batch
    statistics. Derivation (docs/theory.md §3), for d → ∞ with random W_hh (any gain: it cancels):

        χ = γ_h² (B−1) / ((B−3) v) · [E φ'² − (E[u² φ'²] + Var φ') / (B−1)]

    with y = γ_h u + γ_x w + b, u, w the normalized recurrent / input coordinates (exact finite-B law of a
    normalized entry), v the expected batch variance of h = φ(y). For φ = identity:
    χ = γ_h² / (γ_h² + γ_x²) · (B−2)/(B−3). The factor (B−1)/(B−3) is E[1/σ²] of a χ²_{B−1} batch variance
    (Jensen), (B−2)/(B−1) the fraction a tangent keeps when BN projects out its feature's normalized
    direction. Inputs absent (x = 0) ⇒ BN_x outputs 0: pass γ_x = 0. Dropout on h (inverted) cancels to
    leading order (it scales the tangent and σ² alike) and is accepted only to make that explicit.

    Args:
        gamma_h: BN_h scale γ_h (the same for every feature).
        gamma_x: BN_x scale γ_x (0 without input).
        batch_size: B >= 4 (E[1/σ²] diverges for B <= 3).
        activation: "linear" (bn_notanh) or "tanh" (bn_tanh).
        bias: b (the same for every unit).
        dropout: hidden dropout p (no effect at this order).

    Returns:
        χ (squared-norm growth per step). With φ = identity it depends on γ_h, γ_x only through their
        ratio and not on b, at any scale (1e-200 or 1e200 included).

    Raises:
        ValueError: a bad argument, or a batch variance of h not resolved in float64 (tanh saturated by a
            huge bias: h is constant to rounding, χ would be 0/0).

    Example:
        >>> round(bn_train_chi(1.0, 0.0, 8), 6)   # (B-2)/(B-3)
        1.2
    """
    B = batch_size
    if not is_int(B) or B < 4:
        raise ValueError(f"batch_size must be an int >= 4 (E[1/σ²] is infinite for B <= 3), got {B!r}")
    gh = finite_float("gamma_h", gamma_h)
    gx = finite_float("gamma_x", gamma_x)
    b = finite_float("bias", bias)
    _check_rate_p(dropout)
    _phi(activation)  # checks the name
    if gh == 0.0:  # γ_h = 0: h_t does not depend on h_{t-1}, the Jacobian is exactly 0
        return 0.0
    _, (gh, gx) = _unit_scale(activation, gh, gx)
    if activation in _IDENTITY:
        b = 0.0  # BN's batch statistics remove a constant shift of h = y: χ does not depend on b
    m = _bn_bracket(activation, gh, gx, b, B, B if gx != 0.0 else None)
    var_phi = m["var_phi"]
    resid = var_phi - m["uphi"] ** 2 - m["wphi"] ** 2
    v = _positive_moment(var_phi - resid / B, "the batch variance of h", "bn_train_chi",
                         (1e-14 * m["phi"]) ** 2)
    bracket = m["dphi2"] - (m["u2dphi2"] + m["dphi2"] - m["dphi"] ** 2) / (B - 1)
    return gh**2 * (B - 1) / ((B - 3) * v) * bracket


@_in_float64
def bn_train_rate(gamma_h, gamma_x=0.0, batch_size=32, activation="linear", bias=0.0, dropout=0.0) -> float:
    """½ ln `bn_train_chi`: predicted top Lyapunov exponent of a BN(train)-recurrent cell (norm, per
    step)."""
    return _half_log(bn_train_chi(gamma_h, gamma_x, batch_size, activation, bias, dropout), "bn_train_rate")


def bn_feedforward_rate(batch_size: int, activation: str = "linear") -> float:
    """Gradient growth rate per layer of a deep BN network at init, h_l = φ(BN(W_l h_{l-1})), untied
    random W_l.

    The same batch-coupled mean field as `bn_train_chi` with γ = 1 and no input (Yang et al. 2019: gradients
    explode with depth at a rate set by B, whatever the weight variance): linear φ gives ½ ln((B−2)/(B−3)).
    Returns the norm rate (natural log per layer).

    Example:
        >>> round(bn_feedforward_rate(8), 4)
        0.0912
    """
    return bn_train_rate(1.0, 0.0, batch_size, activation)


def ln_chi(
    gamma_h: float,
    gamma_x: float = 0.0,
    hidden_size: int | None = None,
    activation: str = "linear",
    bias: float = 0.0,
    dropout: float = 0.0,
) -> float:
    """Mean-field χ per step of h_t = D(φ(γ_h·LN(W_hh h_{t-1}) + γ_x·ξ_t + b)): LN on the recurrent path.

    ξ_t is the normalized input path (BN_x(W_xh x_t) in ``ln_notanh``, unit variance per coordinate).
    LN couples
    the features of one example, not the examples. Derivation (docs/theory.md §4):

        χ = γ_h² / m · [(d−1) E φ'² − E[u² φ'²]] / (d−3),   m = E[φ(y)²] (raw second moment of h)

    which for φ = identity is γ_h² / (γ_h² + γ_x²) · (d−2)/(d−3). The gain g cancels, and so does dropout
    (accepted to make that explicit). hidden_size None means d → ∞.
    """
    d = hidden_size
    if d is not None and (not is_int(d) or d < 4):
        raise ValueError(f"hidden_size must be an int >= 4 or None, got {d!r}")
    gh = finite_float("gamma_h", gamma_h)
    gx = finite_float("gamma_x", gamma_x)
    b = finite_float("bias", bias)
    _check_rate_p(dropout)
    _phi(activation)  # checks the name
    if gh == 0.0:  # γ_h = 0: h_t does not depend on h_{t-1}, the Jacobian is exactly 0
        return 0.0
    _, (gh, gx, b) = _unit_scale(activation, gh, gx, b)
    m = _bn_bracket(activation, gh, gx, b, d, None)
    m2 = _positive_moment(m["phi2"], "the second moment of h", "ln_chi")
    if d is None:
        return gh**2 * m["dphi2"] / m2
    return gh**2 / m2 * ((d - 1) * m["dphi2"] - m["u2dphi2"]) / (d - 3)


@_in_float64
def ln_rate(gamma_h, gamma_x=0.0, hidden_size=None, activation="linear", bias=0.0, dropout=0.0) -> float:
    """½ ln `ln_chi` (norm growth rate per step)."""
    return _half_log(ln_chi(gamma_h, gamma_x, hidden_size, activation, bias, dropout), "ln_rate")


def ln_sum_chi(
    gamma: float,
    gain: float,
    sigma_x2: float = 0.0,
    hidden_size: int | None = None,
    activation: str = "linear",
    bias: float = 0.0,
    dropout: float = 0.0,
) -> float:
    """Mean-field χ of h_t = D(φ(γ·LN(W_hh h_{t-1} + W_xh x_t) + b)): LN after the sum (``ln_tanh``).

    Here the gain does not cancel: σ² = g_eff² m + σ_x², so

        χ = γ² g_eff² / (g_eff² m + σ_x²) · [(d−1) E φ'² − E[u² φ'²]] / (d−3),   m = E[φ(γu + b)²],

    with g_eff = g/√(1−p) (`effective_gain`) and σ_x² the input-drive variance (`input_drive_variance`).
    """
    d = hidden_size
    if d is not None and (not is_int(d) or d < 4):
        raise ValueError(f"hidden_size must be an int >= 4 or None, got {d!r}")
    g = effective_gain(gain, dropout)
    gm = finite_float("gamma", gamma)
    sx = nonneg_float("sigma_x2", sigma_x2)
    b = finite_float("bias", bias)
    _phi(activation)  # checks the name
    if gm == 0.0 or g == 0.0:  # γ = 0 or W_hh = 0: h_t does not depend on h_{t-1}, the Jacobian is 0
        return 0.0
    c, (gm, b) = _unit_scale(activation, gm, b)
    m = _bn_bracket(activation, gm, 0.0, b, d, None)
    # χ = γ² / (m + σ_x²/g²) with everything divided by c: no g² or γ² to under/overflow
    gc = g * c
    drive = 0.0 if sx == 0.0 else (sx / gc / gc if gc > 0.0 else math.inf)
    pref = gm**2 / _positive_moment(m["phi2"] + drive, "the second moment of the pre-LN sum", "ln_sum_chi")
    if d is None:
        return pref * m["dphi2"]
    return pref * ((d - 1) * m["dphi2"] - m["u2dphi2"]) / (d - 3)


@_in_float64
def ln_sum_rate(
    gamma, gain, sigma_x2=0.0, hidden_size=None, activation="linear", bias=0.0, dropout=0.0
) -> float:
    """½ ln `ln_sum_chi` (norm growth rate per step)."""
    return _half_log(ln_sum_chi(gamma, gain, sigma_x2, hidden_size, activation, bias, dropout), "ln_sum_rate")


# ----------------------------------------------------------------------------------------------------
# dispatcher over presets


def predict_rate(
    name: str,
    *,
    hidden_size: int,
    batch_size: int,
    gain: float = 1.0,
    gamma: float | None = None,
    gamma_x: float | None = None,
    sigma_x2: float = 0.0,
    has_input: bool = True,
    dropout: float = 0.0,
    train: bool = True,
) -> float:
    """Predicted top Lyapunov exponent (norm, per step) of a preset at initialization.

    Args:
        name: "tanh", "linear", "bn_notanh", "bn_tanh", "ln_notanh" or "ln_tanh".
        hidden_size: d.
        batch_size: B (used by BN in train mode).
        gain: g of W_hh.
        gamma: γ of the normalization on the recurrent path (default: the preset's init).
        gamma_x: γ of BN_x (default: the preset's BN γ init).
        sigma_x2: input-drive variance of W_xh x_t (unnormalized input paths: tanh, linear, ln_tanh).
        has_input: False when x_t = 0 (BN_x then outputs its shift only: γ_x is irrelevant).
        dropout: hidden dropout p (train mode).
        train: BN batch statistics (True). Eval mode of BN cells is exact: use `cell_eval_matrix`.

    Returns:
        The predicted rate. "linear" returns the large-d value ln g_eff (the exact value for a given W is
        max `linear_lyapunov_spectrum`).
    """
    if name not in ("tanh", "linear", "bn_notanh", "bn_tanh", "ln_notanh", "ln_tanh"):
        raise ValueError(f"no mean-field prediction for {name!r}")
    hidden_size, batch_size = positive_int("hidden_size", hidden_size), positive_int("batch_size", batch_size)
    has_input, train = flag("has_input", has_input), flag("train", train)
    spec = PRESETS[name]
    p = dropout if train else 0.0
    sx = sigma_x2 if has_input else 0.0
    if name == "tanh":
        return tanh_rnn_rate(gain, sx, 0.0, dropout=p)
    if name == "linear":
        return _half_log(effective_gain(gain, p) ** 2, "predict_rate('linear')")
    if name in ("bn_notanh", "bn_tanh"):
        if not train:
            raise ValueError("BN in eval mode is exact: use cell_eval_matrix + linear_lyapunov_spectrum")
        gh = spec.bn_gamma_init if gamma is None else gamma
        gx = (spec.bn_gamma_init if gamma_x is None else gamma_x) if has_input else 0.0
        act = "linear" if spec.activation == "identity" else spec.activation
        return bn_train_rate(gh, gx, batch_size, act, 0.0, p)
    if name == "ln_notanh":
        gh = spec.ln_gamma_init if gamma is None else gamma
        gx = (spec.bn_gamma_init if gamma_x is None else gamma_x) if has_input else 0.0
        return ln_rate(gh, gx, hidden_size, "linear", 0.0, p)
    gm = spec.ln_gamma_init if gamma is None else gamma
    return ln_sum_rate(gm, gain, sx, hidden_size, "tanh", 0.0, p)


# ----------------------------------------------------------------------------------------------------
# finite-size corrections (the measurements themselves are in gradflow.measure)


def tied_weight_correction(W_hh, gain: float) -> float:
    """ln(ρ(W_hh)/g): correction to the mean-field rate of cells whose Jacobian is a scalar ×
    (projection) × W_hh.

    With LN on the recurrent path (``ln_notanh``) and for ``linear``, the per-example Jacobian is
    (γ/σ_t) P_t W_hh with a *scalar* 1/σ_t, so with tied weights the product over steps behaves like
    W_hh^k and its growth is set by the spectral radius ρ(W_hh) rather than by the mean-field
    √(E‖W v‖²/‖v‖²) = g. For a finite Gaussian W_hh, ρ exceeds g by O(√(ln d / d)) (about +0.02–0.05
    in ln at d = 128–512), a bias that shrinks only slowly with d. Cells with a per-unit random diagonal
    in the Jacobian (tanh, BN per feature) mix the directions and follow the mean field instead
    (docs/theory.md §6).
    """
    g = positive_float("gain", gain)
    return float(linear_lyapunov_spectrum(W_hh)[0] - math.log(g))


# ----------------------------------------------------------------------------------------------------
# what keeps gradients alive: exact statements for the LRU and the IRNN, the critical input γ of the
# normalized recurrences without tanh (docs/theory.md §8)


def _lru_logs(params) -> tuple[np.ndarray, np.ndarray]:
    """(ν_log, θ_log) as float64 arrays from an LRU's params; ValueError naming what is missing or wrong."""
    if not hasattr(params, "keys") or not {"nu_log", "theta_log"} <= set(params.keys()):
        have = sorted(map(str, params.keys())) if hasattr(params, "keys") else type(params).__name__
        raise ValueError(f"params must be an LRU's params, a mapping with 'nu_log' and 'theta_log' (the "
                         f"cell's variables['params'], or its 'cell' entry in an LRU block), "
                         f"got {have}"[:300])
    try:
        return (np.asarray(params["nu_log"], np.float64), np.asarray(params["theta_log"], np.float64))
    except (TypeError, ValueError) as e:
        raise ValueError(f"params['nu_log'] and params['theta_log'] must be real arrays: {e}") from None


def lru_eigenvalues(params) -> np.ndarray:
    """The LRU's diagonal λ_j = exp(−exp(ν_j) + i·exp(θ_j)) from its parameters (``nu_log``, ``theta_log``).

    Args:
        params: the LRU cell's params (or any mapping with ``nu_log`` and ``theta_log``, each (N,)).

    Returns:
        (N,) complex128.
    """
    nu, th = _lru_logs(params)
    if nu.shape != th.shape or nu.ndim != 1:
        raise ValueError(f"nu_log and theta_log must be (N,) arrays, got shapes {nu.shape} and {th.shape}")
    if not (np.all(np.isfinite(nu)) and np.all(np.isfinite(th))):
        raise ValueError("nu_log or theta_log has non-finite entries")
    return np.exp(-np.exp(nu) + 1j * np.exp(th))


def lru_rate(params) -> float:
    """Exact growth rate of ‖∂h_T/∂h_{T−k}‖₂ per step of an LRU (bare or in its block): ln max_j |λ_j|.

    The k-step state Jacobian is diag(λ)^k (the real form of it in the carry's layout [Re x, Im x]), whose
    spectral norm is max|λ|^k at every lag, input and batch, so the rate is exact, not mean-field:
    −min_j exp(ν_j) < 0. An LRU without modes (empty ``nu_log``) has no rate: ValueError.

    Example:
        >>> round(lru_rate({"nu_log": np.log([0.1, 0.01]), "theta_log": np.zeros(2)}), 6)
        -0.01
    """
    if lru_eigenvalues(params).size == 0:
        raise ValueError("params has no modes (empty nu_log and theta_log): an LRU of size 0 has no rate")
    return float(-np.exp(_lru_logs(params)[0]).min())


def lru_spectrum(params) -> np.ndarray:
    """Exact Lyapunov spectrum of an LRU's real state (2N): every ln|λ_j| twice, largest first."""
    lru_eigenvalues(params)  # checks
    r = -np.exp(_lru_logs(params)[0])
    return np.sort(np.repeat(r, 2))[::-1]


def lru_init_rate(n_modes: int, r_min: float = 0.0, r_max: float = 1.0) -> float:
    """Expected `lru_rate` at initialization, E[ln max_j |λ_j|], over the ring init of ``n_modes`` modes.

    |λ_j|² = r_min² + (r_max² − r_min²) u_j with u_j ~ U(0, 1) independent, so max|λ|² is that map of the
    largest of N uniforms (density N u^{N−1}) and
    E[ln max|λ|] = ½ ∫₀¹ N u^{N−1} ln(r_min² + (r_max² − r_min²) u) du. For r_min = 0 this is
    ln r_max − 1/(2N) exactly (−ln u_max is exponential with rate N); otherwise it is computed by
    Gauss–Legendre quadrature in s = u^N (the integrand is smooth in s).

    Example:
        >>> round(lru_init_rate(32), 6)
        -0.015625
    """
    if isinstance(n_modes, bool) or not isinstance(n_modes, int | np.integer) or n_modes < 1:
        raise ValueError(f"n_modes must be a positive int, got {n_modes!r}")
    lo = nonneg_float("r_min", r_min)
    hi = positive_float("r_max", r_max)
    if not lo < hi <= 1.0:
        raise ValueError(f"the ring needs 0 <= r_min < r_max <= 1, got r_min={lo}, r_max={hi}")
    if lo == 0.0:
        return math.log(hi) - 0.5 / n_modes
    x, w = np.polynomial.legendre.leggauss(200)
    s_ = 0.5 * (x + 1.0)  # s = u^N ~ U(0, 1): u = s^(1/N)
    u = s_ ** (1.0 / n_modes)
    return float(0.5 * np.sum(0.5 * w * np.log(lo**2 + (hi**2 - lo**2) * u)))


def relu_rate_bound(W_hh) -> float:
    """Upper bound ln‖W_hh‖₂ on the growth rate (every lag) of a ReLU RNN's ‖∂h_T/∂h_t‖₂.

    The step Jacobian of h_t = ReLU(W_hh h_{t−1} + W_xh x_t + b) is diag(1[a_t > 0]) W_hh, whose norm is at
    most ‖W_hh‖₂. At the IRNN's initialization (W_hh = I) the bound is 0 and the k-step Jacobian is exactly
    Π diag(1[a_s > 0]), a 0/1 diagonal: its spectral norm is 1 while some unit stays active over the whole
    lag and 0 once none does (the rate at init is 0 or −∞, never an exponential decay in between).
    """
    W = np.asarray(W_hh, np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1] or not np.all(np.isfinite(W)):
        raise ValueError(f"W_hh must be a finite square matrix, got shape {W.shape}")
    return float(np.log(np.linalg.norm(W, 2)))


def input_variance_share(gamma_x: float, gamma_h: float = 1.0) -> float:
    """The input path's share γ_x²/(γ_h² + γ_x²) of the state's per-feature variance in `bn_notanh` /
    `ln_notanh` (h_t = γ_h N(W_hh h_{t−1}) + γ_x BN(W_xh x_t): two independent unit-variance terms)."""
    gx = nonneg_float("gamma_x", gamma_x)
    gh = positive_float("gamma_h", gamma_h)
    r = gx / gh  # the share depends on the ratio only: no square to overflow
    return 1.0 / (1.0 + (1.0 / r) ** 2) if r > 1.0 else r**2 / (1.0 + r**2)


def critical_input_gamma(name: str, *, batch_size=None, hidden_size=None, gamma_h: float = 1.0) -> float:
    """The input-path γ_x that makes the mean-field rate of `bn_notanh` / `ln_notanh` zero (train mode).

    From docs/theory.md §3.5 and §4.1: χ = γ_h²/(γ_h² + γ_x²)·(n−2)/(n−3) with n = B (bn_notanh, BN's
    statistics over the batch) or n = d (ln_notanh, LN's over the features); χ = 1 at

        γ_x = γ_h / sqrt(n − 3).

    Dropout on h leaves χ unchanged to leading order (§3.6), so the same γ_x holds with the preset's p = 0.2.
    At that γ_x the input carries the share 1/(n − 2) of the state's variance (`input_variance_share`).

    Args:
        name: "bn_notanh" or "ln_notanh".
        batch_size: B (bn_notanh), an int >= 4.
        hidden_size: d (ln_notanh), an int >= 4.
        gamma_h: γ of the recurrent path's normalization (> 0).

    Returns:
        γ_x > 0.

    Raises:
        ValueError: another name, a missing size, or n ≤ 3 (E[1/σ²] is infinite for n ≤ 3: no γ_x balances
            an infinite expansion factor).

    Example:
        >>> round(critical_input_gamma("bn_notanh", batch_size=8), 6)
        0.447214
    """
    sizes = {"bn_notanh": ("batch_size", batch_size), "ln_notanh": ("hidden_size", hidden_size)}
    if name not in sizes:
        raise ValueError(
            f"no critical input γ for {name!r}: defined for 'bn_notanh' (batch_size) and 'ln_notanh' "
            "(hidden_size), the normalized recurrences without tanh"
        )
    gh = positive_float("gamma_h", gamma_h)
    what, n = sizes[name]
    if n is None:
        raise ValueError(f"critical_input_gamma({name!r}) needs {what}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise ValueError(f"{what} must be an int, got {n!r}")
    if n <= 3:
        raise ValueError(
            f"{what} = {n} <= 3: the mean-field expansion (n−2)/(n−3) of the normalization is infinite or "
            "negative there, so no input γ_x makes the rate zero"
        )
    return gh / math.sqrt(n - 3)


# ----------------------------------------------------------------------------------------------------
# the curse of memory (Zucchet & Orvieto, NeurIPS 2024): the 1-D linear recurrence h_t = λ h_{t−1} + x_t
# driven by stationary inputs with unit variance and autocorrelation E[x_t x_{t−Δ}] = ρ^|Δ|


def _memory_args(lam, rho) -> tuple[float, float]:
    lam = finite_float("lam", lam)
    rho = finite_float("rho", rho)
    if not -1.0 < lam < 1.0:
        raise ValueError(f"lam must lie in (-1, 1) (a stable recurrence; else E[h²] is infinite), got {lam}")
    if not -1.0 < rho < 1.0:
        raise ValueError(f"rho must lie in (-1, 1) (a stationary input autocorrelation ρ^|Δ|), got {rho}")
    return lam, rho


def memory_state_moment(lam: float, rho: float = 0.0) -> float:
    """E[h²] of h_t = λ h_{t−1} + x_t in its stationary state, inputs of unit variance and autocorrelation ρ.

    h_t = Σ_k λ^k x_{t−k}, so E[h²] = Σ_{k,l} λ^{k+l} ρ^{|k−l|} = (1 + ρλ) / ((1 − ρλ)(1 − λ²))
    (white noise, ρ = 0: 1/(1 − λ²)).

    Example:
        >>> round(memory_state_moment(0.9), 6), round(memory_state_moment(0.9, 0.5), 6)
        (5.263158, 13.875598)
    """
    lam, rho = _memory_args(lam, rho)
    return (1.0 + rho * lam) / ((1.0 - rho * lam) * (1.0 - lam**2))


def memory_sensitivity_moment(lam: float, rho: float = 0.0) -> float:
    """E[(∂h/∂λ)²] of h_t = λ h_{t−1} + x_t, stationary (Zucchet & Orvieto 2024: the curse of memory).

    ∂h_t/∂λ = Σ_k k λ^{k−1} x_{t−k} (the recursion d_t = λ d_{t−1} + h_{t−1}), so
    E[(∂h/∂λ)²] = Σ_{k,l} k l λ^{k+l−2} ρ^{|k−l|}
               = [(1 + λ²)(1 − λ²ρ²) + 2λρ(1 − λ²)] / [(1 − λ²)³ (1 − λρ)²]
    (white noise: (1 + λ²)/(1 − λ²)³). It grows like (1 − λ)^−3 as λ → 1, faster than E[h²] ~ (1 − λ)^−1:
    the relative sensitivity E[(∂h/∂λ)²]/E[h²] grows like (1 − λ)^−2 while ∂h_t/∂h_0 = λ^t neither explodes
    nor vanishes. Under λ = exp(−e^ν) (the LRU's parametrization) ∂λ/∂ν = λ ln λ, which cancels it:
    E[(∂h/∂ν)²]/E[h²] = (λ ln λ)² · E[(∂h/∂λ)²]/E[h²] stays bounded (→ 1/2 for white noise).

    Example:
        >>> round(memory_sensitivity_moment(0.9), 4)  # (1 + 0.81) / 0.19**3
        263.8869
    """
    lam, rho = _memory_args(lam, rho)
    num = (1.0 + lam**2) * (1.0 - lam**2 * rho**2) + 2.0 * lam * rho * (1.0 - lam**2)
    return num / ((1.0 - lam**2) ** 3 * (1.0 - lam * rho) ** 2)

