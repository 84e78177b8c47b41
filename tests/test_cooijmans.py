"""The Recurrent BN Figure 1a setting (analyses/cooijmans_fig1a.py), its one-unit theory (gradflow.unit_bn).

References: a plain NumPy backward loop of the one-unit maps (``unit_bn.backward_log_norms``, itself checked
against central finite differences), ``jax.grad`` of the unrolled loss (no per-step VJP, no log scale), the
closed forms ln(γ/√ε) (zero-variance prefix) and ln(2γ/sinh 2γ) (two-cluster fixed point), all float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow
from analyses import cooijmans_fig1a as fig
from gradflow import unit_bn


def _inputs(T, B, prefix, seed=0):
    """Pixel-like inputs in [0, 1] whose first ``prefix`` steps are zero for every example."""
    rng = np.random.default_rng(seed)
    xs = rng.uniform(size=(T, B)) * (rng.uniform(size=(T, B)) < 0.4)
    xs[:prefix] = 0.0
    xs[prefix] = rng.uniform(0.1, 1.0, size=B)  # the first varying step is prefix + 1 (1-based)
    return xs


def _ce_grad(h, Wy, labels):
    logits = h @ Wy
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1.0
    return p @ Wy.T / len(labels)


def _numpy_loss_from(t, h_t, xs, w, gamma, eps, Wy, labels):
    """Softmax CE of h_T W_y, running the one-unit maps from state h_t (plain NumPy, no gradflow)."""
    h = h_t
    for s in range(t, xs.shape[0]):
        z = h + xs[s][:, None] * w[None, :]
        zc = z - z.mean(0)
        h = np.tanh(gamma * zc / np.sqrt(np.mean(zc**2, 0) + eps))
    logits = h @ Wy
    m = logits.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(1))
    return float(np.mean(lse - logits[np.arange(len(labels)), labels]))


def test_numpy_backward_matches_finite_differences():
    T, B, d, gamma, eps = 8, 5, 3, 0.7, 1e-5
    xs = _inputs(T, B, prefix=2)
    rng = np.random.default_rng(1)
    w, Wy, labels = fig.orthogonal(rng, 1, d)[0], fig.orthogonal(rng, d, 10), np.array([0, 3, 3, 7, 9])
    h0 = 0.5 * rng.standard_normal((B, d))
    fwd = unit_bn.forward(xs, w, gamma, eps, h0)
    back = unit_bn.backward_log_norms(fwd, _ce_grad(fwd["h"], Wy, labels))
    # states h_t by running the map t steps
    for t in (1, 4, 6):
        h_t = unit_bn.forward(xs[:t], w, gamma, eps, h0)["h"]
        G = np.zeros((B, d))
        for b in range(B):
            for j in range(d):
                e = np.zeros((B, d))
                e[b, j] = 1e-6
                G[b, j] = (_numpy_loss_from(t, h_t + e, xs, w, gamma, eps, Wy, labels)
                           - _numpy_loss_from(t, h_t - e, xs, w, gamma, eps, Wy, labels)) / 2e-6
        assert np.log(np.linalg.norm(G, axis=0)) == pytest.approx(back["log_unit_norm"][t], abs=1e-6)
        assert np.log(np.linalg.norm(G, axis=1).mean()) == pytest.approx(back["log_mean_norm"][t], abs=1e-6)


@pytest.mark.parametrize("h0_kind", ["zero", "noise"])
def test_gradflow_measurement_matches_numpy_backprop(x64, h0_kind):
    T, B, d, gamma, eps = 40, 6, 5, 0.6, 1e-5
    xs = _inputs(T, B, prefix=6)
    cell, v, w, Wy = fig.make_setup("fig1a", gamma, d, T, seed=3, eps=eps)
    labels = np.arange(B) % 10
    h0 = np.zeros((B, d)) if h0_kind == "zero" else np.random.default_rng(2).standard_normal((B, d))
    lm, lu = fig.grad_log_norms(cell, v, h0, xs, Wy, labels)
    fwd = unit_bn.forward(xs, w, gamma, eps, h0)
    ref = unit_bn.backward_log_norms(fwd, _ce_grad(fwd["h"], Wy, labels))
    np.testing.assert_allclose(lm, ref["log_mean_norm"], atol=1e-8)
    np.testing.assert_allclose(lu, ref["log_unit_norm"], atol=1e-8)


@pytest.mark.parametrize("kind", ["fig1a", "bn_tanh"])
def test_gradflow_measurement_matches_jax_grad(x64, kind):
    """The per-step VJP with a running log scale against jax.grad of the unrolled loss (small range here)."""
    T, B, d, gamma = 25, 6, 4, 0.9
    xs = _inputs(T, B, prefix=3)
    cell, v, _, Wy = fig.make_setup(kind, gamma, d, T, seed=1)
    labels = np.arange(B) % 10
    h0 = np.random.default_rng(4).standard_normal((B, d))
    lm, lu = fig.grad_log_norms(cell, v, h0, xs, Wy, labels)
    step = gradflow.as_step(cell, v, train=True)

    def loss(eps_all):
        c = {"h": jnp.asarray(h0) + eps_all[0], "t": jnp.zeros((B,), jnp.int32)}

        def body(c, inp):
            x, e = inp
            c = step(c, x)
            return {**c, "h": c["h"] + e}, None

        c, _ = jax.lax.scan(body, c, (jnp.asarray(xs)[:, :, None], eps_all[1:]))
        return -jnp.mean(jax.nn.log_softmax(c["h"] @ jnp.asarray(Wy))[jnp.arange(B), labels])

    G = np.asarray(jax.jit(jax.grad(loss))(jnp.zeros((T + 1, B, d))))
    np.testing.assert_allclose(lm, np.log(np.linalg.norm(G, axis=2).mean(1)), atol=1e-9)
    np.testing.assert_allclose(lu, np.log(np.linalg.norm(G, axis=1)), atol=1e-9)


@pytest.mark.parametrize("gamma", [0.1, 1.0])
def test_zero_variance_prefix_gain_is_gamma_over_sqrt_eps(x64, gamma):
    """h_0 = 0 and empty first rows: BN divides by √ε, the gradient grows by γ/√ε per step going back."""
    T, B, d, eps, prefix = 30, 6, 4, 1e-5, 8
    xs = _inputs(T, B, prefix=prefix)
    assert fig.first_varying_step(xs) == prefix + 1
    cell, v, _, Wy = fig.make_setup("fig1a", gamma, d, T, seed=0, eps=eps)
    labels = np.arange(B) % 10
    lm, _ = fig.grad_log_norms(cell, v, np.zeros((B, d)), xs, Wy, labels)
    per_step = lm[:prefix] - lm[1:prefix + 1]  # ln n_{t-1} − ln n_t for t = 1..prefix
    np.testing.assert_allclose(per_step, np.log(gamma / np.sqrt(eps)), atol=1e-9)
    closed = np.log(gamma / np.sqrt(eps))
    assert unit_bn.zero_variance_log_gain(gamma, eps) == pytest.approx(closed, rel=1e-14)
    # the noise-primed h_0 (the paper's option) removes the zero variance: no γ/√ε amplification
    noise = np.random.default_rng(0).standard_normal((B, d))
    ln_noise, _ = fig.grad_log_norms(cell, v, noise, xs, Wy, labels)
    assert np.max(np.abs(ln_noise[:prefix] - ln_noise[1:prefix + 1])) < 0.5 * np.log(1 / np.sqrt(eps))


@pytest.mark.parametrize("gamma,q", [(0.3, 0.5), (1.0, 0.5), (1.0, 0.75), (2.0, 0.625)])
def test_two_point_gain_against_the_one_unit_map_without_input(gamma, q):
    B, d, T = 16, 2, 60
    n_a = int(round(q * B))
    h0 = np.where(np.arange(B)[:, None] < n_a, 0.3, -0.2) * np.ones((1, d))
    fwd = unit_bn.forward(np.zeros((T, B)), np.ones(d) / np.sqrt(d), gamma, eps=1e-14, h0=h0)
    rates = unit_bn.unit_exponents(fwd, 10, T - 5)
    assert rates == pytest.approx(unit_bn.two_point_log_gain(gamma, q), abs=1e-6)
    if q == 0.5:
        assert unit_bn.two_point_log_gain(gamma, q) == pytest.approx(np.log(2 * gamma / np.sinh(2 * gamma)))


def test_unit_theory_matches_measured_per_unit_gains(x64):
    """One-unit exponents (random start, no loss) against the measured per-unit slopes of ∂loss/∂h_t."""
    B, d = 32, 6
    xs, labels = fig.framed_digits(B, seed=0, frame=16)
    T = xs.shape[0]
    for gamma in (0.2, 1.0):
        cell, v, w, Wy = fig.make_setup("fig1a", gamma, d, T, seed=0)
        h0 = np.random.default_rng(1).standard_normal((B, d))
        _, lu = fig.grad_log_norms(cell, v, h0, xs, Wy, labels)
        meas = fig.back_rate(lu, 100, 220)
        theory = unit_bn.unit_exponents(unit_bn.forward(xs, w, gamma, 1e-5, h0), 100, 220, seed=5)
        assert np.max(np.abs(meas - theory)) < TOL_UNIT, (gamma, meas, theory)


TOL_UNIT = 0.03  # finite-window scatter: 0.022 at B = 32 over 120 steps, 0.012 at B = 100 over 450


def test_framed_digits_have_mnist_border():
    xs, labels = fig.framed_digits(10, seed=0)
    assert xs.shape == (784, 10) and labels.shape == (10,)
    assert xs.min() >= 0.0 and xs.max() <= 1.0 and xs.max() > 0.9
    img = xs.T.reshape(10, 28, 28)
    assert np.all(img[:, :4] == 0) and np.all(img[:, 24:] == 0) and np.all(img[:, :, :4] == 0)
    assert fig.first_varying_step(xs) > 4 * 28


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="gamma"):
        unit_bn.forward(np.zeros((3, 2)), np.ones(2), 0.0)
    with pytest.raises(ValueError, match="h0"):
        unit_bn.forward(np.zeros((3, 2)), np.ones(2), 0.5, h0=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="xs must be"):
        unit_bn.forward(np.zeros(3), np.ones(2), 0.5)
    fwd = unit_bn.forward(np.zeros((3, 2)), np.ones(2), 0.5)
    with pytest.raises(ValueError, match="t_from"):
        unit_bn.unit_exponents(fwd, 2, 2)
    with pytest.raises(ValueError, match="q"):
        unit_bn.two_point_log_gain(1.0, 1.0)
    with pytest.raises(ValueError, match="never varies"):
        fig.first_varying_step(np.zeros((4, 3)))


def test_no_input_map_becomes_bimodal_and_follows_the_two_point_gain():
    """From a Gaussian batch, the one-unit map without input converges to two clusters (kurtosis → 1), and
    each unit's backward exponent is the two-point gain at its own cluster fraction q."""
    B, d, gamma = 64, 6, 1.0
    h0 = np.random.default_rng(0).standard_normal((B, d))
    fwd = unit_bn.forward(np.zeros((300, B)), np.ones(d) / np.sqrt(d), gamma, eps=1e-12, h0=h0)
    assert np.all(np.mean(fwd["yhat"][0] ** 4, axis=0) > 2.0)  # Gaussian-like start (3 at B → ∞)
    assert np.all(np.mean(fwd["yhat"][-1] ** 4, axis=0) < 1.01)
    q = np.mean(fwd["yhat"][-1] > 0, axis=0)
    rates = unit_bn.unit_exponents(fwd, 150, 290)
    expect = [unit_bn.two_point_log_gain(gamma, float(qj)) for qj in q]
    np.testing.assert_allclose(rates, expect, atol=2e-3)  # measured 6e-4 (ε = 1e-12, 140 steps)
