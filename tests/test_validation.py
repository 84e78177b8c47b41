"""Bad values refused with a clear error, valid NumPy scalars accepted (gradflow.checks and its users).

References: the same call with the equivalent Python value (NumPy scalars), the file's previous contents
(an interrupted atomic write), the count 2**-23 of a float32 uniform's grid (dropout bound).
"""

from __future__ import annotations

import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow
from gradflow import checks, tasks, train
from gradflow.cells import DROPOUT_MAX

# ------------------------------------------------------------------------------------------ the checks


@pytest.mark.parametrize("v", [1, 7, np.int64(3), np.int32(2), np.uint8(5)])
def test_positive_int_accepts_python_and_numpy_integers(v):
    out = checks.positive_int("n", v)
    assert out == int(v) and type(out) is int


@pytest.mark.parametrize("v", [0, -3, True, False, 1.0, np.float32(2.0), "3", None, np.bool_(True)])
def test_positive_int_refuses(v):
    with pytest.raises(ValueError, match=r"^count must be a positive int, got"):
        checks.positive_int("count", v)


def test_nonneg_and_at_least():
    assert checks.nonneg_int("k", np.int64(0)) == 0
    with pytest.raises(ValueError, match="k must be a non-negative int, got -1"):
        checks.nonneg_int("k", -1)
    assert checks.int_at_least("m", 4, 4) == 4
    with pytest.raises(ValueError, match="m must be an int >= 4, got 3"):
        checks.int_at_least("m", 3, 4)


@pytest.mark.parametrize("v", [0.5, 2, np.float32(0.01), np.float64(1e-3), np.int64(3)])
def test_positive_float_accepts(v):
    out = checks.positive_float("lr", v)
    assert out == float(v) and type(out) is float


@pytest.mark.parametrize("v", [0.0, -1.0, float("nan"), float("inf"), np.float32("nan"), True, "1", None])
def test_positive_float_refuses(v):
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        checks.positive_float("lr", v)


def test_seed_range():
    assert checks.seed("seed", 0) == 0
    assert checks.seed("seed", 2**32 - 1) == 2**32 - 1
    assert checks.seed("seed", np.uint32(7)) == 7
    for bad in (2**32, 2**40, -1, 1.0, True):
        with pytest.raises(ValueError, match=r"seed must be an int with 0 <= seed < 2\*\*32"):
            checks.seed("seed", bad)


def test_seed_bound_is_where_prng_keys_alias():
    """The refused seeds are exactly those whose keys repeat a valid seed's (2**32 -> 0, -1 -> 2**32 - 1)."""
    k = jax.random.PRNGKey
    assert np.array_equal(k(2**32), k(0)) and np.array_equal(k(-1), k(2**32 - 1))
    assert not np.array_equal(k(2**32 - 1), k(0))


def test_raise_if_nonfinite_names_first_state():
    checks.raise_if_nonfinite(np.array([True, True]))
    with pytest.raises(ValueError, match="h_2 .*; it is undefined"):
        checks.raise_if_nonfinite(np.array([True, False, False]), "it is undefined")


def test_atomic_write_interrupted_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "sub" / "f.bin"
    checks.atomic_write_bytes(p, b"old")
    assert p.read_bytes() == b"old"
    mode = stat.S_IMODE(p.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        checks.atomic_write_bytes(p, b"new, never complete")
    monkeypatch.undo()
    assert p.read_bytes() == b"old"
    assert [q.name for q in p.parent.iterdir()] == ["f.bin"]  # no temporary file left


def test_atomic_write_json_and_npz_round_trip(tmp_path):
    checks.atomic_write_json(tmp_path / "a.json", {"x": np.float32(0.5), "y": np.arange(2)})
    assert (tmp_path / "a.json").read_text() == '{\n "x": 0.5,\n "y": [\n  0,\n  1\n ]\n}\n'
    checks.atomic_write_npz(tmp_path / "b.npz", {"z": np.arange(5.0)})
    with np.load(tmp_path / "b.npz") as z:
        np.testing.assert_array_equal(z["z"], np.arange(5.0))


# ------------------------------------------------------------------------------------------ the engine


def _linear(W):
    return lambda h, x: h @ W.T + x


W3 = jnp.diag(jnp.array([0.9, 0.5, 0.1]))
H0 = jnp.ones((1, 3))


@pytest.mark.parametrize("iters", [0, -3, 2.5, True])
def test_power_iters_refused(iters):
    xs = jnp.zeros((4, 1, 3))
    step = _linear(W3)
    for f in (gradflow.jacobians, gradflow.jacobian_norms, gradflow.streaming_log_norms):
        with pytest.raises(ValueError, match="power_iters must be a positive int"):
            f(step, H0, xs, spectral="power", power_iters=iters)
    with pytest.raises(ValueError, match="iters must be a positive int"):
        gradflow.top_singular_value(step, H0, xs, lag=2, iters=iters)


def test_numpy_integer_counts_accepted():
    xs = jnp.zeros((4, 1, 3))
    step = _linear(W3)
    key = jax.random.PRNGKey(1)
    a = gradflow.streaming_log_norms(step, H0, xs, probes=np.int64(4), key=key)
    b = gradflow.streaming_log_norms(step, H0, xs, probes=4, key=key)
    np.testing.assert_array_equal(a.log_frobenius, b.log_frobenius)
    a = gradflow.hutchinson_frobenius(step, H0, xs, np.int64(2), key=key, probes=np.int32(8))
    b = gradflow.hutchinson_frobenius(step, H0, xs, 2, key=key, probes=8)
    assert float(a.frobenius) == float(b.frobenius) and a.probes == 8
    a = gradflow.jacobians(step, H0, xs, spectral="power", power_iters=np.int64(30))
    b = gradflow.jacobians(step, H0, xs, spectral="power", power_iters=30)
    np.testing.assert_array_equal(a.spectral_norms, b.spectral_norms)


def test_nan_inputs_raise_like_siblings():
    xs = jnp.zeros((6, 1, 3)).at[2, 0, 1].set(jnp.nan)  # x_3 is the first non-finite input
    step = _linear(W3)
    calls = {
        "jacobians": lambda: gradflow.jacobians(step, H0, xs),
        "step_jacobians": lambda: gradflow.step_jacobians(step, H0, xs),
        "top_singular_value": lambda: gradflow.top_singular_value(step, H0, xs, lag=2),
        "hutchinson_frobenius": lambda: gradflow.hutchinson_frobenius(step, H0, xs, 2, key=jax.random.key(0)),
    }
    for name, f in calls.items():
        with pytest.raises(ValueError, match=r"inputs have NaN or inf: xs\[2\] \(the input x_3 of step 3\)"):
            f()
        assert name  # every one of them raised, naming the input


def test_finite_inputs_still_measured():
    """The added finiteness pass changes nothing for finite inputs: sigma of W^4 is 0.9**4."""
    r = gradflow.top_singular_value(_linear(W3), H0, jnp.zeros((6, 1, 3)), lag=4)
    assert float(r.sigma) == pytest.approx(0.9**4, rel=1e-5)
    J = gradflow.step_jacobians(_linear(W3), H0, jnp.zeros((3, 1, 3)))
    np.testing.assert_allclose(np.asarray(J), np.broadcast_to(np.asarray(W3), (3, 3, 3)))


# ------------------------------------------------------------------------------------------ cells, steps


def test_integer_parameters_refused():
    cell = gradflow.make_cell("tanh", 3, 2)
    v = gradflow.init_cell(cell, jax.random.key(0))
    bad = jax.tree_util.tree_map(lambda x: x, v)
    bad["params"]["W_hh"] = jnp.zeros((3, 3), jnp.int32)
    with pytest.raises(ValueError, match=r"floating-point.*\['W_hh'\] \(int32\)"):
        gradflow.as_step(cell, bad)
    with pytest.raises(ValueError, match=r"\['W_hh'\]"):
        gradflow.unroll_cell(cell, bad, cell.initialize_carry(2), jnp.ones((3, 2, 2)))
    gradflow.as_step(cell, v)  # the float parameters pass


def test_dropout_bound():
    with pytest.raises(ValueError, match="dropout"):
        gradflow.make_cell("tanh", 3, 2, dropout=1 - 1e-7)
    with pytest.raises(ValueError, match="dropout"):
        gradflow.make_cell("tanh", 3, 2, dropout=DROPOUT_MAX + 1e-6)
    gradflow.make_cell("tanh", 3, 2, dropout=DROPOUT_MAX)
    gradflow.make_cell("tanh", 3, 2, dropout=np.float32(0.2))  # a NumPy float is a rate too
    # the bound's reason: the keep decision compares a float32 uniform on a grid of 2**-23 with 1 - p
    u = jax.random.uniform(jax.random.PRNGKey(0), (4096,), jnp.float32)
    assert np.all(np.asarray(u) * 2**23 == np.round(np.asarray(u) * 2**23))
    assert 2.0**-23 / (1 - DROPOUT_MAX) <= 2.0**-13


def test_unroll_cell_refuses_nonfinite_instead_of_nan_statistics():
    cell = gradflow.make_cell("bn_tanh", 3, 2, t_max=5)
    v = gradflow.init_cell(cell, jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (5, 4, 2))
    with pytest.raises(ValueError, match=r"the inputs have NaN or inf: xs\[2\] \(the input x_3 of step 3\)"):
        gradflow.unroll_cell(cell, v, cell.initialize_carry(4), xs.at[2, 0, 0].set(jnp.nan), train=True)
    if not jax.config.jax_enable_x64:  # float64 beyond float32's range: refused (JAX would cast it to inf)
        with pytest.raises(ValueError, match=r"xs \(float64\) holds values beyond float32's range"):
            gradflow.unroll_cell(cell, v, cell.initialize_carry(4), np.full((5, 4, 2), 1e200), train=True)
    # finite inputs whose batch variance overflows float32 (|z| ~ 1e30): named, not inf/NaN averages
    with pytest.raises(ValueError, match=r"BN running averages.*\['bn_x'\]\['var'\]"):
        gradflow.unroll_cell(cell, v, cell.initialize_carry(4), xs * 1e30, train=True)
    states, new = gradflow.unroll_cell(cell, v, cell.initialize_carry(4), xs, train=True)
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(new))


# ------------------------------------------------------------------------------------------ tasks, training


def test_empty_split_refused():
    pytest.importorskip("sklearn")
    with pytest.raises(ValueError, match="0 training"):
        tasks.digits(test_fraction=0.9999)
    with pytest.raises(ValueError, match="0 test"):
        tasks.digits(test_fraction=1e-4)
    with pytest.raises(ValueError, match=r"seed must be an int with 0 <= seed < 2\*\*32"):
        tasks.digits(seed=2**32)


def test_train_config_seeds_and_numpy_scalars():
    for bad in (2**32, -1):
        with pytest.raises(ValueError, match=r"TrainConfig.seed must be an int with 0 <="):
            train.TrainConfig(seed=bad)
    cfg = train.TrainConfig(seed=np.int64(5), learning_rate=np.float32(0.01), steps=np.int32(3),
                            clip_norm=np.float64(1.0))
    assert type(cfg.seed) is int and type(cfg.steps) is int and type(cfg.learning_rate) is float
    assert cfg.learning_rate == float(np.float32(0.01)) and cfg.seed == 5
    with pytest.raises(ValueError, match="TrainConfig.learning_rate must be a finite number > 0"):
        train.TrainConfig(learning_rate=np.float32("nan"))
    with pytest.raises(ValueError, match="TrainConfig.steps must be a positive int"):
        train.TrainConfig(steps=0)


def test_float32_learning_rate_trains_like_python_float():
    task = tasks.adding(5)
    cell = gradflow.make_cell("tanh", 4, 2)
    kw = dict(steps=2, batch_size=4, eval_every=2, eval_size=8, seed=1)
    a = train.train(cell, task, train.TrainConfig(learning_rate=np.float32(0.01), **kw))
    b = train.train(cell, task, train.TrainConfig(learning_rate=float(np.float32(0.01)), **kw))
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    assert a.final_eval == b.final_eval
