"""Matrix-free estimators against the exact all-lag Jacobians."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow.estimators import hutchinson_frobenius, top_singular_value
from gradflow.jacobians import jacobians
from tests.helpers import rand


def bn_step(W, U, eps=1e-5):
    def bn(a):
        mu = a.mean(axis=0, keepdims=True)
        return (a - mu) / jnp.sqrt(((a - mu) ** 2).mean(axis=0, keepdims=True) + eps)

    return lambda h, x: bn(h @ W.T) + bn(x @ U.T)


def test_power_iteration_matches_exact_svd_tanh(x64):
    d, B, T = 4, 2, 8
    W, U = rand(0, (d, d), 1.6 / np.sqrt(d)), rand(1, (d, 2))
    step, h0, xs = (lambda h, x: jnp.tanh(h @ W.T + x @ U.T)), rand(2, (B, d), 0.5), rand(3, (T, B, 2))
    ex = jacobians(step, h0, xs)
    for lag in (2, T):
        r = top_singular_value(step, h0, xs, lag, iters=300)
        M = np.asarray(ex.matrices[T - lag])
        s = np.linalg.svd(M, compute_uv=False)
        assert r.sigma <= s[0] * (1 + 1e-12)
        np.testing.assert_allclose(r.sigma, s[0], rtol=1e-8)
        # the vector is a top right singular vector: ||M v|| = s_max
        np.testing.assert_allclose(np.linalg.norm(M @ np.asarray(r.vector)), s[0], rtol=1e-8)
        assert r.residual < 1e-6


def test_power_iteration_batch_coupled_bn_over_whole_batch(x64):
    """BN over a batch of 16 (n = 64): the matrix-free estimate equals the exact spectral norm."""
    d, B, T = 4, 16, 5
    W, U = rand(4, (d, d), 1.0 / np.sqrt(d)), rand(5, (d, 3))
    step, h0, xs = bn_step(W, U), rand(6, (B, d)), rand(7, (T, B, 3))
    ex = jacobians(step, h0, xs)
    r = top_singular_value(step, h0, xs, 3, iters=500)
    np.testing.assert_allclose(r.sigma, ex.spectral_norms[T - 3], rtol=1e-6)


def test_hutchinson_frobenius_statistics(x64):
    d, B, T, k = 4, 2, 6, 400
    W, U = rand(8, (d, d), 1.4 / np.sqrt(d)), rand(9, (d, 1))
    step, h0, xs = (lambda h, x: jnp.tanh(h @ W.T + x @ U.T)), rand(10, (B, d), 0.5), rand(11, (T, B, 1))
    ex = jacobians(step, h0, xs)
    for lag in (2, T):
        F = float(ex.frobenius_norms[T - lag])
        r = hutchinson_frobenius(step, h0, xs, lag, key=jax.random.PRNGKey(lag), probes=k)
        # Rademacher: Var ||Mz||^2 <= 2 ||M||_F^4, so the relative sd of F is at most sqrt(2/k)/2; 5 sd
        assert abs(float(r.frobenius) / F - 1) <= 5 * np.sqrt(2 / k) / 2
        assert 0 < float(r.stderr) <= np.sqrt(2 / k) / 2 * F * 1.5


def test_hutchinson_exact_for_orthogonal(x64):
    """For an orthogonal M, ||M z||^2 = ||z||^2 = n for every Rademacher z: estimate exact, stderr 0."""
    d = 5
    Q, _ = np.linalg.qr(np.asarray(rand(12, (d, d))))
    step = lambda h, x: h @ jnp.asarray(Q).T
    h0, xs = jnp.ones((1, d)), jnp.zeros((7, 1, 1))
    r = hutchinson_frobenius(step, h0, xs, 7, key=jax.random.PRNGKey(0), probes=8)
    np.testing.assert_allclose(r.frobenius, np.sqrt(d), rtol=1e-13)
    np.testing.assert_allclose(r.stderr, 0.0, atol=1e-13)


def test_wrt_selects_block(x64):
    d, B, T = 2, 2, 4
    W = rand(13, (d, d), 0.9)

    def step(c, x):
        h = jnp.tanh(c["h"] @ W.T + c["c"])
        return {"h": h, "c": 0.5 * c["c"] + h, "t": c["t"] + 1}

    carry0 = {"h": rand(14, (B, d)), "c": rand(15, (B, d)), "t": jnp.zeros((B,), jnp.int32)}
    xs = jnp.zeros((T, B, 1))
    wrt = {"h": True, "c": False, "t": False}
    ex = jacobians(step, carry0, xs, wrt=wrt)
    r = top_singular_value(step, carry0, xs, 2, wrt=wrt, iters=300)
    np.testing.assert_allclose(r.sigma, ex.spectral_norms[T - 2], rtol=1e-8)


def test_bad_inputs():
    step = lambda h, x: jnp.tanh(h)
    h0, xs = jnp.zeros((1, 3)), jnp.zeros((4, 1, 1))
    with pytest.raises(ValueError, match="lag"):
        top_singular_value(step, h0, xs, 0)
    with pytest.raises(ValueError, match="lag"):
        top_singular_value(step, h0, xs, 5)
    with pytest.raises(ValueError, match="iters"):
        top_singular_value(step, h0, xs, 1, iters=0)
    with pytest.raises(ValueError, match="probes"):
        hutchinson_frobenius(step, h0, xs, 1, key=jax.random.PRNGKey(0), probes=0)


def test_log_scale_where_the_plain_values_underflow_or_overflow():
    """float32, lag 2000: 0.9^2000 = e^-210.7 underflows and 1.5^300 = e^121.6 overflows; the log fields are
    exact (closed forms for diagonal maps), the plain ones 0 / inf with a warning (before: 0, NaN or inf)."""
    import warnings

    from gradflow.estimators import hutchinson_frobenius, top_singular_value

    for diag, lag in (([0.9, 0.5, 0.2], 2000), ([1.5, 1.2, 0.3], 300)):
        W = jnp.diag(jnp.asarray(diag))
        step = lambda h, x, W=W: h @ W.T  # noqa: E731
        h0, xs = jnp.zeros((1, 3)), jnp.zeros((lag, 1, 1))  # the state stays 0, the Jacobian is W^lag
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            p = top_singular_value(step, h0, xs, lag, iters=30)
            hf = hutchinson_frobenius(step, h0, xs, lag, key=jax.random.PRNGKey(0), probes=8)
        assert any("outside float32's range" in str(w.message) for w in rec)
        lam = np.log(np.asarray(diag, np.float64)) * lag
        np.testing.assert_allclose(float(p.log_sigma), lam[0], rtol=1e-5)
        assert float(p.residual) < 1e-4
        # Rademacher probes: ||M z||^2 = sum_i d_i^(2 lag) exactly for every z
        ref = 0.5 * np.logaddexp.reduce(2 * lam)
        np.testing.assert_allclose(float(hf.log_frobenius), ref, rtol=1e-5)
        assert float(hf.log_frobenius_stderr) < 1e-5
