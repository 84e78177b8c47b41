"""Functional batch and layer normalization, and the linen modules our cells use.

BN(z; γ, β) = β + γ ⊙ (z − mean_batch z) / sqrt(var_batch z + ε), per feature, over the batch axis.
LN(z; γ, β) = β + γ ⊙ (z − mean_features z) / sqrt(var_features z + ε), per example, over the last axis.

Variances are computed as mean((z − mean)²) with two-pass centering (never E[z²] − E[z]², which can go
negative in float32), and
ε > 0 is enforced, so a feature whose batch variance is zero (batch size 1, or constant inputs such as the
first pixels of sequential MNIST) normalizes to exactly zero instead of producing inf or NaN.

Scale: the statistics are computed on z / s, s the power of 2 at or above max |z| over the normalized axis
(1 when max |z| <= 1), with ε / s² in place of ε. This is the same function (scaling by a power of 2 commutes
with rounding: inputs with max |z| <= 1 give the same bits as before, others agree to a few ulps), but z²
cannot overflow: BN and LN work over float32's whole input range (z ~ 1e20 used to give a variance of inf
and an output of 0). Where ε / s² underflows, ε is negligible against the variance anyway. ``s`` is a
constant under differentiation (the function does not depend on it). The running variance (train mode) is
var(z / s) s², which can still overflow for |z| beyond ~1e19: eval mode then needs inputs of a representable
variance.

Recurrent BN (Cooijmans et al. 2016) keeps its running statistics per time step: ``mean`` and ``var`` of shape
(t_max, features), row ``min(t, t_max - 1)`` used at step t, so a sequence longer than t_max reuses the
last row.
With ``per_step_stats=False`` one (features,) pair is shared over time.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gradflow.checks import float32_representable, positive_float, real_array
from gradflow.statemap import check_finite, is_traced

__all__ = ["batch_moments", "normalize", "batch_norm", "layer_norm", "BatchNorm", "LayerNorm"]


def _check_operands(z, scale, bias, axis: int) -> None:
    """Refuse, naming the argument, what batch_norm / layer_norm cannot normalize: z without the axis
    ``axis`` or empty along it, scale / bias not of shape (F,) (a scalar broadcasts), and concrete values
    that are not real numbers, not finite, or float64 beyond float32's range without x64 (JAX would make
    them inf or 0). Shapes only for traced values."""
    named = (("z", z), ("scale", scale)) + ((("bias", bias),) if bias is not None else ())
    for name, v in named:
        if not is_traced(v):
            real_array(name, v)  # None, strings, bools, complex numbers
            check_finite(v, name)
            float32_representable(name, v)
    shape = np.shape(z)
    if axis == 0 and len(shape) < 2:
        raise ValueError(f"batch_norm expects z of shape (B, F) (statistics over the batch axis 0), got "
                         f"shape {shape}: for one example's features use layer_norm")
    if len(shape) == 0:
        raise ValueError("layer_norm expects z of shape (..., F) (statistics over the last axis), got a "
                         "scalar")
    if shape[axis] == 0:
        raise ValueError(f"z is empty along the normalized axis {axis} (shape {shape}): nothing to normalize")
    for name, v in named[1:]:
        if np.shape(v) not in ((), (shape[-1],)):
            raise ValueError(f"{name} must have shape ({shape[-1]},), one value per feature of z (shape "
                             f"{shape}), got shape {np.shape(v)}")


def batch_moments(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-feature batch mean and (biased) variance.

    Args:
        z: (B, F) pre-activations.

    Returns:
        ``(mean, var)``, each (F,), with ``var = mean((z - mean)**2)`` (always >= 0).
    """
    mean, var, _ = scaled_statistics(z, 0, 1.0)
    return mean[0], var[0]


def _center(z: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """Two-pass centering: ``(mean, z - mean)`` (keepdims), with the rounding error of the first mean removed.

    For a constant feature (zero variance) the one-pass ``z - mean(z)`` is a rounding residual of order
    ulp(z), which 1/sqrt(ε) then amplifies (≈ 2e-5 for float32 values of order 1 and ε = 1e-5); the second
    pass brings it down to order ulp(ulp(z)).
    """
    m1 = jnp.mean(z, axis=axis, keepdims=True)
    zc = z - m1
    corr = jnp.mean(zc, axis=axis, keepdims=True)
    return m1 + corr, zc - corr


def scaled_statistics(z: jax.Array, axis: int, eps: float):
    """Mean, variance and normalized values over ``axis`` without overflow (see the module docstring).

    Args:
        z: array; ``axis`` the axis normalized over.
        eps: ε > 0.

    Returns:
        ``(mean, var, zhat)``: mean and var keepdims (var may be inf where z's variance exceeds the dtype's
        range), zhat = (z − mean) / sqrt(var + ε) of z's shape, always finite for finite z.
    """
    a = jnp.max(jnp.abs(z), axis=axis, keepdims=True)
    s = jax.lax.stop_gradient(jnp.exp2(jnp.ceil(jnp.log2(jnp.maximum(a, 1.0)))))
    m, zc = _center(z / s, axis)
    var = jnp.mean(jnp.square(zc), axis=axis, keepdims=True)
    return m * s, var * s * s, zc * jax.lax.rsqrt(var + eps / (s * s))


def normalize(z: jax.Array, mean: jax.Array, var: jax.Array, eps: float) -> jax.Array:
    """(z - mean) / sqrt(var + eps), broadcasting ``mean`` and ``var`` against ``z``."""
    positive_float("eps", eps)
    return (z - mean) * jax.lax.rsqrt(var + eps)


def batch_norm(z: jax.Array, scale: jax.Array, bias: jax.Array | None = None, eps: float = 1e-5) -> jax.Array:
    """Batch normalization with batch statistics (train mode).

    Args:
        z: (B, F), B >= 1.
        scale: γ, (F,).
        bias: β, (F,) or None for β = 0.
        eps: > 0.

    Returns:
        (B, F) array ``β + γ ⊙ (z − mean_B z) / sqrt(var_B z + eps)``.

    Raises:
        ValueError: naming ``z``, ``scale``, ``bias`` or ``eps``: a bad shape (scale / bias not (F,); a
            scalar broadcasts), an empty batch, and (concrete values only; traced ones are not checked)
            values that are not real numbers, NaN or inf, or float64 beyond float32's range without x64.

    Example:
        >>> import jax.numpy as jnp
        >>> batch_norm(jnp.array([[1.0], [3.0]]), jnp.ones(1)).round(3).tolist()
        [[-1.0], [1.0]]
    """
    positive_float("eps", eps)
    _check_operands(z, scale, bias, 0)
    out = scaled_statistics(z, 0, eps)[2] * scale
    return out if bias is None else out + bias


def layer_norm(z: jax.Array, scale: jax.Array, bias: jax.Array | None = None, eps: float = 1e-5) -> jax.Array:
    """Layer normalization over the last axis.

    Args:
        z: (..., F), F >= 1.
        scale: γ, (F,).
        bias: β, (F,) or None for β = 0.
        eps: > 0.

    Returns:
        Array of ``z``'s shape: ``β + γ ⊙ (z − mean_F z) / sqrt(var_F z + eps)``.

    Raises:
        ValueError: as :func:`batch_norm` (F = 0 is empty here).
    """
    positive_float("eps", eps)
    _check_operands(z, scale, bias, -1)
    out = scaled_statistics(z, -1, eps)[2] * scale
    return out if bias is None else out + bias


class BatchNorm(nn.Module):
    """Batch normalization for a recurrence, with per-time-step or shared running statistics.

    Train mode: ``β + γ ⊙ (z − mean_B z) / sqrt(var_B z + ε)`` with the batch's statistics (this couples the
    examples of the batch); when the ``batch_stats`` collection is mutable the running averages of row
    ``min(t, t_max − 1)`` are updated: ``r ← momentum · r + (1 − momentum) · batch value``.
    Eval mode: the running averages (a fixed affine map).

    Attributes:
        features: F.
        per_step_stats: (t_max, F) statistics indexed by min(t, t_max − 1) if True, else (F,) shared.
        t_max: number of stored statistics rows.
        gamma_init: initial γ (constant).
        use_bias: learnable β (initialised at 0) if True, else β = 0 fixed.
        momentum: running-average momentum.
        eps: ε > 0.
        param_dtype: dtype of parameters and statistics.

    The normalized values (before γ, β) are sown as ``intermediates/normalized``.
    """

    features: int
    per_step_stats: bool = True
    t_max: int = 100
    gamma_init: float = 1.0
    use_bias: bool = True
    momentum: float = 0.9
    eps: float = 1e-5
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, t: jax.Array, train: bool, moments=None) -> jax.Array:
        """Normalize.

        Args:
            z: (B, F).
            t: (B,) int step counters (steps already taken).
            train: batch statistics (True) or running averages (False).
            moments: optional ``(mean, var)``, each (F,), used in train mode instead of this batch's
                statistics (and fed to the running averages); e.g. statistics over a whole sequence.

        Returns:
            (B, F).
        """
        positive_float("eps", self.eps)
        shape = (self.t_max, self.features) if self.per_step_stats else (self.features,)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(shape, self.param_dtype))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones(shape, self.param_dtype))
        scale = self.param(
            "scale", nn.initializers.constant(self.gamma_init), (self.features,), self.param_dtype
        )
        bias = (
            self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        rows = jnp.minimum(t, self.t_max - 1)
        if train and moments is not None:
            mean, var = moments
            zhat = normalize(z, mean, var, self.eps)
        elif train:
            mean, var, zhat = scaled_statistics(z, 0, self.eps)
            mean, var = mean[0], var[0]
        if train:
            if self.is_mutable_collection("batch_stats") and not self.is_initializing():
                m = self.momentum
                if self.per_step_stats:
                    # One row per call: the batch is assumed to be at one step (the first example's count).
                    r = rows[0]
                    ra_mean.value = ra_mean.value.at[r].set(m * ra_mean.value[r] + (1 - m) * mean)
                    ra_var.value = ra_var.value.at[r].set(m * ra_var.value[r] + (1 - m) * var)
                else:
                    ra_mean.value = m * ra_mean.value + (1 - m) * mean
                    ra_var.value = m * ra_var.value + (1 - m) * var
        else:
            if self.per_step_stats:
                mean, var = ra_mean.value[rows], ra_var.value[rows]
            else:
                mean, var = ra_mean.value, ra_var.value
            zhat = normalize(z, mean, var, self.eps)
        self.sow("intermediates", "normalized", zhat)
        out = zhat * scale
        return out if bias is None else out + bias


class LayerNorm(nn.Module):
    """Layer normalization over the features of each example: ``β + γ ⊙ (z − μ) / sqrt(σ² + ε)``.

    Attributes:
        features: F.
        gamma_init: initial γ (constant).
        use_bias: learnable β (initialised at 0) if True, else β = 0 fixed.
        eps: ε > 0.
        param_dtype: dtype of parameters.
    """

    features: int
    gamma_init: float = 1.0
    use_bias: bool = True
    eps: float = 1e-5
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        """Normalize z: (..., F) -> (..., F)."""
        positive_float("eps", self.eps)
        scale = self.param(
            "scale", nn.initializers.constant(self.gamma_init), (self.features,), self.param_dtype
        )
        bias = (
            self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        return layer_norm(z, scale, bias, self.eps)
