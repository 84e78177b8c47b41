"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201), one family module.

f_t = σ(W_f x_t + b_f),  i_t = σ(W_i x_t + b_i),  f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t),
h̃_t = W_h x_t + b_h  (or g(·), ``candidate="g"``),  h_t = f'_t ⊙ h_{t−1} + i'_t ⊙ h̃_t.

∂h_t/∂h_{t−1} = diag(f'_t) exactly. Init: PyTorch ``nn.Linear`` (U(±1/sqrt(input_size))), as the authors'
code. ``parallel=True``: ``cell.sequence`` by the paper's log-space scan, with
ln f' = −softplus(softplus(−k_f) − softplus(−k_i)), ln i' = −softplus(softplus(−k_i) − softplus(−k_f)).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import numpy as np

from gradflow.families import base
from gradflow.families.mingru import CANDIDATES


@dataclasses.dataclass(frozen=True)
class MinLSTMOptions(base.FamilyOptions):
    """minLSTM options.

    Attributes:
        candidate: "linear" (h̃_t = W_h x_t + b_h) or "g" (h̃_t = g(W_h x_t + b_h) > 0, for the log-space scan).
        parallel: ``cell.sequence`` by the log-space parallel scan (needs candidate "g").
    """

    candidate: str = "linear"
    parallel: bool = False
    family: ClassVar[str] = "minlstm"

    def problems(self):
        out = [] if self.candidate in CANDIDATES else [("candidate", f"must be one of {CANDIDATES}")]
        if not isinstance(self.parallel, bool):
            out.append(("parallel", "must be a bool"))
        elif self.parallel and self.candidate != "g":
            out.append(("parallel", "the log-space scan needs a positive candidate: use candidate='g'"))
        return out


class MinLSTMCell(base.DiagonalCell):
    """minLSTM: carry ``{"h": (B, d), "t": (B,)}``, output h_t. Parameters W_f, b_f, W_i, b_i, W_h, b_h."""

    def setup(self):
        d, n_in, dt = self.hidden_size, self.input_size, self.dtype
        init = base.fan_in_uniform(n_in)
        for g in ("f", "i", "h"):
            setattr(self, "W_" + g, self.param("W_" + g, init, (d, n_in), dt))
            setattr(self, "b_" + g, self.param("b_" + g, init, (d,), dt))

    def _candidate(self, x):
        k = x @ self.W_h.T + self.b_h
        return base.g_positive(k) if self.spec.candidate == "g" else k

    def coefficients(self, x):
        f = jax.nn.sigmoid(x @ self.W_f.T + self.b_f)
        i = jax.nn.sigmoid(x @ self.W_i.T + self.b_i)
        return f / (f + i), i / (f + i) * self._candidate(x)

    def parallel_states(self, h0, xs):
        """The paper's log-space scan."""
        sf = jax.nn.softplus(-(xs @ self.W_f.T + self.b_f))
        si = jax.nn.softplus(-(xs @ self.W_i.T + self.b_i))
        log_b = -jax.nn.softplus(si - sf) + base.log_g(xs @ self.W_h.T + self.b_h)
        return base.log_space_states(h0, -jax.nn.softplus(sf - si), log_b)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def reference_step(P, h, x, o: MinLSTMOptions):
    """NumPy float64 step: (h_new, out)."""
    f = _sigmoid(x @ P["W_f"].T + P["b_f"])
    i = _sigmoid(x @ P["W_i"].T + P["b_i"])
    k = x @ P["W_h"].T + P["b_h"]
    cand = np.asarray(base.g_positive(k)) if o.candidate == "g" else k
    h_new = f / (f + i) * h + i / (f + i) * cand
    return h_new, h_new


def decay(P, xs, o: MinLSTMOptions):
    """(T, B, d): the diagonal f'_t of ∂h_t/∂h_{t−1}."""
    f = _sigmoid(xs @ P["W_f"].T + P["b_f"])
    i = _sigmoid(xs @ P["W_i"].T + P["b_i"])
    return f / (f + i)


def equations(o: MinLSTMOptions):
    cand = "g(W_h x_t + b_h)" if o.candidate == "g" else "W_h x_t + b_h"
    lines = ["f_t = σ(W_f x_t + b_f),  i_t = σ(W_i x_t + b_i),  f'_t = f_t/(f_t + i_t),  "
             "i'_t = i_t/(f_t + i_t)",
             f"h_t = f'_t ⊙ h_{{t-1}} + i'_t ⊙ h̃_t,  h̃_t = {cand}"]
    notes = ["∂h_t/∂h_{t-1} = diag(f'_t)", "W, b ~ U(±1/sqrt(input_size)) (PyTorch nn.Linear)"]
    if o.candidate == "g":
        notes.append("g(k) = k + 1/2 (k ≥ 0), σ(k) (k < 0)")
    notes.append("sequence: log-space parallel scan" if o.parallel else "sequence: sequential")
    return lines, notes


FAMILY = base.Family(options=MinLSTMOptions, cell=MinLSTMCell, citation="Feng et al. 2024",
                     equations=equations, reference_step=reference_step, decay=decay)
