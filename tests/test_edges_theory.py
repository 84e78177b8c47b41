"""gradflow.theory and gradflow.unit_bn at their edges: bad arguments refused by name, extreme ones right.

References are independent of gradflow: the trapezoid rule on a fine grid (moderate variances), the
large-variance expansion E[g(√q z)] = (∫g − ∫a²g/(2q) + …)/√(2πq) for g = sech², sech⁴ (wide Gaussians),
bisection on those for the fixed points, exact fractions and closed forms (BN/LN χ of the linear cells, the
two-point gain). Each case failed before (a wrong number, a cryptic error, NaN or a numpy warning).
"""

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

from gradflow import theory as th
from gradflow import unit_bn

NAN, INF = float("nan"), float("inf")
BAD_NUMBERS = [True, 1j, -1.0, NAN, INF, -INF, "0.5", [0.5], None]


def _sech2(a):
    e = np.exp(-np.abs(a))
    return (2 * e / (1 + e * e)) ** 2


def _trapezoid_gauss(f, q, step=2e-3):
    """E[f(√q z)] by the trapezoid rule in a = √q z over ±16 √q (spectrally accurate for these integrands)."""
    s = math.sqrt(q)
    a = np.arange(-16 * s, 16 * s + step, step)
    return float(np.trapezoid(f(a) * np.exp(-0.5 * (a / s) ** 2), a) / (s * math.sqrt(2 * math.pi)))


def _wide_sech2(q):
    """E[sech²(√q z)] for large q: (∫sech² − ∫a² sech²/(2q) + ∫a⁴ sech²/(8q²))/√(2πq), error O(q^-3.5)."""
    return (2.0 - math.pi**2 / (12.0 * q) + 7 * math.pi**4 / (960.0 * q * q)) / math.sqrt(2 * math.pi * q)


def _bisect(F, lo, hi):
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if F(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------- wide Gaussians


@pytest.mark.parametrize("q", [1e4, 1e12, 1e300])
def test_gauss_expectation_of_tanh2_when_the_gaussian_is_wide(q):
    # Gauss–Hermite put its 121 nodes at √q z and missed tanh's transition: 0.886 for every q >~ 1e4
    assert th.gauss_expectation(lambda a: np.tanh(a) ** 2, q) == pytest.approx(1 - _wide_sech2(q), rel=1e-12)
    assert th.tanh_variance_map(q, 1.0) == pytest.approx(1 - _wide_sech2(q), rel=1e-12)


@pytest.mark.parametrize("q", [1.0, 2.1215, 5.0, 30.0])
def test_gauss_expectation_at_moderate_variance_matches_the_trapezoid_rule(q):
    for f in (lambda a: np.tanh(a) ** 2, lambda a: _sech2(a) ** 2):  # sech⁴ at q = 5 was off by 4e-4
        assert th.gauss_expectation(f, q) == pytest.approx(_trapezoid_gauss(f, q), rel=1e-11)


def test_gauss_expectation_keeps_polynomials_and_oscillations():
    for q in (0.3, 2.0, 1e6, 1e300):
        assert th.gauss_expectation(lambda a: a**2, q) == pytest.approx(q, rel=1e-12)
    assert th.gauss_expectation(lambda a: a**4, 2.0) == pytest.approx(12.0, rel=1e-12)
    assert th.gauss_expectation(np.cos, 0.7) == pytest.approx(math.exp(-0.35), rel=1e-12)
    assert th.gauss_expectation(np.cos, 8.0) == pytest.approx(math.exp(-4.0), rel=1e-9)
    assert abs(th.gauss_expectation(np.cos, 100.0)) < 1e-12  # e^-50


def _wide_fixed_point(g):
    """q* of q = g² (1 − E[sech²]) for q* ≫ 1 (the large-variance expansion, bisection)."""
    return _bisect(lambda q: g * g * (1 - _wide_sech2(q)) - q, 0.5 * g * g, g * g)


def test_tanh_fixed_point_chi1_and_rate_at_huge_gain():
    g = 1e6
    q = _wide_fixed_point(g)
    assert th.tanh_fixed_point(g) == pytest.approx(q, rel=1e-12)
    sech4 = (4.0 / 3.0) / math.sqrt(2 * math.pi * q)  # ∫sech⁴ = 4/3; the next term is O(1/q) = 1e-12
    assert th.tanh_chi1(g) == pytest.approx(g * g * sech4, rel=1e-9)
    assert th.tanh_rnn_rate(g) == pytest.approx(math.log(g) + 0.5 * math.log(sech4), rel=1e-12)


def test_tanh_fixed_point_with_dropout_near_one():
    p = 0.999999
    geff = 2.0 / math.sqrt(1 - p)
    assert th.tanh_fixed_point(2.0, dropout=p) == pytest.approx(_wide_fixed_point(geff), rel=1e-10)


def test_tanh_chi1_at_gain_4_matches_the_trapezoid_rule():
    # q* ≈ 15: Gauss–Hermite was 2.5 % off in χ₁ (0.012 in the rate) at the lyapunov figure's largest gain
    def tanh2(a):
        return np.tanh(a) ** 2

    for g, sx in ((4.0, 0.0), (4.0, 1.0), (2.8, 0.0)):
        q = _bisect(lambda q, g=g, sx=sx: g * g * _trapezoid_gauss(tanh2, q) + sx - q, 1e-3, g * g + sx + 1)
        chi1 = g * g * _trapezoid_gauss(lambda a: _sech2(a) ** 2, q)
        assert th.tanh_fixed_point(g, sx) == pytest.approx(q, rel=1e-10)
        assert th.tanh_chi1(g, sx) == pytest.approx(chi1, rel=1e-9)
        assert th.tanh_rnn_rate(g, sx) == pytest.approx(0.5 * math.log(chi1), rel=1e-9)


def test_tanh_variance_map_beyond_float64_is_refused_naming_the_overflow():
    with pytest.raises(ValueError, match="overflow float64"):
        th.tanh_variance_map(1.0, 1e200)
    with pytest.raises(ValueError, match="overflow float64"):
        th.tanh_fixed_point(1e200)


@pytest.mark.parametrize("arg", ["gain", "sigma_x2", "sigma_b2"])
@pytest.mark.parametrize("bad", BAD_NUMBERS, ids=repr)
def test_tanh_variance_map_arguments_are_checked(arg, bad):
    kw = {"q": 1.0, "gain": 2.0, "sigma_x2": 0.0, "sigma_b2": 0.0, arg: bad}
    with pytest.raises(ValueError, match=arg):
        th.tanh_variance_map(**kw)


def test_tanh_variance_map_accepts_numpy_scalars():
    assert th.tanh_variance_map(np.float32(1.0), np.int64(2), np.float64(0.5)) == pytest.approx(
        4 * _trapezoid_gauss(lambda a: np.tanh(a) ** 2, 1.0) + 0.5, rel=1e-12)


# ------------------------------------------------------------------------------------ argument checks


@pytest.mark.parametrize("f", [None, "x²", 3])
def test_expectations_need_a_function(f):
    with pytest.raises(ValueError, match="f must be a function"):
        th.gauss_expectation(f, 1.0)
    with pytest.raises(ValueError, match="f must be a function"):
        th.normalized_coordinate_expectation(f, 4)


@pytest.mark.parametrize("n", ["4", 2.5, True, NAN, 2])
def test_normalized_coordinate_expectation_checks_n(n):
    with pytest.raises(ValueError, match="normalized size n"):
        th.normalized_coordinate_expectation(lambda y: y**2, n)


@pytest.mark.parametrize("n_points", [1, True, 2.5, "3", None])
def test_gauss_expectation_checks_n_points_at_every_variance(n_points):
    for q in (0.1, 4.0):
        with pytest.raises(ValueError, match="n_points"):
            th.gauss_expectation(lambda a: a**2, q, n_points)


W8 = np.full((8, 4), 0.5)


@pytest.mark.parametrize("gates", [0, -1, True, 2.5, "3", [2], None])
def test_input_drive_variance_checks_gates(gates):
    with pytest.raises(ValueError, match="gates"):
        th.input_drive_variance(W8, 1.0, gates)


@pytest.mark.parametrize("W", [np.full((8, 4), NAN), np.full((8, 4), INF), np.zeros((0, 4)), [["a"]],
                               None, np.ones(4)], ids=["nan", "inf", "empty", "strings", "None", "1-D"])
def test_input_drive_variance_checks_W_xh(W):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="W_xh"):
            th.input_drive_variance(W)


@pytest.mark.parametrize("m2", [-1.0, NAN, True, "1"])
def test_input_drive_variance_checks_x_second_moment(m2):
    with pytest.raises(ValueError, match="x_second_moment"):
        th.input_drive_variance(W8, m2)


def test_input_drive_variance_values():
    assert th.input_drive_variance(W8, np.float32(2.0)) == 2.0
    assert th.input_drive_variance(W8, 1.0, np.int64(4)) == 1.0
    assert th.input_drive_variance(np.full((8, 4), 1e150), 2.0) == pytest.approx(8e300, rel=1e-12)


def test_linear_lyapunov_spectrum_reads_a_triangular_matrix_exactly():
    ln = math.log
    np.testing.assert_allclose(th.linear_lyapunov_spectrum(np.diag([1e-300, 1e300])),
                               [ln(1e300), ln(1e-300)], rtol=1e-12)  # eigvals gave 0 for 1e-300
    np.testing.assert_allclose(th.linear_lyapunov_spectrum(np.array([[1e-300, 5.0], [0.0, 1e300]])),
                               [ln(1e300), ln(1e-300)], rtol=1e-12)
    np.testing.assert_allclose(th.linear_lyapunov_spectrum(np.array([[2.0, 0.0], [7.0, -0.5]])),
                               [ln(2.0), ln(0.5)], rtol=1e-14)
    W = np.random.default_rng(0).standard_normal((6, 6))  # dense: still LAPACK's eigenvalues
    np.testing.assert_array_equal(th.linear_lyapunov_spectrum(W),
                                  np.sort(np.log(np.abs(np.linalg.eigvals(W))))[::-1])
    with pytest.raises(ValueError, match="W must be an array of real numbers"):
        th.linear_lyapunov_spectrum(np.array([["a", "b"], ["c", "d"]]))


W2 = np.array([[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize("arg, value", [
    ("var", np.array([-1e-6, 1.0])), ("var", np.array([NAN, 1.0])), ("scale", np.array([NAN, 1.0])),
    ("W_hh", np.full((2, 2), NAN)), ("var", ["a", "b"]),
    *[("eps", v) for v in (True, [0.5], 1j, INF, NAN, "0.5", None, 0.0, -1.0)],
])
def test_bn_eval_matrix_checks_its_arguments(arg, value):
    kw = {"W_hh": W2, "scale": np.array([1.0, 2.0]), "var": np.array([3.0, 0.0]), "eps": 1e-5, arg: value}
    with pytest.raises(ValueError, match=arg):
        th.bn_eval_matrix(**kw)


def test_bn_eval_matrix_values():
    got = th.bn_eval_matrix(W2, [1.0, 2.0], [3.0, 0.0], np.float32(0.25))
    np.testing.assert_allclose(got, np.array([[1 / math.sqrt(3.25)], [2 / 0.5]]) * W2, rtol=1e-15)


def _bn_vars():
    var_rows = np.array([[1.0, 2.0], [3.0, 4.0], [0.25, 0.5]])
    return {
        "params": {"W_hh": np.array([[0.5, 0.1], [0.0, 0.9]]), "W_xh": np.ones((2, 1)),
                   "bn_h": {"scale": np.array([1.0, 2.0]), "bias": np.zeros(2)},
                   "bn_x": {"scale": np.ones(2), "bias": np.zeros(2)}},
        "batch_stats": {"bn_h": {"mean": np.zeros((3, 2)), "var": var_rows},
                        "bn_x": {"mean": np.zeros((3, 2)), "var": np.ones((3, 2))}},
    }


@pytest.mark.parametrize("t", [-1, -4, True, 2.5, "1", NAN, [1]])
def test_cell_eval_matrix_checks_t(t):
    with pytest.raises(ValueError, match="t must be a non-negative int"):
        th.cell_eval_matrix("bn_notanh", _bn_vars(), t)


def test_cell_eval_matrix_rows_by_t():
    import gradflow

    v = _bn_vars()
    eps = gradflow.PRESETS["bn_notanh"].bn_eps
    for t, row in ((None, 2), (0, 0), (np.int64(1), 1), (10**9, 2)):
        want = (np.array([1.0, 2.0]) / np.sqrt(v["batch_stats"]["bn_h"]["var"][row] + eps))[:, None] * \
            v["params"]["W_hh"]
        np.testing.assert_allclose(th.cell_eval_matrix("bn_notanh", v, t), want, rtol=1e-15)


@pytest.mark.parametrize("spec", [3, None, 1.5])
def test_cell_eval_matrix_checks_spec(spec):
    with pytest.raises(ValueError, match="spec must be a preset name or a gradflow.CellSpec"):
        th.cell_eval_matrix(spec, _bn_vars())


@pytest.mark.parametrize("variables, missing", [
    ({}, r"\['params'\]\['W_hh'\]; variables has keys \[\]"),
    (None, "variables is NoneType"),
    ({"params": {}}, r"variables\['params'\] has keys \[\]"),
    ({"params": {"W_hh": np.eye(2)}}, r"\['batch_stats'\]\['bn_h'\]\['var'\]"),
])
def test_cell_eval_matrix_names_what_variables_lack(variables, missing):
    with pytest.raises(ValueError, match=missing):
        th.cell_eval_matrix("bn_notanh", variables)


def test_lru_rate_of_an_lru_without_modes_is_refused():
    with pytest.raises(ValueError, match="no modes"):
        th.lru_rate({"nu_log": np.zeros(0), "theta_log": np.zeros(0)})
    assert th.lru_spectrum({"nu_log": np.zeros(0), "theta_log": np.zeros(0)}).shape == (0,)


# --------------------------------------------------------------------- BN / LN at extreme scales


def _lin_bn(gh, gx, B):
    return float(Fraction(gh) ** 2 / (Fraction(gh) ** 2 + Fraction(gx) ** 2) * Fraction(B - 2, B - 3))


@pytest.mark.parametrize("gh, gx, bias", [(1e-200, 0.0, 0.0), (1e200, 0.0, 0.0), (1.0, 0.0, 1e10),
                                          (1e-200, 1e-200, 3.0), (1e200, 2e200, -1e200), (-1.0, 0.5, 0.0)])
def test_bn_train_chi_linear_at_extreme_scales(gh, gx, bias):
    # χ = γ_h²/(γ_h² + γ_x²)·(B−2)/(B−3), whatever the common scale and the bias (BN removes the mean):
    # γ_h = 1e∓200 raised ZeroDivisionError/OverflowError; bias = 1e10 gave 9.6 (cancellation in Var φ)
    assert th.bn_train_chi(gh, gx, 8, "linear", bias) == pytest.approx(_lin_bn(gh, gx, 8), rel=1e-9)


def test_bn_train_rate_at_huge_gamma_and_saturated_tanh():
    assert th.bn_train_rate(1e200, 0.0, 8) == pytest.approx(0.5 * math.log(1.2), rel=1e-9)
    with pytest.raises(ValueError, match="underflow"):
        th.bn_train_chi(1.0, 0.0, 8, "tanh", 1e10)  # h = tanh(1e10 + ...) = 1: no variance, χ = 0/0


@pytest.mark.parametrize("gh, d", [(1e-200, None), (1e200, None), (1e-200, 8), (1e200, 4)])
def test_ln_chi_linear_at_extreme_gamma(gh, d):
    want = 1.0 if d is None else (d - 2) / (d - 3)
    assert th.ln_chi(gh, 0.0, d) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("gamma, gain, sx, want", [
    (1.0, 1e200, 0.0, 1.0), (1.0, 1e-200, 0.0, 1.0), (1e-200, 1.0, 0.0, 1.0), (1e200, 1e200, 0.0, 1.0),
    (1.0, 1e-200, 1e-300, 1e-100),  # χ = g²/(g² + σ_x²) = 1e-400/(1e-400 + 1e-300)
    (1.0, 2.0, 4.0, 0.5), (1e-200, 1e200, 1.0, 0.5),  # γ² g² / (γ² g² + σ_x²)
])
def test_ln_sum_chi_linear_at_extreme_gain_and_gamma(gamma, gain, sx, want):
    assert th.ln_sum_chi(gamma, gain, sx) == pytest.approx(want, rel=1e-9)


def test_ln_sum_rate_gain_cancels_without_drive():
    assert th.ln_sum_rate(1.0, 1e-200) == pytest.approx(0.0, abs=1e-12)  # was -inf
    assert th.ln_sum_rate(1.0, 1e200, 0.0, 8) == pytest.approx(0.5 * math.log(6 / 5), rel=1e-9)


# -------------------------------------------------------------------------------------------- unit_bn


W_UNIT = np.ones(2) / math.sqrt(2)


def _fwd():
    return unit_bn.forward(np.random.default_rng(0).standard_normal((6, 4)), W_UNIT, 1.0)


@pytest.mark.parametrize("seed", [-1, "a", 2.5, True, 2**32])
def test_unit_exponents_checks_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        unit_bn.unit_exponents(_fwd(), 0, 3, seed)


@pytest.mark.parametrize("t_from, t_to", [(True, 2), (0, True), (np.float64(0.0), 2)])
def test_unit_exponents_checks_the_window(t_from, t_to):
    with pytest.raises(ValueError, match="t_from < t_to"):
        unit_bn.unit_exponents(_fwd(), t_from, t_to)


def test_unit_exponents_accepts_numpy_ints():
    f = _fwd()
    np.testing.assert_array_equal(unit_bn.unit_exponents(f, np.int64(0), np.int64(3), np.int64(5)),
                                  unit_bn.unit_exponents(f, 0, 3, 5))


@pytest.mark.parametrize("arg, value", [("xs", np.full((3, 4), NAN)), ("h0", np.full((4, 2), INF)),
                                        ("w", np.array([NAN, 1.0]))])
def test_forward_refuses_non_finite_arrays(arg, value):
    kw = {"xs": np.zeros((3, 4)), "w": W_UNIT, "gamma": 0.5, arg: value}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=f"{arg} must be finite"):
            unit_bn.forward(**kw)


def test_backward_log_norms_refuses_nan_and_gives_minus_inf_for_a_zero_cotangent():
    f = _fwd()
    with pytest.raises(ValueError, match="g_T must be finite"):
        unit_bn.backward_log_norms(f, np.full((4, 2), NAN))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # was NaN with "invalid value encountered in subtract"
        out = unit_bn.backward_log_norms(f, np.zeros((4, 2)))
        part = np.zeros((4, 2))
        part[1, 0] = 1.0  # one example, one unit: the other examples' norms are 0 at h_T
        partial = unit_bn.backward_log_norms(f, part)
    assert np.all(out["log_mean_norm"] == -np.inf) and np.all(out["log_unit_norm"] == -np.inf)
    assert partial["log_mean_norm"][-1] == pytest.approx(math.log(1.0 / 4), rel=1e-14)
    assert np.all(np.isfinite(partial["log_mean_norm"]))


def _log_two_point_direct(g, q, y):
    """ln(γ sech²(γy)/σ) by the plain formula (fine where cosh does not overflow)."""
    ya, yb = math.sqrt((1 - q) / q), -math.sqrt(q / (1 - q))
    sigma = math.sqrt(q * (1 - q)) * (math.tanh(g * ya) - math.tanh(g * yb))
    return math.log(g / math.cosh(g * y) ** 2 / sigma)


def test_two_point_log_gain_in_log_space():
    # γ = 400: cosh(400)² overflowed; the closed form at q = ½ is ln(2γ/sinh 2γ) = ln 800 + ln 2 − 800
    assert unit_bn.two_point_log_gain(400.0, 0.5) == pytest.approx(math.log(800) + math.log(2) - 800,
                                                                    rel=1e-12)
    # q = 1e-9: the large cluster sits at ya ≈ 3e4 (cosh overflowed); the small one, yb ≈ −3e-5, wins
    yb = -math.sqrt(1e-9 / (1 - 1e-9))
    assert unit_bn.two_point_log_gain(1.0, 1e-9) == pytest.approx(_log_two_point_direct(1.0, 1e-9, yb),
                                                                  rel=1e-12)
    for g in (1e-3, 0.3, 1.0, 5.0):  # unchanged where the plain formula works
        assert unit_bn.two_point_log_gain(g) == pytest.approx(math.log(2 * g / math.sinh(2 * g)), rel=1e-12,
                                                              abs=1e-15)


# ------------------------------------------------- BN/LN moments with tanh: large γ, any normalized size


def _mapped_law(n, centre, sharp, h=0.01):
    """Nodes Y and weights of a normalized coordinate of size n (None: N(0, 1)) for an integrand varying on
    the scale 1/sharp about Y = centre: the trapezoid rule in v, Y = centre + sinh(v)/sharp (N(0, 1)) or
    Y = r tanh(atanh(centre/r) + sinh(v)/(sharp r)), r = √(n−1), density ∝ sech^{n−2} of the tanh's argument
    (size n, ends reached double-exponentially). Spectrally accurate; nothing in common with gradflow's
    panels."""
    sharp = max(sharp, 1.0)
    if n is None:
        v = np.arange(-1.0, 1.0 + 1e-12, h / math.asinh((17 + abs(centre)) * sharp)) * math.asinh(
            (17 + abs(centre)) * sharp)
        y = centre + np.sinh(v) / sharp
        return y, np.exp(-0.5 * y * y) * np.cosh(v) / np.sum(np.exp(-0.5 * y * y) * np.cosh(v))
    r = math.sqrt(n - 1)
    z0 = math.atanh(min(max(centre / r, -0.999), 0.999))
    vmax = math.asinh((22 + abs(z0)) * sharp * r)
    v = np.arange(-vmax, vmax + h / 2, h)
    z = z0 + np.sinh(v) / (sharp * r)
    w = np.exp(-(n - 2) * np.log1p(2 * np.sinh(0.5 * z) ** 2)) * np.cosh(v)  # sech^{n−2} z, exact near z = 0
    return r * np.tanh(z), w / w.sum()


def _tanh_moments(gh, gx, b, n, n_x, u_outer=False):
    """The BN/LN moments of φ = tanh over y = gh u + gx w + b (u, w independent normalized coordinates of
    sizes n, n_x), nested: the outer coordinate (w, or u if ``u_outer``) on its own scale, the inner one about
    where y = 0."""
    (go, no), (gi, ni) = ((gh, n), (gx, n_x)) if u_outer else ((gx, n_x), (gh, n))
    xo, po = _mapped_law(no, 0.0, 1.0) if go != 0 else (np.zeros(1), np.ones(1))
    m = dict.fromkeys(["dphi2", "dphi", "u2dphi2", "phi2", "phi", "uphi", "wphi"], 0.0)
    for x, p in zip(xo, po, strict=True):
        xi, pi = _mapped_law(ni, -(go * x + b) / gi, abs(gi))
        u, w = (x, xi) if u_outer else (xi, x)
        t, s2 = np.tanh(gh * u + gx * w + b), _sech2(gh * u + gx * w + b)
        for k, v in [("dphi2", s2**2), ("dphi", s2), ("u2dphi2", u * u * s2**2), ("phi2", t * t), ("phi", t),
                     ("uphi", u * t), ("wphi", w * t)]:
            m[k] += p * float(np.sum(pi * v))
    return m


def _ln_chi_ref(gh, gx, d, b=0.0, u_outer=False):
    m = _tanh_moments(gh, gx, b, d, None, u_outer)
    if d is None:
        return gh**2 * m["dphi2"] / m["phi2"]
    return gh**2 / m["phi2"] * ((d - 1) * m["dphi2"] - m["u2dphi2"]) / (d - 3)


def _ln_sum_chi_ref(gamma, gain, sx, d):
    m = _tanh_moments(gamma, 0.0, 0.0, d, None)
    a = m["dphi2"] if d is None else ((d - 1) * m["dphi2"] - m["u2dphi2"]) / (d - 3)
    return gamma**2 * gain**2 * a / (gain**2 * m["phi2"] + sx)


def _bn_chi_ref(gh, gx, B):
    m = _tanh_moments(gh, gx, 0.0, B, B)
    var = m["phi2"] - m["phi"] ** 2  # b = 0: E φ = 0, no cancellation
    v = var - (var - m["uphi"] ** 2 - m["wphi"] ** 2) / B
    bracket = m["dphi2"] - (m["u2dphi2"] + m["dphi2"] - m["dphi"] ** 2) / (B - 1)
    return gh**2 * (B - 1) / ((B - 3) * v) * bracket


@pytest.mark.parametrize("gh, gx, bias", [(2.0, 0.0, 0.0), (4.0, 0.5, 0.0), (10.0, 0.0, 0.0), (100, 0.5, 0),
                                          (1e4, 0.0, 0.0), (4.0, 4.0, 0.3), (100.0, 100.0, 0.3)])
def test_ln_chi_tanh_of_infinite_size_at_large_gamma(gh, gx, bias):
    # the n → ∞ moments were a 121-node Gauss–Hermite rule in u: off by 9e-5 at γ = 2, a factor 2400 at 1e4
    assert th.ln_chi(gh, gx, None, "tanh", bias) == pytest.approx(_ln_chi_ref(gh, gx, None, bias), rel=1e-11)


@pytest.mark.parametrize("gamma", [2.0, 100.0, 1e4])
def test_ln_sum_chi_tanh_of_infinite_size_at_large_gamma(gamma):
    want = _ln_sum_chi_ref(gamma, 1.5, 0.2, None)
    assert th.ln_sum_chi(gamma, 1.5, 0.2, None, "tanh") == pytest.approx(want, rel=1e-11)


@pytest.mark.parametrize("gh, d, u_outer", [(1.0, 256, False), (1.0, 1024, False), (100.0, 8, False),
                                            (1e4, 256, False), (100.0, 4, True), (1e4, 4, True)])
def test_ln_chi_tanh_of_finite_size(gh, d, u_outer):
    # the finite-size rule (160 Gauss–Legendre nodes in θ) missed the law's width 1/√d in θ: 2e-5 off at
    # d = 256 and γ = 1, 5 % at d = 1024, and tanh's transition at large γ (0 at γ = 100, d = 256).
    # u_outer: γ_x = γ_h, the transition crosses the ends of the size-4 law (conditioned on u, it does not)
    gx = gh if u_outer else 0.0
    assert th.ln_chi(gh, gx, d, "tanh") == pytest.approx(_ln_chi_ref(gh, gx, d, 0.0, u_outer), rel=1e-11)


@pytest.mark.parametrize("gh, gx, B", [(1.0, 0.0, 4096), (1.0, 0.0, 8192), (1e4, 0.0, 32), (100.0, 70.0, 4),
                                       (1e4, 7e3, 32), (10.0, 7.0, 5000)])
def test_bn_train_chi_tanh_at_large_gamma_and_batch(gh, gx, B):
    # B = 4096 gave 0.31 for 1.18; B > 4096 took the Gaussian limit of the batch law (1e-4 off at 8192)
    assert th.bn_train_chi(gh, gx, B, "tanh") == pytest.approx(_bn_chi_ref(gh, gx, B), rel=1e-11)


def test_predict_rate_of_the_normalized_tanh_presets_at_large_sizes():
    # ln_tanh at d = 1024 predicted 0.0576 for 0.0823; bn_tanh (γ = 0.1) at B = 4096 was 6 % off
    want = 0.5 * math.log(_ln_sum_chi_ref(1.0, 1.0, 0.0, 1024))
    assert th.predict_rate("ln_tanh", hidden_size=1024, batch_size=32) == pytest.approx(want, abs=1e-12)
    want = 0.5 * math.log(_bn_chi_ref(0.1, 0.1, 4096))
    assert th.predict_rate("bn_tanh", hidden_size=64, batch_size=4096) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("n", [100, 1000, 10**6])
def test_normalized_coordinate_expectation_at_large_size(n):
    y, p = _mapped_law(n, 0.0, 1.0)
    for f in (lambda y: _sech2(y) ** 2, lambda y: np.tanh(0.8 * y) ** 2):  # were 5e-10, 4e-2, 5e-7 off
        assert th.normalized_coordinate_expectation(f, n) == pytest.approx(float(np.sum(p * f(y))), rel=1e-12)


@pytest.mark.parametrize("call, want", [
    (lambda: th.ln_chi(0.5, 0.0, None, "tanh"), 1.0335923900399357),
    (lambda: th.ln_chi(1.0, 0.5, 8, "tanh", 0.3), 1.1215110114772076),
    (lambda: th.ln_chi(0.7, 1.0, 32, "tanh"), 0.43205859478992914),
    (lambda: th.bn_train_chi(0.1, 0.1, 32, "tanh"), 0.5174603281510246),
    (lambda: th.bn_train_chi(1.0, 0.5, 16, "tanh", 0.3), 1.0480694057828317),
    (lambda: th.bn_train_chi(0.5, 1.0, 4, "tanh"), 0.35035802904787194),
    (lambda: th.ln_sum_chi(1.0, 1.5, 0.3, 32, "tanh"), 0.9103605972735392),
    (lambda: th.predict_rate("bn_tanh", hidden_size=64, batch_size=32), -0.3294112086794577),
    (lambda: th.predict_rate("ln_tanh", hidden_size=64, batch_size=32), 0.08905198799910419),
    (lambda: th.predict_rate("ln_notanh", hidden_size=64, batch_size=32), -0.3384433298440826),
])
def test_bn_ln_predictions_keep_their_values_where_the_old_quadrature_was_right(call, want):
    # values of the previous rule at γ <= 1 and sizes <= 64, where it was accurate to < 1e-13
    assert call() == pytest.approx(want, rel=1e-12, abs=1e-12)
