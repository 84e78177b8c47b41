"""The LRU (bare and in its block) and the IRNN: outputs against complex NumPy, ring init, exact Jacobians,
training through `gradflow.train`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow
from gradflow import tasks, train
from tests.test_cells import lru_reference_step, random_variables, to_np


def lam_of(P):
    nu, th = np.asarray(P["nu_log"], np.float64), np.asarray(P["theta_log"], np.float64)
    return np.exp(-np.exp(nu) + 1j * np.exp(th))


@pytest.mark.parametrize("name", ["lru", "lru_block"])
def test_outputs_and_readout_features_match_numpy(name, x64):
    """y_t = Re(C x_t) + D u_t (bare) and the block's o_t, step by step and via `readout_features`."""
    T, B, d, n_in = 4, 3, 8, 3
    cell = gradflow.make_cell(name, d, n_in, dtype="float64")
    variables = random_variables(cell, 11, "float64")
    P = to_np(variables["params"])
    xs = np.random.default_rng(0).normal(size=(T, B, n_in))
    carry, h = cell.initialize_carry(B), np.zeros((B, d))
    hs, outs = [], []
    for t in range(T):
        carry, out = cell.apply(variables, carry, jnp.asarray(xs[t]))
        h, ref = lru_reference_step(P, h, xs[t])
        np.testing.assert_allclose(np.asarray(carry["h"]), h, atol=1e-12, rtol=0)
        np.testing.assert_allclose(np.asarray(out), ref, atol=1e-12, rtol=0)
        hs.append(carry["h"])
        outs.append(ref)
    feats = gradflow.cells.readout_features(cell, variables, jnp.stack(hs), jnp.asarray(xs))
    expected = np.stack(outs) if name == "lru_block" else np.stack([np.asarray(v) for v in hs])
    np.testing.assert_allclose(np.asarray(feats), expected, atol=1e-12, rtol=0)
    assert gradflow.cells.feature_size(cell) == expected.shape[-1]


def test_ring_init_follows_the_paper():
    """|λ|² uniform over [r_min², r_max²] (the ring's area), arg λ uniform in [0, max_phase],
    γ = sqrt(1 − |λ|²), B ~ N(0, 1/(2H)), C ~ N(0, 1/N), D ~ N(0, 1) (the reference code's scales)."""
    N, H, r_min, r_max, phase = 4000, 6, 0.9, 0.999, 0.5
    cell = gradflow.make_cell("lru", 2 * N, H, r_min=r_min, r_max=r_max, max_phase=phase)
    P = to_np(gradflow.init_cell(cell, jax.random.key(0))["params"])
    lam = lam_of(P)
    r2 = np.abs(lam) ** 2
    assert r2.min() >= r_min**2 - 1e-6 and r2.max() <= r_max**2 + 1e-6
    u = (r2 - r_min**2) / (r_max**2 - r_min**2)  # U(0, 1) under the ring init: mean 1/2, var 1/12
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / N) and abs(u.var() - 1 / 12) < 0.01
    ph = np.angle(lam) % (2 * np.pi)
    assert ph.min() >= 0 and ph.max() <= phase + 1e-6
    assert abs(ph.mean() - phase / 2) < 5 * phase / np.sqrt(12 * N)
    np.testing.assert_allclose(np.exp(P["gamma_log"]), np.sqrt(1 - np.abs(lam) ** 2), rtol=1e-4)
    scales = {"B_re": 1 / (2 * H), "B_im": 1 / (2 * H), "C_re": 1 / N, "C_im": 1 / N, "D": 1.0}
    for k, var in scales.items():
        n = P[k].size
        assert P[k].var() / var == pytest.approx(1.0, abs=5 * np.sqrt(2 / n) + (0.0 if n > 100 else 1.5)), k


@pytest.mark.parametrize("name,options", [("lru", {}), ("lru_block", {}), ("lru_block", {"norm_x": "bn"})])
def test_k_step_jacobian_is_diag_lambda_power(name, options, x64):
    """∂h_T/∂h_{T−k} is the real form of diag(λ)^k exactly, so its spectral norm is max|λ|^k (engine:
    jacobians and jacobian_norms; train mode; batch-coupled for the BN block: block diagonal over batch)."""
    T, B, d = 12, 2, 10
    cell = gradflow.make_cell(name, d, 3, dtype="float64", r_min=0.5, r_max=0.95, **options)
    variables = gradflow.init_cell(cell, jax.random.key(1))
    lam = lam_of(to_np(variables["params"]))
    step = gradflow.as_step(cell, variables, train=True)
    xs = jnp.asarray(np.random.default_rng(1).normal(size=(T, B, 3)))
    res = gradflow.jacobians(step, cell.initialize_carry(B), xs)
    norms = gradflow.jacobian_norms(step, cell.initialize_carry(B), xs)
    lags = np.asarray(res.lags)
    for t, k in enumerate(lags):
        Lk = lam**k
        blk = np.block([[np.diag(Lk.real), -np.diag(Lk.imag)], [np.diag(Lk.imag), np.diag(Lk.real)]])
        np.testing.assert_allclose(np.asarray(res.matrices[t]), np.kron(np.eye(B), blk), atol=1e-12)
    expected = np.abs(lam).max() ** lags
    np.testing.assert_allclose(np.asarray(res.spectral_norms), expected, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(norms.spectral_norms), expected, rtol=1e-10)
    rate = gradflow.theory.lru_rate(variables["params"])
    assert rate == pytest.approx(np.log(np.abs(lam).max()), rel=1e-12)


def test_lru_lyapunov_spectrum_is_ln_abs_lambda(x64):
    """Benettin/QR on the LRU: the exponents sum to 2 Σ ln|λ_j| exactly (ln|det| of every step), and each
    tends to ln|λ_j| (each twice: the real and imaginary directions; O(1/T) at finite T, 0.01 here)."""
    cell = gradflow.make_cell("lru", 6, 2, dtype="float64", r_min=0.3, r_max=0.9)
    variables = gradflow.init_cell(cell, jax.random.key(2))
    exact = gradflow.theory.lru_spectrum(variables["params"])
    moduli = np.abs(lam_of(variables["params"]))
    np.testing.assert_allclose(exact, np.sort(np.repeat(np.log(moduli), 2))[::-1])
    xs = jnp.asarray(np.random.default_rng(2).normal(size=(300, 1, 2)))
    step = gradflow.as_step(cell, variables)
    ex = np.asarray(gradflow.lyapunov_spectrum(step, cell.initialize_carry(1), xs).exponents)
    assert ex.sum() == pytest.approx(exact.sum(), abs=1e-10)
    np.testing.assert_allclose(ex, exact, atol=0.01)


def test_irnn_init_and_exact_jacobian_is_a_product_of_relu_masks(x64):
    """IRNN: W_hh = I, b = 0 at init; ∂h_T/∂h_t = Π diag(1[a_s > 0]) (W_hh = I), spectral norm 1 while some
    unit stays active over the whole lag, else 0."""
    T, B, d = 10, 1, 6
    cell = gradflow.make_cell("irnn", d, 2, dtype="float64")
    variables = gradflow.init_cell(cell, jax.random.key(3))
    P = to_np(variables["params"])
    np.testing.assert_array_equal(P["W_hh"], np.eye(d))
    np.testing.assert_array_equal(P["b"], 0.0)
    xs = np.random.default_rng(3).normal(size=(T, B, 2))
    h, masks = np.zeros((B, d)), []
    for t in range(T):
        a = h @ P["W_hh"].T + xs[t] @ P["W_xh"].T + P["b"]
        masks.append((a[0] > 0).astype(float))
        h = np.maximum(a, 0)
    res = gradflow.jacobians(gradflow.as_step(cell, variables), cell.initialize_carry(B), jnp.asarray(xs))
    for t in range(T):  # matrices[t] = ∂h_T/∂h_t = diag(m_T) ... diag(m_{t+1})
        m = np.prod(masks[t:], axis=0)
        np.testing.assert_allclose(np.asarray(res.matrices[t]), np.diag(m), atol=0)
        assert float(res.spectral_norms[t]) == pytest.approx(float(m.max()), abs=1e-12)
    assert gradflow.theory.relu_rate_bound(P["W_hh"]) == pytest.approx(0.0, abs=1e-12)


def test_lru_options_are_checked():
    with pytest.raises(ValueError, match="even"):
        gradflow.make_cell("lru", 5, 2)
    with pytest.raises(ValueError, match="r_min"):
        gradflow.make_cell("lru", 4, 2, r_min=0.9, r_max=0.5)
    with pytest.raises(ValueError, match="r_min"):
        gradflow.make_cell("lru", 4, 2, r_max=1.5)
    with pytest.raises(ValueError, match="max_phase"):
        gradflow.make_cell("lru", 4, 2, max_phase=0.0)
    with pytest.raises(ValueError, match="norm_h"):
        gradflow.make_cell("lru", 4, 2, norm_h="bn")
    with pytest.raises(ValueError, match="norm_x"):
        gradflow.make_cell("lru", 4, 2, norm_x="ln")
    with pytest.raises(ValueError, match="lru_block"):
        gradflow.make_cell("tanh", 4, 2, lru_block=True)


def test_lru_block_trains_on_adding():
    """The block through `gradflow.train.train`: it runs and its loss falls (adding, T = 10)."""
    task = tasks.adding(10)
    cell = gradflow.make_cell("lru_block", 16, task.input_size, r_min=0.5, r_max=0.99)
    params, _ = train.init_params(cell, task, jax.random.key(0))
    assert params["readout"]["W"].shape == (1, 8)  # reads the block's output o_t (width N = 8), not the state
    config = train.TrainConfig(
        steps=40, batch_size=16, learning_rate=3e-3, eval_every=40, eval_size=64, record_every=40
    )
    r = train.train(cell, task, config)
    loss = r.history["loss"]
    assert not r.diverged and np.all(np.isfinite(loss))
    assert loss[-10:].mean() < 0.5 * loss[:5].mean()  # a few steps: it falls (measured 0.5 → 0.2 by step 60)
    g = r.history["grad_flow"]
    assert np.all(np.isfinite(g)) and g.shape[1] == task.seq_len


def test_lru_init_rate_against_sampled_inits():
    """E[ln max|λ|] at init: −1/(2N) + ln r_max exactly for r_min = 0; the quadrature against NumPy Monte
    Carlo of the ring law; and against the mean over real inits of the cell (`lru_rate`)."""
    assert gradflow.theory.lru_init_rate(32) == pytest.approx(-1 / 64, rel=1e-14)
    rng = np.random.default_rng(0)
    for N, lo, hi in ((4, 0.0, 1.0), (16, 0.9, 0.999), (3, 0.5, 0.8), (64, 0.0, 0.95)):
        u = rng.uniform(size=(200_000, N))
        mc = 0.5 * np.log(lo**2 + (hi**2 - lo**2) * u.max(axis=1))
        pred = gradflow.theory.lru_init_rate(N, lo, hi)
        assert pred == pytest.approx(mc.mean(), abs=5 * mc.std() / np.sqrt(mc.size) + 1e-9)
    N, lo, hi, draws = 8, 0.9, 0.999, 200
    cell = gradflow.make_cell("lru", 2 * N, 1, r_min=lo, r_max=hi)
    rates = np.array(
        [
            gradflow.theory.lru_rate(gradflow.init_cell(cell, jax.random.key(s))["params"])
            for s in range(draws)
        ]
    )
    pred = gradflow.theory.lru_init_rate(N, lo, hi)
    assert rates.mean() == pytest.approx(pred, abs=5 * rates.std() / np.sqrt(draws))
    with pytest.raises(ValueError, match="ring"):
        gradflow.theory.lru_init_rate(4, 0.9, 0.5)
    with pytest.raises(ValueError, match="n_modes"):
        gradflow.theory.lru_init_rate(0)


@pytest.mark.parametrize(
    "name,options",
    [("irnn", {}), ("lru_block", {"norm_x": "bn", "t_max": 6})],
)
def test_engine_functions_run_on_the_new_presets(name, options):
    """unroll_cell (train: the block's BN running averages move), jacobian_norms, streaming norms and the
    Lyapunov spectrum all accept the new presets unchanged; for the LRU they agree with the exact rate."""
    T, B, d = 6, 3, 8
    cell = gradflow.make_cell(name, d, 2, **options)
    v = gradflow.init_cell(cell, jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, B, 2))
    states, v2 = gradflow.unroll_cell(cell, v, cell.initialize_carry(B), xs, train=True)
    assert states["h"].shape == (T, B, d) and np.all(np.isfinite(np.asarray(states["h"])))
    if "batch_stats" in v:
        moved = np.abs(
            np.asarray(v2["batch_stats"]["bn_x"]["mean"][:T])
            - np.asarray(v["batch_stats"]["bn_x"]["mean"][:T])
        )
        assert moved.max() > 0
    step = gradflow.as_step(cell, v, train=True)
    norms = gradflow.jacobian_norms(step, cell.initialize_carry(B), xs)
    stream = gradflow.streaming_log_norms(step, cell.initialize_carry(B), xs, probes=2, key=jax.random.key(2))
    lyap = gradflow.lyapunov_spectrum(step, cell.initialize_carry(B), xs, k=2, segments=3)
    assert np.all(np.isfinite(np.asarray(norms.frobenius_norms))) and np.all(
        np.isfinite(np.asarray(lyap.exponents))
    )
    assert np.asarray(stream.log_frobenius).shape == (T,)
    if cell.spec.family == "lru":
        lags = np.asarray(norms.lags)
        rate = gradflow.theory.lru_rate(v["params"])
        np.testing.assert_allclose(
            np.log(np.asarray(norms.spectral_norms)), rate * lags, atol=2e-5 * lags.max()
        )
