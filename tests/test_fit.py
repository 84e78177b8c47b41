"""gradflow.fit: any cell (ours, linen, nnx) trained by gradflow.train; the wrapped step is the cell's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gradflow as gf
from gradflow import fitting as fit_mod
from gradflow import tasks, train

TASK = tasks.adding(8)
CFG = train.TrainConfig(steps=40, batch_size=16, eval_every=20, learning_rate=1e-2, record_every=20)


def _flat(carry):
    return jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree_util.tree_leaves(carry)], -1)


@pytest.mark.parametrize("make", [lambda: nn.GRUCell(features=5), lambda: nn.LSTMCell(features=4)])
def test_wrapped_linen_step_equals_the_cell(make):
    cell = make()
    x = jax.random.normal(jax.random.key(1), (3, 2))
    carry = jax.tree_util.tree_map(lambda a: jax.random.normal(jax.random.key(2), a.shape),
                                   cell.initialize_carry(jax.random.key(0), (3, 2)))
    v = cell.init(jax.random.key(3), carry, x)
    ref, _ = cell.apply(v, carry, x)
    wrapped = fit_mod.wrap_cell(cell, 2)
    step = gf.as_step(wrapped, {"params": {"inner": v["params"]}})
    out = step({"h": _flat(carry), "t": jnp.zeros((3,), jnp.int32)}, x)
    np.testing.assert_allclose(out["h"], _flat(ref), rtol=1e-6, atol=1e-6)
    assert wrapped.hidden_size == _flat(carry).shape[1]


def test_fit_of_our_cell_is_train_and_variables_start_the_run():
    cell = gf.make_cell("tanh", 8, TASK.input_size)
    a = gf.fit(cell, TASK, CFG)
    b = train.train(cell, TASK, CFG)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    # starting from the default run's own initial variables reproduces it exactly
    c = gf.fit(cell, TASK, CFG, variables={"params": a.initial["params"]["cell"]})
    np.testing.assert_array_equal(a.history["loss"], c.history["loss"])
    # other starting variables give another run, and that run starts where it was told
    other = gf.init_cell(cell, jax.random.key(99))
    d = gf.fit(cell, TASK, CFG, variables=other)
    np.testing.assert_array_equal(d.initial["params"]["cell"]["W_hh"], other["params"]["W_hh"])
    assert not np.array_equal(a.history["loss"], d.history["loss"])


def test_fit_trains_a_linen_gru_and_the_result_is_analysable():
    r = gf.fit(nn.GRUCell(features=8), TASK, CFG)
    loss = r.history["eval_loss"]
    assert loss[-1] < 0.5 * loss[0]  # it learned something (the first eval is at initialization)
    step = gf.as_step(r.cell, r.variables)
    xs = TASK.sample(jax.random.key(5), 2)[0]
    res = gf.jacobian_norms(step, r.cell.initialize_carry(2), xs)
    assert np.all(np.isfinite(res.log_spectral_norms))


def test_fit_nnx_instance_starts_from_its_parameters():
    m = nnx.LSTMCell(TASK.input_size, 4, rngs=nnx.Rngs(0))
    r = gf.fit(m, TASK, train.TrainConfig(steps=3, batch_size=8, eval_every=3))
    start = r.initial["params"]["cell"]["inner"]["nnx"]
    np.testing.assert_array_equal(np.asarray(start["hf"]["kernel"]), np.asarray(m.hf.kernel[...]))
    # the wrapped step is the module's own step on the flattened (c, h)
    cell, own = fit_mod._from_nnx(m, TASK.input_size)
    x = jax.random.normal(jax.random.key(1), (2, TASK.input_size))
    carry = (jax.random.normal(jax.random.key(2), (2, 4)), jax.random.normal(jax.random.key(3), (2, 4)))
    ref, _ = m(carry, x)
    out = gf.as_step(cell, own)({"h": _flat(carry), "t": jnp.zeros((2,), jnp.int32)}, x)
    np.testing.assert_allclose(out["h"], _flat(ref), rtol=1e-6, atol=1e-6)


def test_fit_refuses_what_it_cannot_train(tmp_path):
    with pytest.raises(ValueError, match="expected a gradflow, linen or nnx cell"):
        gf.fit(lambda c, x: c, TASK)
    cell = gf.make_cell("tanh", 8, TASK.input_size)
    with pytest.raises(ValueError, match="does not match the cell's parameters"):
        gf.fit(cell, TASK, CFG, variables={"params": {"W_hh": jnp.zeros((3, 3))}})
    # a checkpoint written from other starting variables is not resumed from
    ck = tmp_path / "run.npz"
    gf.fit(cell, TASK, train.TrainConfig(steps=2, batch_size=8, eval_every=2), checkpoint=ck)
    with pytest.raises(ValueError, match="written for another run"):
        gf.fit(cell, TASK, train.TrainConfig(steps=2, batch_size=8, eval_every=2), checkpoint=ck,
               variables=gf.init_cell(cell, jax.random.key(7)))
