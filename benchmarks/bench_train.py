"""Training runs vmapped (``gradflow.sweep.run_sweep`` over ``gradflow.trainsweep.train_fn``) against the same
runs one after another (one jitted single-run function called per configuration), measured in the same run.

The runs: a tanh RNN on the adding problem (batch 64, T = 100 by default), ``--runs`` configurations (learning
rates × seeds), ``--steps`` Adam steps each, at hidden 32 and 64. Both paths are compiled first (compile
times printed apart) and their results checked equal; then each is timed (best of ``--repeats``). The
ratio printed is sequential time / vmapped time: above 1 vmapping pays, below 1 running the runs in turn is
faster (what the training study does on a CPU). A last ratio compares the in-turn jitted runs (the whole
loop in ``lax.fori_loop``) with the same runs through ``gradflow.train.train`` (a Python loop over jitted
steps that reads the loss and records back every step).

``python -m benchmarks.bench_train [--quick] [--T 100] [--steps 40] [--runs 8] [--hidden 32 64]``
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import gradflow  # noqa: E402
from gradflow import tasks, train, trainsweep  # noqa: E402
from gradflow.sweep import Grid, run_sweep  # noqa: E402


def _best(fn, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(hidden: int, T: int, steps: int, runs: int, batch: int, repeats: int) -> dict:
    """Seconds for ``runs`` training runs vmapped and in turn, at one width."""
    task = tasks.adding(T)
    cell = gradflow.make_cell("tanh", hidden, 2)
    f = trainsweep.train_fn(cell, task, steps=steps, batch_size=batch, clip_norm=1.0,
                            eval_sets={"test": task.eval_set(jax.random.key(7), 256)})
    seeds = max(runs // 2, 1)
    grid = Grid(traced={"learning_rate": [1e-3, 1e-2][: runs // seeds], "seed": list(range(seeds))})
    cols = grid.traced_columns()

    def fn(static):
        return f

    def vmapped():
        return run_sweep(fn, grid, chunk=len(grid))["test_loss"]

    single = jax.jit(f)

    def sequential():
        return np.array([float(single({"learning_rate": jnp.float32(cols["learning_rate"][j]),
                                       "seed": jnp.int32(cols["seed"][j])})["test_loss"])
                         for j in range(len(grid))])

    t0 = time.perf_counter()
    a = vmapped()
    c_vm = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = sequential()
    c_seq = time.perf_counter() - t0
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=1e-3)

    def with_train():  # the same runs through gradflow.train.train (a Python loop over jitted steps)
        for j in range(len(grid)):
            train.train(cell, task, train.TrainConfig(
                steps=steps, batch_size=batch, learning_rate=float(cols["learning_rate"][j]), clip_norm=1.0,
                seed=int(cols["seed"][j]), eval_every=steps, eval_size=256, record_every=steps))

    with_train()  # compile
    return {"compile_vmap": c_vm, "compile_seq": c_seq, "vmap": _best(vmapped, repeats),
            "seq": _best(sequential, repeats), "train": _best(with_train, repeats), "runs": len(grid)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_train")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, nargs="+", default=[32, 64])
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    if a.quick:
        a.T, a.steps, a.runs, a.batch, a.hidden, a.repeats = 20, 5, 4, 16, [8, 16], 1
    print(f"training runs: tanh RNN, adding T={a.T}, batch {a.batch}, {a.steps} Adam steps, {a.runs} runs "
          f"(learning rates x seeds), devices: {jax.devices()}", flush=True)
    for d in a.hidden:
        r = measure(d, a.T, a.steps, a.runs, a.batch, a.repeats)
        print(f"hidden {d:3d}: {r['runs']} runs vmapped {r['vmap']:.2f} s, in turn {r['seq']:.2f} s "
              f"-> vmapped/sequential speed ratio {r['seq'] / r['vmap']:.2f}x "
              f"(first calls incl. compile: {r['compile_vmap']:.1f} s / {r['compile_seq']:.1f} s); "
              f"the same runs through train.train {r['train']:.2f} s -> in-turn jitted loop / train.train "
              f"speed ratio {r['train'] / r['seq']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
