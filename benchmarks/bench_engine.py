"""Engine benchmarks: every number is a ratio against a baseline timed (or compiled) in the same run.

``python -m benchmarks.bench_engine [--quick]``

1. Exact all-lag norms (tanh RNN, B = 1, n = 256, T = 1000) as a fraction of the machine's dense float32
   matmul rate, counting 2 T n^3 flops. The rate is the larger of one big (2048^2) matmul and a scan of T
   n x n matmuls, both measured here.
2. All-lag Jacobians versus each lag separately with ``jax.jacrev`` (n = 128, T = 1000): a few lags of the
   per-lag baseline are timed (compiled once per lag, compile time excluded), time(lag) is fitted as
   a + b * lag and summed over lag = 1..T (extrapolated).
3. Peak memory of the streaming mode versus a bare forward pass (and the materialized mode) at n = 256,
   T = 10^4, from XLA's compiled ``memory_analysis()`` (argument + output + temp bytes; nothing is run).
4. Singular-value spectra at every lag versus the T SVDs alone, and a full Lyapunov spectrum (k = n = 128,
   T = 10^4) versus a chain of T QR factorizations of n x n matrices.
5. Lyapunov spectra with the adaptive orthonormalization interval versus a QR every step (n = 128, T = 2000,
   k = n and k = 8), with the largest exponent difference.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from gradflow.jacobians import jacobian_norms, jacobians, lower_engine  # noqa: E402
from gradflow.lyapunov import lyapunov_spectrum, qr_log_diagonals  # noqa: E402
from gradflow.spectra import spectrum_of  # noqa: E402
from gradflow.streaming import lower_streaming  # noqa: E402


def _time(f, *args, repeats=3):
    """Best wall time of ``repeats`` calls after one warm-up (compile) call."""
    jax.block_until_ready(f(*args))
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def _tanh_problem(n, T, seed=0, gain=1.2):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    W = jax.random.normal(k1, (n, n)) * (gain / np.sqrt(n))
    step = lambda h, x: jnp.tanh(h @ W.T + x)
    h0 = jnp.zeros((1, n))
    xs = 0.5 * jax.random.normal(k2, (T, 1, n))
    return step, h0, xs


def matmul_rate(n, T, big):
    """Dense float32 matmul rate (flop/s): max of one big x big matmul and a scan of T n x n matmuls."""
    A = jax.random.normal(jax.random.PRNGKey(1), (big, big))
    t_big = _time(jax.jit(lambda a: a @ a), A)
    B = jax.random.normal(jax.random.PRNGKey(2), (n, n)) / np.sqrt(n)
    chain = jax.jit(lambda c: jax.lax.scan(lambda c, _: (c @ B, None), c, None, length=T)[0])
    t_chain = _time(chain, jnp.eye(n))
    r_big, r_chain = 2 * big**3 / t_big, 2 * T * n**3 / t_chain
    print(f"  dense f32 matmul: {big}^2 one-shot {r_big / 1e9:.1f} GFLOP/s; scan of {T} {n}^2 "
          f"{r_chain / 1e9:.1f} GFLOP/s")
    return max(r_big, r_chain), r_chain


def bench_norms(n, T, big):
    print(f"[1] exact all-lag norms, tanh RNN n={n}, T={T} (flops counted: 2 T n^3)")
    rate, chain = matmul_rate(n, T, big)
    step, h0, xs = _tanh_problem(n, T)
    flops = 2 * T * n**3
    rows = [
        ("jacobians (matrices + Frobenius)", lambda: jacobians(step, h0, xs, spectral=None).matrices),
        ("jacobian_norms (Frobenius only)",
         lambda: jacobian_norms(step, h0, xs, spectral=None).frobenius_norms),
        ("jacobian_norms (+ spectral, 4 power its/lag, unchecked)",
         lambda: jacobian_norms(step, h0, xs, spectral="power", power_iters=4).spectral_norms),
        ("jacobian_norms (+ spectral by SVD at every lag)",
         lambda: jacobian_norms(step, h0, xs, spectral="svd").spectral_norms),
        ("jacobian_norms (+ spectral 'certified', the default)",
         lambda: jacobian_norms(step, h0, xs).spectral_norms),
    ]
    for name, f in rows:
        t = _time(f)
        print(f"  {name}: {t:.3f} s = {flops / t / rate:.0%} of the matmul rate "
              f"({flops / t / chain:.2f} of the matmul-chain rate)")
    ref = np.asarray(jacobian_norms(step, h0, xs, spectral="svd").log_spectral_norms, np.float64)
    for spectral, kw in (("certified", {}), ("power", {"power_iters": 4})):
        got = np.asarray(jacobian_norms(step, h0, xs, spectral=spectral, **kw).log_spectral_norms, np.float64)
        print(f"  spectral={spectral!r}: max relative error against SVD over all {T} lags "
              f"{np.max(np.abs(np.expm1(got - ref))):.1e}")


def bench_per_lag(n, T, lags):
    print(f"[2] all-lag Jacobians vs each lag separately with jax.jacrev, n={n}, T={T}")
    step, h0, xs = _tanh_problem(n, T, seed=1)
    t_all = _time(lambda: jacobians(step, h0, xs, spectral=None).matrices)
    t_norms = _time(lambda: jacobian_norms(step, h0, xs, spectral=None).frobenius_norms)

    def unroll(h, xs_tail):
        return jax.lax.scan(lambda c, x: (step(c, x), None), h, xs_tail)[0]

    per_lag = jax.jit(lambda h_t, xs_tail: jax.jacrev(lambda h: unroll(h, xs_tail).ravel())(h_t))
    prefix = jax.jit(unroll)
    times = []
    for lag in lags:
        t = T - lag
        h_t = prefix(h0, xs[:t])
        times.append(_time(per_lag, h_t, xs[t:], repeats=5))
    b, a = np.polyfit(np.asarray(lags, float), np.asarray(times), 1)
    all_lags = np.arange(1, T + 1)
    total = float(np.sum(np.maximum(a + b * all_lags, 0)))
    print(f"  all lags at once: {t_all:.3f} s; per-lag jacrev timed at lags {list(lags)}: "
          + ", ".join(f"{x * 1e3:.1f} ms" for x in times))
    print(f"  per-lag total extrapolated (time = a + b*lag fitted, summed over lag 1..{T}): {total:.1f} s")
    print(f"  speedup of the all-lag matrices (jacobians): {total / t_all:.0f}x (extrapolated)")
    print(f"  speedup of the all-lag norms (jacobian_norms, {t_norms:.3f} s): {total / t_norms:.0f}x "
          "(extrapolated)")


def _mem(compiled):
    m = compiled.memory_analysis()
    if m is None:
        return None
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def bench_memory(n, T):
    print(f"[3] peak memory, n={n}, T={T} (XLA compiled memory_analysis(): argument + output + temp - alias)")
    W = jnp.eye(n) * 0.5
    step = lambda h, x: jnp.tanh(h @ W.T + x)
    h0 = jax.ShapeDtypeStruct((1, n), jnp.float32)
    xs = jax.ShapeDtypeStruct((T, 1, n), jnp.float32)

    def fwd(h, x):
        return jax.lax.scan(lambda c, x: (step(c, x), c), h, x)

    m_fwd = _mem(jax.jit(fwd).lower(h0, xs).compile())
    m_stream = _mem(lower_streaming(step, h0, xs, spectral="power", power_iters=4).compile())
    m_mat = _mem(lower_engine("jacobians", step, h0, xs).compile())
    if m_fwd is None:
        print("  memory_analysis() not available on this backend")
        return
    mb = 1024**2
    print(f"  bare forward pass (stores the states): {m_fwd / mb:.1f} MiB")
    print(f"  streaming log-norms: {m_stream / mb:.1f} MiB ({(m_stream - m_fwd) / mb:+.1f} MiB vs forward)")
    print(f"  materialized jacobians (T, n, n): {m_mat / mb:.1f} MiB "
          f"({(m_mat - m_fwd) / mb:+.1f} MiB vs forward)")


def bench_spectra(n, T):
    print(f"[4a] singular values at every lag, tanh RNN n={n}, T={T}, vs the {T} SVDs alone")
    step, h0, xs = _tanh_problem(n, T, seed=2)
    mats = jacobians(step, h0, xs, spectral=None).matrices
    t_svd = _time(lambda: spectrum_of(mats).singular_values, repeats=2)
    t_full = _time(lambda: spectrum_of(jacobians(step, h0, xs, spectral=None)).singular_values, repeats=2)
    print(f"  T SVDs of {n}x{n}: {t_svd:.3f} s; Jacobians + SVDs: {t_full:.3f} s = {t_full / t_svd:.2f}x")


def bench_lyapunov(n, T):
    print(f"[4b] full Lyapunov spectrum k=n={n}, T={T}, vs a chain of {T} QR factorizations of {n}x{n}")
    step, h0, xs = _tanh_problem(n, T, seed=3)
    A = jax.random.normal(jax.random.PRNGKey(4), (n, n))

    def qr_chain(Q):
        def body(Q, _):
            Q, R = jnp.linalg.qr(A + Q)
            return Q, jnp.diagonal(R)

        return jax.lax.scan(body, Q, None, length=T)

    t_qr = _time(jax.jit(qr_chain), jnp.eye(n), repeats=2)
    t_ly = _time(lambda: qr_log_diagonals(step, h0, xs, k=n, interval=1), repeats=2)
    print(f"  {T} QRs: {t_qr:.3f} s; Lyapunov spectrum (a QR per step): {t_ly:.3f} s = {t_ly / t_qr:.2f}x")


def _no_qr_time(step, h0, xs, k, repeats):
    """Time of the per-step loop's tangent propagation with no QR at all (Z <- J Z, rescaled by its largest
    entry): no orthonormalization interval can be faster, so t_per / this bounds the interval's speedup."""

    def body(c, x):
        h, Zt = c
        f = lambda u: step(u.reshape(h.shape), x).ravel()
        Zt = jax.vmap(lambda q: jax.jvp(f, (h.ravel(),), (q,))[1])(Zt)
        return (step(h, x), Zt / jnp.max(jnp.abs(Zt))), Zt[:, 0]

    n = h0.size
    run = jax.jit(lambda h0, xs: jax.lax.scan(body, (h0, jnp.eye(k, n)), xs)[1])
    return _time(run, h0, xs, repeats=repeats)


def _interval_row(step, h0, xs, k, transient, repeats):
    def run(interval):
        return lyapunov_spectrum(step, h0, xs, k=k, transient=transient, interval=interval).exponents

    t_per, t_ada = _time(lambda: run(1), repeats=repeats), _time(lambda: run("auto"), repeats=repeats)
    err = float(np.max(np.abs(np.asarray(run("auto")) - np.asarray(run(1)))))
    logs = np.asarray(qr_log_diagonals(step, h0, xs, k=k, interval="auto"))
    return t_per, t_ada, err, float(np.mean(np.any(logs != 0, axis=1)))


def bench_lyapunov_interval(n, T, ks, repeats=3):
    print(f"[5] Lyapunov spectrum with the adaptive orthonormalization interval vs a QR every step, tanh RNN "
          f"n={n}, T={T} (both timed here; exponents compared)")
    for gain in (1.2, 0.9):
        step, h0, xs = _tanh_problem(n, T, seed=3, gain=gain)
        for k in ks:
            t_per, t_ada, err, frac = _interval_row(step, h0, xs, k, T // 10, repeats)
            t_none = _no_qr_time(step, h0, xs, k, repeats)
            print(f"  gain {gain}, k={k}: per-step {t_per:.3f} s, adaptive {t_ada:.3f} s = "
                  f"{t_per / t_ada:.2f}x faster; QRs on {frac:.0%} of the steps; max |exponent difference| "
                  f"{err:.1e}; no QR at all (bounds any interval) {t_none:.3f} s = {t_per / t_none:.2f}x")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_engine", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not the targets' sizes)")
    args = p.parse_args(argv)
    print(f"devices: {jax.devices()}; OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}")
    if args.quick:
        bench_norms(64, 200, 512)
        bench_per_lag(32, 200, (10, 100, 200))
        bench_memory(64, 2000)
        bench_spectra(32, 50)
        bench_lyapunov(32, 500)
        bench_lyapunov_interval(32, 300, (32, 8), repeats=1)
    else:
        bench_norms(256, 1000, 2048)
        bench_per_lag(128, 1000, (10, 250, 500, 1000))
        bench_memory(256, 10_000)
        bench_spectra(128, 200)
        bench_lyapunov(128, 10_000)
        bench_lyapunov_interval(128, 2000, (128, 8))


if __name__ == "__main__":
    main()
