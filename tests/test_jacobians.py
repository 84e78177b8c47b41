"""Exact all-lag Jacobians: against closed forms, central finite differences and per-step jacfwd products."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow
from gradflow.jacobians import jacobian_norms, jacobians, step_jacobians
from tests.helpers import rand

# ----------------------------------------------------------------------------------------- hand-written steps


def linear_step(W):
    return lambda h, x: h @ W.T


def tanh_step(W, U):
    return lambda h, x: jnp.tanh(h @ W.T + x @ U.T)


def bn_step(W, U, eps=1e-5):
    """BN after h W_hh and after x W_xh, no tanh, batch statistics (train mode): batch-coupled."""

    def bn(a):
        mu = a.mean(axis=0, keepdims=True)
        var = ((a - mu) ** 2).mean(axis=0, keepdims=True)
        return (a - mu) / jnp.sqrt(var + eps)

    return lambda h, x: bn(h @ W.T) + bn(x @ U.T)


def lstm_step(W, U):
    """An LSTM-like step on a dict carry {"h", "c", "t"} with an int32 step counter."""
    d = W.shape[1]

    def step(carry, x):
        z = carry["h"] @ W.T + x @ U.T
        i, f, g, o = (z[:, k * d : (k + 1) * d] for k in range(4))
        c = jax.nn.sigmoid(f) * carry["c"] + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return {"h": h, "c": c, "t": carry["t"] + 1}

    return step


def _flat(carry, keys=None):
    if isinstance(carry, dict):
        keys = keys or [k for k in sorted(carry) if jnp.issubdtype(carry[k].dtype, jnp.inexact)]
        return jnp.concatenate([jnp.ravel(carry[k]) for k in keys])
    return jnp.ravel(carry)


def _unflat(v, carry, keys=None):
    if isinstance(carry, dict):
        keys = keys or [k for k in sorted(carry) if jnp.issubdtype(carry[k].dtype, jnp.inexact)]
        out, i = dict(carry), 0
        for k in keys:
            sz = carry[k].size
            out[k] = jnp.asarray(v[i : i + sz]).reshape(carry[k].shape)
            i += sz
        return out
    return jnp.asarray(v).reshape(carry.shape)


def fd_jacobians(step, carry0, xs, keys=None, delta=1e-6):
    """Central finite differences of h_T with respect to h_t, for every t, float64 (one compiled function).

    h_t is perturbed by +-delta e_j in a plain forward scan (no autodiff anywhere); returns (T, n_out, n_in).
    """
    T = xs.shape[0]
    n = _flat(carry0, keys).size

    def final(t, u):
        def body(h, inp):
            i, x = inp
            moved = _unflat(_flat(h, keys) + u, h, keys)
            h = jax.tree_util.tree_map(lambda a, b: jnp.where(i == t, a, b), moved, h)
            return step(h, x), None

        return _flat(jax.lax.scan(body, carry0, (jnp.arange(T), xs))[0], keys)

    f = jax.jit(jax.vmap(jax.vmap(final, (None, 0)), (0, None)))
    E = delta * jnp.eye(n)
    ts = jnp.arange(T)
    return np.asarray((f(ts, E) - f(ts, -E)) / (2 * delta)).transpose(0, 2, 1)


def jacfwd_product(step, carry0, xs):
    """matrices[t] as the product of per-step jax.jacfwd Jacobians, accumulated in a plain Python loop."""
    hs, jstep = [carry0], jax.jit(step)
    for x in xs:
        hs.append(jstep(hs[-1], x))
    one = jax.jit(lambda h, x: jax.jacfwd(lambda v: _flat(step(_unflat(v, h), x)))(_flat(h)))
    Js = [np.asarray(one(hs[t], xs[t])) for t in range(len(xs))]
    T, n = len(xs), Js[0].shape[0]
    P = np.eye(n)
    out = [None] * T
    for t in range(T - 1, -1, -1):
        P = P @ Js[t]
        out[t] = P
    return np.stack(out)


# ------------------------------------------------------------------------------------------------------ tests


def test_linear_matrices_are_powers(x64):
    d, T = 4, 6
    W = rand(0, (d, d), 0.6)
    r = jacobians(linear_step(W), rand(1, (1, d)), jnp.zeros((T, 1, 1)))
    Wn = np.asarray(W)
    for t in range(T):
        ref = np.linalg.matrix_power(Wn, T - t)
        np.testing.assert_allclose(r.matrices[t], ref, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(r.spectral_norms[t], np.linalg.norm(ref, 2), rtol=1e-13)
        np.testing.assert_allclose(r.frobenius_norms[t], np.linalg.norm(ref), rtol=1e-13)
    np.testing.assert_array_equal(r.lags, T - np.arange(T))
    assert r.matrices.dtype == jnp.float64


def test_linear_batch_is_block_diagonal(x64):
    d, B, T = 3, 2, 4
    W = rand(2, (d, d), 0.7)
    r = jacobians(linear_step(W), rand(3, (B, d)), jnp.zeros((T, B, 1)))
    for t in range(T):
        ref = np.kron(np.eye(B), np.linalg.matrix_power(np.asarray(W), T - t))
        np.testing.assert_allclose(r.matrices[t], ref, rtol=1e-13, atol=1e-15)


def test_orthogonal_linear_all_singular_values_one(x64):
    d, T = 5, 7
    Q, _ = np.linalg.qr(np.asarray(rand(4, (d, d))))
    r = jacobians(linear_step(jnp.asarray(Q)), rand(5, (1, d)), jnp.zeros((T, 1, 1)))
    s = np.linalg.svd(np.asarray(r.matrices), compute_uv=False)
    np.testing.assert_allclose(s, 1.0, rtol=1e-12)
    np.testing.assert_allclose(r.spectral_norms, 1.0, rtol=1e-12)


@pytest.mark.parametrize("kind", ["tanh", "bn"])
def test_matches_finite_differences_and_jacfwd_product(x64, kind):
    d, B, T, din = 3, 3, 5, 2
    W, U = rand(6, (d, d), 1.3 / np.sqrt(d)), rand(7, (d, din))
    step = tanh_step(W, U) if kind == "tanh" else bn_step(W, U)
    h0, xs = rand(8, (B, d), 0.5), rand(9, (T, B, din))
    r = jacobians(step, h0, xs)
    prod = jacfwd_product(step, h0, xs)
    np.testing.assert_allclose(r.matrices, prod, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r.matrices, fd_jacobians(step, h0, xs), rtol=1e-6, atol=1e-8)
    # per-step jacobians helper agrees with the test's own jacfwd loop
    J = step_jacobians(step, h0, xs)
    np.testing.assert_allclose(J[-1], prod[-1], rtol=1e-12, atol=1e-14)
    if kind == "bn":
        # the BN step couples the examples: some cross-example entries are nonzero
        off = np.asarray(r.matrices[0]).copy()
        for b in range(B):
            off[b * d : (b + 1) * d, b * d : (b + 1) * d] = 0
        assert np.abs(off).max() > 1e-3


def test_pytree_carry_whole_state_and_h_alone(x64):
    d, B, T, din = 2, 2, 4, 3
    W, U = rand(10, (4 * d, d), 0.8), rand(11, (4 * d, din), 0.5)
    step = lstm_step(W, U)
    carry0 = {"h": rand(12, (B, d), 0.3), "c": rand(13, (B, d), 0.3), "t": jnp.zeros((B,), jnp.int32)}
    xs = rand(14, (T, B, din))
    full = jacobians(step, carry0, xs, spectral=None)
    n = 2 * B * d
    assert full.matrices.shape == (T, n, n)
    # leaf order of a dict is sorted keys: c then h; the int leaf t is not part of the state
    np.testing.assert_allclose(full.matrices, fd_jacobians(step, carry0, xs), rtol=1e-6, atol=1e-8)
    only_h = jacobians(step, carry0, xs, wrt={"h": True, "c": False, "t": False}, spectral=None)
    hh = np.asarray(full.matrices)[:, B * d :, B * d :]
    np.testing.assert_allclose(only_h.matrices, hh, rtol=1e-12, atol=1e-14)
    # norms-only mode with the same selection
    nh = jacobian_norms(step, carry0, xs, wrt={"h": True, "c": False, "t": False})
    np.testing.assert_allclose(nh.frobenius_norms, np.linalg.norm(hh, axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(nh.spectral_norms, np.linalg.norm(hh, 2, axis=(1, 2)), rtol=1e-12)


def test_norms_only_agrees_with_matrices(x64):
    d, B, T = 4, 2, 8
    W, U = rand(15, (d, d), 1.5 / np.sqrt(d)), rand(16, (d, 1))
    step, h0, xs = tanh_step(W, U), rand(17, (B, d), 0.5), rand(18, (T, B, 1))
    r = jacobians(step, h0, xs)
    n = jacobian_norms(step, h0, xs)
    assert n.matrices is None
    np.testing.assert_allclose(n.frobenius_norms, r.frobenius_norms, rtol=1e-12)
    np.testing.assert_allclose(n.spectral_norms, r.spectral_norms, rtol=1e-12)
    ref = np.linalg.norm(np.asarray(r.matrices), 2, axis=(1, 2))
    np.testing.assert_allclose(r.spectral_norms, ref, rtol=1e-12)
    # power iteration: a lower bound, converged here
    p = jacobian_norms(step, h0, xs, spectral="power", power_iters=200)
    assert np.all(np.asarray(p.spectral_norms) <= ref * (1 + 1e-10))
    np.testing.assert_allclose(p.spectral_norms, ref, rtol=1e-6)
    p2 = jacobians(step, h0, xs, spectral="power", power_iters=200)
    np.testing.assert_allclose(p2.spectral_norms, ref, rtol=1e-6)


def test_power_spectral_norm_of_tiny_products_float32():
    # float32, W = 0.05 * orthogonal: ||∂h_T/∂h_t||_2 = 0.05^(T-t) reaches 1e-26 at lag 20, far below where
    # M^T M underflows (~1e-19); power iteration on the unscaled matrix returned garbage there.
    d, T = 4, 20
    Q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(d, d)))
    W = jnp.asarray(0.05 * Q, jnp.float32)
    h0, xs = jnp.ones((1, d), jnp.float32), jnp.zeros((T, 1, 1), jnp.float32)
    p = jacobian_norms(linear_step(W), h0, xs, spectral="power", power_iters=30)
    ref = 0.05 ** np.arange(T, 0, -1, dtype=np.float64)
    np.testing.assert_allclose(np.asarray(p.spectral_norms, np.float64), ref, rtol=1e-4)


def test_pascanu_bound_tanh():
    d, T = 8, 20
    W, U = rand(19, (d, d), 1.8 / np.sqrt(d)), rand(20, (d, 2))
    r = jacobian_norms(tanh_step(W, U), rand(21, (3, d)), rand(22, (T, 3, 2)))
    bound = np.linalg.norm(np.asarray(W, np.float64), 2) ** np.asarray(r.lags, np.float64)
    assert np.all(np.asarray(r.spectral_norms, np.float64) <= bound * (1 + 1e-5))
    # the bound is not trivially loose everywhere: at lag 1 it is within a factor 10
    assert r.spectral_norms[-1] > bound[-1] / 10


def test_float32_default_and_under_jit():
    d, T = 3, 5
    W = rand(23, (d, d), 0.5)
    step = tanh_step(W, jnp.eye(d))
    h0, xs = rand(24, (2, d)), rand(25, (T, 2, d))
    r = jacobians(step, h0, xs)
    assert r.matrices.dtype == jnp.float32 and r.spectral_norms.dtype == jnp.float32
    jitted = jax.jit(lambda h, x: jacobians(step, h, x).frobenius_norms)(h0, xs)
    np.testing.assert_allclose(jitted, r.frobenius_norms, rtol=1e-6)


def test_under_jit_with_concrete_captured_carry_and_traced_weights():
    """Inside a user's jit, a carry0 / xs captured as concrete arrays must not hit a traced boolean check
    (this raised TracerBoolConversionError in the finiteness checks): equal to the eager results."""
    d, T = 4, 30
    W = rand(40, (d, d), 1.2 / np.sqrt(d))
    h0, xs = rand(41, (1, d)), rand(42, (T, 1, d))

    def exps(W):
        return gradflow.lyapunov_spectrum(tanh_step(W, jnp.eye(d)), h0, xs, k=2).exponents

    def norms(W):
        return jacobian_norms(tanh_step(W, jnp.eye(d)), h0, xs).log_frobenius_norms

    for f in (exps, norms):
        np.testing.assert_allclose(jax.jit(f)(W), f(W), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(jax.jit(lambda _, f=f: f(W))(0.0), f(W), rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    d, T = 3, 4
    W = rand(26, (d, d), 0.5)
    step = tanh_step(W, jnp.eye(d))
    h0, xs = rand(27, (2, d)), rand(28, (T, 2, d))
    with pytest.raises(ValueError, match="do not match the step"):
        jacobians(step, h0, rand(29, (T, 2, d + 1)))
    with pytest.raises(ValueError, match="T"):
        jacobians(step, h0, jnp.zeros((0, 2, d)))
    with pytest.raises(ValueError, match="non-finite"):
        jacobians(step, h0.at[0, 0].set(jnp.nan), xs)
    with pytest.raises(ValueError, match="changes carry leaf"):
        jacobians(lambda h, x: (h @ W.T)[:, :2], h0, xs)
    with pytest.raises(ValueError, match="changes carry leaf"):
        jacobians(lambda h, x: (h @ W.T).astype(jnp.float16), h0, xs)
    with pytest.raises(ValueError, match="structure"):
        jacobians(lambda h, x: (h, h), h0, xs)
    with pytest.raises(ValueError, match="spectral"):
        jacobians(step, h0, xs, spectral="lanczos")
    big = linear_step(1e30 * jnp.eye(d))
    with pytest.raises(ValueError, match="non-finite state: h_2"):
        jacobians(big, h0, xs)
    carry = {"h": h0, "t": jnp.zeros((2,), jnp.int32)}
    with pytest.raises(ValueError, match="state vector is empty"):
        jacobians(lambda c, x: c, carry, xs, wrt={"h": False, "t": True})
    with pytest.raises(ValueError, match="wrt"):
        jacobians(lambda c, x: c, carry, xs, wrt={"q": True})


def test_real_preset_bn_notanh_train_mode(x64):
    """gradflow's own bn_notanh cell in train mode (batch-coupled; dict carry with an int32 't')."""
    import gradflow

    d, din, B, T = 2, 2, 3, 4
    cell = gradflow.make_cell("bn_notanh", d, din, dtype="float64")
    variables = gradflow.init_cell(cell, jax.random.PRNGKey(0), batch_size=B)
    step = gradflow.as_step(cell, variables, train=True)
    carry0 = {**cell.initialize_carry(B), "h": rand(30, (B, d), 0.5)}
    xs = rand(32, (T, B, din))
    r = jacobians(step, carry0, xs, spectral=None)
    assert r.matrices.shape == (T, B * d, B * d)
    np.testing.assert_allclose(r.matrices, jacfwd_product(step, carry0, xs), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r.matrices, fd_jacobians(step, carry0, xs), rtol=1e-6, atol=1e-8)
