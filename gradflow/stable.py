"""Saturating nonlinearities whose derivatives do not cancel to zero in float32.

JAX differentiates ``jnp.tanh`` as (1 + y)(1 − y) with y = tanh(a): for |a| > ~9 (float32) y rounds to ±1
and the derivative to exactly 0, although sech²(a) ≈ 4 e^{−2|a|} is a normal float32 number up to |a| ≈ 44.
``jax.nn.sigmoid``'s s(1 − s) likewise gives 0 for a > ~17. Here the values are JAX's own (bit-identical), the
derivatives are computed from e^{−|a|} without cancellation, and every higher derivative is too:

- tanh'(a) = sech²(a) = (2e/(1 + e²))², e = e^{−|a|};   (sech²)' = −2 tanh · sech²;
- sigmoid'(a) = q(a) = e/(1 + e)²;                          q' = −q · tanh(a/2).

So a Jacobian entry is 0 only where the true value is below float32's normal range, and Hessians (flossing
differentiates through Jacobians) stay exact at every order.

Example:
    >>> import jax
    >>> f"{float(jax.grad(tanh)(12.0)):.4e}"  # sech²(12); jax.grad(jnp.tanh)(12.0) is 0.0
    '1.5101e-10'
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["tanh", "sigmoid", "sech2", "sigmoid_prime"]


def _numeric(fname: str, a):
    """``a`` when it is a number or a numeric array (JAX arrays and tracers pass unlooked-at); else TypeError
    naming the argument (a string would otherwise reach ``jax.custom_jvp`` and fail there, cryptically)."""
    if isinstance(a, jax.Array | bool | int | float | complex | np.number):
        return a
    if isinstance(a, np.ndarray) and jnp.issubdtype(a.dtype, jnp.number):
        return a
    raise TypeError(f"gradflow.stable.{fname}: the argument a = {a!r} must be a number or a numeric array, "
                    f"got {type(a).__name__}"[:300])


def tanh(a):
    """tanh(a), values equal to ``jnp.tanh``; derivative sech²(a) without cancellation (any shape)."""
    return _tanh(_numeric("tanh", a))


def sech2(a):
    """sech²(a) = (2e/(1 + e²))², e = e^{−|a|}: relative error a few ulps wherever the result is normal."""
    return _sech2(_numeric("sech2", a))


def sigmoid(a):
    """The logistic sigmoid, values equal to ``jax.nn.sigmoid``; derivative e/(1 + e)², e = e^{−|a|}."""
    return _sigmoid(_numeric("sigmoid", a))


def sigmoid_prime(a):
    """σ'(a) = σ(a)(1 − σ(a)) = e/(1 + e)², e = e^{−|a|} (no cancellation)."""
    return _sigmoid_prime(_numeric("sigmoid_prime", a))


@jax.custom_jvp
def _tanh(a):
    return jnp.tanh(a)


@jax.custom_jvp
def _sech2(a):
    e = jnp.exp(-jnp.abs(a))
    s = 2.0 * e / (1.0 + e * e)
    return s * s


@jax.custom_jvp
def _sigmoid(a):
    return jax.nn.sigmoid(a)


@jax.custom_jvp
def _sigmoid_prime(a):
    e = jnp.exp(-jnp.abs(a))
    return e / jnp.square(1.0 + e)


@_tanh.defjvp
def _tanh_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    return _tanh(a), _sech2(a) * da


@_sech2.defjvp
def _sech2_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    y = _sech2(a)
    return y, -2.0 * _tanh(a) * y * da


@_sigmoid.defjvp
def _sigmoid_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    return _sigmoid(a), _sigmoid_prime(a) * da


@_sigmoid_prime.defjvp
def _sigmoid_prime_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    y = _sigmoid_prime(a)
    return y, -y * _tanh(0.5 * a) * da
