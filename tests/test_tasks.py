"""Tests for gradflow.tasks: layouts against NumPy reconstructions, baselines against closed forms."""

import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import tasks


def test_adding_layout_and_targets():
    T, B = 20, 256
    task = tasks.adding(T)
    xs, ys = task.sample(jax.random.key(0), B)
    assert xs.shape == (T, B, 2) and ys.shape == (B,)
    assert xs.dtype == jnp.float32
    xs, ys = np.asarray(xs), np.asarray(ys)
    u, m = xs[..., 0], xs[..., 1]
    assert np.all((u >= 0) & (u < 1))
    for b in range(B):
        marked = np.flatnonzero(m[:, b])
        assert set(np.unique(m[:, b])) <= {0.0, 1.0}
        assert len(marked) == 2
        assert marked[0] < T // 2 <= marked[1]
        assert ys[b] == pytest.approx(u[marked[0], b] + u[marked[1], b], abs=1e-6)
    # the first marker covers the whole first half over many draws
    first = np.argmax(m[: T // 2], axis=0)
    assert set(first) == set(range(T // 2))


def test_adding_baseline_is_variance_of_target():
    task = tasks.adding(10)
    n = 200_000
    _, ys = task.sample(jax.random.key(3), n)
    ones = jnp.ones((n, 1))
    mse = float(task.loss(ones, ys))
    # E[(u_a + u_b - 1)^2] = 1/6; standard error of the sample mean is about sqrt(Var)/sqrt(n) < 3e-4
    assert mse == pytest.approx(1 / 6, abs=2e-3)
    assert task.baseline == pytest.approx(1 / 6)
    assert task.solved(0.001) and not task.solved(0.01)


def test_adding_accuracy_threshold():
    task = tasks.adding(4)
    ys = jnp.array([0.5, 1.0, 1.5, 0.2])
    out = jnp.array([[0.53], [1.05], [1.5], [0.0]])
    assert float(task.accuracy(out, ys)) == pytest.approx(0.5)


def test_copy_layout():
    T, B = 7, 64
    task = tasks.copy_memory(T)
    L = T + 20
    xs, ys = task.sample(jax.random.key(0), B)
    assert xs.shape == (L, B, 10) and ys.shape == (L, B)
    tokens = np.argmax(np.asarray(xs), axis=-1)
    assert np.allclose(np.asarray(xs).sum(-1), 1.0)
    ys = np.asarray(ys)
    for b in range(B):
        sym = tokens[:10, b]
        assert np.all((sym >= 1) & (sym <= 8))
        expected_in = np.concatenate([sym, np.zeros(T - 1, int), [9], np.zeros(10, int)])
        np.testing.assert_array_equal(tokens[:, b], expected_in)
        expected_out = np.concatenate([np.zeros(T + 10, int), sym])
        np.testing.assert_array_equal(ys[:, b], expected_out)


@pytest.mark.parametrize("T", [5, 100])
def test_copy_baseline_matches_memoryless_predictor(T):
    task = tasks.copy_memory(T)
    B = 8
    _, ys = task.sample(jax.random.key(1), B)
    L = T + 20
    # blank with certainty for T + 10 steps, then uniform over the 8 symbols
    logits = np.full((L, B, 9), -1e9, np.float32)
    logits[: T + 10, :, 0] = 0.0
    logits[T + 10:, :, 1:] = 0.0
    loss = float(task.loss(jnp.asarray(logits), ys))
    assert loss == pytest.approx(10 * math.log(8) / (T + 20), rel=1e-5)
    assert task.baseline == pytest.approx(10 * math.log(8) / (T + 20))


def test_cross_entropy_and_accuracy_against_numpy():
    task = tasks.copy_memory(3)
    key = jax.random.key(2)
    _, ys = task.sample(key, 5)
    logits = np.random.default_rng(4).normal(size=(23, 5, 9)).astype(np.float32).astype(np.float64)
    ys_np = np.asarray(ys)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ref = -np.mean([logp[t, b, ys_np[t, b]] for t in range(23) for b in range(5)])
    assert float(task.loss(jnp.asarray(logits, jnp.float32), ys)) == pytest.approx(ref, rel=1e-5)
    pred = logits.argmax(-1)
    ref_acc = np.mean(pred[-10:] == ys_np[-10:])
    assert float(task.accuracy(jnp.asarray(logits), ys)) == pytest.approx(ref_acc)


def test_sampling_is_deterministic():
    # (sampling inside jit is exercised by every training step)
    task = tasks.adding(12)
    a = task.sample(jax.random.key(5), 4)
    b = task.sample(jax.random.key(5), 4)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    c = task.sample(jax.random.key(6), 4)
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))


def test_with_length_and_make_task():
    assert tasks.adding(50).with_length(100).seq_len == 100
    assert tasks.copy_memory(10).with_length(20).seq_len == 40
    assert tasks.make_task("adding", 30).seq_len == 30
    assert tasks.make_task("copy", 30).length == 30


@pytest.mark.parametrize("bad", [
    lambda: tasks.adding(1),
    lambda: tasks.adding(10.5),
    lambda: tasks.copy_memory(0),
    lambda: tasks.make_task("nope", 10),
    lambda: tasks.make_task("adding"),
    lambda: tasks.adding(10).sample(jax.random.key(0), 0),
])
def test_bad_input_raises(bad):
    with pytest.raises(ValueError):
        bad()


def test_digits_split_and_permutation():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    plain = tasks.digits()
    perm = tasks.digits(permuted=True)
    assert plain.seq_len == 64 and plain.input_size == 1 and plain.output_size == 10
    assert plain.train_size == 1438 and plain.test_size == 359
    xs, ys = plain.eval_set(jax.random.key(0))
    xp, yp = perm.eval_set(jax.random.key(0))
    assert xs.shape == (64, 359, 1) and ys.shape == (359,)
    np.testing.assert_array_equal(np.asarray(ys), np.asarray(yp))
    # the permuted task reads the same images in a fixed other pixel order
    a, b = np.asarray(xs)[:, :, 0].T, np.asarray(xp)[:, :, 0].T
    cols = [next(j for j in range(64) if np.array_equal(b[:, k], a[:, j])) for k in range(64)
            if not np.all(b[:, k] == b[0, k])]
    assert len(set(cols)) == len(cols) and cols != sorted(cols)
    # test images are raw images under one affine map (raw 0 -> the minimum, raw 16 -> the maximum)
    x_raw = np.asarray(load_digits().data)
    recovered = np.rint((a - a.min()) / (a.max() - a.min()) * 16)
    assert np.allclose((a - a.min()) / (a.max() - a.min()) * 16, recovered, atol=1e-3)
    raw_rows = {row.tobytes(): i for i, row in enumerate(x_raw.astype(np.float64))}
    found = [raw_rows.get(row.astype(np.float64).tobytes()) for row in recovered]
    assert sum(f is not None for f in found) == 359  # (duplicated images in the raw set aside)
    train_x, _ = plain.sample(jax.random.key(1), 2000)
    assert np.asarray(train_x).mean() == pytest.approx(0.0, abs=0.1)
    assert np.asarray(train_x).std() == pytest.approx(1.0, abs=0.1)
    for name, ref in [("digits", plain), ("digits_permuted", perm)]:
        assert tasks.make_task(name).name == ref.name
    lp = float(plain.loss(jnp.zeros((359, 10)), ys))
    assert lp == pytest.approx(math.log(10), rel=1e-6)


def test_mnist1d_offline_and_restores_global_rng():
    pytest.importorskip("mnist1d")
    np.random.seed(123)
    random.seed(123)
    expect_np, expect_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    task = tasks.mnist1d(num_samples=500)
    assert np.random.rand() == expect_np and random.random() == expect_py
    assert task.seq_len == 40 and task.train_size == 400 and task.test_size == 100
    xs, ys = task.eval_set(jax.random.key(0))
    assert xs.shape == (40, 100, 1)
    assert set(np.unique(np.asarray(ys))) <= set(range(10))
    again = tasks.mnist1d(num_samples=500)
    np.testing.assert_array_equal(np.asarray(again.eval_set(None)[0]), np.asarray(xs))
