"""Error messages: time-major hint, NaN inputs named as inputs, warnings for silent casts, no empty names."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from tests.helpers import rand


def test_batch_major_inputs_get_a_time_major_hint():
    B, T, F, d = 8, 50, 3, 4
    W, U = rand(0, (d, d), 0.5), rand(1, (d, F))
    step = lambda h, x: jnp.tanh(h @ W.T + x @ U.T)
    with pytest.raises(ValueError, match=r"time-major.*\(B, T, \.\.\.\) = \(8, 50, 3\).*swapaxes"):
        gf.jacobian_norms(step, jnp.zeros((B, d)), rand(2, (B, T, F)))
    # a gradflow cell: its own shape check fails inside the step; the hint is added, no empty leaf name
    cell = gf.make_cell("tanh", d, F)
    st = gf.as_step(cell, gf.init_cell(cell, jax.random.PRNGKey(0)))
    with pytest.raises(ValueError, match="time-major") as e:
        gf.jacobian_norms(st, cell.initialize_carry(B), rand(2, (B, T, F)))
    assert "leaf  " not in str(e.value)
    # time-major inputs of the same data are accepted
    gf.jacobian_norms(step, jnp.zeros((B, d)), jnp.swapaxes(rand(2, (B, T, F)), 0, 1))


def test_nan_inputs_are_named_as_an_input_problem():
    step = lambda h, x: jnp.tanh(h + x)
    xs = rand(3, (20, 2, 3)).at[10, 1, 2].set(jnp.nan)
    for fn in (gf.jacobians, gf.jacobian_norms, gf.streaming_log_norms, gf.lyapunov_spectrum):
        with pytest.raises(ValueError, match=r"NaN or inf: xs\[10\] \(the input x_11 of step 11\)"):
            fn(step, jnp.zeros((2, 3)), xs)
    with pytest.raises(ValueError, match=r"xs\['a'\]\[4\]"):
        gf.jacobian_norms(lambda h, x: h + x["a"], jnp.zeros((2, 3)), {"a": xs.at[4].set(jnp.inf)})


def test_silent_casts_warn():
    step = lambda h, x: jnp.tanh(h + x)
    with pytest.warns(UserWarning, match=r"xs has integer dtype int32"):
        gf.jacobian_norms(step, jnp.zeros((2, 3)), jnp.ones((5, 2, 3), jnp.int32))
    with pytest.warns(UserWarning, match=r"xs has dtype float64 but jax_enable_x64 is off"):
        gf.jacobian_norms(step, jnp.zeros((2, 3)), np.ones((5, 2, 3)))
    with pytest.warns(UserWarning, match=r"carry0\['h'\] has dtype float64"):
        step_d = lambda c, x: {"h": jnp.tanh(c["h"] + x)}
        gf.jacobian_norms(step_d, {"h": np.zeros((2, 3))}, jnp.ones((5, 2, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32 inputs: no warning
        gf.jacobian_norms(step, jnp.zeros((2, 3)), jnp.ones((5, 2, 3)))


def test_float64_without_warning_under_x64(x64):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gf.jacobian_norms(lambda h, x: jnp.tanh(h + x), np.zeros((2, 3)), np.ones((5, 2, 3)))


def test_bare_array_leaf_names_are_not_empty():
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or inf\) in carry0$"):
        gf.jacobian_norms(lambda h, x: h, jnp.full((2, 3), jnp.nan), jnp.ones((5, 2, 3)))
    with pytest.raises(ValueError, match=r"changes carry leaf carry0: "):
        gf.jacobian_norms(lambda h, x: h[:, :2], jnp.zeros((2, 3)), jnp.ones((5, 2, 3)))


def _overflow_in_one_leaf():
    """A dict carry whose float leaf "c" overflows at step 3 while "h" stays finite; "t" is an int leaf."""

    def step(c, x):
        return {"h": jnp.tanh(c["h"] + x), "c": 1e15 * c["c"], "t": c["t"] + 1}

    carry0 = {"h": jnp.zeros((2, 3)), "c": jnp.ones((2, 3)), "t": jnp.zeros((2,), jnp.int32)}
    return step, carry0, jnp.zeros((6, 2, 3))


@pytest.mark.parametrize("name", ["jacobians", "jacobian_norms", "streaming", "spectra", "power",
                                  "hutchinson", "lyapunov_1", "lyapunov_auto"])
def test_every_engine_scan_names_the_first_nonfinite_state(name):
    # 1e15^3 = 1e45 > float32's max: h_3 is the first non-finite state (in its "c" leaf only)
    step, c0, xs = _overflow_in_one_leaf()
    calls = {
        "jacobians": lambda: gf.jacobians(step, c0, xs),
        "jacobian_norms": lambda: gf.jacobian_norms(step, c0, xs),
        "streaming": lambda: gf.streaming_log_norms(step, c0, xs),
        "spectra": lambda: gf.spectra(step, c0, xs, lags=[1, 2]),
        "power": lambda: gf.top_singular_value(step, c0, xs, 2),
        "hutchinson": lambda: gf.hutchinson_frobenius(step, c0, xs, 2, key=jax.random.key(0)),
        "lyapunov_1": lambda: gf.lyapunov_spectrum(step, c0, xs, k=2, segments=2, interval=1),
        "lyapunov_auto": lambda: gf.lyapunov_spectrum(step, c0, xs, k=2, segments=2, interval="auto"),
    }
    with pytest.raises(ValueError, match="non-finite state: h_3 "):
        calls[name]()
