"""The teacher–student analysis against independent references: the teacher's spectrum and impulse response,
both students' recurrences against plain Python loops, the Hessian against finite differences of the gradient,
training on a tiny instance, and the learning-rate choice."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analyses import teacher_student as ts


@pytest.mark.parametrize("nu0", [0.36, 0.9, 0.99])
def test_teacher_eigenvalues_lie_in_ring_and_come_in_conjugate_pairs(nu0):
    for seed in range(4):
        t = ts.teacher(nu0, seed, hidden=10)
        assert t["A"].dtype == np.float64 and t["A"].shape == (10, 10)
        lam = np.linalg.eigvals(t["A"])
        assert np.all(np.abs(lam) >= nu0 - 1e-9) and np.all(np.abs(lam) < 1.0)
        # A real: the spectrum is closed under conjugation
        np.testing.assert_allclose(np.sort_complex(lam), np.sort_complex(lam.conj()), atol=1e-9)


def _loop_teacher(t, x):
    h = np.zeros(t["A"].shape[0])
    ys = []
    for xt in x:
        h = t["A"] @ h + t["B"] * xt
        ys.append(t["C"] @ h + t["D"] * xt)
    return np.array(ys)


def test_teacher_toeplitz_equals_its_recurrence():
    t = ts.teacher(0.9, 3, hidden=10)
    T = 40
    M = ts.teacher_kernel(t, T)
    x = np.random.default_rng(0).standard_normal((3, T))
    y = x @ M.T
    for b in range(3):
        np.testing.assert_allclose(y[b], _loop_teacher(t, x[b]), rtol=1e-10, atol=1e-12)


def test_lru_student_equals_complex_python_loop(x64):
    n, T = 5, 30
    p = {k: jnp.asarray(v) for k, v in ts.init_lru(2, n, 0.8).items()}
    x = np.random.default_rng(1).standard_normal((2, T))
    y = np.asarray(ts.lru_forward(p, jnp.asarray(x)))
    lam = np.exp(-np.exp(np.asarray(p["nu_log"])) + 1j * np.exp(np.asarray(p["theta_log"])))
    gamma = np.exp(np.asarray(p["gamma_log"]))
    np.testing.assert_allclose(gamma, np.sqrt(1 - np.abs(lam) ** 2), rtol=1e-12)  # γ's init
    assert np.all(np.abs(lam) >= 0.8) and np.all(np.abs(lam) < 1)
    B = np.asarray(p["B_re"]) + 1j * np.asarray(p["B_im"])
    C = np.asarray(p["C_re"]) + 1j * np.asarray(p["C_im"])
    for b in range(2):
        h = np.zeros(n, complex)
        for t in range(T):
            h = lam * h + gamma * B * x[b, t]
            assert y[b, t] == pytest.approx((C @ h).real + float(p["D"]) * x[b, t], rel=1e-10, abs=1e-12)


def test_rnn_student_equals_python_loop(x64):
    n, T = 6, 30
    p = {k: jnp.asarray(v) for k, v in ts.init_rnn(4, n).items()}
    A = np.asarray(p["A"])
    assert np.all(np.abs(np.linalg.eigvals(A)) < math.tanh(2.5))  # magnitudes tanh|l|
    x = np.random.default_rng(2).standard_normal((2, T))
    y = np.asarray(ts.rnn_forward(p, jnp.asarray(x)))
    ref = {"A": A, "B": np.asarray(p["B"]), "C": np.asarray(p["C"]), "D": float(p["D"])}
    for b in range(2):
        np.testing.assert_allclose(y[b], _loop_teacher(ref, x[b]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model", ["rnn", "lru"])
def test_hessian_equals_finite_differences_of_gradient(model, x64):
    n, T = 2, 12
    p = {k: jnp.asarray(v) for k, v in ts.INIT[model](1, n, 0.9).items()}
    M = jnp.asarray(ts.teacher_kernel(ts.teacher(0.9, 0, hidden=3), T))
    x, y = ts.sample(jax.random.key(5), M, 4)
    H, names = ts.hessian(model, p, x, y)
    flat, unravel = jax.flatten_util.ravel_pytree(p)
    assert len(names) == flat.size == H.shape[0]
    assert names[0] == sorted(p)[0]
    g = jax.jit(jax.grad(lambda v: ts.loss(model, unravel(v), x, y)))
    eps = 1e-6
    fd = np.stack([(np.asarray(g(flat.at[i].add(eps))) - np.asarray(g(flat.at[i].add(-eps)))) / (2 * eps)
                   for i in range(flat.size)], axis=1)
    np.testing.assert_allclose(H, fd, rtol=1e-5, atol=1e-6 * np.abs(H).max())


def test_hessian_metrics_on_known_matrices():
    H = np.diag([4.0, 2.0, 1.0, 0.0])
    m = ts.hessian_metrics(H, ["a", "a", "b", "b"], ("a",), r=3)
    assert m["kappa"] == pytest.approx(4.0) and m["diag_share"] == pytest.approx(1.0)
    assert m["kappa_pre"] == pytest.approx(1.0) and m["diag_share_rec"] == pytest.approx(1.0)
    H = np.array([[1.0, 1.0], [1.0, 1.0]])
    m = ts.hessian_metrics(H, ["a", "b"], ("a",), r=2)
    assert m["kappa"] == math.inf and m["diag_share"] == pytest.approx(0.5)


def test_training_reduces_loss_on_tiny_instance():
    c = {**ts.CONFIG, **ts.QUICK, "T": 10, "steps": 40, "n_curve": 4, "seeds": [0, 1]}
    for model, lrs in (("rnn", [1e-2]), ("lru", [0.05])):
        g = ts.train_grid(model, 0.6, lrs, c, hidden=4)
        assert g["curve"].shape == (1, 2, 4) and g["val"].shape == (1, 2)
        assert np.all(g["curve"][0, :, -1] < 0.7 * g["curve"][0, :, 0])
        # the validation loss of the trained student is below that of its initialization
        keys = ts.data_keys(c["seeds"])
        for s, seed in enumerate(c["seeds"]):
            t = ts.teacher(0.6, seed, c["teacher_hidden"])
            M = jnp.asarray(ts.teacher_kernel(t, c["T"]), jnp.float32)
            x, y = ts.sample(keys["val"][s], M, c["n_val"])
            p0 = {k: jnp.asarray(v, jnp.float32) for k, v in ts.INIT[model](seed, 4, 0.6).items()}
            assert g["val"][0, s] < float(ts.loss(model, p0, x, y))


def test_learning_rate_is_chosen_on_validation_only():
    val = np.array([[3.0, 3.0, 3.0], [1.0, 2.5, np.nan], [2.0, 2.0, 2.0]])  # rows: rates, columns: seeds
    assert ts.select_lr(val) == 2  # medians with NaN as +inf: 3, 2.5, 2 (not the best single seed, rate 1)
    val[1, 2] = 1.5  # now rate 1 has median 1.5
    assert ts.select_lr(val) == 1
    # the signature admits validation losses only: test losses cannot enter the choice
    import inspect
    assert list(inspect.signature(ts.select_lr).parameters) == ["val"]


def test_data_streams_are_disjoint():
    k = ts.data_keys([0, 1])
    draws = {name: np.asarray(jax.random.normal(k[name][0], (8,))) for name in k}
    vals = list(draws.values())
    for i in range(len(vals)):
        for j in range(i + 1, len(vals)):
            assert not np.allclose(vals[i], vals[j])
