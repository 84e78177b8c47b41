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

import flax.linen as nn
import jax
import jax.numpy as jnp

from gradflow import cache, families, stable
from gradflow.checks import positive_int, prng_key
from gradflow.norm import BatchNorm, LayerNorm, batch_moments
from gradflow.specs import (  # noqa: F401  (re-exported: gradflow.cells.CellSpec, ...)
    ACTIVATIONS,
    CELLS,
    DROPOUT_MAX,
    DROPOUT_MODES,
    FAMILIES,
    GATES,
    INPUT_STATS,
    NORMS,
    PRESETS,
    RECURRENT_INITS,
    CellSpec,
    describe,
    gamma_of,
    preset_spec,
)

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
        return GATES[self.spec.family]

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
        positive_int("batch_size", batch_size)
        carry = {
            "h": jnp.zeros((batch_size, self.hidden_size), self.dtype),
            "t": jnp.zeros((batch_size,), jnp.int32),
        }
        if self.spec.family == "lstm":
            carry["c"] = jnp.zeros((batch_size, self.hidden_size), self.dtype)
        return carry

    def _check(self, carry, x) -> int:
        positive_int("hidden_size", self.hidden_size)
        positive_int("input_size", self.input_size)
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
        c_new = stable.sigmoid(f) * c + stable.sigmoid(i) * stable.tanh(g)
        h_new = stable.sigmoid(o) * stable.tanh(self._norm("c", c_new, t, train))
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
        r = stable.sigmoid(ax[:, :d] + ah[:, :d])
        z = stable.sigmoid(ax[:, d : 2 * d] + ah[:, d : 2 * d])
        n = stable.tanh(ax[:, 2 * d :] + r * ah[:, 2 * d :])
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
        return e + (g @ self.W_1.T + self.b_1) * stable.sigmoid(g @ self.W_2.T + self.b_2)

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


def make_cell(name: str | CellSpec, hidden_size: int, input_size: int, **options) -> GradflowCell:
    """Build a cell from a preset name (or a `CellSpec`), overriding spec fields with ``options``.

    Args:
        name: one of `CELLS` (a preset or a registry family, `gradflow.families`), a `CellSpec` for a
            custom placement, or a family's options object.
        hidden_size: d > 0.
        input_size: > 0.
        **options: `CellSpec` fields (gain, recurrent_init, bn_gamma_init, per_step_stats, t_max,
            dropout, ...), or a registry family's options.

    Returns:
        A linen module (`RNNCell`, `LSTMCell`, `GRUCell`, `LRUCell` or the family's cell).

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
    if families.is_family(name):  # a registry family: its module builds it (gradflow.families)
        return families.make(name, hidden_size, input_size, **options)
    spec = name if isinstance(name, CellSpec) else preset_spec(name)
    positive_int("hidden_size", hidden_size)
    positive_int("input_size", input_size)
    fields = {f.name for f in dataclasses.fields(CellSpec)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"unknown cell option(s) {unknown}; CellSpec fields are {sorted(fields)}")
    spec = dataclasses.replace(spec, **options)
    if spec.gain > float(jnp.finfo(spec.dtype).max):
        raise ValueError(f"gain {spec.gain:g} exceeds {spec.dtype}'s range (max "
                         f"{jnp.finfo(spec.dtype).max:.3g}): W_hh's init (gain · I, or gain times a "
                         "unit-scale matrix) would be inf")
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
    positive_int("batch_size", batch_size)
    key = prng_key("key", key, required=True)
    cell.dtype  # noqa: B018 (raises for float64 without x64, before tracing)
    # the variables do not depend on the batch size: one compiled init per cell configuration
    return cache.cached(("init_cell", cell), lambda: _jitted_init(cell))(key)


def _jitted_init(cell: GradflowCell):
    """One compiled init per cell configuration (eager init compiles every initializer op separately)."""
    input_size = cell.input_size

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
