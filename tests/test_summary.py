"""gf.summary: rate and honest uncertainty against independent single-example fits, exponents against closed
forms, the convergence warning, verdicts, the optional theory prediction, repr/to_dict/plot; short reprs."""

import json

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

import gradflow as gf
from gradflow.summary import summary
from tests.helpers import rand


def _linear(W):
    return lambda h, x: h @ W.T


def test_rate_and_uncertainty_across_examples_match_single_example_fits(x64):
    d, B, T = 4, 5, 80
    W = rand(0, (d, d), 1.4 / np.sqrt(d))
    step = lambda h, x: jnp.tanh(h @ W.T + x)
    h0, xs = rand(1, (B, d), 0.5), rand(2, (T, B, d))
    s = summary(step, h0, xs, k=2, min_lag=10)
    assert s.per_example and s.uncertainty == "examples"
    rates = []
    for b in range(B):
        r = gf.jacobian_norms(step, h0[b : b + 1], xs[:, b : b + 1])
        lags = np.asarray(r.lags)
        keep = lags >= 10
        rates.append(np.polyfit(lags[keep], np.log(np.asarray(r.frobenius_norms))[keep], 1)[0])
    np.testing.assert_allclose(s.unit_rates, rates, rtol=1e-9)
    np.testing.assert_allclose(s.rate, np.mean(rates), rtol=1e-9)
    np.testing.assert_allclose(s.rate_stderr, np.std(rates, ddof=1) / np.sqrt(B), rtol=1e-9)
    assert s.rate_stderr > 0


def test_linear_closed_forms_verdicts_and_segments_for_one_example(x64):
    T = 200
    for a, verdict in ((0.9, "vanishes"), (1.02, "explodes"), (1.005, "neutral")):
        W = jnp.diag(jnp.asarray([a, 0.5 * a]))
        s = summary(_linear(W), jnp.ones((1, 2)), jnp.zeros((T, 1, 1)), k=2)
        assert s.uncertainty == "segments" and not s.per_example
        np.testing.assert_allclose(s.rate, np.log(a), atol=1e-4)  # Frobenius: tends to the top rate
        assert s.verdict == verdict and s.threshold == 0.01 and s.converged
        np.testing.assert_allclose(s.exponents, [np.log(a), np.log(0.5 * a)], rtol=1e-9)
        assert s.unit_rates.shape == (10,)


def test_unconverged_exponents_warn():
    # two close exponents (-0.001, -0.002): Benettin's first vector aligns at the rate of the gap, 0.001 per
    # step, so at T = 300 the top exponent is still biased (the halves disagree)
    W = jnp.diag(jnp.exp(-jnp.asarray([0.001, 0.002, 0.003, 0.004])))
    step, h0, xs = (lambda h, x: h @ W.T), jnp.ones((1, 4)), jnp.zeros((300, 1, 1))
    with pytest.warns(RuntimeWarning, match="not converged"):
        s = summary(step, h0, xs, k=1)
    assert not s.converged
    assert abs(s.exponents[0] - (-0.001)) > 1e-4  # really biased: the warning is not a false alarm
    s_long = summary(step, h0, jnp.zeros((20000, 1, 1)), k=1, lags=[1, 10])
    assert s_long.converged and abs(s_long.exponents[0] - (-0.001)) < 2e-4


def test_coupled_step_falls_back_to_the_batch_state_and_prediction():
    W = rand(3, (3, 3), 0.9)

    def bn_step(h, x):
        a = h @ W.T + x
        return (a - a.mean(0)) / jnp.sqrt(a.var(0) + 1e-5)

    s = summary(bn_step, rand(4, (4, 3)), rand(5, (60, 4, 3)), k=3)
    assert not s.per_example and s.uncertainty == "segments"
    assert s.prediction is None and "preset" in s.prediction_note
    with pytest.raises(ValueError, match="batch_block_norms"):
        summary(bn_step, rand(4, (4, 3)), rand(5, (60, 4, 3)), per_example=True)


def test_theory_prediction_repr_to_dict_plot():
    d, B, T = 16, 2, 60
    cell = gf.make_cell("tanh", d, 4, gain=1.2)
    variables = gf.init_cell(cell, jax.random.PRNGKey(0), batch_size=B)
    step = gf.as_step(cell, variables)
    carry0, xs = cell.initialize_carry(B), rand(6, (T, B, 4))
    s = summary(step, carry0, xs, k=3, preset="tanh", theory_options={"gain": 1.2, "sigma_x2": 1.0})
    assert s.prediction == gf.theory.predict_rate("tanh", hidden_size=d, batch_size=B, gain=1.2, sigma_x2=1.0)
    with pytest.raises(ValueError, match="unknown preset 'no-such-cell'"):
        summary(step, carry0, xs, k=3, preset="no-such-cell")
    text = repr(s)
    assert len(text) < 400 and "verdict=" in text and "±" in text
    d_ = s.to_dict()
    json.dumps(d_)
    assert d_["rate"] == s.rate and len(d_["exponents"]) == 3
    fig = s.plot()
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 2
    matplotlib.pyplot.close(fig)


def test_engine_results_have_short_reprs():
    W = 0.9 * jnp.eye(8)
    step, h0, xs = (lambda h, x: jnp.tanh(h @ W.T + x)), jnp.zeros((2, 8)), rand(7, (1000, 2, 8))
    results = [
        gf.jacobian_norms(step, h0, xs),
        gf.streaming_log_norms(step, h0, xs),
        gf.lyapunov_spectrum(step, h0, xs, k=4),
        gf.spectra(step, h0, xs, lags=[1, 10]),
        gf.batch_block_norms(step, h0, xs[:50]),
        gf.growth_rate(gf.jacobian_norms(step, h0, xs[:50])),
        gf.top_singular_value(step, h0, xs[:50], 10),
        gf.hutchinson_frobenius(step, h0, xs[:50], 10, key=jax.random.PRNGKey(0)),
    ]
    for r in results:
        text = repr(r)
        assert len(text) < 1200 and type(r).__name__ in text, text
    assert "float32[1000]" in repr(results[0])
    assert "float32[16]" in repr(results[-2]) and "probes=32" in repr(results[-1])  # the vector: shape only
