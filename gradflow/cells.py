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

Shift rule: when ``bias`` is on, the bias vector b is the only shift and the summed normalizations have β = 0
(Cooijmans' β_h = β_x = 0); when it is off, exactly one summed normalization carries a learnable β —
the one after the sum if there is one, else the input one, else the recurrent one.
BN_c / LN_c always has its own β.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gradflow.checks import is_int, is_real, positive_int
from gradflow.norm import BatchNorm, LayerNorm

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
]

FAMILIES = ("rnn", "lstm", "gru")
NORMS = (None, "bn", "ln")
ACTIVATIONS = {"tanh": jnp.tanh, "identity": lambda a: a, "relu": jax.nn.relu}
RECURRENT_INITS = ("gaussian", "orthogonal", "identity")
DROPOUT_MODES = ("step", "sequence")
#: Largest hidden dropout rate. The mask keeps a unit when a float32 uniform (a grid of spacing 2**-23) falls
#: below 1 - p, so the realized keep probability is 1 - p rounded up to that grid and the mean of the rescaled
#: mask D(1) is 1 only to within 2**-23 / (1 - p) (its expectation is 2**-23 / 1e-7 = 1.19 at p = 1 - 1e-7).
#: With 1 - p >= 2**-10 that error stays below 2**-13 (1.2e-4) per step.
DROPOUT_MAX = 1.0 - 2.0**-10
_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


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
    if s.dropout:
        notes.append(f"D: dropout p = {s.dropout}, mask per {s.dropout_mode}, train mode only")
    notes.append(f"W_hh init {s.recurrent_init}, gain {s.gain}")
    if s.family == "lstm":
        notes.append(f"forget bias {s.forget_bias}")
    head = f"[{name}: {_CITATION[name]}] " if name else ""
    return "\n".join(lines) + "\n" + head + "; ".join(notes)


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
                gamma_init=s.bn_gamma_init,
                use_bias=s.shift_of(where),
                momentum=s.bn_momentum,
                eps=s.bn_eps,
                param_dtype=self.dtype,
                name="bn_" + where,
            )(z, t, train)
        return LayerNorm(
            feats,
            gamma_init=s.ln_gamma_init,
            use_bias=s.shift_of(where),
            eps=s.ln_eps,
            param_dtype=self.dtype,
            name="ln_" + where,
        )(z)

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


_CLASSES = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}


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
    return _jitted_init(type(cell), cell.spec, cell.hidden_size, cell.input_size)(key)


@functools.lru_cache(maxsize=256)
def _jitted_init(cls, spec, hidden_size, input_size):
    """One compiled init per cell configuration (eager init compiles every initializer op separately)."""
    cell = cls(spec=spec, hidden_size=hidden_size, input_size=input_size)

    def init(key):
        carry = cell.initialize_carry(1)
        x = jnp.zeros((1, input_size), cell.dtype)
        variables = cell.init({"params": key}, carry, x, train=False)
        return {k: v for k, v in dict(variables).items() if k in ("params", "batch_stats")}

    return jax.jit(init)
