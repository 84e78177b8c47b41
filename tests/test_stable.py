"""Stable tanh / sigmoid: JAX's values, derivatives without cancellation (float64 references), every order."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow
from gradflow import stable
from gradflow.jacobians import jacobian_norms
from gradflow.lyapunov import lyapunov_spectrum, qr_log_diagonals
from gradflow.streaming import streaming_log_norms

EPS32 = float(np.finfo(np.float32).eps)
TINY32 = float(np.finfo(np.float32).tiny)
GRID = np.concatenate([np.linspace(-100, 100, 2001), np.linspace(9, 80, 711),
                       [0.0, 1e-30, -1e-7, 44.3, 87.0]])


def _grad(f, order=1):
    for _ in range(order):
        f = jax.grad(f)
    return jax.jit(jax.vmap(f))


def _check_against(got, ref, ulps=4, floor=1.0):
    """Relative error <= ``ulps`` float32 epsilons where the reference is >= ``floor`` x the smallest normal
    float32 number (higher derivatives: their factor sech² must itself be normal, so floor 4); below that,
    at most ``floor`` x that number (the CPU flushes subnormals to 0)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    normal = np.abs(ref) >= floor * TINY32
    np.testing.assert_array_less(np.abs(got - ref)[normal], ulps * EPS32 * np.abs(ref)[normal] + 1e-300)
    assert np.all(np.abs(got[~normal]) <= floor * TINY32)
    assert np.all(got[normal] != 0)  # zero only where the true value is below float32's normal range


def test_values_equal_jax_exactly():
    a = jnp.asarray(GRID, jnp.float32)
    np.testing.assert_array_equal(jax.jit(stable.tanh)(a), jax.jit(jnp.tanh)(a))
    np.testing.assert_array_equal(jax.jit(stable.sigmoid)(a), jax.jit(jax.nn.sigmoid)(a))


def test_first_derivatives_match_float64_within_ulps():
    a32 = jnp.asarray(GRID, jnp.float32)
    a = np.asarray(a32, np.float64)  # the reference at the same (float32) points
    sech2 = 1.0 / np.cosh(a) ** 2
    _check_against(_grad(stable.tanh)(a32), sech2)
    _check_against(_grad(stable.sigmoid)(a32), 1.0 / ((1.0 + np.exp(-a)) * (1.0 + np.exp(a))))  # σ(a)σ(-a)
    # JAX's own derivative (1 + y)(1 - y) is 0 or rounding noise there: the reason for this module
    big = (np.abs(a) > 10) & (np.abs(a) < 40)
    assert np.all(np.abs(np.asarray(_grad(jnp.tanh)(a32), np.float64) - sech2)[big] > 0.5 * sech2[big])
    assert np.all(np.asarray(_grad(stable.tanh)(a32))[big] > 0)


def test_higher_derivatives_match_closed_forms():
    a32 = jnp.asarray(GRID, jnp.float32)
    a = np.asarray(a32, np.float64)
    t, s2 = np.tanh(a), 1.0 / np.cosh(a) ** 2
    _check_against(_grad(stable.tanh, 2)(a32), -2 * t * s2, ulps=8, floor=4)
    _check_against(_grad(stable.tanh, 3)(a32)[a != 0], (4 * t**2 * s2 - 2 * s2**2)[a != 0], ulps=64, floor=16)
    q, th = 1.0 / ((1.0 + np.exp(-a)) * (1.0 + np.exp(a))), np.tanh(a / 2)
    _check_against(_grad(stable.sigmoid, 2)(a32)[a != 0], (-q * th)[a != 0], ulps=8, floor=4)
    # at 0: tanh''' = -2, sigmoid'' = 0, exactly
    assert float(_grad(stable.tanh, 3)(jnp.zeros(1))[0]) == -2.0
    assert float(_grad(stable.sigmoid, 2)(jnp.zeros(1))[0]) == 0.0


def test_hessian_and_jacfwd_of_grad_agree_with_jax_in_float64(x64):
    """Where nothing saturates, the stable functions are the same functions: Hessians equal JAX's."""
    x = jnp.asarray(np.linspace(-3, 3, 4))
    W = jnp.asarray(np.random.default_rng(0).normal(size=(4, 4)))

    def loss(f, g):
        return lambda v: jnp.sum(f(W @ v) * g(v))

    mine, ref = loss(stable.tanh, stable.sigmoid), loss(jnp.tanh, jax.nn.sigmoid)
    np.testing.assert_allclose(jax.hessian(mine)(x), jax.hessian(ref)(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jax.jacfwd(jax.grad(mine))(x), jax.jacrev(jax.grad(ref))(x), rtol=1e-12,
                               atol=1e-12)


def test_cells_use_the_stable_derivatives():
    """An LSTM and a GRU driven into saturation: their float32 one-step Jacobians match float64 (rel 1e-4)."""
    for name in ("lstm", "gru"):
        cell = gradflow.make_cell(name, 4, 2, gain=1.0)
        v = gradflow.init_cell(cell, jax.random.PRNGKey(0))
        v = jax.tree_util.tree_map(lambda p: 8.0 * p, v)  # pre-activations ~ 10-30
        carry = cell.initialize_carry(1)
        carry["h"] = jnp.full((1, 4), 0.9)
        xs = jnp.full((1, 1, 2), 3.0)  # one step from the same float32 state
        J32 = gradflow.step_jacobians(gradflow.as_step(cell, v), carry, xs)
        with jax.enable_x64(True):
            cell64 = gradflow.make_cell(name, 4, 2, gain=1.0, dtype="float64")
            v64 = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), v)
            c64 = {**carry, "h": jnp.asarray(carry["h"], jnp.float64)}
            if "c" in carry:
                c64["c"] = jnp.asarray(carry["c"], jnp.float64)
            step64 = gradflow.as_step(cell64, v64)
            J64 = np.asarray(gradflow.step_jacobians(step64, c64, jnp.asarray(xs, jnp.float64)))
        tiny = np.abs(J64) < 1e3 * TINY32
        assert np.any((np.abs(J64) < 1e-8) & ~tiny), name  # saturation: jnp.tanh's derivative would be 0 here
        np.testing.assert_allclose(np.asarray(J32)[~tiny], J64[~tiny], rtol=1e-4, err_msg=name)


def test_tanh_rnn_gain3_lyapunov_float32_matches_float64():
    """The issue's acceptance at n = 32: the full float32 spectrum of a gain-3 tanh RNN has no -inf and its
    mean exponent equals the float64 QR iteration on the same per-step Jacobians within 0.05 (measured
    4e-4); the same step with jnp.tanh gives -inf and a warning naming it."""
    n, T = 32, 300
    cell = gradflow.make_cell("tanh", n, 1, gain=3.0)
    v = gradflow.init_cell(cell, jax.random.PRNGKey(0))
    step, c0 = gradflow.as_step(cell, v), cell.initialize_carry(1)
    xs = jax.random.normal(jax.random.PRNGKey(2), (T, 1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L = np.asarray(qr_log_diagonals(step, c0, xs), np.float64)
    assert np.all(np.isfinite(L))
    P = jax.tree_util.tree_map(lambda p: np.asarray(p, np.float64), v["params"])
    hs = np.concatenate([np.zeros((1, 1, n)), np.asarray(gradflow.unroll(step, c0, xs)["h"], np.float64)])
    a = hs[:-1, 0] @ P["W_hh"].T + np.asarray(xs, np.float64)[:, 0] @ P["W_xh"].T + P["b"]
    assert np.any(np.abs(a) > 9)  # some units saturate
    Q, logs = np.eye(n), []
    for t in range(T):
        Q, R = np.linalg.qr((P["W_hh"] / np.cosh(a[t])[:, None] ** 2) @ Q)
        logs.append(np.log(np.abs(np.diag(R))))
    assert abs(L.mean() - np.mean(logs)) < 0.05

    def plain(c, x):
        return {"h": jnp.tanh(c["h"] @ v["params"]["W_hh"].T + x @ v["params"]["W_xh"].T + v["params"]["b"]),
                "t": c["t"] + 1}

    with pytest.warns(RuntimeWarning, match=r"log\|R_ii\| .* are -inf \(first at step \d+\)"):
        Lp = np.asarray(qr_log_diagonals(plain, c0, xs))
    assert np.isneginf(Lp).any()


def test_minus_inf_is_named_for_user_steps():
    """A saturated user step: with jnp.tanh the Jacobian is exactly 0 (a warning per engine entry point);
    with stable.tanh the exponents are the closed form log|w_i| + log sech²(a_i)."""
    w = jnp.asarray([2.0, -3.0])
    xs = jnp.zeros((50, 1, 1))
    c0 = jnp.ones((1, 2))

    def step_of(f):
        return lambda h, x: f(w * h + 30.0)  # a = 32, 27: sech² ~ 1e-27, 1e-23 (float32 normal numbers)

    for fn in (lambda s: lyapunov_spectrum(s, c0, xs, transient=5),
               lambda s: jacobian_norms(s, c0, xs),
               lambda s: streaming_log_norms(s, c0, xs)):
        with pytest.warns(RuntimeWarning, match="are -inf .*derivative rounded to 0"):
            fn(step_of(jnp.tanh))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = lyapunov_spectrum(step_of(stable.tanh), c0, xs, transient=5)
    a = np.asarray(w, np.float64) * np.tanh(np.float32(32.0)) + 30.0  # h = tanh(32), tanh(27) = 1 in float32
    ref = np.sort(np.log(np.abs(np.asarray(w, np.float64))) - 2 * np.log(np.cosh(a)))[::-1]
    np.testing.assert_allclose(r.exponents, ref, rtol=1e-5)
