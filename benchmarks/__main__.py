"""Run every benchmark: ``python -m benchmarks [--quick]`` (what ``make bench`` runs).

Each benchmark module prints its own measurements as ratios against a baseline timed in the same run,
so the numbers mean the same on any machine. OpenBLAS is pinned to one thread (see the Makefile)
because JAX's CPU SVD and QR slow down more than 100-fold with two threads when another process
holds a core.
"""

import importlib
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

MODULES = ("bench_engine", "bench_sweep", "bench_train")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    for name in MODULES:
        print(f"=== benchmarks.{name} {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        importlib.import_module(f"benchmarks.{name}").main(argv)
        print(f"=== benchmarks.{name} done in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
