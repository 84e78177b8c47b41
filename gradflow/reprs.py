"""Short, readable reprs for the engine's result types (shapes and a few numbers, never whole arrays).

Example:
    >>> import jax.numpy as jnp
    >>> from typing import NamedTuple
    >>> class R(NamedTuple):
    ...     norms: object
    ...     n: int
    >>> short_repr(R(jnp.arange(5.0), 3))
    'R(norms=float32[5] [0, 1, 2, …, 4], n=3)'
"""

from __future__ import annotations

import numpy as np

__all__ = ["short_repr", "short_value"]


def _fmt(x) -> str:
    return f"{x:.4g}" if isinstance(x, (float, np.floating)) else str(x)


def short_value(v, head: int = 3) -> str:
    """A short description of one field: scalars as numbers, arrays as dtype[shape] and a few entries."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return repr(v) if not isinstance(v, float) else _fmt(v)
    if hasattr(v, "_fields"):
        return short_repr(v)
    try:
        a = np.asarray(v)
    except Exception:  # tracers and other non-array objects
        return f"{type(v).__name__}{getattr(v, 'shape', '')}"
    if a.dtype == object:
        return f"{type(v).__name__}"
    if a.ndim == 0:
        return _fmt(a.item())
    shape = ",".join(str(d) for d in a.shape)
    flat = a.ravel()
    if flat.size <= head + 1:
        vals = ", ".join(_fmt(x) for x in flat.tolist())
    else:
        vals = ", ".join(_fmt(x) for x in flat[:head].tolist()) + f", …, {_fmt(flat[-1].item())}"
    return f"{a.dtype}[{shape}] [{vals}]"


def short_repr(result) -> str:
    """``Name(field=short value, ...)`` for a NamedTuple result."""
    body = ", ".join(f"{k}={short_value(getattr(result, k))}" for k in result._fields)
    return f"{type(result).__name__}({body})"
