"""gradflow.trainsweep: a whole training run as a vmappable function, checked against gradflow.train.train."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow
from gradflow import tasks, train, trainsweep
from gradflow.sweep import Grid, run_sweep


def _reference(cell, task, lr, seed, steps, batch, clip, evals, recal=0):
    r = train.train(cell, task, train.TrainConfig(steps=steps, batch_size=batch, learning_rate=lr,
                                                  clip_norm=clip, seed=seed, eval_every=steps, eval_size=8,
                                                  record_every=steps))
    bs = train.recalibrate_bn(r, recal) if recal and r.batch_stats else r.batch_stats
    out = {k: train.evaluate(cell, task, r.params, bs, *v) for k, v in evals.items()}
    return r, out


@pytest.mark.parametrize("preset", ["tanh", "bn_notanh"])
def test_matches_train_and_vmap_matches_single_runs(preset):
    task = tasks.adding(8)
    cell = gradflow.make_cell(preset, 6, 2, t_max=8)
    evals = {"test": task.eval_set(jax.random.key(5), 32)}
    recal = 3 if preset == "bn_notanh" else 0
    f = trainsweep.train_fn(cell, task, steps=6, batch_size=8, clip_norm=1.0, eval_sets=evals,
                            recal_batches=recal)
    lrs, seeds = jnp.array([3e-3, 3e-2]), jnp.array([0, 4])
    vm = jax.jit(jax.vmap(f))({"learning_rate": lrs, "seed": seeds})
    for j in range(2):
        r, ref = _reference(cell, task, float(lrs[j]), int(seeds[j]), 6, 8, 1.0, evals, recal)
        one = jax.jit(f)({"learning_rate": lrs[j], "seed": seeds[j]})
        assert int(one["steps_done"]) == r.steps_done == 6 and not bool(one["diverged"])
        np.testing.assert_allclose(float(one["test_loss"]), ref["test"][0], rtol=2e-5)
        np.testing.assert_allclose(float(vm["test_loss"][j]), ref["test"][0], rtol=2e-5)
        # ‖∂L/∂h_t‖ at initialization: train records it at step 0 on the same batch
        np.testing.assert_allclose(np.asarray(one["init_flow"]), r.history["grad_flow"][0], rtol=2e-5)


def test_divergence_stops_like_train():
    task = tasks.adding(30)
    cell = gradflow.make_cell(gradflow.CellSpec(activation="relu", recurrent_init="identity"), 8, 2)
    f = trainsweep.train_fn(cell, task, steps=40, batch_size=8, clip_norm=None,
                            eval_sets={"test": task.eval_set(jax.random.key(5), 16)})
    out = jax.jit(f)({"learning_rate": jnp.float32(30.0), "seed": jnp.int32(0)})
    r, _ = _reference(cell, task, 30.0, 0, 40, 8, None, {})
    assert r.diverged and bool(out["diverged"])
    assert int(out["steps_done"]) == r.steps_done < 40


def test_through_run_sweep():
    task = tasks.adding(6)
    cell = gradflow.make_cell("tanh", 4, 2)
    evals = {"val": task.eval_set(jax.random.key(1), 16)}
    f = trainsweep.train_fn(cell, task, steps=3, batch_size=4, eval_sets=evals)
    table = run_sweep(lambda s: f, Grid(traced={"learning_rate": [1e-3, 1e-2], "seed": [0, 1]}), chunk=4)
    for lr, seed, loss in zip(table["learning_rate"], table["seed"], table["val_loss"], strict=True):
        one = jax.jit(f)({"learning_rate": jnp.float32(lr), "seed": jnp.int32(seed)})
        np.testing.assert_allclose(loss, float(one["val_loss"]), rtol=1e-5)
    with pytest.raises(ValueError, match="steps"):
        trainsweep.train_fn(cell, task, steps=0, batch_size=4)


def test_input_scale_matches_train_with_scaled_input_weights(monkeypatch):
    task = tasks.adding(8)
    cell = gradflow.make_cell(gradflow.CellSpec(activation="relu", recurrent_init="identity"), 6, 2)
    evals = {"test": task.eval_set(jax.random.key(5), 32)}
    orig = train.init_params

    def scaled(cell, task, key):
        params, bs = orig(cell, task, key)
        return {**params, "cell": {**params["cell"], "W_xh": params["cell"]["W_xh"] * 0.01}}, bs

    with monkeypatch.context() as m:
        m.setattr(train, "init_params", scaled)
        _, ref = _reference(cell, task, 1e-2, 3, 5, 8, 1.0, evals)
    f = trainsweep.train_fn(cell, task, steps=5, batch_size=8, clip_norm=1.0, eval_sets=evals,
                            input_scale=0.01)
    out = jax.jit(f)({"learning_rate": jnp.float32(1e-2), "seed": jnp.int32(3)})
    np.testing.assert_allclose(float(out["test_loss"]), ref["test"][0], rtol=2e-5)
    plain = jax.jit(trainsweep.train_fn(cell, task, steps=5, batch_size=8, clip_norm=1.0, eval_sets=evals))
    assert abs(float(plain({"learning_rate": jnp.float32(1e-2), "seed": jnp.int32(3)})["test_loss"])
               - ref["test"][0]) > 1e-3  # the scale matters
    with pytest.raises(ValueError, match="input_scale"):
        trainsweep.train_fn(cell, task, steps=5, batch_size=8, input_scale=0.0)


def test_options_match_their_plain_computations():
    # train-mode evaluation = train.evaluate(train=True) on each chunk of batch_size sequences, averaged;
    # probe states = the final carry of the trained cell; lambda_1 = gradflow.lyapunov_spectrum on the same
    # step; a traced step count = the static one
    task = tasks.adding(6)
    cell = gradflow.make_cell("bn_notanh", 6, 2, t_max=6)
    evals = {"test": task.eval_set(jax.random.key(5), 16)}
    probe = {"states": task.sample(jax.random.key(6), 12)[0],
             "lyapunov": task.sample(jax.random.key(7), 4)[0]}
    f = jax.jit(trainsweep.train_fn(cell, task, steps=5, batch_size=8, eval_sets=evals, recal_batches=2,
                                    train_mode_eval=True, return_state=True, probe=probe))
    out = f({"learning_rate": 0.01, "seed": 1})
    params, bs = out["params"], out["batch_stats"]
    xs, ys = evals["test"]
    key = jax.random.fold_in(jax.random.key(1), 7)
    chunks = [train.evaluate(cell, task, params, bs, xs[:, i:i + 8], ys[i:i + 8], train=True, key=key)
              for i in (0, 8)]
    np.testing.assert_allclose(float(out["test_loss_train"]), np.mean([c[0] for c in chunks]), rtol=1e-5)
    variables = {"params": params["cell"], "batch_stats": bs}
    step = gradflow.as_step(cell, variables, train=False)
    states = gradflow.unroll(step, cell.initialize_carry(12), probe["states"])
    np.testing.assert_allclose(out["probe_states"], states["h"][-1], rtol=1e-5, atol=1e-6)
    lam = gradflow.lyapunov_spectrum(step, cell.initialize_carry(4), probe["lyapunov"], k=1, transient=1,
                                     segments=4)
    np.testing.assert_allclose(float(out["lyap_final"]), float(lam.exponents[0]), rtol=1e-4, atol=1e-6)
    static = f({"learning_rate": 0.01, "seed": 1, "steps": np.int32(5)})
    np.testing.assert_array_equal(static["test_loss"], out["test_loss"])
    longer = f({"learning_rate": 0.01, "seed": 1, "steps": np.int32(9)})
    assert int(longer["steps_done"]) == 9
    with pytest.raises(ValueError, match="multiple of batch_size"):
        trainsweep.train_fn(cell, task, steps=5, batch_size=5, eval_sets=evals, train_mode_eval=True)
