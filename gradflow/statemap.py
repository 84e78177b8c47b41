"""Carry <-> state-vector flattening and input validation shared by the Jacobian engine.

The engine differentiates a step ``step(carry, x_t) -> carry`` with respect to a *state vector*: the
concatenation of the selected carry leaves, each flattened in C order (batch-major), in ``jax.tree_util`` leaf
order. Only inexact (floating) leaves can be selected; integer leaves (a step counter ``t``) pass through
untouched. An optional ``wrt`` pytree of bools (the carry's structure, or a prefix of it) narrows the
selection further.

Example:
    >>> import jax.numpy as jnp
    >>> carry = {"h": jnp.ones((2, 3)), "c": jnp.zeros((2, 3)), "t": jnp.zeros((2,), jnp.int32)}
    >>> sm = StateMap.from_carry(carry, wrt={"h": True, "c": False, "t": False})
    >>> sm.n
    6
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "StateMap",
    "resolve_mask",
    "validate_inputs",
    "check_finite",
    "check_finite_inputs",
    "check_carry_and_inputs",
    "all_finite",
    "is_traced",
    "leaf_name",
    "warn_casts",
]


def _is_inexact(leaf) -> bool:
    return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


def resolve_mask(carry, wrt=None) -> tuple[bool, ...]:
    """Resolve ``wrt`` against ``carry`` to one bool per carry leaf (in ``jax.tree_util`` leaf order).

    Args:
        carry: the carry pytree.
        wrt: None (all inexact leaves), or a pytree of bools with the carry's structure or a prefix of it.

    Returns:
        A tuple of bools, one per leaf of ``carry``: True where the leaf is part of the state vector.

    Raises:
        ValueError: if ``wrt`` is not a prefix of the carry's structure, selects an integer leaf explicitly
            as the only content, or selects nothing.
    """
    leaves = jax.tree_util.tree_leaves(carry)
    if not leaves:
        raise ValueError("carry has no array leaves")
    bad = [x for x in leaves if not hasattr(x, "dtype") and not isinstance(x, int | float | complex)]
    if bad:
        raise ValueError(f"carry leaves must be arrays (or numbers), got a {type(bad[0]).__name__}: "
                         f"{bad[0]!r}"[:200])
    inexact = [_is_inexact(x) for x in leaves]
    if wrt is None:
        mask = inexact
    else:
        bad = [m for m in jax.tree_util.tree_leaves(wrt) if not isinstance(m, bool | np.bool_)]
        if bad:
            raise ValueError(f"wrt must be a pytree of True/False flags (a prefix of the carry's structure); "
                             f"got the leaf {bad[0]!r} ({type(bad[0]).__name__})")
        try:
            full = jax.tree_util.tree_map(
                lambda m, sub: jax.tree_util.tree_map(lambda _: bool(m), sub), wrt, carry
            )
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"wrt must be a pytree of bools with the carry's structure or a prefix of it; "
                f"wrt structure {jax.tree_util.tree_structure(wrt)} does not match carry structure "
                f"{jax.tree_util.tree_structure(carry)}: {e}"
            ) from None
        sel = jax.tree_util.tree_leaves(full)
        if len(sel) != len(leaves):
            raise ValueError("wrt does not resolve to one flag per carry leaf")
        mask = [bool(s) and ie for s, ie in zip(sel, inexact, strict=True)]
    if not any(mask):
        raise ValueError(
            "the state vector is empty: the carry has no inexact (floating) leaves selected by wrt "
            f"(carry leaf dtypes: {[str(jnp.result_type(x)) for x in leaves]})"
        )
    return tuple(mask)


@dataclasses.dataclass(frozen=True)
class StateMap:
    """Static description of the state vector inside a carry pytree.

    Attributes:
        treedef: the carry's tree structure.
        shapes: shape of every carry leaf.
        dtypes: dtype of every carry leaf.
        mask: per leaf, whether it is part of the state vector.
        n: length of the state vector.
    """

    treedef: Any
    shapes: tuple
    dtypes: tuple
    mask: tuple

    @classmethod
    def from_carry(cls, carry, wrt=None, mask=None) -> StateMap:
        """Build from a carry (arrays or ShapeDtypeStructs) and ``wrt`` (or an already resolved ``mask``)."""
        leaves, treedef = jax.tree_util.tree_flatten(carry)
        if mask is None:
            mask = resolve_mask(carry, wrt)
        shapes = tuple(tuple(np.shape(x)) for x in leaves)
        dtypes = tuple(jnp.result_type(x) for x in leaves)
        return cls(treedef, shapes, dtypes, tuple(mask))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    @property
    def n(self) -> int:
        return int(sum(sz for sz, m in zip(self.sizes, self.mask, strict=True) if m))

    @property
    def dtype(self):
        """The state vector's dtype (the promoted dtype of the selected leaves)."""
        return jnp.result_type(*[d for d, m in zip(self.dtypes, self.mask, strict=True) if m])

    def with_mask(self, mask) -> StateMap:
        return dataclasses.replace(self, mask=tuple(mask))

    def flatten(self, carry) -> jax.Array:
        """Carry pytree -> state vector of shape (n,)."""
        leaves = self.treedef.flatten_up_to(carry)
        parts = [jnp.ravel(x).astype(self.dtype) for x, m in zip(leaves, self.mask, strict=True) if m]
        return jnp.concatenate(parts) if len(parts) > 1 else parts[0]

    def _split(self, vec):
        out, i = [], 0
        for sz, m in zip(self.sizes, self.mask, strict=True):
            if m:
                out.append(vec[i : i + sz])
                i += sz
            else:
                out.append(None)
        return out

    def unflatten(self, vec, carry):
        """Replace the selected leaves of ``carry`` by the entries of ``vec`` (n,); other leaves are kept."""
        leaves = self.treedef.flatten_up_to(carry)
        new = [
            x if p is None else p.reshape(s).astype(d)
            for x, p, s, d in zip(leaves, self._split(vec), self.shapes, self.dtypes, strict=True)
        ]
        return self.treedef.unflatten(new)

    def add(self, carry, vec):
        """Return ``carry`` with ``vec`` (n,) added to its selected leaves (perturbation injection)."""
        leaves = self.treedef.flatten_up_to(carry)
        new = [
            x if p is None else x + p.reshape(s).astype(d)
            for x, p, s, d in zip(leaves, self._split(vec), self.shapes, self.dtypes, strict=True)
        ]
        return self.treedef.unflatten(new)

    def example_index(self) -> np.ndarray:
        """Example (batch) index of every state-vector entry, assuming each selected leaf has a leading batch
        axis.

        Returns:
            int array (n,): ``b`` for entries that belong to batch example ``b``.
        """
        idx = []
        for shape, m in zip(self.shapes, self.mask, strict=True):
            if not m:
                continue
            if len(shape) == 0:
                raise ValueError("a selected carry leaf is a scalar: it has no leading batch axis")
            per = int(np.prod(shape[1:], dtype=np.int64))
            idx.append(np.repeat(np.arange(shape[0]), per))
        return np.concatenate(idx)

    def selection_in(self, full: StateMap) -> np.ndarray:
        """Indices of this map's state entries inside the state vector of ``full`` (a superset selection)."""
        idx, i = [], 0
        for sz, m, mf in zip(self.sizes, self.mask, full.mask, strict=True):
            if m and not mf:
                raise ValueError("selection is not a subset of the full state")
            if mf:
                if m:
                    idx.append(np.arange(i, i + sz))
                i += sz
        return np.concatenate(idx)


def is_traced(*trees) -> bool:
    """True if any leaf of the given pytrees is a JAX tracer (so eager checks must be skipped)."""
    return any(isinstance(x, jax.core.Tracer) for t in trees for x in jax.tree_util.tree_leaves(t))


def leaf_name(name: str, path) -> str:
    """``name`` and the leaf's key path (``xs['a']``, ``carry0[0]``; ``name`` alone for a bare array)."""
    return f"{name}{jax.tree_util.keystr(path)}"


def check_finite(tree: Any, what: str = "carry0") -> None:
    """Raise ValueError naming every floating leaf of ``tree`` that holds a NaN or an inf (host-side; traced
    leaves are skipped). The one finiteness check of gradflow (states, inputs, variables, parameters)."""
    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.core.Tracer) or not _is_inexact(leaf):
            continue
        if not np.all(np.isfinite(np.asarray(leaf))):  # NumPy: concrete inside a jit
            bad.append(jax.tree_util.keystr(path))
    if bad:
        where = f" at {', '.join(bad)}" if any(bad) else ""
        raise ValueError(f"non-finite values (NaN or inf) in {what}{where}")


def all_finite(tree) -> jax.Array:
    """Traced check: a bool scalar, True when every floating leaf of ``tree`` is finite (True without any).
    The per-step finiteness flag of the engine's scans; :func:`check_finite` raises on concrete values."""
    flags = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree) if _is_inexact(a)]
    return functools.reduce(jnp.logical_and, flags, jnp.bool_(True))


def check_finite_inputs(xs) -> None:
    """Raise ValueError naming the first time step at which an input leaf holds NaN or inf (an input problem,
    reported as such rather than as a non-finite state later; skipped under tracing)."""
    if is_traced(xs):
        return
    for path, leaf in jax.tree_util.tree_flatten_with_path(xs)[0]:
        if not _is_inexact(leaf) or np.size(leaf) == 0:
            continue
        ok = np.all(np.isfinite(np.reshape(np.asarray(leaf), (np.shape(leaf)[0], -1))), axis=1)
        if not ok.all():
            t = int(np.argmin(ok))
            raise ValueError(
                f"the inputs have NaN or inf: {leaf_name('xs', path)}[{t}] (the input x_{t + 1} of step "
                f"{t + 1}) is not finite; fix the input data (the Jacobians along such a trajectory are "
                "undefined)"
            )


def check_carry_and_inputs(carry0, xs) -> None:
    """The eager checks of concrete ``carry0`` and ``xs`` (traced leaves are skipped): finite, and, while
    ``jax_enable_x64`` is off, no float64 value beyond float32's range (JAX would turn it into inf or 0
    silently). Raises ValueError naming the leaf (``carry0['h']``, ``xs[3]``)."""
    from gradflow.checks import float32_representable  # checks imports this module

    check_finite(carry0)
    check_finite_inputs(xs)
    for name, tree in (("carry0", carry0), ("xs", xs)):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            float32_representable(leaf_name(name, path), leaf)


def warn_casts(tree, name: str) -> None:
    """Warn about leaves JAX will silently cast: float64 (or int64) NumPy arrays without ``jax_enable_x64``,
    and integer inputs that a step will promote to floats."""
    x64 = bool(jax.config.jax_enable_x64)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dt = np.dtype(jnp.result_type(leaf)) if not hasattr(leaf, "dtype") else np.dtype(leaf.dtype)
        where = leaf_name(name, path)
        wide = (dt.kind in "fiu" and dt.itemsize == 8) or (dt.kind == "c" and dt.itemsize == 16)
        if not x64 and wide:
            warnings.warn(
                f"{where} has dtype {dt} but jax_enable_x64 is off: JAX casts it to 32 bits silently; cast "
                f"it yourself, or enable x64 (jax.config.update('jax_enable_x64', True)) for float64",
                UserWarning,
                stacklevel=3,
            )
        elif name == "xs" and dt.kind in "iub":
            warnings.warn(
                f"{where} has integer dtype {dt}: the step will promote it to floats; pass float inputs "
                f"({where}.astype(jnp.float32)) unless the step really expects integers",
                UserWarning,
                stacklevel=3,
            )


def _time_major_hint(carry0, xs) -> str:
    """A hint when xs looks batch-major (B, T, ...): its leading axis equals the carry's batch size B."""
    Bs = {int(np.shape(x)[0]) for x in jax.tree_util.tree_leaves(carry0) if np.ndim(x) > 0}
    shapes = [tuple(np.shape(x)) for x in jax.tree_util.tree_leaves(xs)]
    if len(Bs) == 1 and all(len(s) >= 2 for s in shapes):
        B = Bs.pop()
        if all(s[0] == B and s[1] != B for s in shapes):
            return (
                f". Hint: xs is time-major, (T, B, ...), and yours looks batch-major (B, T, ...) = "
                f"{shapes[0]} with B = {B} (the carry's batch size): pass jnp.swapaxes(xs, 0, 1)"
            )
    return ""


def check_state_dtypes(carry0, smap: StateMap) -> None:
    """Refuse state leaves the engine cannot handle: it requires real float32 or float64 leaves (float16 /
    bfloat16 lose the Jacobians to rounding, complex ones have no real norm here)."""
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(carry0)[0]]
    for path, dt, sel in zip(paths, smap.dtypes, smap.mask, strict=True):
        if sel and jnp.dtype(dt) not in (jnp.float32, jnp.float64):
            hint = ("split it into real and imaginary parts ([Re h, Im h], as the LRU cell does)"
                    if jnp.issubdtype(dt, jnp.complexfloating)
                    else "use float32 (or float64 with jax_enable_x64)")
            raise ValueError(
                f"carry leaf {leaf_name('carry0', path)} is {jnp.dtype(dt)}: the engine requires real "
                f"float32 or float64 state leaves; {hint} (or leave it out of the state with wrt=...)"
            )


def dtype_hint(a, b, xs) -> str:
    """How to fix a carry whose dtype the step changes (float64 inputs into a float32 cell, under x64)."""
    if a.shape != b.shape or a.dtype == b.dtype:
        return ""
    x_dtypes = {str(jnp.result_type(x)) for x in jax.tree_util.tree_leaves(xs)}
    cast = (f"; the inputs xs are {', '.join(sorted(x_dtypes))}: cast them to the carry's dtype "
            f"(xs.astype(jnp.{a.dtype}))")
    if jnp.issubdtype(b.dtype, jnp.complexfloating):  # no complex (or half) carry to build instead
        return (f"{cast}; the engine needs a real float32 or float64 carry: a complex recurrence goes in "
                "with its real and imaginary parts as carry entries ([Re h, Im h], as the LRU cells do)")
    if jnp.dtype(b.dtype) not in (jnp.float32, jnp.float64):
        return (f"{cast}, and keep the step's weights in the carry's dtype: the engine supports float32 and "
                f"float64 only ({b.dtype} loses the Jacobians to rounding)")
    return (f"{cast}, or build the cell and carry in {b.dtype} "
            f"(gradflow.make_cell(..., dtype='{b.dtype}'); with jax_enable_x64 the presets stay float32)")


def eval_step(step, carry0, xs):
    """The shapes and dtypes of ``carry0`` and of ``step(carry0, xs[0])``, by ``jax.eval_shape`` (free);
    ValueError naming carry0 and xs when the step fails on them."""
    x0 = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x)[1:], jnp.result_type(x)), xs)
    c0 = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), carry0)
    try:
        return c0, jax.eval_shape(step, c0, x0)
    except Exception as e:
        raise ValueError(
            f"step(carry0, xs[0]) failed: carry0 and xs do not match the step "
            f"(carry0 shapes {jax.tree_util.tree_map(np.shape, carry0)}, xs[0] shapes "
            f"{jax.tree_util.tree_map(lambda x: np.shape(x)[1:], xs)}): {type(e).__name__}: {e}"
            f"{_time_major_hint(carry0, xs)}"
        ) from e


def validate_inputs(step, carry0, xs, wrt=None, check_values=True) -> tuple[StateMap, int]:
    """Check that ``step``, ``carry0`` and ``xs`` fit together; return the StateMap and T.

    Checks (free, by ``jax.eval_shape``): ``xs`` leaves share a leading time axis T > 0; ``step(carry0,
    xs[0])`` runs and returns a carry with the same structure, shapes and dtypes as ``carry0``, which holds
    at least one number. With ``check_values`` (the default), eagerly: :func:`check_carry_and_inputs`
    and the step's own ``check_carry``; warnings for inputs JAX will cast.

    Raises:
        ValueError: naming the mismatch.
    """
    if not callable(step):
        raise ValueError(f"step must be callable, got {type(step).__name__}")
    xs_leaves = jax.tree_util.tree_leaves(xs)
    if not xs_leaves:
        raise ValueError("xs has no array leaves")
    lens = {int(np.shape(x)[0]) if np.ndim(x) > 0 else None for x in xs_leaves}
    if None in lens:
        raise ValueError("xs leaves must have a leading time axis T; got a scalar leaf")
    if len(lens) != 1:
        raise ValueError(f"xs leaves disagree on the leading time axis: lengths {sorted(lens)}")
    T = lens.pop()
    if T == 0:
        raise ValueError("xs is empty: the sequence length T (leading axis of xs) must be > 0")
    smap = StateMap.from_carry(carry0, wrt)
    if smap.n == 0:
        raise ValueError(f"carry0 is empty: its selected leaves hold no numbers (shapes "
                         f"{jax.tree_util.tree_map(np.shape, carry0)}; an empty batch, B = 0?), so there is "
                         "no state to differentiate")
    check_state_dtypes(carry0, smap)
    c0, out = eval_step(step, carry0, xs)
    s_in, s_out = jax.tree_util.tree_structure(carry0), jax.tree_util.tree_structure(out)
    if s_in != s_out:
        raise ValueError(f"step returned a carry with structure {s_out}, expected carry0's structure {s_in}")
    for path, a, b in zip(
        [p for p, _ in jax.tree_util.tree_flatten_with_path(carry0)[0]],
        jax.tree_util.tree_leaves(c0),
        jax.tree_util.tree_leaves(out),
        strict=True,
    ):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(
                f"step changes carry leaf {leaf_name('carry0', path)}: carry0 has {a.dtype}{list(a.shape)}, "
                f"step(carry0, xs[0]) returns {b.dtype}{list(b.shape)}{_time_major_hint(carry0, xs)}"
                f"{dtype_hint(a, b, xs)}"
            )
    if check_values:
        getattr(step, "check_carry", lambda c: None)(carry0)  # a step's own check (as_step: its counter)
        check_carry_and_inputs(carry0, xs)
        warn_casts(carry0, "carry0")
        warn_casts(xs, "xs")
    return smap, T
