"""per_example=True: equal to running each example alone; a batch-coupled step is refused. spectra(lags)
differentiates only back to the largest lag."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow.spectra import _spectra_jit
from tests.helpers import rand


def lstm_like(W, U):
    d = W.shape[1]

    def step(carry, x):
        z = carry["h"] @ W.T + x @ U.T
        c = jax.nn.sigmoid(z[:, :d]) * carry["c"] + jnp.tanh(z[:, d:])
        return {"h": jnp.tanh(c), "c": c, "t": carry["t"] + 1}

    return step


def _problem(B=3, d=3, T=12):
    W, U = rand(0, (2 * d, d), 1.5 / np.sqrt(d)), rand(1, (2 * d, 2))
    carry0 = {"c": rand(2, (B, d), 0.5), "h": rand(3, (B, d), 0.5), "t": jnp.zeros((B,), jnp.int32)}
    return lstm_like(W, U), carry0, rand(4, (T, B, 2))


def _alone(carry0, xs, b):
    return jax.tree_util.tree_map(lambda a: a[b : b + 1], carry0), xs[:, b : b + 1]


def test_jacobians_and_norms_equal_each_example_alone(x64):
    step, carry0, xs = _problem()
    r = gf.jacobians(step, carry0, xs, per_example=True)
    nr = gf.jacobian_norms(step, carry0, xs, per_example=True)
    st = gf.streaming_log_norms(step, carry0, xs, per_example=True, spectral="svd")
    assert r.matrices.shape == (3, 12, 6, 6) and nr.spectral_norms.shape == (3, 12) and r.lags.shape == (12,)
    for b in range(3):
        c, x = _alone(carry0, xs, b)
        one = gf.jacobians(step, c, x)
        np.testing.assert_allclose(r.matrices[b], one.matrices, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(r.log_spectral_norms[b], one.log_spectral_norms, rtol=1e-12)
        np.testing.assert_allclose(nr.log_frobenius_norms[b], one.log_frobenius_norms, rtol=1e-12)
        np.testing.assert_allclose(nr.spectral_norms[b], one.spectral_norms, rtol=1e-12)
        np.testing.assert_allclose(st.log_spectral[b], one.log_spectral_norms, rtol=1e-12, atol=1e-12)
    # and each example's matrices are the diagonal blocks of the batch Jacobian (state order: c then h)
    full = np.asarray(gf.jacobians(step, carry0, xs, spectral=None).matrices)
    idx = np.r_[0:3, 9:12]  # example 0: c[0], h[0]
    np.testing.assert_allclose(r.matrices[0], full[:, idx][:, :, idx], rtol=1e-12, atol=1e-14)


def test_lyapunov_and_spectra_equal_each_example_alone(x64):
    step, carry0, xs = _problem(T=40)
    ly = gf.lyapunov_spectrum(step, carry0, xs, k=2, transient=5, per_example=True)
    sp = gf.spectra(step, carry0, xs, lags=[1, 7, 30], per_example=True)
    assert ly.exponents.shape == (3, 2) and sp.singular_values.shape == (3, 3, 6)
    for b in range(3):
        c, x = _alone(carry0, xs, b)
        one = gf.lyapunov_spectrum(step, c, x, k=2, transient=5)
        np.testing.assert_allclose(ly.exponents[b], one.exponents, rtol=1e-12)
        np.testing.assert_allclose(ly.stderr[b], one.stderr, rtol=1e-10)
        spb = gf.spectra(step, c, x, lags=[1, 7, 30])
        np.testing.assert_allclose(sp.singular_values[b], spb.singular_values, rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(sp.effective_rank[b], spb.effective_rank, rtol=1e-12)


def test_batch_coupled_step_is_refused_with_a_pointer_to_batch_block_norms():
    W = rand(5, (3, 3), 0.9)

    def bn_step(h, x):
        a = h @ W.T + x
        return (a - a.mean(0)) / jnp.sqrt(a.var(0) + 1e-5)

    h0, xs = rand(6, (4, 3)), rand(7, (12, 4, 3))
    for fn in (gf.jacobians, gf.jacobian_norms, gf.streaming_log_norms, gf.lyapunov_spectrum, gf.spectra):
        with pytest.raises(ValueError, match="couples the examples.*batch_block_norms"):
            fn(bn_step, h0, xs, per_example=True)
    with pytest.raises(ValueError, match=r"\(T, B, \.\.\.\) with B = 4"):
        gf.jacobian_norms(lambda h, x: jnp.tanh(h), h0, rand(8, (6, 5, 3)), per_example=True)


def test_spectra_at_chosen_lags_equal_the_full_computation(x64):
    W = rand(9, (4, 4), 1.3 / 2)
    step, h0, xs = (lambda h, x: jnp.tanh(h @ W.T + x)), rand(10, (2, 4)), rand(11, (50, 2, 4))
    mats = np.asarray(gf.jacobians(step, h0, xs, spectral=None).matrices)
    lags = [17, 1, 5, 17]
    sp = gf.spectra(step, h0, xs, lags=lags)
    ref = np.linalg.svd(mats[[50 - lag for lag in lags]], compute_uv=False)
    ok = np.asarray(sp.resolved)  # the values below the precision bound are NaN, flagged
    np.testing.assert_allclose(np.asarray(sp.singular_values)[ok], ref[ok], rtol=1e-11, atol=1e-14)
    assert np.all(np.isnan(np.asarray(sp.singular_values)[~ok]))
    assert np.all(ref[~ok] < 1e-12 * ref[:, :1].max())
    np.testing.assert_array_equal(sp.lags, lags)
    allsp = gf.spectra(step, h0, xs)
    ref = np.linalg.svd(mats, compute_uv=False)
    # relative to each lag's largest singular value; the values below the computation's precision are NaN
    # (mask: resolved), and only those: the exact ones there are rounding-level relative to the largest
    ok = np.asarray(allsp.resolved)
    got = np.asarray(allsp.singular_values) / ref[:, :1]
    np.testing.assert_allclose(got[ok], (ref / ref[:, :1])[ok], rtol=1e-10, atol=1e-13)
    assert np.all(np.isnan(got[~ok])) and np.all((ref / ref[:, :1])[~ok] < 1e-10)


def test_spectra_does_not_build_every_lag():
    # XLA's compiled memory: lags (1, 10) of T = 2000 need the 10-step tail, not 2000 (n, n) matrices
    n, T = 32, 2000
    W = jnp.eye(n) * 0.5
    step = lambda h, x: jnp.tanh(h @ W.T + x)
    h0, xs = jax.ShapeDtypeStruct((1, n), jnp.float32), jax.ShapeDtypeStruct((T, 1, n), jnp.float32)
    slots = tuple([0] + [-1] * 8 + [1])
    m = _spectra_jit.lower(step, (True,), T - 10, slots, h0, xs).compile().memory_analysis()
    if m is None:
        pytest.skip("memory_analysis() not available on this backend")
    used = m.temp_size_in_bytes + m.output_size_in_bytes
    assert used < 0.05 * T * n * n * 4  # every lag's matrix would be T n^2 floats (8 MiB)


def test_spectra_log_singular_values_beyond_float32_range():
    step, h0, xs = (lambda h, x: 0.7 * h), jnp.ones((1, 2)), jnp.zeros((300, 1, 1))
    with pytest.warns(RuntimeWarning, match="log_singular_values"):
        sp = gf.spectra(step, h0, xs, lags=[300, 2])
    np.testing.assert_allclose(sp.log_singular_values[0], [300 * np.log(0.7)] * 2, rtol=1e-6)
    assert sp.singular_values[0, 0] == 0
    np.testing.assert_allclose(sp.singular_values[1], [0.49, 0.49], rtol=1e-6)
    np.testing.assert_allclose(sp.condition_number[0], 1.0, rtol=1e-6)  # from the renormalized matrix
