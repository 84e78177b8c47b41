"""Shared argument checks and atomic file writes (used across gradflow and analyses).

Every check raises a ``ValueError`` that names the argument and shows the offending value, and accepts the
NumPy scalar types a caller naturally has in hand (``np.int64`` from an array, ``np.float32`` from a config);
``bool`` is never an integer here. Each returns the value as a plain Python ``int`` / ``float``.

Example:
    >>> import numpy as np
    >>> positive_int("probes", np.int64(4))
    4
    >>> positive_float("learning_rate", np.float32(0.5))
    0.5
    >>> seed("seed", -1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: seed must be an int with 0 <= seed < 2**32 ...got -1
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from gradflow.statemap import is_traced

__all__ = [
    "is_int",
    "is_real",
    "positive_int",
    "nonneg_int",
    "int_at_least",
    "positive_float",
    "finite_float",
    "seed",
    "flag",
    "nonneg_float",
    "unit_fraction",
    "prng_key",
    "real_array",
    "singular_values",
    "float32_representable",
    "raise_if_nonfinite",
    "atomic_write_bytes",
    "remove_orphan_temporaries",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_npz",
    "json_default",
]

SEED_LIMIT = 2**32


def is_int(value: Any) -> bool:
    """True for Python and NumPy integers, False for bools (``True`` is not a count)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def is_real(value: Any) -> bool:
    """True for Python and NumPy integers and floats, False for bools."""
    real = isinstance(value, int | float | np.integer | np.floating)
    return real and not isinstance(value, bool | np.bool_)


def int_at_least(name: str, value: Any, minimum: int) -> int:
    """``int(value)`` for an integer (Python or NumPy, not bool) ``>= minimum``; else ValueError."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """``int(value)`` for an integer >= 1 (Python or NumPy, not bool); else ValueError naming ``name``.

    >>> positive_int("chunk", 0)
    Traceback (most recent call last):
    ...
    ValueError: chunk must be a positive int, got 0
    """
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def nonneg_int(name: str, value: Any) -> int:
    """``int(value)`` for an integer >= 0 (Python or NumPy, not bool); else ValueError naming ``name``."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def finite_float(name: str, value: Any) -> float:
    """``float(value)`` for a finite real number (Python or NumPy int/float, not bool); else ValueError."""
    if not is_real(value) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def positive_float(name: str, value: Any) -> float:
    """``float(value)`` for a finite number > 0 (Python or NumPy scalar, not bool); else ValueError.

    >>> positive_float("clip_norm", -1.0)
    Traceback (most recent call last):
    ...
    ValueError: clip_norm must be a finite number > 0, got -1.0
    """
    if not is_real(value) or not math.isfinite(float(value)) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def state_k(k: Any, n: int) -> int:
    """``int(k)`` for a number of exponents or directions, ``1 <= k <= n`` (n: the state size); else
    ValueError."""
    if not is_int(k) or not 1 <= k <= n:
        raise ValueError(f"k must be an int with 1 <= k <= n = {n} (the state size), got {k!r}")
    return int(k)


def seed(name: str, value: Any) -> int:
    """``int(value)`` for a PRNG seed, ``0 <= value < 2**32``; else ValueError naming ``name``.

    ``jax.random.PRNGKey`` keeps 32 bits of a seed in its default mode, so ``2**32`` gives seed 0's key and -1
    gives ``2**32 - 1``'s: two "different" runs would be the same run bit for bit.
    """
    if not is_int(value) or not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name} must be an int with 0 <= {name} < 2**32 (a PRNG seed is 32 bits: larger or "
                         f"negative values alias others), got {value!r}")
    return int(value)


def flag(name: str, value: Any) -> bool:
    """``bool(value)`` for a real bool (Python or NumPy); else ValueError (a string such as ``"False"`` is
    truthy, so it is refused rather than read as True).

    >>> flag("train", "False")
    Traceback (most recent call last):
    ...
    ValueError: train must be True or False, got 'False'
    """
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def nonneg_float(name: str, value: Any) -> float:
    """``float(value)`` for a finite number >= 0 (Python or NumPy scalar, not bool); else ValueError."""
    if not is_real(value) or not math.isfinite(float(value)) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def unit_fraction(name: str, value: Any) -> float:
    """``float(value)`` for a number strictly between 0 and 1 (Python or NumPy scalar, not bool); else
    ValueError naming ``name``.

    >>> unit_fraction("fraction", np.float32(0.25))
    0.25
    >>> unit_fraction("fraction", 1.0)
    Traceback (most recent call last):
    ...
    ValueError: fraction must be a number in (0, 1), got 1.0
    """
    if not is_real(value) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def prng_key(name: str, value: Any, required: bool = False):
    """A PRNG key from ``value``: a JAX key (``jax.random.key(s)`` or ``jax.random.PRNGKey(s)``) as is, an int
    as a seed (``jax.random.PRNGKey(value)``, checked by :func:`seed`); None stays None unless ``required``.

    Raises:
        ValueError: None when ``required``, or anything else, saying what is accepted.

    >>> prng_key("key", 3).tolist()
    [0, 3]
    >>> prng_key("key", None, required=True)
    Traceback (most recent call last):
    ...
    ValueError: key is required: pass a PRNG key (jax.random.key(0)) or an int seed, got None
    """
    import jax

    if value is None:
        if required:
            raise ValueError(f"{name} is required: pass a PRNG key (jax.random.key(0)) or an int seed, "
                             "got None")
        return None
    if is_int(value):
        return jax.random.PRNGKey(seed(name, value))
    dtype = getattr(value, "dtype", None)
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype is not None and not typed and np.dtype(dtype) == np.uint32 and np.shape(value)[-1:] == (2,)
    if (typed and np.shape(value) != ()) or (raw and np.shape(value) != (2,)):
        raise ValueError(f"{name} must be one PRNG key, got a batch of keys of shape "
                         f"{np.shape(value)[:None if typed else -1]}: pass a single key (e.g. keys[0]), or "
                         "jax.vmap over the keys")
    if typed or raw:
        return value
    raise ValueError(f"{name} must be a PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)) or an "
                     f"int seed, got {type(value).__name__} {value!r}"[:300])


def real_array(name: str, value: Any, min_ndim: int = 0) -> np.ndarray:
    """``value`` as a float64 NumPy array: real numbers (ints or floats, any array type) with at least
    ``min_ndim`` axes; else ValueError naming ``name`` (strings, None, bools, complex numbers, ragged lists).
    """
    try:
        a = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be an array of real numbers, got {type(value).__name__}: "
                         f"{e}") from None
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name} must be an array of real numbers, got {type(value).__name__} of dtype "
                         f"{a.dtype}"[:300])
    if a.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} axes, got shape {a.shape}")
    return a.astype(np.float64)


def float32_representable(name: str, value: Any) -> None:
    """Raise ValueError when a concrete float64 array (NumPy, or a Python float list) holds finite nonzero
    values beyond float32's normal range while ``jax_enable_x64`` is off: JAX would cast them to inf or 0
    silently. No-op under tracing, under x64, for JAX arrays (already cast) and for other dtypes."""
    if is_traced(value) or jax.config.jax_enable_x64 or isinstance(value, jax.Array):
        return
    a = np.asarray(value)
    if a.dtype != np.float64 or a.size == 0:
        return
    m = np.abs(a[np.isfinite(a) & (a != 0)])
    info = np.finfo(np.float32)
    if m.size and (m.max() > info.max or m.min() < info.tiny):
        raise ValueError(
            f"{name} (float64) holds values beyond float32's range ({m.min():.3g} .. {m.max():.3g}; float32 "
            f"keeps {info.tiny:.3g} .. {info.max:.3g}) and jax_enable_x64 is off, so JAX would turn them "
            "into 0 or inf: enable x64 (jax.config.update('jax_enable_x64', True)) or rescale them")


def singular_values(name: str, value: Any) -> None:
    """Check singular values (..., n): real, n >= 1, none negative or inf (NaN allowed: an unresolved value
    gives a NaN result); skipped under tracing."""
    if is_traced(value):
        return
    a = real_array(name, value, min_ndim=1)
    if a.shape[-1] == 0:
        raise ValueError(f"{name} is empty: need at least one singular value on the last axis, got shape "
                         f"{a.shape}")
    if np.any(a < 0):
        raise ValueError(f"{name} must be >= 0 (singular values), got a negative value {a[a < 0].min()}")
    if np.any(np.isinf(a)):
        raise ValueError(f"{name} holds inf (an overflowed spectrum has no ratios): pass the singular values "
                         "divided by their largest (or their logs' differences, exp(log s - log s_1))")


def raise_if_nonfinite(flags, consequence: str = "the Jacobians are undefined") -> None:
    """Raise if a (T,) bool array of per-state finiteness flags has a False (no-op under tracing).

    Raises:
        ValueError: naming the first non-finite state h_t (t = index + 1).
    """
    if is_traced(flags):
        return
    flags = np.asarray(flags)
    if not flags.all():
        t = int(np.argmin(flags)) + 1
        raise ValueError(
            f"non-finite state: h_{t} (the state after {t} steps) has NaN or inf; {consequence}"
        )


# ----------------------------------------------------------------------------------------------- files

_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable where the platform allows it."""
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


_HOST = socket.gethostname().replace("/", "_")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_orphan_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write_bytes` for ``path`` whose writer (a process on this
    host) no longer runs: what a killed write leaves. Returns the files removed."""
    path = Path(path)
    head = f".{path.name}."
    removed = []
    with contextlib.suppress(OSError):
        for p in path.parent.iterdir():
            name = p.name
            if not (name.startswith(head) and name.endswith(".tmp")):
                continue
            pid, at, rest = name[len(head):].partition("@")
            if not (at and pid.isdigit()) or rest.rsplit(".", 2)[0] != _HOST or _pid_alive(int(pid)):
                continue
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically: a hidden temporary file in the same folder, fsync, rename.

    A reader sees either the old file or the complete new one, never a part. The temporary file is removed on
    any exception; one left by a killed process (its name ``.<name>.<pid>@<host>.*.tmp`` names the writer) is
    removed by the next write of the same path once that process is gone. The folder is created if missing
    and the file gets the usual mode (0666 less the umask).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a" / "x.bin"
    >>> atomic_write_bytes(p, b"abc"); p.read_bytes()
    b'abc'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphan_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}@{_HOST}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def json_default(x):
    """``json.dumps(default=...)`` hook: NumPy scalars and arrays as Python values."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON-serializable: {type(x).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as indented, key-sorted JSON (NumPy scalars/arrays allowed)."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=json_default) + "\n")


def atomic_write_npz(path: str | os.PathLike, arrays: dict) -> None:
    """:func:`atomic_write_bytes` of ``np.savez(**arrays)`` (uncompressed)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def folder_path(name: str, value: Any) -> str:
    """``os.fspath(value)`` for a folder or file path (a ``str`` or ``os.PathLike`` giving a ``str``); else
    ValueError naming ``name`` (None, a number, bytes).

    >>> folder_path("store", 3)
    Traceback (most recent call last):
    ...
    ValueError: store must be a path (a str or os.PathLike), got int 3
    """
    path = os.fspath(value) if isinstance(value, str | os.PathLike) else None
    if not isinstance(path, str):
        raise ValueError(f"{name} must be a path (a str or os.PathLike), got {type(value).__name__} "
                         f"{value!r}"[:300])
    return path


def finite_array(name: str, value: Any, min_ndim: int = 0) -> np.ndarray:
    """:func:`real_array` that also refuses NaN and ±inf entries (naming ``name`` and the first bad index).

    >>> finite_array("xs", [[1.0, float("nan")]])
    Traceback (most recent call last):
    ...
    ValueError: xs must be finite, got nan at index (0, 1)
    """
    a = real_array(name, value, min_ndim)
    bad = ~np.isfinite(a)
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be finite, got {float(a[at])!r} at index {at}")
    return a
