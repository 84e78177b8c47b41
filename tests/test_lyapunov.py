"""Lyapunov spectra (Benettin / QR) against eigenvalue moduli, orthogonal maps and the log-det identity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow.lyapunov import kaplan_yorke_dimension, lyapunov_spectrum, lyapunov_statistics, qr_log_diagonals
from tests.helpers import rand, tanh_rnn


def _linear_with_eigs(key):
    """W = V A V^-1 with A block-diagonal: eigenvalues 1.2, -0.5, 0.3 and a complex pair 0.9 e^{+-0.7i}."""
    c, s = 0.9 * np.cos(0.7), 0.9 * np.sin(0.7)
    A = np.zeros((5, 5))
    A[0, 0], A[1, 1], A[2, 2] = 1.2, -0.5, 0.3
    A[3:, 3:] = [[c, -s], [s, c]]
    V = np.asarray(rand(key, (5, 5))) + 2 * np.eye(5)
    return V @ A @ np.linalg.inv(V), V


def test_linear_exponents_are_log_eigenvalue_moduli(x64):
    W, V = _linear_with_eigs(0)
    T, transient = 1500, 100
    r = lyapunov_spectrum(lambda h, x: h @ jnp.asarray(W).T, jnp.zeros((1, 5)), jnp.zeros((T, 1, 1)),
                          transient=transient)
    ref = np.sort(np.log(np.abs(np.linalg.eigvals(W))))[::-1]
    # for a constant linear map the finite-time error is bounded by about log(cond(V)) / steps
    tol = 2 * np.log(np.linalg.cond(V)) / (T - transient)
    np.testing.assert_allclose(r.exponents, ref, atol=tol)
    assert np.all(np.diff(np.asarray(r.exponents)) <= 0)
    assert r.n_steps == T - transient
    # top-k only
    r3 = lyapunov_spectrum(lambda h, x: h @ jnp.asarray(W).T, jnp.zeros((1, 5)), jnp.zeros((T, 1, 1)), k=2,
                           transient=transient, key=jax.random.PRNGKey(3))
    np.testing.assert_allclose(r3.exponents, ref[:2], atol=tol)


def test_orthogonal_all_zero(x64):
    d = 6
    Q, _ = np.linalg.qr(np.asarray(rand(1, (d, d))))
    r = lyapunov_spectrum(lambda h, x: h @ jnp.asarray(Q).T, jnp.zeros((1, d)), jnp.zeros((200, 1, 1)))
    np.testing.assert_allclose(r.exponents, 0.0, atol=1e-13)
    np.testing.assert_allclose(r.stderr, 0.0, atol=1e-13)


def test_sum_equals_mean_log_det_and_segments(x64):
    """sum_i log|R_ii| = log|det J_t| at every step: the full spectrum sums to the mean log|det J|."""
    d, B, T, transient = 4, 2, 120, 20
    W, U = rand(2, (d, d), 2.0 / np.sqrt(d)), rand(3, (d, 1))
    step = lambda h, x: jnp.tanh(h @ W.T + x @ U.T)
    h0, xs = rand(4, (B, d), 0.5), rand(5, (T, B, 1))
    r = lyapunov_spectrum(step, h0, xs, transient=transient, segments=5, interval=1)
    hs, jstep = [h0], jax.jit(step)
    for x in xs:
        hs.append(jstep(hs[-1], x))
    jac = jax.jit(jax.vmap(lambda h, x: jax.jacfwd(lambda v: step(v.reshape(B, d), x).ravel())(h.ravel())))
    J = np.asarray(jac(jnp.stack(hs[transient:T]), xs[transient:]))
    logdet = np.linalg.slogdet(J)[1]
    np.testing.assert_allclose(np.sum(r.exponents), np.mean(logdet), rtol=1e-10)
    # standard errors: spread of 5 segment means, computed here from the per-step logs
    logs = np.asarray(qr_log_diagonals(step, h0, xs))[transient:]
    seg = logs.reshape(5, -1, B * d).mean(axis=1)
    order = np.argsort(-logs.mean(axis=0))
    np.testing.assert_allclose(r.stderr, (seg.std(axis=0, ddof=1) / np.sqrt(5))[order], rtol=1e-10)
    assert np.all(np.asarray(r.stderr) > 0)
    # the adaptive interval (default): rounding of at most ~2e-10 per QR in float64
    a = lyapunov_spectrum(step, h0, xs, transient=transient, segments=5, interval="auto")
    np.testing.assert_allclose(np.sum(a.exponents), np.mean(logdet), rtol=1e-9)
    np.testing.assert_allclose(a.exponents, r.exponents, atol=1e-9)
    np.testing.assert_allclose(a.stderr, r.stderr, atol=1e-9)


def test_bad_inputs():
    step = lambda h, x: jnp.tanh(h)
    h0, xs = jnp.zeros((1, 3)), jnp.zeros((20, 1, 1))
    with pytest.raises(ValueError, match="k must"):
        lyapunov_spectrum(step, h0, xs, k=4)
    with pytest.raises(ValueError, match="k must"):
        lyapunov_spectrum(step, h0, xs, k=0)
    with pytest.raises(ValueError, match="transient"):
        lyapunov_spectrum(step, h0, xs, transient=20)
    with pytest.raises(ValueError, match="segments"):
        lyapunov_spectrum(step, h0, xs, transient=15, segments=6)
    carry = {"h": h0, "c": h0}
    with pytest.raises(ValueError, match="whole state"):
        lyapunov_spectrum(lambda c, x: c, carry, xs, wrt={"h": True, "c": False})
    with pytest.raises(ValueError, match="T"):
        lyapunov_spectrum(step, h0, xs[:0])


def _did(step, h0, xs, k):
    """Which steps the adaptive loop orthonormalized at: the rows of its log|R_ii| that are not zero."""
    logs = np.asarray(qr_log_diagonals(step, h0, xs, k=k, interval="auto"))
    return np.any(logs != 0, axis=1)


@pytest.mark.parametrize("gain", [1.2, 3.0])
def test_adaptive_interval_float32_every_exponent_within_1e3_of_per_step(gain):
    # gain 3: saturated tanh, exponents down to about -9 per step; float32 with a fixed interval corrupts
    # the most negative ones, the adaptive interval orthonormalizes every step where the spread demands it
    n, T = 24, 1500
    step, h0, xs = tanh_rnn(n, T, gain, w_key=10, x_key=11)
    per = lyapunov_spectrum(step, h0, xs, transient=100, interval=1)
    ada = lyapunov_spectrum(step, h0, xs, transient=100, interval="auto")
    assert np.max(np.abs(np.asarray(ada.exponents) - np.asarray(per.exponents))) <= 1e-3
    assert float(per.exponents[-1]) < -1.0  # a wide spread: the test is not trivial
    top = lyapunov_spectrum(step, h0, xs, k=4, transient=100)
    np.testing.assert_allclose(top.exponents, per.exponents[:4], atol=1e-3)
    did = _did(step, h0, xs, n)
    spread = float(per.exponents[0] - per.exponents[-1])
    if spread > np.log(840):  # the conditioning demands a QR every step
        assert did.mean() == 1.0
    assert _did(step, h0, xs, 4).mean() < 0.5  # the top 4 are close: far fewer QRs


def test_adaptive_interval_skips_qrs_when_the_spread_is_small():
    n, T = 8, 320
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(n, n)))
    W = jnp.asarray(0.99 * Q, jnp.float32)
    step, h0, xs = (lambda h, x: h @ W.T), jnp.ones((1, n)), jnp.zeros((T, 1, 1))
    did = _did(step, h0, xs, n)
    assert did.sum() <= T / 16 + 2  # the interval grows to its cap of 16 steps
    r = lyapunov_spectrum(step, h0, xs, interval="auto")
    np.testing.assert_allclose(r.exponents, np.log(0.99), atol=1e-5)


@pytest.mark.parametrize("interval", [1, "auto"])
def test_nonfinite_state_is_named_by_both_loops(interval):
    # 1e30 x: h_1 = 1e30 is finite, h_2 = 1e60 overflows float32
    h0, xs = jnp.ones((1, 3)), jnp.zeros((40, 1, 1))
    with pytest.raises(ValueError, match="non-finite state: h_2 "):
        lyapunov_spectrum(lambda h, x: 1e30 * h, h0, xs, k=2, interval=interval)


def test_statistics_identity_sum_equals_mean_log_det(x64):
    """mean exponent = <ln|det J_t>> / n on the same trajectory (slogdet of the per-step Jacobians), and its
    standard error is the spread of the segment means of ln|det J_t| (sum_i log|R_ii| = ln|det J_t| each
    step)."""
    d, T, transient, S = 8, 150, 30, 4
    W, U = rand(7, (d, d), 3.0 / np.sqrt(d)), rand(8, (d, 1))
    step = lambda h, x: jnp.tanh(h @ W.T + x @ U.T)
    h0, xs = rand(9, (1, d), 0.5), rand(10, (T, 1, 1))
    r = lyapunov_spectrum(step, h0, xs, transient=transient, segments=S)
    st = lyapunov_statistics(r)
    logdet = np.linalg.slogdet(np.asarray(gf.step_jacobians(step, h0, xs)))[1][transient:]
    np.testing.assert_allclose(st.mean_exponent, logdet.mean() / d, rtol=1e-10)
    seg = logdet[: (T - transient) // S * S].reshape(S, -1).mean(axis=1) / d
    np.testing.assert_allclose(st.mean_exponent_stderr, seg.std(ddof=1) / np.sqrt(S), rtol=1e-8)
    lam = np.asarray(r.exponents)
    assert lam[0] > 0 > lam.sum()  # chaotic and dissipative: a fractional dimension
    np.testing.assert_allclose(st.entropy_rate, lam[lam > 0].sum(), rtol=1e-12)
    j = int(np.sum(np.cumsum(lam) >= 0))
    np.testing.assert_allclose(st.kaplan_yorke, j + lam[:j].sum() / abs(lam[j]), rtol=1e-12)
    assert 0 < st.kaplan_yorke_stderr and 0 < st.entropy_rate_stderr


def test_statistics_closed_forms_for_normal_linear_maps(x64):
    """A normal map (diagonal plus a rotation block): exponents ln|eigenvalues|, statistics by hand."""
    c, s = 1.2 * np.cos(0.9), 1.2 * np.sin(0.9)
    W = np.zeros((5, 5))
    W[:2, :2] = [[c, -s], [s, c]]  # 1.2 e^{±0.9i}
    W[2, 2], W[3, 3], W[4, 4] = 0.9, -0.6, 0.25
    R = np.linalg.qr(np.asarray(rand(3, (5, 5))))[0]  # an orthogonal change of basis keeps it normal
    M = jnp.asarray(R @ W @ R.T)
    r = lyapunov_spectrum(lambda h, x: h @ M.T, jnp.ones((1, 5)), jnp.zeros((400, 1, 1)), transient=100,
                          segments=5)
    lam = np.log([1.2, 1.2, 0.9, 0.6, 0.25])
    np.testing.assert_allclose(r.exponents, lam, atol=1e-10)
    st = lyapunov_statistics(r)
    # partial sums: .182, .365, .260, -.251: j = 3, D = 3 + .260 / ln 2.5 (hand: 3.2842)
    ky = 3 + (2 * np.log(1.2) + np.log(0.9)) / np.log(1 / 0.6)
    np.testing.assert_allclose(st.kaplan_yorke, ky, atol=1e-9)
    np.testing.assert_allclose(st.entropy_rate, 2 * np.log(1.2), atol=1e-10)
    np.testing.assert_allclose(st.mean_exponent, np.log(np.abs(np.linalg.det(W))) / 5, atol=1e-10)
    assert max(st.kaplan_yorke_stderr, st.entropy_rate_stderr, st.mean_exponent_stderr) < 1e-9


def test_kaplan_yorke_edge_cases():
    assert kaplan_yorke_dimension([0.5, -1.0]) == 1.5
    assert kaplan_yorke_dimension([-0.1, -1.0]) == 0.0
    assert kaplan_yorke_dimension([0.3, 0.1, -0.2]) == 3.0  # volume-expanding: every partial sum >= 0
    assert np.isnan(kaplan_yorke_dimension([0.3, 0.1], complete=False))  # partial: only D >= 2 is known
    np.testing.assert_allclose(kaplan_yorke_dimension([[1.0, -2.0, -3.0], [0.2, 0.1, -0.6]]), [1.5, 2.5])
    with pytest.raises(ValueError, match="LyapunovResult"):
        lyapunov_statistics((np.zeros(2), np.zeros(2), 3))


def test_precision_limited_directions_are_named():
    """A normal map with eigenvalues 1, 0.5, 1e-9: float32 cannot resolve |R_33| ~ 1e-9 next to |R_11| ~ 1
    (computed -19.6 against ln 1e-9 = -20.72): a warning names the direction; float64 gets it right,
    silently."""
    import warnings

    R = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    W = R @ np.diag([1.0, 0.5, 1e-9]) @ R.T
    ref = np.log([1.0, 0.5, 1e-9])
    Wj = jnp.asarray(W, jnp.float32)
    with pytest.warns(RuntimeWarning, match="1 of 3 Lyapunov directions are limited by float32 precision"):
        r = lyapunov_spectrum(lambda h, x: h @ Wj.T, jnp.zeros((1, 3)), jnp.zeros((60, 1, 1)), transient=10)
    np.testing.assert_allclose(r.exponents[:2], ref[:2], atol=1e-5)
    assert abs(float(r.exponents[2]) - ref[2]) > 0.1  # the flagged one is indeed off
    with jax.enable_x64(True):
        W64 = jnp.asarray(W)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            r64 = lyapunov_spectrum(lambda h, x: h @ W64.T, jnp.zeros((1, 3)), jnp.zeros((60, 1, 1)),
                                    transient=10)
    np.testing.assert_allclose(r64.exponents, ref, atol=1e-6)
