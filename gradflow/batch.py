"""Batch-coupled Jacobians: per-example diagonal blocks versus cross-example blocks of ∂h_T/∂h_t.

A train-mode BN step couples the examples of a batch, so its Jacobian is over the whole batch state (n = B *
m, m the per-example state size). Reordering the state example-major, ``blocks[t, a, b] = ∂h_T^(a)/∂h_t^(b)``:
the diagonal blocks (a = b) are how an example's own past state affects it; the cross blocks (a != b) are the
coupling through the batch statistics.

The pitfall this module makes easy to see: the per-example Jacobian with BN statistics *frozen* (treated as
constants) is not the diagonal block of the true batch Jacobian. :func:`frozen_statistics_comparison` takes
the true step and a second, user-written step with frozen statistics (the engine knows nothing of the cell, so
the frozen version must come from the caller) and reports both side by side.

Example:
    >>> import jax.numpy as jnp
    >>> bn = lambda a: (a - a.mean(0)) / jnp.sqrt(a.var(0) + 1e-5)
    >>> step = lambda h, x: bn(h @ jnp.array([[0.9, 0.2], [-0.3, 0.8]]).T + x)
    >>> r = batch_block_norms(step, jnp.eye(3, 2), jnp.ones((5, 3, 2)))
    >>> r.diagonal.shape, bool((r.ratio > 0).all())
    ((5, 3), True)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow.checks import raise_if_nonfinite
from gradflow.jacobians import (
    jacobians,
    plain_from_log,
    reverse_pass,
    safe_log,
    warn_out_of_range,
)
from gradflow.reprs import short_repr
from gradflow.statemap import StateMap, validate_inputs

__all__ = [
    "BatchBlockNorms",
    "FrozenComparison",
    "batch_blocks",
    "batch_block_norms",
    "frozen_statistics_comparison",
    "example_permutation",
]


class BatchBlockNorms(NamedTuple):
    """Norms of the per-example and cross-example blocks of ∂h_T/∂h_t, per lag (a pytree).

    Attributes:
        diagonal: (T, B) Frobenius norm of each example's diagonal block.
        diagonal_spectral: (T, B) spectral norm of each diagonal block.
        diagonal_total: (T,) Frobenius norm of the block-diagonal part.
        cross: (T,) Frobenius norm of the off-diagonal (cross-example) part.
        ratio: (T,) cross / diagonal_total (from the log norms: meaningful where the plain norms
            over/underflow).
        lags: (T,) int, T - t.
        log_frobenius_norms: (T, B) natural log of ``diagonal``, exact at every lag (the reverse pass carries
            a log scale).
        log_spectral_norms: (T, B) natural log of ``diagonal_spectral``.
        log_diagonal_total: (T,) natural log of ``diagonal_total``.
        log_cross: (T,) natural log of ``cross`` (-inf for an uncoupled step).

    The plain norms are exp of the log norms: 0 or inf only where the true value lies outside the dtype's
    range (a warning then points to the log fields).
    """

    diagonal: jax.Array
    diagonal_spectral: jax.Array
    diagonal_total: jax.Array
    cross: jax.Array
    ratio: jax.Array
    lags: jax.Array
    log_frobenius_norms: jax.Array | None = None
    log_spectral_norms: jax.Array | None = None
    log_diagonal_total: jax.Array | None = None
    log_cross: jax.Array | None = None

    def __repr__(self) -> str:
        return short_repr(self)


class FrozenComparison(NamedTuple):
    """The true batch Jacobian's diagonal blocks beside the frozen-statistics per-example Jacobian.

    Attributes:
        true: BatchBlockNorms of the true (batch-coupled) step.
        frozen: BatchBlockNorms of the frozen-statistics step (its ``cross`` should be 0: a check that the
            frozen step really is per-example).
        overstatement: (T, B) frozen.diagonal_spectral / true.diagonal_spectral.
    """

    true: BatchBlockNorms
    frozen: BatchBlockNorms
    overstatement: jax.Array

    def __repr__(self) -> str:
        return short_repr(self)


def example_permutation(smap: StateMap) -> tuple[np.ndarray, int, int]:
    """Permutation of the state vector to example-major order.

    Returns:
        (perm (n,), B, m): ``state[perm]`` lists example 0's entries (all its leaves, in leaf order), then
        example 1's, ...; m = n / B entries per example.

    Raises:
        ValueError: if the selected leaves disagree on the batch size.
    """
    sizes = {s[0] for s, msk in zip(smap.shapes, smap.mask, strict=True) if msk and len(s) > 0}
    if len(sizes) != 1:
        raise ValueError(
            f"selected carry leaves must share one leading batch axis, got sizes {sorted(sizes)}"
        )
    B = sizes.pop()
    ex = smap.example_index()
    perm = np.argsort(ex, kind="stable")
    return perm, B, smap.n // B


def batch_blocks(step, carry0, xs, *, wrt=None) -> jax.Array:
    """All blocks of the exact all-lag Jacobians, example-major.

    Returns:
        (T, B, B, m, m) array with ``blocks[t, a, b] = ∂h_T^(a)/∂h_t^(b)`` (m entries per example: every
        selected leaf's row for that example, in leaf order). Memory T * n^2; see :func:`batch_block_norms`
        otherwise.
    """
    smap, _ = validate_inputs(step, carry0, xs, wrt)
    perm, B, m = example_permutation(smap)
    M = jacobians(step, carry0, xs, wrt=wrt, spectral=None).matrices
    p = jnp.asarray(perm)
    M = M[:, p][:, :, p]
    return M.reshape(M.shape[0], B, m, B, m).transpose(0, 1, 3, 2, 4)


def _block_log_norms(Mp):
    """Mp: (B, m, B, m), row block a renormalized on its own -> logs, relative to row block a's scale, of
    (diag fro (B,), diag spectral (B,), diag squared (B,), cross squared per row block (B,))."""
    B = Mp.shape[0]
    diag_blocks = jnp.einsum("aiaj->aij", Mp)
    diag_sq = jnp.sum(jnp.square(diag_blocks), axis=(1, 2))
    log_diag = 0.5 * safe_log(diag_sq)
    log_spec = jnp.minimum(safe_log(jnp.linalg.svd(diag_blocks, compute_uv=False)[:, 0]), log_diag)
    off = (1.0 - jnp.eye(B, dtype=Mp.dtype))[:, None, :, None]
    log_cross_rows = 0.5 * safe_log(jnp.sum(jnp.square(Mp) * off, axis=(1, 2, 3)))
    return log_diag, log_spec, log_cross_rows


def _log_norm_of_parts(log_parts):
    """log sqrt(sum_a exp(2 log_parts[..., a])): the norm of parts given by their log norms (no overflow)."""
    return 0.5 * jax.nn.logsumexp(2.0 * log_parts, axis=-1)


@functools.partial(jax.jit, static_argnames=("step", "mask"))
def _block_norms_jit(step, mask, carry0, xs):
    full = StateMap.from_carry(carry0)
    sel_map = full.with_mask(mask)
    perm, B, m = example_permutation(sel_map)
    idx = sel_map.selection_in(full)
    p = jnp.asarray(perm)
    rows = jnp.eye(full.n, dtype=full.dtype)[jnp.asarray(idx[perm])]  # example-major rows: one block each

    def reduce(M, aux):  # M: rows example-major, columns in state order
        return aux, _block_log_norms(M[:, p].reshape(B, m, B, m))

    # each example's rows carry their own log scale: examples that vanish at different rates stay exact
    s, (log_diag, log_spec, log_cross_rows), flags = reverse_pass(
        step, mask, carry0, xs, reduce, (), rows=rows, groups=B
    )
    s = s.reshape(s.shape[0], B)  # (T,) when B = 1 (one group): (T, 1), not a (T, T) broadcast
    log_diag, log_spec, log_cross_rows = log_diag + s, log_spec + s, log_cross_rows + s
    return (log_diag, log_spec, _log_norm_of_parts(log_diag), _log_norm_of_parts(log_cross_rows)), flags


def batch_block_norms(step, carry0, xs, *, wrt=None) -> BatchBlockNorms:
    """Diagonal-block and cross-block norms of ∂h_T/∂h_t for every t, in one reverse pass (memory O(n^2)).

    Args:
        step, carry0, xs, wrt: as in :func:`gradflow.jacobians`; every selected carry leaf must have the
            leading batch axis B.

    Returns:
        BatchBlockNorms with ``diagonal`` (T, B), ``diagonal_spectral`` (T, B), ``diagonal_total`` (T,),
        ``cross`` (T,), ``ratio`` (T,), ``lags`` (T,) and the exact log norms (the reverse pass carries a
        log scale, so they are finite at any length where the plain norms over/underflow).
    """
    smap, T = validate_inputs(step, carry0, xs, wrt)
    (log_diag, log_spec, log_total, log_cross), flags = _block_norms_jit(step, smap.mask, carry0, xs)
    raise_if_nonfinite(flags)
    diag, spec, total, cross = (plain_from_log(a) for a in (log_diag, log_spec, log_total, log_cross))
    for plain, lg, what, field in (
        (diag, log_diag, "diagonal-block Frobenius norms", "log_frobenius_norms"),
        (spec, log_spec, "diagonal-block spectral norms", "log_spectral_norms"),
        (cross, log_cross, "cross-block norms", "log_cross"),
    ):
        warn_out_of_range(plain, lg, what, field)
    ratio = jnp.exp(log_cross - log_total)
    return BatchBlockNorms(
        diag, spec, total, cross, ratio, T - jnp.arange(T), log_diag, log_spec, log_total, log_cross
    )


def frozen_statistics_comparison(step, frozen_step, carry0, xs, *, wrt=None) -> FrozenComparison:
    """Diagonal blocks of the true batch Jacobian beside the per-example Jacobian with frozen statistics.

    Args:
        step: the true, batch-coupled step (e.g. BN in train mode, statistics from the batch).
        frozen_step: the same recurrence with the statistics held constant (e.g. read from the true
            trajectory, indexed by a step counter in the carry): it must act on each example separately. The
            engine cannot derive it from ``step``; write it with knowledge of the cell.
        carry0, xs, wrt: as in :func:`gradflow.jacobians` (shared by both steps).

    Returns:
        FrozenComparison(true, frozen, overstatement (T, B)).
    """
    true = batch_block_norms(step, carry0, xs, wrt=wrt)
    frozen = batch_block_norms(frozen_step, carry0, xs, wrt=wrt)
    return FrozenComparison(true, frozen, frozen.diagonal_spectral / true.diagonal_spectral)
