"""Progress lines for long engine calls, printed at chunk boundaries from inside the compiled scans.

``progress`` arguments accept: None / "auto" (on for long calls, unless the environment variable
``GRADFLOW_PROGRESS=0`` is set, as the test suite does), True (on), False (off) or a callable ``f(line: str)``
that receives the lines instead of stderr. Lines come from ``jax.debug.callback`` every ~10 % of the steps.

Example:
    >>> lines = []
    >>> every = resolve(lines.append, T=100)
    >>> every
    10
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import jax
import jax.numpy as jnp

__all__ = ["resolve", "reporting", "tick", "say"]

_STATE = {"sink": None, "start": 0.0, "what": ""}


def _enabled(progress, long: bool) -> bool:
    if progress is None or progress == "auto":
        return long and os.environ.get("GRADFLOW_PROGRESS", "1") != "0"
    if callable(progress) or isinstance(progress, bool):
        return bool(progress)
    raise ValueError(f"progress must be None, 'auto', True, False or a callable, got {progress!r}")


def resolve(progress, T: int, long: bool | None = None, chunks: int = 10) -> int:
    """Report interval in steps (0: off). ``long`` (default T >= 10^4) decides what "auto" does."""
    long = T >= 10_000 if long is None else long
    return max(1, int(T) // chunks) if _enabled(progress, long) else 0


def _sink(progress):
    if callable(progress) and not isinstance(progress, bool):
        return progress
    return lambda line: print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def reporting(progress, what: str, every: int):
    """Route the lines of compiled ``tick`` calls (and ``say``) to ``progress``'s sink while active."""
    old = dict(_STATE)
    if every:
        _STATE.update(sink=_sink(progress), start=time.perf_counter(), what=what)
    try:
        yield
    finally:
        _STATE.update(old)


def say(line: str) -> None:
    """Emit a line to the active sink (no-op when progress is off)."""
    if _STATE["sink"] is not None:
        _STATE["sink"](f"gradflow {_STATE['what']}: {line}")


def _emit(done, total):
    if _STATE["sink"] is None:
        return
    done, total = int(done), int(total)
    el = time.perf_counter() - _STATE["start"]
    eta = el * (total - done) / max(done, 1)
    say(f"{done}/{total} steps ({100 * done / total:.0f} %), {el:.1f} s elapsed, ~{eta:.0f} s left")


def tick(done, total: int, every: int) -> None:
    """Inside a scan body: report when ``done`` (a traced step count) is a multiple of ``every``."""
    if not every:
        return
    jax.lax.cond(
        (done % every == 0) & (done > 0),
        lambda: jax.debug.callback(_emit, done, jnp.asarray(total)),
        lambda: None,
    )
