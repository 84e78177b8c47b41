"""Shared test setup: float32 by default, float64 on request via the ``x64`` fixture."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("GRADFLOW_PROGRESS", "0")  # no progress lines from long engine calls in tests

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run the test body with ``jax_enable_x64`` on (reference tests in float64)."""
    with jax.enable_x64(True):
        yield
