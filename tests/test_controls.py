"""The representable controls of the adding problem, the affine floor against least squares, the memory curve
against closed forms, and the statistics of the training study against exact values."""

from __future__ import annotations

import itertools
import math

import jax
import numpy as np
import pytest

from gradflow import stats, tasks
from gradflow.capacity import memory_curve


@pytest.mark.parametrize("T", [4, 10, 11])
def test_adding_affine_floor_matches_least_squares(T):
    task = tasks.adding(T)
    assert task.affine_floor == pytest.approx(1 - (1 / (T // 2) + 1 / (T - T // 2)) / 2)
    if T % 2 == 0:
        assert task.affine_floor == pytest.approx(1 - 2 / T)
    # held-out MSE of the least-squares fit, 20000 test sequences: its standard error is about 1 % of it
    assert tasks.affine_fit(task, jax.random.key(T)) == pytest.approx(task.affine_floor, abs=0.03)


@pytest.mark.parametrize("name", ["adding_product", "recall"])
def test_controls_are_affine_targets(name):
    task = tasks.make_task(name, 12)
    assert task.affine_floor == 0.0
    assert tasks.affine_fit(task, jax.random.key(0), n_train=400, n_test=200) < 1e-8


def test_adding_product_is_adding_with_the_product_channel():
    key = jax.random.key(3)
    xs, ys = tasks.adding_product(9).sample(key, 16)
    xa, ya = tasks.adding(9).sample(key, 16)
    np.testing.assert_array_equal(xs[..., :2], xa)
    np.testing.assert_array_equal(ys, ya)
    np.testing.assert_allclose(xs[..., 2], xa[..., 0] * xa[..., 1])
    np.testing.assert_allclose(ys, np.sum(np.asarray(xs[..., 2]), axis=0), rtol=1e-6)


def test_recall_carries_the_first_value_among_distractors():
    task = tasks.recall(7)
    xs, ys = task.sample(jax.random.key(4), 32)
    np.testing.assert_array_equal(xs[0, :, 0], ys)
    assert np.all(np.asarray(xs[1:, :, 0]) == 0)
    assert np.asarray(xs[..., 1]).std() > 0.2  # distractors everywhere
    assert task.baseline == pytest.approx(1 / 12) and task.with_length(5).seq_len == 5
    assert tasks.make_task("adding_product", 6).input_size == 3


def test_memory_curve_of_a_leaky_unit_matches_the_closed_form():
    # h_T = sum_{k<T} lam^k u_{T-k}: r^2(k) = lam^{2k} / sum_{j<T} lam^{2j} for i.i.d. inputs
    rng = np.random.default_rng(0)
    lam, T, N = 0.8, 30, 20_000
    u = rng.uniform(size=(N, T))
    h = (u[:, ::-1] * lam ** np.arange(T)).sum(axis=1, keepdims=True)
    m = memory_curve(h, u, 8)
    exact = lam ** (2 * np.arange(8)) / np.sum(lam ** (2 * np.arange(T)))
    np.testing.assert_allclose(m.r2, exact, atol=0.02)
    assert m.capacity == pytest.approx(m.r2.sum())


def test_memory_capacity_of_a_delay_line_is_its_size():
    rng = np.random.default_rng(1)
    u = rng.uniform(size=(6000, 40))
    delay = u[:, ::-1][:, :5] @ rng.normal(size=(5, 5))  # a mixed (invertible) delay line of 5
    m = memory_curve(delay, u, 20)
    assert m.capacity == pytest.approx(5.0, abs=0.05)
    with pytest.raises(ValueError, match="max_lag"):
        memory_curve(delay, u, 41)
    with pytest.raises(ValueError, match="non-finite"):
        memory_curve(np.full_like(delay, np.nan), u, 3)


def _brute_p(a, b):
    """Two-sided exact p by listing every assignment of the pooled values (the definition)."""
    pooled = list(a) + list(b)
    n = len(a)

    def u(x, y):
        return sum((p > q) + 0.5 * (p == q) for p in x for q in y)

    u0 = u(a, b)
    mean = n * len(b) / 2
    us = []
    for idx in itertools.combinations(range(len(pooled)), n):
        x = [pooled[i] for i in idx]
        y = [pooled[i] for i in range(len(pooled)) if i not in idx]
        us.append(u(x, y))
    return sum(abs(v - mean) >= abs(u0 - mean) for v in us) / len(us)


def test_mann_whitney_against_the_definition_and_the_normal_limit():
    a, b = [0.1, 0.4, 0.35, 0.2, 0.9], [0.5, 0.6, 0.45, 0.8, 0.7]
    r = stats.mann_whitney(a, b)
    assert r.exact and r.u == 5 and r.p_value == pytest.approx(_brute_p(a, b))
    assert stats.mann_whitney([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]).p_value == pytest.approx(
        2 / math.comb(10, 5)
    )
    ties = [1, 1, 2, 2, 3], [1, 2, 2, 3, 3]
    assert stats.mann_whitney(*ties).p_value == pytest.approx(_brute_p(*ties))
    # the normal approximation (large samples) agrees with the exact distribution at n = 7 within 0.02
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=7), rng.normal(0.8, 1, size=7)
    exact = stats.mann_whitney(x, y).p_value
    z = (abs(stats.mann_whitney(x, y).u - 24.5) - 0.5) / math.sqrt(7 * 7 * 15 / 12)
    assert exact == pytest.approx(math.erfc(z / math.sqrt(2)), abs=0.02)
    big = stats.mann_whitney(rng.normal(size=40), rng.normal(size=40))
    assert not big.exact and 0 < big.p_value <= 1
    with pytest.raises(ValueError, match="NaN"):
        stats.mann_whitney([1.0, math.nan], [2.0])


def test_median_difference_and_spearman():
    d, lo, hi = stats.median_difference([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])
    assert d == 3 and 1 <= lo <= 3 <= hi <= 5
    assert stats.median_difference([1, 2, math.inf], [0, 0, 0])[2] == math.inf
    x = np.arange(20.0)
    rho, lo, hi = stats.spearman(x, x**3)  # monotone: rho = 1 exactly
    assert rho == pytest.approx(1.0) and lo == pytest.approx(1.0)
    rho, _, _ = stats.spearman([1, 2, 3, 4], [1, 3, 2, 4])
    assert rho == pytest.approx(1 - 6 * 2 / (4 * 15))  # 1 - 6 sum d^2 / (n (n^2 - 1)), no ties
    with pytest.raises(ValueError, match="at least 3"):
        stats.spearman([1, 2], [1, 2])
