"""The input path of the normalized recurrences: its γ (`input_gamma_init`), the critical γ_x that zeroes the
mean-field rate (`theory.critical_input_gamma`, against the closed forms and a Benettin measurement), and
BN_x's statistics over the whole sequence (`input_stats="sequence"`, Laurent et al. 2016) against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow
from gradflow import tasks, train
from gradflow import theory as th
from gradflow.cells import with_sequence_stats
from tests.test_cells import EPS, bn, ln, random_variables, to_np

# ------------------------------------------------------------------------------------ input_gamma_init


def test_input_gamma_init_sets_only_the_input_normalization():
    for name, rec in (("bn_notanh", "bn_h"), ("ln_notanh", "ln_h"), ("bn_tanh", "bn_h")):
        P = gradflow.init_cell(gradflow.make_cell(name, 4, 2, input_gamma_init=0.3), jax.random.key(0))[
            "params"
        ]
        P0 = gradflow.init_cell(gradflow.make_cell(name, 4, 2), jax.random.key(0))["params"]
        np.testing.assert_array_equal(P["bn_x"]["scale"], np.float32(0.3))
        np.testing.assert_array_equal(P[rec]["scale"], P0[rec]["scale"])  # recurrent γ untouched
        np.testing.assert_array_equal(P0["bn_x"]["scale"], P0[rec]["scale"])  # None: today's behaviour
    P = gradflow.init_cell(gradflow.make_cell("lru_block", 4, 2, input_gamma_init=0.5), jax.random.key(0))
    np.testing.assert_array_equal(P["params"]["ln_x"]["scale"], np.float32(0.5))
    text = gradflow.describe(gradflow.CellSpec(norm_x="bn", input_gamma_init=0.3, input_stats="sequence"))
    assert "BN_x γ0 = 0.3" in text and "whole sequence" in text
    for bad in (float("nan"), "1", True):
        with pytest.raises(ValueError, match="input_gamma_init"):
            gradflow.make_cell("bn_notanh", 4, 2, input_gamma_init=bad)


# ------------------------------------------------------------------------------ critical_input_gamma


@pytest.mark.parametrize("n", [4, 5, 8, 32, 256])
@pytest.mark.parametrize("gamma_h", [0.5, 1.0, 2.0])
def test_critical_input_gamma_zeroes_the_mean_field_rates(n, gamma_h):
    gx = th.critical_input_gamma("bn_notanh", batch_size=n, gamma_h=gamma_h)
    assert gx == pytest.approx(gamma_h / np.sqrt(n - 3), rel=1e-14)
    # χ = γ_h²/(γ_h² + γ_x²)·(n−2)/(n−3) = 1, in closed form and through the general formulas of §3.5 / §4.1
    assert gamma_h**2 / (gamma_h**2 + gx**2) * (n - 2) / (n - 3) == pytest.approx(1.0, rel=1e-12)
    assert th.bn_train_rate(gamma_h, gx, n) == pytest.approx(0.0, abs=1e-9)
    assert th.bn_train_rate(gamma_h, gx, n, dropout=0.2) == pytest.approx(0.0, abs=1e-9)  # dropout cancels
    gl = th.critical_input_gamma("ln_notanh", hidden_size=n, gamma_h=gamma_h)
    assert gl == pytest.approx(gx, rel=1e-14)
    assert th.ln_rate(gamma_h, gl, n) == pytest.approx(0.0, abs=1e-9)
    assert th.predict_rate(
        "ln_notanh", hidden_size=n, batch_size=8, gamma=gamma_h, gamma_x=gl
    ) == pytest.approx(0.0, abs=1e-9)
    # the input then holds 1/(n − 2) of the state's variance
    assert th.input_variance_share(gx, gamma_h) == pytest.approx(1 / (n - 2), rel=1e-12)
    # below / above the critical γ_x the rate is positive / negative
    assert th.bn_train_rate(gamma_h, 0.9 * gx, n) > 0 > th.bn_train_rate(gamma_h, 1.1 * gx, n)


def test_critical_input_gamma_errors():
    with pytest.raises(ValueError, match="no critical input"):
        th.critical_input_gamma("tanh", batch_size=8)
    with pytest.raises(ValueError, match="batch_size"):
        th.critical_input_gamma("bn_notanh", hidden_size=64)
    with pytest.raises(ValueError, match="hidden_size"):
        th.critical_input_gamma("ln_notanh", batch_size=8)
    for n in (1, 3):
        with pytest.raises(ValueError, match="no input γ_x"):
            th.critical_input_gamma("bn_notanh", batch_size=n)
    with pytest.raises(ValueError, match="batch_size"):
        th.critical_input_gamma("bn_notanh", batch_size=8.0)
    with pytest.raises(ValueError, match="gamma_h"):
        th.critical_input_gamma("bn_notanh", batch_size=8, gamma_h=0.0)


@pytest.mark.parametrize(
    "name,d,B,options",
    [("bn_notanh", 128, 8, {}), ("ln_notanh", 256, 2, {})],  # ln_notanh with its preset dropout 0.2
)
def test_top_exponent_at_the_critical_input_gamma_is_zero(name, d, B, options):
    """λ₁ (engine Benettin/QR, train mode) at γ_x = critical_input_gamma, mean of 3 draws, near 0.

    64 input features (the BN isotropy assumption needs input_size ≫ B, docs/theory.md §6.3). Measured (the
    docs' command): bn_notanh d = 128, B = 8: −0.0068, −0.0061, +0.0019 (s.e. 0.002–0.004 each); ln_notanh
    d = 256, B = 2, p = 0.2: −0.0005, −0.0067, −0.0014. The preset γ_x = 1 gives −0.255 and −0.347 instead.
    Tolerance: mean within 0.015 of 0, every draw within 0.025.
    """
    n = B if name == "bn_notanh" else d
    gx = th.critical_input_gamma(name, batch_size=B, hidden_size=d)
    assert gx == pytest.approx(1 / np.sqrt(n - 3))
    T, n_in, lam = 400, 64, []
    for s in range(3):
        cell = gradflow.make_cell(name, d, n_in, input_gamma_init=gx, **options)
        v = gradflow.init_cell(cell, jax.random.key(s))
        key = jax.random.key(100 + s) if cell.spec.dropout else None
        step = gradflow.as_step(cell, v, train=True, key=key)
        xs = jax.random.normal(jax.random.key(50 + s), (T, B, n_in))
        c0 = {**cell.initialize_carry(B), "h": jax.random.normal(jax.random.key(70 + s), (B, d))}
        r = gradflow.lyapunov_spectrum(step, c0, xs, k=1, transient=T // 4, key=jax.random.key(9))
        lam.append(float(r.exponents[0]))
    assert abs(np.mean(lam)) < 0.015 and max(abs(x) for x in lam) < 0.025


# ------------------------------------------------------------------------- sequence-wise BN_x statistics


def seq_reference_step(name, P, h, x, m, v):
    """One train-mode step with BN_x normalized by the sequence statistics (m, v), the rest as usual."""
    hW, xW = h @ P["W_hh"].T, x @ P["W_xh"].T
    gx = P["bn_x"]["scale"]
    if name == "bn_notanh":
        return bn(hW, P["bn_h"]["scale"], None, None) + bn(xW, gx, P["bn_x"]["bias"], (m, v))
    if name == "bn_input_tanh":
        return np.tanh(bn(xW, gx, None, (m, v)) + hW + P["b"])
    if name == "ln_notanh":
        return ln(hW, P["ln_h"]["scale"], None) + bn(xW, gx, P["bn_x"]["bias"], (m, v))
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["bn_notanh", "bn_input_tanh", "ln_notanh"])
def test_sequence_statistics_match_numpy(name, x64):
    T, B, d, n_in = 5, 4, 6, 3
    cell = gradflow.make_cell(name, d, n_in, dtype="float64", input_stats="sequence", dropout=0.0, t_max=8)
    variables = random_variables(cell, 21, "float64")
    P = to_np(variables["params"])
    xs = np.random.default_rng(5).normal(size=(T, B, n_in)) + 0.7
    xs[2] = 0.0  # a step where every example's input is zero
    z = xs @ P["W_xh"].T  # (T, B, F): one mean and variance per feature over all B·T values
    m, v = z.reshape(-1, d).mean(0), z.reshape(-1, d).var(0)
    seq = with_sequence_stats(cell, variables, jnp.asarray(xs))
    np.testing.assert_allclose(np.asarray(seq["sequence_stats"]["mean"]), m, atol=1e-12)
    np.testing.assert_allclose(np.asarray(seq["sequence_stats"]["var"]), v, atol=1e-12)
    step = gradflow.as_step(cell, seq, train=True)
    carry, h = cell.initialize_carry(B), np.zeros((B, d))
    for t in range(T):
        carry = step(carry, jnp.asarray(xs[t]))
        h = seq_reference_step(name, P, h, xs[t], m, v)
        np.testing.assert_allclose(np.asarray(carry["h"]), h, atol=1e-10, rtol=0)
    # unroll_cell computes the statistics itself and feeds them to the running averages (row t, momentum 0.9)
    states, new = gradflow.unroll_cell(cell, variables, cell.initialize_carry(B), jnp.asarray(xs), train=True)
    np.testing.assert_allclose(np.asarray(states["h"][-1]), h, atol=1e-10, rtol=0)
    S0, S1 = to_np(variables["batch_stats"])["bn_x"], to_np(new["batch_stats"])["bn_x"]
    np.testing.assert_allclose(S1["mean"][:T], 0.9 * S0["mean"][:T] + 0.1 * m, atol=1e-12)
    np.testing.assert_allclose(S1["var"][:T], 0.9 * S0["var"][:T] + 0.1 * v, atol=1e-12)
    np.testing.assert_array_equal(S1["mean"][T:], S0["mean"][T:])
    # eval mode does not look at them: the same as per-step statistics
    step_cell = gradflow.make_cell(name, d, n_in, dtype="float64", dropout=0.0, t_max=8)
    a = gradflow.unroll(gradflow.as_step(cell, seq), cell.initialize_carry(B), jnp.asarray(xs))["h"]
    b = gradflow.unroll(gradflow.as_step(step_cell, variables), cell.initialize_carry(B), jnp.asarray(xs))[
        "h"
    ]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sequence_statistics_what_changes(x64):
    """At a step where every input is zero, per-step BN_x outputs its shift β only (zero batch variance); with
    sequence statistics it outputs β − γ m/√(v + ε), a constant that is not zero. The state Jacobian of a
    no-tanh cell at a given state does not involve the input path at all: the same in both modes."""
    d, B, n_in = 5, 4, 3
    kw = {"dtype": "float64", "t_max": 4}
    seq_cell = gradflow.make_cell("bn_notanh", d, n_in, input_stats="sequence", **kw)
    step_cell = gradflow.make_cell("bn_notanh", d, n_in, **kw)
    variables = random_variables(seq_cell, 3, "float64")
    P = to_np(variables["params"])
    xs = np.random.default_rng(1).normal(size=(3, B, n_in)) + 1.0
    xs[1] = 0.0
    sv = with_sequence_stats(seq_cell, variables, jnp.asarray(xs))
    m, v = (np.asarray(sv["sequence_stats"][k]) for k in ("mean", "var"))
    h = jnp.asarray(np.random.default_rng(2).normal(size=(B, d)))
    carry = {"h": h, "t": jnp.ones(B, jnp.int32)}
    f_seq = gradflow.as_step(seq_cell, sv, train=True)
    f_step = gradflow.as_step(step_cell, variables, train=True)
    recurrent = bn(np.asarray(h) @ P["W_hh"].T, P["bn_h"]["scale"], None, None)
    gx, beta = P["bn_x"]["scale"], P["bn_x"]["bias"]
    np.testing.assert_allclose(
        np.asarray(f_step(carry, jnp.asarray(xs[1]))["h"]) - recurrent,
        np.broadcast_to(beta, (B, d)),
        atol=1e-9,
    )
    np.testing.assert_allclose(
        np.asarray(f_seq(carry, jnp.asarray(xs[1]))["h"]) - recurrent,
        np.broadcast_to(beta - gx * m / np.sqrt(v + EPS), (B, d)),
        atol=1e-9,
    )
    assert np.all(np.abs(m) > 1e-3)
    J = [
        jax.jacfwd(lambda hh, f=f: f({"h": hh, "t": carry["t"]}, jnp.asarray(xs[0]))["h"])(h)
        for f in (f_seq, f_step)
    ]
    np.testing.assert_allclose(np.asarray(J[0]), np.asarray(J[1]), atol=1e-12)


def test_sequence_statistics_need_the_sequence_and_a_bn_input_path():
    cell = gradflow.make_cell("bn_notanh", 4, 2, input_stats="sequence")
    v = gradflow.init_cell(cell, jax.random.key(0))
    with pytest.raises(ValueError, match="with_sequence_stats"):
        gradflow.as_step(cell, v, train=True)(cell.initialize_carry(3), jnp.ones((3, 2)))
    gradflow.as_step(cell, v, train=False)(cell.initialize_carry(3), jnp.ones((3, 2)))  # eval: not needed
    with pytest.raises(ValueError, match="input_stats"):
        gradflow.make_cell("tanh", 4, 2, input_stats="sequence")
    with pytest.raises(ValueError, match="input_stats"):
        gradflow.make_cell("bn_notanh", 4, 2, input_stats="batch")
    with pytest.raises(ValueError, match="with_sequence_stats"):
        with_sequence_stats(gradflow.make_cell("bn_notanh", 4, 2), v, jnp.ones((3, 2, 2)))


def test_training_forward_uses_sequence_statistics(x64):
    """train.forward (train mode) equals the cell unrolled with `with_sequence_stats` on the same batch, and
    the loss gradient flows through the statistics into W_xh (finite differences)."""
    task = tasks.adding(6)
    cell = gradflow.make_cell("bn_notanh", 6, 2, input_stats="sequence", dtype="float64", t_max=6)
    params, bs = train.init_params(cell, task, jax.random.key(0))
    xs, ys = task.sample(jax.random.key(1), 5)
    xs = jnp.asarray(xs, jnp.float64)
    _, hs, _ = train.forward(cell, params, bs, xs, train=True)
    ref = gradflow.unroll(
        gradflow.as_step(
            cell, with_sequence_stats(cell, {"params": params["cell"], "batch_stats": bs}, xs), train=True
        ),
        cell.initialize_carry(5),
        xs,
    )["h"]
    np.testing.assert_allclose(np.asarray(hs), np.asarray(ref), atol=1e-12)

    @jax.jit
    def loss(W):
        p = {**params, "cell": {**params["cell"], "W_xh": W}}
        out, _, _ = train.forward(cell, p, bs, xs, train=True)
        return task.loss(out, ys)

    W = params["cell"]["W_xh"]
    g = np.asarray(jax.grad(loss)(W))
    E = np.zeros(W.shape)
    E[1, 0] = 1e-6
    fd = (loss(W + E) - loss(W - E)) / 2e-6
    assert g[1, 0] == pytest.approx(float(fd), rel=1e-5, abs=1e-9)
