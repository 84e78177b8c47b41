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

import jax  # noqa: E402
import pytest  # noqa: E402

# gradflow's doctest modules may import jax before this file: set the flag explicitly as well
OPTIMIZE_OFF = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] not in ("", "0")
jax.config.update("jax_disable_most_optimizations", OPTIMIZE_OFF)


@pytest.fixture
def x64():
    """Run the test body with ``jax_enable_x64`` on (reference tests in float64)."""
    with jax.enable_x64(True):
        yield
