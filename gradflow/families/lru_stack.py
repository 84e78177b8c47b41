"""A deep LRU: L ≥ 2 blocks of [normalization → LRU → nonlinear mixing → residual] (Orvieto et al. 2023).

o⁰_t = W_enc x_t + b_enc (width H = N), then for each layer l = 1..L:
z_t = LN_l(o^{l−1}_t);  x^l_t = λ^l ⊙ x^l_{t−1} + γ^l ⊙ (B^l z_t);  y_t = Re(C^l x^l_t) + D^l ⊙ z_t;
g_t = GELU(y_t);  o^l_t = o^{l−1}_t + (W^l_1 g_t + b^l_1) ⊙ σ(W^l_2 g_t + b^l_2)  (GLU; ``mixing="mlp"``:
W^l_2 GELU(W^l_1 g_t + b^l_1) + b^l_2).

Each unit is `gradflow.cells.LRUCell` (bare, its parameters and init: λ = exp(−exp(ν) + i·exp(θ)) with |λ|
on the ring [r_min, r_max], phase in [0, max_phase], γ = sqrt(1 − |λ|²)). The carry ``h`` (B, L·2N) holds
every layer's state [Re x^l, Im x^l] side by side, so hidden_size = L·2N. The output is o^L_t (B, N).
The state Jacobian is block lower-triangular (layer l's state reads layer l−1's through the nonlinear
mixing) with diagonal blocks diag(λ^l): not diagonal, so no closed form per lag, but ‖∂h_T/∂h_t‖₂ grows at
the rate ln max_{l,j} |λ^l_j| asymptotically (the off-diagonal blocks add a polynomial factor in the lag).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gradflow.cells import LRUCell
from gradflow.checks import is_int, is_real
from gradflow.families import base
from gradflow.norm import LayerNorm
from gradflow.specs import CellSpec

MIXINGS = ("glu", "mlp")
NORMS = ("ln", None)


@dataclasses.dataclass(frozen=True)
class LRUStackOptions(base.FamilyOptions):
    """Deep-LRU options.

    Attributes:
        layers: L ≥ 2 blocks.
        r_min, r_max: the ring 0 ≤ r_min < r_max ≤ 1 of initial |λ| (as the ``lru`` preset).
        max_phase: initial phases uniform in [0, max_phase] (> 0).
        mixing: "glu" (Orvieto et al.'s GELU then GLU) or "mlp" (GELU, dense, GELU, dense).
        norm: "ln" (LayerNorm before each LRU) or None.
    """

    layers: int = 2
    r_min: float = 0.0
    r_max: float = 1.0
    max_phase: float = 6.28
    mixing: str = "glu"
    norm: str | None = "ln"
    family: ClassVar[str] = "lru_stack"

    def problems(self):
        out = []
        if not is_int(self.layers) or self.layers < 2:
            out.append(("layers", "a stack needs an int >= 2 (one layer is the 'lru_block' preset)"))
        for f in ("r_min", "r_max", "max_phase"):
            if not is_real(getattr(self, f)) or not math.isfinite(getattr(self, f)):
                return out + [(f, "must be a finite number")]
        if not 0.0 <= self.r_min < self.r_max <= 1.0:
            out.append(("r_min", f"the ring needs 0 <= r_min < r_max <= 1 (r_max={self.r_max!r})"))
        if self.max_phase <= 0:
            out.append(("max_phase", "must be > 0"))
        if self.mixing not in MIXINGS:
            out.append(("mixing", f"must be one of {MIXINGS}"))
        if self.norm not in NORMS:
            out.append(("norm", f"must be one of {NORMS}"))
        return out

    def size_problem(self, hidden_size, input_size):
        if hidden_size % (2 * self.layers):
            return f"hidden_size = layers × 2N (N modes a layer) must be a multiple of {2 * self.layers}"
        return None


class LRUStackCell(base.RegistryCell):
    """L LRU blocks: carry ``{"h": (B, L·2N), "t": (B,)}``, output o^L_t (B, N). Parameters: W_enc, b_enc,
    and per layer ``lru_l`` (an `LRUCell`), ``ln_l`` (LayerNorm), ``mix_l`` {W_1, b_1, W_2, b_2}."""

    def setup(self):
        o, dt = self.spec, self.dtype
        two_n = self.hidden_size // o.layers
        H = two_n // 2
        unit = CellSpec(family="lru", bias=False, r_min=o.r_min, r_max=o.r_max, max_phase=o.max_phase,
                        dtype=o.dtype)
        lecun = nn.initializers.lecun_normal(in_axis=-1, out_axis=-2)
        self.W_enc = self.param("W_enc", lecun, (H, self.input_size), dt)
        self.b_enc = self.param("b_enc", nn.initializers.zeros, (H,), dt)
        self.units = [LRUCell(spec=unit, hidden_size=two_n, input_size=H, name=f"lru_{k}")
                      for k in range(o.layers)]
        if o.norm == "ln":
            self.norms = [LayerNorm(H, param_dtype=dt, name=f"ln_{k}") for k in range(o.layers)]
        self.mixes = [_Mixing(H, o.mixing, dt, name=f"mix_{k}") for k in range(o.layers)]

    def __call__(self, carry, x, train: bool = False):
        self._check(carry, x)
        L, t = self.spec.layers, carry["t"]
        hs = jnp.split(carry["h"], L, axis=-1)
        o = x @ self.W_enc.T + self.b_enc
        new = []
        for k in range(L):
            z = self.norms[k](o) if self.spec.norm == "ln" else o
            c, y = self.units[k]({"h": hs[k], "t": t}, z)
            new.append(c["h"])
            o = o + self.mixes[k](jax.nn.gelu(y, approximate=True))
        return {"h": jnp.concatenate(new, axis=-1), "t": t + 1}, o


class _Mixing(nn.Module):
    """GLU (W_1 g + b_1) ⊙ σ(W_2 g + b_2) or MLP W_2 GELU(W_1 g + b_1) + b_2, weights lecun normal, b = 0."""

    width: int
    kind: str
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, g):
        H, dt = self.width, self.param_dtype
        lecun = nn.initializers.lecun_normal(in_axis=-1, out_axis=-2)
        W1, W2 = (self.param(f"W_{k}", lecun, (H, H), dt) for k in (1, 2))
        b1, b2 = (self.param(f"b_{k}", nn.initializers.zeros, (H,), dt) for k in (1, 2))
        if self.kind == "glu":
            return (g @ W1.T + b1) * jax.nn.sigmoid(g @ W2.T + b2)
        return jax.nn.gelu(g @ W1.T + b1, approximate=True) @ W2.T + b2


def _gelu(v):
    return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))


def _layer_norm(z, P):
    mu, var = z.mean(-1, keepdims=True), z.var(-1, keepdims=True)
    return P["scale"] * (z - mu) / np.sqrt(var + 1e-5) + P["bias"]


def reference_step(P, h, x, o: LRUStackOptions):
    """NumPy float64 step, complex arithmetic for each LRU: (h_new, o^L)."""
    L = o.layers
    out = x @ P["W_enc"].T + P["b_enc"]
    new = []
    for k, hk in enumerate(np.split(h, L, axis=-1)):
        U, M = P[f"lru_{k}"], P[f"mix_{k}"]
        z = _layer_norm(out, P[f"ln_{k}"]) if o.norm == "ln" else out
        lam = np.exp(-np.exp(U["nu_log"]) + 1j * np.exp(U["theta_log"]))
        N = lam.shape[0]
        xc = hk[:, :N] + 1j * hk[:, N:]
        xc = lam * xc + np.exp(U["gamma_log"]) * (z @ (U["B_re"] + 1j * U["B_im"]).T)
        y = (xc @ (U["C_re"] + 1j * U["C_im"]).T).real + U["D"] * z
        g = _gelu(y)
        if o.mixing == "glu":
            mix = (g @ M["W_1"].T + M["b_1"]) / (1.0 + np.exp(-(g @ M["W_2"].T + M["b_2"])))
        else:
            mix = _gelu(g @ M["W_1"].T + M["b_1"]) @ M["W_2"].T + M["b_2"]
        out = out + mix
        new.append(np.concatenate([xc.real, xc.imag], axis=-1))
    return np.concatenate(new, axis=-1), out


def rate(params, o: LRUStackOptions):
    """ln max_{l,j} |λ^l_j|: the asymptotic rate of ‖∂h_T/∂h_t‖₂ (block-triangular Jacobian)."""
    nus = [np.exp(np.asarray(params[f"lru_{k}"]["nu_log"], np.float64)) for k in range(o.layers)]
    return float(-min(v.min() for v in nus)), "asymptotic"


def equations(o: LRUStackOptions):
    norm = "LN_l(o^{l-1}_t)" if o.norm == "ln" else "o^{l-1}_t"
    mix = ("(W_1 g_t + b_1) ⊙ σ(W_2 g_t + b_2)" if o.mixing == "glu" else "W_2 GELU(W_1 g_t + b_1) + b_2")
    lines = [f"o^0_t = W_enc x_t + b_enc;  per layer l = 1..{o.layers}: z_t = {norm}",
             "x^l_t = λ^l ⊙ x^l_{t-1} + γ^l ⊙ (B^l z_t),  y_t = Re(C^l x^l_t) + D^l ⊙ z_t",
             f"o^l_t = o^{{l-1}}_t + {mix},  g_t = GELU(y_t);  state h_t = [Re x^l_t, Im x^l_t]_l"]
    notes = [f"ring init r_min = {o.r_min}, r_max = {o.r_max}, max_phase = {o.max_phase}",
             "γ0 = sqrt(1 − |λ|²)", "block-triangular ∂h_t/∂h_{t-1}, diagonal blocks diag(λ^l)"]
    return lines, notes


FAMILY = base.Family(options=LRUStackOptions, cell=LRUStackCell, citation="Orvieto et al. 2023, deep LRU",
                     equations=equations, reference_step=reference_step, rate=rate)
