"""The prepared GPU check: engine throughput against the device's own matmul rate, and a sweep, in one run.

``python -m benchmarks.gpu_check [--tiny] [--json PATH]`` (a few minutes on one GPU; ``--tiny`` runs in
seconds on a CPU, to check that the script works).

What it measures, all in this run on ``jax.devices()[0]``:

1. The device's float32 matmul rate at n (chained (n, n) @ (n, n) products inside one compiled loop), at JAX's
   default precision (TF32 may be used on NVIDIA GPUs) and at ``"highest"`` (true float32).
2. The engine's exact all-lag norms of ∂h_T/∂h_t for a tanh cell of width n (batch 1, so the state has n
   components) at T = 10^4, for n = 1024 and 2048, by the norms-only paths (the (T, n, n) matrices would need
   T·n²·4 bytes = 168 GB at n = 2048): ``gradflow.streaming.streaming_log_norms`` (renormalized reverse scan,
   with ``spectral=None`` and ``spectral="power"``) and ``gradflow.jacobians.jacobian_norms`` (plain products,
   ``spectral=None``). The useful work is one (n, n) @ (n, n) product per step, 2·n³·T flops; the script
   reports that rate as a fraction of the matmul rate measured at the same n and precision.
3. A small sweep (``benchmarks.bench_sweep.measure``: tanh-cell rates across gains x seeds, vectorized
   vs a Python loop, results checked equal), at ``"highest"`` matmul precision.

Each stage's results are written as soon as it ends; a failing engine path or sweep is recorded as an error
and the script goes on.

The results are printed and written as JSON to ``--json`` (default ``$OUT/gpu_check.json`` when ``OUT`` is
set).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import gradflow  # noqa: E402
from gradflow.jacobians import jacobian_norms  # noqa: E402

try:
    from gradflow.streaming import streaming_log_norms  # noqa: E402
except ImportError:  # pragma: no cover - the streaming module may be absent in a partial checkout
    streaming_log_norms = None


def _block(x):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready(), x)


def device_info() -> dict:
    d = jax.devices()[0]
    info = {
        "platform": d.platform,
        "device_kind": getattr(d, "device_kind", "?"),
        "device_count": jax.device_count(),
        "jax": jax.__version__,
    }
    try:
        stats = d.memory_stats() or {}
        if stats.get("bytes_limit"):
            info["memory_limit_gib"] = round(stats["bytes_limit"] / 2**30, 1)
    except Exception:  # memory_stats is not implemented on every backend
        pass
    return info


def matmul_rate(n: int, precision: str | None, min_seconds: float = 0.3) -> float:
    """Measured float32 flop/s of chained (n, n) @ (n, n) products in one compiled loop."""
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), jnp.float32)
    q, _ = jnp.linalg.qr(jax.random.normal(key_b, (n, n), jnp.float32))  # orthogonal: norms stay put

    @jax.jit
    def chain(x, k):
        return jax.lax.fori_loop(0, k, lambda i, y: jnp.matmul(y, q, precision=precision), x)

    _block(chain(a, 2))
    k = 4
    while True:
        start = time.perf_counter()
        _block(chain(a, k))
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or k >= 2**16:
            return 2.0 * n**3 * k / elapsed
        k *= 2 if elapsed > min_seconds / 8 else 8


def engine_case(n: int, T: int, method: str, seed: int = 0) -> dict:
    """Time one norms-only all-lag run for a tanh cell of width n (gain 1, Gaussian init), batch 1."""
    cell = gradflow.make_cell("tanh", n, 1)
    k_init, k_x = jax.random.split(jax.random.key(seed))
    step = gradflow.as_step(cell, gradflow.init_cell(cell, k_init))
    carry0 = cell.initialize_carry(1)
    xs = jax.random.normal(k_x, (T, 1, 1), jnp.float32)
    if method == "jacobian_norms":
        run = lambda: jacobian_norms(step, carry0, xs, spectral=None).frobenius_norms
    else:
        if streaming_log_norms is None:
            return {"n": n, "T": T, "method": method, "skipped": "gradflow.streaming is not available"}
        spectral = None if method == "streaming" else "power"
        run = lambda: streaming_log_norms(step, carry0, xs, spectral=spectral).log_frobenius
    start = time.perf_counter()
    out = _block(run())  # compiles
    first = time.perf_counter() - start
    seconds = np.inf
    for _ in range(2):  # best of two timed runs
        start = time.perf_counter()
        out = _block(run())
        seconds = min(seconds, time.perf_counter() - start)
    out = np.asarray(out)
    return {
        "n": n,
        "T": T,
        "method": method,
        "seconds": seconds,
        "compile_s": first - seconds,
        "flops_per_s": 2.0 * n**3 * T / seconds,
        "finite_fraction": float(np.mean(np.isfinite(out) & (out != 0))),
        "state_bytes": T * n * 4,
        "all_matrices_would_need_gb": T * n * n * 4 / 1e9,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description="GPU engine check")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny sizes (n = 32, 64; T = 200): a CPU smoke run"
    )
    parser.add_argument(
        "--json", default=None, help="where to write the results (default $OUT/gpu_check.json)"
    )
    parser.add_argument("--no-sweep", action="store_true", help="skip the sweep part")
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    sizes, T = ((32, 64), 200) if args.tiny else ((1024, 2048), 10_000)
    methods = ("streaming", "streaming_power", "jacobian_norms")
    info = device_info()
    print("device:", json.dumps(info), flush=True)
    if info["platform"] != "gpu" and not args.tiny:
        print("warning: no GPU found; these are not GPU figures", flush=True)
    results = {"device": info, "tiny": args.tiny, "matmul": [], "engine": [], "sweep": None}
    path = args.json or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    started = time.perf_counter()

    def save():  # after every stage, so that a run cut short keeps what it measured
        results["elapsed_s"] = time.perf_counter() - started
        if path:
            with open(path, "w") as fh:
                json.dump(results, fh, indent=1)

    for n in sizes:
        rates = {}
        for precision in ("default", "highest"):
            rates[precision] = matmul_rate(n, None if precision == "default" else precision)
            results["matmul"].append({"n": n, "precision": precision, "flops_per_s": rates[precision]})
            print(f"matmul n={n} precision={precision}: {rates[precision] / 1e12:.2f} TFLOP/s", flush=True)
        save()
        for method in methods:
            try:
                r = engine_case(n, T, method)
            except Exception as err:  # record and go on: one failing path must not hide the others
                r = {"n": n, "T": T, "method": method, "skipped": f"error: {type(err).__name__}: {err}"}
            if "skipped" not in r:
                r["fraction_of_matmul_default"] = r["flops_per_s"] / rates["default"]
                r["fraction_of_matmul_highest"] = r["flops_per_s"] / rates["highest"]
                print(
                    f"engine {method:16s} n={n} T={T}: {r['seconds']:.3f} s "
                    f"(compile {r['compile_s']:.1f} s), "
                    f"{r['flops_per_s'] / 1e12:.2f} TFLOP/s of useful 2n^3 T work = "
                    f"{r['fraction_of_matmul_default']:.1%} of the default-precision matmul rate, "
                    f"{r['fraction_of_matmul_highest']:.1%} of the float32 ('highest') rate; "
                    f"finite nonzero norms {r['finite_fraction']:.0%}",
                    flush=True,
                )
            else:
                print(f"engine {method} n={n}: skipped ({r['skipped']})", flush=True)
            results["engine"].append(r)
            save()

    if not args.no_sweep:
        from benchmarks.bench_sweep import measure, report

        size = (
            dict(d=8, T=16, n_gains=4, n_seeds=2, repeats=1)
            if args.tiny
            else dict(d=128, T=256, n_gains=16, n_seeds=16)
        )
        try:
            # "highest": the sweep-vs-loop check compares float32 results, which TF32 would blur
            with jax.default_matmul_precision("highest"):
                r = measure(**size, spectral="power")
            print(report(r), flush=True)
        except Exception as err:
            r = {"error": f"{type(err).__name__}: {err}"}
            print("sweep failed:", r["error"], flush=True)
        results["sweep"] = r

    save()
    print(f"done in {results['elapsed_s']:.0f} s" + (f"; wrote {path}" if path else ""), flush=True)
    return results


if __name__ == "__main__":
    main()
