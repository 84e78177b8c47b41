"""Bad arguments of train, tasks, stats and sweep (edge probe findings): each is refused by a ValueError
naming the argument, where it used to raise a JAX/NumPy internal error or return a silent (wrong or NaN)
result.

Valid calls keep their values: references are the same call with a Python int (NumPy scalars), a
``jax.random.PRNGKey`` for an int seed, the mean squared error computed with NumPy from the traced forward
pass, and ranks counted by hand.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow import checks, stats, sweep, tasks, train

KEY = jax.random.key(0)
TASK = tasks.adding(5)
CELL = gf.make_cell("tanh", 4, 2)
PARAMS, BS = train.init_params(CELL, TASK, KEY)
XS = np.asarray(TASK.sample(KEY, 3)[0])
NAN_XS = XS.copy()
NAN_XS[1] = np.nan
CFG = train.TrainConfig(steps=2, batch_size=4)

BAD_KEYS = [
    pytest.param(1.5, id="float"),
    pytest.param("key", id="str"),
    pytest.param(np.array([1, 2, 3], np.uint32), id="uint32[3]"),
    pytest.param(jax.random.split(KEY, 3), id="stacked"),
    pytest.param(np.zeros(2, np.float32), id="float32[2]"),
    pytest.param(True, id="bool"),
    pytest.param(-1, id="negative-seed"),
    pytest.param(None, id="None"),
]

# ------------------------------------------------------------------------------------------ PRNG keys


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused_naming_key(key):
    """Each raised a JAX-internal TypeError/ValueError ("invalid PRNG key data", "split accepts a single
    key") or an AttributeError before."""
    for call in (
        lambda: TASK.sample(key, 4),
        lambda: tasks.affine_fit(TASK, key, n_train=100, n_test=10),
        lambda: train.init_params(CELL, TASK, key),
        lambda: train.lyapunov(CELL, {"params": PARAMS["cell"]}, TASK, key=key),
    ):
        with pytest.raises(ValueError, match=r"^key (must|is required)"):
            call()


def test_an_int_key_is_a_seed():
    """As checks.prng_key: an int is jax.random.PRNGKey(int) (NumPy ints too)."""
    want = TASK.sample(jax.random.PRNGKey(3), 4)
    for seed in (3, np.int64(3)):
        got = TASK.sample(seed, 4)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    assert tasks.affine_fit(TASK, 3, 100, 10) == tasks.affine_fit(TASK, jax.random.PRNGKey(3), 100, 10)


def test_affine_fit_refuses_a_non_task():
    """affine_fit(None, key) raised AttributeError: 'NoneType' object has no attribute 'kind'."""
    with pytest.raises(ValueError, match="task must be a gradflow.tasks.Task"):
        tasks.affine_fit(None, KEY)


# ------------------------------------------------------------------------------------- batch_for_step


@pytest.mark.parametrize("step", [-1, None, True, 2.5, "1", 2**32])
def test_batch_for_step_refuses_bad_steps(step):
    """-1 and None raised OverflowError / a jnp.array error; True, 2.5 and '1' returned a batch silently."""
    with pytest.raises(ValueError, match=r"^step must be an int"):
        train.batch_for_step(TASK, CFG, step)


def test_batch_for_step_takes_numpy_ints():
    for a, b in zip(train.batch_for_step(TASK, CFG, np.int64(1))[:2], train.batch_for_step(TASK, CFG, 1)[:2],
                    strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------ forward, evaluate, gradient_flow


@pytest.mark.parametrize("flag", ["yes", None, 1])
def test_train_flag_must_be_a_bool(flag):
    """forward(train='yes') / train=None ran silently (eval mode for None, train mode for 'yes')."""
    with pytest.raises(ValueError, match="train must be True or False"):
        train.forward(CELL, PARAMS, BS, XS, train=flag)
    with pytest.raises(ValueError, match="train must be True or False"):
        train.gradient_flow(CELL, TASK, PARAMS, BS, XS, np.zeros(3), train=flag)
    with pytest.raises(ValueError, match="train must be True or False"):
        train.evaluate(CELL, TASK, PARAMS, BS, XS, np.zeros(3), train=flag)


def test_nan_inputs_are_refused_naming_xs():
    """forward, gradient_flow and evaluate returned NaN outputs / norms / loss without a word."""
    ys = np.zeros(3)
    for call in (
        lambda: train.forward(CELL, PARAMS, BS, NAN_XS, train=False),
        lambda: train.gradient_flow(CELL, TASK, PARAMS, BS, NAN_XS, ys),
        lambda: train.evaluate(CELL, TASK, PARAMS, BS, NAN_XS, ys),
    ):
        with pytest.raises(ValueError, match=r"xs\[1\] \(the input x_2 of step 2\) is not finite"):
            call()


def test_bad_targets_are_refused_naming_ys():
    """5 targets for a batch of 3 raised a JAX broadcasting TypeError; NaN targets returned (nan, 0)."""
    for ys, msg in ((np.zeros(5), r"ys must have shape \(3,\)"), (np.full(3, np.nan), "in ys")):
        for f in (train.evaluate, train.gradient_flow):
            with pytest.raises(ValueError, match=msg):
                f(CELL, TASK, PARAMS, BS, XS, ys)


def test_checks_are_skipped_under_tracing():
    """The finiteness check reads concrete values only: a compiled forward pass is not checked (no host
    sync in the training step), and NaN inputs give NaN outputs there, as before."""
    f = jax.jit(lambda xs: train.forward(CELL, PARAMS, BS, xs, train=False)[0])
    assert np.isnan(np.asarray(f(jnp.asarray(NAN_XS)))).all()


def test_evaluate_value_unchanged():
    """evaluate's loss is the MSE of the (traced) forward pass's outputs against ys, computed with NumPy."""
    xs, ys = TASK.sample(jax.random.key(5), 3)
    out = jax.jit(lambda x: train.forward(CELL, PARAMS, BS, x, train=False)[0])(xs)
    want = np.mean((np.asarray(out, np.float64)[:, 0] - np.asarray(ys, np.float64)) ** 2)
    loss, _ = train.evaluate(CELL, TASK, PARAMS, BS, xs, ys)
    assert loss == pytest.approx(want, rel=1e-6)


# ------------------------------------------------------------------------------------------ lyapunov


@pytest.mark.parametrize(
    "arg, value, msg",
    [
        ("steps", 0, "steps must be an int >= 2"),
        ("steps", -1, "steps must be an int >= 2"),
        ("steps", True, "steps must be an int >= 2"),
        ("steps", 2.5, "steps must be an int >= 2"),
        ("k", True, "k must be a positive int"),
        ("k", 0, "k must be a positive int"),
        ("transient", True, "transient must be a non-negative int"),
        ("transient", -1, "transient must be a non-negative int"),
    ],
)
def test_lyapunov_names_its_arguments(arg, value, msg):
    """steps was reported as "adding seq_len must be ..."; k=True and transient=True ran as 1."""
    with pytest.raises(ValueError, match=msg):
        train.lyapunov(CELL, {"params": PARAMS["cell"]}, TASK, key=KEY, **{arg: value})


def test_lyapunov_takes_numpy_ints():
    v = {"params": PARAMS["cell"]}
    a = train.lyapunov(CELL, v, TASK, key=KEY, k=np.int64(2), steps=np.int64(20), transient=np.int64(4))
    b = train.lyapunov(CELL, v, TASK, key=KEY, k=2, steps=20, transient=4)
    np.testing.assert_array_equal(a.exponents, b.exponents)
    assert a.n_steps == b.n_steps == 16


# --------------------------------------------------------------------------------------------- stats


@pytest.mark.parametrize("bad", ["abc", [1j, 2.0], None, [np.nan, 1.0], [True, False], []],
                         ids=["str", "complex", "None", "NaN", "bool", "empty"])
def test_stats_refuse_non_real_samples_naming_them(bad):
    """Strings and complex numbers raised NumPy's conversion errors; rank([nan, 1]) and rank(None) returned
    ranks with RuntimeWarnings."""
    with pytest.raises(ValueError, match=r"^a "):
        stats.mann_whitney(bad, [1, 2, 3])
    with pytest.raises(ValueError, match=r"^b "):
        stats.mann_whitney([1, 2, 3], bad)
    with pytest.raises(ValueError, match=r"^a "):
        stats.median_difference(bad, [1, 2, 3])
    with pytest.raises(ValueError, match=r"^x "):
        stats.rank(bad)


def test_rank_values():
    """Ranks counted by hand: ties share the mean of their ranks, +inf is the largest."""
    np.testing.assert_array_equal(stats.rank([3, 1, 2]), [3, 1, 2])
    np.testing.assert_array_equal(stats.rank([1, 1, 2]), [1.5, 1.5, 3])
    np.testing.assert_array_equal(stats.rank([np.inf, 1, np.float32(0.5)]), [3, 2, 1])


# --------------------------------------------------------------------------------------------- sweep


def test_grid_axes_must_be_dicts():
    """Grid(static='x') raised "dictionary update sequence element #0 has length 1; 2 is required"."""
    with pytest.raises(ValueError, match="static must be a dict"):
        sweep.Grid(static="x", traced={"a": [1.0]})
    with pytest.raises(ValueError, match="traced must be a dict"):
        sweep.Grid(traced=[1.0, 2.0])


def test_store_must_be_a_path(tmp_path):
    """load_table(None) and run_sweep(store=3) raised os.fspath's TypeError."""
    grid = sweep.Grid(traced={"a": [1.0, 2.0]})
    fn = lambda s: (lambda c: {"y": 2 * c["a"]})
    with pytest.raises(ValueError, match="store must be a path"):
        sweep.load_table(None)
    with pytest.raises(ValueError, match="store must be a path"):
        sweep.run_sweep(fn, grid, store=3)
    table = sweep.run_sweep(fn, grid, store=pathlib.Path(tmp_path))  # a Path is a path
    np.testing.assert_array_equal(sweep.load_table(tmp_path)["y"], table["y"])


def test_folder_path():
    assert checks.folder_path("store", pathlib.Path("a") / "b") == "a/b"
    assert checks.folder_path("store", "x") == "x"
    for bad in (None, 3, b"x", ["x"]):
        with pytest.raises(ValueError, match="store must be a path"):
            checks.folder_path("store", bad)


def test_lyapunov_length_of_the_adding_controls():
    """recall and adding_product ran at T = steps - 20 (copy's delay rule): 20 steps for steps=40. Now
    T = steps, as adding; copy keeps delay steps - 20 (T = steps)."""
    for task in (tasks.adding(5), tasks.recall(5), tasks.adding_product(5), tasks.copy_memory(5)):
        cell = gf.make_cell("tanh", 4, task.input_size)
        v = gf.init_cell(cell, KEY)
        assert train.lyapunov(cell, v, task, key=KEY, k=1, steps=40, transient=0).n_steps == 40, task.name
