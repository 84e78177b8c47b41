"""Log norms that never under- or overflow: jacobians, jacobian_norms, batch_block_norms and growth_rate
against closed forms and float64 NumPy products of per-step Jacobians (renormalized in float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow.batch import batch_block_norms
from gradflow.jacobians import jacobian_norms, jacobians, step_jacobians
from gradflow.spectra import growth_rate
from tests.helpers import rand, tanh_rnn


def numpy_log_norms(J):
    """float64 log spectral and Frobenius norms of J_T ... J_{t+1} for every t, from per-step Jacobians
    J (T, n, n), by a plain backwards loop that rescales the product to unit Frobenius norm each step."""
    J = np.asarray(J, np.float64)
    T, n = J.shape[0], J.shape[1]
    P, log_scale = np.eye(n), 0.0
    log_s, log_f = np.empty(T), np.empty(T)
    for t in range(T - 1, -1, -1):
        P = P @ J[t]
        f = np.linalg.norm(P)
        P /= f
        log_scale += np.log(f)
        log_f[t] = log_scale
        log_s[t] = log_scale + np.log(np.linalg.norm(P, 2))
    return log_s, log_f


def test_contraction_at_lag_125_float32_frobenius_does_not_underflow():
    # h -> 0.7 h, n = 2: ||M||_2 = 0.7^125 = 4.3e-20, ||M||_F = sqrt(2) 0.7^125 = 6.1e-20 (its square
    # underflows float32, which used to give Frobenius 0 < spectral)
    step, h0, xs = (lambda h, x: 0.7 * h), jnp.ones((1, 2)), jnp.zeros((125, 1, 1))
    ref_s = 125 * np.log(0.7)
    ref_f = ref_s + 0.5 * np.log(2.0)
    for r in (jacobians(step, h0, xs), jacobian_norms(step, h0, xs)):
        assert r.frobenius_norms.dtype == jnp.float32
        np.testing.assert_allclose(r.log_frobenius_norms[0], ref_f, rtol=1e-6)
        np.testing.assert_allclose(r.log_spectral_norms[0], ref_s, rtol=1e-6)
        np.testing.assert_allclose(r.frobenius_norms[0], np.exp(ref_f), rtol=1e-4)
        np.testing.assert_allclose(r.spectral_norms[0], np.exp(ref_s), rtol=1e-4)
        assert np.all(np.asarray(r.frobenius_norms) >= np.asarray(r.spectral_norms))
    b = batch_block_norms(step, jnp.ones((3, 2)), jnp.zeros((125, 3, 1)))
    np.testing.assert_allclose(b.log_frobenius_norms[0], ref_f, rtol=1e-6)
    np.testing.assert_allclose(b.diagonal[0], np.exp(ref_f), rtol=1e-4)
    np.testing.assert_allclose(b.log_diagonal_total[0], ref_f + 0.5 * np.log(3.0), rtol=1e-6)
    assert np.all(np.isneginf(b.log_cross)) and np.all(np.asarray(b.cross) == 0)


def test_underflow_outside_float32_range_warns_and_logs_stay_exact():
    T = 300  # 0.7^300 = e^-107: outside float32's range beyond lag ~ 245
    step, h0, xs = (lambda h, x: 0.7 * h), jnp.ones((1, 2)), jnp.zeros((T, 1, 1))
    with pytest.warns(RuntimeWarning, match="log_frobenius_norms"):
        r = jacobian_norms(step, h0, xs)
    lags = np.arange(T, 0, -1)
    np.testing.assert_allclose(r.log_spectral_norms, lags * np.log(0.7), rtol=2e-6)
    assert r.frobenius_norms[0] == 0 and np.all(np.isfinite(r.log_frobenius_norms))
    g = growth_rate(r)  # from the log norms: every lag is used, none dropped
    assert g.n_points == T
    np.testing.assert_allclose(g.rate, np.log(0.7), rtol=1e-6)
    with pytest.warns(RuntimeWarning, match="outside float32's range"):
        b = batch_block_norms(step, jnp.ones((2, 2)), jnp.zeros((T, 2, 1)))
    np.testing.assert_allclose(b.log_spectral_norms[:, 1], lags * np.log(0.7), rtol=2e-6)


def test_gain3_tanh_long_sequence_float32_against_float64_numpy_product():
    d, B, T = 6, 2, 2000
    W, U = rand(0, (d, d), 3.0 / np.sqrt(d)), rand(1, (d, 2))
    step = lambda h, x: jnp.tanh(h @ W.T + x @ U.T)
    h0, xs = rand(2, (B, d), 0.5), rand(3, (T, B, 2))
    J = np.asarray(step_jacobians(step, h0, xs), np.float64)  # (T, B d, B d): the float32 trajectory's J_t
    ref_s, ref_f = numpy_log_norms(J)
    assert ref_f[0] < np.log(np.finfo(np.float32).tiny) or ref_f[0] > np.log(np.finfo(np.float32).max)
    with pytest.warns(RuntimeWarning, match="outside float32's range"):
        r = jacobian_norms(step, h0, xs)
    # float32 rounding accumulated along the lag (the reference's per-step Jacobians are themselves float32
    # jacfwd values, the engine's are float32 vjps; where the product is nearly singular the log norm is
    # sensitive to it): 5e-6 per step; the log norms reach -450, far outside float32's range (e^-87). The
    # same test in float64 (below) agrees to 1e-10.
    tol = 5e-6 * np.arange(T, 0, -1) + 1e-3
    assert np.all(np.abs(np.asarray(r.log_frobenius_norms, np.float64) - ref_f) <= tol)
    assert np.all(np.abs(np.asarray(r.log_spectral_norms, np.float64) - ref_s) <= tol)
    assert np.all(np.asarray(r.log_frobenius_norms) >= np.asarray(r.log_spectral_norms))
    # the per-example diagonal blocks (the step is uncoupled, so block b is example b's own product)
    with pytest.warns(RuntimeWarning):
        blk = batch_block_norms(step, h0, xs)
    for b in range(B):
        sl = slice(b * d, (b + 1) * d)
        rs, rf = numpy_log_norms(J[:, sl, sl])
        assert np.all(np.abs(np.asarray(blk.log_frobenius_norms[:, b], np.float64) - rf) <= tol)
        assert np.all(np.abs(np.asarray(blk.log_spectral_norms[:, b], np.float64) - rs) <= tol)


def test_gain3_tanh_blocks_float64_exact(x64):
    d, B, T = 6, 2, 2000
    W, U = rand(0, (d, d), 3.0 / np.sqrt(d)), rand(1, (d, 2))
    step = lambda h, x: jnp.tanh(h @ W.T + x @ U.T)
    h0, xs = rand(2, (B, d), 0.5), rand(3, (T, B, 2))
    J = np.asarray(step_jacobians(step, h0, xs))
    blk = batch_block_norms(step, h0, xs)
    for b in range(B):
        sl = slice(b * d, (b + 1) * d)
        rs, rf = numpy_log_norms(J[:, sl, sl])
        np.testing.assert_allclose(blk.log_frobenius_norms[:, b], rf, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(blk.log_spectral_norms[:, b], rs, rtol=1e-10, atol=1e-10)


def test_materialized_jacobians_log_norms_match_float64_product(x64):
    d, T = 4, 60
    W = rand(4, (d, d), 2.5 / np.sqrt(d))
    step = lambda h, x: jnp.tanh(h @ W.T + x)
    h0, xs = rand(5, (1, d)), rand(6, (T, 1, d))
    r = jacobians(step, h0, xs)
    ref_s, ref_f = numpy_log_norms(step_jacobians(step, h0, xs))
    np.testing.assert_allclose(r.log_frobenius_norms, ref_f, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(r.log_spectral_norms, ref_s, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.log(np.linalg.norm(np.asarray(r.matrices), axis=(1, 2))), ref_f, atol=1e-12)


def test_rank_one_spectral_never_above_frobenius():
    u = jnp.asarray([0.6, 0.8, 0.0])
    W = 1.3 * jnp.outer(u, u)  # rank 1: spectral = Frobenius exactly
    step, h0, xs = (lambda h, x: h @ W.T), jnp.ones((1, 3)), jnp.zeros((50, 1, 1))
    r = jacobian_norms(step, h0, xs)
    assert np.all(np.asarray(r.log_spectral_norms) <= np.asarray(r.log_frobenius_norms))
    np.testing.assert_allclose(r.log_spectral_norms, np.arange(50, 0, -1) * np.log(1.3), rtol=1e-5)


def test_growth_rate_keeps_plain_log_norm_signature_and_warns_on_dropped_points():
    y = np.log(0.5) * np.arange(10, 0, -1)
    g = growth_rate(y)
    np.testing.assert_allclose(g.rate, np.log(0.5), rtol=1e-12)
    y[3] = -np.inf
    with pytest.warns(RuntimeWarning, match="1 of 10 log norms"):
        assert growth_rate(y).n_points == 9


@pytest.mark.parametrize("gain", [1.2, 3.0])
def test_certified_spectral_norms_within_1e3_of_svd_at_every_lag_float32(gain):
    n, T = 48, 300
    step, h0, xs = tanh_rnn(n, T, gain, w_key=20, x_key=21)
    with np.errstate(all="ignore"):
        blk = jacobian_norms(step, h0, xs)  # the default: spectral="certified"
        svd = jacobian_norms(step, h0, xs, spectral="svd")
    diff = np.asarray(blk.log_spectral_norms, np.float64) - np.asarray(svd.log_spectral_norms, np.float64)
    rel = np.abs(np.exp(diff) - 1)
    assert rel.max() <= 1e-3
    assert np.all(np.asarray(blk.log_spectral_norms) <= np.asarray(blk.log_frobenius_norms))


def test_certified_sigma_falls_back_to_svd_on_a_flat_spectrum():
    from gradflow.jacobians import certified_sigma

    M = jnp.diag(jnp.asarray([1.0, 0.9999, 0.9998, 0.5, 0.1, 0.05]))  # no gap: Temple does not apply
    s, _, ok = certified_sigma(M, jnp.ones(6) / np.sqrt(6.0))
    assert not bool(ok) and float(s) == pytest.approx(1.0, rel=1e-6)  # the exact SVD value
    s, _, ok = certified_sigma(jnp.diag(jnp.asarray([1.0, 0.3, 0.2, 0.1])), jnp.ones(4) / 2.0)
    assert bool(ok) and float(s) == pytest.approx(1.0, rel=1e-3)
    s, u, _ = certified_sigma(jnp.zeros((4, 4)), jnp.ones(4) / 2.0)  # a zero block: restart, not u = 0
    assert float(s) == 0.0 and float(jnp.linalg.norm(u)) == pytest.approx(1.0)
    s, _, ok = certified_sigma(jnp.diag(jnp.asarray([1.0, 0.3, 0.2, 0.1])), u)
    assert bool(ok) and float(s) == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_certified_sigma_is_never_outside_its_bound(dtype, request):
    """Random matrices with gaps from none to large and random (also poor) start vectors: a certified value
    is within 1e-3 of the float64 SVD norm (float32; 1e-12 in float64), an uncertified one is the SVD norm."""
    from gradflow.jacobians import certified_sigma

    if dtype == np.float64:
        request.getfixturevalue("x64")
    sigma = jax.jit(certified_sigma)
    rng = np.random.default_rng(0)
    tol = 1e-3 if dtype == np.float32 else 1e-12
    n_ok = 0
    for trial in range(60):
        n = int(rng.choice([2, 9, 33]))
        U, _ = np.linalg.qr(rng.normal(size=(n, n)))
        V, _ = np.linalg.qr(rng.normal(size=(n, n)))
        decay = rng.uniform(0.0, 0.5) * (trial % 4)  # 0: flat; larger: a dominant top value
        sv = np.exp(-decay * np.arange(n)) * rng.uniform(0.5, 1.0, n)
        M = (U * np.sort(sv)[::-1]) @ V.T
        u = rng.normal(size=n) + (trial % 3) * 5 * U[:, 0]
        u = u / np.linalg.norm(u)
        with np.errstate(all="ignore"):
            s, _, ok = sigma(jnp.asarray(M, dtype), jnp.asarray(u, dtype))
        true = np.linalg.norm(M, 2)
        err = abs(float(s) / true - 1)
        n_ok += bool(ok)
        assert err <= (tol if bool(ok) else 1e-5 if dtype == np.float32 else 1e-12), (trial, bool(ok), err)
    assert 10 <= n_ok <= 55  # both branches exercised
