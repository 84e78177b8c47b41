"""Edge cases of the public API that were silently wrong: each gets a correct result or an error naming the
problem.

References: the same call with a Python number (NumPy scalars), the closed form of a linear recurrence
(∂a_T/∂a_t = 0.2^lag I for a selected block fed by unselected units), optax-free arithmetic (a clip norm
must be > 0: a negative one flips the gradient's sign).
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow import checks, tasks, train, trainsweep

# ------------------------------------------------------------------------ NumPy scalars and fractions


def test_unit_fraction_check():
    assert checks.unit_fraction("f", np.float32(0.25)) == 0.25
    assert checks.unit_fraction("f", 0.5) == 0.5
    for bad in (0.0, 1.0, -0.1, float("nan"), "0.2", None, True):
        with pytest.raises(ValueError, match=r"f must be a number in \(0, 1\)"):
            checks.unit_fraction("f", bad)


def test_with_validation_takes_numpy_fractions():
    """np.float32(0.25) was refused ("fraction must be a number in (0, 1), got np.float32(0.25)")."""
    a = tasks.with_validation(tasks.digits(), np.float32(0.25))
    b = tasks.with_validation(tasks.digits(), 0.25)
    assert a.train_size == b.train_size
    np.testing.assert_array_equal(a.validation_set(None)[1], b.validation_set(None)[1])
    with pytest.raises(ValueError, match="seed must be an int"):
        tasks.with_validation(tasks.digits(), 0.25, seed=-1)


def test_digits_checks_its_arguments():
    """test_fraction="0.2" was a raw TypeError; permuted="False" (a truthy string) read as True."""
    with pytest.raises(ValueError, match=r"test_fraction must be a number in \(0, 1\)"):
        tasks.digits(test_fraction="0.2")
    with pytest.raises(ValueError, match="permuted must be True or False"):
        tasks.digits(permuted="False")
    a, b = tasks.digits(test_fraction=np.float32(0.25)), tasks.digits(test_fraction=0.25)
    assert a.test_size == b.test_size


def test_train_fn_takes_numpy_scalars():
    """np.int64 steps / batch_size / recal_batches and np.float32 input_scale were refused."""
    cell = gf.make_cell("tanh", 4, 2)
    task = tasks.adding(6)
    f = trainsweep.train_fn(cell, task, steps=np.int64(2), batch_size=np.int64(4), recal_batches=np.int64(0),
                            input_scale=np.float32(0.5), clip_norm=np.float32(1.0))
    g = trainsweep.train_fn(cell, task, steps=2, batch_size=4, input_scale=0.5, clip_norm=1.0)
    c = {"learning_rate": jnp.float32(0.01), "seed": jnp.int32(0)}
    a, b = f(c), g(c)
    np.testing.assert_array_equal(a["init_flow"], b["init_flow"])
    assert int(a["steps_done"]) == int(b["steps_done"]) == 2


@pytest.mark.parametrize("kw, match", [
    # a negative clip_norm flipped the gradient's sign (factor clip / norm)
    ({"clip_norm": -1.0}, r"clip_norm \(or None\) must be a finite number > 0"),
    ({"clip_norm": float("nan")}, r"clip_norm \(or None\) must be a finite number > 0"),
    ({"clip_norm": "1"}, r"clip_norm \(or None\) must be a finite number > 0"),
    ({"recal_batches": -1}, "recal_batches must be a non-negative int, got -1"),  # said "got 0"
    ({"input_scale": float("nan")}, r"input_scale \(or None\) must be a finite number > 0"),
    ({"steps": 2.0}, "steps must be a positive int"),
    ({"recal_seed": -1}, "recal_seed must be an int with 0 <= recal_seed < 2"),
])
def test_train_fn_refuses_bad_numbers(kw, match):
    kw = {"steps": 2, "batch_size": 4, **kw}
    with pytest.raises(ValueError, match=match):
        trainsweep.train_fn(gf.make_cell("tanh", 4, 2), tasks.adding(6), **kw)


# --------------------------------------------------------------------------- non-finite starting variables


def test_train_refuses_non_finite_starting_variables():
    """train.train with an inf in W_hh ran and reported a divergence at step 0."""
    cell = gf.make_cell("tanh", 4, 2)
    v = gf.init_cell(cell, jax.random.key(0))
    bad = {**v, "params": {**v["params"], "W_hh": v["params"]["W_hh"].at[0, 1].set(jnp.inf)}}
    cfg = train.TrainConfig(steps=2, batch_size=4, eval_every=1)
    leaf = r"starting variables at \['params'\]\['W_hh'\]$"
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or inf\) in the " + leaf):
        train.train(cell, tasks.adding(6), cfg, variables=bad)
    with pytest.raises(ValueError, match=leaf):
        gf.fit(cell, tasks.adding(6), cfg, variables=bad)


# ------------------------------------------------------------------- dtypes the step produces (complex, half)


@pytest.mark.parametrize("dtype, match", [
    (jnp.complex64, r"returns complex64.*real float32 or float64.*real and imaginary parts"),
    (jnp.float16, r"returns float16.*supports float32 and float64 only"),
    (jnp.bfloat16, r"returns bfloat16.*supports float32 and float64 only"),
])
def test_a_step_that_changes_the_carry_to_an_unsupported_dtype_says_so(dtype, match):
    """Complex or half inputs turning a float32 carry into theirs: the hint said "build the cell and carry
    in complex64 (gradflow.make_cell(..., dtype='complex64'))", a dtype the engine and make_cell refuse."""
    W = 0.5 * jnp.eye(3)
    step = lambda h, x: h.astype(x.dtype) @ W.astype(x.dtype) + x  # noqa: E731 (in the inputs' dtype)
    xs = jnp.ones((6, 2, 3), dtype)
    for call in (gf.jacobian_norms, gf.spectra, lambda s, c, x: gf.lyapunov_spectrum(s, c, x, k=2)):
        with pytest.raises(ValueError, match=match) as e:
            call(step, jnp.zeros((2, 3)), xs)
        assert "make_cell(..., dtype=" not in str(e.value)


# ------------------------------------------------------------- a small selected block beside large columns


def _coupled(T):
    """a_{t+1} = 0.2 a_t + b_t[:2], b_{t+1} = b_t: ∂a_T/∂a_t = 0.2^lag I_2, while ∂a_T/∂b_t stays O(1)."""
    def step(c, x):
        return {"a": 0.2 * c["a"] + c["b"][:, :2] + x[:, :2], "b": c["b"] + x[:, 2:]}
    carry0 = {"a": jnp.ones((1, 2)), "b": jnp.ones((1, 8))}
    return step, carry0, jnp.zeros((T, 1, 10))


@pytest.mark.parametrize("engine", ["jacobian_norms", "jacobians", "streaming_log_norms", "spectra"])
def test_selected_block_does_not_underflow_beside_unselected_columns(engine):
    """The reverse pass renormalized whole cotangent rows: the selected block (0.2^lag) fell below
    float32's range next to the O(1) unselected columns and its log norms were -inf from lag ~55 on
    (T = 100: 74 of 100 lags), with a warning blaming an exact zero."""
    T = 100
    step, carry0, xs = _coupled(T)
    wrt = {"a": True, "b": False}
    lags = np.arange(T, 0, -1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*are -inf", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*outside float32's range", category=RuntimeWarning)
        if engine == "spectra":
            r = gf.spectra(step, carry0, xs, wrt=wrt, lags=[1, 50, 100])
            ref = np.array([1, 50, 100])[:, None] * math.log(0.2) * np.ones((3, 2))
            np.testing.assert_allclose(np.asarray(r.log_singular_values), ref, rtol=1e-3)
            return
        r = getattr(gf, engine)(step, carry0, xs, wrt=wrt)
    log_f = np.asarray(r.log_frobenius if engine == "streaming_log_norms" else r.log_frobenius_norms)
    np.testing.assert_allclose(log_f, lags * math.log(0.2) + 0.5 * math.log(2), rtol=1e-3)
    if engine != "streaming_log_norms":
        np.testing.assert_allclose(np.asarray(r.log_spectral_norms), lags * math.log(0.2), rtol=1e-3)
    assert log_f[0] == pytest.approx(100 * math.log(0.2) + 0.5 * math.log(2), rel=1e-3)  # -160.6


def test_selected_block_matches_the_whole_state_block_in_float64(x64):
    """The split pass gives the block of the whole-state Jacobian (float64, where neither underflows)."""
    W = jax.random.normal(jax.random.key(0), (6, 6)) * 0.6

    def step(c, x):
        z = jnp.concatenate([c["a"], c["b"]], axis=-1) @ W + x
        return {"a": jnp.tanh(z[:, :2]), "b": jnp.tanh(z[:, 2:])}

    carry0 = {"a": jnp.full((1, 2), 0.1), "b": jnp.full((1, 4), -0.2)}
    xs = jax.random.normal(jax.random.key(1), (20, 1, 6))
    part = gf.jacobians(step, carry0, xs, wrt={"a": True, "b": False})
    whole = gf.jacobians(step, carry0, xs)
    np.testing.assert_allclose(np.asarray(part.matrices), np.asarray(whole.matrices)[:, :2, :2],
                               rtol=1e-10, atol=1e-14)


# ------------------------------------------------- what the edge probe found (docs/edge_probe.md), fixed


def _roy_vetterli(s):
    """Reference effective rank in float64 NumPy."""
    s = np.asarray(s, np.float64)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e37, 1e38])
def test_effective_rank_and_condition_number_do_not_depend_on_scale_in_float32(scale):
    """[1e38] * 3 in float32 gave rank 1 (the sum overflowed); jitted, 1 / max was flushed to zero."""
    s = np.array([3.0, 1.0, 0.5], np.float32) * np.float32(scale / 3.0)
    for f in (gf.effective_rank, jax.jit(gf.effective_rank)):
        assert float(f(s)) == pytest.approx(_roy_vetterli([3.0, 1.0, 0.5]), rel=1e-5)
    for f in (gf.condition_number, jax.jit(gf.condition_number)):
        assert float(f(s)) == pytest.approx(6.0, rel=1e-5)


def test_effective_rank_of_zeros_is_zero_and_float64_values_keep_their_ratios():
    assert float(gf.effective_rank(np.zeros(4))) == 0.0
    assert float(gf.effective_rank(np.zeros((2, 3)))[1]) == 0.0
    # float64 beyond float32's range, x64 off: the ratios are taken in float64 before the cast
    for scale in (1e-40, 1e200):
        s = np.array([2.0, 1.0]) * scale
        assert float(gf.effective_rank(s)) == pytest.approx(_roy_vetterli([2.0, 1.0]), rel=1e-6)
        assert float(gf.condition_number(s)) == pytest.approx(2.0, rel=1e-6)
    if not jax.config.jax_enable_x64:
        with pytest.warns(RuntimeWarning, match="exceed float32's range"):
            assert np.isinf(gf.condition_number(np.array([1e30, 1e-30])))


def test_spectrum_of_refuses_float64_matrices_beyond_float32_without_x64():
    if jax.config.jax_enable_x64:
        pytest.skip("x64 on: float64 matrices are computed in float64")
    for scale in (1e200, 1e-45):
        with pytest.raises(ValueError, match="matrices \\(float64\\) holds values beyond float32's range"):
            gf.spectrum_of(np.eye(3)[None] * scale)
    np.testing.assert_allclose(gf.spectrum_of(np.eye(3)[None] * 2.0).singular_values, 2.0)


def test_theory_arguments_are_checked_by_name():
    from gradflow import theory

    for bad, msg in ((True, "tol must be a finite number > 0, got True"),
                     (float("nan"), "tol must be a finite number > 0, got nan"),
                     (-1.0, "tol must be a finite number > 0, got -1.0"),
                     (0.5, "tol is a relative tolerance")):
        with pytest.raises(ValueError, match=msg):
            theory.tanh_fixed_point(2.0, tol=bad)
    assert theory.input_variance_share(1e200, 1e200) == 0.5  # overflowed in gx**2 before
    assert theory.input_variance_share(1e200, 1.0) == 1.0
    assert theory.input_variance_share(0.5, 1.0) == pytest.approx(0.25 / 1.25, rel=1e-15)
    for bad in ({}, 3, {"nu_log": [0.0]}):
        with pytest.raises(ValueError, match="params must be an LRU's params"):
            theory.lru_rate(bad)
    lam = np.array([0.9, 0.5])
    assert theory.lru_rate({"nu_log": np.log(-np.log(lam)), "theta_log": np.zeros(2)}) == pytest.approx(
        math.log(0.9), rel=1e-12)


def test_flossing_exponents_refuse_non_finite_concrete_inputs():
    W = jnp.eye(2) * 0.5
    step = lambda h, x: jnp.tanh(h @ W.T + x)  # noqa: E731
    h0, xs = jnp.ones((1, 2)), jnp.zeros((5, 1, 2))
    with pytest.raises(ValueError, match="non-finite values .* in carry0"):
        gf.flossing_exponents(step, h0.at[0, 0].set(jnp.nan), xs)
    with pytest.raises(ValueError, match="the inputs have NaN or inf: xs\\[3\\]"):
        gf.flossing_exponents(step, h0, xs.at[3].set(jnp.inf))
    # the exact value: a diagonal linear step at h = 0 keeps ln 0.5 per step
    lin = lambda h, x: h @ W.T  # noqa: E731
    assert float(gf.flossing_exponents(lin, h0, xs)[0]) == pytest.approx(math.log(0.5), abs=1e-5)


def test_lyapunov_interval_must_be_one_or_auto_and_statistics_name_infinite_exponents():
    W = jnp.diag(jnp.array([2.0, 0.0]))
    step = lambda h, x: h @ W.T  # noqa: E731
    with pytest.raises(ValueError, match="interval must be 1 or 'auto', got True"):
        gf.lyapunov_spectrum(step, jnp.ones((1, 2)), jnp.zeros((40, 1, 1)), interval=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = gf.lyapunov_spectrum(step, jnp.ones((1, 2)), jnp.zeros((40, 1, 1)), transient=10, segments=3)
    with pytest.warns(RuntimeWarning, match="mean_exponent, mean_exponent_stderr are not finite"):
        st = gf.lyapunov_statistics(r)
    assert st.entropy_rate == pytest.approx(math.log(2.0), abs=1e-5)


def test_growth_rate_window_error_names_the_window():
    with pytest.raises(ValueError, match="min_lag=50 .. max_lag=None, got 0 \\(the lags run 1 .. 10"):
        gf.growth_rate(np.zeros(10), min_lag=50)


def test_a_batch_of_keys_is_refused_by_name():
    cell = gf.make_cell("tanh", 4, 2)
    for keys in (jax.random.split(jax.random.key(0), 3), jax.random.split(jax.random.PRNGKey(0), 3)):
        with pytest.raises(ValueError, match=r"must be one PRNG key, got a batch of keys of shape \(3,\)"):
            gf.init_cell(cell, keys)
    v = gf.init_cell(cell, jax.random.key(0))
    with pytest.raises(ValueError, match="one PRNG key"):
        gf.as_step(gf.make_cell("bn_notanh", 4, 2), gf.init_cell(gf.make_cell("bn_notanh", 4, 2), 0),
                   train=True, key=jax.random.split(jax.random.key(0), 2))
    assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(gf.init_cell(cell, 0))


def test_bootstrap_and_memory_curve_arguments_are_checked():
    from gradflow import capacity, stats

    for kw, msg in ((dict(resamples=0), "resamples must be an int >= 200"),
                    (dict(level="a"), "level must be a finite number"),
                    (dict(seed=-1), "seed must be an int")):
        with pytest.raises(ValueError, match=msg):
            stats.median_difference([1.0, 2.0], [3.0, 4.0], **kw)
        with pytest.raises(ValueError, match=msg):
            stats.spearman([1.0, 2.0, 3.0], [3.0, 4.0, 5.0], **kw)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="ridge must be a finite number >= 0"):
        capacity.memory_curve(rng.normal(size=(40, 3)), rng.normal(size=(40, 5)), 3, ridge=-1.0)
