"""The registry families (gradflow.families): each against its NumPy reference step (float32 and float64), its
parallel form against the step-by-step one, the engine's all-lag log norms against the closed form
diag(Π a_s) of the diagonal linear recurrences, and the generic paths (make_cell, init_cell, as_step,
describe, summary). Adding a family = its module, its name in gradflow.families.NAMES, one row in ROWS."""

import dataclasses
import math
import pkgutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow
from gradflow import families
from gradflow.families import base

#: (name, hidden_size, input_size, options): one row per family.
ROWS = [
    ("mingru", 5, 3, {}),
    ("minlstm", 5, 3, {}),
    ("rglru", 5, 3, {}),
    ("s6", 8, 3, {"state_size": 4}),
    ("lru_stack", 16, 3, {"layers": 2, "r_min": 0.5, "r_max": 0.95}),  # LN over N = 4 features
]
IDS = [r[0] for r in ROWS]
TOL = {"float32": 1e-5, "float64": 1e-10}


def _cell(row, dtype="float32", **extra):
    name, d, n_in, opts = row
    return gradflow.make_cell(name, d, n_in, dtype=dtype, **{**opts, **extra})


def _perturbed(cell, seed, dtype):
    """init_cell's variables with N(0, 0.1²) added to every parameter (biases that start at 0 matter)."""
    v = gradflow.init_cell(cell, jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, np.float64)
                                                        + 0.1 * rng.normal(size=a.shape), dtype), v)


def _np(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _inputs(row, T, B, seed, dtype):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, row[1])), rng.normal(size=(T, B, row[2]))


def test_registry_lists_every_family_module_and_every_row():
    modules = {m.name for m in pkgutil.iter_modules(families.__path__)} - {"base"}
    assert set(families.NAMES) == modules == set(IDS)
    assert gradflow.CELLS[-len(families.NAMES):] == families.NAMES


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_family_matches_numpy_reference(row, dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    fam = families.get(row[0])
    cell = _cell(row, dtype)
    v = _perturbed(cell, 1, dtype)
    P = _np(v["params"])
    h, xs = _inputs(row, 4, 3, 2, dtype)
    carry = {"h": jnp.asarray(h, dtype), "t": jnp.zeros((3,), jnp.int32)}
    apply = jax.jit(cell.apply)
    for t in range(xs.shape[0]):
        carry, out = apply(v, carry, jnp.asarray(xs[t], dtype))
        h, ref_out = fam.reference_step(P, h, xs[t], cell.spec)
        assert carry["h"].dtype == jnp.dtype(dtype)
        np.testing.assert_allclose(np.asarray(carry["h"], np.float64), h, atol=TOL[dtype], rtol=0)
        np.testing.assert_allclose(np.asarray(out, np.float64), ref_out, atol=TOL[dtype], rtol=0)
        np.testing.assert_array_equal(np.asarray(carry["t"]), t + 1)
    assert np.max(np.abs(h)) > 0.1  # the comparison is not between two near-zero states


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_parallel_form_equals_the_steps(row, dtype, request):
    fields = {f.name for f in dataclasses.fields(families.get(row[0]).options)}
    if "parallel" not in fields:
        pytest.skip(f"{row[0]} has no parallel form")
    if dtype == "float64":
        request.getfixturevalue("x64")
    extra = {"parallel": True, **({"candidate": "g"} if "candidate" in fields else {})}
    cell = _cell(row, dtype, **extra)
    v = _perturbed(cell, 3, dtype)
    h0, xs = _inputs(row, 9, 2, 4, dtype)
    carry0 = {"h": jnp.asarray(h0, dtype), "t": jnp.zeros((2,), jnp.int32)}
    par = jax.jit(lambda v, c, x: cell.apply(v, c, x, method="sequence"))(v, carry0, jnp.asarray(xs, dtype))
    seq = gradflow.unroll(gradflow.as_step(cell, v), carry0, jnp.asarray(xs, dtype))["h"]
    np.testing.assert_allclose(np.asarray(par, np.float64), np.asarray(seq, np.float64), atol=TOL[dtype],
                               rtol=0)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_all_lag_log_norms_against_closed_form(row, x64):
    """Diagonal families: ∂h_T/∂h_t = diag(Π_{s>t} a_s), so log‖·‖₂ = max_j Σ ln a_sj at every lag."""
    fam = families.get(row[0])
    if fam.decay is None:
        pytest.skip(f"{row[0]} is not a diagonal recurrence (see test_lru_stack_jacobian_blocks)")
    cell = _cell(row, "float64")
    v = _perturbed(cell, 5, "float64")
    h0, xs = _inputs(row, 12, 3, 6, "float64")
    carry0 = {"h": jnp.asarray(h0), "t": jnp.zeros((3,), jnp.int32)}
    r = gradflow.jacobian_norms(gradflow.as_step(cell, v), carry0, jnp.asarray(xs), per_example=True)
    log_s, log_f = base.diagonal_log_norms(fam.decay(_np(v["params"]), xs, cell.spec))
    np.testing.assert_allclose(np.asarray(r.log_spectral_norms), log_s, atol=1e-9, rtol=0)
    np.testing.assert_allclose(np.asarray(r.log_frobenius_norms), log_f, atol=1e-9, rtol=0)
    assert log_s[:, 0].max() < -0.01  # the products do decay: the check is not between zeros


def test_lru_stack_jacobian_blocks(x64):
    """The stack's ∂h_T/∂h_t is block lower-triangular with diagonal blocks the real form of diag(λ^l)^lag."""
    row = ROWS[IDS.index("lru_stack")]
    cell = _cell(row, "float64")
    v = _perturbed(cell, 7, "float64")
    h0, xs = _inputs(row, 6, 2, 8, "float64")
    carry0 = {"h": jnp.asarray(h0[:1]), "t": jnp.zeros((1,), jnp.int32)}
    M = np.asarray(gradflow.jacobians(gradflow.as_step(cell, v), carry0, jnp.asarray(xs[:, :1])).matrices)
    n = row[1] // 2  # 2N reals per layer
    P = _np(v["params"])
    for t, lag in enumerate(range(6, 0, -1)):
        for k in range(2):
            lam = np.exp(-np.exp(P[f"lru_{k}"]["nu_log"]) + 1j * np.exp(P[f"lru_{k}"]["theta_log"])) ** lag
            real = np.block([[np.diag(lam.real), -np.diag(lam.imag)], [np.diag(lam.imag), np.diag(lam.real)]])
            np.testing.assert_allclose(M[t, k * n:(k + 1) * n, k * n:(k + 1) * n], real, atol=1e-12)
        np.testing.assert_array_equal(M[t, :n, n:], 0.0)  # layer 1 does not read layer 2
        assert np.abs(M[t, n:, :n]).max() > 1e-6  # layer 2 reads layer 1


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_generic_paths_and_summary(row):
    name = row[0]
    cell = _cell(row)
    assert isinstance(cell, base.RegistryCell) and cell.spec.family == name
    text = gradflow.describe(name)
    assert "h_t" in text and f"[{name}: " in text
    assert gradflow.describe(cell.spec).splitlines()[0] == text.splitlines()[0]
    assert gradflow.make_cell(cell.spec, row[1], row[2]) == cell  # an options object builds the same cell
    with pytest.raises(ValueError, match="unknown option"):
        gradflow.make_cell(name, row[1], row[2], gain=2.0)
    v = gradflow.init_cell(cell, jax.random.key(0))
    step = gradflow.as_step(cell, v)
    B = 1  # one example: the summary's cheapest path (the per-example engine is tested above)
    carry0 = {**cell.initialize_carry(B), "h": 0.5 * jnp.ones((B, row[1]))}
    xs = jax.random.normal(jax.random.key(1), (8, B, row[2]))
    with warnings.catch_warnings():  # 8 steps are too few for converged exponents (a warning says so)
        warnings.filterwarnings("ignore", "summary: the Lyapunov exponents have not converged")
        s = gradflow.summary(step, carry0, xs, k=1, lags=[1, 8], segments=4)
    assert np.all(np.isfinite(s.log_norms)) and s.log_norms.shape == (B, 8)
    fam = families.get(name)
    if fam.decay is not None:  # the summary's log norms are the closed form's too
        ref = base.diagonal_log_norms(fam.decay(_np(v["params"]), np.asarray(xs, np.float64), cell.spec))[1]
        np.testing.assert_allclose(s.log_norms, ref, atol=1e-4, rtol=0)
        assert s.exponents[0] < 0  # every a_t lies in (0, 1)


def test_family_option_and_size_errors():
    with pytest.raises(ValueError, match="multiple of state_size=16"):
        gradflow.make_cell("s6", 20, 3)
    with pytest.raises(ValueError, match="multiple of 6"):
        gradflow.make_cell("lru_stack", 8, 3, layers=3)
    with pytest.raises(ValueError, match="layers"):
        gradflow.make_cell("lru_stack", 8, 3, layers=1)
    with pytest.raises(ValueError, match="candidate='g'"):
        gradflow.make_cell("mingru", 4, 3, parallel=True)
    with pytest.raises(ValueError, match="a_min"):
        gradflow.make_cell("rglru", 4, 3, a_min=0.99, a_max=0.9)
    with pytest.raises(ValueError, match="registry family"):
        gradflow.specs.preset_spec("rglru")
    with pytest.raises(ValueError, match="unknown cell family"):
        families.get("tanh")


def test_predicted_rate_is_none_without_a_rate():
    rate, kind = families.predicted_rate("mingru", {})
    assert math.isnan(rate) and kind == "none"


def test_initializations_follow_the_papers():
    rg = gradflow.init_cell(gradflow.make_cell("rglru", 256, 256), jax.random.key(0))["params"]
    a_c = np.exp(-8.0 * np.logaddexp(0.0, np.asarray(rg["Lambda"], np.float64)))  # a^c = σ(−Λ)^8
    assert 0.9 <= a_c.min() and a_c.max() <= 0.999 and a_c.max() - a_c.min() > 0.09  # spread over the range
    assert "W_in" not in rg and float(np.abs(rg["b_a"]).max()) == 0.0
    s6 = gradflow.init_cell(gradflow.make_cell("s6", 64, 3), jax.random.key(0))["params"]
    np.testing.assert_allclose(np.exp(s6["A_log"]), np.tile(np.arange(1, 17), (4, 1)), rtol=1e-6)
    dt = np.logaddexp(0.0, np.asarray(s6["b_dt"], np.float64))  # softplus(b_Δ) = Δ at init for u = 0
    assert 1e-3 - 1e-9 <= dt.min() and dt.max() <= 0.1 + 1e-7
    np.testing.assert_array_equal(s6["D"], 1.0)


def test_a_family_trains_through_fit():
    """gradflow.fit / train.train need nothing family-specific: the readout reads the state h (all layers of
    the stack), the options' repr names the family (the checkpoint identity), and the loss decreases."""
    task = gradflow.tasks.adding(8)
    cell = gradflow.make_cell("lru_stack", 8, task.input_size)
    assert repr(cell.spec).startswith("LRUStackOptions(")
    cfg = gradflow.train.TrainConfig(steps=6, batch_size=16, eval_every=6, record_every=6, eval_size=16,
                                     learning_rate=1e-2)
    r = gradflow.fit(cell, task, cfg)
    assert not r.diverged and r.history["grad_flow"].shape == (2, 8)
    assert r.history["loss"][-1] < r.history["loss"][0]
