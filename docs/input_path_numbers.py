"""Measure the numbers of docs/theory.md §8: λ₁ at the critical input γ_x, per-step vs sequence-wise BN_x
statistics, and how long the state holds an input (linear decoding), for the normalized recurrences
(train mode, float32).

λ₁: top Lyapunov exponent (`gradflow.lyapunov_spectrum`, k = 1, a quarter of the steps discarded) of the cell
in train mode on x ~ N(0, 1) with 64 input features, h_0 ~ N(0, 1), one entry per W draw.
Memory: held-out R² of a least-squares linear decoder of x_t (64 features) from h_{t+k} (+ a constant), 1024
independent sequences × B examples (half to fit, half to test), one W draw, no dropout; chance level ≈ −0.03.

Usage (CPU, about a minute; OPENBLAS_NUM_THREADS=1 on a shared machine)::

    OPENBLAS_NUM_THREADS=1 .venv/bin/python docs/input_path_numbers.py            # all three tables
    OPENBLAS_NUM_THREADS=1 .venv/bin/python docs/input_path_numbers.py --only critical
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import gradflow as gf
from gradflow import theory as th
from gradflow.cells import with_sequence_stats

N_IN, T = 64, 400


def top_exponent(name, d, B, seed, **options):
    cell = gf.make_cell(name, d, N_IN, **options)
    v = gf.init_cell(cell, jax.random.key(seed))
    xs = jax.random.normal(jax.random.key(50 + seed), (T, B, N_IN))
    if cell.spec.input_stats == "sequence":
        v = with_sequence_stats(cell, v, xs)
    key = jax.random.key(100 + seed) if cell.spec.dropout else None
    step = gf.as_step(cell, v, train=True, key=key)
    c0 = {**cell.initialize_carry(B), "h": jax.random.normal(jax.random.key(70 + seed), (B, d))}
    r = gf.lyapunov_spectrum(step, c0, xs, k=1, transient=T // 4, key=jax.random.key(9))
    return float(r.exponents[0]), float(r.stderr[0])


def critical(seeds):
    print("| cell | d | B | options | γ_x | input share | predicted | λ₁ per draw (± s.e.) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, d, B, opts in (
        ("bn_notanh", 128, 8, {}),
        ("bn_notanh", 128, 32, {}),
        ("ln_notanh", 256, 2, {}),
        ("ln_notanh", 256, 2, {"dropout": 0.0}),
    ):
        gx = th.critical_input_gamma(name, batch_size=B, hidden_size=d)
        runs = [top_exponent(name, d, B, s, input_gamma_init=gx, **opts) for s in seeds]
        pred = th.predict_rate(name, hidden_size=d, batch_size=B, gamma_x=gx)
        cells = ", ".join(f"{m:+.4f} ± {e:.4f}" for m, e in runs)
        print(f"| `{name}` | {d} | {B} | {opts or 'preset'} | {gx:.4f} | {th.input_variance_share(gx):.4f} "
              f"| {pred:+.4f} | {cells} |", flush=True)


def sequence(seeds):
    print("| cell | d | B | λ₁ per-step statistics | λ₁ sequence statistics |")
    print("|---|---|---|---|---|")
    for name, d, B in (("bn_input_tanh", 128, 8), ("bn_notanh", 128, 8), ("ln_notanh", 128, 8)):
        row = []
        for stats in ("step", "sequence"):
            runs = [top_exponent(name, d, B, s, input_stats=stats) for s in seeds]
            row.append(", ".join(f"{m:+.4f}" for m, _ in runs))
        print(f"| `{name}` | {d} | {B} | {row[0]} | {row[1]} |", flush=True)


def decoding_r2(name, d, B, gamma_x, lags=12, runs=1024, burn=60):
    """Held-out R² of x_t decoded linearly from h_{t+k}, k = 0..lags−1 (one W draw, train mode, p = 0)."""
    cell = gf.make_cell(name, d, N_IN, input_gamma_init=gamma_x, dropout=0.0)
    step = gf.as_step(cell, gf.init_cell(cell, jax.random.key(0)), train=True)
    xs = jax.random.normal(jax.random.key(1), (runs, burn + lags + 1, B, N_IN))
    h0 = jax.random.normal(jax.random.key(2), (runs, B, d))
    run = jax.jit(jax.vmap(lambda x, h: gf.unroll(step, {"h": h, "t": jnp.zeros(B, jnp.int32)}, x)["h"]))
    hs = np.asarray(run(xs, h0), np.float64)  # (runs, T, B, d): hs[:, i] is the state after input i
    X = np.asarray(xs[:, burn], np.float64).reshape(runs * B, N_IN)
    half, out = runs * B // 2, []
    for k in range(lags):
        H = np.concatenate([hs[:, burn + k].reshape(runs * B, d), np.ones((runs * B, 1))], axis=1)
        W = np.linalg.lstsq(H[:half], X[:half], rcond=None)[0]
        err = X[half:] - H[half:] @ W
        out.append(1.0 - float((err**2).mean() / X[half:].var(axis=0).mean()))
    return out


def memory(_seeds):
    print("| cell | d | B | γ_x | exponents λ_1, λ_2, λ_4, λ_8, λ_16, λ_32, λ_64 |")
    print("|---|---|---|---|---|")
    for name, d, B in (("bn_notanh", 128, 8), ("ln_notanh", 128, 8)):
        gc = th.critical_input_gamma(name, batch_size=B, hidden_size=d)
        for gx in (gc, 1.0):
            cell = gf.make_cell(name, d, N_IN, input_gamma_init=gx, dropout=0.0)
            step = gf.as_step(cell, gf.init_cell(cell, jax.random.key(0)), train=True)
            xs = jax.random.normal(jax.random.key(1), (300, B, N_IN))
            c0 = {**cell.initialize_carry(B), "h": jax.random.normal(jax.random.key(2), (B, d))}
            e = np.asarray(gf.lyapunov_spectrum(step, c0, xs, k=64, transient=75).exponents)
            top = ", ".join(f"{e[i]:+.3f}" for i in (0, 1, 3, 7, 15, 31, 63))
            print(f"| `{name}` | {d} | {B} | {gx:.3f} | {top} |", flush=True)
    print()
    print("| cell | d | B | γ_x | input share | R² of x_t from h_{t+k}, k = 0, 1, 2, ... |")
    print("|---|---|---|---|---|---|")
    for name, d, B in (("bn_notanh", 128, 8), ("ln_notanh", 128, 8)):
        gc = th.critical_input_gamma(name, batch_size=B, hidden_size=d)
        for gx, label in ((gc, "critical"), (1.0, "preset"), (0.5 * gc, "½ critical")):
            r2 = decoding_r2(name, d, B, gx)
            print(f"| `{name}` | {d} | {B} | {gx:.3f} ({label}) | {th.input_variance_share(gx):.3f} | "
                  + ", ".join(f"{x:+.2f}" for x in r2[:8]) + " |", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("critical", "sequence", "memory"), default=None)
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args(argv)
    seeds = range(a.seeds)
    if a.only in (None, "critical"):
        critical(seeds)
    if a.only in (None, "sequence"):
        sequence(seeds)
    if a.only in (None, "memory"):
        memory(seeds)


if __name__ == "__main__":
    main()
