"""Batch blocks: example-major block extraction, block norms, frozen-statistics comparison."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow.batch import batch_block_norms, batch_blocks, frozen_statistics_comparison
from gradflow.jacobians import jacobians
from tests.helpers import rand

EPS = 1e-5


def _bn(a):
    mu = a.mean(axis=0, keepdims=True)
    return (a - mu) / jnp.sqrt(((a - mu) ** 2).mean(axis=0, keepdims=True) + EPS)


def test_blocks_are_example_major_submatrices_of_the_lstm_like_jacobian(x64):
    """Dict carry {c, h, t}: the state is [c (B*d), h (B*d)]; example b owns c[b] and h[b]."""
    d, B, T = 2, 3, 4
    W = rand(0, (2 * d, d), 0.8)

    def step(carry, x):
        z = carry["h"] @ W.T + x
        c = jax.nn.sigmoid(z[:, :d]) * carry["c"] + jnp.tanh(z[:, d:])
        c = c + 0.1 * c.mean(axis=0, keepdims=True)  # couple the examples
        return {"h": jnp.tanh(c), "c": c, "t": carry["t"] + 1}

    carry0 = {"c": rand(1, (B, d)), "h": rand(2, (B, d)), "t": jnp.zeros((B,), jnp.int32)}
    xs = rand(3, (T, B, 2 * d))
    M = np.asarray(jacobians(step, carry0, xs).matrices)
    blocks = np.asarray(batch_blocks(step, carry0, xs))
    assert blocks.shape == (T, B, B, 2 * d, 2 * d)
    idx = [np.r_[b * d : (b + 1) * d, B * d + b * d : B * d + (b + 1) * d] for b in range(B)]
    for a in range(B):
        for b in range(B):
            np.testing.assert_array_equal(blocks[:, a, b], M[:, idx[a]][:, :, idx[b]])
    norms = batch_block_norms(step, carry0, xs)
    diag_ref = np.stack([np.linalg.norm(blocks[:, b, b], axis=(1, 2)) for b in range(B)], axis=1)
    np.testing.assert_allclose(norms.diagonal, diag_ref, rtol=1e-12)
    spec_ref = np.stack([np.linalg.norm(blocks[:, b, b], 2, axis=(1, 2)) for b in range(B)], axis=1)
    np.testing.assert_allclose(norms.diagonal_spectral, spec_ref, rtol=1e-12)
    off = blocks.copy()
    for b in range(B):
        off[:, b, b] = 0
    cross_ref = np.sqrt((off**2).sum(axis=(1, 2, 3, 4)))
    np.testing.assert_allclose(norms.cross, cross_ref, rtol=1e-12)
    np.testing.assert_allclose(norms.ratio, cross_ref / np.linalg.norm(diag_ref, axis=1), rtol=1e-12)
    assert np.all(np.asarray(norms.cross) > 0)


def test_decoupled_step_has_no_cross_blocks(x64):
    d, B, T = 3, 4, 5
    W = rand(4, (d, d), 0.9)
    r = batch_block_norms(lambda h, x: jnp.tanh(h @ W.T + x), rand(5, (B, d)), rand(6, (T, B, d)))
    np.testing.assert_array_equal(r.cross, 0.0)
    assert np.all(np.asarray(r.diagonal) > 0)


def test_frozen_statistics_comparison_bn_without_tanh(x64):
    """True BN step (batch statistics) versus the same step with the statistics of the true trajectory frozen.

    The frozen step is per-example: its blocks equal the Jacobians of each example run alone (B = 1).
    """
    d, din, B, T = 3, 2, 8, 12
    W, U = rand(7, (d, d), 1.0 / np.sqrt(d)), rand(8, (d, din))
    xs = rand(9, (T, B, din))
    true_step = lambda c, x: {"h": _bn(c["h"] @ W.T) + _bn(x @ U.T), "t": c["t"] + 1}
    carry0 = {"h": rand(10, (B, d)), "t": jnp.zeros((B,), jnp.int32)}
    # statistics of a_t = h_{t-1} W^T along the true trajectory, and of the input path
    hs, c = [], carry0
    for x in xs:
        hs.append(c["h"])
        c = true_step(c, x)
    A = jnp.stack([h @ W.T for h in hs])
    mu, var = A.mean(axis=1), A.var(axis=1)
    xin = jnp.stack([_bn(x @ U.T) for x in xs])  # input path does not depend on h

    def frozen_step(c, x):
        t = c["t"][0]
        h = (c["h"] @ W.T - mu[t]) / jnp.sqrt(var[t] + EPS) + xin[t]
        return {"h": h, "t": c["t"] + 1}

    cmp = frozen_statistics_comparison(true_step, frozen_step, carry0, xs)
    np.testing.assert_array_equal(cmp.frozen.cross, 0.0)
    assert np.all(np.asarray(cmp.true.cross) > 0)
    # frozen per-example Jacobian: with statistics fixed the map is linear, h -> (h W^T - mu) / sigma
    for lag in (1, T):
        t = T - lag
        P = np.eye(d)
        for s in range(T - 1, t - 1, -1):
            P = P @ (np.diag(1 / np.sqrt(np.asarray(var[s]) + EPS)) @ np.asarray(W))
        np.testing.assert_allclose(cmp.frozen.diagonal_spectral[t], np.linalg.norm(P, 2), rtol=1e-10)
    np.testing.assert_allclose(cmp.overstatement, cmp.frozen.diagonal_spectral / cmp.true.diagonal_spectral)
    # the frozen step reproduces the true trajectory (same statistics), so only the coupling differs
    cf, ct = carry0, carry0
    for x in xs:
        cf, ct = frozen_step(cf, x), true_step(ct, x)
    np.testing.assert_allclose(cf["h"], ct["h"], rtol=1e-10, atol=1e-12)


def test_bad_inputs():
    carry = {"h": jnp.zeros((2, 3)), "g": jnp.zeros((3, 3))}
    with pytest.raises(ValueError, match="batch axis"):
        batch_block_norms(lambda c, x: c, carry, jnp.zeros((2, 2, 1)))


def test_batch_of_one_has_per_lag_shapes_and_values(x64):
    """B = 1 (one renormalization group): fields (T, 1) and (T,), equal to the whole Jacobian's norms (the
    old code broadcast the (T,) log scale against (T, 1) to (T, T))."""
    d, T = 3, 7
    W = rand(0, (d, d), 0.9)
    step = lambda h, x: jnp.tanh(h @ W.T + x)
    h0, xs = rand(1, (1, d), 0.5), rand(2, (T, 1, d), 0.5)
    b = batch_block_norms(step, h0, xs)
    M = np.asarray(jacobians(step, h0, xs, spectral=None).matrices)
    assert b.log_frobenius_norms.shape == (T, 1) and b.log_diagonal_total.shape == (T,)
    fro, spec = np.linalg.norm(M, axis=(1, 2)), np.linalg.norm(M, 2, axis=(1, 2))
    np.testing.assert_allclose(b.log_frobenius_norms[:, 0], np.log(fro), rtol=1e-10)
    np.testing.assert_allclose(b.log_spectral_norms[:, 0], np.log(spec), rtol=1e-10)
    np.testing.assert_allclose(b.log_diagonal_total, b.log_frobenius_norms[:, 0], rtol=1e-12)
    assert np.all(np.isneginf(np.asarray(b.log_cross)))
    fc = frozen_statistics_comparison(step, step, h0, xs)
    np.testing.assert_allclose(fc.overstatement, np.ones((T, 1)), rtol=1e-12)
