"""Measure the numbers of docs/theory.md §8: λ₁ at the critical input γ_x, and per-step vs sequence-wise BN_x
statistics, for the normalized recurrences (train mode, engine Benettin/QR, float32).

Each row: top Lyapunov exponent λ₁ (`gradflow.lyapunov_spectrum`, k = 1, a quarter of the steps discarded) of
the cell in train mode on x ~ N(0, 1) with 64 input features, h_0 ~ N(0, 1), one row per W draw.

Usage (CPU, about a minute; OPENBLAS_NUM_THREADS=1 on a shared machine)::

    OPENBLAS_NUM_THREADS=1 .venv/bin/python docs/input_path_numbers.py            # both tables
    OPENBLAS_NUM_THREADS=1 .venv/bin/python docs/input_path_numbers.py --only critical
"""

from __future__ import annotations

import argparse

import jax

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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("critical", "sequence"), default=None)
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args(argv)
    seeds = range(a.seeds)
    if a.only in (None, "critical"):
        critical(seeds)
    if a.only in (None, "sequence"):
        sequence(seeds)


if __name__ == "__main__":
    main()
