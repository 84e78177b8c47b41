"""Gradient flossing: the exponents against lyapunov_spectrum, the gradient against finite differences of a
plain NumPy QR iteration, and pre-flossing of an exploding and a vanishing tanh RNN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow.floss import flossing_exponents, flossing_loss


def _small_tanh(d=3, input_size=2, gain=1.5, seed=0, dtype="float64"):
    cell = gf.make_cell("tanh", d, input_size, gain=gain, dtype=dtype)
    v = gf.init_cell(cell, jax.random.key(seed))
    b = 0.3 * jax.random.normal(jax.random.key(seed + 1), (d,), v["params"]["b"].dtype)
    return cell, {**v, "params": {**v["params"], "b": b}}


def test_exponents_equal_lyapunov_spectrum(x64):
    cell, v = _small_tanh(d=4, gain=2.0)
    B, T = 2, 80
    xs = jax.random.normal(jax.random.key(5), (T, B, 2), jnp.float64)
    c0 = {**cell.initialize_carry(B), "h": 0.5 * jax.random.normal(jax.random.key(6), (B, 4), jnp.float64)}
    step = gf.as_step(cell, v)
    key = jax.random.PRNGKey(3)
    ref = gf.lyapunov_spectrum(step, c0, xs, k=3, transient=20, key=key).exponents
    lam = flossing_exponents(step, c0, xs, k=3, transient=20, key=key)
    np.testing.assert_allclose(np.sort(np.asarray(lam))[::-1], ref, rtol=1e-10, atol=1e-12)
    loss = flossing_loss(step, c0, xs, k=3, transient=20, key=key)
    np.testing.assert_allclose(loss, np.sum(np.asarray(ref) ** 2), rtol=1e-10)


def _numpy_loss(params, ref_states, xs, Q0, window, transient):
    """Σλ² of a tanh RNN by a plain NumPy QR iteration; the state is reset to the reference trajectory's at
    every multiple of ``window`` (None: never), so finite differences see exactly what the windowed gradient
    differentiates."""
    W, U, b = (np.asarray(params[k], np.float64) for k in ("W_hh", "W_xh", "b"))
    T, B, _ = xs.shape
    d = W.shape[0]
    h, Q, logs = ref_states[0].copy(), Q0.copy(), []
    for t in range(T):
        if window is not None and t % window == 0:
            h = ref_states[t].copy()
        a = h @ W.T + xs[t] @ U.T + b
        J = np.zeros((B * d, B * d))
        for e in range(B):
            J[e * d:(e + 1) * d, e * d:(e + 1) * d] = (1 - np.tanh(a[e]) ** 2)[:, None] * W
        Q, R = np.linalg.qr(J @ Q)
        logs.append(np.log(np.abs(np.diag(R))))
        h = np.tanh(a)
    lam = np.mean(np.asarray(logs)[transient:], axis=0)
    return float(np.sum(lam**2))


@pytest.mark.parametrize("window", [None, 1, 4])
def test_loss_gradient_against_finite_differences(x64, window):
    cell, v = _small_tanh(d=3, gain=1.5)
    B, T, k, transient = 2, 16, 2, 3
    xs = np.asarray(jax.random.normal(jax.random.key(7), (T, B, 2), jnp.float64))
    h0 = 0.5 * np.asarray(jax.random.normal(jax.random.key(8), (B, 3), jnp.float64))
    c0 = {**cell.initialize_carry(B), "h": jnp.asarray(h0)}
    key = jax.random.PRNGKey(2)
    Q0 = np.asarray(jnp.linalg.qr(jax.random.normal(key, (B * 3, k), jnp.float64))[0])
    p0 = {n: np.asarray(a) for n, a in v["params"].items()}
    ref_states = [h0]
    for t in range(T):  # the reference trajectory under p0
        ref_states.append(np.tanh(ref_states[-1] @ p0["W_hh"].T + xs[t] @ p0["W_xh"].T + p0["b"]))

    def loss(p):
        step = gf.as_step(cell, {**v, "params": p})
        return flossing_loss(step, c0, jnp.asarray(xs), k=k, transient=transient, key=key,
                             state_window=window)

    ref = _numpy_loss(p0, ref_states, xs, Q0, window, transient)
    np.testing.assert_allclose(float(loss(v["params"])), ref, rtol=1e-10)
    grad = jax.grad(loss)(v["params"])
    eps = 1e-6
    for name in ("W_hh", "W_xh", "b"):
        fd = np.zeros_like(p0[name])
        for idx in np.ndindex(p0[name].shape):
            plus = {**p0, name: p0[name].copy()}
            minus = {**p0, name: p0[name].copy()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            fd[idx] = (_numpy_loss(plus, ref_states, xs, Q0, window, transient)
                       - _numpy_loss(minus, ref_states, xs, Q0, window, transient)) / (2 * eps)
        np.testing.assert_allclose(np.asarray(grad[name]), fd, rtol=1e-5, atol=1e-8, err_msg=name)


def _preflossed_exponent(gain):
    d, n_in, B, T = 32, 8, 8, 200
    cell = gf.make_cell("tanh", d, n_in, gain=gain)
    v = gf.init_cell(cell, jax.random.key(0))
    c0 = cell.initialize_carry(B)
    fresh = jax.random.normal(jax.random.key(12345), (800, B, n_in))
    before = float(gf.lyapunov_spectrum(gf.as_step(cell, v), c0, fresh, k=1, transient=100).exponents[0])
    v2 = gf.floss(cell, v, lambda key: jax.random.normal(key, (T, B, n_in)), steps=300)
    after = float(gf.lyapunov_spectrum(gf.as_step(cell, v2), c0, fresh, k=1, transient=100).exponents[0])
    return before, after


def test_prefloss_exploding_tanh_rnn_leaves_the_chaotic_regime():
    # At gain 3 the end point of pre-flossing is not reliable: it hangs on rounding (which CPU, whether XLA
    # optimizes). Seeds 0-4 here ended at -0.27, -0.35, +0.12, +0.08, -0.00 (unoptimized, as in the tests)
    # and -0.15, +0.01, +0.01, +0.17, +0.01 (optimized), from +0.16..+0.21 (see gradflow.flossing_exponents'
    # docstring). What holds for every seed and both compilations is that the exponent falls by > 0.03;
    # seed 0 falls by > 0.3 in both.
    before, after = _preflossed_exponent(3.0)
    assert before > 0.15  # chaotic: gradients explode
    assert after < before - 0.1


def test_prefloss_vanishing_tanh_rnn():
    before, after = _preflossed_exponent(0.5)
    assert before < -0.9  # ordered: gradients vanish
    assert abs(after) < 0.1


def test_bad_arguments():
    cell, v = _small_tanh(dtype="float32")
    xs = jnp.ones((10, 2, 2))
    step = gf.as_step(cell, v)
    c0 = cell.initialize_carry(2)
    with pytest.raises(ValueError, match="k must be"):
        flossing_exponents(step, c0, xs, k=7)
    with pytest.raises(ValueError, match="transient"):
        flossing_exponents(step, c0, xs, transient=10)
    with pytest.raises(ValueError, match="state_window"):
        flossing_exponents(step, c0, xs, state_window=0)
    with pytest.raises(ValueError, match="steps"):
        gf.floss(cell, v, xs, steps=0)
    with pytest.raises(ValueError, match="learning_rate"):
        gf.floss(cell, v, xs, steps=2, learning_rate=-1.0)
    with pytest.raises(ValueError, match="k must be"):
        gf.floss(cell, v, xs, steps=2, k=0)
    with pytest.raises(ValueError, match="params"):
        gf.floss(cell, {"batch_stats": {}}, xs, steps=2)
    with pytest.raises(ValueError, match="carry0"):
        gf.floss(object(), v, xs, steps=2)
