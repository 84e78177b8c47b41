"""Memory curve and memory capacity of a network's states (Jaeger 2001).

For a stream of i.i.d. scalar inputs u_t and the states h_T after them, m(k) is the squared correlation of the
best linear readout of u_{T−k} from h_T, on held-out sequences; MC = Σ_k m(k). For a linear state of size n
driven by one i.i.d. input, MC ≤ n. Lag k = 0 is the last input (the one the last step consumed).

Example:
    >>> import numpy as np
    >>> from gradflow.capacity import memory_curve
    >>> u = np.random.default_rng(0).uniform(size=(4000, 20))            # (N sequences, T steps)
    >>> shift = u[:, ::-1][:, :3]                     # a delay line of 3: u_T, u_{T-1}, u_{T-2}
    >>> m = memory_curve(shift, u, max_lag=5)
    >>> np.round(m.r2, 2).tolist(), round(m.capacity, 1)
    ([1.0, 1.0, 1.0, 0.0, 0.0], 3.0)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gradflow.checks import finite_float, int_at_least, nonneg_float, real_array

__all__ = ["MemoryCurve", "memory_curve"]


class MemoryCurve(NamedTuple):
    """``r2[k]``: held-out r² of the linear readout of u_{T−k} from h_T (clipped at 0), k = 0..max_lag−1;
    ``capacity``: their sum."""

    r2: np.ndarray
    capacity: float

    def __repr__(self) -> str:
        return f"MemoryCurve(lags={self.r2.size}, capacity={self.capacity:.3g})"


def memory_curve(
    states, inputs, max_lag: int, *, ridge: float = 1e-6, test_fraction: float = 0.5
) -> MemoryCurve:
    """The memory curve of ``states`` for the input stream ``inputs``.

    Args:
        states: (N, n) the state h_T (or any features) of N independent sequences (any scale: r² does not
            depend on it).
        inputs: (N, T) the scalar i.i.d. input stream of the same sequences, in time order (``inputs[:, -1]``
            is the last input, lag 0).
        max_lag: lags k = 0..max_lag−1 (at most T).
        ridge: ridge penalty, relative to the mean feature variance (keeps collinear states solvable).
        test_fraction: share of the sequences held out to measure r² (the readout is fitted on the rest).

    Returns:
        :class:`MemoryCurve`.

    Raises:
        ValueError: mismatched shapes, non-finite values, too few sequences.
    """
    h = real_array("states", states)
    u = real_array("inputs", inputs)
    if h.ndim != 2 or u.ndim != 2 or h.shape[0] != u.shape[0]:
        raise ValueError(f"states must be (N, n) and inputs (N, T) with the same N, got {h.shape}, {u.shape}")
    if not (np.all(np.isfinite(h)) and np.all(np.isfinite(u))):
        raise ValueError("memory_curve: states or inputs hold non-finite values")
    K = int_at_least("max_lag", max_lag, 1)
    ridge = nonneg_float("ridge", ridge)
    test_fraction = finite_float("test_fraction", test_fraction)
    if K > u.shape[1]:
        raise ValueError(f"max_lag {K} exceeds the {u.shape[1]} inputs")
    n_test = int(round(test_fraction * h.shape[0]))
    if not 2 <= n_test <= h.shape[0] - 2:
        raise ValueError(f"test_fraction {test_fraction} of {h.shape[0]} sequences leaves no usable split")
    fit, held = slice(n_test, None), slice(0, n_test)
    # r² does not depend on the states' scale: scaled by a power of 2 (exact) to max |h| < 1, states of
    # 1e200 or 1e-200 keep their Gram matrix in range (it was inf or 0)
    h = np.ldexp(h, -np.frexp(np.max(np.abs(h), initial=0.0))[1])
    a = np.concatenate([h - h[fit].mean(axis=0), np.ones((h.shape[0], 1))], axis=1)
    gram = a[fit].T @ a[fit]
    gram[:-1, :-1] += ridge * max(np.trace(gram[:-1, :-1]) / max(h.shape[1], 1), 1e-300) * np.eye(h.shape[1])
    targets = u[:, ::-1][:, :K]  # column k = u_{T-k}
    w = np.linalg.solve(gram, a[fit].T @ targets[fit])
    resid = a[held] @ w - targets[held]
    var = targets[held].var(axis=0)
    r2 = np.where(var > 0, 1.0 - np.mean(resid**2, axis=0) / np.where(var > 0, var, 1.0), 0.0)
    r2 = np.clip(r2, 0.0, 1.0)
    return MemoryCurve(r2=r2, capacity=float(r2.sum()))
