"""Tests of gradflow.sweep: grid layout, results against plain loops and closed forms, chunk and device
invariance, kill-and-resume, the store and the tidy table.

The 4-device run and the killed run happen in subprocesses (the device count is fixed when JAX starts); this
file is also their worker: ``python tests/test_sweep.py <mode> <out>``.
"""

import os
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow
from gradflow.jacobians import jacobian_norms
from gradflow.sweep import Grid, load_table, pivot, run_sweep, to_dataframe

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ----------------------------------------------------------------------------------------------------------
# Functions swept in the tests
# ----------------------------------------------------------------------------------------------------------
def closed_form_fn(static):
    """y = a**p + seed and a vector z = a * arange(k) (a result with a trailing axis)."""
    p, k = static["p"], static["k"]

    def f(c):
        return {"y": c["a"] ** p + c["seed"], "z": c["a"] * jnp.arange(k, dtype=c["a"].dtype)}

    return f


def rnn_rate_fn(static):
    """Per-step log growth rate of a tangent vector through a random tanh RNN h <- tanh(W h + 0.1).

    W has entries N(0, gain^2 / d) drawn from ``seed``; the tangent is propagated by the per-step Jacobians
    diag(1 - h_t^2) W and renormalized each step.
    """
    d, T = static["d"], static["T"]

    def f(c):
        w = c["gain"] * jax.random.normal(jax.random.key(c["seed"]), (d, d)) / np.sqrt(d)

        def body(carry, _):
            h, logn, v = carry
            h = jnp.tanh(w @ h + 0.1)
            v = (1 - h**2) * (w @ v)
            n = jnp.linalg.norm(v)
            return (h, logn + jnp.log(n), v / n), None

        init = (jnp.full(d, 0.3), jnp.zeros(()), jnp.ones(d) / np.sqrt(d))
        (h, logn, _), _ = jax.lax.scan(body, init, None, length=T)
        return {"rate": logn / T, "h_T": h}

    return f


RNN_GRID = Grid(
    static={"d": [6], "T": [12, 16]}, traced={"gain": [0.5, 1.0, 1.5, 3.0, 5.0], "seed": [0, 1, 2]}
)
RNN_CHUNK = 7  # 15 configurations per group -> chunks of 7, 7, 1: a short chunk, and an idle 4th device


def _worker(mode: str, out: str) -> None:
    """Subprocess side of the 4-device and the kill tests."""
    if mode == "four":
        assert jax.device_count() == 4, jax.devices()
        seen = []
        table = run_sweep(rnn_rate_fn, RNN_GRID, chunk=RNN_CHUNK, progress=seen.append)
        assert {i["n_devices"] for i in seen} == {4}
        np.savez(out, **table)
    elif mode == "multi":
        # several processes ("hosts") on this machine, CPU collectives over gloo
        try:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        except Exception:  # a jaxlib without CPU collectives: the test skips
            raise SystemExit(77) from None
        pid = int(os.environ["SWEEP_PROCESS_ID"])
        jax.distributed.initialize(f"localhost:{os.environ['SWEEP_PORT']}", 2, pid)
        assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
        seen = []
        table = run_sweep(closed_form_fn, MULTI_GRID, store=out, chunk=MULTI_CHUNK, progress=seen.append)
        if pid == 0:
            assert {i["n_devices"] for i in seen} == {4}
            loaded = sum(not i["computed"] for i in seen)
            np.savez(os.path.join(out, "table.npz"), loaded=loaded, **table)
        else:
            assert table is None
    elif mode == "kill":
        k = int(os.environ["SWEEP_KILL_AFTER"])
        computed = []

        def progress(info):
            computed.append(info["computed"])
            if sum(computed) == k:
                os.kill(os.getpid(), signal.SIGKILL)  # a hard kill: no cleanup, no atexit

        run_sweep(rnn_rate_fn, RNN_GRID, store=out, chunk=RNN_CHUNK, progress=progress)
    else:
        raise SystemExit(f"unknown mode {mode}")


def _worker_env(**env):
    full_env = dict(os.environ, OPENBLAS_NUM_THREADS="1", **env)
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    return full_env


def _run_worker(mode, out, **env):
    return subprocess.run(
        [sys.executable, os.path.abspath(__file__), mode, str(out)],
        env=_worker_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _python_loop(fn, grid):
    """Reference: one jitted call per configuration, unvectorized, in a Python loop."""
    rows = {k: [] for k in list(grid.static) + list(grid.traced)}
    res = {}
    cols = grid.traced_columns()
    for scfg in grid.static_configs():
        f = jax.jit(fn(scfg))
        for j in range(grid.n_traced):
            c = {k: v[j] for k, v in cols.items()}
            for k, v in {**scfg, **c}.items():
                rows[k].append(v)
            for k, v in f({k: jnp.asarray(v) for k, v in c.items()}).items():
                res.setdefault(k, []).append(np.asarray(v))
    return rows, res


def _assert_tables_equal(a, b):
    assert list(a) == list(b)
    for k in a:
        assert len(a[k]) == len(b[k]), k
        if a[k].dtype == object or b[k].dtype == object:
            assert all(np.array_equal(x, y) for x, y in zip(a[k], b[k], strict=True)), k
        else:
            assert a[k].dtype == b[k].dtype, k
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def rnn_table():
    """The RNN sweep on this process's devices (1 CPU device under pytest), uninterrupted, in memory."""
    return run_sweep(rnn_rate_fn, RNN_GRID, chunk=RNN_CHUNK)


# ----------------------------------------------------------------------------------------------------------
# Grid
# ----------------------------------------------------------------------------------------------------------
def test_grid_layout():
    g = Grid(static={"name": ["tanh", "ln"], "T": [5]}, traced={"gain": [0.5, 2.0, 1.0], "seed": [3, 4]})
    assert (len(g), g.n_static, g.n_traced) == (12, 2, 6)
    assert g.static_configs() == [{"name": "tanh", "T": 5}, {"name": "ln", "T": 5}]
    cols = g.traced_columns()
    assert cols["gain"].dtype == np.float32 and cols["seed"].dtype == np.int32
    np.testing.assert_array_equal(cols["gain"], [0.5, 0.5, 2.0, 2.0, 1.0, 1.0])
    np.testing.assert_array_equal(cols["seed"], [3, 4, 3, 4, 3, 4])


@pytest.mark.parametrize(
    "static, traced, match",
    [
        ({}, {}, "at least one traced"),
        ({}, {"a": []}, "non-empty"),
        ({}, {"a": [[1.0, 2.0]]}, "1-D"),
        ({}, {"a": [1.0, float("nan")]}, "non-finite"),
        ({}, {"a": [1.0, 1.0]}, "repeated"),
        ({}, {"a": ["x", "y"]}, "numbers"),
        ({"a": [1]}, {"a": [1.0]}, "both static and traced"),
        ({"s": "abc"}, {"a": [1.0]}, "sequence"),
        ({"s": []}, {"a": [1.0]}, "empty"),
        ({"s": [[1, 2]]}, {"a": [1.0]}, "str, int, float"),
        ({"s": [1, 1]}, {"a": [1.0]}, "repeated"),
        ({}, {"_a": [1.0]}, "name"),
        ({}, {"a": [2**40]}, "int32"),
    ],
)
def test_grid_rejects_bad_input(static, traced, match):
    with pytest.raises(ValueError, match=match):
        Grid(static=static, traced=traced)


def test_run_sweep_rejects_bad_input(tmp_path):
    g = Grid(traced={"a": [1.0, 2.0]})
    ok = lambda s: lambda c: {"y": c["a"]}
    with pytest.raises(ValueError, match="Grid"):
        run_sweep(ok, {"a": [1.0]})
    with pytest.raises(ValueError, match="chunk"):
        run_sweep(ok, g, chunk=0)
    with pytest.raises(ValueError, match="dict of arrays"):
        run_sweep(lambda s: lambda c: c["a"], g)
    with pytest.raises(ValueError, match="clash"):
        run_sweep(lambda s: lambda c: {"a": c["a"]}, g)
    with pytest.raises(ValueError, match="callable"):
        run_sweep(lambda s: 3, g)
    with pytest.raises(ValueError, match="progress"):
        run_sweep(ok, g, progress="yes")
    with pytest.raises(ValueError, match="no completed chunks"):
        load_table(tmp_path)
    run_sweep(ok, g, store=tmp_path)
    (chunk,) = [f for f in os.listdir(tmp_path) if f.startswith("chunk-")]
    (tmp_path / chunk).write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="unreadable"):
        run_sweep(ok, g, store=tmp_path)


# ----------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------
def test_closed_form_results_and_chunk_invariance():
    g = Grid(static={"p": [1, 2, 3], "k": [4]}, traced={"a": [0.5, 1.5, -2.0], "seed": [0, 7]})
    tables = [run_sweep(closed_form_fn, g, chunk=c) for c in (1, 4, 6, 100)]
    t = tables[0]
    p = t["p"].astype(np.float64)
    a = t["a"].astype(np.float64)
    np.testing.assert_allclose(t["y"], a**p + t["seed"], rtol=1e-6)
    np.testing.assert_allclose(t["z"], a[:, None] * np.arange(4), rtol=1e-7)
    assert t["z"].shape == (18, 4) and t["y"].shape == (18,)
    # row order: static-major, traced in C order
    np.testing.assert_array_equal(t["p"], np.repeat([1, 2, 3], 6))
    np.testing.assert_array_equal(t["seed"], np.tile([0, 7], 9))
    for other in tables[1:]:
        _assert_tables_equal(t, other)


def test_rnn_sweep_matches_python_loop(rnn_table):
    rows, res = _python_loop(rnn_rate_fn, RNN_GRID)
    for k, v in rows.items():
        np.testing.assert_array_equal(rnn_table[k], v)
    np.testing.assert_allclose(rnn_table["rate"], np.array(res["rate"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.stack(rnn_table["h_T"]), np.stack(res["h_T"]), rtol=1e-5, atol=1e-6)
    # the rates vary with the gain, and obey |tanh'| <= 1: ||prod J|| <= ||W||_2^T (Pascanu et al.)
    rate = rnn_table["rate"]
    assert rate[rnn_table["gain"] == 0.5].max() < -0.4 < -0.3 < rate[rnn_table["gain"] == 1.0].min()
    for g, s, r in zip(rnn_table["gain"], rnn_table["seed"], rate, strict=True):
        w = g * np.asarray(jax.random.normal(jax.random.key(s), (6, 6))) / np.sqrt(6)
        assert r <= np.log(np.linalg.norm(w, 2)) + 1e-5


def engine_rate_fn(static):
    """The engine in a sweep: log σ_max(∂h_T/∂h_0) / T of a gradflow tanh cell, W_hh scaled by the gain."""
    d, T = static["d"], static["T"]
    cell = gradflow.make_cell("tanh", d, 1)

    def f(c):
        k_init, k_x = jax.random.split(jax.random.key(c["seed"]))
        variables = gradflow.init_cell(cell, k_init)
        params = {**variables["params"], "W_hh": variables["params"]["W_hh"] * c["gain"]}
        step = gradflow.as_step(cell, {**variables, "params": params})
        xs = jax.random.normal(k_x, (T, 1, 1))
        r = jacobian_norms(step, cell.initialize_carry(1), xs, spectral="svd")
        return {"rate": jnp.log(r.spectral_norms[0]) / T}

    return f


def test_engine_sweep_matches_numpy_jacobian_products():
    """Real engine measurements across gains and seeds vs products of per-step Jacobians in float64 NumPy."""
    d, T = 4, 8
    grid = Grid(static={"d": [d], "T": [T]}, traced={"gain": [0.5, 1.0, 2.5], "seed": [0, 1]})
    table = run_sweep(engine_rate_fn, grid, chunk=4)
    cell = gradflow.make_cell("tanh", d, 1)
    for g, s, rate in zip(table["gain"], table["seed"], table["rate"], strict=True):
        k_init, k_x = jax.random.split(jax.random.key(s))
        p = jax.tree_util.tree_map(
            lambda a: np.asarray(a, np.float64), gradflow.init_cell(cell, k_init)["params"]
        )
        w = p["W_hh"] * np.float64(np.float32(g))
        xs = np.asarray(jax.random.normal(k_x, (T, 1, 1)), np.float64)
        h, prod = np.zeros(d), np.eye(d)
        for t in range(T):  # h_t = tanh(W_hh h + W_xh x_t + b), J_t = diag(1 - h_t^2) W_hh
            h = np.tanh(w @ h + p["W_xh"] @ xs[t, 0] + p["b"])
            prod = ((1 - h**2)[:, None] * w) @ prod
        np.testing.assert_allclose(rate, np.log(np.linalg.norm(prod, 2)) / T, rtol=1e-4, atol=1e-5)
    assert table["rate"][table["gain"] == 0.5].max() < table["rate"][table["gain"] == 2.5].min()


def test_float64_sweep(x64):
    t = run_sweep(closed_form_fn, Grid(static={"p": [2], "k": [1]}, traced={"a": [0.1, 0.3], "seed": [0]}))
    assert t["a"].dtype == np.float64 and t["y"].dtype == np.float64
    np.testing.assert_array_equal(t["y"], np.array([0.1, 0.3]) ** 2)


def test_four_devices_same_results(tmp_path, rnn_table):
    out = tmp_path / "four.npz"
    r = _run_worker("four", out, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(out, allow_pickle=True) as z:
        four = {k: z[k] for k in z.files}
    _assert_tables_equal(rnn_table, four)


MULTI_GRID = Grid(static={"p": [1, 2], "k": [3]}, traced={"a": [0.5, 1.5, -2.0, 3.0], "seed": [0, 7, 9]})
MULTI_CHUNK = 5  # 12 configurations per group -> chunks of 5, 5, 2; 6 chunks in all


def test_two_processes_resume_same_results(tmp_path):
    """The multi-host path: 2 processes x 2 CPU devices (jax.distributed, gloo collectives) on a store that
    already holds 2 chunks: process 0 decides what is done, both compute the rest, process 0 writes."""
    store = tmp_path / "store"
    reference = run_sweep(closed_form_fn, MULTI_GRID, store=store, chunk=MULTI_CHUNK)
    chunks = sorted(f for f in os.listdir(store) if f.startswith("chunk-"))
    for f in chunks[2:]:
        os.unlink(store / f)
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = str(sock.getsockname()[1])
    env = dict(XLA_FLAGS="--xla_force_host_platform_device_count=2", SWEEP_PORT=port)
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "multi", str(store)],
            env=_worker_env(**env, SWEEP_PROCESS_ID=str(pid)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for pid in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=90)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if 77 in [p.returncode for p in procs]:
        pytest.skip("this jaxlib has no CPU collectives (gloo)")
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    with np.load(store / "table.npz", allow_pickle=True) as z:
        multi = {k: z[k] for k in z.files}
    assert int(multi.pop("loaded")) == 2
    _assert_tables_equal(reference, multi)
    assert len([f for f in os.listdir(store) if f.startswith("chunk-")]) == len(chunks) == 6


# ----------------------------------------------------------------------------------------------------------
# Store, resume, table
# ----------------------------------------------------------------------------------------------------------
def test_killed_sweep_resumes_identically(tmp_path, rnn_table):
    store = tmp_path / "store"
    k = 2
    r = _run_worker("kill", store, SWEEP_KILL_AFTER=str(k))
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])
    chunks = sorted(f for f in os.listdir(store) if f.startswith("chunk-"))
    assert len(chunks) == k
    # a write interrupted half-way leaves a temporary file: it must be ignored
    (store / ".tmp-interrupted.npz").write_bytes(b"PK\x03\x04 truncated")
    calls, seen = [], []

    def counting_fn(static):
        calls.append(static)
        return rnn_rate_fn(static)

    table = run_sweep(counting_fn, RNN_GRID, store=store, chunk=RNN_CHUNK, progress=seen.append)
    total = len(seen)
    assert total == RNN_GRID.n_static * -(-RNN_GRID.n_traced // RNN_CHUNK)
    assert sum(not i["computed"] for i in seen) == k
    assert sum(i["computed"] for i in seen) == total - k
    _assert_tables_equal(rnn_table, table)
    # a finished sweep recomputes nothing and does not even build the function
    calls.clear()
    again = run_sweep(counting_fn, RNN_GRID, store=store, chunk=RNN_CHUNK)
    assert calls == []
    _assert_tables_equal(rnn_table, again)
    # the tidy table from disk: same rows (the grid's axes are ascending, so the same order too)
    _assert_tables_equal(rnn_table, load_table(store))


def test_store_keys_tag_and_chunking(tmp_path):
    g = Grid(static={"p": [1], "k": [2]}, traced={"a": [3.0, 1.0, 2.0], "seed": [0]})
    run_sweep(closed_form_fn, g, store=tmp_path, chunk=2, tag="v1")
    calls = []

    def fn2(static):
        calls.append(1)
        f = closed_form_fn(static)
        return lambda c: {k: 10 * v for k, v in f(c).items()}

    t2 = run_sweep(fn2, g, store=tmp_path, chunk=2, tag="v2")  # another tag: recomputed, not reused
    assert calls == [1]
    np.testing.assert_allclose(t2["y"], 10 * np.array([3.0, 1.0, 2.0]))
    assert len([f for f in os.listdir(tmp_path) if f.startswith("chunk-")]) == 4
    t1 = load_table(tmp_path, tag="v1")
    np.testing.assert_array_equal(t1["a"], [1.0, 2.0, 3.0])  # sorted by value
    np.testing.assert_allclose(t1["y"], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(t1["z"], [[0, 1], [0, 2], [0, 3]])
    # another chunk size writes overlapping chunks; load_table keeps each configuration once
    run_sweep(closed_form_fn, g, store=tmp_path, chunk=3, tag="v1")
    _assert_tables_equal(t1, load_table(tmp_path, tag="v1"))


def test_results_with_different_shapes_per_group(tmp_path):
    """z has k entries: k differs between static groups, so z becomes an object column of per-row arrays."""
    g = Grid(static={"p": [1], "k": [2, 3]}, traced={"a": [1.0, 2.0], "seed": [0]})
    t = run_sweep(closed_form_fn, g, store=tmp_path)
    assert t["z"].dtype == object and t["y"].dtype == np.float32
    expected = [np.arange(2) * 1.0, np.arange(2) * 2.0, np.arange(3) * 1.0, np.arange(3) * 2.0]
    for got, want in zip(t["z"], expected, strict=True):
        np.testing.assert_array_equal(got, want)
    _assert_tables_equal(t, load_table(tmp_path))


def test_pivot(rnn_table):
    coords, rate = pivot(rnn_table, ["T", "gain", "seed"], "rate")
    assert rate.shape == (2, 5, 3)
    np.testing.assert_array_equal(coords["T"], [12, 16])
    np.testing.assert_array_equal(coords["gain"], [0.5, 1.0, 1.5, 3.0, 5.0])
    for T, g, s, r in zip(
        rnn_table["T"], rnn_table["gain"], rnn_table["seed"], rnn_table["rate"], strict=True
    ):
        i, j, k = list(coords["T"]).index(T), list(coords["gain"]).index(g), list(coords["seed"]).index(s)
        assert rate[i, j, k] == r
    _, h = pivot(rnn_table, ["seed", "gain", "T"], "h_T")  # axes in any order; trailing result shape kept
    assert h.shape == (3, 5, 2, 6)
    np.testing.assert_array_equal(h[2, 4, 1], rnn_table["h_T"][-1])
    with pytest.raises(ValueError, match="not identified"):
        pivot(rnn_table, ["gain", "seed"], "rate")
    with pytest.raises(ValueError, match="unknown column"):
        pivot(rnn_table, ["gain"], "nope")
    partial = {k: v[:-1] for k, v in rnn_table.items()}
    with pytest.raises(ValueError, match="lacks 1 combination"):
        pivot(partial, ["T", "gain", "seed"], "rate")


def test_to_dataframe(rnn_table):
    pd = pytest.importorskip("pandas")
    df = to_dataframe(rnn_table)
    assert isinstance(df, pd.DataFrame) and len(df) == len(RNN_GRID)
    np.testing.assert_array_equal(df["rate"].to_numpy(), rnn_table["rate"])


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
