"""Cells against independent NumPy implementations of their equations, BN modes, inits, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow
from gradflow.cells import CellSpec

# -------------------------------------------------- independent NumPy references (no gradflow code)

EPS = 1e-5


def sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def bn(z, gamma, beta, stats):
    """stats None: batch statistics; else (mean, var) rows to use."""
    if stats is None:
        m = z.mean(axis=0)
        v = ((z - m) ** 2).mean(axis=0)
    else:
        m, v = stats
    out = gamma * (z - m) / np.sqrt(v + EPS)
    return out if beta is None else out + beta


def ln(z, gamma, beta):
    m = z.mean(axis=-1, keepdims=True)
    v = ((z - m) ** 2).mean(axis=-1, keepdims=True)
    out = gamma * (z - m) / np.sqrt(v + EPS)
    return out if beta is None else out + beta


def lstm_tail(a, c, d, norm_c):
    f, i, o, g = a[:, :d], a[:, d : 2 * d], a[:, 2 * d : 3 * d], a[:, 3 * d :]
    c_new = sig(f) * c + sig(i) * np.tanh(g)
    return sig(o) * np.tanh(norm_c(c_new)), c_new


def reference_step(name, P, S, h, c, x, row):
    """One step of preset ``name`` written out from its equation. P: params, S: batch_stats or None."""
    d = h.shape[1]

    def st(mod):  # eval: running statistics of row `row`; train: None (batch statistics)
        return None if S is None else (S[mod]["mean"][row], S[mod]["var"][row])

    g = lambda mod: P[mod]["scale"]
    hW, xW = (h @ P["W_hh"].T, x @ P["W_xh"].T) if "W_hh" in P else (None, None)
    if name == "tanh":
        return np.tanh(hW + xW + P["b"]), None
    if name == "linear":
        return hW + xW + P["b"], None
    if name == "bn_notanh":
        return bn(hW, g("bn_h"), None, st("bn_h")) + bn(xW, g("bn_x"), P["bn_x"]["bias"], st("bn_x")), None
    if name == "bn_input_tanh":
        return np.tanh(bn(xW, g("bn_x"), None, st("bn_x")) + hW + P["b"]), None
    if name == "bn_tanh":
        a = bn(hW, g("bn_h"), None, st("bn_h")) + bn(xW, g("bn_x"), None, st("bn_x")) + P["b"]
        return np.tanh(a), None
    if name == "ln_notanh":
        return ln(hW, g("ln_h"), None) + bn(xW, g("bn_x"), P["bn_x"]["bias"], st("bn_x")), None
    if name == "ln_tanh":
        return np.tanh(ln(hW + xW, g("ln_sum"), None) + P["b"]), None
    if name == "lstm":
        return lstm_tail(hW + xW + P["b"], c, d, lambda z: z)
    if name == "bn_lstm":
        a = bn(hW, g("bn_h"), None, st("bn_h")) + bn(xW, g("bn_x"), None, st("bn_x")) + P["b"]
        return lstm_tail(a, c, d, lambda z: bn(z, g("bn_c"), P["bn_c"]["bias"], st("bn_c")))
    if name == "ln_lstm":
        a = ln(hW, g("ln_h"), None) + ln(xW, g("ln_x"), None) + P["b"]
        return lstm_tail(a, c, d, lambda z: ln(z, g("ln_c"), P["ln_c"]["bias"]))
    if name == "irnn":
        return np.maximum(hW + xW + P["b"], 0.0), None
    if name in ("lru", "lru_block"):
        return lru_reference_step(P, h, x)[0], None
    if name == "gru":
        ax, ah = xW + P["b"], hW
        r = sig(ax[:, :d] + ah[:, :d])
        z = sig(ax[:, d : 2 * d] + ah[:, d : 2 * d])
        n = np.tanh(ax[:, 2 * d :] + r * ah[:, 2 * d :])
        return (1 - z) * n + z * h, None
    raise AssertionError(name)


def gelu_tanh(y):
    return 0.5 * y * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (y + 0.044715 * y**3)))


def lru_reference_step(P, h, u):
    """The LRU (and its block, when P has W_enc; LN normalization) in complex NumPy arithmetic.

    Returns (new real state [Re x, Im x], output y (bare) or o (block)).
    """
    N = h.shape[1] // 2
    lam = np.exp(-np.exp(P["nu_log"]) + 1j * np.exp(P["theta_log"]))
    x = h[:, :N] + 1j * h[:, N:]
    e = None
    if "W_enc" in P:
        e = u @ P["W_enc"].T + P["b_enc"]
        u = ln(e, P["ln_x"]["scale"], P["ln_x"]["bias"])
    Bc = (P["B_re"] + 1j * P["B_im"]) * np.exp(P["gamma_log"])[:, None]
    x = lam * x + u @ Bc.T
    y = (x @ (P["C_re"] + 1j * P["C_im"]).T).real + P["D"] * u
    if e is not None:
        g = gelu_tanh(y)
        y = e + (g @ P["W_1"].T + P["b_1"]) * sig(g @ P["W_2"].T + P["b_2"])
    return np.concatenate([x.real, x.imag], axis=1), y


# ---------------------------------------------------------------- helpers


def random_variables(cell, seed, dtype):
    """Random values for every variable of the cell (its structure from a trace of init, no compile)."""
    variables = jax.eval_shape(lambda: gradflow.init_cell(cell, jax.random.key(seed)))
    rng = np.random.default_rng(seed)
    out = {}
    for col, tree in variables.items():
        def perturb(path, v, col=col):
            name = jax.tree_util.keystr(path)
            if name.endswith("['W_hh']") or name.endswith("['W_xh']"):
                return jnp.asarray(rng.normal(0.0, 1.0, v.shape) / np.sqrt(v.shape[1]), dtype)
            if col == "batch_stats" and name.endswith("['var']"):
                return jnp.asarray(rng.uniform(0.5, 2.0, v.shape), dtype)
            if col == "batch_stats":
                return jnp.asarray(rng.normal(0.0, 1.0, v.shape), dtype)
            if name.endswith("['scale']"):
                return jnp.asarray(rng.uniform(0.5, 1.5, v.shape), dtype)
            return jnp.asarray(rng.normal(0.0, 0.3, v.shape), dtype)

        out[col] = jax.tree_util.tree_map_with_path(perturb, tree)
    return out


def to_np(tree):
    return jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), tree)


def run_and_compare(name, B, dtype, atol, T=3, d=5, n_in=3):
    options = {"dropout": 0.0} if PRESETS_WITH_DROPOUT.get(name) else {}
    if gradflow.PRESETS[name].family == "lru":
        d = d + d % 2  # an even number of reals: N complex modes
    cell = gradflow.make_cell(name, d, n_in, dtype=dtype, t_max=4, **options)
    variables = random_variables(cell, seed=list(gradflow.PRESETS).index(name) * 10 + B, dtype=dtype)
    P = to_np(variables["params"])
    S_all = to_np(variables.get("batch_stats"))
    rng = np.random.default_rng(B)
    xs = rng.normal(size=(T, B, n_in))
    # train and eval differ only through BN (and dropout, off here): eval is run for the BN presets
    for train in (True, False) if cell.spec.has_bn else (True,):
        step = jax.jit(gradflow.as_step(cell, variables, train=train))  # one compile, not one per op
        carry = cell.initialize_carry(B)
        h, c = np.zeros((B, d)), np.zeros((B, d))
        for t in range(T):
            carry = step(carry, jnp.asarray(xs[t], dtype))
            h, c_new = reference_step(name, P, None if train else S_all, h, c, xs[t], t)
            c = c_new if c_new is not None else c
            assert carry["h"].dtype == jnp.dtype(dtype)
            assert np.all(np.isfinite(np.asarray(carry["h"])))
            np.testing.assert_allclose(np.asarray(carry["h"], np.float64), h, atol=atol, rtol=0)
            if "c" in carry:
                np.testing.assert_allclose(np.asarray(carry["c"], np.float64), c, atol=atol, rtol=0)
            np.testing.assert_array_equal(np.asarray(carry["t"]), t + 1)


PRESETS_WITH_DROPOUT = {n: gradflow.PRESETS[n].dropout > 0 for n in gradflow.PRESETS}


# ---------------------------------------------------------------- presets vs NumPy


def test_cells_tuple():
    assert tuple(gradflow.PRESETS) == (
        "tanh", "linear", "bn_notanh", "bn_input_tanh", "bn_tanh", "ln_notanh", "ln_tanh",
        "lstm", "bn_lstm", "ln_lstm", "gru", "irnn", "lru", "lru_block",
    )  # fmt: skip


@pytest.mark.parametrize("B", [1, 8])
@pytest.mark.parametrize("name", tuple(gradflow.PRESETS))
def test_preset_matches_numpy_float32(name, B):
    run_and_compare(name, B, "float32", atol=1e-5)


@pytest.mark.parametrize("B", [1, 8])
@pytest.mark.parametrize("name", tuple(gradflow.PRESETS))
def test_preset_matches_numpy_float64(name, B, x64):
    run_and_compare(name, B, "float64", atol=1e-10)


def test_composed_placement_ln_after_sum_without_tanh(x64):
    """A placement no preset has (LN after the sum, no tanh), from the spec alone."""
    spec = CellSpec(norm_sum="ln", activation="identity", dtype="float64")
    cell = gradflow.make_cell(spec, 4, 3)
    variables = random_variables(cell, 3, "float64")
    P = to_np(variables["params"])
    assert set(P) == {"W_hh", "W_xh", "b", "ln_sum"} and set(P["ln_sum"]) == {"scale"}
    rng = np.random.default_rng(0)
    h, x = rng.normal(size=(6, 4)), rng.normal(size=(6, 3))
    step = gradflow.as_step(cell, variables)
    out = step({"h": jnp.asarray(h), "t": jnp.zeros(6, jnp.int32)}, jnp.asarray(x))["h"]
    ref = ln(h @ P["W_hh"].T + x @ P["W_xh"].T, P["ln_sum"]["scale"], None) + P["b"]
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-10, rtol=0)
    assert gradflow.describe(spec).splitlines()[0] == "h_t = LN(W_hh h_{t-1} + W_xh x_t) + b"


# ---------------------------------------------------------------- BN modes


def test_bn_train_normalized_values_have_batch_mean0_var1():
    cell = gradflow.make_cell("bn_notanh", 6, 3)
    variables = random_variables(cell, 1, "float32")
    rng = np.random.default_rng(1)
    carry = {"h": jnp.asarray(rng.normal(size=(16, 6)), jnp.float32), "t": jnp.full(16, 2, jnp.int32)}
    x = jnp.asarray(rng.normal(size=(16, 3)) * 3.0 + 1.0, jnp.float32)
    _, state = cell.apply(variables, carry, x, train=True, mutable=["batch_stats", "intermediates"])
    P = to_np(variables["params"])
    pre = {
        "bn_h": np.asarray(carry["h"], np.float64) @ P["W_hh"].T,
        "bn_x": np.asarray(x, np.float64) @ P["W_xh"].T,
    }
    for mod in ("bn_h", "bn_x"):
        zhat = np.asarray(state["intermediates"][mod]["normalized"][0], np.float64)
        np.testing.assert_allclose(zhat.mean(axis=0), 0.0, atol=1e-5)
        # variance 1 up to eps: var((z - m)/sqrt(v + eps)) = v/(v + eps)
        v = pre[mod].var(axis=0)
        np.testing.assert_allclose(zhat.var(axis=0), v / (v + EPS), rtol=1e-5)
        assert np.all(np.abs(zhat.var(axis=0) - 1.0) < 1e-3)
    # running averages: row t = 2 updated with momentum 0.9, every other row untouched
    z = np.asarray(carry["h"], np.float64) @ np.asarray(variables["params"]["W_hh"], np.float64).T
    old = to_np(variables["batch_stats"]["bn_h"])
    new = to_np(state["batch_stats"]["bn_h"])
    np.testing.assert_allclose(new["mean"][2], 0.9 * old["mean"][2] + 0.1 * z.mean(0), atol=1e-5)
    np.testing.assert_allclose(new["var"][2], 0.9 * old["var"][2] + 0.1 * z.var(0), atol=1e-5)
    rows = [r for r in range(100) if r != 2]
    np.testing.assert_array_equal(new["mean"][rows], old["mean"][rows])
    np.testing.assert_array_equal(new["var"][rows], old["var"][rows])


def test_bn_zero_variance_is_finite_with_finite_gradient():
    """Constant inputs across the batch (first pixels of sequential MNIST): finite output and gradient."""
    cell = gradflow.make_cell("bn_notanh", 4, 2)
    variables = gradflow.init_cell(cell, jax.random.key(0))
    step = gradflow.as_step(cell, variables, train=True)
    carry = cell.initialize_carry(8)  # h_0 = 0: W_hh h is constant too
    x = jnp.ones((8, 2))
    out = step(carry, x)["h"]
    beta = variables["params"]["bn_x"]["bias"]
    # one-pass centering left a rounding residual × 1/sqrt(eps) ≈ 2e-5 here; two-pass leaves ~1e-12
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(np.asarray(beta), (8, 4)), atol=1e-9, rtol=0)
    grad = jax.grad(lambda h: step({"h": h, "t": carry["t"]}, x)["h"].sum())(carry["h"])
    assert np.all(np.isfinite(np.asarray(grad)))


def test_eval_bn_notanh_is_affine_with_constant_jacobian(x64):
    cell = gradflow.make_cell("bn_notanh", 5, 3, dtype="float64", t_max=4)
    variables = random_variables(cell, 7, "float64")
    step = gradflow.as_step(cell, variables, train=False)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 3)))
    t = jnp.full(3, 1, jnp.int32)
    f = lambda h: step({"h": h, "t": t}, x)["h"]
    h1, h2 = (jnp.asarray(rng.normal(size=(3, 5)) * s) for s in (1.0, 10.0))
    for a in (0.3, -2.0):
        np.testing.assert_allclose(f(a * h1 + (1 - a) * h2), a * f(h1) + (1 - a) * f(h2), atol=1e-10)
    P, S = to_np(variables["params"]), to_np(variables["batch_stats"])
    expected = np.diag(P["bn_h"]["scale"] / np.sqrt(S["bn_h"]["var"][1] + EPS)) @ P["W_hh"]
    for h in (h1, h2):
        J = np.asarray(jax.jacrev(f)(h))  # (3, 5, 3, 5): per-example blocks
        for b in range(3):
            np.testing.assert_allclose(J[b, :, b, :], expected, atol=1e-12)
            for b2 in set(range(3)) - {b}:
                np.testing.assert_array_equal(J[b, :, b2, :], 0.0)


def test_train_bn_couples_the_batch_eval_does_not():
    cell = gradflow.make_cell("bn_notanh", 4, 2)
    variables = random_variables(cell, 4, "float32")
    rng = np.random.default_rng(3)
    carry = {"h": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32), "t": jnp.zeros(5, jnp.int32)}
    x = jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)
    x2 = x.at[4].add(1.0)
    for train, coupled in ((True, True), (False, False)):
        step = gradflow.as_step(cell, variables, train=train)
        moved = np.abs(np.asarray(step(carry, x)["h"][0] - step(carry, x2)["h"][0])).max()
        assert (moved > 1e-3) if coupled else (moved == 0.0)


def test_per_step_statistics_beyond_t_max_reuse_last_row(x64):
    t_max, T, B = 3, 7, 4
    cell = gradflow.make_cell("bn_tanh", 4, 2, dtype="float64", t_max=t_max)
    variables = random_variables(cell, 5, "float64")
    S = to_np(variables["batch_stats"])
    assert S["bn_h"]["mean"].shape == (t_max, 4)
    P = to_np(variables["params"])
    xs = np.random.default_rng(4).normal(size=(T, B, 2))
    step = jax.jit(gradflow.as_step(cell, variables))
    states = gradflow.unroll(step, cell.initialize_carry(B), jnp.asarray(xs))
    h = np.zeros((B, 4))
    for t in range(T):
        h, _ = reference_step("bn_tanh", P, S, h, None, xs[t], min(t, t_max - 1))
        np.testing.assert_allclose(np.asarray(states["h"][t]), h, atol=1e-10)
    # and the last row really is what steps >= t_max use: changing it changes only those steps
    v2 = jax.tree_util.tree_map(lambda a: a, variables)
    v2["batch_stats"]["bn_h"]["mean"] = v2["batch_stats"]["bn_h"]["mean"].at[t_max - 1].add(1.0)
    states2 = gradflow.unroll(gradflow.as_step(cell, v2), cell.initialize_carry(B), jnp.asarray(xs))
    np.testing.assert_array_equal(states2["h"][: t_max - 1], states["h"][: t_max - 1])
    assert np.all(np.abs(np.asarray(states2["h"][t_max - 1 :] - states["h"][t_max - 1 :])) > 0)


def test_shared_statistics_over_time(x64):
    cell = gradflow.make_cell("bn_notanh", 3, 2, dtype="float64", per_step_stats=False)
    variables = random_variables(cell, 6, "float64")
    S = to_np(variables["batch_stats"])
    assert S["bn_h"]["mean"].shape == (3,)
    P = to_np(variables["params"])
    xs = np.random.default_rng(5).normal(size=(5, 2, 2))
    states = gradflow.unroll(gradflow.as_step(cell, variables), cell.initialize_carry(2), jnp.asarray(xs))
    S_rows = {m: {k: np.broadcast_to(v, (10,) + v.shape) for k, v in S[m].items()} for m in S}
    h = np.zeros((2, 3))
    for t in range(5):
        h, _ = reference_step("bn_notanh", P, S_rows, h, None, xs[t], t)
        np.testing.assert_allclose(np.asarray(states["h"][t]), h, atol=1e-10)


def test_bn_lstm_defaults_follow_cooijmans():
    cell = gradflow.make_cell("bn_lstm", 3, 2)
    P = gradflow.init_cell(cell, jax.random.key(0))["params"]
    for mod in ("bn_h", "bn_x", "bn_c"):
        np.testing.assert_array_equal(P[mod]["scale"], np.float32(0.1))
    assert "bias" not in P["bn_h"] and "bias" not in P["bn_x"]  # β_h = β_x = 0: one bias b
    np.testing.assert_array_equal(P["bn_c"]["bias"], 0.0)
    np.testing.assert_array_equal(P["b"], [1.0] * 3 + [0.0] * 9)  # forget-gate block first


# ---------------------------------------------------------------- dropout


def test_dropout_train_only_reproducible_and_inverted():
    d, B, p = 64, 16, 0.2
    cell = gradflow.make_cell("ln_notanh", d, 3)
    assert cell.spec.dropout == p
    variables = random_variables(cell, 8, "float32")
    plain = gradflow.make_cell("ln_notanh", d, 3, dropout=0.0)
    rng = np.random.default_rng(6)
    carry = {"h": jnp.asarray(rng.normal(size=(B, d)), jnp.float32), "t": jnp.zeros(B, jnp.int32)}
    x = jnp.asarray(rng.normal(size=(B, 3)), jnp.float32)
    ref_train = np.asarray(gradflow.as_step(plain, variables, train=True)(carry, x)["h"])
    ref_eval = np.asarray(gradflow.as_step(plain, variables, train=False)(carry, x)["h"])
    # eval: no dropout at all
    np.testing.assert_array_equal(np.asarray(gradflow.as_step(cell, variables)(carry, x)["h"]), ref_eval)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    out1 = np.asarray(gradflow.as_step(cell, variables, train=True, key=k1)(carry, x)["h"])
    out1b = np.asarray(gradflow.as_step(cell, variables, train=True, key=k1)(carry, x)["h"])
    out2 = np.asarray(gradflow.as_step(cell, variables, train=True, key=k2)(carry, x)["h"])
    np.testing.assert_array_equal(out1, out1b)
    assert np.any((out1 == 0) != (out2 == 0))
    dropped = out1 == 0
    assert 0.12 < dropped.mean() < 0.28
    np.testing.assert_allclose(out1[~dropped], ref_train[~dropped] / (1 - p), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["step", "sequence"])
def test_dropout_mask_per_step_or_per_sequence(mode):
    d, B = 32, 4
    cell = gradflow.make_cell("linear", d, 2, dropout=0.5, dropout_mode=mode, bias=False)
    variables = {"params": {"W_hh": jnp.eye(d), "W_xh": jnp.ones((d, 2))}}
    step = gradflow.as_step(cell, variables, train=True, key=jax.random.key(3))
    carry = cell.initialize_carry(B)
    masks = []
    for _ in range(3):  # h = D(h + x W^T) with x = 1: an entry is 0 exactly when dropped this step
        carry = step(carry, jnp.ones((B, 2)))
        masks.append(np.asarray(carry["h"]) == 0)
    same = all(np.array_equal(masks[0], m) for m in masks[1:])
    assert same == (mode == "sequence")


def test_dropout_train_without_key_raises():
    cell = gradflow.make_cell("ln_notanh", 3, 2)
    with pytest.raises(ValueError, match="dropout"):
        gradflow.as_step(cell, gradflow.init_cell(cell, jax.random.key(0)), train=True)


# ---------------------------------------------------------------- inits


def test_recurrent_inits():
    d, g = 200, 1.3
    key = jax.random.key(0)
    W = np.asarray(gradflow.init_cell(gradflow.make_cell("tanh", d, 1, gain=g), key)["params"]["W_hh"])
    assert abs(W.var() * d / g**2 - 1) < 0.03 and abs(W.mean()) < 0.01
    for name in ("tanh", "lstm"):
        cell = gradflow.make_cell(name, 8, 1, recurrent_init="orthogonal", gain=g)
        W = np.asarray(gradflow.init_cell(cell, key)["params"]["W_hh"])
        for blk in np.split(W, W.shape[0] // 8):
            np.testing.assert_allclose(blk @ blk.T, g**2 * np.eye(8), atol=1e-5)
    W = gradflow.init_cell(gradflow.make_cell("tanh", 8, 1, recurrent_init="identity", gain=g), key)["params"]
    np.testing.assert_allclose(W["W_hh"], g * np.eye(8), atol=0)


@pytest.mark.parametrize("name", ["tanh", "lstm", "gru"])
def test_input_weights_have_fan_in_input_size(name):
    # W_xh (G·d, input_size): entries of variance 1/input_size (fan-in = input_size), so the input drive
    # W_xh x has per-unit variance ≈ E[x²] whatever d and G are. The sample variance of n entries has
    # relative standard error ≤ sqrt(2/n) (Gaussian value; the truncated normal's kurtosis is below 3):
    # tolerance 5 s.e. (≤ 0.16). A fan-in of G·d (flax lecun_normal's default axis -2) gives
    # var·input_size = 16/(G·256) or 64/(G·32) (measured 0.064, 0.016, 0.021; 2.0, 0.51, 0.68): fails.
    for d, n_in in ((256, 16), (32, 64)):
        cell = gradflow.make_cell(name, d, n_in)
        W = np.asarray(gradflow.init_cell(cell, jax.random.key(3))["params"]["W_xh"], np.float64)
        assert W.shape == (cell.gates * d, n_in)
        tol = 5 * np.sqrt(2 / W.size)
        assert W.var() * n_in == pytest.approx(1.0, abs=tol)
        assert abs(W.mean()) < 5 / np.sqrt(W.size * n_in)  # 5 s.e. of the mean


def test_gamma_inits_are_options():
    cell = gradflow.make_cell("ln_notanh", 3, 2, bn_gamma_init=0.25, ln_gamma_init=2.0)
    P = gradflow.init_cell(cell, jax.random.key(0))["params"]
    np.testing.assert_array_equal(P["bn_x"]["scale"], 0.25)
    np.testing.assert_array_equal(P["ln_h"]["scale"], 2.0)


def test_describe_renders_each_preset():
    firsts = {
        "tanh": "h_t = tanh(W_hh h_{t-1} + W_xh x_t + b)",
        "linear": "h_t = W_hh h_{t-1} + W_xh x_t + b",
        "bn_notanh": "h_t = BN_h(W_hh h_{t-1}) + BN_x(W_xh x_t)",
        "bn_input_tanh": "h_t = tanh(W_hh h_{t-1} + BN_x(W_xh x_t) + b)",
        "bn_tanh": "h_t = tanh(BN_h(W_hh h_{t-1}) + BN_x(W_xh x_t) + b)",
        "ln_notanh": "h_t = D(LN_h(W_hh h_{t-1}) + BN_x(W_xh x_t))",
        "ln_tanh": "h_t = tanh(LN(W_hh h_{t-1} + W_xh x_t) + b)",
        "bn_lstm": "(f̃, ĩ, õ, g̃) = BN_h(W_hh h_{t-1}) + BN_x(W_xh x_t) + b",
        "irnn": "h_t = relu(W_hh h_{t-1} + W_xh x_t + b)",
        "lru": "x_t = λ ⊙ x_{t-1} + γ ⊙ (B u_t),  y_t = Re(C x_t) + D ⊙ u_t",
    }
    for name in gradflow.CELLS:
        text = gradflow.describe(name)
        assert "h_t" in text and name in text
        if name in firsts:
            assert text.splitlines()[0] == firsts[name]
    assert "tanh(BN_c(c_t))" in gradflow.describe("bn_lstm")


# ---------------------------------------------------------------- errors


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown cell name 'rnn_foo'"):
        gradflow.make_cell("rnn_foo", 3, 2)
    with pytest.raises(ValueError, match="unknown cell option"):
        gradflow.make_cell("tanh", 3, 2, gian=1.0)
    for kw in ({"hidden_size": 0, "input_size": 2}, {"hidden_size": 3, "input_size": -1}):
        with pytest.raises(ValueError, match=next(k for k, v in kw.items() if v <= 0)):
            gradflow.make_cell("tanh", **kw)
    with pytest.raises(ValueError, match="batch_size"):
        gradflow.init_cell(gradflow.make_cell("tanh", 3, 2), jax.random.key(0), batch_size=0)
    for opt, val in (("gain", float("nan")), ("bn_gamma_init", float("inf")), ("bn_eps", 0.0), ("t_max", 0)):
        with pytest.raises(ValueError, match=opt):
            gradflow.make_cell("bn_tanh", 3, 2, **{opt: val})
    with pytest.raises(ValueError, match="norm_c"):
        gradflow.make_cell("tanh", 3, 2, norm_c="bn")


def test_shape_and_finiteness_errors():
    cell = gradflow.make_cell("bn_tanh", 3, 2)
    variables = gradflow.init_cell(cell, jax.random.key(0))
    step = gradflow.as_step(cell, variables)
    carry = cell.initialize_carry(4)
    with pytest.raises(ValueError, match="input_size mismatch"):
        step(carry, jnp.ones((4, 5)))
    with pytest.raises(ValueError, match="shape"):
        step(carry, jnp.ones((4, 2, 1)))
    with pytest.raises(ValueError, match=r"carry\['h'\]"):
        step(cell.initialize_carry(3), jnp.ones((4, 2)))
    # variables of a cell with another input_size
    with pytest.raises(ValueError, match="input_size mismatch"):
        gradflow.as_step(gradflow.make_cell("bn_tanh", 3, 5), variables)
    bad = jax.tree_util.tree_map(lambda v: v, variables)
    bad["params"]["W_hh"] = bad["params"]["W_hh"].at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match=r"non-finite.*W_hh"):
        gradflow.as_step(cell, bad)
    bad = jax.tree_util.tree_map(lambda v: v, variables)
    bad["batch_stats"]["bn_h"]["var"] = bad["batch_stats"]["bn_h"]["var"].at[3].set(jnp.inf)
    with pytest.raises(ValueError, match=r"non-finite.*bn_h.*var"):
        gradflow.as_step(cell, bad)
    with pytest.raises(ValueError, match="'params'"):
        gradflow.as_step(cell, {"weights": 1})
    # shape errors are static: they raise under jit too
    with pytest.raises(ValueError, match="input_size mismatch"):
        jax.jit(step)(carry, jnp.ones((4, 5)))


def test_float64_without_x64_raises():
    cell = gradflow.make_cell("tanh", 3, 2, dtype="float64")
    with pytest.raises(ValueError, match="64-bit"):
        gradflow.init_cell(cell, jax.random.key(0))
