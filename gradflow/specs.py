"""Cell specifications: the composable `CellSpec`, the named presets and their equations (no Flax here).

``gradflow.cells`` builds Flax modules from these; ``gradflow.theory`` reads the presets' defaults (γ inits,
activation) from them without importing any cell. The presets' equations are in ``gradflow.cells``'s
docstring and docs/cells.md.

Example:
    >>> from gradflow.specs import PRESETS, describe
    >>> PRESETS["bn_notanh"].activation, PRESETS["bn_notanh"].bias
    ('identity', False)
    >>> print(describe("tanh").splitlines()[0])
    h_t = tanh(W_hh h_{t-1} + W_xh x_t + b)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax

from gradflow import families, stable
from gradflow.checks import is_int, is_real

__all__ = ["CellSpec", "PRESETS", "CELLS", "describe", "gamma_of", "preset_spec"]

FAMILIES = ("rnn", "lstm", "gru", "lru")
NORMS = (None, "bn", "ln")
#: tanh: `gradflow.stable.tanh` (jnp.tanh's values; a derivative not rounded to 0 for |a| > 9 in float32)
ACTIVATIONS = {"tanh": stable.tanh, "identity": lambda a: a, "relu": jax.nn.relu}
RECURRENT_INITS = ("gaussian", "orthogonal", "identity")
DROPOUT_MODES = ("step", "sequence")
#: Largest hidden dropout rate. The mask keeps a unit when a float32 uniform (a grid of spacing 2**-23) falls
#: below 1 - p, so the realized keep probability is 1 - p rounded up to that grid and the mean of the rescaled
#: mask D(1) is 1 only to within 2**-23 / (1 - p) (its expectation is 2**-23 / 1e-7 = 1.19 at p = 1 - 1e-7).
#: With 1 - p >= 2**-10 that error stays below 2**-13 (1.2e-4) per step.
DROPOUT_MAX = 1.0 - 2.0**-10
GATES = {"rnn": 1, "lstm": 4, "gru": 3, "lru": 1}
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
        for check in (self._structure_problems, self._number_problems, self._input_problems,
                      self._lru_problems):
            for field, why in check():
                raise ValueError(f"CellSpec.{field}: {why} (got {getattr(self, field)!r})")

    def _structure_problems(self):
        """(field, why) for the family, normalizations, activation, bias, dropout and init choices."""
        choices = [("family", FAMILIES), ("norm_x", NORMS), ("norm_h", NORMS), ("norm_sum", NORMS),
                   ("norm_c", NORMS), ("activation", tuple(ACTIVATIONS))]
        out = [(f, f"must be one of {c}") for f, c in choices if getattr(self, f) not in c]
        if self.norm_c is not None and self.family != "lstm":
            out.append(("norm_c", "only an LSTM has a cell state c_t to normalize"))
        if self.norm_sum is not None and self.family == "gru":
            out.append(("norm_sum", "a GRU has no single sum of products to normalize"))
        if self.family != "rnn" and self.activation != "tanh":
            out.append(("activation",
                        f"the {self.family} nonlinearities are fixed; activation must stay 'tanh'"))
        out += [(f, "must be a bool") for f in ("bias",) if not isinstance(self.bias, bool)]
        why = _dropout_problem(self.dropout)
        out += [("dropout", why)] if why else []
        for f, c in (("dropout_mode", DROPOUT_MODES), ("recurrent_init", RECURRENT_INITS)):
            if getattr(self, f) not in c:
                out.append((f, f"must be one of {c}"))
        return out

    def _number_problems(self):
        """(field, why) for the numeric fields."""
        out = []
        for f in ("gain", "bn_gamma_init", "ln_gamma_init", "bn_momentum", "forget_bias"):
            v = getattr(self, f)
            if not is_real(v) or not math.isfinite(v):
                out.append((f, "must be a finite number"))
        if is_real(self.gain) and math.isfinite(self.gain) and self.gain <= 0:
            out.append(("gain", "must be > 0 (the scale of W_hh's init; a negative one only flips its sign)"))
        if is_real(self.bn_momentum) and not 0.0 <= self.bn_momentum < 1.0:
            out.append(("bn_momentum", "must lie in [0, 1)"))
        for f in ("bn_eps", "ln_eps"):
            v = getattr(self, f)
            if not is_real(v) or not math.isfinite(v) or v <= 0:
                out.append((f, "must be a finite number > 0"))
        if not isinstance(self.per_step_stats, bool):
            out.append(("per_step_stats", "must be a bool"))
        if not is_int(self.t_max) or self.t_max < 1:
            out.append(("t_max", "must be a positive int"))
        if self.dtype not in ("float32", "float64"):
            out.append(("dtype", "must be 'float32' or 'float64'"))
        return out

    def _input_problems(self):
        """(field, why) for the input path's options."""
        out = []
        g = self.input_gamma_init
        if g is not None and (not is_real(g) or not math.isfinite(g)):
            out.append(("input_gamma_init", "must be None or a finite number"))
        if self.input_stats not in INPUT_STATS:
            out.append(("input_stats", f"must be one of {INPUT_STATS}"))
        if self.input_stats == "sequence" and self.norm_x != "bn":
            out.append(("input_stats", "sequence statistics are for a BN on the input path (norm_x='bn')"))
        return out

    def _lru_problems(self):
        """(field, why) for the LRU's options."""
        out = []
        for f in ("r_min", "r_max", "max_phase"):
            v = getattr(self, f)
            if not is_real(v) or not math.isfinite(v):
                return [(f, "must be a finite number")]
        if not 0.0 <= self.r_min < self.r_max <= 1.0:
            out.append(("r_min", f"the LRU ring needs 0 <= r_min < r_max <= 1 (r_max={self.r_max!r})"))
        if self.max_phase <= 0:
            out.append(("max_phase", "must be > 0"))
        if not isinstance(self.lru_block, bool):
            out.append(("lru_block", "must be a bool"))
        if self.lru_block and self.family != "lru":
            out.append(("lru_block", "is an option of family 'lru'"))
        if self.family != "lru":
            return out
        out += [(f, "an LRU has no normalization inside its linear recurrence")
                for f in ("norm_h", "norm_sum") if getattr(self, f) is not None]
        if self.norm_x is not None and not self.lru_block:
            out.append(("norm_x",
                        "the bare LRU has no input normalization (it belongs to the block: lru_block)"))
        if self.dropout:
            out.append(("dropout", "not supported for family 'lru'"))
        return out

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
#: Every cell name: the presets, then the registry families (`gradflow.families.NAMES`).
CELLS: tuple[str, ...] = tuple(PRESETS) + families.NAMES

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
    """The equation of a preset name or a `CellSpec`, with its shifts, γ inits and dropout, as text.

    It returns the text and prints nothing: ``print(describe(name))`` to read it.

    Args:
        spec: a name in `CELLS` or a `CellSpec`.

    Returns:
        The equation lines and a line of notes (str).

    Raises:
        ValueError: an unknown name, or neither a name nor a `CellSpec`.

    Example:
        >>> print(describe("bn_notanh").splitlines()[0])
        h_t = BN_h(W_hh h_{t-1}) + BN_x(W_xh x_t)
    """
    if families.is_family(spec):
        return families.describe(spec)
    name = None
    if isinstance(spec, str):
        name = spec
        spec = preset_spec(spec)
    if not isinstance(spec, CellSpec):
        raise ValueError(f"describe expects a cell name (one of {', '.join(CELLS)}) or a CellSpec, got "
                         f"{type(spec).__name__} {spec!r}")
    if spec.family == "lru":
        return _describe_lru(spec, name)
    head = f"[{name}: {_CITATION[name]}] " if name else ""
    return "\n".join(_equation_lines(spec)) + "\n" + head + "; ".join(_notes(spec))


def _equation_lines(s: CellSpec) -> list[str]:
    """The update equations of a vanilla/LSTM/GRU spec (one string per line)."""
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
    return lines


def _notes(s: CellSpec) -> list[str]:
    """The notes line of a vanilla/LSTM/GRU spec: shifts, γ inits, statistics, dropout, init."""
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
    return notes


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


def preset_spec(name: str) -> CellSpec:
    """The `CellSpec` of a preset name (ValueError naming the known ones otherwise)."""
    if isinstance(name, str) and name in families.NAMES:
        raise ValueError(f"{name!r} is a registry family (gradflow.families.{name}), not a CellSpec preset")
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"unknown cell name {name!r}; known cells: {', '.join(CELLS)}")
    return PRESETS[name]
