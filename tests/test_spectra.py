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
