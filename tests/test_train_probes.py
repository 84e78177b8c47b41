"""Tests for the gradient-dynamics probes of gradflow.train (``TrainConfig.probe_every``).

References: the engine functions called directly on the recorded parameters (``gradflow.jacobian_norms`` +
``gradflow.growth_rate``, ``gradflow.lyapunov_spectrum``, ``gradflow.param_sensitivity``), ∂L/∂h_T from a
direct ``jax.grad`` of the readout's loss, and the same run without probes.
"""

import flax.linen as nn
import jax
import numpy as np
import pytest

import gradflow
from gradflow import tasks, train

TASK = tasks.adding(8)
CELL = gradflow.make_cell("bn_notanh", 8, 2, t_max=8)  # BN: the probes' eval mode matters
CFG = train.TrainConfig(steps=6, batch_size=8, learning_rate=1e-2, seed=1, eval_every=3, eval_size=16,
                        record_every=2, probe_every=4, probe_size=4)
TOL = {"rtol": 2e-5, "atol": 2e-5}


@pytest.fixture(scope="module")
def probed():
    return train.train(CELL, TASK, CFG)


def _engine(cell, variables, xs, sensitivity=True):
    """The probe's measurements from the engine functions, called directly (eval mode, h_0 = 0)."""
    T, B = xs.shape[:2]
    carry0 = cell.initialize_carry(B)
    step = gradflow.as_step(cell, variables, train=False)
    jn = gradflow.jacobian_norms(step, carry0, xs, spectral=None)
    rate = gradflow.growth_rate(jn).rate
    lyap = gradflow.lyapunov_spectrum(step, carry0, xs, k=1, transient=T // 4, segments=min(10, T - T // 4))
    if not sensitivity:
        return rate, float(lyap.exponents[0]), None, None
    pstep, theta = gradflow.param_step(cell, variables, train=False)
    sens = gradflow.param_sensitivity(pstep, theta, carry0, xs)
    return rate, float(lyap.exponents[0]), sens, (pstep, theta)


def test_schedule_and_layout(probed):
    h = probed.history
    assert h["probe_step"].tolist() == [0, 4, 6]
    T, G = TASK.seq_len, len(h["probe_groups"])
    assert list(h["probe_groups"]) == ["W_hh", "W_xh", "bn_h", "bn_x"]
    assert h["probe_rate"].shape == h["probe_lyap"].shape == (3,)
    assert h["probe_log_param_sens"].shape == h["probe_log_grad_share"].shape == (3, T)
    assert h["probe_log_param_sens_groups"].shape == (3, T, G)
    for k in h:
        if k.startswith("probe_") and k != "probe_groups":
            assert not np.any(np.isnan(h[k])), k
            # from h_0 = 0 the first step's W_hh and bn_h contributions are exactly zero (ln = -inf)
            assert np.all(np.isfinite(h[k][:, 1:] if k.endswith("_groups") else h[k])), k


def test_step0_rate_and_lyapunov_equal_the_engine_on_the_initial_parameters(probed):
    xs, _ = train.probe_batch(TASK, CFG)
    init = probed.initial
    rate, lyap, sens, _ = _engine(CELL, {"params": init["params"]["cell"],
                                         "batch_stats": init["batch_stats"]}, xs)
    h = probed.history
    np.testing.assert_allclose(h["probe_rate"][0], rate, **TOL)
    np.testing.assert_allclose(h["probe_lyap"][0], lyap, **TOL)
    np.testing.assert_allclose(h["probe_log_param_sens"][0], sens.log_contribution_all, **TOL)
    assert h["probe_rate"][0] != h["probe_rate"][-1]  # the parameters (and BN statistics) moved


def test_last_step_sensitivity_and_gradient_share_equal_the_engine_on_the_final_parameters(probed):
    xs, ys = train.probe_batch(TASK, CFG)
    rate, lyap, sens, (pstep, theta) = _engine(CELL, probed.variables, xs)
    h = probed.history
    np.testing.assert_allclose(h["probe_log_param_sens"][-1], sens.log_contribution_all, **TOL)
    np.testing.assert_allclose(h["probe_log_param_sens_groups"][-1], sens.log_contributions, **TOL)
    np.testing.assert_allclose(h["probe_log_param_total"][-1], sens.log_total_all, **TOL)
    np.testing.assert_allclose(h["probe_log_state_jac"][-1], sens.log_state_jacobian, **TOL)
    np.testing.assert_allclose([h["probe_rate"][-1], h["probe_lyap"][-1]], [rate, lyap], **TOL)
    # the loss gradient's share: cotangent ∂L/∂h_T of the readout's loss, taken directly
    carry0 = CELL.initialize_carry(xs.shape[1])
    states = gradflow.unroll(gradflow.as_step(CELL, probed.variables, train=False), carry0, xs)
    h_T = jax.tree_util.tree_map(lambda a: a[-1], states)
    W, b = probed.params["readout"]["W"], probed.params["readout"]["b"]
    g = jax.grad(lambda hT: TASK.loss(hT @ W.T + b, ys))(h_T["h"])
    share = gradflow.param_sensitivity(pstep, theta, carry0, xs,
                                       cotangent={**jax.tree_util.tree_map(np.zeros_like, h_T), "h": g})
    np.testing.assert_allclose(h["probe_log_grad_share"][-1], share.log_contribution_all, **TOL)
    np.testing.assert_allclose(h["probe_log_grad_share_groups"][-1], share.log_contributions, **TOL)
    np.testing.assert_allclose(h["probe_log_grad_total"][-1], share.log_total_all, **TOL)


def test_probes_do_not_change_training(probed):
    plain = train.train(CELL, TASK, train.TrainConfig(**{**CFG.__dict__, "probe_every": None,
                                                         "probe_size": train.PROBE_SIZE}))
    for k in ("loss", "grad_norm", "eval_loss", "grad_flow"):
        np.testing.assert_array_equal(probed.history[k], plain.history[k])
    assert not any(k.startswith("probe_") for k in plain.history)
    for a, b in zip(jax.tree_util.tree_leaves((probed.params, probed.batch_stats)),
                    jax.tree_util.tree_leaves((plain.params, plain.batch_stats)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_resumed_run_has_the_uninterrupted_probes(probed, tmp_path):
    path = tmp_path / "ck.npz"
    train.train(CELL, TASK, train.TrainConfig(**{**CFG.__dict__, "steps": 5}), checkpoint=path)  # extra at 5
    resumed = train.train(CELL, TASK, CFG, checkpoint=path)
    for k, v in probed.history.items():
        if k.startswith("probe_"):
            np.testing.assert_array_equal(resumed.history[k], v, err_msg=k)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4"])
def test_bad_probe_every_raises(bad):
    with pytest.raises(ValueError, match="probe_every"):
        train.TrainConfig(probe_every=bad)


@pytest.mark.parametrize("kwargs, name", [({"probe_every": 2, "probe_size": 0}, "probe_size"),
                                          ({"probe_every": 2, "probe_size": 1.5}, "probe_size"),
                                          ({"probe_size": 4}, "probe_size")])
def test_bad_probe_size_raises(kwargs, name):
    with pytest.raises(ValueError, match=name):
        train.TrainConfig(**kwargs)


def test_probes_need_three_steps():
    task = tasks.adding(2)
    cell = gradflow.make_cell("tanh", 4, 2)
    with pytest.raises(ValueError, match="probe_every"):
        train.train(cell, task, train.TrainConfig(steps=2, batch_size=4, probe_every=1))


def test_fit_records_probes_for_a_user_linen_cell():
    task = tasks.adding(6)
    cfg = train.TrainConfig(steps=4, batch_size=8, eval_every=2, eval_size=16, probe_every=2, probe_size=4)
    r = gradflow.fit(nn.GRUCell(features=6), task, cfg)
    h = r.history
    assert h["probe_step"].tolist() == [0, 2, 4]
    assert np.all(np.isfinite(h["probe_log_param_sens"])) and np.all(np.isfinite(h["probe_lyap"]))
    xs, _ = train.probe_batch(task, cfg)
    rate, lyap, _, _ = _engine(r.cell, {"params": r.initial["params"]["cell"]}, xs, sensitivity=False)
    np.testing.assert_allclose([h["probe_rate"][0], h["probe_lyap"][0]], [rate, lyap], **TOL)
