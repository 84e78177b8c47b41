"""The one compile cache: entries are reused, and ``clear`` frees the compiled programs' memory maps (a full
training study once died of "LLVM compilation error: Cannot allocate memory" at the kernel's 65,530 maps)."""

from __future__ import annotations

import os

import jax.numpy as jnp
import pytest

from gradflow import cache


def _maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def _scaled(k, x):
    return jnp.tanh(k * x) @ x.T


def test_compiled_is_reused_and_clear_rebuilds():
    f = cache.compiled(_scaled, 2.0)
    assert cache.compiled(_scaled, 2.0) is f
    cache.clear()
    g = cache.compiled(_scaled, 2.0)
    assert g is not f
    x = jnp.ones((2, 3))
    assert float(g(x)[0, 0]) == pytest.approx(3 * float(jnp.tanh(2.0)), rel=1e-6)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc/self/maps")
def test_clear_frees_the_memory_maps_of_compiled_programs():
    cache.clear()
    base = _maps()
    for k in range(40):  # 40 distinct programs (each a new static k)
        cache.compiled(_scaled, float(k))(jnp.ones((3, k + 2)))
    grown = _maps()
    cache.clear()
    freed = _maps()
    assert grown - base > 40, "each compiled program should hold memory maps (else this measures nothing)"
    assert freed - base < 0.25 * (grown - base)


@pytest.mark.skipif(not os.path.exists("/proc/sys/vm/max_map_count"), reason="needs Linux's map limit")
def test_relieve_clears_only_near_the_kernels_limit():
    from analyses.runner import relieve_memory_maps

    f = cache.compiled(_scaled, 7.0)
    assert relieve_memory_maps(share=1.01) is False  # never above the whole limit
    assert cache.compiled(_scaled, 7.0) is f  # kept
    assert relieve_memory_maps(share=0.0) is True
    assert cache.compiled(_scaled, 7.0) is not f  # cleared
