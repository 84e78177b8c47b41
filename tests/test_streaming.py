"""Streaming log-norms: agreement with the exact all-lag Jacobians, stability for T = 10^5, memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow.jacobians import jacobian_norms, jacobians
from gradflow.streaming import _stream_jit, streaming_log_norms
from tests.helpers import rand

H4 = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], np.float32) / 2  # orthogonal


def tanh_step(W, U):
    return lambda h, x: jnp.tanh(h @ W.T + x @ U.T)


def lstm_step(W, U):
    d = W.shape[1]

    def step(carry, x):
        z = carry["h"] @ W.T + x @ U.T
        i, f, g, o = (z[:, k * d : (k + 1) * d] for k in range(4))
        c = jax.nn.sigmoid(f) * carry["c"] + jax.nn.sigmoid(i) * jnp.tanh(g)
        return {"h": jax.nn.sigmoid(o) * jnp.tanh(c), "c": c, "t": carry["t"] + 1}

    return step


def test_agrees_with_exact_mode_float64(x64):
    d, B, T = 4, 2, 30
    W, U = rand(0, (d, d), 2.0 / np.sqrt(d)), rand(1, (d, 2))
    step, h0, xs = tanh_step(W, U), rand(2, (B, d), 0.5), rand(3, (T, B, 2))
    ex = jacobians(step, h0, xs)
    st = streaming_log_norms(step, h0, xs)  # n = 8: "auto" -> exact SVD
    np.testing.assert_allclose(st.log_frobenius, np.log(ex.frobenius_norms), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st.log_spectral, np.log(ex.spectral_norms), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(st.lags, ex.lags)
    pw = streaming_log_norms(step, h0, xs, spectral="power", power_iters=300)
    assert np.all(np.asarray(pw.log_spectral) <= np.log(ex.spectral_norms) + 1e-10)
    np.testing.assert_allclose(pw.log_spectral, np.log(ex.spectral_norms), atol=1e-6)


def test_pytree_wrt_agrees_float64(x64):
    d, B, T = 2, 2, 6
    step = lstm_step(rand(4, (4 * d, d), 0.8), rand(5, (4 * d, 3), 0.5))
    carry0 = {"h": rand(6, (B, d), 0.3), "c": rand(7, (B, d), 0.3), "t": jnp.zeros((B,), jnp.int32)}
    xs = rand(8, (T, B, 3))
    # h alone: the reverse scan carries the whole-state cotangent and reads the h columns
    wrt = {"h": True, "c": False, "t": False}
    ex = jacobians(step, carry0, xs, wrt=wrt)
    st = streaming_log_norms(step, carry0, xs, wrt=wrt)
    np.testing.assert_allclose(st.log_frobenius, np.log(ex.frobenius_norms), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st.log_spectral, np.log(ex.spectral_norms), rtol=1e-12, atol=1e-12)


def test_agrees_with_exact_mode_float32():
    d, B, T = 6, 2, 40
    W, U = rand(9, (d, d), 1.5 / np.sqrt(d)), rand(10, (d, 2))
    step, h0, xs = tanh_step(W, U), rand(11, (B, d), 0.5), rand(12, (T, B, 2))
    ex = jacobians(step, h0, xs)
    st = streaming_log_norms(step, h0, xs)
    assert st.log_frobenius.dtype == jnp.float32
    np.testing.assert_allclose(st.log_frobenius, np.log(ex.frobenius_norms), atol=2e-5 * T)
    np.testing.assert_allclose(st.log_spectral, np.log(ex.spectral_norms), atol=2e-5 * T)


def test_probes_give_hutchinson_frobenius(x64):
    d, B, T, k = 3, 2, 10, 4000
    W, U = rand(13, (d, d), 1.5 / np.sqrt(d)), rand(14, (d, 1))
    step, h0, xs = tanh_step(W, U), rand(15, (B, d), 0.5), rand(16, (T, B, 1))
    ex = jacobians(step, h0, xs)
    st = streaming_log_norms(step, h0, xs, probes=k, key=jax.random.PRNGKey(0))
    assert np.all(np.isnan(st.log_spectral))
    # Gaussian probes: Var(|p^T M|^2) = 2 |M^T M|_F^2 <= 2 |M|_F^4, so the relative std of the mean of k is
    # at most sqrt(2/k); in log of the norm (half the log of the squared norm) allow 5 standard deviations.
    err = np.abs(np.asarray(st.log_frobenius) - np.log(ex.frobenius_norms))
    assert np.all(err <= 0.5 * 5 * np.sqrt(2 / k))
    assert np.any(err > 0)  # it is an estimate, not the exact value
    # the probe rows are exactly P M: with P = I the estimate is exact up to the 1/sqrt(k) factor
    P = jnp.eye(B * d)
    lf, _, _ = _stream_jit(step, (True,), None, 1, h0, xs, P)
    np.testing.assert_allclose(lf + 0.5 * np.log(B * d), np.log(ex.frobenius_norms), rtol=1e-12)


def test_long_sequence_finite_where_direct_product_overflows():
    """T = 10^5 in float32: W = a H4 with H4 orthogonal with exact entries, so ||W^L||_2 = a^L exactly."""
    T, d = 100_000, 4
    a = np.float32(1.01)
    W = jnp.asarray(a * H4)
    step, h0, xs = (lambda h, x: h @ W.T), jnp.zeros((1, d)), jnp.zeros((T, 1, 1))
    st = streaming_log_norms(step, h0, xs)
    L = np.arange(T, 0, -1, dtype=np.float64)
    ref = L * np.log(np.float64(a))
    assert np.all(np.isfinite(st.log_frobenius)) and np.all(np.isfinite(st.log_spectral))
    # float32 products: rounding of about one ulp per step in the log
    tol = 1e-7 * L + 1e-5
    assert np.all(np.abs(np.asarray(st.log_spectral, np.float64) - ref) <= tol)
    assert np.all(np.abs(np.asarray(st.log_frobenius, np.float64) - ref - 0.5 * np.log(d)) <= tol)
    with pytest.warns(RuntimeWarning, match="outside float32's range.*log_frobenius_norms"):
        direct = jacobian_norms(step, h0, xs, spectral=None)
    assert np.isposinf(direct.frobenius_norms[0])  # 1.01^(10^5) = e^995 overflows float32: inf, never nan
    # the log norms of the direct mode carry the same log scale
    assert np.all(np.abs(np.asarray(direct.log_frobenius_norms, np.float64) - ref - 0.5 * np.log(d)) <= tol)


def test_long_sequence_finite_where_direct_product_underflows():
    T, d = 3000, 4
    a = np.float32(0.9)
    W = jnp.asarray(a * H4)
    step, h0, xs = (lambda h, x: h @ W.T), jnp.zeros((1, d)), jnp.zeros((T, 1, 1))
    st = streaming_log_norms(step, h0, xs)
    L = np.arange(T, 0, -1, dtype=np.float64)
    ref = L * np.log(np.float64(a))
    assert np.all(np.abs(np.asarray(st.log_spectral, np.float64) - ref) <= 1e-7 * L + 1e-5)
    with pytest.warns(RuntimeWarning, match="log_frobenius_norms"):
        direct = jacobian_norms(step, h0, xs, spectral=None)
    assert direct.frobenius_norms[0] == 0.0  # 0.9^3000 = e^-316 underflows float32
    tol = 1e-7 * L + 1e-5
    assert np.all(np.abs(np.asarray(direct.log_frobenius_norms, np.float64) - ref - 0.5 * np.log(d)) <= tol)


def test_exactly_zero_jacobian_is_minus_inf_not_nan():
    step = lambda h, x: x
    with pytest.warns(RuntimeWarning, match=r"5 of 5 log Frobenius norms .* are -inf \(first at lag 5\)"):
        st = streaming_log_norms(step, jnp.zeros((1, 3)), jnp.ones((5, 1, 3)))
    assert np.all(np.isneginf(st.log_frobenius)) and np.all(np.isneginf(st.log_spectral))


def test_memory_beyond_stored_states_does_not_grow_with_T():
    """XLA's compiled memory_analysis: temp bytes grow by one stored state (+ a few bytes) per step."""
    n = 64
    W = jnp.eye(n) * 0.5
    step = tanh_step(W, jnp.eye(n))
    h0 = jax.ShapeDtypeStruct((1, n), jnp.float32)
    temps = {}
    for T in (200, 800):
        xs = jax.ShapeDtypeStruct((T, 1, n), jnp.float32)
        m = _stream_jit.lower(step, (True,), "power", 2, h0, xs, None).compile().memory_analysis()
        if m is None:
            pytest.skip("memory_analysis not available on this backend")
        temps[T] = m.temp_size_in_bytes
    per_step = (temps[800] - temps[200]) / 600
    assert per_step <= 4 * n + 32  # one float32 state h_t per step plus its outputs


def test_bad_inputs():
    step = tanh_step(jnp.eye(2), jnp.eye(2))
    h0, xs = jnp.zeros((1, 2)), jnp.zeros((3, 1, 2))
    with pytest.raises(ValueError, match="PRNG key"):
        streaming_log_norms(step, h0, xs, probes=3)
    with pytest.raises(ValueError, match="probes"):
        streaming_log_norms(step, h0, xs, probes=0, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="spectral"):
        streaming_log_norms(step, h0, xs, spectral="exact")
    with pytest.raises(ValueError, match="T"):
        streaming_log_norms(step, h0, xs[:0])
    with pytest.raises(ValueError, match="non-finite"):
        streaming_log_norms(step, jnp.full((1, 2), jnp.inf), xs)
