"""Tests for gradflow.train: learning, determinism, checkpoints, BN statistics, dropout, recordings.

References: a plain Python loop over ``cell.apply`` (∂L/∂h_t by continuing the sequence from a replaced h_t),
NumPy batch moments (BN running averages), a direct ``jax.grad`` of the loss (the recorded pre-clip norm),
optax's state after one step (clipping applied), an uninterrupted run (resumed checkpoints).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow
from gradflow import tasks, train

# One small configuration shared by several tests, so its train step compiles once.
SMALL_TASK = tasks.adding(6)
SMALL_CELL = gradflow.make_cell("bn_tanh", 8, 2, t_max=6)
SMALL_CFG = train.TrainConfig(steps=6, batch_size=8, learning_rate=1e-2, clip_norm=1e-3, seed=3,
                              eval_every=3, eval_size=16, record_every=2)


# forward compiled once per (cell, shapes, mode): eager lax.scan would recompile on every call
FWD = jax.jit(train.forward, static_argnums=0, static_argnames=("train", "readout"))


@pytest.fixture(scope="module")
def small_run():
    return train.train(SMALL_CELL, SMALL_TASK, SMALL_CFG)


def test_learns_short_adding_problem():
    """An LSTM drives the adding problem (T = 10) far below the memoryless baseline 1/6."""
    task = tasks.adding(10)
    cell = gradflow.make_cell("lstm", 32, task.input_size)
    cfg = train.TrainConfig(steps=300, batch_size=64, learning_rate=1e-2, eval_every=100, eval_size=512)
    r = train.train(cell, task, cfg)
    loss, _ = r.final_eval
    assert not r.diverged
    assert r.history["eval_loss"][0] > 0.5 * task.baseline  # untrained: no better than the baseline
    assert loss < 0.1 * task.baseline, r.history["eval_loss"]


def test_same_seed_same_run_other_seed_other_run(small_run):
    again = train.train(SMALL_CELL, SMALL_TASK, SMALL_CFG)
    np.testing.assert_array_equal(small_run.history["loss"], again.history["loss"])
    np.testing.assert_array_equal(small_run.history["grad_flow"], again.history["grad_flow"])
    other = train.train(SMALL_CELL, SMALL_TASK, train.TrainConfig(**{**SMALL_CFG.__dict__, "seed": 4}))
    assert not np.array_equal(small_run.history["loss"], other.history["loss"])


def test_history_layout(small_run):
    h = small_run.history
    assert h["loss"].shape == (6,) and np.all(np.isfinite(h["loss"]))
    assert h["eval_step"].tolist() == [0, 3, 6]
    assert h["flow_step"].tolist() == [0, 2, 4, 5]
    assert h["grad_flow"].shape == (4, SMALL_TASK.seq_len)
    assert small_run.steps_done == 6 and not small_run.diverged


def test_recorded_grad_norm_is_preclip_and_clip_is_applied(small_run):
    # the first step's gradient, computed directly from the same batch and the initial parameters
    xs, ys, _ = train.batch_for_step(SMALL_TASK, SMALL_CFG, 0)
    p0 = small_run.initial["params"]

    def loss(p):
        out, _, _ = train.forward(SMALL_CELL, p, small_run.initial["batch_stats"], xs, train=True)
        return jnp.mean((out[:, 0] - ys) ** 2)

    g = jax.grad(loss)(p0)
    ref = math.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in jax.tree_util.tree_leaves(g)))
    assert small_run.history["grad_norm"][0] == pytest.approx(ref, rel=1e-5)
    assert ref > 10 * SMALL_CFG.clip_norm
    # a one-step run: Adam's first moment is (1 - b1) times the clipped gradient, of norm clip_norm
    one = train.train(SMALL_CELL, SMALL_TASK, train.TrainConfig(**{**SMALL_CFG.__dict__, "steps": 1}))
    mu = one.opt_state.mu
    mu_norm = math.sqrt(sum(float(np.sum(np.asarray(x) ** 2)) for x in jax.tree_util.tree_leaves(mu)))
    assert mu_norm == pytest.approx(0.1 * SMALL_CFG.clip_norm, rel=1e-4)


def test_resume_from_checkpoint_equals_uninterrupted_run(small_run, tmp_path):
    path = tmp_path / "ckpt.npz"
    # a 4-step run records extras at its end (flow at step 3, eval at step 4) that the 6-step run has not
    half = train.train(SMALL_CELL, SMALL_TASK, train.TrainConfig(**{**SMALL_CFG.__dict__, "steps": 4}),
                       checkpoint=path)
    assert path.exists() and half.steps_done == 4
    assert half.history["flow_step"].tolist() == [0, 2, 3] and half.history["eval_step"].tolist() == [0, 3, 4]
    resumed = train.train(SMALL_CELL, SMALL_TASK, SMALL_CFG, checkpoint=path)
    for k in ("loss", "grad_norm", "eval_step", "eval_loss", "flow_step", "grad_flow"):
        np.testing.assert_array_equal(resumed.history[k], small_run.history[k], err_msg=k)
    for a, b in zip(jax.tree_util.tree_leaves(resumed.params), jax.tree_util.tree_leaves(small_run.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a run killed after its step-2 checkpoint (checkpoint_every=2) resumes to the same result
    killed = tmp_path / "killed.npz"

    def kill_at_step_3(message):
        if "step 3/" in message:
            raise KeyboardInterrupt("simulated kill")

    every2 = train.TrainConfig(**{**SMALL_CFG.__dict__, "checkpoint_every": 2})
    with pytest.raises(KeyboardInterrupt):
        train.train(SMALL_CELL, SMALL_TASK, every2, checkpoint=killed, progress=kill_at_step_3)
    assert not list(tmp_path.glob(".ckpt.*"))  # no temporary file left behind
    again = train.train(SMALL_CELL, SMALL_TASK, SMALL_CFG, checkpoint=killed)
    for k in ("loss", "eval_step", "eval_loss", "flow_step", "grad_flow"):
        np.testing.assert_array_equal(again.history[k], small_run.history[k], err_msg=k)
    # a checkpoint of another run is refused
    with pytest.raises(ValueError, match="another run"):
        train.train(SMALL_CELL, SMALL_TASK, train.TrainConfig(**{**SMALL_CFG.__dict__, "seed": 9}),
                    checkpoint=path)


@functools.partial(jax.jit, static_argnums=(0, 1, 7))
def _reference_grad_norms(cell, task, params, batch_stats, xs, ys, key, train_mode):
    """‖∂L/∂h_t‖ by a Python loop: replace h_t by a free variable and continue the sequence from it."""
    T, B = xs.shape[:2]
    W, b = params["readout"]["W"], params["readout"]["b"]
    variables = {"params": params["cell"], **({"batch_stats": batch_stats} if batch_stats else {})}
    rngs = {"dropout": key} if key is not None else {}

    def run(t_replace, h_new):
        carry = cell.initialize_carry(B)
        hs = []
        for s in range(T):
            carry, _ = cell.apply(variables, carry, xs[s], train=train_mode, rngs=rngs)
            if s == t_replace:
                carry = {**carry, "h": h_new}
            hs.append(carry["h"])
        out = hs[-1] @ W.T + b if task.readout == "last" else jnp.stack(hs) @ W.T + b
        return task.loss(out, ys)

    norms = []
    for t in range(T):
        carry = cell.initialize_carry(B)
        for s in range(t + 1):
            carry, _ = cell.apply(variables, carry, xs[s], train=train_mode, rngs=rngs)
        g = jax.grad(lambda h, t=t: run(t, h))(carry["h"])
        norms.append(jnp.linalg.norm(g))
    return jnp.stack(norms)


@pytest.mark.parametrize("preset,task_name,train_mode", [
    ("ln_notanh", "copy", True),  # readout from every state; BN_x batch statistics, LN_h, dropout
])
def test_gradient_flow_against_python_loop(preset, task_name, train_mode):
    task = tasks.make_task(task_name, 4)
    cell = gradflow.make_cell(preset, 5, task.input_size, t_max=4)
    params, bs = train.init_params(cell, task, jax.random.key(1))
    xs, ys = task.sample(jax.random.key(2), 4)
    xs, ys = xs[-3:], ys[-3:]  # the last 3 steps suffice (the reference loop is quadratic in T)
    key = jax.random.key(5) if train_mode else None
    got = np.asarray(train.gradient_flow(cell, task, params, bs, xs, ys, train=train_mode, key=key))
    ref = np.asarray(_reference_grad_norms(cell, task, params, bs, xs, ys, key, train_mode))
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-9)
    assert np.all(ref > 0)


def test_bn_running_statistics_follow_each_time_step():
    task = tasks.adding(4)
    cell = gradflow.make_cell("bn_notanh", 3, 2, t_max=6)
    params, bs = train.init_params(cell, task, jax.random.key(0))
    xs, _ = task.sample(jax.random.key(1), 16)
    _, hs, new = FWD(cell, params, bs, xs, train=True)
    W_xh = np.asarray(params["cell"]["W_xh"], np.float64)
    W_hh = np.asarray(params["cell"]["W_hh"], np.float64)
    xs_np, hs_np = np.asarray(xs, np.float64), np.asarray(hs, np.float64)
    h_prev = np.concatenate([np.zeros((1, 16, 3)), hs_np[:-1]])
    for name, z in (("bn_x", xs_np @ W_xh.T), ("bn_h", h_prev @ W_hh.T)):
        mean, var = np.asarray(new[name]["mean"]), np.asarray(new[name]["var"])
        np.testing.assert_allclose(mean[:4], 0.1 * z.mean(axis=1), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(var[:4], 0.9 + 0.1 * z.var(axis=1), rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(mean[4:], 0.0)  # rows beyond the sequence untouched
        np.testing.assert_array_equal(var[4:], 1.0)
    # eval mode: the fixed running statistics, so an example's output does not depend on its batch
    out_all, _, same = FWD(cell, params, new, xs, train=False)
    other = xs.at[:, 1:].set(task.sample(jax.random.key(7), 16)[0][:, 1:])
    out_other, _, _ = FWD(cell, params, new, other, train=False)
    assert float(out_all[0, 0]) == pytest.approx(float(out_other[0, 0]), rel=1e-6)
    assert not np.allclose(np.asarray(out_all[1:]), np.asarray(out_other[1:]))
    assert jax.tree_util.tree_all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), same, new))


def test_training_updates_bn_statistics_and_mode_gap(small_run):
    r = small_run
    before = np.asarray(r.initial["batch_stats"]["bn_x"]["mean"])
    after = np.asarray(r.batch_stats["bn_x"]["mean"])
    assert np.all(before == 0) and np.all(np.abs(after).sum(axis=1) > 0)
    gap = train.mode_gap(r, [12], size=16)  # twice the trained length
    assert gap["length"].tolist() == [12]
    assert np.all(np.isfinite(gap["train_loss"])) and np.all(np.isfinite(gap["eval_loss"]))
    assert not np.allclose(gap["train_loss"], gap["eval_loss"])  # batch vs running statistics
    # the eval-mode number is the one train() reports
    xs, ys = SMALL_TASK.eval_set(train.eval_key(SMALL_CFG), SMALL_CFG.eval_size)
    loss, _ = train.evaluate(SMALL_CELL, SMALL_TASK, r.params, r.batch_stats, xs, ys)
    assert loss == pytest.approx(r.final_eval[0], rel=1e-6)


def test_recalibrated_bn_statistics_approach_the_population(small_run):
    bs = train.recalibrate_bn(small_run, batches=40)
    # population statistics of the trained model: one big batch from zero statistics, momentum 0.9
    xs, _ = SMALL_TASK.sample(jax.random.key(99), 4096)
    zero = jax.tree.map(jnp.zeros_like, small_run.batch_stats)
    _, _, pop = FWD(SMALL_CELL, small_run.params, zero, xs, train=True)
    for name in ("bn_x", "bn_h"):
        want = np.asarray(pop[name]["mean"]) / 0.1
        var = np.asarray(pop[name]["var"]) / 0.1
        got = np.asarray(bs[name]["mean"])
        # an exponential average (m = 0.9) of means of B = 8: sd sqrt((1 - m) / (1 + m) * var / B)
        sd = np.sqrt(0.1 / 1.9 * var / SMALL_CFG.batch_size)
        assert np.all(np.abs(got - want) < 4.5 * sd + 1e-4), (name, np.max(np.abs(got - want) / sd))
    assert train.recalibrate_bn(train.TrainResult(**{**small_run.__dict__, "batch_stats": {}})) == {}


def test_dropout_only_in_training():
    task = tasks.adding(5)
    cell = gradflow.make_cell("ln_notanh", 32, 2, t_max=5)  # dropout 0.2
    params, bs = train.init_params(cell, task, jax.random.key(0))
    xs, _ = task.sample(jax.random.key(1), 16)
    _, h1, _ = FWD(cell, params, bs, xs, train=True, key=jax.random.key(2))
    _, h2, _ = FWD(cell, params, bs, xs, train=True, key=jax.random.key(3))
    assert not np.allclose(np.asarray(h1), np.asarray(h2))
    zeros = float(np.mean(np.asarray(h1) == 0.0))
    assert zeros == pytest.approx(0.2, abs=0.04)  # 2560 Bernoulli(0.2) draws: sd 0.008
    _, e1, _ = FWD(cell, params, bs, xs, train=False, key=jax.random.key(2))
    _, e2, _ = FWD(cell, params, bs, xs, train=False, key=jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(e1), np.asarray(e2))
    assert float(np.mean(np.asarray(e1) == 0.0)) == 0.0
    with pytest.raises(ValueError, match="dropout key"):
        train.forward(cell, params, bs, xs, train=True)


def test_lyapunov_of_eval_mode_bn_notanh_against_eigenvalues():
    """In eval mode bn_notanh is affine, h <- diag(gamma / sqrt(var + eps)) W_hh h + ..., beyond t_max with
    the last row of the running statistics: its exponents are the ln |eigenvalues| of that matrix."""
    task = tasks.adding(8)
    cell = gradflow.make_cell("bn_notanh", 4, 2, t_max=3)
    variables = gradflow.init_cell(cell, jax.random.key(0))
    stats = variables["batch_stats"]["bn_h"]
    last_var = jnp.array([4.0, 2.0, 1.0, 0.5])
    variables["batch_stats"]["bn_h"] = {**stats, "var": stats["var"].at[-1].set(last_var)}
    scale = np.asarray(variables["params"]["bn_h"]["scale"], np.float64) / np.sqrt([4.0, 2.0, 1.0, 0.5])
    W = np.asarray(variables["params"]["W_hh"], np.float64) * scale[:, None]
    moduli = np.sort(np.abs(np.linalg.eigvals(W)))[::-1]
    res = train.lyapunov(cell, variables, task, key=jax.random.key(1), k=2, steps=400, transient=50)
    assert res.exponents[0] == pytest.approx(np.log(moduli[0]), abs=0.03)
    assert float(np.sum(res.exponents)) == pytest.approx(np.log(moduli[0] * moduli[1]), abs=0.01)


def test_divergence_is_recorded_not_raised():
    # a step of 1e30 makes the next forward pass overflow float32
    cfg = train.TrainConfig(**{**SMALL_CFG.__dict__, "learning_rate": 1e30, "clip_norm": None})
    r = train.train(SMALL_CELL, SMALL_TASK, cfg)
    assert r.diverged and r.steps_done == 1
    assert "diverged at step 1" in r.message
    assert np.isfinite(r.history["loss"][0]) and np.all(np.isnan(r.history["loss"][1:]))
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(r.params))


@pytest.mark.parametrize("bad", [
    lambda: train.TrainConfig(steps=0),
    lambda: train.TrainConfig(learning_rate=float("nan")),
    lambda: train.TrainConfig(clip_norm=-1.0),
    lambda: train.train(gradflow.make_cell("tanh", 4, 3), SMALL_TASK, SMALL_CFG),
    lambda: train.train(SMALL_CELL, SMALL_TASK, {"steps": 3}),
    lambda: train.forward(SMALL_CELL, {}, {}, jnp.zeros((5, 2)), train=False),
    lambda: train.forward(SMALL_CELL, {}, {}, jnp.zeros((5, 1, 3)), train=False),
])
def test_bad_input_raises(bad):
    with pytest.raises(ValueError):
        bad()
