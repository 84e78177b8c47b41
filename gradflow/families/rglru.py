"""RG-LRU, the Real-Gated Linear Recurrent Unit of Griffin (De et al. 2024, arXiv:2402.19427), one family.

u_t = x_t (input_size = hidden_size) or W_in x_t (otherwise: a linear projection to the hidden width, the
role of the block's input linear layer in Griffin), then

r_t = σ(W_a u_t + b_a),  i_t = σ(W_x u_t + b_x),  ln a_t = −c · r_t ⊙ softplus(Λ)  (c = 8),
h_t = a_t ⊙ h_{t−1} + sqrt(1 − a_t²) ⊙ (i_t ⊙ u_t).

∂h_t/∂h_{t−1} = diag(a_t) exactly. Init: W_a, W_x ~ N(0, 1/d) (recurrentgemma's ``BlockDiagonalLinear``
variance scaling, fan-in; dense here, one block), b_a = b_x = 0, W_in ~ N(0, 1/input_size) (lecun normal);
Λ ("paper", the default) so that a^c = σ(−Λ)^c is uniform in [a_min, a_max] = [0.9, 0.999] (the paper's
sentence), or ("code") so that a = σ(−Λ) has a² uniform in [a_min², a_max²] (recurrentgemma's
``rnn_param_init``, a ring's area). Not included: Griffin's reset of the state at a segment's first token
(the recurrence is the paper's equation at every step), its short convolution and gated MLP branch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gradflow.checks import is_real
from gradflow.families import base

A_INITS = ("paper", "code")


@dataclasses.dataclass(frozen=True)
class RGLRUOptions(base.FamilyOptions):
    """RG-LRU options.

    Attributes:
        c: the constant c > 0 of ln a_t = −c r_t softplus(Λ) (8 in the paper).
        a_min, a_max: the init range 0 < a_min < a_max < 1 (of a^c for "paper", of a for "code").
        a_init: "paper" (a^c uniform in [a_min, a_max]) or "code" (a² uniform in [a_min², a_max²]).
        parallel: ``cell.sequence`` by an associative scan.
    """

    c: float = 8.0
    a_min: float = 0.9
    a_max: float = 0.999
    a_init: str = "paper"
    parallel: bool = False
    family: ClassVar[str] = "rglru"

    def problems(self):
        out = []
        for f in ("c", "a_min", "a_max"):
            if not is_real(getattr(self, f)) or not math.isfinite(getattr(self, f)):
                return [(f, "must be a finite number")]
        if self.c <= 0:
            out.append(("c", "must be > 0"))
        if not 0.0 < self.a_min < self.a_max < 1.0:
            out.append(("a_min", f"needs 0 < a_min < a_max < 1 (a_max={self.a_max!r})"))
        if self.a_init not in A_INITS:
            out.append(("a_init", f"must be one of {A_INITS}"))
        if not isinstance(self.parallel, bool):
            out.append(("parallel", "must be a bool"))
        return out


def _lambda_init(o: RGLRUOptions):
    def init(key, shape, dtype):
        u = jax.random.uniform(key, shape, dtype)
        if o.a_init == "paper":
            minus_log_a = -jnp.log(o.a_min + u * (o.a_max - o.a_min)) / o.c  # a^c uniform
        else:
            minus_log_a = -0.5 * jnp.log(o.a_min**2 + u * (o.a_max**2 - o.a_min**2))  # a² uniform
        return base.softplus_inverse(minus_log_a)  # softplus(Λ) = −ln a

    return init


class RGLRUCell(base.DiagonalCell):
    """RG-LRU: carry ``{"h": (B, d), "t": (B,)}``, output h_t. Parameters W_a, b_a, W_x, b_x, Lambda (and W_in
    when input_size != hidden_size)."""

    def setup(self):
        d, dt, o = self.hidden_size, self.dtype, self.spec
        if self.input_size != d:
            lecun = nn.initializers.lecun_normal(in_axis=-1, out_axis=-2)
            self.W_in = self.param("W_in", lecun, (d, self.input_size), dt)
        gate = nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=-1, out_axis=-2)
        self.W_a = self.param("W_a", gate, (d, d), dt)
        self.b_a = self.param("b_a", nn.initializers.zeros, (d,), dt)
        self.W_x = self.param("W_x", gate, (d, d), dt)
        self.b_x = self.param("b_x", nn.initializers.zeros, (d,), dt)
        self.Lambda = self.param("Lambda", _lambda_init(o), (d,), dt)

    def _log_a_and_u(self, x):
        u = x @ self.W_in.T if self.input_size != self.hidden_size else x
        r = jax.nn.sigmoid(u @ self.W_a.T + self.b_a)
        return -self.spec.c * r * jax.nn.softplus(self.Lambda), u

    def coefficients(self, x):
        log_a, u = self._log_a_and_u(x)
        i = jax.nn.sigmoid(u @ self.W_x.T + self.b_x)
        return jnp.exp(log_a), jnp.sqrt(-jnp.expm1(2.0 * log_a)) * (i * u)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _softplus(v):
    return np.logaddexp(0.0, v)


def _log_a(P, x, o):
    u = x @ P["W_in"].T if "W_in" in P else x
    return -o.c * _sigmoid(u @ P["W_a"].T + P["b_a"]) * _softplus(P["Lambda"]), u


def reference_step(P, h, x, o: RGLRUOptions):
    """NumPy float64 step: (h_new, out)."""
    log_a, u = _log_a(P, x, o)
    a = np.exp(log_a)
    i = _sigmoid(u @ P["W_x"].T + P["b_x"])
    h_new = a * h + np.sqrt(1.0 - a**2) * (i * u)
    return h_new, h_new


def decay(P, xs, o: RGLRUOptions):
    """(T, B, d): the diagonal a_t of ∂h_t/∂h_{t−1}."""
    return np.exp(_log_a(P, xs, o)[0])


def equations(o: RGLRUOptions):
    lines = ["r_t = σ(W_a u_t + b_a),  i_t = σ(W_x u_t + b_x),  ln a_t = −c r_t ⊙ softplus(Λ)",
             "h_t = a_t ⊙ h_{t-1} + sqrt(1 − a_t²) ⊙ (i_t ⊙ u_t),  u_t = x_t (or W_in x_t if input_size ≠ d)"]
    init = (f"a^c uniform in [{o.a_min}, {o.a_max}]" if o.a_init == "paper"
            else f"a² uniform in [{o.a_min}², {o.a_max}²] (recurrentgemma)")
    notes = [f"c = {o.c}", f"Λ init: a = σ(−Λ), {init}", "W_a, W_x ~ N(0, 1/d), b = 0",
             "∂h_t/∂h_{t-1} = diag(a_t)"]
    return lines, notes


FAMILY = base.Family(options=RGLRUOptions, cell=RGLRUCell, citation="De et al. 2024 (Griffin)",
                     equations=equations, reference_step=reference_step, decay=decay)
