"""Spectra at chosen lags, effective rank, condition number and growth-rate fits against NumPy references."""

import jax.numpy as jnp
import numpy as np
import pytest

from gradflow.jacobians import jacobians
from gradflow.spectra import condition_number, effective_rank, growth_rate, spectra, spectrum_of
from gradflow.streaming import streaming_log_norms
from tests.helpers import rand


def test_linear_spectra_all_lags_match_numpy(x64):
    d, T = 4, 6
    W = np.asarray(rand(0, (d, d), 0.7))
    sp = spectra(lambda h, x: h @ jnp.asarray(W).T, jnp.ones((1, d)), jnp.zeros((T, 1, 1)))
    np.testing.assert_array_equal(sp.lags, T - np.arange(T))
    for i, lag in enumerate(np.asarray(sp.lags)):
        s = np.linalg.svd(np.linalg.matrix_power(W, lag), compute_uv=False)
        # backward-stable SVDs: each singular value is accurate to about eps * s_max
        np.testing.assert_allclose(sp.singular_values[i], s, rtol=1e-12, atol=1e-13 * s[0])
        p = s / s.sum()
        np.testing.assert_allclose(sp.effective_rank[i], np.exp(-(p * np.log(p)).sum()), rtol=1e-12)
        cond = s[0] / s[-1]
        np.testing.assert_allclose(sp.condition_number[i], cond, rtol=1e-13 * cond)


def test_chosen_lags_in_requested_order(x64):
    d, T = 3, 8
    W = rand(1, (d, d), 0.8)
    step, h0, xs = (lambda h, x: jnp.tanh(h @ W.T + x)), rand(2, (2, d)), rand(3, (T, 2, d))
    r = jacobians(step, h0, xs)
    sp = spectrum_of(r, lags=[1, 8, 3])
    np.testing.assert_array_equal(sp.lags, [1, 8, 3])
    for i, lag in enumerate([1, 8, 3]):
        ref = np.linalg.svd(np.asarray(r.matrices[T - lag]), compute_uv=False)
        np.testing.assert_allclose(sp.singular_values[i], ref, rtol=1e-12, atol=1e-13 * ref[0])
    with pytest.raises(ValueError, match="1..T"):
        spectrum_of(r, lags=[0])
    with pytest.raises(ValueError, match="1..T"):
        spectrum_of(r, lags=[T + 1])
    with pytest.raises(ValueError, match="ints"):
        spectrum_of(r, lags=[1.5])
    with pytest.raises(ValueError, match="no matrices"):
        spectrum_of(r._replace(matrices=None))


def test_orthogonal_spectrum_is_flat(x64):
    d, T = 5, 4
    Q, _ = np.linalg.qr(np.asarray(rand(4, (d, d))))
    sp = spectra(lambda h, x: h @ jnp.asarray(Q).T, jnp.ones((1, d)), jnp.zeros((T, 1, 1)))
    np.testing.assert_allclose(sp.singular_values, 1.0, rtol=1e-12)
    np.testing.assert_allclose(sp.effective_rank, d, rtol=1e-12)
    np.testing.assert_allclose(sp.condition_number, 1.0, rtol=1e-12)


def test_rank_and_condition_edge_cases():
    s = jnp.array([[3.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(effective_rank(s), [1.0, 3.0], rtol=1e-6)
    assert np.isinf(condition_number(s)[0]) and condition_number(s)[1] == 1.0


def _ols_reference(x, y):
    X = np.stack([np.ones_like(x), x], axis=1)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    sigma2 = resid @ resid / (len(x) - 2)
    cov = sigma2 * np.linalg.inv(X.T @ X)
    return beta[1], np.sqrt(cov[1, 1]), beta[0]


def test_growth_rate_matches_matrix_form_least_squares():
    rng = np.random.default_rng(0)
    lags = np.arange(40, 0, -1)
    y = 0.3 - 0.05 * lags + 0.1 * rng.standard_normal(lags.size)
    g = growth_rate(y, lags, min_lag=3, max_lag=30)
    keep = (lags >= 3) & (lags <= 30)
    rate, se, icpt = _ols_reference(lags[keep].astype(float), y[keep])
    np.testing.assert_allclose([g.rate, g.stderr, g.intercept], [rate, se, icpt], rtol=1e-10)
    assert g.n_points == keep.sum()
    with pytest.raises(ValueError, match="at least 3"):
        growth_rate(y, lags, min_lag=39)


def test_growth_rate_of_scaled_orthogonal_is_log_scale():
    d, T, a = 4, 200, 1.05
    H = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2
    W = jnp.asarray(np.float32(a) * H, jnp.float32)
    step, h0, xs = (lambda h, x: h @ W.T), jnp.zeros((1, d)), jnp.zeros((T, 1, 1))
    st = streaming_log_norms(step, h0, xs)
    g = growth_rate(st)
    np.testing.assert_allclose(g.rate, np.log(np.float32(a)), rtol=1e-5)
    assert g.stderr < 1e-6
    g2 = growth_rate(jacobians(step, h0, xs[:50]))
    np.testing.assert_allclose(g2.rate, np.log(np.float32(a)), rtol=1e-5)


def _rot(th):
    return np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])


def _triangular_power_logsv(a, b, d, L):
    """Exact log singular values of [[a, b], [0, d]]^L = [[a^L, b (a^L - d^L)/(a - d)], [0, d^L]] (float64
    logs: s1 s2 = |a d|^L, s1^2 + s2^2 = the squared Frobenius norm)."""
    la, ld = L * np.log(abs(a)), L * np.log(abs(d))
    lq = np.log(abs(b)) + la + np.log1p(-np.exp(ld - la)) - np.log(abs(a - d))  # |a| > |d|
    lF2 = np.logaddexp(np.logaddexp(2 * la, 2 * lq), 2 * ld)
    disc = 0.5 * np.log1p(-np.exp(np.log(4.0) + 2 * (la + ld) - 2 * lF2))  # log sqrt(1 - 4 det^2 / F^4)
    l1 = 0.5 * (lF2 + np.log(0.5) + np.log1p(np.exp(disc)))
    return np.array([l1, la + ld - l1])


LONG_LAG_SYSTEMS = {
    "normal": (np.diag([0.95, 0.9, -0.8, 0.5]), lambda L: L * np.log([0.95, 0.9, 0.8, 0.5])),
    "non-normal": (np.block([[np.array([[0.95, 4.0], [0, 0.7]]), np.zeros((2, 2))],
                             [np.zeros((2, 2)), np.array([[0.9, -3.0], [0, 0.5]])]]),
                   lambda L: np.concatenate([_triangular_power_logsv(0.95, 4.0, 0.7, L),
                                             _triangular_power_logsv(0.9, -3.0, 0.5, L)])),
    "rotating": (np.block([[0.97 * _rot(0.3), np.zeros((2, 2))], [np.zeros((2, 2)), 0.6 * _rot(1.1)]]),
                 lambda L: L * np.log([0.97, 0.97, 0.6, 0.6])),
}


def _check_long_lags(T, lags, dtype):
    for name, (W, exact) in LONG_LAG_SYSTEMS.items():
        Wj = jnp.asarray(W, dtype)
        with pytest.warns(RuntimeWarning, match="below the precision of the computation"):
            sp = spectra(lambda h, x, Wj=Wj: h @ Wj.T, jnp.zeros((1, 4), dtype), jnp.zeros((T, 1, 1), dtype),
                         lags=lags)
        eps = np.finfo(dtype).eps
        for i, L in enumerate(lags):
            ref = np.sort(exact(L))[::-1]
            got, ok = np.asarray(sp.log_singular_values[i], np.float64), np.asarray(sp.resolved[i])
            # resolved: within 1 % of the exact value (the precision factor 100), and 1e-4 * lag for the top
            np.testing.assert_allclose(got[ok], ref[ok], atol=0.011 + 4 * eps * L, err_msg=f"{name} lag {L}")
            # unresolved: truly near or below the floor (never a value the computation could resolve)
            floor = ref[0] + np.log(100 * eps * 2)
            assert np.all(ref[~ok] < floor + 0.1), (name, L, ref, got)
            assert np.all(np.isnan(got[~ok])) and np.all(np.isnan(np.asarray(sp.singular_values[i])[~ok]))
            if ok.all():
                np.testing.assert_allclose(np.log(float(sp.condition_number[i])), ref[0] - ref[-1], atol=0.02)
            else:
                assert np.isnan(float(sp.condition_number[i]))
            p = np.exp(ref - ref[0]) / np.exp(ref - ref[0]).sum()
            H = -np.sum(p[p > 0] * np.log(p[p > 0]))
            np.testing.assert_allclose(float(sp.effective_rank[i]), np.exp(H), atol=1e-3)
        assert not np.asarray(sp.resolved).all()  # the long lags are flagged, never returned as exact


def test_long_lag_spectra_exact_or_flagged_float32():
    """The issue's case (lag 1000, float32: smallest log s -67.3/-69.3/-69.9 against exact -105/-223/-693)."""
    _check_long_lags(1000, [1, 10, 100, 1000], jnp.float32)


def test_long_lag_spectra_exact_or_flagged_float64(x64):
    _check_long_lags(5000, [1, 50, 500, 5000], jnp.float64)
