"""Regenerate the prediction-vs-measurement table of docs/theory.md §7 (recurrent cells at initialization).

Each row is `gradflow.measure.theory_vs_measurement` on the real cell in train mode, float64, 16 input
features
(x ~ N(0, x_scale²)), `steps` steps with a third discarded, several W draws (config key ``seed``) per row, at
each hidden size d. It prints Markdown: predicted / measured mean ± seed s.d. / diff = measured − predicted
(for ``ln_notanh`` also measured − (predicted + ln ρ(W_hh)/g), the tied-weight correction of §6.1).

Usage (CPU, a few minutes at the defaults; set OPENBLAS_NUM_THREADS=1 on a shared machine)::

    OPENBLAS_NUM_THREADS=1 .venv/bin/python docs/theory_tables.py            # d = 128, 256, 512, 3 draws
    OPENBLAS_NUM_THREADS=1 .venv/bin/python docs/theory_tables.py --d 256 --only tanh ln_tanh

The deep BN feed-forward table of §7 does not involve the cells (fresh W_l per layer, no input): it is the
measurement of ``test_deep_bn_feedforward_explodes_at_batch_set_rate`` run over more layers and sizes.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax

from gradflow import measure

# (cell, batch size, configuration): the rows of docs/theory.md §7
ROWS = [
    ("tanh", 2, {"gain": 1.5, "has_input": False}),
    ("tanh", 2, {"gain": 2.0, "has_input": False}),
    ("tanh", 2, {"gain": 3.0, "has_input": False}),
    ("tanh", 2, {"gain": 2.0}),
    ("tanh", 2, {"gain": 2.0, "x_scale": 0.25}),
    ("bn_notanh", 8, {"gamma_x": 0.0}),
    ("bn_notanh", 8, {"gamma_x": 0.3}),
    ("bn_notanh", 8, {"gamma_x": 1.0}),
    ("bn_notanh", 8, {"gamma": 0.5, "gamma_x": 0.5, "gain": 2.0}),
    ("bn_tanh", 8, {"gamma": 0.1, "gamma_x": 0.1}),
    ("bn_tanh", 8, {"gamma": 1.0, "gamma_x": 1.0}),
    ("bn_tanh", 8, {"gamma": 0.1, "has_input": False}),
    ("bn_tanh", 8, {"gamma": 1.0, "has_input": False}),
    ("bn_tanh", 8, {"gamma": 3.0, "has_input": False}),
    ("ln_notanh", 2, {"gamma_x": 1.0}),
    ("ln_notanh", 2, {"gamma_x": 0.5}),
    ("ln_notanh", 2, {"gamma_x": 1.0, "dropout": 0.2}),
    ("ln_tanh", 2, {"gain": 1.0, "has_input": False}),
    ("ln_tanh", 2, {"gain": 3.0}),
    ("ln_tanh", 2, {"gain": 1.0}),
    ("ln_tanh", 2, {"gain": 1.0, "x_scale": 0.25}),
]


def measure_row(name, batch_size, cfg, d, draws, steps, input_size=16, key=5):
    """(predicted, measured mean, measured seed s.d., mean tied correction) over `draws` W draws."""
    with jax.enable_x64(True):
        out = measure.theory_vs_measurement(
            name,
            [{**cfg, "seed": s} for s in range(draws)],
            hidden_size=d,
            batch_size=batch_size,
            input_size=input_size,
            steps=steps,
            burn=steps // 3,
            key=jax.random.PRNGKey(key),
        )
    m = out["measured"]
    return (
        float(out["predicted"].mean()),
        float(m.mean()),
        float(m.std(ddof=1)),
        float(out["tied_correction"].mean()),
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--only", nargs="*", default=None, help="cell names to keep")
    a = ap.parse_args(argv)
    if a.draws < 2:
        raise ValueError(f"--draws must be >= 2 (a seed s.d. is reported), got {a.draws}")
    head = " | ".join(f"d={d}: pred / meas ± sd / diff" for d in a.d)
    print(f"| cell | B | configuration | {head} |")
    print("|---|---|---|" + "---|" * len(a.d))
    t0 = time.time()
    for name, B, cfg in ROWS:
        if a.only and name not in a.only:
            continue
        cells = []
        for d in a.d:
            p, m, sd, corr = measure_row(name, B, cfg, d, a.draws, a.steps)
            s = f"{p:+.3f} / {m:+.3f} ± {sd:.3f} / **{m - p:+.3f}**"
            if name == "ln_notanh" and not cfg.get("dropout"):
                s += f" (diff+ρ {m - p - corr:+.3f})"
            cells.append(s)
        label = ", ".join(f"{k}: {v}" for k, v in cfg.items())
        print(f"| `{name}` | {B} | {label} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n({time.time() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
