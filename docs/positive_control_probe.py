"""The positive-control probes of docs/positive_control.md: train one cell on the adding problem for N/2 and N
steps (``gradflow.trainsweep.train_fn``, the whole loop jitted) and print the test loss / baseline of each.

``python docs/positive_control_probe.py --preset irnn --T 200 --hidden 64 --steps 3000 --lr 1e-3 --wx 0.01``

``--wx`` multiplies the input weights W_xh at initialization (``train_fn``'s ``input_scale``); ``--opt``
passes CellSpec options as JSON (e.g. ``'{"r_min": 0.9, "r_max": 0.999}'`` for an LRU ring). Test set: 512
sequences from ``key(10_002)`` (the training study's test key); Adam; clipping at global norm ``--clip``.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's gradflow

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import gradflow  # noqa: E402
from gradflow import tasks, trainsweep  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="irnn")
    p.add_argument("--T", type=int, default=200)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=1.0, help="<= 0: no clipping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wx", type=float, default=1.0)
    p.add_argument("--opt", default="{}")
    a = p.parse_args(argv)
    task = tasks.adding(a.T)
    opts = json.loads(a.opt)
    if a.preset == "irnn" and "irnn" not in gradflow.PRESETS:  # before the irnn preset: the same CellSpec
        spec = gradflow.CellSpec(activation="relu", recurrent_init="identity")
        cell = gradflow.make_cell(spec, a.hidden, 2, **opts)
    else:
        cell = gradflow.make_cell(a.preset, a.hidden, 2, t_max=a.T, **opts)
    evals = {"test": task.eval_set(jax.random.key(10_002), 512)}
    out = {}
    for part, steps in (("half", a.steps // 2), ("full", a.steps)):
        f = trainsweep.train_fn(cell, task, steps=steps, batch_size=a.batch, eval_sets=evals,
                                clip_norm=None if a.clip <= 0 else a.clip,
                                input_scale=None if a.wx == 1.0 else a.wx)
        t0 = time.perf_counter()
        r = jax.jit(f)({"learning_rate": jnp.float32(a.lr), "seed": jnp.int32(a.seed)})
        out[part] = {"loss_ratio": round(float(r["test_loss"]) / task.baseline, 5),
                     "steps_done": int(r["steps_done"]), "diverged": bool(r["diverged"]),
                     "wall": round(time.perf_counter() - t0, 1)}
    print(json.dumps({"preset": a.preset, "T": a.T, "hidden": a.hidden, "lr": a.lr, "clip": a.clip,
                      "seed": a.seed, "wx": a.wx, "opt": opts, "steps": a.steps, **out}), flush=True)


if __name__ == "__main__":
    main()
