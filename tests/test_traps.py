"""The traps a newcomer fell into (issue 21) and the bad arguments of the careful-user probe (issue 22): each
gets a clear error or a correct result.

References: gradflow.theory.predict_rate called directly (the summary's prediction), closed forms
(condition number s_max/s_min, ½ ln of an exactly zero χ is -inf, ln g for a tiny gain), a per-row fit of
the same log norms (per-example growth rates), the cell's own init structure (another cell's variables).
"""

from __future__ import annotations

import math
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gradflow as gf
from gradflow import checks, tasks, theory, train


@pytest.fixture(scope="module")
def tanh_setup():
    cell = gf.make_cell("tanh", 6, 3)
    step = gf.as_step(cell, gf.init_cell(cell, jax.random.key(0)))
    carry0 = cell.initialize_carry(3)
    xs = jax.random.normal(jax.random.key(1), (24, 3, 3))
    return step, carry0, xs


def _summary(setup, **kw):
    step, carry0, xs = setup
    return gf.summary(step, carry0, kw.pop("xs", xs), k=2, segments=4, **kw)


# ------------------------------------------------------------------------- summary's prediction (issue 21)


def test_summary_tanh_preset_with_inputs_needs_sigma_x2(tanh_setup):
    """The tanh prediction assumed no input (1e-16 against a measured -0.49): it now refuses, with a warning
    naming sigma_x2, and with sigma_x2 given it is predict_rate's value with that drive."""
    with pytest.warns(RuntimeWarning, match="sigma_x2"):
        s = _summary(tanh_setup, preset="tanh")
    assert s.prediction is None and "sigma_x2" in s.prediction_note
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*sigma_x2", category=RuntimeWarning)
        s = _summary(tanh_setup, preset="tanh", theory_options={"sigma_x2": 1.0})
    ref = theory.predict_rate("tanh", hidden_size=6, batch_size=3, sigma_x2=1.0)
    assert s.prediction == pytest.approx(ref, abs=1e-12) and ref < -0.1


def test_summary_counts_unresolved_singular_values_instead_of_warning():
    """The README's quick start printed a RuntimeWarning from inside summary (1474 of 2048 singular values
    below float32's precision at lags up to 200): summary now says it in its repr, and spectra alone still
    warns."""
    W = jnp.diag(jnp.linspace(0.9, 0.1, 8))  # s_i / s_1 of dh_T/dh_t at lag L: (w_i / 0.9)**L
    step, h0, xs = (lambda h, x: h @ W.T + x), jnp.zeros((1, 8)), jnp.zeros((60, 1, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = gf.summary(step, h0, xs, k=2, segments=4)
    bad = int(np.sum(~np.asarray(s.spectra.resolved)))
    assert bad > 0 and f"({bad} of {np.size(s.spectra.resolved)} singular values unresolved: NaN)" in repr(s)
    assert np.all(np.isnan(np.asarray(s.spectra.singular_values)[~np.asarray(s.spectra.resolved)]))
    with pytest.warns(RuntimeWarning, match="lie below the precision"):
        gf.spectra(step, h0, xs, lags=[1, 60])


def test_summary_zero_inputs_predict_the_input_free_rate(tanh_setup):
    step, carry0, xs = tanh_setup
    s = _summary(tanh_setup, preset="tanh", xs=jnp.zeros_like(xs))
    assert s.prediction == theory.predict_rate("tanh", hidden_size=6, batch_size=3, has_input=False)


@pytest.mark.parametrize("preset, options, match", [
    ("nope", None, "unknown preset 'nope'"),
    ("tanh", {"gian": 2.0}, r"unknown theory_options \['gian'\]"),
    (None, {"gain": 2.0}, "theory_options without preset"),
])
def test_summary_refuses_unknown_preset_or_option(tanh_setup, preset, options, match):
    with pytest.raises(ValueError, match=match):
        _summary(tanh_setup, preset=preset, theory_options=options)


@pytest.mark.parametrize("preset, match", [
    ("bn_notanh", "it has batch normalization .* treats them independently"),
    ("lstm", "its state leaves have shapes"),
])
def test_summary_warns_when_preset_does_not_match_step(tanh_setup, preset, match):
    with pytest.warns(RuntimeWarning, match=f"preset {preset!r} does not match the step: {match}"):
        _summary(tanh_setup, preset=preset, theory_options={"sigma_x2": 1.0} if preset == "tanh" else None)


# ------------------------------------------------------------------------------ summary's arguments (#22)


@pytest.mark.parametrize("kw, match", [
    ({"transient": -1}, "transient must be a non-negative int"),
    ({"transient": 24}, "transient must leave at least 4"),
    ({"transient": 2.5}, "transient must be a non-negative int"),
    ({"k": 2.5}, "k must be a positive int"),
    ({"k": 0}, "k must be a positive int"),
    ({"threshold": float("nan")}, "threshold must be a finite number >= 0"),
    ({"threshold": -0.1}, "threshold must be a finite number >= 0"),
    ({"segments": 0}, "segments must be an int >= 2"),
    ({"segments": 1}, "segments must be an int >= 2"),
    ({"segments": 30}, "segments must be <= half the 22 post-transient steps"),
    ({"min_lag": 23}, "min_lag must leave at least 3 lags"),
    ({"per_example": "False"}, "per_example must be True or False"),
    ({"key": "abc"}, "key must be a PRNG key"),
])
def test_summary_refuses_bad_arguments(tanh_setup, kw, match):
    step, carry0, xs = tanh_setup
    kw = {"k": 2, "segments": 4, **kw}
    with pytest.raises(ValueError, match=match):
        gf.summary(step, carry0, xs, **kw)


# ------------------------------------------------------------------------------------- cells and steps


@pytest.mark.parametrize("gain", [-1, 0, -0.5])
def test_make_cell_refuses_non_positive_gain(gain):
    with pytest.raises(ValueError, match="CellSpec.gain: must be > 0"):
        gf.make_cell("tanh", 32, 8, gain=gain)


def test_cellspec_accepts_numpy_floats_where_checks_does():
    """input_gamma_init and the LRU ring took Python floats only ("must be a finite number": np.float32)."""
    a = gf.make_cell("bn_notanh", 4, 2, input_gamma_init=np.float32(0.5))
    b = gf.make_cell("lru", 4, 2, r_min=np.float32(0.25), r_max=np.float64(0.75), max_phase=np.float32(3.0))
    assert a.spec.input_gamma_init == 0.5 and (b.spec.r_min, b.spec.r_max) == (0.25, 0.75)


def test_describe_returns_text_and_refuses_other_types():
    out = gf.describe("tanh")
    assert isinstance(out, str) and out.startswith("h_t = tanh(")
    assert "returns" in gf.describe.__doc__ and "prints nothing" in gf.describe.__doc__
    with pytest.raises(ValueError, match="describe expects a cell name"):
        gf.describe(3)


def test_as_step_refuses_another_cells_variables():
    """bn_tanh's variables given to a tanh cell: BN's γ/β and statistics were silently ignored."""
    tanh, bn = gf.make_cell("tanh", 4, 2), gf.make_cell("bn_tanh", 4, 2)
    with pytest.raises(ValueError, match="'batch_stats' collection this cell does not use"):
        gf.as_step(tanh, gf.init_cell(bn, jax.random.key(0)))
    v = gf.init_cell(bn, jax.random.key(0))
    with pytest.raises(ValueError, match=r"variables\['params'\] have entries this cell does not use: "
                                         r"\['bn_h'\]"):
        gf.as_step(tanh, {"params": v["params"]})
    gf.as_step(tanh, gf.init_cell(tanh, jax.random.key(0)))  # its own variables still pass


@pytest.mark.parametrize("call, match", [
    (lambda c, v: gf.as_step(c, v, train="False"), "train must be True or False"),
    (lambda c, v: theory.predict_rate("bn_notanh", hidden_size=8, batch_size=8, has_input="False"),
     "has_input must be True or False"),
    (lambda c, v: gf.jacobian_norms(gf.as_step(c, v), c.initialize_carry(2), jnp.ones((5, 2, 2)),
                                    per_example="False"), "per_example must be True or False"),
    (lambda c, v: gf.jacobian_norms(gf.as_step(c, v), c.initialize_carry(2), jnp.ones((5, 2, 2)),
                                    wrt={"h": "False", "t": False}), "wrt must be a pytree of True/False"),
])
def test_truthy_strings_are_not_flags(call, match):
    """"False" is a truthy string: it was read as True."""
    cell = gf.make_cell("tanh", 4, 2)
    with pytest.raises(ValueError, match=match):
        call(cell, gf.init_cell(cell, jax.random.key(0)))


def test_x64_inputs_into_a_float32_cell_say_how_to_fix(x64):
    """With jax_enable_x64 the presets stay float32; float64 inputs failed with no suggested fix."""
    cell = gf.make_cell("tanh", 4, 2)
    step = gf.as_step(cell, gf.init_cell(cell, jax.random.key(0)))
    xs = jnp.ones((6, 2, 2), jnp.float64)
    for call in (gf.jacobian_norms, gf.unroll):
        with pytest.raises(ValueError, match=r"xs.astype\(jnp.float32\).*dtype='float64'"):
            call(step, cell.initialize_carry(2), xs)
    r = gf.jacobian_norms(step, cell.initialize_carry(2), xs.astype(jnp.float32))  # the fix works
    assert r.log_frobenius_norms.dtype == jnp.float32


@pytest.mark.parametrize("dtype, match", [(jnp.float16, "float16.*real float32 or float64"),
                                          (jnp.complex64, "complex64.*real and imaginary parts")])
def test_engine_refuses_half_and_complex_carries_up_front(dtype, match):
    W = (0.5 * jnp.eye(3)).astype(dtype)
    step = lambda h, x: h @ W + x  # noqa: E731
    with pytest.raises(ValueError, match=match):
        gf.jacobian_norms(step, jnp.zeros((2, 3), dtype), jnp.zeros((4, 2, 3), dtype))


# ------------------------------------------------------------------------------------------- PRNG keys


def _key_calls():
    cell = gf.make_cell("tanh", 4, 2)
    dcell = gf.make_cell("tanh", 4, 2, dropout=0.1)
    v = gf.init_cell(cell, jax.random.key(0))
    step, c0 = gf.as_step(cell, v), cell.initialize_carry(2)
    xs = jax.random.normal(jax.random.key(1), (10, 2, 2))
    return {
        "init_cell": lambda k: gf.init_cell(cell, k)["params"]["W_hh"],
        "as_step": lambda k: gf.as_step(dcell, gf.init_cell(dcell, jax.random.key(0)), train=True, key=k)(
            c0, xs[0])["h"],
        "lyapunov_spectrum": lambda k: gf.lyapunov_spectrum(step, c0, xs, k=2, key=k).exponents,
        "top_singular_value": lambda k: gf.top_singular_value(step, c0, xs, 3, key=k, iters=5).sigma,
        "hutchinson_frobenius": lambda k: gf.hutchinson_frobenius(step, c0, xs, 3, key=k, probes=4).frobenius,
        "streaming_log_norms": lambda k: gf.streaming_log_norms(step, c0, xs, probes=2, key=k).log_frobenius,
        "flossing_exponents": lambda k: gf.flossing_exponents(step, c0, xs, k=1, key=k),
        "flossing_loss": lambda k: gf.flossing_loss(step, c0, xs, k=1, key=k),
    }


def test_an_int_seed_works_wherever_a_key_is_expected():
    """An int was a raw TypeError from JAX in 8 functions: it is the seed of jax.random.PRNGKey."""
    for name, call in _key_calls().items():
        a, b = np.asarray(call(7)), np.asarray(call(jax.random.PRNGKey(7)))
        np.testing.assert_array_equal(a, b, err_msg=name)
        with pytest.raises(ValueError, match="key must be a PRNG key .* or an int seed"):
            call("7")


def test_a_required_key_given_as_none_says_so():
    cell = gf.make_cell("tanh", 4, 2)
    with pytest.raises(ValueError, match=r"key is required: pass a PRNG key \(jax.random.key\(0\)\) or an "):
        gf.init_cell(cell, None)
    with pytest.raises(ValueError, match="key is required"):
        gf.hutchinson_frobenius(gf.as_step(cell, gf.init_cell(cell, 0)), cell.initialize_carry(2),
                                jnp.ones((4, 2, 2)), 2, key=None)
    with pytest.raises(ValueError, match="seed must be an int with 0 <= seed < 2"):
        checks.prng_key("seed", -1)


# ---------------------------------------------------------------------------------- rates and spectra


def test_growth_rate_takes_per_example_results():
    """The README's per_example=True result (B, T) was refused: one fit per example, as a plain loop."""
    cell = gf.make_cell("tanh", 4, 2)
    step = gf.as_step(cell, gf.init_cell(cell, jax.random.key(0)))
    xs = jax.random.normal(jax.random.key(1), (30, 3, 2))
    r = gf.jacobian_norms(step, cell.initialize_carry(3), xs, per_example=True)
    g = gf.growth_rate(r, min_lag=5)
    assert np.shape(g.rate) == (3,)
    for b in range(3):
        ref = gf.growth_rate(r.log_spectral_norms[b], r.lags, min_lag=5)
        assert g.rate[b] == pytest.approx(ref.rate) and g.intercept[b] == pytest.approx(ref.intercept)


@pytest.mark.parametrize("bad, match", [("abc", "log_norms must be an array of real numbers"),
                                        (None, "log_norms must be an array of real numbers"),
                                        (3.0, "log_norms must have at least 1 axes")])
def test_growth_rate_wrong_types_are_value_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        gf.growth_rate(bad)
    with pytest.raises(ValueError, match="min_lag must be a finite number"):
        gf.growth_rate(np.arange(5.0), min_lag="3")


def test_condition_number_and_effective_rank_edges():
    assert float(gf.condition_number(jnp.array([3.0, 1.0]))) == pytest.approx(3.0)
    assert float(gf.condition_number(jnp.array([1.0, 3.0]))) == pytest.approx(3.0)  # order does not matter
    assert float(gf.condition_number(jnp.array([2.0, 0.0]))) == math.inf
    assert math.isnan(float(gf.condition_number(jnp.array([2.0, jnp.nan]))))  # unresolved: NaN, not inf
    assert math.isnan(float(gf.effective_rank(jnp.array([2.0, jnp.nan]))))
    for f in (gf.condition_number, gf.effective_rank):
        with pytest.raises(ValueError, match="must be >= 0"):
            f(jnp.array([1.0, -0.5]))
        with pytest.raises(ValueError, match="is empty"):
            f(jnp.zeros((0,)))
        with pytest.raises(ValueError, match="array of real numbers"):
            f("abc")


@pytest.mark.parametrize("call, ref", [
    (lambda: theory.tanh_rnn_rate(0.0), -math.inf),
    (lambda: theory.tanh_rnn_rate(1e-300), math.log(1e-300)),  # sub-critical, no drive: ln g
    (lambda: theory.bn_train_rate(0.0, 1.0, 8), -math.inf),
    (lambda: theory.bn_train_rate(0.0, 0.0, 8), -math.inf),
    (lambda: theory.ln_rate(0.0, 1.0, 8), -math.inf),
    (lambda: theory.ln_sum_rate(1.0, 0.0, 0.0, 8), -math.inf),
    (lambda: theory.ln_sum_rate(0.0, 1.0, 0.0, 8), -math.inf),
    (lambda: theory.predict_rate("linear", hidden_size=8, batch_size=8, gain=0.0), -math.inf),
])
def test_theory_limits_are_exact(call, ref):
    """These raised 'math domain error' / ZeroDivisionError; an exactly zero Jacobian has rate -inf."""
    assert call() == pytest.approx(ref, rel=1e-12)


def test_theory_overflow_and_sizes_are_value_errors():
    with pytest.raises(ValueError, match="overflow float64"):
        theory.tanh_rnn_rate(1e300)
    for kw in ({"hidden_size": 0, "batch_size": 8}, {"hidden_size": 2.5, "batch_size": 8},
               {"hidden_size": 8, "batch_size": 0}):
        with pytest.raises(ValueError, match="must be a positive int"):
            theory.predict_rate("tanh", **kw)


# ---------------------------------------------------------------------------------------------------- fit


def test_fit_result_and_user_cell_have_short_reprs():
    cfg = train.TrainConfig(steps=2, batch_size=4, eval_every=1)
    r = gf.fit(nn.GRUCell(features=4), tasks.adding(6), cfg)
    text = repr(r)
    assert text.startswith("FitResult(cell=UserCell(inner=GRUCell, state size n=4") and len(text) < 600
    assert "mu=" not in text and "CellSpec" not in repr(r.cell)  # no Adam state, no placeholder spec
    assert isinstance(r, train.TrainResult) and r.final_eval == r.final_eval  # still a TrainResult


def test_fit_refuses_clearly():
    cfg = train.TrainConfig(steps=2, batch_size=4, eval_every=1)
    with pytest.raises(ValueError, match="Linear has no initialize_carry"):  # was a raw AttributeError
        gf.fit(nnx.Linear(6, 6, rngs=nnx.Rngs(0)), tasks.adding(6), cfg)
    with pytest.raises(ValueError, match="task must be a gradflow.tasks.Task"):  # was AttributeError
        gf.fit(nn.GRUCell(features=4), "adding", cfg)
    cell = gf.make_cell("tanh", 4, 2)
    bad = jax.tree_util.tree_map(lambda a: a * jnp.nan, gf.init_cell(cell, jax.random.key(0)))
    with pytest.raises(ValueError, match="non-finite values .* in the starting variables"):  # "diverged at 0"
        gf.fit(cell, tasks.adding(6), cfg, variables=bad)


# --------------------------------------------------------------------------- smaller argument checks (#22)


def test_floss_schedule_and_learning_rate():
    with pytest.raises(ValueError, match="steps must be a positive int, got 0"):  # was max(0, 1) silently
        gf.floss_schedule(0)
    with pytest.raises(ValueError, match="final_fraction must lie in"):
        gf.floss_schedule(10, final_fraction=2.0)
    sched = gf.floss_schedule(np.int64(10), peak=np.float32(0.5))
    assert float(sched(0)) == pytest.approx(0.5) and float(sched(10)) == pytest.approx(0.005)
    cell = gf.make_cell("tanh", 4, 2)
    v = gf.init_cell(cell, jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (8, 2, 2))
    a = gf.floss(cell, v, xs, steps=1, learning_rate=np.float32(0.01))  # refused before ("positive number")
    b = gf.floss(cell, v, xs, steps=1, learning_rate=0.01)
    np.testing.assert_array_equal(a["params"]["W_hh"], b["params"]["W_hh"])


def test_batch_norm_refuses_one_example_vector():
    """A (F,) vector was normalized over its features (a layer norm) without a word."""
    with pytest.raises(ValueError, match=r"batch_norm expects z of shape \(B, F\)"):
        gf.batch_norm(jnp.arange(4.0), jnp.ones(4))


def test_grid_values_that_collide_in_float32():
    with pytest.raises(ValueError, match="collide once cast to float32"):
        gf.Grid(traced={"gain": [1.0, 1.0 + 1e-9]})
    with pytest.raises(ValueError, match="overflow or collide"):
        gf.Grid(traced={"gain": [1.0, 1e39]})
    gf.Grid(traced={"gain": [1.0, 1.0 + 1e-6]})  # distinct in float32: fine


def test_negative_step_counter_is_refused():
    """BN eval mode with t = -1 read the statistics row -1 (the last one) silently."""
    cell = gf.make_cell("bn_notanh", 4, 2, t_max=5)
    v = gf.init_cell(cell, jax.random.key(0))
    step = gf.as_step(cell, v, train=False)
    carry0 = {**cell.initialize_carry(2), "t": -jnp.ones((2,), jnp.int32)}
    xs = jnp.ones((4, 2, 2))
    for call in (lambda: gf.jacobian_norms(step, carry0, xs), lambda: gf.unroll(step, carry0, xs),
                 lambda: gf.unroll_cell(cell, v, carry0, xs)):
        with pytest.raises(ValueError, match=r"step counter carry\['t'\] must be >= 0"):
            call()


@pytest.mark.parametrize("kw, match", [
    ({"k": "2"}, "k must be an int"),  # was TypeError: '<' not supported
    ({"k": 2, "segments": 2.5}, "segments must satisfy"),  # was TypeError: float as an integer
    ({"k": 2, "carry0": "abc"}, "carry leaves must be arrays"),  # was TypeError: data type 'abc'
])
def test_lyapunov_spectrum_wrong_types_are_value_errors(kw, match):
    cell = gf.make_cell("tanh", 4, 2)
    step = gf.as_step(cell, gf.init_cell(cell, 0))
    carry0 = kw.pop("carry0", cell.initialize_carry(2))
    with pytest.raises(ValueError, match=match):
        gf.lyapunov_spectrum(step, carry0, jnp.ones((12, 2, 2)), **kw)
