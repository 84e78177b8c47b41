"""as_step (our cells, a linen GRUCell, an nnx LSTMCell) and unroll: loops, Jacobians, finite differences."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gradflow


def central_fd(f, x, eps=1e-6):
    """Finite-difference Jacobian of f: R^n -> R^m at a flat float64 vector x; returns (m, n)."""
    x = np.asarray(x, np.float64)
    cols = []
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = eps
        cols.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * eps))
    return np.stack(cols, axis=-1)


# ---------------------------------------------------------------- unroll


@pytest.mark.parametrize(
    "name,train,options",
    [("bn_notanh", True, {}), ("lstm", False, {}), ("ln_notanh", True, {"dropout_mode": "step"})],
)
def test_unroll_equals_python_loop(name, train, options, x64):
    cell = gradflow.make_cell(name, 4, 3, dtype="float64", t_max=3, **options)
    variables = gradflow.init_cell(cell, jax.random.key(0))
    step = gradflow.as_step(cell, variables, train=train, key=jax.random.key(5))
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5, 3)))
    states = gradflow.unroll(step, cell.initialize_carry(5), xs)
    assert states["h"].shape == (6, 5, 4) and states["t"].shape == (6, 5)
    carry = cell.initialize_carry(5)
    for t in range(6):
        carry = step(carry, xs[t])
        for k in carry:
            np.testing.assert_allclose(states[k][t], carry[k], atol=1e-12, rtol=0)


def test_unroll_input_errors():
    cell = gradflow.make_cell("tanh", 3, 2)
    step = gradflow.as_step(cell, gradflow.init_cell(cell, jax.random.key(0)))
    with pytest.raises(ValueError, match="leading time axis"):
        gradflow.unroll(step, cell.initialize_carry(4), jnp.ones((4,)))
    with pytest.raises(ValueError, match="batch"):
        gradflow.unroll(step, cell.initialize_carry(4), jnp.ones((6, 5, 2)))


def test_tanh_jacobian_through_unroll_equals_closed_form_product(x64):
    """∂h_T/∂h_0 of h_t = tanh(W h_{t-1} + U x_t + b) is Π_t diag(1 − h_t²) W, computed here in NumPy."""
    cell = gradflow.make_cell("tanh", 4, 2, dtype="float64", gain=1.5)
    variables = gradflow.init_cell(cell, jax.random.key(1))
    step = gradflow.as_step(cell, variables)
    xs = jnp.asarray(np.random.default_rng(1).normal(size=(5, 1, 2)))
    h0 = jnp.asarray(np.random.default_rng(2).normal(size=(1, 4)))
    t0 = jnp.zeros(1, jnp.int32)
    J = jax.jacrev(lambda h: gradflow.unroll(step, {"h": h, "t": t0}, xs)["h"][-1])(h0)[0, :, 0, :]
    hs = np.asarray(gradflow.unroll(step, {"h": h0, "t": t0}, xs)["h"])[:, 0]
    W = np.asarray(variables["params"]["W_hh"])
    P = np.eye(4)
    for t in range(5):
        P = np.diag(1 - hs[t] ** 2) @ W @ P
    np.testing.assert_allclose(J, P, atol=1e-12)


def test_train_step_is_pure_and_uses_batch_statistics():
    cell = gradflow.make_cell("bn_tanh", 3, 2)
    variables = gradflow.init_cell(cell, jax.random.key(0))
    before = jax.tree_util.tree_map(np.asarray, variables)
    step = jax.jit(gradflow.as_step(cell, variables, train=True))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2)) + 4.0, jnp.float32)
    a = step(cell.initialize_carry(6), x)
    b = step(cell.initialize_carry(6), x)
    np.testing.assert_array_equal(a["h"], b["h"])
    after = jax.tree_util.tree_map(np.asarray, variables)
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)
    # batch statistics: a common shift of every example's x changes nothing before the tanh
    c = step(cell.initialize_carry(6), x + 3.0)
    np.testing.assert_allclose(a["h"], c["h"], atol=1e-5)


# ---------------------------------------------------------------- adapters for a user's cells


def test_linen_gru_adapter_jacobians(x64):
    B, d, n_in, T = 1, 3, 2, 4
    cell = nn.GRUCell(features=d, param_dtype=jnp.float64)
    x0 = jnp.zeros((B, n_in), jnp.float64)
    variables = cell.init(jax.random.key(0), jnp.zeros((B, d), jnp.float64), x0)
    step = gradflow.as_step(cell, variables)
    rng = np.random.default_rng(3)
    h = jnp.asarray(rng.normal(size=(B, d)))
    x = jnp.asarray(rng.normal(size=(B, n_in)))
    np.testing.assert_array_equal(step(h, x), cell.apply(variables, h, x)[0])
    step_jac = jax.jit(jax.jacrev(step))
    J = np.asarray(step_jac(h, x)).reshape(B * d, B * d)
    fstep = jax.jit(step)
    fd = central_fd(
        lambda v: np.asarray(fstep(jnp.asarray(v).reshape(B, d), x)).ravel(), np.asarray(h).ravel()
    )
    np.testing.assert_allclose(J, fd, atol=1e-8)
    # through unroll: ∂h_T/∂h_0 equals the product of per-step Jacobians at the visited states
    xs = jnp.asarray(rng.normal(size=(T, B, n_in)))
    JT = np.asarray(jax.jacrev(lambda h: gradflow.unroll(step, h, xs)[-1])(h)).reshape(B * d, B * d)
    states = [h] + list(gradflow.unroll(step, h, xs))
    P = np.eye(B * d)
    for t in range(T):
        P = np.asarray(step_jac(states[t], xs[t])).reshape(B * d, B * d) @ P
    np.testing.assert_allclose(JT, P, atol=1e-12)


def test_nnx_lstm_adapter_jacobians_without_jit(x64):
    B, d, n_in, T = 2, 3, 2, 4
    cell = nnx.LSTMCell(n_in, d, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    kernel_before = np.asarray(nnx.state(cell, nnx.Param)["hf"]["kernel"][...])
    step = gradflow.as_step(cell)
    rng = np.random.default_rng(4)
    carry = (jnp.asarray(rng.normal(size=(B, d))), jnp.asarray(rng.normal(size=(B, d))))  # (c, h)
    x = jnp.asarray(rng.normal(size=(B, n_in)))
    out = step(carry, x)
    ref = cell(carry, x)[0]
    for a, b in zip(out, ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-14)
    np.testing.assert_allclose(jax.jit(step)(carry, x)[1], out[1], atol=1e-12)

    n = 2 * B * d
    flat = lambda c: np.concatenate([np.asarray(v).ravel() for v in c])
    unflat = lambda v: (jnp.asarray(v[: B * d]).reshape(B, d), jnp.asarray(v[B * d :]).reshape(B, d))

    def as_matrix(J):  # a carry -> carry Jacobian pytree as an (n, n) matrix
        return np.block([[np.asarray(J[i][j]).reshape(B * d, B * d) for j in range(2)] for i in range(2)])

    J = as_matrix(jax.jacrev(lambda c: step(c, x))(carry))  # jax.jacrev, no jit
    fstep = jax.jit(step)
    fd = central_fd(lambda v: flat(fstep(unflat(v), x)), flat(carry))
    assert J.shape == (n, n)
    np.testing.assert_allclose(J, fd, atol=1e-8)
    xs = jnp.asarray(rng.normal(size=(T, B, n_in)))
    JT = as_matrix(
        jax.jacrev(lambda c: jax.tree_util.tree_map(lambda s: s[-1], gradflow.unroll(step, c, xs)))(carry)
    )
    states = gradflow.unroll(step, carry, xs)
    visited = [carry] + [jax.tree_util.tree_map(lambda s, t=t: s[t], states) for t in range(T)]
    step_jac = jax.jit(jax.jacrev(step))
    P = np.eye(n)
    for t in range(T):
        P = as_matrix(step_jac(visited[t], xs[t])) @ P
    np.testing.assert_allclose(JT, P, atol=1e-12)
    # the user's module is untouched
    np.testing.assert_array_equal(nnx.state(cell, nnx.Param)["hf"]["kernel"][...], kernel_before)


def test_adapter_errors():
    with pytest.raises(ValueError, match="unsupported cell type"):
        gradflow.as_step(lambda c, x: c, None)
    cell = nn.GRUCell(features=3)
    with pytest.raises(ValueError, match="variables"):
        gradflow.as_step(cell)
    variables = cell.init(jax.random.key(0), jnp.zeros((1, 3)), jnp.zeros((1, 2)))
    bad = jax.tree_util.tree_map(lambda v: v.at[0].set(jnp.inf), variables)
    with pytest.raises(ValueError, match="non-finite"):
        gradflow.as_step(cell, bad)
    step = gradflow.as_step(cell, variables)
    with pytest.raises(ValueError, match="leading axis must be the batch"):
        step(jnp.zeros((2, 3)), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, input_size\)"):
        step(jnp.zeros((2, 3)), jnp.zeros((2,)))
    m = nnx.LSTMCell(2, 3, rngs=nnx.Rngs(0))
    state = nnx.state(m)
    state["hf"]["kernel"][...] = state["hf"]["kernel"][...].at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match=r"non-finite.*kernel"):
        gradflow.as_step(m, state)


def test_unroll_cell_updates_per_step_statistics_like_a_loop(x64):
    T, B, t_max = 5, 6, 3
    cell = gradflow.make_cell("bn_notanh", 3, 2, dtype="float64", t_max=t_max)
    variables = gradflow.init_cell(cell, jax.random.key(0))
    xs = jnp.asarray(np.random.default_rng(7).normal(size=(T, B, 2)) * 2 + 1)
    states, new = gradflow.unroll_cell(cell, variables, cell.initialize_carry(B), xs, train=True)
    # reference: a Python loop of cell.apply with mutable batch_stats, and a NumPy momentum update of bn_x
    v, carry = variables, cell.initialize_carry(B)
    W_xh = np.asarray(variables["params"]["W_xh"])
    mean_x = np.zeros((t_max, 3))
    for t in range(T):
        (carry, _), upd = cell.apply(v, carry, xs[t], train=True, mutable=["batch_stats"])
        v = {"params": v["params"], "batch_stats": upd["batch_stats"]}
        np.testing.assert_allclose(states["h"][t], carry["h"], atol=1e-12)
        r = min(t, t_max - 1)
        mean_x[r] = 0.9 * mean_x[r] + 0.1 * (np.asarray(xs[t]) @ W_xh.T).mean(0)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-12), new, v)
    np.testing.assert_allclose(new["batch_stats"]["bn_x"]["mean"], mean_x, atol=1e-12)
    # the pure step in train mode gives the same states (batch statistics) without touching the statistics
    pure = gradflow.unroll(gradflow.as_step(cell, variables, train=True), cell.initialize_carry(B), xs)
    np.testing.assert_allclose(pure["h"], states["h"], atol=1e-12)
    # eval mode: nothing updated
    _, same = gradflow.unroll_cell(cell, variables, cell.initialize_carry(B), xs, train=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, same, variables)
