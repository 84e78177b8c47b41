"""S6, Mamba's selective state-space recurrence (Gu & Dao 2023, arXiv:2312.00752), one family module.

Channels d = 1..D (D = hidden_size / N), states n = 1..N per channel; u_t = x_t (input_size = D) or
W_in x_t (otherwise: the block's input projection), then

Δ_t = softplus(W_Δ u_t + b_Δ) (D,),  Ā_t = exp(Δ_t ⊗ A) (D, N),  B_t = W_B u_t (N,),  C_t = W_C u_t (N,),
h_t[d, n] = Ā_t[d, n] h_{t−1}[d, n] + Δ_t[d] B_t[n] u_t[d],   y_t[d] = Σ_n C_t[n] h_t[d, n] + D_d u_t[d].

W_Δ = W_Δ↑ W_Δ↓ has rank R (``dt_rank``, default ceil(D/16)) as in Mamba (x_proj then dt_proj). The carry's
h is (B, D·N), index d·N + n. ∂h_t/∂h_{t−1} = diag(Ā_t) exactly. Init (Mamba's reference code): A_{d,n} = −n
(A = −exp(A_log)), Δ log-uniform in [dt_min, dt_max] = [1e-3, 0.1] (floor 1e-4) through b_Δ = softplus⁻¹(Δ),
W_Δ↑ ~ U(±R^−½), D = 1, W_Δ↓, W_B, W_C ~ U(±D^−½) and W_in ~ U(±input_size^−½) (PyTorch ``nn.Linear``).
Not included: Mamba's block around S6 (its convolution, SiLU and gate branch).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gradflow.checks import is_int, is_real
from gradflow.families import base


@dataclasses.dataclass(frozen=True)
class S6Options(base.FamilyOptions):
    """S6 options.

    Attributes:
        state_size: N states per channel (16 in Mamba); hidden_size must be a multiple of it.
        dt_min, dt_max: Δ's init range (log-uniform), 0 < dt_min < dt_max.
        dt_floor: Δ's init floor.
        dt_rank: rank R of W_Δ; None: ceil(D / 16).
        parallel: ``cell.sequence`` by an associative scan (Blelloch).
    """

    state_size: int = 16
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_floor: float = 1e-4
    dt_rank: int | None = None
    parallel: bool = False
    family: ClassVar[str] = "s6"

    def problems(self):
        out = []
        if not is_int(self.state_size) or self.state_size < 1:
            out.append(("state_size", "must be a positive int"))
        for f in ("dt_min", "dt_max", "dt_floor"):
            v = getattr(self, f)
            if not is_real(v) or not math.isfinite(v) or v <= 0:
                return out + [(f, "must be a finite number > 0")]
        if self.dt_min >= self.dt_max:
            out.append(("dt_min", f"must be < dt_max={self.dt_max!r}"))
        if self.dt_rank is not None and (not is_int(self.dt_rank) or self.dt_rank < 1):
            out.append(("dt_rank", "must be None or a positive int"))
        if not isinstance(self.parallel, bool):
            out.append(("parallel", "must be a bool"))
        return out

    def size_problem(self, hidden_size, input_size):
        if hidden_size % self.state_size:
            return f"hidden_size = channels × state_size must be a multiple of state_size={self.state_size}"
        return None

    def rank(self, channels: int) -> int:
        """R: ``dt_rank`` or ceil(channels / 16)."""
        return self.dt_rank if self.dt_rank is not None else math.ceil(channels / 16)


def _dt_bias_init(o: S6Options):
    def init(key, shape, dtype):
        u = jax.random.uniform(key, shape, dtype)
        dt = jnp.exp(u * (math.log(o.dt_max) - math.log(o.dt_min)) + math.log(o.dt_min))
        return base.softplus_inverse(jnp.maximum(dt, o.dt_floor))

    return init


class S6Cell(base.DiagonalCell):
    """S6: carry ``{"h": (B, D·N), "t": (B,)}``, output y_t (B, D). Parameters W_dt_down (R, D), W_dt (D, R),
    b_dt (D,), W_B, W_C (N, D), A_log (D, N), D (D,) (and W_in when input_size != D)."""

    @property
    def channels(self) -> int:
        return self.hidden_size // self.spec.state_size

    def setup(self):
        o, dt, Dc, N = self.spec, self.dtype, self.channels, self.spec.state_size
        R = o.rank(Dc)
        if self.input_size != Dc:
            self.W_in = self.param("W_in", base.fan_in_uniform(self.input_size), (Dc, self.input_size), dt)
        self.W_dt_down = self.param("W_dt_down", base.fan_in_uniform(Dc), (R, Dc), dt)
        self.W_dt = self.param("W_dt", base.uniform_init(R**-0.5), (Dc, R), dt)
        self.b_dt = self.param("b_dt", _dt_bias_init(o), (Dc,), dt)
        self.W_B = self.param("W_B", base.fan_in_uniform(Dc), (N, Dc), dt)
        self.W_C = self.param("W_C", base.fan_in_uniform(Dc), (N, Dc), dt)
        a_log = lambda key, shape, dtype: jnp.log(jnp.broadcast_to(jnp.arange(1, N + 1, dtype=dtype), shape))
        self.A_log = self.param("A_log", a_log, (Dc, N), dt)
        self.D = self.param("D", nn.initializers.ones, (Dc,), dt)

    def _u(self, x):
        return x @ self.W_in.T if self.input_size != self.channels else x

    def coefficients(self, x):
        u = self._u(x)
        delta = jax.nn.softplus(u @ self.W_dt_down.T @ self.W_dt.T + self.b_dt)  # (B, D)
        a = jnp.exp(delta[:, :, None] * -jnp.exp(self.A_log))  # (B, D, N)
        b = delta[:, :, None] * (u @ self.W_B.T)[:, None, :] * u[:, :, None]
        return a.reshape(x.shape[0], -1), b.reshape(x.shape[0], -1)

    def output(self, h, x):
        u = self._u(x)
        C = u @ self.W_C.T  # (B, N)
        return jnp.einsum("bdn,bn->bd", h.reshape(h.shape[0], self.channels, -1), C) + self.D * u


def _softplus(v):
    return np.logaddexp(0.0, v)


def _terms(P, x):
    u = x @ P["W_in"].T if "W_in" in P else x
    delta = _softplus(u @ P["W_dt_down"].T @ P["W_dt"].T + P["b_dt"])
    return u, delta, np.exp(delta[..., :, None] * -np.exp(P["A_log"]))


def reference_step(P, h, x, o: S6Options):
    """NumPy float64 step, channel by channel and state by state: (h_new, y)."""
    u, delta, Abar = _terms(P, x)
    Bt, Ct = u @ P["W_B"].T, u @ P["W_C"].T
    Bsz, Dc = u.shape
    N = o.state_size
    h = h.reshape(Bsz, Dc, N)
    h_new, y = np.zeros_like(h), np.zeros((Bsz, Dc))
    for d in range(Dc):
        for n in range(N):
            h_new[:, d, n] = Abar[:, d, n] * h[:, d, n] + delta[:, d] * Bt[:, n] * u[:, d]
            y[:, d] += Ct[:, n] * h_new[:, d, n]
        y[:, d] += P["D"][d] * u[:, d]
    return h_new.reshape(Bsz, Dc * N), y


def decay(P, xs, o: S6Options):
    """(T, B, D·N): the diagonal Ā_t of ∂h_t/∂h_{t−1}."""
    Abar = _terms(P, xs)[2]
    return Abar.reshape(*Abar.shape[:2], -1)


def equations(o: S6Options):
    lines = ["Δ_t = softplus(W_Δ u_t + b_Δ),  Ā_t = exp(Δ_t ⊗ A),  B_t = W_B u_t,  C_t = W_C u_t",
             "h_t[d, n] = Ā_t[d, n] h_{t-1}[d, n] + Δ_t[d] B_t[n] u_t[d]",
             "y_t[d] = Σ_n C_t[n] h_t[d, n] + D_d u_t[d]"]
    rank = "ceil(D/16)" if o.dt_rank is None else str(o.dt_rank)
    notes = [f"N = {o.state_size} states per channel, D = hidden_size/N channels, u_t = x_t (or W_in x_t)",
             f"A_dn = −n, Δ log-uniform in [{o.dt_min}, {o.dt_max}] via b_Δ, D = 1, rank W_Δ = {rank}",
             "∂h_t/∂h_{t-1} = diag(Ā_t)", "sequence: " + ("associative scan" if o.parallel else "sequential")]
    return lines, notes


FAMILY = base.Family(options=S6Options, cell=S6Cell, citation="Gu & Dao 2023 (Mamba)",
                     equations=equations, reference_step=reference_step, decay=decay)
