"""The one compile cache: every compiled function (and cached cell) in gradflow lives here.

``cached(key, build)`` returns ``build()``, made once per hashable ``key`` and kept, least recently used
first out, up to :data:`CACHE_SIZE` entries. ``compiled(fn, *static)`` is
``jax.jit(functools.partial(fn, *static))`` made once per ``(fn, static)``: the measurements of
``gradflow.measure``, the training step, the sweeps, the cells' initializers and the tasks' samplers all go
through it, so there is one place to size or clear.

Example:
    >>> import jax.numpy as jnp
    >>> from gradflow import cache
    >>> def scale(k, x):
    ...     return k * x
    >>> f = cache.compiled(scale, 3.0)
    >>> float(f(jnp.float32(2.0))), cache.compiled(scale, 3.0) is f
    (6.0, True)
"""

from __future__ import annotations

import functools
import gc
from collections import OrderedDict
from collections.abc import Callable, Hashable

import jax

#: How many entries the cache keeps; the least recently used go first.
CACHE_SIZE = 512
_CACHE: OrderedDict = OrderedDict()


def cached(key: Hashable, build: Callable[[], object]):
    """``build()``, made once per ``key`` and kept (least recently used first out)."""
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    value = build()
    _CACHE[key] = value
    if len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


def compiled(fn: Callable, *static) -> Callable:
    """``jax.jit(functools.partial(fn, *static))``, compiled once per ``(fn, static)``.

    ``static`` must be hashable (cells, bools, ints, tuples); the remaining arguments of ``fn`` are traced.
    """
    return cached(("compiled", fn, static), lambda: jax.jit(functools.partial(fn, *static)))


def size() -> int:
    """How many entries the cache holds now."""
    return len(_CACHE)


def clear() -> None:
    """Drop every cached compilation and cell, and JAX's own compiled programs (``jax.clear_caches``).

    XLA's CPU backend keeps each compiled program's machine code mapped (~800 memory maps per training
    program measured here): a process that compiles a few hundred programs reaches the kernel's limit of
    65,530 maps and fails with "LLVM compilation error: Cannot allocate memory". Long jobs call this between
    independent groups of work when the process nears that limit (``analyses.runner.relieve_memory_maps``);
    the next call recompiles what it needs.
    """
    _CACHE.clear()
    jax.clear_caches()
    gc.collect()
