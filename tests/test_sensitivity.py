"""Parameter sensitivity: every cell kind against jax.jacrev of the unrolled function with per-step parameter
copies (float64), the log scale at long T, per example, the Hutchinson estimate, and argument errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gradflow
from gradflow import theory as th
from gradflow.sensitivity import param_groups, param_sensitivity, param_step, unrolled_final

# ------------------------------------------------------------------------------------------- reference


def _flat_state(carry):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(carry)
                            if jnp.issubdtype(x.dtype, jnp.inexact)])


def reference_leaves(pstep, params, carry0, xs):
    """(per-step squared contributions (T, L) per params leaf, squared totals (L,), ||h_T||) from jax.jacrev
    of h_T with respect to one copy of the params per step (stacked on a leading T axis), and of the plain
    unrolled function."""
    T = jax.tree_util.tree_leaves(xs)[0].shape[0]
    stack = jax.tree_util.tree_map(lambda p: jnp.broadcast_to(p, (T, *jnp.shape(p))), params)

    def final(stacked):
        body = lambda h, px: (pstep(px[0], h, px[1]), None)  # noqa: E731
        return _flat_state(jax.lax.scan(body, carry0, (stacked, xs))[0])

    jac = jax.jacrev(final)(stack)  # leaves (n, T, *shape)
    tot = jax.jacrev(lambda p: _flat_state(unrolled_final(pstep, p, carry0, xs)))(params)
    sq = np.stack([np.sum(np.square(np.moveaxis(np.asarray(J, np.float64), 1, 0).reshape(T, -1)), axis=1)
                   for J in jax.tree_util.tree_leaves(jac)], axis=1)
    sq_t = np.array([np.sum(np.square(np.asarray(J, np.float64))) for J in jax.tree_util.tree_leaves(tot)])
    h_T = np.linalg.norm(np.asarray(_flat_state(unrolled_final(pstep, params, carry0, xs))))
    return sq, sq_t, h_T


def reference(pstep, params, carry0, xs, groups="top", leaves=None):
    """(per-step contributions (T, G), totals (G,), ||h_T||) of :func:`reference_leaves` summed by group."""
    sq, sq_t, h_T = reference_leaves(pstep, params, carry0, xs) if leaves is None else leaves
    names, leaf_group = param_groups(params, groups)
    onehot = np.eye(len(names))[list(leaf_group)]  # (L, G)
    return np.sqrt(sq @ onehot), np.sqrt(sq_t @ onehot), h_T


def _check_against_reference(pstep, params, carry0, xs, groupings=("top",), check_state=False):
    leaves = reference_leaves(pstep, params, carry0, xs)
    for groups in groupings:
        r = param_sensitivity(pstep, params, carry0, xs, groups=groups)
        c, t, h = reference(pstep, params, carry0, xs, groups, leaves)
        got_c, got_t = np.exp(np.asarray(r.log_contributions)), np.exp(np.asarray(r.log_total))
        assert np.all(c > 0), "test setting must have non-zero contributions"
        err = max(np.max(np.abs(got_c / c - 1)), np.max(np.abs(got_t / t - 1)),
                  abs(float(np.exp(r.log_state_norm)) / h - 1))
        all_c = np.sqrt(np.sum(c**2, axis=1))
        err = max(err, np.max(np.abs(np.exp(np.asarray(r.log_contribution_all)) / all_c - 1)),
                  abs(float(np.exp(r.log_total_all)) / np.sqrt(np.sum(t**2)) - 1))
        assert err < 1e-6, f"max relative error {err:.3g}"
        print(f"max relative error {err:.3g}")
    assert list(np.asarray(r.lags)) == list(range(len(c), 0, -1))
    if check_state:  # the state Jacobian of the same pass: the engine's log Frobenius norms
        step = lambda h, x: pstep(params, h, x)  # noqa: E731
        ref = gradflow.jacobian_norms(step, carry0, xs, spectral=None).log_frobenius_norms
        np.testing.assert_allclose(np.asarray(r.log_state_jacobian), np.asarray(ref), rtol=1e-10, atol=1e-10)
    return r, err


def _xs(T, B, m, seed=1, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(seed), (T, B, m), dtype)


# ------------------------------------------------------------------------------------------- cell kinds


@pytest.mark.parametrize("preset", ["tanh", "lstm"])
def test_our_cells_match_jacrev(x64, preset):
    cell = gradflow.make_cell(preset, 4, 3, dtype="float64")
    v = gradflow.init_cell(cell, jax.random.key(0))
    pstep, params = param_step(cell, v)
    carry0 = {**cell.initialize_carry(2), "h": 0.5 * jnp.ones((2, 4))}
    groupings = ("leaves", "top") if preset == "lstm" else ("top",)
    r, _ = _check_against_reference(pstep, params, carry0, _xs(7, 2, 3), groupings, check_state=True)
    assert r.groups == tuple(sorted(params))


def test_linen_gru_matches_jacrev(x64):
    cell = nn.GRUCell(features=4, param_dtype=jnp.float64)
    carry0 = 0.3 * jnp.ones((2, 4))
    v = cell.init(jax.random.key(0), carry0, jnp.ones((2, 3)))
    pstep, params = param_step(cell, v)
    r, _ = _check_against_reference(pstep, params, carry0, _xs(6, 2, 3))
    assert set(r.groups) == {"hn", "hr", "hz", "in", "ir", "iz"}


def test_nnx_cell_matches_jacrev(x64):
    cell = nnx.LSTMCell(3, 4, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    carry0 = (0.2 * jnp.ones((2, 4)), -0.1 * jnp.ones((2, 4)))
    pstep, params = param_step(cell)
    r, _ = _check_against_reference(pstep, params, carry0, _xs(6, 2, 3))
    assert "hf" in r.groups and "ii" in r.groups


def test_pure_function_matches_jacrev_and_closed_form(x64):
    k = jax.random.split(jax.random.key(3), 3)
    params = {"W": 0.5 * jax.random.normal(k[0], (4, 4), jnp.float64),
              "U": jax.random.normal(k[1], (4, 2), jnp.float64), "lam": jnp.float64(0.9)}

    def pstep(p, h, x):
        return p["lam"] * h + jnp.tanh(h @ p["W"].T + x @ p["U"].T)

    pstep_, params_ = param_step(pstep, params)
    assert pstep_ is pstep
    _check_against_reference(pstep, params, jnp.ones((3, 4)), _xs(8, 3, 2))
    # 1-D linear recurrence: ∂h_T/∂λ contributions λ^(T-t-1) h_t, by hand
    lam, T = 0.8, 6
    xs = _xs(T, 1, 1)
    r = param_sensitivity(lambda a, h, x: a * h + x, jnp.float64(lam), jnp.zeros((1, 1)), xs)
    h = np.zeros(T + 1)
    for t in range(T):
        h[t + 1] = lam * h[t] + float(xs[t, 0, 0])
    expect = np.abs(lam ** (T - 1 - np.arange(T)) * h[:T])
    np.testing.assert_allclose(np.exp(np.asarray(r.log_contributions[1:, 0])), expect[1:], rtol=1e-12)
    assert np.isneginf(float(r.log_contributions[0, 0]))  # h_0 = 0: the first step's λ h_0 is exactly 0
    total = abs(sum(lam ** (T - 1 - t) * h[t] for t in range(T)))
    np.testing.assert_allclose(float(np.exp(r.log_total[0])), total, rtol=1e-12)


# ------------------------------------------------------------------------------------------- log scale


def test_log_scale_exact_at_long_T_in_float32():
    """λ = 0.5, T = 400: contributions 0.5^(T-t-1) h_t underflow float32 (below 1e-45 after ~150 lags) but
    their logs are exact; against a float64 NumPy loop."""
    lam, T = 0.5, 400
    xs = jnp.ones((T, 1, 1), jnp.float32)
    r = param_sensitivity(lambda a, h, x: a * h + x, jnp.float32(lam), jnp.ones((1, 1), jnp.float32), xs)
    h = np.ones(T + 1)
    for t in range(T):
        h[t + 1] = lam * h[t] + 1.0
    expect = (T - 1 - np.arange(T)) * np.log(lam) + np.log(h[:T])
    got = np.asarray(r.log_contributions[:, 0], np.float64)
    assert np.all(np.isfinite(got)) and expect.min() < -200
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------------- per example


def test_per_example_equals_each_example_alone(x64):
    cell = gradflow.make_cell("tanh", 3, 2, dtype="float64")
    pstep, params = param_step(cell, gradflow.init_cell(cell, jax.random.key(1)))
    carry0 = {**cell.initialize_carry(3), "h": jax.random.normal(jax.random.key(2), (3, 3), jnp.float64)}
    xs = _xs(5, 3, 2)
    r = param_sensitivity(pstep, params, carry0, xs, per_example=True)
    assert r.log_contributions.shape == (3, 5, 3) and r.log_total.shape == (3, 3)
    for b in range(3):
        one = jax.tree_util.tree_map(lambda a, b=b: a[b:b + 1], carry0)
        c, t, h = reference(pstep, params, one, xs[:, b:b + 1])
        np.testing.assert_allclose(np.exp(np.asarray(r.log_contributions[b])), c, rtol=1e-9)
        np.testing.assert_allclose(np.exp(np.asarray(r.log_total[b])), t, rtol=1e-9)
        np.testing.assert_allclose(float(np.exp(r.log_state_norm[b])), h, rtol=1e-9)


def test_per_example_refuses_a_batch_coupled_step():
    cell = gradflow.make_cell("bn_notanh", 3, 2)
    pstep, params = param_step(cell, gradflow.init_cell(cell, jax.random.key(0)), train=True)
    carry0 = {**cell.initialize_carry(4), "h": jax.random.normal(jax.random.key(1), (4, 3))}
    with pytest.raises(ValueError, match="couples the examples"):
        param_sensitivity(pstep, params, carry0, _xs(3, 4, 2, dtype=jnp.float32), per_example=True)


# ------------------------------------------------------------------------------------------- Hutchinson


def test_hutchinson_estimate_within_its_standard_errors(x64):
    cell = gradflow.make_cell("tanh", 6, 3, dtype="float64")
    pstep, params = param_step(cell, gradflow.init_cell(cell, jax.random.key(0)))
    carry0 = {**cell.initialize_carry(2), "h": 0.5 * jnp.ones((2, 6))}
    xs = _xs(10, 2, 3)
    exact = param_sensitivity(pstep, params, carry0, xs)
    est = param_sensitivity(pstep, params, carry0, xs, probes=256, key=jax.random.key(7))
    assert est.contribution_se.shape == exact.log_contributions.shape and exact.contribution_se is None
    z_c = (np.asarray(est.log_contributions) - np.asarray(exact.log_contributions)) / np.asarray(
        est.contribution_se)
    z_t = (np.asarray(est.log_total) - np.asarray(exact.log_total)) / np.asarray(est.total_se)
    assert np.max(np.abs(z_t)) < 4.5 and np.mean(np.abs(z_c) < 3) > 0.9, (z_t, z_c)
    assert 0 < np.max(np.asarray(est.total_se)) < 0.2  # 256 probes: a few percent
    # the state Jacobian's Frobenius estimate: relative sd of ||M||_F at most sqrt(2/256)/2 = 4.4%
    d = np.asarray(est.log_state_jacobian) - np.asarray(exact.log_state_jacobian)
    assert np.max(np.abs(d)) < 0.2, d


# ------------------------------------------------------------------------------------------- loss gradient


def test_cotangent_gives_the_loss_gradient_per_step(x64):
    """L = Σ w ⊙ h_T: contributions ||∂L/∂θ_t|| per step and group against jax.grad with per-step copies."""
    cell = gradflow.make_cell("lstm", 3, 2, dtype="float64")
    pstep, params = param_step(cell, gradflow.init_cell(cell, jax.random.key(4)))
    carry0 = {**cell.initialize_carry(2), "h": 0.3 * jnp.ones((2, 3))}
    xs, T = _xs(6, 2, 2), 6
    w = jax.random.normal(jax.random.key(5), (2, 3), jnp.float64)
    cot = {"h": w, "c": jnp.zeros((2, 3)), "t": jnp.zeros((2,), jnp.int32)}
    r = param_sensitivity(pstep, params, carry0, xs, cotangent=cot)
    stack = jax.tree_util.tree_map(lambda p: jnp.broadcast_to(p, (T, *p.shape)), params)

    def loss(stacked):
        hT = jax.lax.scan(lambda h, px: (pstep(px[0], h, px[1]), None), carry0, (stacked, xs))[0]
        return jnp.sum(w * hT["h"])

    g = jax.grad(loss)(stack)
    names, _ = param_groups(params)
    for j, name in enumerate(names):
        ref = np.sqrt(sum(np.sum(np.square(np.asarray(x).reshape(T, -1)), axis=1)
                          for x in jax.tree_util.tree_leaves(g[name])))
        np.testing.assert_allclose(np.exp(np.asarray(r.log_contributions[:, j])), ref, rtol=1e-9)
        leaves = jax.tree_util.tree_leaves(g[name])
        tot = np.sqrt(sum(np.sum(np.square(np.asarray(x).sum(0))) for x in leaves))
        np.testing.assert_allclose(float(np.exp(r.log_total[j])), tot, rtol=1e-9)
    with pytest.raises(ValueError, match="not with probes"):
        param_sensitivity(pstep, params, carry0, xs, cotangent=cot, per_example=True)


# ------------------------------------------------------------------------------------------- errors


def test_bad_arguments_are_named():
    pstep = lambda a, h, x: a * h + x  # noqa: E731
    h0, xs = jnp.zeros((1, 1)), jnp.ones((3, 1, 1))
    with pytest.raises(ValueError, match="groups must be one of"):
        param_sensitivity(pstep, jnp.float32(0.5), h0, xs, groups="rows")
    with pytest.raises(ValueError, match="needs key"):
        param_sensitivity(pstep, jnp.float32(0.5), h0, xs, probes=4)
    with pytest.raises(ValueError, match="floating"):
        param_sensitivity(pstep, jnp.int32(1), h0, xs)
    with pytest.raises(ValueError, match="non-finite"):
        param_sensitivity(pstep, jnp.float32(np.nan), h0, xs)
    with pytest.raises(ValueError, match="non-finite state"):
        param_sensitivity(pstep, jnp.float32(1e30), jnp.ones((1, 1)), jnp.ones((5, 1, 1)))
    with pytest.raises(ValueError, match="unsupported cell type"):
        param_step(3, {})


# ------------------------------------------------------------------------------------------- 1-D closed forms


def test_memory_closed_forms_equal_their_double_sums():
    """E[h²] = Σ λ^{k+l} ρ^|k−l| and E[(∂h/∂λ)²] = Σ k l λ^{k+l−2} ρ^|k−l| (truncated where λ^k < 1e-300)."""
    for lam, rho in [(0.5, 0.0), (0.8, 0.7), (0.95, -0.4)]:
        k = np.arange(2000.0)
        M = rho ** np.abs(k[:, None] - k[None, :])
        a, b = lam**k, k * lam ** (k - 1)
        np.testing.assert_allclose(th.memory_state_moment(lam, rho), a @ M @ a, rtol=1e-12)
        np.testing.assert_allclose(th.memory_sensitivity_moment(lam, rho), b @ M @ b, rtol=1e-12)
    with pytest.raises(ValueError, match="lam must lie"):
        th.memory_state_moment(1.0)
    with pytest.raises(ValueError, match="rho must lie"):
        th.memory_sensitivity_moment(0.5, 1.0)


def monte_carlo_moments(lam, rhos, chains, seed):
    """E[h²] and E[(∂h/∂λ)²] with their standard errors from independent chains (float64 NumPy): AR(1)
    inputs of unit variance started stationary, h and d = ∂h/∂λ (d_t = λ d_{t−1} + h_{t−1}) from 0, burn-in
    10/(1 − λ) steps (the transient's share of E[d²] is then below 1e-6), one sample per chain."""
    rng = np.random.default_rng(seed)
    rhos = np.asarray(rhos, np.float64)[:, None]
    x = rng.standard_normal((len(rhos), chains))
    h, d = np.zeros_like(x), np.zeros_like(x)
    s = np.sqrt(1 - rhos**2)
    for _ in range(int(np.ceil(10 / (1 - lam)))):
        d = lam * d + h
        h = lam * h + x
        x = rhos * x + s * rng.standard_normal(x.shape)
    out = []
    for v in (h**2, d**2):
        out.append((v.mean(axis=1), v.std(axis=1, ddof=1) / np.sqrt(chains)))
    return out


def test_memory_closed_forms_hold_in_monte_carlo():
    rhos = (0.0, 0.5, 0.9)
    lines = []
    for i, lam in enumerate((0.9, 0.99, 0.999)):
        (mh, sh), (md, sd) = monte_carlo_moments(lam, rhos, chains=8000, seed=i)
        for j, rho in enumerate(rhos):
            for what, mc, se, f in (("E[h²]", mh[j], sh[j], th.memory_state_moment),
                                    ("E[(∂h/∂λ)²]", md[j], sd[j], th.memory_sensitivity_moment)):
                theory = f(lam, rho)
                z = (mc - theory) / se
                lines.append(f"λ={lam} ρ={rho} {what}: mc {mc:.6g} theory {theory:.6g} se {se:.3g} "
                             f"({se / theory:.2%}) z {z:+.2f}")
                assert abs(z) < 4, lines[-1]
    print("\n".join(lines))


def test_memory_analysis_knobs():
    """The analysis' γ_x(λ) reaches theory.critical_input_gamma at λ = 1 and gives the mean-field rate ln λ;
    its two-column 1-D step gives ∂h/∂λ and ∂h/∂ν = λ ln λ · ∂h/∂λ in one pass."""
    from analyses import memory

    for n in (5, 8, 16):
        critical = th.critical_input_gamma("bn_notanh", batch_size=n)
        assert memory.gamma_x_for_rate(n, 1.0) == pytest.approx(critical)
        for lam in (0.5, 0.9):
            g = memory.gamma_x_for_rate(n, lam)
            assert th.bn_train_rate(1.0, g, batch_size=n) == pytest.approx(np.log(lam), rel=1e-9)
    lam = 0.7
    p = {"lam": jnp.float32(lam), "nu": jnp.float32(np.log(-np.log(lam)))}
    r = param_sensitivity(memory.pair_step, p, jnp.zeros((1, 2)), jnp.ones((4, 1, 1)))
    t = np.exp(np.asarray(r.log_total))
    dl = sum(lam ** (3 - t_) * (1 - lam**t_) / (1 - lam) for t_ in range(4))  # Σ λ^(T-1-t) h_t, h_t = Σ λ^k
    np.testing.assert_allclose(t[r.groups.index("lam")], dl, rtol=1e-5)
    np.testing.assert_allclose(t[r.groups.index("nu")], abs(lam * np.log(lam)) * dl, rtol=1e-5)
