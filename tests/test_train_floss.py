"""Flossing inside training (TrainConfig.floss_*): it moves the top exponent towards 0 against the same run
without it, the recorded loss stays the task's, and pre-flossing changes the starting point.

The cell contracts (gain 0.5, lambda_1 ~ -0.8): its exponents are a smooth function of the weights, so the
comparison does not depend on rounding. (At gain 3, chaotic, the exponents measured after 12 steps moved by
more than the flossing effect with the compiler's optimization level or the seed: flossing "lowered" them on
2 of 3 seeds.)"""

import jax
import numpy as np
import pytest

import gradflow as gf
from gradflow import tasks, train

TASK = tasks.adding(40)
CELL = gf.make_cell("tanh", 16, 2, gain=0.5)
BASE = dict(steps=12, batch_size=8, learning_rate=1e-2, eval_every=12, eval_size=16, record_every=12, seed=0)


def _sum_sq_exponent(params, k=1):
    """Σλ² of the cell's top-k exponents on fresh task inputs (lyapunov_spectrum, independent of training)."""
    xs, _ = TASK.sample(jax.random.key(99), 8)
    xs = np.concatenate([xs, TASK.sample(jax.random.key(98), 8)[0]], axis=0)  # 80 steps
    step = gf.as_step(CELL, {"params": params["cell"]}, train=True)
    lam = gf.lyapunov_spectrum(step, CELL.initialize_carry(8), xs, k=k, transient=20, segments=4).exponents
    return float(np.sum(np.asarray(lam) ** 2))


@pytest.fixture(scope="module")
def runs():
    plain = train.train(CELL, TASK, train.TrainConfig(**BASE))
    flossed = train.train(CELL, TASK, train.TrainConfig(**BASE, floss=True, floss_weight=10.0, floss_every=1))
    return plain, flossed


def test_flossing_during_training_lowers_the_exponents(runs):
    plain, flossed = runs
    before = _sum_sq_exponent(plain.initial["params"])
    assert before > 0.1  # gain 0.5: λ₁ ≈ -0.8
    after_plain, after_flossed = _sum_sq_exponent(plain.params), _sum_sq_exponent(flossed.params)
    assert after_plain > 0.5 * before  # 12 task steps alone leave the cell contracting
    assert after_flossed < 0.3 * after_plain


def test_recorded_loss_is_the_task_loss(runs):
    plain, flossed = runs
    # step 0 is a flossing step; same initialization and batch: the recorded (task) losses agree
    assert flossed.history["loss"][0] == pytest.approx(plain.history["loss"][0], rel=1e-6)
    assert not np.allclose(flossed.history["loss"][1:], plain.history["loss"][1:])


def test_pre_flossing_changes_the_start():
    r = train.train(CELL, TASK, train.TrainConfig(**{**BASE, "steps": 1}, floss=True, floss_pre_steps=30))
    init = train.init_params(CELL, TASK, jax.random.fold_in(jax.random.key(0), 1))[0]
    assert _sum_sq_exponent(r.initial["params"]) < 0.5 * _sum_sq_exponent(init)
    np.testing.assert_array_equal(r.initial["params"]["readout"]["W"], init["readout"]["W"])


@pytest.mark.parametrize("bad", [dict(floss_weight=-1.0), dict(floss_k=0), dict(floss_every=0),
                                 dict(floss_pre_steps=-1), dict(floss_weight=float("nan")),
                                 dict(floss=1), dict(floss="yes")])
def test_bad_floss_options(bad):
    with pytest.raises(ValueError, match="floss"):
        train.TrainConfig(**{"floss": True, "floss_weight": 1.0, **bad})


@pytest.mark.parametrize("inert", [dict(floss_k=1), dict(floss_k=4), dict(floss_every=5),
                                   dict(floss_weight=1.0),
                                   dict(floss_pre_steps=10)])
def test_flossing_options_without_the_switch_are_an_error(inert):
    # the old study's tanh_floss set floss_k=1 (its default) and left floss_weight at 0: no flossing happened
    if inert == dict(floss_k=1):
        train.TrainConfig(**inert)  # the default value itself is not a request
        with pytest.raises(ValueError, match="floss=True"):
            train.TrainConfig(floss=True, **inert)
        return
    with pytest.raises(ValueError, match="floss=True"):
        train.TrainConfig(**inert)


def test_switch_on_with_nothing_to_do_is_an_error():
    with pytest.raises(ValueError, match="no flossing would happen"):
        train.TrainConfig(floss=True, floss_k=2, floss_every=3)
