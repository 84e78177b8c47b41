"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201), one family module.

z_t = σ(W_z x_t + b_z),  h̃_t = W_h x_t + b_h  (or g(W_h x_t + b_h), ``candidate="g"``),
h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t.

The gates depend on x_t only: ∂h_t/∂h_{t−1} = diag(1 − z_t) exactly. Init: PyTorch ``nn.Linear`` (weights and
biases U(±1/sqrt(input_size))), as the authors' code. ``parallel=True`` makes ``cell.sequence`` use the
log-space scan of the paper's appendix (it needs the positive candidate g(k) = k + ½ for k ≥ 0, σ(k)
otherwise); the step itself is always the sequential form.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import numpy as np

from gradflow.families import base

CANDIDATES = ("linear", "g")


@dataclasses.dataclass(frozen=True)
class MinGRUOptions(base.FamilyOptions):
    """minGRU options.

    Attributes:
        candidate: "linear" (h̃_t = W_h x_t + b_h, the paper's equations) or "g" (h̃_t = g(W_h x_t + b_h) > 0,
            the form the log-space scan needs).
        parallel: ``cell.sequence`` by the log-space parallel scan (needs candidate "g").
    """

    candidate: str = "linear"
    parallel: bool = False
    family: ClassVar[str] = "mingru"

    def problems(self):
        out = [] if self.candidate in CANDIDATES else [("candidate", f"must be one of {CANDIDATES}")]
        if not isinstance(self.parallel, bool):
            out.append(("parallel", "must be a bool"))
        elif self.parallel and self.candidate != "g":
            out.append(("parallel", "the log-space scan needs a positive candidate: use candidate='g'"))
        return out


class MinGRUCell(base.DiagonalCell):
    """minGRU: carry ``{"h": (B, d), "t": (B,)}``, output h_t. Parameters W_z, b_z, W_h, b_h."""

    def setup(self):
        d, n_in, dt = self.hidden_size, self.input_size, self.dtype
        init = base.fan_in_uniform(n_in)
        self.W_z = self.param("W_z", init, (d, n_in), dt)
        self.b_z = self.param("b_z", init, (d,), dt)
        self.W_h = self.param("W_h", init, (d, n_in), dt)
        self.b_h = self.param("b_h", init, (d,), dt)

    def coefficients(self, x):
        k = x @ self.W_h.T + self.b_h
        cand = base.g_positive(k) if self.spec.candidate == "g" else k
        z = jax.nn.sigmoid(x @ self.W_z.T + self.b_z)
        return 1.0 - z, z * cand

    def parallel_states(self, h0, xs):
        """Log-space scan: ln(1 − z) = −softplus(k_z), ln z = −softplus(−k_z), ln h̃ = ln g(k_h)."""
        kz = xs @ self.W_z.T + self.b_z
        kh = xs @ self.W_h.T + self.b_h
        return base.log_space_states(h0, -jax.nn.softplus(kz), -jax.nn.softplus(-kz) + base.log_g(kh))


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def reference_step(P, h, x, o: MinGRUOptions):
    """NumPy float64 step: (h_new, out)."""
    k = x @ P["W_h"].T + P["b_h"]
    cand = np.asarray(base.g_positive(k)) if o.candidate == "g" else k
    z = _sigmoid(x @ P["W_z"].T + P["b_z"])
    h_new = (1.0 - z) * h + z * cand
    return h_new, h_new


def decay(P, xs, o: MinGRUOptions):
    """(T, B, d): the diagonal 1 − z_t of ∂h_t/∂h_{t−1}."""
    return 1.0 - _sigmoid(xs @ P["W_z"].T + P["b_z"])


def equations(o: MinGRUOptions):
    cand = "g(W_h x_t + b_h)" if o.candidate == "g" else "W_h x_t + b_h"
    lines = [f"z_t = σ(W_z x_t + b_z),  h̃_t = {cand}", "h_t = (1 − z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t"]
    notes = ["∂h_t/∂h_{t-1} = diag(1 − z_t)", "W, b ~ U(±1/sqrt(input_size)) (PyTorch nn.Linear)"]
    if o.candidate == "g":
        notes.append("g(k) = k + 1/2 (k ≥ 0), σ(k) (k < 0)")
    notes.append("sequence: log-space parallel scan" if o.parallel else "sequence: sequential")
    return lines, notes


FAMILY = base.Family(options=MinGRUOptions, cell=MinGRUCell, citation="Feng et al. 2024",
                     equations=equations, reference_step=reference_step, decay=decay)
