"""Edge cases of the engine-side modules (norm, step, measure, sensitivity, spectra, stable, capacity, floss,
cells and the Jacobian engine) that were cryptic, silently wrong or silently NaN (docs/edge_probe.md): each
now gets a correct result or an error naming the argument.

References: NumPy float64 closed forms (BN / LN of two values is [-1, 1] whatever their scale; the memory
curve of a delay line of 3 is [1, 1, 1, 0, 0]), the same call on a rescaled or traced argument, and JAX's
own functions (jnp.tanh).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow import capacity, measure, stable
from gradflow.spectra import _relative

W_LIN = jnp.diag(jnp.array([0.5, 0.25]))


def lin_step(h, x):
    return h @ W_LIN.T + x * jnp.array([1.0, 0.5])


C0, XS = jnp.ones((1, 2)), jnp.zeros((12, 1, 1))
NAN, INF = float("nan"), float("inf")

# ------------------------------------------------------------------------------ the engine: empty batch

ENGINE = {
    "jacobians": lambda c, x: gf.jacobians(lin_step, c, x),
    "jacobian_norms": lambda c, x: gf.jacobian_norms(lin_step, c, x),
    "batch_blocks": lambda c, x: gf.batch_blocks(lin_step, c, x),
    "batch_block_norms": lambda c, x: gf.batch_block_norms(lin_step, c, x),
    "top_singular_value": lambda c, x: gf.top_singular_value(lin_step, c, x, 3),
    "hutchinson_frobenius": lambda c, x: gf.hutchinson_frobenius(lin_step, c, x, 3, key=jax.random.key(0)),
    "lyapunov_spectrum": lambda c, x: gf.lyapunov_spectrum(lin_step, c, x),
    "spectra": lambda c, x: gf.spectra(lin_step, c, x),
    "streaming_log_norms": lambda c, x: gf.streaming_log_norms(lin_step, c, x),
    "summary": lambda c, x: gf.summary(lin_step, c, x),
}


@pytest.mark.parametrize("name", sorted(ENGINE))
def test_an_empty_batch_is_refused_naming_carry0(name):
    """carry0 (0, 2) with xs (T, 0, 1): ZeroDivisionError or a zero-size reduction inside JAX before."""
    with pytest.raises(ValueError, match="carry0 is empty"):
        ENGINE[name](jnp.ones((0, 2)), jnp.zeros((12, 0, 1)))


def test_unroll_still_runs_an_empty_batch_and_an_empty_sequence():
    """unroll is a plain scan: B = 0 and T = 0 give empty states, as before."""
    assert gf.unroll(lin_step, jnp.ones((0, 2)), jnp.zeros((5, 0, 1))).shape == (5, 0, 2)
    assert gf.unroll(lin_step, C0, jnp.zeros((0, 1, 1))).shape == (0, 1, 2)


# ------------------------------------------------------------------------------------------- step.unroll


@pytest.mark.parametrize("step", [None, "x"])
def test_unroll_refuses_a_step_that_is_not_callable(step):
    with pytest.raises(ValueError, match="step must be callable"):
        gf.unroll(step, C0, XS)


def test_unroll_refuses_a_carry0_that_does_not_fit():
    with pytest.raises(ValueError, match="carry0 has no array leaves"):
        gf.unroll(lin_step, None, XS)
    with pytest.raises(ValueError, match=r"step\(carry0, xs\[0\]\) failed.*carry0 shapes"):
        gf.unroll(lin_step, jnp.ones((1, 3)), XS)  # W is 2 × 2


@pytest.mark.parametrize("value", [NAN, INF])
def test_unroll_refuses_non_finite_carry0_and_inputs(value):
    with pytest.raises(ValueError, match="non-finite values.*carry0"):
        gf.unroll(lin_step, jnp.full((1, 2), value), XS)
    xs = np.zeros((12, 1, 1), np.float32)
    xs[3] = value
    with pytest.raises(ValueError, match=r"xs\[3\]"):
        gf.unroll(lin_step, C0, jnp.asarray(xs))


def test_unroll_refuses_float64_beyond_float32_without_x64():
    """JAX cast 1e39 to inf silently: every state was inf or NaN."""
    with pytest.raises(ValueError, match=r"carry0 \(float64\) holds values beyond float32's range"):
        gf.unroll(lin_step, np.array([[1e39, 1.0]]), XS)
    with pytest.raises(ValueError, match=r"xs \(float64\) holds values beyond float32's range"):
        gf.unroll(lin_step, C0, np.full((12, 1, 1), 1e39))


def test_unroll_leaves_traced_values_unchecked():
    """Inside jit the values are unknown: the NaN carry runs through (no check, no per-call cost)."""
    out = jax.jit(lambda c, x: gf.unroll(lin_step, c, x))(jnp.full((1, 2), NAN), XS)
    assert np.all(np.isnan(np.asarray(out)))
    ref = np.stack([[[0.5**t, 0.25**t]] for t in range(1, 13)])
    np.testing.assert_allclose(gf.unroll(lin_step, C0, XS), ref, rtol=1e-6)


def test_unroll_cell_refuses_an_empty_sequence():
    """T = 0 failed in a reshape ("cannot reshape array of size 0")."""
    cell = gf.make_cell("linear", 3, 2)
    v = gf.init_cell(cell, jax.random.key(0))
    with pytest.raises(ValueError, match="xs is empty"):
        gf.unroll_cell(cell, v, cell.initialize_carry(2), jnp.zeros((0, 2, 2)))


# ------------------------------------------------------------------------------------------------- norm


def _bn_ref(z, axis):
    z = np.asarray(z, np.float64)
    c = z - z.mean(axis, keepdims=True)
    return c / np.sqrt((c * c).mean(axis, keepdims=True) + 1e-5)


@pytest.mark.parametrize("fn", [gf.batch_norm, gf.layer_norm])
@pytest.mark.parametrize("eps", [True, "0.5", [0.5], 1j, None, NAN, 0.0])
def test_norm_refuses_a_bad_eps(fn, eps):
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        fn(jnp.array([[1.0, 3.0], [2.0, 5.0]]), jnp.ones(2), eps=eps)


def test_norm_takes_a_numpy_eps():
    z = jnp.array([[1.0], [3.0]])
    np.testing.assert_array_equal(gf.batch_norm(z, jnp.ones(1), eps=np.float32(1e-5)),
                                  gf.batch_norm(z, jnp.ones(1), eps=1e-5))


@pytest.mark.parametrize("arg", ["scale", "bias"])
def test_batch_norm_refuses_scale_and_bias_of_the_wrong_length(arg):
    """ones(2) for F = 1 broadcast silently to a (B, 2) output."""
    kw = {"scale": jnp.ones(1), arg: jnp.ones(2)}
    with pytest.raises(ValueError, match=rf"{arg} must have shape \(1,\)"):
        gf.batch_norm(jnp.array([[1.0], [3.0]]), **kw)
    with pytest.raises(ValueError, match=rf"{arg} must have shape \(2,\)"):
        gf.layer_norm(jnp.array([[1.0, 3.0]]), **{"scale": jnp.ones(2), arg: jnp.ones(3)})


@pytest.mark.parametrize("fn", [gf.batch_norm, gf.layer_norm])
def test_norm_refuses_none_nan_and_strings_naming_the_argument(fn):
    z = jnp.array([[1.0, 3.0], [2.0, 5.0]])
    for kw, name in [({"scale": None}, "scale"), ({"scale": jnp.array([NAN, 1.0])}, "scale"),
                     ({"bias": jnp.array([1.0, NAN])}, "bias"), ({"z": z.at[0, 0].set(NAN)}, "z"),
                     ({"z": None}, "z"), ({"z": np.array([["a", "b"], ["c", "d"]])}, "z")]:
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            fn(**{"z": z, "scale": jnp.ones(2), **kw})


def test_norm_refuses_an_empty_normalized_axis():
    with pytest.raises(ValueError, match="z is empty along the normalized axis 0"):
        gf.batch_norm(jnp.zeros((0, 1)), jnp.ones(1))
    with pytest.raises(ValueError, match="z is empty along the normalized axis -1"):
        gf.layer_norm(jnp.zeros((1, 0)), jnp.ones(0))


def test_norm_of_float64_beyond_float32(x64):
    """Without x64, z = [1e39, 3e39] became [inf, inf] and the output NaN: now refused naming z; with x64
    the value is the scale-free [-1, 1]."""
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"z \(float64\) holds values beyond float32's range"):
            gf.batch_norm(np.array([[1e39], [3e39]]), jnp.ones(1))
        with pytest.raises(ValueError, match=r"z \(float64\) holds values beyond float32's range"):
            gf.layer_norm(np.array([[1e39, 3e39]]), jnp.ones(2))
    np.testing.assert_allclose(gf.batch_norm(np.array([[1e39], [3e39]]), jnp.ones(1)),
                               _bn_ref([[1.0], [3.0]], 0), rtol=1e-5)
    np.testing.assert_allclose(gf.layer_norm(np.array([[1e39, 3e39]]), jnp.ones(2)),
                               _bn_ref([[1.0, 3.0]], -1), rtol=1e-5)


def test_norm_checks_shapes_only_under_jit():
    """The value checks are eager only: traced (even NaN) values go through, shapes are still checked."""
    z = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
    g, b = jnp.array([0.5, 1.0, 2.0]), jnp.array([0.0, 1.0, -1.0])
    for fn, axis in ((gf.batch_norm, 0), (gf.layer_norm, -1)):
        want = _bn_ref(z, axis) * np.asarray(g) + np.asarray(b)
        np.testing.assert_allclose(fn(z, g, b), want, atol=1e-5)
        np.testing.assert_allclose(jax.jit(fn)(z, g, b), want, atol=1e-5)
        assert np.all(np.isnan(np.asarray(jax.jit(fn)(z.at[0].set(NAN), g, b)[0])))
        with pytest.raises(ValueError, match=r"scale must have shape \(3,\)"):
            jax.jit(fn)(z, jnp.ones(2), b)


# ---------------------------------------------------------------------------------------------- measure


@pytest.mark.parametrize("batch", [True, 2.5, "3", 0])
def test_init_variables_refuses_a_bad_batch(batch):
    cell = measure.cell_for("tanh", 4, 2)
    with pytest.raises(ValueError, match="batch must be a positive int"):
        measure.init_variables(cell, batch, jax.random.key(0))


def test_lag_norms_refuses_non_finite_inputs():
    """The compiled engine saw tracers only: a NaN input went through into the norms."""
    cell = measure.cell_for("tanh", 4, 2)
    v = measure.init_variables(cell, 2, jax.random.key(0))
    xs = np.zeros((10, 2, 2), np.float32)
    xs[3] = NAN
    with pytest.raises(ValueError, match=r"xs\[3\]"):
        measure.lag_norms(cell, v, cell.initialize_carry(2), jnp.asarray(xs), train=False)


@pytest.mark.parametrize("burn", [True, 2.5, -1])
def test_top_exponent_refuses_a_bad_burn(burn):
    """burn=True ran as burn = 1, 2.5 as 2."""
    with pytest.raises(ValueError, match="burn must be"):
        measure.top_exponent(lin_step, C0, XS, jax.random.key(0), burn=burn)


@pytest.mark.parametrize("key", [None, 1.5, "key"])
def test_top_exponent_refuses_a_bad_key(key):
    with pytest.raises(ValueError, match="key"):
        measure.top_exponent(lin_step, C0, XS, key)


def test_top_exponent_takes_an_int_seed_as_prng_key_does():
    xs = jnp.zeros((60, 1, 1))
    a = measure.top_exponent(lin_step, C0, xs, 3)
    b = measure.top_exponent(lin_step, C0, xs, jax.random.PRNGKey(3))
    assert a == b
    np.testing.assert_allclose(a[0], np.log(0.5), rtol=1e-3)


# ------------------------------------------------------------------------------------------ sensitivity


def _pstep(params, h, x):
    return h * params["w"] + x


def test_param_sensitivity_refuses_string_params():
    with pytest.raises(ValueError, match=r"params must be floating-point arrays.*\['w'\] \(str\)"):
        gf.param_sensitivity(_pstep, {"w": "a"}, jnp.ones((1, 1)), jnp.ones((5, 1, 1)))


def test_param_sensitivity_refuses_a_non_finite_cotangent():
    with pytest.raises(ValueError, match="non-finite values.*cotangent"):
        gf.param_sensitivity(_pstep, {"w": jnp.float32(0.5)}, jnp.ones((1, 1)), jnp.ones((5, 1, 1)),
                             cotangent=jnp.full((1, 1), NAN))


# ---------------------------------------------------------------------------------------------- spectra


@pytest.mark.parametrize("fn", [gf.effective_rank, gf.condition_number])
def test_an_infinite_singular_value_is_refused(fn):
    """[inf, 1] gave NaN silently."""
    with pytest.raises(ValueError, match="singular_values holds inf"):
        fn(np.array([INF, 1.0]))


def test_a_traced_infinite_singular_value_still_gives_nan():
    s = jnp.array([INF, 1.0])
    assert np.isnan(float(jax.jit(gf.condition_number)(s)))
    assert np.isnan(float(jax.jit(gf.effective_rank)(s)))


def test_relative_returns_the_ratios_only():
    """It returned (ratios, max) and every caller dropped the max."""
    r = _relative(np.array([[4.0, 1.0], [0.0, 0.0]]))
    np.testing.assert_array_equal(r, [[1.0, 0.25], [0.0, 0.0]])
    t = np.asarray(jax.jit(_relative)(jnp.array([3.0, 0.75])))  # traced: divided by a power of 2 near max
    assert t.shape == (2,) and 0.5 <= t[0] <= 1.0 and t[1] / t[0] == 0.25


@pytest.mark.parametrize("matrices, message", [
    ("M", "matrices must be an array of real numbers"),
    (np.full((2, 2, 2), NAN), r"non-finite values \(NaN or inf\) in matrices"),
])
def test_spectrum_of_refuses_strings_and_nan_matrices(matrices, message):
    """'M' failed inside JAX; NaN matrices gave NaN spectra silently."""
    with pytest.raises(ValueError, match=message):
        gf.spectrum_of(matrices)


# ----------------------------------------------------------------------------------------------- stable


@pytest.mark.parametrize("name", ["tanh", "sech2", "sigmoid", "sigmoid_prime"])
def test_stable_functions_refuse_a_string(name):
    with pytest.raises(TypeError, match=rf"gradflow.stable.{name}: the argument a = 'a'"):
        getattr(stable, name)("a")


def test_stable_functions_keep_their_values_and_derivatives():
    a = jnp.linspace(-50.0, 50.0, 201)
    np.testing.assert_array_equal(stable.tanh(a), jnp.tanh(a))
    np.testing.assert_array_equal(stable.sigmoid(np.float32(2.0)), jax.nn.sigmoid(np.float32(2.0)))
    d = np.asarray(jax.vmap(jax.grad(stable.tanh))(a), np.float64)
    np.testing.assert_allclose(d, 1.0 / np.cosh(np.asarray(a, np.float64)) ** 2, rtol=1e-5, atol=1e-38)


# --------------------------------------------------------------------------------------------- capacity


def _delay_line():
    u = np.random.default_rng(0).uniform(size=(4000, 20))
    return u[:, ::-1][:, :3].copy(), u


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e300])
def test_memory_curve_does_not_depend_on_the_states_scale(scale):
    """× 1e200 overflowed the Gram matrix (r² NaN with matmul warnings); × 1e-200 underflowed it."""
    shift, u = _delay_line()
    m = capacity.memory_curve(shift * scale, u, 5)
    np.testing.assert_allclose(m.r2, [1.0, 1.0, 1.0, 0.0, 0.0], atol=0.02)
    np.testing.assert_allclose(m.r2, capacity.memory_curve(shift, u, 5).r2, atol=1e-9)


def test_memory_curve_refuses_strings_naming_states():
    _, u = _delay_line()
    with pytest.raises(ValueError, match="states must be an array of real numbers"):
        capacity.memory_curve(np.full((4000, 3), "a"), u, 5)


# ---------------------------------------------------------------------------------------- cells, floss


def test_make_cell_refuses_a_gain_beyond_the_dtype(x64):
    """irnn with gain 1e39 initialized W_hh = inf · I in float32 (a cast warning only)."""
    with pytest.raises(ValueError, match=r"gain 1e\+39 exceeds float32's range"):
        gf.make_cell("irnn", 4, 2, gain=1e39)
    np.testing.assert_array_equal(gf.init_cell(gf.make_cell("irnn", 4, 2, gain=1e38), jax.random.key(0))
                                  ["params"]["W_hh"], np.float32(1e38) * np.eye(4, dtype=np.float32))
    v = gf.init_cell(gf.make_cell("irnn", 4, 2, gain=1e39, dtype="float64"), jax.random.key(0))
    np.testing.assert_array_equal(v["params"]["W_hh"], 1e39 * np.eye(4))


def test_floss_refuses_xs_none():
    cell = gf.make_cell("tanh", 2, 3)
    with pytest.raises(ValueError, match="xs must be an array"):
        gf.floss(cell, gf.init_cell(cell, jax.random.key(0)), None, steps=1)


@pytest.mark.parametrize("fn", [gf.flossing_exponents, gf.flossing_loss])
def test_flossing_refuses_float64_beyond_float32(fn):
    with pytest.raises(ValueError, match=r"carry0 \(float64\) holds values beyond float32's range"):
        fn(lin_step, np.array([[1e39, 1.0]]), XS)
    with pytest.raises(ValueError, match=r"xs \(float64\) holds values beyond float32's range"):
        fn(lin_step, C0, np.full((12, 1, 1), 1e39))
    # traced values are not checked (flossing runs under jit and grad)
    assert np.isfinite(float(jnp.sum(jax.jit(lambda c: fn(lin_step, c, XS))(C0))))
