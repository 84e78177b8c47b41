"""Sweeps that scale: a grid of configurations evaluated with ``jax.vmap`` within a device, sharded across
every device (and host) with ``jax.sharding``, and stored chunk by chunk so that an interrupted sweep
resumes where it stopped.

A grid has two kinds of axes:

- **static** axes (preset name, width, batch size, length, ...) change shapes or code. Each combination of
  their values is one *static group*; groups are looped over in Python and each is compiled once.
- **traced** axes (gain, γ, seed, input scale, ...) are numbers. Their Cartesian product (M configurations)
  is split into chunks of ``chunk`` configurations. Each step evaluates one chunk per device: the chunks are
  laid end to end along a leading axis sharded with ``NamedSharding(Mesh(devices, ("grid",)), P("grid"))``,
  so that each device runs ``jax.vmap`` over exactly one chunk.

A device always vmaps over ``chunk`` configurations (a short last chunk is padded by repeating its last
configuration; idle devices in the last step repeat a chunk), whatever the device count. XLA's vectorized
code can round differently for different batch sizes (a last-bit difference was seen on CPU), so this layout
is what makes 1 device and N devices give bit-identical results.

The function swept is ``fn(static_cfg) -> f`` with ``f(traced: dict[str, scalar]) -> dict[str, array]``:
``fn`` is called once per static group (it may build cells, inputs, anything that depends on shapes), ``f``
must be jittable and vmappable over its scalar arguments.

Each completed chunk is written atomically (a temporary file, then ``os.replace``) into the ``store``
folder under a name derived from a hash of its configurations (the static configuration, the traced values,
a user ``tag`` and the x64 flag). A killed sweep leaves only complete chunk files, so running it again
computes only the missing chunks, and the results are those of an uninterrupted run. The chunk boundaries
depend on ``chunk`` and the grid, not on the number of devices: a sweep started on one machine can be
finished on another. Each chunk records its own index, rows and key, and a chunk read back is checked against
the key of its place (its configuration is hashed again), so a chunk file copied over another's is named, not
trusted. Two runs on one store share the work: a run claims a chunk (a hidden ``.chunk-<key>.claim`` file
created with O_EXCL, holding host, pid and time) before computing it, skips chunks another run has claimed and
reads them once written; a claim whose process is gone (same host) or older than ``CLAIM_STALE_S`` (another
host) is taken over.

Several hosts: after ``jax.distributed.initialize()``, ``jax.devices()`` spans every host and the same call
works unchanged: every process runs ``run_sweep`` with the same grid; which chunks are done is decided by
process 0 and broadcast; inputs are built with ``jax.make_array_from_callback`` (each process fills its own
shards); results are gathered with ``multihost_utils.process_allgather``; only process 0 reads and writes
the store and returns the table (other processes return ``None``). This path is tested with 2 processes
on one machine (CPU devices, gloo collectives), not yet across real hosts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gradflow import cache
from gradflow.checks import atomic_write_npz, folder_path, is_int

__all__ = ["Grid", "run_sweep", "load_table", "pivot", "to_dataframe", "grid_sharding"]

_FORMAT = 1
_PREFIX = "chunk-"
_SUFFIX = ".npz"


def _is_static_value(v: Any) -> bool:
    return v is None or isinstance(v, str | bool | int | float | np.integer | np.floating | np.bool_)


def _py(v: Any) -> Any:
    """A static value as a plain Python scalar (for JSON and for the function)."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def _check_name(name: Any, kind: str) -> None:
    if not isinstance(name, str) or not name or name.startswith("_") or ":" in name:
        raise ValueError(
            f"{kind} axis name must be a non-empty str not starting with '_' and without ':', got {name!r}"
        )


def _static_axis(name: str, values) -> tuple:
    """A checked static axis: a non-empty sequence of distinct JSON scalars."""
    _check_name(name, "static")
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | np.ndarray):
        raise ValueError(f"static axis {name!r} must be a sequence of values, got {type(values).__name__}")
    values = [_py(v) for v in values]
    if not values:
        raise ValueError(f"static axis {name!r} is empty")
    for v in values:
        if not _is_static_value(v):
            raise ValueError(
                f"static axis {name!r}: values must be str, int, float, bool or None, got {type(v).__name__}"
            )
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"static axis {name!r} has a non-finite value {v!r}")
    if len({json.dumps(v) for v in values}) != len(values):
        raise ValueError(f"static axis {name!r} has repeated values {values!r}")
    return tuple(values)


def _traced_axis(name: str, values) -> np.ndarray:
    """A checked traced axis: a non-empty 1-D array of distinct finite numbers (integers within int32)."""
    _check_name(name, "traced")
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"traced axis {name!r} must be a non-empty 1-D sequence, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"traced axis {name!r} must hold numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"traced axis {name!r} has non-finite values")
    i32 = np.iinfo(np.int32)
    if arr.dtype.kind in "iu" and (arr.min() < i32.min or arr.max() > i32.max):
        raise ValueError(f"traced axis {name!r} has integers that do not fit in int32")
    if len(np.unique(arr)) != arr.size:
        raise ValueError(f"traced axis {name!r} has repeated values")
    if arr.dtype.kind == "f":  # the values the sweep runs with: float32 unless x64 is on
        dt = jax.dtypes.canonicalize_dtype(np.float64)
        with np.errstate(over="ignore"):
            cast = arr.astype(dt)
        if not np.all(np.isfinite(cast)) or len(np.unique(cast)) != arr.size:
            raise ValueError(f"traced axis {name!r}: values {arr.tolist()} overflow or collide once cast to "
                             f"{np.dtype(dt).name} (the dtype the sweep computes in: {cast.tolist()}); use "
                             "values that differ in that precision, or jax.enable_x64")
    return arr


class Grid:
    """A grid of configurations: the product of static axes times the product of traced axes.

    Args:
        static: ``{name: sequence of str/int/float/bool/None}``; each combination is compiled separately.
        traced: ``{name: sequence of numbers}`` (ints, floats or bools); their product is vmapped and sharded.
            Integer axes (seeds) become int32, float axes float32 (float64 under ``jax.enable_x64``), bool
            axes bool.

    Rows are ordered static-major, then traced, each product in C order of the axes as given (last axis
    fastest).

    Example:
        >>> g = Grid(static={"T": [10, 20]}, traced={"gain": [0.5, 1.0, 2.0], "seed": [0, 1]})
        >>> len(g), g.n_static, g.n_traced
        (12, 2, 6)
    """

    def __init__(
        self, static: Mapping[str, Sequence] | None = None, traced: Mapping[str, Sequence] | None = None
    ):
        for kind, axes in (("static", static), ("traced", traced)):
            if axes is not None and not isinstance(axes, Mapping):
                raise ValueError(f"{kind} must be a dict {{axis name: values}}, got {type(axes).__name__} "
                                 f"{axes!r}"[:300])
        static = {name: _static_axis(name, values) for name, values in dict(static or {}).items()}
        traced = dict(traced or {})
        if not traced:
            raise ValueError("Grid needs at least one traced axis (a numeric axis to vmap over)")
        for name in traced:
            if name in static:
                raise ValueError(f"axis {name!r} is both static and traced")
        self.static: dict[str, tuple] = static
        self.traced: dict[str, np.ndarray] = {name: _traced_axis(name, v) for name, v in traced.items()}

    @property
    def n_static(self) -> int:
        """Number of static groups."""
        return math.prod(len(v) for v in self.static.values())

    @property
    def n_traced(self) -> int:
        """Number of traced configurations per static group (M)."""
        return math.prod(v.size for v in self.traced.values())

    def __len__(self) -> int:
        return self.n_static * self.n_traced

    def __repr__(self) -> str:
        s = {k: list(v) for k, v in self.static.items()}
        t = {k: v.tolist() for k, v in self.traced.items()}
        return f"Grid(static={s}, traced={t})"

    def static_configs(self) -> list[dict[str, Any]]:
        """The static groups, as a list of ``{name: value}`` dicts in row order."""
        names = list(self.static)
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*self.static.values())]

    def traced_columns(self) -> dict[str, np.ndarray]:
        """The traced configurations of one static group: ``{name: (M,) array}`` in row order.

        Dtypes: int32 for integer axes, bool for bool axes, JAX's default float dtype for float axes.
        """
        names = list(self.traced)
        grids = np.meshgrid(*self.traced.values(), indexing="ij")
        cols = {}
        float_dtype = jax.dtypes.canonicalize_dtype(np.float64)  # float32 unless x64 is on
        for name, g in zip(names, grids, strict=True):
            flat = g.reshape(-1)
            kind = flat.dtype.kind
            dtype = np.bool_ if kind == "b" else (np.int32 if kind in "iu" else float_dtype)
            cols[name] = flat.astype(dtype)
        return cols


def grid_sharding(devices: Sequence | None = None) -> NamedSharding:
    """The sharding of a sweep's leading (configuration) axis over ``devices`` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty")
    return NamedSharding(Mesh(np.array(devices), ("grid",)), P("grid"))


def _chunk_key(tag: str, static_cfg: Mapping, cols: Mapping[str, np.ndarray],
               x64: bool | None = None) -> str:
    payload = {
        "format": _FORMAT,
        "tag": tag,
        "x64": bool(jax.config.jax_enable_x64) if x64 is None else bool(x64),
        "static": {k: static_cfg[k] for k in sorted(static_cfg)},
        "traced": {k: [str(cols[k].dtype), cols[k].tolist()] for k in cols},
    }
    text = json.dumps(payload, sort_keys=False, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _chunk_path(store: str, key: str) -> str:
    return os.path.join(store, f"{_PREFIX}{key}{_SUFFIX}")


def _write_chunk(
    store: str, key: str, meta: dict, cols: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray]
):
    """Write one chunk atomically: a temporary file in the same folder, fsync, then ``os.replace``."""
    arrays = {"_meta": np.array(json.dumps(meta))}
    arrays.update({f"cfg:{k}": np.asarray(v) for k, v in cols.items()})
    arrays.update({f"out:{k}": np.asarray(v) for k, v in out.items()})
    atomic_write_npz(_chunk_path(store, key), arrays)


def _read_chunk(path: str) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["_meta"]))
            cols = {k[4:]: z[k] for k in z.files if k.startswith("cfg:")}
            out = {k[4:]: z[k] for k in z.files if k.startswith("out:")}
        cols = {k: cols[k] for k in meta["traced_names"]}
        out = {k: out[k] for k in meta["result_names"]}
    except Exception as err:  # our writes are atomic: this is a file damaged or written by something else
        raise ValueError(
            f"chunk file {path} is unreadable ({type(err).__name__}: {err}); delete it to recompute"
        ) from err
    return meta, cols, out


def _verify_chunk(path: str, key: str, meta: dict, cols: Mapping[str, np.ndarray], rows=None) -> None:
    """Raise ValueError when the chunk in ``path`` is not the chunk ``key`` names: its own configuration
    (tag, static values, traced values) hashes to another key, or its recorded rows differ from ``rows``
    (a chunk file copied or written over another's place would otherwise give wrong rows)."""
    own = _chunk_key(meta.get("tag"), meta.get("static", {}), cols, meta.get("x64"))
    recorded = meta.get("key", own)
    if own != key or recorded != key or (rows is not None and list(meta.get("rows", rows)) != list(rows)):
        raise ValueError(
            f"chunk file {path} holds another chunk (its configuration's key is {own}, recorded key "
            f"{recorded}, rows {meta.get('rows')}; this place is for key {key}"
            + (f", rows {list(rows)}" if rows is not None else "")
            + "): it was moved or overwritten; delete it to recompute"
        )


def _gather(x: jax.Array) -> np.ndarray:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _done_mask(store: str | None, keys: list[str]) -> np.ndarray:
    mask = np.zeros(len(keys), dtype=np.int32)
    if store is not None and jax.process_index() == 0:
        mask[:] = [os.path.exists(_chunk_path(store, k)) for k in keys]
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        mask = np.asarray(multihost_utils.broadcast_one_to_all(mask))
    return mask.astype(bool)


def _report(progress, info: dict) -> None:
    if progress is None or progress is False:
        return
    if progress is True:
        if jax.process_index() == 0:
            what = "computed" if info["computed"] else "loaded"
            print(
                f"sweep: chunk {info['index'] + 1}/{info['total']} {what} "
                f"(group {info['static']}, rows {info['rows'][0]}:{info['rows'][1]}, "
                f"{info['seconds']:.2f} s, {info['n_devices']} device(s))",
                file=sys.stderr,
                flush=True,
            )
        return
    progress(info)


def _check_results(shapes: Any, n: int) -> list[str]:
    if not isinstance(shapes, Mapping) or not shapes:
        raise ValueError(
            f"the swept function must return a non-empty dict of arrays, got {type(shapes).__name__}"
        )
    for k, v in shapes.items():
        _check_name(k, "result")
        if not hasattr(v, "shape") or not hasattr(v, "dtype"):
            raise ValueError(f"result {k!r} must be an array, got {type(v).__name__}")
        if v.shape[:1] != (n,):
            raise ValueError(f"result {k!r} has shape {v.shape}; expected a leading axis of {n}")
    return list(shapes)


def _compiled_for(fn, scfg: dict, cols: Mapping[str, np.ndarray], width: int, sharding: NamedSharding):
    """``jit(vmap(fn(scfg)))`` with its results checked; reused across calls with the same ``fn`` object."""
    try:
        ckey = (
            fn,
            json.dumps(scfg, sort_keys=True),
            width,
            tuple(d.id for d in sharding.mesh.devices.flat),
            tuple((k, str(v.dtype)) for k, v in cols.items()),
            bool(jax.config.jax_enable_x64),
        )
        hash(ckey)
    except TypeError:
        ckey = None
    if ckey is None:
        return _build_sweep_fn(fn, scfg, cols, width, sharding)
    return cache.cached(("sweep", *ckey), lambda: _build_sweep_fn(fn, scfg, cols, width, sharding))


def _build_sweep_fn(fn, scfg: dict, cols: Mapping[str, np.ndarray], width: int, sharding: NamedSharding):
    f = fn(dict(scfg))
    if not callable(f):
        raise ValueError(f"fn({scfg}) must return a callable, got {type(f).__name__}")
    example = {k: jax.ShapeDtypeStruct((width,), v.dtype) for k, v in cols.items()}
    result_names = _check_results(jax.eval_shape(jax.vmap(f), example), width)
    clash = set(result_names) & (set(cols) | set(scfg))
    if clash:
        raise ValueError(f"result names {sorted(clash)} clash with axis names")
    return jax.jit(jax.vmap(f), out_shardings=sharding)


def run_sweep(
    fn: Callable[[dict], Callable[[dict], Mapping[str, Any]]],
    grid: Grid,
    *,
    store: str | os.PathLike | None = None,
    chunk: int = 64,
    tag: str = "",
    progress: bool | Callable[[dict], None] | None = None,
    devices: Sequence | None = None,
) -> dict[str, np.ndarray] | None:
    """Evaluate ``fn`` on every configuration of ``grid``: vmapped per device, sharded, resumable.

    Args:
        fn: ``fn(static_cfg: dict) -> f``, called once per static group that has missing chunks (the
            compiled ``jit(vmap(f))`` is kept for the next call with the same ``fn`` object and group);
            ``f(traced: dict[str, scalar array]) -> dict[str, array]`` must be jittable and vmappable.
            Result names must not clash with axis names.
        grid: the ``Grid``.
        store: a folder for the chunk files (created if missing). ``None`` keeps results in memory only.
        chunk: configurations per chunk: the unit of storage and the vmapped batch of one device (so a
            step evaluates ``chunk * device_count`` configurations; lower it if a step runs out of memory).
        tag: a string folded into every chunk's key: change it when ``fn``'s meaning changes, so that stale
            results in the store are not reused.
        progress: ``True`` prints one line per chunk to stderr; a callable receives a dict per chunk with keys
            ``index, total, computed, static, rows, key, seconds, n_devices``.
        devices: the devices to shard over (default: all of ``jax.devices()``, every host's after
            ``jax.distributed.initialize``).

    Returns:
        The tidy table, a dict of NumPy columns with one row per configuration, in grid order: a column per
        static axis, per traced axis, and per result (shape ``(len(grid), ...)``; an object column of
        per-row arrays when a result's shape differs between static groups). ``None`` on processes other
        than 0 of a multi-host run.

    Example:
        >>> import jax.numpy as jnp
        >>> def fn(static):
        ...     return lambda c: {"y": c["a"] ** static["p"] + c["seed"]}
        >>> table = run_sweep(fn, Grid(static={"p": [1, 2]}, traced={"a": [1.0, 2.0], "seed": [0, 10]}))
        >>> table["y"].tolist()
        [1.0, 11.0, 2.0, 12.0, 1.0, 11.0, 4.0, 14.0]
    """
    _check_sweep_args(fn, grid, chunk, tag, progress)
    run = _plan(grid, store, int(chunk), tag, progress, grid_sharding(devices))
    for g, scfg in enumerate(run.statics):
        items = [i for i, p in enumerate(run.plan) if p[0] == g]
        for i in items:
            if run.done[i]:
                start = time.perf_counter()
                if run.writer:
                    run.results[i] = _read_verified(run, i)
                _report_chunk(run, i, False, time.perf_counter() - start)
        todo = [i for i in items if not run.done[i]]
        if todo and not _shares_store(run):
            compiled = _compiled_for(fn, scfg, run.cols, run.n_dev * run.chunk, run.sharding)
            for first in range(0, len(todo), run.n_dev):
                _compute_step(run, compiled, scfg, todo[first:first + run.n_dev])
        elif todo:
            _compute_shared(run, fn, scfg, todo)
    return _table(grid, run) if run.writer else None


# ------------------------------------------------------------------ claims: two runs on one store share it

#: A claim older than this (seconds) whose holder cannot be checked (another host) is taken over.
CLAIM_STALE_S = 3600.0
#: How often (seconds) a run waiting for chunks claimed by another run looks again.
CLAIM_POLL_S = 0.5


def _shares_store(run: _Run) -> bool:
    """Claims are used by single-process runs with a store (several hosts: process 0 decides alone)."""
    return run.store is not None and jax.process_count() == 1


def _claim_path(store: str, key: str) -> str:
    return os.path.join(store, f".{_PREFIX}{key}.claim")


def _claim(store: str, key: str) -> bool:
    """Claim chunk ``key`` for this process (an O_EXCL claim file holding host, pid and time); True when
    claimed. A claim whose holder is gone (same host, pid not running) or older than CLAIM_STALE_S is
    removed and claimed anew."""
    path = _claim_path(store, key)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            if not _claim_is_stale(path):
                return False
            with contextlib.suppress(OSError):
                os.unlink(path)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}, f)
        return True
    return False


def _claim_is_stale(path: str) -> bool:
    try:
        with open(path) as f:
            info = json.load(f)
        host, pid, t = info["host"], int(info["pid"]), float(info["time"])
    except FileNotFoundError:
        return False  # released meanwhile: the next O_EXCL decides
    except (OSError, ValueError, KeyError, TypeError):  # a claim killed while being written
        with contextlib.suppress(OSError):
            return time.time() - os.path.getmtime(path) > 60.0
        return False
    if host == socket.gethostname():
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return time.time() - t > CLAIM_STALE_S


def _release(store: str, key: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(_claim_path(store, key))


def _compute_shared(run: _Run, fn, scfg: dict, todo: list[int]) -> None:
    """Compute the chunks in ``todo`` that no other run has claimed, and wait for (then read) those another
    run computes; a claim whose holder died is taken over."""
    compiled = None
    while todo:
        mine, waiting = [], []
        for i in todo:
            key = run.plan[i][3]
            if os.path.exists(_chunk_path(run.store, key)):
                start = time.perf_counter()
                run.results[i] = _read_verified(run, i)
                _report_chunk(run, i, False, time.perf_counter() - start)
            elif len(mine) < run.n_dev and _claim(run.store, key):
                mine.append(i)
            else:
                waiting.append(i)
        if mine:
            try:
                if compiled is None:
                    compiled = _compiled_for(fn, scfg, run.cols, run.n_dev * run.chunk, run.sharding)
                _compute_step(run, compiled, scfg, mine)
            finally:
                for i in mine:
                    _release(run.store, run.plan[i][3])
        elif waiting:
            time.sleep(CLAIM_POLL_S)
        todo = [i for i in todo if run.results[i] is None]


def _read_verified(run: _Run, i: int) -> dict[str, np.ndarray]:
    """The results of stored chunk ``i``, after checking that the file holds that chunk."""
    _, s, e, key = run.plan[i]
    path = _chunk_path(run.store, key)
    meta, cols, out = _read_chunk(path)
    _verify_chunk(path, key, meta, cols, (s, e))
    return out


def _check_sweep_args(fn, grid, chunk, tag, progress) -> None:
    if not isinstance(grid, Grid):
        raise ValueError(f"grid must be a gradflow.sweep.Grid, got {type(grid).__name__}")
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    if not is_int(chunk) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if not isinstance(tag, str):
        raise ValueError(f"tag must be a str, got {type(tag).__name__}")
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise ValueError(f"progress must be None, a bool or a callable, got {type(progress).__name__}")


@dataclasses.dataclass
class _Run:
    """One run_sweep call: its plan (static group, first row, end row, chunk key) and what is done."""

    statics: list
    cols: dict
    m: int
    chunk: int
    plan: list
    done: list
    results: list
    store: str | None
    tag: str
    progress: Any
    sharding: NamedSharding
    writer: bool

    @property
    def n_dev(self) -> int:
        return self.sharding.mesh.devices.size


def _plan(grid: Grid, store, chunk: int, tag: str, progress, sharding: NamedSharding) -> _Run:
    writer = jax.process_index() == 0
    if store is not None:
        store = folder_path("store", store)
        if writer:
            os.makedirs(store, exist_ok=True)
    cols = grid.traced_columns()
    m = grid.n_traced
    chunk = int(min(chunk, m))
    statics = grid.static_configs()
    bounds = [(s, min(s + chunk, m)) for s in range(0, m, chunk)]
    plan = [(g, s, e, _chunk_key(tag, scfg, {k: v[s:e] for k, v in cols.items()}))
            for g, scfg in enumerate(statics) for s, e in bounds]
    done = _done_mask(store, [p[3] for p in plan])
    return _Run(statics, cols, m, chunk, plan, done, [None] * len(plan), store, tag, progress, sharding,
                writer)


def _report_chunk(run: _Run, i: int, computed: bool, seconds: float) -> None:
    g, s, e, key = run.plan[i]
    _report(run.progress, {"index": i, "total": len(run.plan), "computed": computed,
                           "static": dict(run.statics[g]), "rows": (g * run.m + s, g * run.m + e), "key": key,
                           "seconds": seconds, "n_devices": run.n_dev})


def _device_args(run: _Run, slots: list[int]) -> dict:
    """The traced columns of the chunks in ``slots``, one chunk per device, padded to ``chunk`` rows."""
    host = {}
    for k, v in run.cols.items():
        parts = []
        for i in slots:
            s, e = run.plan[i][1:3]
            parts += [v[s:e], np.repeat(v[e - 1:e], run.chunk - (e - s))]  # pad a short last chunk
        host[k] = np.concatenate(parts)
    width = run.n_dev * run.chunk
    return {k: jax.make_array_from_callback((width,), run.sharding, lambda idx, a=a: a[idx])
            for k, a in host.items()}


def _compute_step(run: _Run, compiled, scfg: dict, step: list[int]) -> None:
    """Evaluate up to n_dev chunks at once (idle devices repeat the last one), store and report them."""
    start = time.perf_counter()
    out = {k: _gather(v) for k, v in compiled(_device_args(run, step + [step[-1]] * (run.n_dev - len(step))))
           .items()}
    seconds = (time.perf_counter() - start) / len(step)
    for j, i in enumerate(step):
        s, e, key = run.plan[i][1:]
        res = {k: v[j * run.chunk:j * run.chunk + e - s] for k, v in out.items()}
        if run.writer:
            if run.store is not None:
                meta = {"format": _FORMAT, "tag": run.tag, "static": scfg, "static_names": list(scfg),
                        "traced_names": list(run.cols), "result_names": list(res), "rows": [s, e],
                        "index": i, "key": key, "x64": bool(jax.config.jax_enable_x64)}
                _write_chunk(run.store, key, meta, {k: v[s:e] for k, v in run.cols.items()}, res)
            run.results[i] = res
        _report_chunk(run, i, True, seconds)


def _table(grid: Grid, run: _Run) -> dict[str, np.ndarray]:
    """The tidy table: static columns, traced columns, results, in grid order."""
    table: dict[str, np.ndarray] = {}
    for name in grid.static:
        table[name] = np.repeat(np.array([scfg[name] for scfg in run.statics]), run.m)
    for name in run.cols:
        table[name] = np.tile(run.cols[name], len(run.statics))
    result_names = list(run.results[0])
    for r in run.results:
        if list(r) != result_names:
            raise ValueError(
                f"stored chunks have different results {list(r)} vs {result_names} (use another tag)"
            )
    for name in result_names:
        table[name] = _concat([r[name] for r in run.results])
    return table


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    """Stack per-chunk result arrays; an object column of per-row arrays when trailing shapes differ."""
    if len({p.shape[1:] for p in parts}) == 1 and len({p.dtype for p in parts}) == 1:
        return np.concatenate(parts, axis=0)
    rows = [row for p in parts for row in p]
    col = np.empty(len(rows), dtype=object)
    col[:] = rows
    return col


def _sort_key(v: Any) -> tuple:
    if v is None:
        return (2, 0)
    if isinstance(v, str):
        return (1, v)
    return (0, v)


def _check_one_tag(store: str, tags: set, tag: str | None) -> None:
    if tag is None and len(tags) > 1:
        raise ValueError(f"store {store!r} holds chunks of several tags {sorted(tags)}; pass tag= to "
                         "load one (their rows would otherwise be merged as one sweep)")


def load_table(store: str | os.PathLike, tag: str | None = None) -> dict[str, np.ndarray]:
    """Load every stored row of a sweep into one tidy table (dict of NumPy columns, a row per configuration).

    Rows are sorted by static values, then by traced values (each in the axis order of the sweep); a
    configuration stored twice (e.g. the same grid run with two chunk sizes) appears once. Incomplete
    writes (temporary files) are ignored.

    Args:
        store: the folder given to ``run_sweep``.
        tag: only chunks written with this tag; required when the store holds chunks of several tags (their
            rows would otherwise be merged as one sweep).

    Returns:
        ``{column: (N, ...) array}`` like ``run_sweep``'s table.

    Raises:
        ValueError: ``store`` not a path or not a folder, no completed chunks (with ``tag``), several tags
            and no ``tag``, chunks of one tag with different axes/results, an unreadable chunk file (named).

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = run_sweep(lambda s: (lambda c: {"y": 2 * c["a"]}), Grid(traced={"a": [3.0, 1.0]}), store=d)
        >>> load_table(d)["y"].tolist()
        [2.0, 6.0]
    """
    store = folder_path("store", store)
    if not os.path.isdir(store):
        raise ValueError(f"store {store!r} is not a folder")
    files = sorted(f for f in os.listdir(store) if f.startswith(_PREFIX) and f.endswith(_SUFFIX))
    rows: dict[tuple, tuple[dict, dict]] = {}
    layout = None
    chunks = [_read_chunk(os.path.join(store, fname)) for fname in files]
    for fname, (meta, cols, _) in zip(files, chunks, strict=True):
        _verify_chunk(os.path.join(store, fname), fname[len(_PREFIX):-len(_SUFFIX)], meta, cols)
    _check_one_tag(store, {meta["tag"] for meta, _, _ in chunks}, tag)
    for meta, cols, out in chunks:
        if tag is not None and meta["tag"] != tag:
            continue
        this = (tuple(meta["static_names"]), tuple(meta["traced_names"]), tuple(meta["result_names"]))
        if layout is None:
            layout = this
        elif this != layout:
            raise ValueError(
                f"store {store!r} mixes sweeps with different axes/results {this} vs {layout}; "
                "pass tag= to select one"
            )
        static_vals = tuple(meta["static"][k] for k in meta["static_names"])
        n = len(next(iter(cols.values())))
        for j in range(n):
            traced_vals = tuple(cols[k][j].item() for k in meta["traced_names"])
            rowkey = (tuple(_sort_key(v) for v in static_vals), traced_vals)
            if rowkey not in rows:
                rows[rowkey] = (
                    {
                        **dict(zip(meta["static_names"], static_vals, strict=True)),
                        **{k: cols[k][j] for k in meta["traced_names"]},
                    },
                    {k: out[k][j] for k in meta["result_names"]},
                )
    if layout is None:
        raise ValueError(f"store {store!r} holds no completed chunks" + (f" with tag {tag!r}" if tag else ""))
    ordered = [rows[k] for k in sorted(rows)]
    table: dict[str, np.ndarray] = {}
    for k in layout[0] + layout[1]:
        table[k] = np.array([cfg[k] for cfg, _ in ordered])
    for k in layout[2]:
        vals = [res[k] for _, res in ordered]
        table[k] = _concat([np.asarray(v)[None] for v in vals])
    return table


def pivot(table: Mapping[str, np.ndarray], axes: Sequence[str], column: str) -> tuple[dict, np.ndarray]:
    """Reshape one result column of a tidy table into an array indexed by some of its axes.

    Args:
        table: a table from :func:`run_sweep` or :func:`load_table`.
        axes: column names whose values index the output (each row must be identified by them alone).
        column: the result column to reshape; rows may hold arrays of one common shape S.

    Returns:
        ``(coords, array)``: ``coords[axis]`` the axis's values in order of first appearance (grid order for
        ``run_sweep``'s table), ``array`` of shape ``(len(coords[a0]), len(coords[a1]), ...) + S``.

    Raises:
        ValueError: unknown column, rows not identified by ``axes`` (a repeated combination), missing
            combinations, or per-row arrays of different shapes.

    Example:
        >>> t = run_sweep(lambda s: (lambda c: {"y": c["a"] * c["b"]}),
        ...               Grid(traced={"a": [1.0, 2.0], "b": [10.0, 20.0, 30.0]}))
        >>> coords, y = pivot(t, ["a", "b"], "y")
        >>> y.shape, y[1, 2].item()
        ((2, 3), 60.0)
    """
    axes = list(axes)
    for name in [*axes, column]:
        if name not in table:
            raise ValueError(f"unknown column {name!r}; the table has {sorted(table)}")
    values = table[column]
    if values.dtype == object:
        if len({np.shape(v) for v in values}) > 1:
            raise ValueError(f"column {column!r} holds arrays of different shapes; pivot one static group")
        values = np.stack([np.asarray(v) for v in values])
    coords, index = {}, []
    for a in axes:
        col = np.asarray(table[a])
        uniq = list(dict.fromkeys(col.tolist()))
        pos = {v: i for i, v in enumerate(uniq)}
        coords[a] = np.array(uniq)
        index.append(np.array([pos[v] for v in col.tolist()], dtype=np.int64))
    shape = tuple(len(coords[a]) for a in axes)
    flat = np.ravel_multi_index(index, shape) if axes else np.zeros(len(values), np.int64)
    counts = np.bincount(flat, minlength=math.prod(shape))
    if counts.max(initial=0) > 1:
        raise ValueError(f"rows are not identified by {axes}: add the other varying axes")
    if counts.min(initial=1) == 0:
        raise ValueError(f"the table lacks {int(np.sum(counts == 0))} combination(s) of {axes}")
    out = np.empty((math.prod(shape),) + values.shape[1:], values.dtype)
    out[flat] = values
    return coords, out.reshape(shape + values.shape[1:])


def to_dataframe(table: Mapping[str, np.ndarray]):
    """The table as a ``pandas.DataFrame`` (pandas is optional: it is imported here, not a dependency).

    Columns with per-row arrays (ndim > 1) become object columns holding one array per row.
    """
    try:
        import pandas as pd
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "to_dataframe needs pandas (pip install pandas); the table itself is a dict"
        ) from err
    data = {}
    for k, v in table.items():
        v = np.asarray(v)
        if v.ndim > 1:
            col = np.empty(len(v), dtype=object)
            col[:] = list(v)
            v = col
        data[k] = v
    return pd.DataFrame(data)
