"""What a registry family is made of: its options, its cell's base classes, its record, and the generic
paths (`make`, `describe`, closed-form log norms) the registry uses.

A family's cell is one of ours (a `gradflow.cells.GradflowCell`): carry ``{"h": (B, n), "t": (B,) int32}``,
called as ``new_carry, out = cell.apply(variables, carry, x, train=...)``, so `init_cell`, `as_step`, every
engine function and the training code's state readout treat it like any preset. Its ``spec`` is the
family's options object, which answers the questions generic code asks of a spec (no BN, no dropout, the
dtype) as class constants.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from gradflow.cells import GradflowCell
from gradflow.checks import positive_int

__all__ = ["FamilyOptions", "Family", "RegistryCell", "DiagonalCell", "make", "describe",
           "diagonal_log_norms", "uniform_init", "fan_in_uniform", "softplus_inverse",
           "log_space_states", "log_g", "g_positive"]


@dataclasses.dataclass(frozen=True)
class FamilyOptions:
    """Base of a family's options. Subclasses add fields and override :meth:`problems` / :meth:`size_problem`.

    Attributes:
        dtype: "float32" or "float64" (parameters and carry).
    """

    dtype: str = "float32"
    family: ClassVar[str] = ""
    # what generic code reads off ``cell.spec``: a registry cell has no BN, no dropout, no sequence statistics
    dropout: ClassVar[float] = 0.0
    input_stats: ClassVar[str] = "step"
    lru_block: ClassVar[bool] = False
    has_bn: ClassVar[bool] = False
    norm_x: ClassVar[None] = None
    norm_h: ClassVar[None] = None
    norm_sum: ClassVar[None] = None
    norm_c: ClassVar[None] = None

    def __post_init__(self):
        out = [] if self.dtype in ("float32", "float64") else [("dtype", "must be 'float32' or 'float64'")]
        for field, why in out + list(self.problems()):
            raise ValueError(f"{type(self).__name__}.{field} ({self.family}): {why} "
                             f"(got {getattr(self, field)!r})")

    def problems(self) -> list[tuple[str, str]]:
        """(field, why) for every invalid option."""
        return []

    def size_problem(self, hidden_size: int, input_size: int) -> str | None:
        """Why these sizes do not fit the family, or None."""
        return None

    def describe(self) -> str:
        """The equations (see `gradflow.describe`)."""
        from gradflow import families

        return families.describe(self)


@dataclasses.dataclass(frozen=True)
class Family:
    """Everything the registry needs about a family.

    Attributes:
        options: its `FamilyOptions` subclass (``options.family`` is the registered name).
        cell: its `RegistryCell` subclass.
        citation: the paper.
        equations: ``equations(options) -> (lines, notes)``: the equation lines (with ``h_t``) and the notes
            on initialization and options for `describe`.
        reference_step: ``reference_step(params, h, x, options) -> (h_new, out)`` in NumPy float64:
            params the cell's (nested dict of arrays), h (B, n), x (B, input_size).
        decay: for a diagonal linear recurrence h_t = a_t ⊙ h_{t−1} + b(x_t):
            ``decay(params, xs, options) -> a`` (T, B, n) in NumPy float64 from the inputs xs (T, B, in);
            then ∂h_T/∂h_t = diag(Π_{s>t} a_s) exactly (`diagonal_log_norms`). None otherwise.
        rate: ``rate(params, options) -> (rate, kind)``, a prediction of the growth rate of ‖∂h_T/∂h_t‖₂
            per step from the parameters alone; None where none exists.
    """

    options: type
    cell: type
    citation: str
    equations: Callable[[Any], tuple[list[str], list[str]]]
    reference_step: Callable
    decay: Callable | None = None
    rate: Callable | None = None

    @property
    def name(self) -> str:
        return self.options.family


class RegistryCell(GradflowCell):
    """Base of a registry family's cell: carry ``{"h": (B, hidden_size), "t": (B,)}`` (`GradflowCell`'s)."""

    def sequence(self, carry: dict, xs: jax.Array) -> jax.Array:
        """Every state h_1..h_T from ``carry`` over xs (T, B, input_size), step by step: (T, B, n)."""

        def body(c, x):
            new, _ = self(c, x)
            return new, new["h"]

        return jax.lax.scan(body, carry, xs)[1]


class DiagonalCell(RegistryCell):
    """A diagonal linear recurrence h_t = a(x_t) ⊙ h_{t−1} + b(x_t), coefficients from the input only.

    Subclasses define :meth:`coefficients` and may override :meth:`output`; ``spec.parallel`` (if the options
    have it) makes :meth:`sequence` use :meth:`parallel_states` (an associative scan by default).
    """

    def coefficients(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(a_t, b_t), each (B, n), from x_t (B, input_size)."""
        raise NotImplementedError

    def output(self, h: jax.Array, x: jax.Array) -> jax.Array:
        """The cell's output from the new state h_t and x_t (default: h_t)."""
        return h

    def __call__(self, carry, x, train: bool = False):
        self._check(carry, x)
        a, b = self.coefficients(x)
        h = a * carry["h"] + b
        return {"h": h, "t": carry["t"] + 1}, self.output(h, x)

    def sequence(self, carry: dict, xs: jax.Array) -> jax.Array:
        """h_1..h_T (T, B, n): step by step, or all at once when ``spec.parallel``."""
        if getattr(self.spec, "parallel", False):
            return self.parallel_states(carry["h"], xs)
        return super().sequence(carry, xs)

    def parallel_states(self, h0: jax.Array, xs: jax.Array) -> jax.Array:
        """h_1..h_T by `jax.lax.associative_scan` over (a_t, b_t) (Blelloch's parallel scan)."""
        a, b = jax.vmap(self.coefficients)(xs)
        b = b.at[0].add(a[0] * h0)

        def combine(left, right):
            return right[0] * left[0], right[0] * left[1] + right[1]

        return jax.lax.associative_scan(combine, (a, b))[1]


def make(fam: Family, spec: Any, hidden_size: int, input_size: int, **options) -> RegistryCell:
    """The family's cell: its default options (or ``spec`` when it is an options object) updated by
    ``options`` (ValueError naming unknown options and bad sizes)."""
    positive_int("hidden_size", hidden_size)
    positive_int("input_size", input_size)
    base = fam.options() if isinstance(spec, str) else spec
    fields = sorted(f.name for f in dataclasses.fields(fam.options))
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for cell family {fam.name!r}; options: {fields}")
    opts = dataclasses.replace(base, **options)
    why = opts.size_problem(int(hidden_size), int(input_size))
    if why:
        raise ValueError(f"{fam.name}: {why} (hidden_size={hidden_size}, input_size={input_size})")
    return fam.cell(spec=opts, hidden_size=int(hidden_size), input_size=int(input_size))


def describe(fam: Family, spec: Any) -> str:
    """The family's equations, then ``[name: citation]`` and its notes (as `gradflow.describe` prints)."""
    opts = fam.options() if isinstance(spec, str) else spec
    lines, notes = fam.equations(opts)
    head = f"[{fam.name}: {fam.citation}] " if isinstance(spec, str) else f"[{fam.name}] "
    return "\n".join(lines) + "\n" + head + "; ".join(notes)


def diagonal_log_norms(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form log norms of ∂h_T/∂h_t = diag(Π_{s=t+1}^T a_s) at every t, per example.

    Args:
        a: (T, B, n) the diagonal a_s of ∂h_s/∂h_{s−1} for s = 1..T (row s−1).

    Returns:
        ``(log_spectral, log_frobenius)``, each (B, T) with column t = lag T − t (the engine's order):
        max_j Σ_{s>t} ln|a_{s,j}| and ½ ln Σ_j exp(2 Σ_{s>t} ln|a_{s,j}|).
    """
    la = np.log(np.abs(np.asarray(a, np.float64)))  # (T, B, n)
    suffix = np.cumsum(la[::-1], axis=0)[::-1]  # row t: Σ_{k≥t} ln|a_k|: steps t+1..T
    spec = suffix.max(axis=-1).T
    m = suffix.max(axis=-1, keepdims=True)
    fro = (m[..., 0] + 0.5 * np.log(np.exp(2.0 * (suffix - m)).sum(axis=-1))).T
    return spec, fro


def uniform_init(bound: float):
    """``init(key, shape, dtype)``: U(−bound, bound)."""
    return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


def fan_in_uniform(fan_in: int):
    """U(±1/sqrt(fan_in)): PyTorch's ``nn.Linear`` default for weights and biases."""
    return uniform_init(1.0 / math.sqrt(fan_in))


def softplus_inverse(y: jax.Array) -> jax.Array:
    """x with softplus(x) = y > 0: y + log(−expm1(−y)) (stable for small and large y)."""
    return y + jnp.log(-jnp.expm1(-y))


def log_space_states(h0: jax.Array, log_a: jax.Array, log_b: jax.Array) -> jax.Array:
    """h_1..h_T of h_t = a_t ⊙ h_{t−1} + b_t with a_t, b_t > 0 given as logs (Heinsen's log-space scan).

    h_t = exp(ln A_t) ⊙ h_0 + exp(ln A_t + logcumsumexp_s≤t(ln b_s − ln A_s)), ln A_t = Σ_{k≤t} ln a_k.
    The h_0 term is kept linear, so h_0 may have any sign.

    Args:
        h0: (B, n).
        log_a, log_b: (T, B, n).

    Returns:
        (T, B, n).
    """
    log_A = jnp.cumsum(log_a, axis=0)
    inner = jax.lax.cumlogsumexp(log_b - log_A, axis=0)
    return jnp.exp(log_A) * h0 + jnp.exp(log_A + inner)


def log_g(k: jax.Array) -> jax.Array:
    """ln g(k) of Feng et al.'s positive candidate g(k) = k + ½ (k ≥ 0), σ(k) (k < 0)."""
    return jnp.where(k >= 0, jnp.log(jnp.maximum(k, 0.0) + 0.5), -jax.nn.softplus(-k))


def g_positive(k):
    """Feng et al.'s g(k) = k + ½ for k ≥ 0, σ(k) otherwise (NumPy or JAX arrays)."""
    xp = jnp if isinstance(k, jax.Array) else np
    return xp.where(k >= 0, xp.maximum(k, 0.0) + 0.5, 1.0 / (1.0 + xp.exp(-xp.minimum(k, 0.0))))
