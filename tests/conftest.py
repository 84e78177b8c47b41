"""Shared test setup: float32 by default, float64 on request via the ``x64`` fixture."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("GRADFLOW_PROGRESS", "0")  # no progress lines from long engine calls in tests
# The suite is bound by XLA compilation (hundreds of small programs each compiled once): compiling them
# without XLA's optimization passes takes the suite from 7.3 to 5.3 min on two cores. The numbers differ
# from the optimized programs' by rounding only, and every test passes both ways (set it to 0 to check).
# The environment variable also reaches the subprocesses of the multi-device sweep tests, so that both sides
# of their bit-for-bit comparisons are compiled alike.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# JAX's persistent compilation cache: a second `make test` reads the compiled programs back instead of
# compiling them again (tests/test_families.py: 57 s without, 46 s filling it, 16 s reading it), and the two
# pytest workers share what either compiled. Keys cover the program, the compile options and the JAX
# version, so a stale entry is never read. JAX_COMPILATION_CACHE_DIR= (empty) turns it off; `make clean`
# empties it.
CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), ".cache", "jax-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # the suite's programs are small

import jax  # noqa: E402
import pytest  # noqa: E402

# gradflow's doctest modules may import jax before this file: set the flags explicitly as well
OPTIMIZE_OFF = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] not in ("", "0")
jax.config.update("jax_disable_most_optimizations", OPTIMIZE_OFF)
jax.config.update("jax_compilation_cache_dir", CACHE or None)
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


@pytest.fixture
def x64():
    """Run the test body with ``jax_enable_x64`` on (reference tests in float64)."""
    with jax.enable_x64(True):
        yield
