"""The recurrence zoo: one composable `CellSpec`, three Flax linen cell families, named presets.

Notation: a column-vector convention, a_t = W_hh h_{t-1} + W_xh x_t (batch form ``h @ W_hh.T + x @ W_xh.T``).
BN_*(·) batch norm over the batch (per-time-step statistics by default), LN(·) layer norm over features,
D(·) hidden dropout (train mode only), σ the logistic sigmoid.

Presets (``CELLS``; ``describe(name)`` renders the equation of any spec):

- ``tanh``:          h_t = tanh(W_hh h_{t-1} + W_xh x_t + b)
- ``linear``:        h_t = W_hh h_{t-1} + W_xh x_t + b                       (control: no nonlinearity)
- ``bn_notanh``:     h_t = BN_h(W_hh h_{t-1}) + BN_x(W_xh x_t)               (the proposal: no tanh, no b;
                     BN_x's shift β_x plays the bias, BN_h has γ only)
- ``bn_input_tanh``: h_t = tanh(BN_x(W_xh x_t) + W_hh h_{t-1} + b)           (Laurent et al. 2016)
- ``bn_tanh``:       h_t = tanh(BN_h(W_hh h_{t-1}) + BN_x(W_xh x_t) + b)     (Cooijmans et al. 2016, γ = 0.1)
- ``ln_notanh``:     h_t = D(LN_h(W_hh h_{t-1}) + BN_x(W_xh x_t))            (the alternative: no tanh,
                     dropout 0.2 in train mode; BN_x's shift plays the bias)
- ``ln_tanh``:       h_t = tanh(LN(W_hh h_{t-1} + W_xh x_t) + b)            (Ba et al. 2016)
- ``lstm``:          (f̃, ĩ, õ, g̃) = W_hh h_{t-1} + W_xh x_t + b;
                     c_t = σ(f̃) ⊙ c_{t-1} + σ(ĩ) ⊙ tanh(g̃);  h_t = σ(õ) ⊙ tanh(c_t)
- ``bn_lstm``:       (f̃, ĩ, õ, g̃) = BN_h(W_hh h_{t-1}) + BN_x(W_xh x_t) + b;
                     c_t as above;  h_t = σ(õ) ⊙ tanh(BN_c(c_t))   (Cooijmans: γ = 0.1, β_h = β_x = 0)
- ``ln_lstm``:       (f̃, ĩ, õ, g̃) = LN_h(W_hh h_{t-1}) + LN_x(W_xh x_t) + b;
                     c_t as above;  h_t = σ(õ) ⊙ tanh(LN_c(c_t))              (Ba et al. 2016)
- ``gru``:           r = σ(r̃_x + r̃_h), z = σ(z̃_x + z̃_h), n = tanh(ñ_x + r ⊙ ñ_h),
                     h_t = (1 − z) ⊙ n + z ⊙ h_{t-1},  with (r̃_x, z̃_x, ñ_x) = W_xh x_t + b,
                     (r̃_h, z̃_h, ñ_h) = W_hh h_{t-1}
- ``irnn``:          h_t = relu(W_hh h_{t-1} + W_xh x_t + b), W_hh = I, b = 0 at init (Le et al. 2015)
- ``lru``:           x_t = λ ⊙ x_{t-1} + γ ⊙ (B u_t), y_t = Re(C x_t) + D ⊙ u_t, carry h_t = [Re x_t, Im x_t]
                     (Orvieto et al. 2023; `LRUCell`)
- ``lru_block``:     encoder → LN → LRU → GELU → GLU → residual (`LRUCell`; read out by `readout_features`)

Shift rule: when ``bias`` is on, the bias vector b is the only shift and the summed normalizations have β = 0
(Cooijmans' β_h = β_x = 0); when it is off, exactly one summed normalization carries a learnable β —
the one after the sum if there is one, else the input one, else the recurrent one.
BN_c / LN_c always has its own β.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gradflow import cache
from gradflow.checks import is_int, is_real, positive_int
from gradflow.norm import BatchNorm, LayerNorm, batch_moments

__all__ = [
    "CellSpec",
    "PRESETS",
    "CELLS",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "make_cell",
    "init_cell",
    "describe",
    "recurrent_init",
    "LRUCell",
    "gamma_of",
    "with_sequence_stats",
    "feature_size",
    "readout_features",
]

FAMILIES = ("rnn", "lstm", "gru", "lru")
NORMS = (None, "bn", "ln")
ACTIVATIONS = {"tanh": jnp.tanh, "identity": lambda a: a, "relu": jax.nn.relu}
RECURRENT_INITS = ("gaussian", "orthogonal", "identity")
DROPOUT_MODES = ("step", "sequence")
#: Largest hidden dropout rate. The mask keeps a unit when a float32 uniform (a grid of spacing 2**-23) falls
#: below 1 - p, so the realized keep probability is 1 - p rounded up to that grid and the mean of the rescaled
#: mask D(1) is 1 only to within 2**-23 / (1 - p) (its expectation is 2**-23 / 1e-7 = 1.19 at p = 1 - 1e-7).
#: With 1 - p >= 2**-10 that error stays below 2**-13 (1.2e-4) per step.
DROPOUT_MAX = 1.0 - 2.0**-10
_GATES = {"rnn": 1, "lstm": 4, "gru": 3, "lru": 1}
INPUT_STATS = ("step", "sequence")


def _dropout_problem(p: Any) -> str | None:
    """Why ``p`` is not a usable hidden dropout rate, or None."""
    if not (is_real(p) and 0.0 <= p < 1.0):
        return "must be a rate in [0, 1)"
    if p > DROPOUT_MAX:
        return (f"must be <= 1 - 2**-10 = {DROPOUT_MAX}: the Bernoulli mask compares uniforms on a grid of "
                "2**-23 with 1 - p, so its mean is 1 only to within 2**-23/(1 - p)")
    return None


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """Composable specification of a recurrent cell (every preset is one of these).

    Attributes:
        family: "rnn" (h_t = act(...)), "lstm" (gates f, i, o, g) or "gru" (gates r, z, n).
        norm_x: normalization on the input product W_xh x_t: None, "bn" or "ln".
        norm_h: normalization on the recurrent product W_hh h_{t-1}: None, "bn" or "ln".
        norm_sum: normalization after the sum of the two products (rnn, lstm): None, "bn" or "ln".
        norm_c: normalization of c_t inside the LSTM output h_t = σ(õ) ⊙ tanh(N(c_t)) (lstm only).
        activation: the rnn nonlinearity: "tanh", "identity" (no nonlinearity) or "relu"
            (lstm/gru: must stay "tanh", their nonlinearities are fixed).
        bias: a bias vector b (G*d,) added before the nonlinearity. See the module's shift rule.
        dropout: hidden dropout rate p in [0, 1) on the new h_t (train mode only;
            inverted: kept units × 1/(1−p)).
        dropout_mode: "step" (a fresh mask each step, key folded with t) or "sequence"
            (one mask per sequence).
        recurrent_init: W_hh init per gate block: "gaussian" (N(0, gain²/d)), "orthogonal" (× gain),
            "identity" (gain · I, IRNN).
        gain: g of the recurrent init.
        bn_gamma_init: initial γ of every BN.
        ln_gamma_init: initial γ of every LN.
        per_step_stats: BN running statistics per time step ((t_max, F), row
            min(t, t_max − 1)) or shared ((F,)).
        t_max: rows of per-step statistics.
        bn_momentum: running-average momentum.
        bn_eps: BN ε (> 0).
        ln_eps: LN ε (> 0).
        forget_bias: initial bias of the LSTM forget gate.
        dtype: "float32" or "float64" (parameters, statistics and carry).
        input_gamma_init: initial γ of the input path's normalization N_x only (γ_x; the LRU block: its
            normalization); None: N_x uses ``bn_gamma_init`` / ``ln_gamma_init`` like every other one.
        input_stats: statistics of BN_x in train mode: "step" (the batch at each step) or "sequence" (one
            mean and variance per feature over all B·T values of W_xh x_t, Laurent et al. 2016; computed
            before the scan by `with_sequence_stats`, see there).
        r_min, r_max: the LRU's ring 0 ≤ r_min < r_max ≤ 1 of initial eigenvalue moduli |λ| (family "lru").
        max_phase: the LRU's initial phases arg λ are uniform in [0, max_phase] (> 0).
        lru_block: family "lru": the whole block (encoder → N_x → LRU → GELU → GLU → residual) instead of
            the bare unit (see `LRUCell`).
    """

    family: str = "rnn"
    norm_x: str | None = None
    norm_h: str | None = None
    norm_sum: str | None = None
    norm_c: str | None = None
    activation: str = "tanh"
    bias: bool = True
    dropout: float = 0.0
    dropout_mode: str = "step"
    recurrent_init: str = "gaussian"
    gain: float = 1.0
    bn_gamma_init: float = 1.0
    ln_gamma_init: float = 1.0
    per_step_stats: bool = True
    t_max: int = 100
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    ln_eps: float = 1e-5
    forget_bias: float = 0.0
    dtype: str = "float32"
    input_gamma_init: float | None = None
    input_stats: str = "step"
    r_min: float = 0.0
    r_max: float = 1.0
    max_phase: float = 6.28
    lru_block: bool = False

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"CellSpec.{field}: {why} (got {getattr(self, field)!r})")

        if self.family not in FAMILIES:
            bad("family", f"must be one of {FAMILIES}")
        for f in ("norm_x", "norm_h", "norm_sum", "norm_c"):
            if getattr(self, f) not in NORMS:
                bad(f, f"must be one of {NORMS}")
        if self.norm_c is not None and self.family != "lstm":
            bad("norm_c", "only an LSTM has a cell state c_t to normalize")
        if self.norm_sum is not None and self.family == "gru":
            bad("norm_sum", "a GRU has no single sum of products to normalize")
        if self.activation not in ACTIVATIONS:
            bad("activation", f"must be one of {tuple(ACTIVATIONS)}")
        if self.family != "rnn" and self.activation != "tanh":
            bad("activation", f"the {self.family} nonlinearities are fixed; activation must stay 'tanh'")
        if not isinstance(self.bias, bool):
            bad("bias", "must be a bool")
        why = _dropout_problem(self.dropout)
        if why:
            bad("dropout", why)
        if self.dropout_mode not in DROPOUT_MODES:
            bad("dropout_mode", f"must be one of {DROPOUT_MODES}")
        if self.recurrent_init not in RECURRENT_INITS:
            bad("recurrent_init", f"must be one of {RECURRENT_INITS}")
        for f in ("gain", "bn_gamma_init", "ln_gamma_init", "bn_momentum", "forget_bias"):
            v = getattr(self, f)
            if not is_real(v) or not math.isfinite(v):
                bad(f, "must be a finite number")
        if not 0.0 <= self.bn_momentum < 1.0:
            bad("bn_momentum", "must lie in [0, 1)")
        for f in ("bn_eps", "ln_eps"):
            v = getattr(self, f)
            if not is_real(v) or not math.isfinite(v) or v <= 0:
                bad(f, "must be a finite number > 0")
        if not isinstance(self.per_step_stats, bool):
            bad("per_step_stats", "must be a bool")
        if not is_int(self.t_max) or self.t_max < 1:
            bad("t_max", "must be a positive int")
        if self.dtype not in ("float32", "float64"):
            bad("dtype", "must be 'float32' or 'float64'")
        self._check_additions(bad)

    def _check_additions(self, bad):
        """Checks of the input-path options and the LRU options."""
        g = self.input_gamma_init
        if g is not None and (isinstance(g, bool) or not isinstance(g, int | float) or not math.isfinite(g)):
            bad("input_gamma_init", "must be None or a finite number")
        if self.input_stats not in INPUT_STATS:
            bad("input_stats", f"must be one of {INPUT_STATS}")
        if self.input_stats == "sequence" and self.norm_x != "bn":
            bad("input_stats", "sequence statistics are for a BN on the input path (norm_x='bn')")
        for f in ("r_min", "r_max", "max_phase"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                bad(f, "must be a finite number")
        if not 0.0 <= self.r_min < self.r_max <= 1.0:
            bad("r_min", f"the LRU ring needs 0 <= r_min < r_max <= 1 (r_max={self.r_max!r})")
        if self.max_phase <= 0:
            bad("max_phase", "must be > 0")
        if not isinstance(self.lru_block, bool):
            bad("lru_block", "must be a bool")
        if self.lru_block and self.family != "lru":
            bad("lru_block", "is an option of family 'lru'")
        if self.family == "lru":
            for f in ("norm_h", "norm_sum"):
                if getattr(self, f) is not None:
                    bad(f, "an LRU has no normalization inside its linear recurrence")
            if self.norm_x is not None and not self.lru_block:
                bad("norm_x", "the bare LRU has no input normalization (it belongs to the block: lru_block)")
            if self.dropout:
                bad("dropout", "not supported for family 'lru'")

    @property
    def has_bn(self) -> bool:
        """True when some normalization is a BN (the cell then has ``batch_stats`` and couples the batch)."""
        return "bn" in (self.norm_x, self.norm_h, self.norm_sum, self.norm_c)

    def shift_of(self, where: str) -> bool:
        """Whether the normalization at ``where`` ("x", "h", "sum", "c") has a learnable β (shift rule)."""
        if where == "c":
            return True
        if self.bias:
            return False
        for w in ("sum", "x", "h"):
            if getattr(self, "norm_" + w) is not None:
                return w == where
        return False

    def describe(self) -> str:
        """The cell's equation as text (see `describe`)."""
        return describe(self)


PRESETS: dict[str, CellSpec] = {
    "tanh": CellSpec(),
    "linear": CellSpec(activation="identity"),
    "bn_notanh": CellSpec(norm_x="bn", norm_h="bn", activation="identity", bias=False),
    "bn_input_tanh": CellSpec(norm_x="bn"),
    "bn_tanh": CellSpec(norm_x="bn", norm_h="bn", bn_gamma_init=0.1),
    "ln_notanh": CellSpec(norm_x="bn", norm_h="ln", activation="identity", bias=False, dropout=0.2),
    "ln_tanh": CellSpec(norm_sum="ln"),
    "lstm": CellSpec(family="lstm", recurrent_init="orthogonal", forget_bias=1.0),
    "bn_lstm": CellSpec(
        family="lstm",
        norm_x="bn",
        norm_h="bn",
        norm_c="bn",
        bn_gamma_init=0.1,
        recurrent_init="orthogonal",
        forget_bias=1.0,
    ),
    "ln_lstm": CellSpec(
        family="lstm", norm_x="ln", norm_h="ln", norm_c="ln", recurrent_init="orthogonal", forget_bias=1.0
    ),
    "gru": CellSpec(family="gru", recurrent_init="orthogonal"),
    "irnn": CellSpec(activation="relu", recurrent_init="identity"),
    "lru": CellSpec(family="lru", bias=False),
    "lru_block": CellSpec(family="lru", lru_block=True, norm_x="ln", bias=False),
}
CELLS: tuple[str, ...] = tuple(PRESETS)

_CITATION = {
    "tanh": "vanilla RNN",
    "linear": "control without nonlinearity",
    "bn_notanh": "the proposal under test",
    "bn_input_tanh": "Laurent et al. 2016",
    "bn_tanh": "Cooijmans et al. 2016 on a vanilla RNN",
    "ln_notanh": "the alternative under test",
    "ln_tanh": "Ba et al. 2016",
    "lstm": "Hochreiter & Schmidhuber 1997",
    "bn_lstm": "Cooijmans et al. 2016",
    "ln_lstm": "Ba et al. 2016",
    "gru": "Cho et al. 2014",
    "irnn": "Le, Jaitly & Hinton 2015",
    "lru": "Orvieto et al. 2023",
    "lru_block": "Orvieto et al. 2023, the unit in its block",
}


def _n(spec: CellSpec, where: str, inner: str) -> str:
    kind = getattr(spec, "norm_" + where)
    if kind is None:
        return inner
    tag = "" if where == "sum" else "_" + where
    return f"{kind.upper()}{tag}({inner})"


def describe(spec: str | CellSpec) -> str:
    """Render the equation of a preset name or a `CellSpec`, with its shifts, γ inits and dropout.

    Example:
        >>> print(describe("bn_notanh").splitlines()[0])
        h_t = BN_h(W_hh h_{t-1}) + BN_x(W_xh x_t)
    """
    name = None
    if isinstance(spec, str):
        name = spec
        spec = _preset(spec)
    s = spec
    if s.family == "lru":
        return _describe_lru(s, name)
    hh, xx = _n(s, "h", "W_hh h_{t-1}"), _n(s, "x", "W_xh x_t")
    b = " + b" if s.bias else ""
    lines = []
    if s.family == "rnn":
        inner = _n(s, "sum", f"{hh} + {xx}") + b
        if s.activation != "identity":
            inner = f"{s.activation}({inner})"
        lines.append(f"h_t = D({inner})" if s.dropout else f"h_t = {inner}")
    elif s.family == "lstm":
        lines.append(f"(f̃, ĩ, õ, g̃) = {_n(s, 'sum', f'{hh} + {xx}')}{b}")
        lines.append("c_t = σ(f̃) ⊙ c_{t-1} + σ(ĩ) ⊙ tanh(g̃)")
        out = f"σ(õ) ⊙ tanh({_n(s, 'c', 'c_t')})"
        lines.append(f"h_t = D({out})" if s.dropout else f"h_t = {out}")
    else:
        lines.append(f"(r̃_x, z̃_x, ñ_x) = {xx}{b};  (r̃_h, z̃_h, ñ_h) = {hh}")
        lines.append("r = σ(r̃_x + r̃_h);  z = σ(z̃_x + z̃_h);  n = tanh(ñ_x + r ⊙ ñ_h)")
        out = "(1 − z) ⊙ n + z ⊙ h_{t-1}"
        lines.append(f"h_t = D({out})" if s.dropout else f"h_t = {out}")
    notes = []
    shifts = [w for w in ("x", "h", "sum") if getattr(s, "norm_" + w) and s.shift_of(w)]
    if s.bias:
        summed = any(getattr(s, "norm_" + w) for w in ("x", "h", "sum"))
        notes.append("shift: b (the summed normalizations have β = 0)" if summed else "shift: b")
    elif shifts:
        notes.append(f"shift: β of {_n(s, shifts[0], '·')} only")
    else:
        notes.append("no shift")
    if s.has_bn:
        stats = f"per step (t_max = {s.t_max})" if s.per_step_stats else "shared over time"
        notes.append(f"BN γ0 = {s.bn_gamma_init}, statistics {stats}")
    if "ln" in (s.norm_x, s.norm_h, s.norm_sum, s.norm_c):
        notes.append(f"LN γ0 = {s.ln_gamma_init}")
    if s.norm_x and s.input_gamma_init is not None:
        notes.append(f"{s.norm_x.upper()}_x γ0 = {s.input_gamma_init}")
    if s.input_stats == "sequence":
        notes.append("BN_x train-mode statistics over the whole sequence (B·T values)")
    if s.dropout:
        notes.append(f"D: dropout p = {s.dropout}, mask per {s.dropout_mode}, train mode only")
    notes.append(f"W_hh init {s.recurrent_init}, gain {s.gain}")
    if s.family == "lstm":
        notes.append(f"forget bias {s.forget_bias}")
    head = f"[{name}: {_CITATION[name]}] " if name else ""
    return "\n".join(lines) + "\n" + head + "; ".join(notes)


def _describe_lru(s: CellSpec, name: str | None) -> str:
    ring = f"ring init r_min = {s.r_min}, r_max = {s.r_max}, max_phase = {s.max_phase}"
    if s.lru_block:
        z = _n(s, "x", "e_t")
        lines = [
            f"x_t = λ ⊙ x_{{t-1}} + γ ⊙ (B z_t),  z_t = {z},  e_t = W_enc u_t + b_enc",
            "y_t = Re(C x_t) + D ⊙ z_t;  g_t = GELU(y_t);  o_t = e_t + (W_1 g_t + b_1) ⊙ σ(W_2 g_t + b_2)",
        ]
        notes = [f"{s.norm_x.upper()}_x γ0 = {gamma_of(s, 'x')}" if s.norm_x else "no normalization"]
    else:
        lines = ["x_t = λ ⊙ x_{t-1} + γ ⊙ (B u_t),  y_t = Re(C x_t) + D ⊙ u_t"]
        notes = []
    lines.append("λ = exp(−exp(ν) + i·exp(θ)), γ = exp(γ_log); state h_t = [Re x_t, Im x_t]")
    head = f"[{name}: {_CITATION[name]}] " if name else ""
    return "\n".join(lines) + "\n" + head + "; ".join([ring, "γ0 = sqrt(1 − |λ|²)"] + notes)


def gamma_of(spec: CellSpec, where: str) -> float:
    """Initial γ of the normalization at ``where``: ``input_gamma_init`` for "x" when set, else BN/LN's."""
    if where == "x" and spec.input_gamma_init is not None:
        return spec.input_gamma_init
    return spec.ln_gamma_init if getattr(spec, "norm_" + where) == "ln" else spec.bn_gamma_init


def recurrent_init(kind: str, gain: float, gates: int = 1):
    """W_hh initializer: per d×d gate block, "gaussian" N(0, gain²/d), "orthogonal" × gain, "identity" gain·I.

    Returns:
        ``init(key, shape, dtype)`` for shape (gates*d, d).
    """
    if kind not in RECURRENT_INITS:
        raise ValueError(f"unknown recurrent_init {kind!r}; choose from {RECURRENT_INITS}")

    def init(key, shape, dtype=jnp.float32):
        rows, d = shape
        blocks = []
        for k in jax.random.split(key, gates):
            if kind == "gaussian":
                blocks.append(jax.random.normal(k, (d, d), dtype) * (gain / math.sqrt(d)))
            elif kind == "orthogonal":
                blocks.append(nn.initializers.orthogonal(scale=gain)(k, (d, d), dtype))
            else:
                blocks.append(gain * jnp.eye(d, dtype=dtype))
        return jnp.concatenate(blocks, axis=0)

    return init


class GradflowCell(nn.Module):
    """Shared machinery of our cells (checks, normalization placement, dropout, carry)."""

    spec: CellSpec
    hidden_size: int
    input_size: int

    @property
    def gates(self) -> int:
        return _GATES[self.spec.family]

    @property
    def dtype(self):
        dt = jnp.dtype(self.spec.dtype)
        if jax.dtypes.canonicalize_dtype(dt) != dt:
            raise ValueError(
                f"dtype {self.spec.dtype!r} needs 64-bit JAX: run under `with jax.enable_x64(True):` "
                "(or jax.config.update('jax_enable_x64', True))"
            )
        return dt

    def initialize_carry(self, batch_size: int) -> dict[str, jax.Array]:
        """Zero state: ``{"h": (B, d), "t": (B,) int32}`` (plus ``"c": (B, d)`` for an LSTM)."""
        _check_positive_int("batch_size", batch_size)
        carry = {
            "h": jnp.zeros((batch_size, self.hidden_size), self.dtype),
            "t": jnp.zeros((batch_size,), jnp.int32),
        }
        if self.spec.family == "lstm":
            carry["c"] = jnp.zeros((batch_size, self.hidden_size), self.dtype)
        return carry

    def _check(self, carry, x) -> int:
        _check_positive_int("hidden_size", self.hidden_size)
        _check_positive_int("input_size", self.input_size)
        if not isinstance(carry, dict) or "h" not in carry or "t" not in carry:
            raise ValueError(
                f"carry must be a dict with keys 'h' and 't' (see initialize_carry), got {type(carry)}"
            )
        if self.spec.family == "lstm" and "c" not in carry:
            raise ValueError("an LSTM carry needs a 'c' entry (see initialize_carry)")
        x_shape = jnp.shape(x)
        if len(x_shape) != 2:
            raise ValueError(f"x_t must have shape (B, input_size={self.input_size}), got shape {x_shape}")
        if x_shape[1] != self.input_size:
            raise ValueError(
                f"input_size mismatch: the cell expects x_t of shape (B, {self.input_size}), got {x_shape}"
            )
        B = x_shape[0]
        for k in ("h", "c") if self.spec.family == "lstm" else ("h",):
            if jnp.shape(carry[k]) != (B, self.hidden_size):
                raise ValueError(
                    f"carry[{k!r}] must have shape (B={B}, hidden_size={self.hidden_size}) to match x_t "
                    f"{x_shape}, got {jnp.shape(carry[k])}"
                )
        if jnp.shape(carry["t"]) != (B,) or not jnp.issubdtype(jnp.result_type(carry["t"]), jnp.integer):
            raise ValueError(
                f"carry['t'] must be an int array of shape (B={B},), got {jnp.shape(carry['t'])}"
            )
        return B

    def _norm(self, where: str, z: jax.Array, t: jax.Array, train: bool) -> jax.Array:
        s = self.spec
        kind = getattr(s, "norm_" + where)
        if kind is None:
            return z
        feats = z.shape[-1]
        if kind == "bn":
            return BatchNorm(
                feats,
                per_step_stats=s.per_step_stats,
                t_max=s.t_max,
                gamma_init=gamma_of(s, where),
                use_bias=s.shift_of(where),
                momentum=s.bn_momentum,
                eps=s.bn_eps,
                param_dtype=self.dtype,
                name="bn_" + where,
            )(z, t, train, moments=self._sequence_moments(where, train))
        return LayerNorm(
            feats,
            gamma_init=gamma_of(s, where),
            use_bias=s.shift_of(where),
            eps=s.ln_eps,
            param_dtype=self.dtype,
            name="ln_" + where,
        )(z)

    def _sequence_moments(self, where: str, train: bool):
        """The sequence-wise (mean, var) of BN_x in train mode with ``input_stats="sequence"``, else None."""
        if where != "x" or self.spec.input_stats != "sequence" or not train:
            return None
        if not self.has_variable("sequence_stats", "mean") or not self.has_variable("sequence_stats", "var"):
            raise ValueError(
                "input_stats='sequence' in train mode needs the statistics of the whole input sequence: "
                "pass variables from gradflow.cells.with_sequence_stats(cell, variables, xs)"
            )
        return self.get_variable("sequence_stats", "mean"), self.get_variable("sequence_stats", "var")

    def _params(self):
        d, G, s = self.hidden_size, self.gates, self.spec
        W_hh = self.param("W_hh", recurrent_init(s.recurrent_init, s.gain, G), (G * d, d), self.dtype)
        xh_init = nn.initializers.lecun_normal(in_axis=-1, out_axis=-2)
        W_xh = self.param("W_xh", xh_init, (G * d, self.input_size), self.dtype)
        b = None
        if s.bias:

            def b_init(key, shape, dtype):
                b0 = jnp.zeros(shape, dtype)
                return b0.at[:d].set(s.forget_bias) if s.family == "lstm" else b0

            b = self.param("b", b_init, (G * d,), self.dtype)
        return W_hh, W_xh, b

    def _dropout(self, h: jax.Array, t: jax.Array, train: bool) -> jax.Array:
        p = self.spec.dropout
        if not train or p == 0.0:
            return h
        key = self.make_rng("dropout")
        idx = jnp.arange(h.shape[0])
        if self.spec.dropout_mode == "step":
            keys = jax.vmap(lambda tb, b: jax.random.fold_in(jax.random.fold_in(key, tb), b))(t, idx)
        else:
            keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(idx)
        keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - p, (h.shape[1],)))(keys)
        return jnp.where(keep, h / (1.0 - p), jnp.zeros((), h.dtype))


class RNNCell(GradflowCell):
    """Simple recurrence with optional normalizations.

    h_t = D(act(N_sum(N_h(W_hh h_{t-1}) + N_x(W_xh x_t)) + b)).

    N_h, N_x, N_sum are BN, LN or nothing (`CellSpec`); act is tanh, identity or relu; D is hidden dropout.
    Presets: tanh, linear, bn_notanh, bn_input_tanh, bn_tanh, ln_notanh, ln_tanh (`describe(name)`).

    Call: ``new_carry, h = cell.apply(variables, carry, x, train=bool, ...)``;
    carry ``{"h": (B, d), "t": (B,)}``, x (B, input_size).
    """

    @nn.compact
    def __call__(self, carry, x, train: bool = False):
        self._check(carry, x)
        s = self.spec
        h, t = carry["h"], carry["t"]
        W_hh, W_xh, b = self._params()
        a = self._norm("h", h @ W_hh.T, t, train) + self._norm("x", x @ W_xh.T, t, train)
        a = self._norm("sum", a, t, train)
        if b is not None:
            a = a + b
        h_new = self._dropout(ACTIVATIONS[s.activation](a), t, train)
        return {"h": h_new, "t": t + 1}, h_new


class LSTMCell(GradflowCell):
    """LSTM with optional normalizations (gate order f, i, o, g in blocks of d rows):

    (f̃, ĩ, õ, g̃) = N_sum(N_h(W_hh h_{t-1}) + N_x(W_xh x_t)) + b;
    c_t = σ(f̃) ⊙ c_{t-1} + σ(ĩ) ⊙ tanh(g̃);   h_t = D(σ(õ) ⊙ tanh(N_c(c_t))).

    Presets: lstm, bn_lstm (Cooijmans), ln_lstm (Ba). Carry ``{"h", "c": (B, d), "t": (B,)}``.
    """

    @nn.compact
    def __call__(self, carry, x, train: bool = False):
        self._check(carry, x)
        d = self.hidden_size
        h, c, t = carry["h"], carry["c"], carry["t"]
        W_hh, W_xh, b = self._params()
        a = self._norm("h", h @ W_hh.T, t, train) + self._norm("x", x @ W_xh.T, t, train)
        a = self._norm("sum", a, t, train)
        if b is not None:
            a = a + b
        f, i, o, g = (a[:, k * d : (k + 1) * d] for k in range(4))
        c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h_new = jax.nn.sigmoid(o) * jnp.tanh(self._norm("c", c_new, t, train))
        h_new = self._dropout(h_new, t, train)
        return {"h": h_new, "c": c_new, "t": t + 1}, h_new


class GRUCell(GradflowCell):
    """GRU with optional normalizations on the two products (gate order r, z, n in blocks of d rows):

    (r̃_x, z̃_x, ñ_x) = N_x(W_xh x_t) + b;  (r̃_h, z̃_h, ñ_h) = N_h(W_hh h_{t-1});
    r = σ(r̃_x + r̃_h);  z = σ(z̃_x + z̃_h);  n = tanh(ñ_x + r ⊙ ñ_h);  h_t = D((1 − z) ⊙ n + z ⊙ h_{t-1}).

    Preset: gru. Carry ``{"h": (B, d), "t": (B,)}``.
    """

    @nn.compact
    def __call__(self, carry, x, train: bool = False):
        self._check(carry, x)
        d = self.hidden_size
        h, t = carry["h"], carry["t"]
        W_hh, W_xh, b = self._params()
        ax = self._norm("x", x @ W_xh.T, t, train)
        if b is not None:
            ax = ax + b
        ah = self._norm("h", h @ W_hh.T, t, train)
        r = jax.nn.sigmoid(ax[:, :d] + ah[:, :d])
        z = jax.nn.sigmoid(ax[:, d : 2 * d] + ah[:, d : 2 * d])
        n = jnp.tanh(ax[:, 2 * d :] + r * ah[:, 2 * d :])
        h_new = self._dropout((1.0 - z) * n + z * h, t, train)
        return {"h": h_new, "t": t + 1}, h_new


def _lru_nu_log_init(r_min, r_max):
    def init(key, shape, dtype):
        u = jax.random.uniform(key, shape, dtype)
        r2 = u * (r_max**2 - r_min**2) + r_min**2  # |λ|² uniform over the ring's area
        r2 = jnp.clip(r2, jnp.finfo(dtype).tiny, 1.0 - jnp.finfo(dtype).eps)  # ν finite: 0 < |λ| < 1
        return jnp.log(-0.5 * jnp.log(r2))

    return init


def _lru_theta_log_init(max_phase):
    def init(key, shape, dtype):
        u = jax.random.uniform(key, shape, dtype, minval=jnp.finfo(dtype).tiny)  # θ > 0: log θ finite
        return jnp.log(max_phase * u)

    return init


def _normal_init(scale):
    return lambda key, shape, dtype: jax.random.normal(key, shape, dtype) * scale


class LRUCell(GradflowCell):
    """The Linear Recurrent Unit (Orvieto et al. 2023), alone or in its block.

    The complex state x_t ∈ C^N is kept as real numbers, ``carry["h"] = [Re x_t, Im x_t]`` of shape (B, 2N):
    ``hidden_size`` = 2N counts real numbers (it must be even), so every engine function sees an ordinary
    real state. λ_j = exp(−exp(ν_j) + i·exp(θ_j)) (|λ_j| < 1 for every parameter value), γ_j = exp(γ_log_j):

    - bare unit (``lru``): x_t = λ ⊙ x_{t−1} + γ ⊙ (B u_t),  output y_t = Re(C x_t) + D ⊙ u_t,
      u_t = the input (input_size = H); B (N, H), C (H, N), D (H,).
    - block (``lru_block``): e_t = W_enc u_t + b_enc (width H = N), z_t = N_x(e_t) (LN by default),
      x_t = λ ⊙ x_{t−1} + γ ⊙ (B z_t), y_t = Re(C x_t) + D ⊙ z_t, g_t = GELU(y_t) (tanh form),
      output o_t = e_t + (W_1 g_t + b_1) ⊙ σ(W_2 g_t + b_2)  (GLU, residual; Orvieto et al.'s block).

    The state Jacobian ∂x_t/∂x_{t−1} = diag(λ) exactly (the block's normalization and GLU act on the input
    and output paths only); in the real layout it is [[diag Re λ, −diag Im λ], [diag Im λ, diag Re λ]].

    Init (the paper's reference code): |λ|² uniform in [r_min², r_max²], arg λ uniform in [0, max_phase],
    γ = sqrt(1 − |λ|²), B_re, B_im ~ N(0, 1/(2H)), C_re, C_im ~ N(0, 1/N), D ~ N(0, 1). Parameter names
    nu_log, theta_log, gamma_log, B_re, B_im, C_re, C_im, D as there.

    Call: ``new_carry, out = cell.apply(variables, carry, u, train=bool)``, out = y_t (bare, (B, H)) or
    o_t (block, (B, N)). The readout of a trained model uses `readout_features` (the state for the bare
    unit, o_t for the block).
    """

    def setup(self):
        s, d = self.spec, self.hidden_size
        if d % 2:
            raise ValueError(f"an LRU's hidden_size (2 × N complex modes) must be even, got {d}")
        N, dt = d // 2, self.dtype
        H = N if s.lru_block else self.input_size
        self.nu_log = self.param("nu_log", _lru_nu_log_init(s.r_min, s.r_max), (N,), dt)
        self.theta_log = self.param("theta_log", _lru_theta_log_init(s.max_phase), (N,), dt)

        def gamma_log_init(key, shape, dtype):
            return 0.5 * jnp.log1p(-jnp.exp(-2.0 * jnp.exp(self.nu_log)))  # ln sqrt(1 − |λ|²)

        self.gamma_log = self.param("gamma_log", gamma_log_init, (N,), dt)
        for name, shape, scale in (("B_re", (N, H), (2 * H) ** -0.5), ("B_im", (N, H), (2 * H) ** -0.5),
                                   ("C_re", (H, N), N**-0.5), ("C_im", (H, N), N**-0.5), ("D", (H,), 1.0)):
            setattr(self, name, self.param(name, _normal_init(scale), shape, dt))
        if s.lru_block:
            lecun = nn.initializers.lecun_normal(in_axis=-1, out_axis=-2)
            self.W_enc = self.param("W_enc", lecun, (H, self.input_size), dt)
            self.b_enc = self.param("b_enc", nn.initializers.zeros, (H,), dt)
            for k in ("1", "2"):
                setattr(self, "W_" + k, self.param("W_" + k, lecun, (H, H), dt))
                setattr(self, "b_" + k, self.param("b_" + k, nn.initializers.zeros, (H,), dt))
            if s.norm_x == "bn":
                self.bn_x = BatchNorm(H, per_step_stats=s.per_step_stats, t_max=s.t_max,
                                      gamma_init=gamma_of(s, "x"), use_bias=s.shift_of("x"),
                                      momentum=s.bn_momentum, eps=s.bn_eps, param_dtype=dt)
            elif s.norm_x == "ln":
                self.ln_x = LayerNorm(H, gamma_init=gamma_of(s, "x"), use_bias=s.shift_of("x"),
                                      eps=s.ln_eps, param_dtype=dt)

    def eigenvalues(self):
        """(Re λ, Im λ), each (N,)."""
        r, th = jnp.exp(-jnp.exp(self.nu_log)), jnp.exp(self.theta_log)
        return r * jnp.cos(th), r * jnp.sin(th)

    def _lru_input(self, u, t, train):
        """(drive z of the recurrence, residual e): u itself for the bare unit."""
        if not self.spec.lru_block:
            return u, None
        e = u @ self.W_enc.T + self.b_enc
        if self.spec.norm_x == "bn":
            z = self.bn_x(e, t, train, moments=self._sequence_moments("x", train))
        elif self.spec.norm_x == "ln":
            z = self.ln_x(e)
        else:
            z = e
        return z, e

    def _output(self, h, z, e):
        N = self.hidden_size // 2
        y = h[:, :N] @ self.C_re.T - h[:, N:] @ self.C_im.T + self.D * z
        if e is None:
            return y
        g = jax.nn.gelu(y, approximate=True)
        return e + (g @ self.W_1.T + self.b_1) * jax.nn.sigmoid(g @ self.W_2.T + self.b_2)

    def __call__(self, carry, x, train: bool = False):
        self._check(carry, x)
        N = self.hidden_size // 2
        h, t = carry["h"], carry["t"]
        z, e = self._lru_input(x, t, train)
        lr, li = self.eigenvalues()
        gam = jnp.exp(self.gamma_log)
        bu_re, bu_im = gam * (z @ self.B_re.T), gam * (z @ self.B_im.T)
        re, im = h[:, :N], h[:, N:]
        h_new = jnp.concatenate([lr * re - li * im + bu_re, li * re + lr * im + bu_im], axis=-1)
        return {"h": h_new, "t": t + 1}, self._output(h_new, z, e)

    def features(self, h, x, t, train: bool = False):
        """The output at a step from the state h_t (B, 2N), input u_t (B, input_size), t (B,); no update."""
        z, e = self._lru_input(x, t, train)
        return self._output(h, z, e)


_CLASSES = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell, "lru": LRUCell}


def _check_positive_int(name: str, v: Any) -> None:
    positive_int(name, v)


def _preset(name: str) -> CellSpec:
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"unknown cell name {name!r}; known cells: {', '.join(CELLS)}")
    return PRESETS[name]


def make_cell(name: str | CellSpec, hidden_size: int, input_size: int, **options) -> GradflowCell:
    """Build a cell from a preset name (or a `CellSpec`), overriding spec fields with ``options``.

    Args:
        name: one of `CELLS`, or a `CellSpec` for a custom placement.
        hidden_size: d > 0.
        input_size: > 0.
        **options: `CellSpec` fields (gain, recurrent_init, bn_gamma_init, per_step_stats, t_max,
            dropout, ...).

    Returns:
        A linen module (`RNNCell`, `LSTMCell` or `GRUCell`).

    Raises:
        ValueError: unknown name or option, non-positive sizes, invalid or non-finite option values.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cell = make_cell("bn_notanh", 4, 2, gain=0.9)
        >>> variables = init_cell(cell, jax.random.key(0), batch_size=3)
        >>> carry, h = cell.apply(variables, cell.initialize_carry(3), jnp.ones((3, 2)))
        >>> h.shape
        (3, 4)
    """
    spec = name if isinstance(name, CellSpec) else _preset(name)
    _check_positive_int("hidden_size", hidden_size)
    _check_positive_int("input_size", input_size)
    fields = {f.name for f in dataclasses.fields(CellSpec)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"unknown cell option(s) {unknown}; CellSpec fields are {sorted(fields)}")
    spec = dataclasses.replace(spec, **options)
    if spec.family == "lru" and hidden_size % 2:
        raise ValueError(
            f"an LRU's hidden_size counts real numbers (2 × N complex modes): must be even, got {hidden_size}"
        )
    return _CLASSES[spec.family](spec=spec, hidden_size=int(hidden_size), input_size=int(input_size))


def init_cell(cell: GradflowCell, key: jax.Array, batch_size: int = 1) -> dict:
    """Initialise a cell's variables.

    Args:
        cell: one of our cells (`make_cell`).
        key: PRNG key.
        batch_size: > 0; kept for API symmetry, the variables do not depend on it.

    Returns:
        ``{"params": ..., "batch_stats": ...}`` (``batch_stats`` only when the cell has BN; running means 0,
        variances 1).
    """
    if not isinstance(cell, GradflowCell):
        raise ValueError(f"init_cell expects a gradflow cell (make_cell), got {type(cell).__name__}")
    _check_positive_int("batch_size", batch_size)
    cell.dtype  # noqa: B018 (raises for float64 without x64, before tracing)
    # the variables do not depend on the batch size: one compiled init per cell configuration
    key_ = ("init_cell", type(cell), cell.spec, cell.hidden_size, cell.input_size)
    init = cache.cached(key_, lambda: _jitted_init(type(cell), cell.spec, cell.hidden_size, cell.input_size))
    return init(key)


def _jitted_init(cls, spec, hidden_size, input_size):
    """One compiled init per cell configuration (eager init compiles every initializer op separately)."""
    cell = cls(spec=spec, hidden_size=hidden_size, input_size=input_size)

    def init(key):
        carry = cell.initialize_carry(1)
        x = jnp.zeros((1, input_size), cell.dtype)
        variables = cell.init({"params": key}, carry, x, train=False)
        return {k: v for k, v in dict(variables).items() if k in ("params", "batch_stats")}

    return jax.jit(init)


def with_sequence_stats(cell: GradflowCell, variables: dict, xs: jax.Array) -> dict:
    """Variables with the sequence-wise statistics of BN_x (``input_stats="sequence"``, Laurent et al. 2016).

    The input path does not depend on the recurrence, so its pre-normalization values z_t = W_xh x_t (the
    block's e_t for ``lru_block``) over the whole sequence are known before the scan: one mean and one
    (biased) variance per feature over all B·T values. The step then normalizes z_t with these instead of
    the batch's statistics at step t (train mode only; eval mode uses the running averages as always). They
    travel in the ``"sequence_stats"`` collection, so `as_step` and every engine function work unchanged
    and the state Jacobian for a given forward pass is the same function of the statistics as before.
    Under ``jax.grad`` the statistics are differentiated through (they are a function of W_xh and xs).

    Args:
        cell: a cell with ``input_stats="sequence"``.
        variables: its variables.
        xs: (T, B, input_size), the sequence the step will see.

    Returns:
        ``{**variables, "sequence_stats": {"mean": (F,), "var": (F,)}}``.
    """
    if not isinstance(cell, GradflowCell) or cell.spec.input_stats != "sequence":
        raise ValueError("with_sequence_stats needs a gradflow cell with input_stats='sequence'")
    xs = jnp.asarray(xs)
    if xs.ndim != 3 or xs.shape[-1] != cell.input_size:
        raise ValueError(f"xs must have shape (T, B, input_size={cell.input_size}), got {xs.shape}")
    P = variables["params"]
    if cell.spec.family == "lru":
        z = xs @ P["W_enc"].T + P["b_enc"]
    else:
        z = xs @ P["W_xh"].T
    mean, var = batch_moments(z.reshape(-1, z.shape[-1]))
    return {**variables, "sequence_stats": {"mean": mean, "var": var}}


def feature_size(cell: GradflowCell) -> int:
    """Width of `readout_features`: the LRU block's width N = hidden_size/2, else hidden_size."""
    return cell.hidden_size // 2 if cell.spec.lru_block else cell.hidden_size


def readout_features(cell: GradflowCell, variables: dict, hs: jax.Array, xs: jax.Array, *, t0: int = 0,
                     train: bool = False) -> jax.Array:
    """What a readout reads at each step: the state h_t, or the LRU block's output o_t (from h_t and u_t).

    Args:
        cell: one of our cells.
        variables: its variables.
        hs: (T, B, hidden_size) states h_{t0+1}.. (as returned by a scan).
        xs: (T, B, input_size) the inputs of those steps.
        t0: the step counter before the first of them.
        train: train mode (the block's BN uses the batch's statistics; nothing is updated).

    Returns:
        ``hs`` itself, or (T, B, `feature_size`) block outputs.
    """
    if not cell.spec.lru_block:
        return hs
    T, B = hs.shape[:2]
    ts = jnp.broadcast_to((t0 + jnp.arange(T, dtype=jnp.int32))[:, None], (T, B))
    f = lambda h, x, t: cell.apply(variables, h, x, t, train, method=LRUCell.features)  # noqa: E731
    return jax.vmap(f)(hs, xs, ts)
