"""Functional BN / LN against NumPy; zero variance; large offsets; the BatchNorm module's statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow.norm import BatchNorm, LayerNorm, batch_moments, batch_norm, layer_norm


def np_bn(z, g, b, eps):
    m = z.mean(0)
    return g * (z - m) / np.sqrt(((z - m) ** 2).mean(0) + eps) + b


def np_ln(z, g, b, eps):
    m = z.mean(-1, keepdims=True)
    return g * (z - m) / np.sqrt(((z - m) ** 2).mean(-1, keepdims=True) + eps) + b


def test_batch_and_layer_norm_match_numpy(x64):
    rng = np.random.default_rng(0)
    z, g, b = rng.normal(size=(7, 5)) * 3 + 2, rng.uniform(0.5, 2, 5), rng.normal(size=5)
    np.testing.assert_allclose(batch_norm(jnp.asarray(z), g, b, 1e-5), np_bn(z, g, b, 1e-5), atol=1e-12)
    np.testing.assert_allclose(layer_norm(jnp.asarray(z), g, b, 1e-3), np_ln(z, g, b, 1e-3), atol=1e-12)
    np.testing.assert_allclose(batch_norm(jnp.asarray(z), g, None), np_bn(z, g, 0.0, 1e-5), atol=1e-12)


def test_zero_variance_gives_beta_and_finite_gradients():
    g, b = jnp.full(3, 2.0), jnp.arange(3.0)
    for z in (jnp.array([[0.3, -1.7, 5.0]]), jnp.tile(jnp.array([[0.3, -1.7, 5.0]]), (8, 1))):
        out = batch_norm(z, g, b)
        np.testing.assert_allclose(out, jnp.broadcast_to(b, z.shape), atol=1e-9, rtol=0)
        grad = jax.grad(lambda z: jnp.sum(batch_norm(z, g, b) * jnp.arange(1.0, 4.0)))(z)
        assert np.all(np.isfinite(np.asarray(grad)))
    out = layer_norm(jnp.full((2, 4), 7.0), jnp.ones(4), jnp.ones(4))
    np.testing.assert_allclose(out, 1.0, atol=1e-9)


def test_variance_accurate_under_large_offset():
    """float32 data at offset 1e4, spread 0.1: E[z²] − E[z]² cancels catastrophically, mean((z−m)²) not."""
    rng = np.random.default_rng(1)
    z = (1e4 + 0.1 * rng.normal(size=(256, 4))).astype(np.float32)
    _, var = batch_moments(jnp.asarray(z))
    ref = z.astype(np.float64).var(0)
    np.testing.assert_allclose(np.asarray(var), ref, rtol=1e-2)
    naive = (z.astype(np.float32) ** 2).mean(0) - z.mean(0) ** 2
    assert np.max(np.abs(naive - ref) / ref) > 0.1  # the naive formula really fails here


def test_eps_must_be_positive():
    z = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="eps"):
        batch_norm(z, jnp.ones(3), eps=0.0)
    with pytest.raises(ValueError, match="eps"):
        layer_norm(z, jnp.ones(3), eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        BatchNorm(3, eps=0.0).init(jax.random.key(0), z, jnp.zeros(2, jnp.int32), False)
    with pytest.raises(ValueError, match="eps"):
        LayerNorm(3, eps=float("nan")).init(jax.random.key(0), z)


@pytest.mark.parametrize("per_step", [True, False])
def test_batchnorm_module_statistics(per_step):
    mod = BatchNorm(3, per_step_stats=per_step, t_max=4, gamma_init=0.5, momentum=0.8)
    z = jnp.asarray(np.random.default_rng(2).normal(size=(6, 3)) + 1.0, jnp.float32)
    t = jnp.full(6, 9, jnp.int32)  # beyond t_max: row 3
    v = mod.init(jax.random.key(0), z, t, False)
    shape = (4, 3) if per_step else (3,)
    assert v["batch_stats"]["mean"].shape == shape and v["params"]["scale"].shape == (3,)
    out, upd = mod.apply(v, z, t, True, mutable=["batch_stats"])
    zn = np.asarray(z, np.float64)
    np.testing.assert_allclose(out, 0.5 * (zn - zn.mean(0)) / np.sqrt(zn.var(0) + 1e-5), atol=1e-5)
    new_mean = np.asarray(upd["batch_stats"]["mean"])
    expect = 0.8 * 0.0 + 0.2 * zn.mean(0)
    if per_step:
        np.testing.assert_allclose(new_mean[3], expect, atol=1e-6)
        np.testing.assert_array_equal(new_mean[:3], 0.0)
    else:
        np.testing.assert_allclose(new_mean, expect, atol=1e-6)
    # eval: the running statistics, a fixed affine map of z
    v2 = {"params": v["params"], "batch_stats": upd["batch_stats"]}
    m = np.asarray(upd["batch_stats"]["mean"])[3 if per_step else ...]
    var = np.asarray(upd["batch_stats"]["var"])[3 if per_step else ...]
    np.testing.assert_allclose(mod.apply(v2, z, t, False), 0.5 * (zn - m) / np.sqrt(var + 1e-5), atol=1e-5)


def test_huge_inputs_are_normalized_scale_invariantly():
    """z * 1e20: z² overflows float32; BN and LN are computed on z / 2^k, exactly the same function."""
    z = jax.random.normal(jax.random.PRNGKey(0), (6, 5))
    g, b = jnp.linspace(0.5, 1.5, 5), jnp.linspace(-1.0, 1.0, 5)
    for f, axis in ((batch_norm, 0), (layer_norm, -1)):
        small = np.asarray(f(z, g, b, eps=1e-30))  # eps negligible, as it is against var(1e20 z)
        big = np.asarray(f(z * 1e20, g, b))
        assert np.all(np.isfinite(big))
        np.testing.assert_allclose(big, small, rtol=1e-5, atol=1e-5)
        # reference in float64 from the definition
        z64 = np.asarray(z, np.float64) * 1e20
        zc = z64 - z64.mean(axis=axis, keepdims=True)
        ref = zc / np.sqrt((zc**2).mean(axis=axis, keepdims=True) + 1e-5) * np.asarray(g) + np.asarray(b)
        np.testing.assert_allclose(big, ref, rtol=1e-5, atol=1e-5)
        # a power-of-2 scale: the same as the unscaled input with eps / 4^k, to rounding
        np.testing.assert_allclose(np.asarray(f(z * 2.0**40, g, b, eps=1e-5)),
                                   np.asarray(f(z, g, b, eps=1e-5 * 2.0**-80)), rtol=4e-7, atol=4e-7)
        # and the derivative is finite and scale-covariant: d/dz f(s z) = s f'(s z)
        J_big = jax.jacfwd(lambda u, f=f: f(u * 1e20, g, b).ravel())(z)
        J_small = jax.jacfwd(lambda u, f=f: f(u, g, b, eps=1e-30).ravel())(z)
        np.testing.assert_allclose(np.asarray(J_big), np.asarray(J_small), rtol=1e-4, atol=1e-4)


def test_bn_notanh_lag_norm_with_huge_inputs_matches_unit_inputs():
    """The issue's case: bn_notanh on xs * 1e20 (before: lag-12 log norm off by ~34 nats); equal to xs * 1
    up to the effect of eps (BN_x sees a variance 1e40 times larger)."""
    import gradflow

    cell = gradflow.make_cell("bn_notanh", 8, 2)
    v = gradflow.init_cell(cell, jax.random.PRNGKey(0))
    step = gradflow.as_step(cell, v, train=True)
    xs = jax.random.normal(jax.random.PRNGKey(1), (12, 4, 2))
    r1, r2 = (gradflow.jacobian_norms(step, cell.initialize_carry(4), xs * s) for s in (1.0, 1e20))
    np.testing.assert_allclose(r2.log_spectral_norms, r1.log_spectral_norms, atol=5e-3)
