"""Test helpers shared by the test modules (random arrays, the small tanh RNN most engine tests use)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rand(key, shape, scale=1.0):
    """``scale`` times standard normal numbers from ``jax.random.PRNGKey(key)``."""
    return scale * jax.random.normal(jax.random.PRNGKey(key), shape)


def tanh_rnn(n, T, gain, w_key, x_key, x_scale=0.5):
    """``(step, h0, xs)`` of h_t = tanh(W h_{t-1} + x_t) with W ~ gain/√n N(0, 1), h_0 = 0, batch 1."""
    W = rand(w_key, (n, n), gain / np.sqrt(n))
    return (lambda h, x: jnp.tanh(h @ W.T + x)), jnp.zeros((1, n)), rand(x_key, (T, 1, n), x_scale)
