"""Compiled measurements of a cell: one compile cache for analyses, training, the theory harness, benchmarks.

A measurement takes the cell and a few settings as *static* arguments (the cell is a hashable Flax module)
and the variables, inputs and keys as *traced* arguments, so sweeping gains, seeds or trained parameters
reuses one compilation; every compilation goes through the one cache of ``gradflow.cache``.

- :func:`lag_norms`: ‖∂h_T/∂h_t‖ (spectral and Frobenius) for every lag (the engine's one reverse pass).
- :func:`lag_singular_values`: exact ∂h_T/∂h_t at chosen lags, singular values by float64 SVD.
- :func:`forward_lognorms`: ln‖∂h_T/∂h_0‖ for every T of one sequence (forward product, log-renormalized).
- :func:`lyapunov`: top-k Lyapunov exponents (``gradflow.lyapunov_spectrum``).
- :func:`burn`, :func:`init_variables`, :func:`collect_batch_stats`: the runs around them.
- :func:`top_exponent`: an engine-independent top exponent (one jvp tangent); :func:`theory_vs_measurement`
  holds it against ``gradflow.theory.predict_rate`` for a preset over a list of configurations.

Example:
    >>> import jax, gradflow as gf
    >>> from gradflow import measure
    >>> cell = measure.cell_for("tanh", 8, 2)
    >>> v = measure.init_variables(cell, 4, jax.random.key(0))
    >>> xs = jax.random.normal(jax.random.key(1), (20, 4, 2))
    >>> r = measure.lag_norms(cell, v, cell.initialize_carry(4), xs, train=False)
    >>> r["lags"][:3], r["spectral"].shape
    (array([1, 2, 3]), (20,))
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from gradflow import theory
from gradflow.cache import cached, compiled
from gradflow.cells import init_cell, make_cell
from gradflow.checks import nonneg_int, positive_int, prng_key
from gradflow.jacobians import jacobian_norms, jacobians
from gradflow.lyapunov import lyapunov_spectrum
from gradflow.statemap import StateMap, check_carry_and_inputs
from gradflow.step import as_step

# ---------------------------------------------------------------------------------------------- cells


def options_key(options: dict | None) -> tuple:
    """A hashable, order-independent form of a dict of cell options."""
    return tuple(sorted((options or {}).items()))


def cell_for(preset, d: int, input_size: int, **options):
    """The (cached) cell ``gradflow.make_cell(preset, d, input_size, **options)``."""
    key = ("cell", preset, int(d), int(input_size), options_key(options))
    return cached(key, lambda: make_cell(preset, int(d), int(input_size), **options))


def needs_key(cell, train: bool) -> bool:
    """Whether the cell's step needs a dropout key in this mode (train mode with hidden dropout)."""
    return bool(train and getattr(cell.spec, "dropout", 0.0) > 0)


def cell_step(cell, train: bool, variables, key):
    """``gradflow.as_step`` of the cell, given the dropout ``key`` only where the step uses one."""
    return as_step(cell, variables, train=train, key=key if needs_key(cell, train) else None)


def with_scales(variables: dict, *, w_hh_factor=None, scales: dict | None = None) -> dict:
    """``variables`` with W_hh multiplied by ``w_hh_factor`` and the ``scale`` (γ) of each named normalization
    submodule set to a constant (``{"bn_h": 0.1, "bn_x": 1.0}``); traceable: the values may be tracers."""
    params = dict(variables["params"])
    if w_hh_factor is not None:
        params["W_hh"] = params["W_hh"] * w_hh_factor
    for name, gamma in (scales or {}).items():
        params[name] = {**params[name], "scale": jnp.full_like(params[name]["scale"], gamma)}
    return {**variables, "params": params}


def _init_core(cell, batch, key):
    return init_cell(cell, key, batch_size=batch)


def init_variables(cell, batch: int, key) -> dict:
    """``gradflow.init_cell(cell, key, batch_size=batch)``, compiled once per (cell, batch)."""
    return compiled(_init_core, cell, positive_int("batch", batch))(key)


def final_carry(cell, train: bool, variables, carry0, xs, key):
    """The carry after running ``xs`` (T, B, input_size) from ``carry0`` (traceable)."""
    step = cell_step(cell, train, variables, key)
    return jax.lax.scan(lambda c, x: (step(c, x), None), carry0, xs)[0]


def burn(cell, train: bool, variables, carry0, xs, key):
    """The carry after running ``xs`` (T, B, input_size) from ``carry0``; compiled once per (cell, mode)."""
    return compiled(final_carry, cell, bool(train))(variables, carry0, xs, key)


def _default_key(key):
    return jax.random.key(0) if key is None else key


def _wrt_key(wrt: dict | None):
    return None if wrt is None else tuple(sorted(wrt.items()))


# ---------------------------------------------------------------------------------------------- lags


def _norms_core(cell, train, wrt_key, variables, carry0, xs, key):
    wrt = None if wrt_key is None else dict(wrt_key)
    r = jacobian_norms(cell_step(cell, train, variables, key), carry0, xs, wrt=wrt)
    return r.spectral_norms, r.frobenius_norms


def lag_norms(cell, variables, carry0, xs, key=None, train: bool = True, wrt: dict | None = None) -> dict:
    """‖∂h_T/∂h_t‖ for every t (lag T − t), exactly, without storing the Jacobians.

    Args:
        cell: one of our cells; variables: its variables; carry0: its carry; xs: (T, B, input_size).
        key: the dropout key (cells with dropout in train mode).
        train: batch statistics and dropout on (True) or running averages (False).
        wrt: optional state selection (``{"h": True, "c": False, "t": False}``); default the whole state.

    Returns:
        dict: ``lags`` (T,) 1..T ascending, ``spectral`` (T,), ``frobenius`` (T,) (numpy, float64).

    Raises:
        ValueError: NaN or inf in ``carry0`` or ``xs``, or float64 values beyond float32's range without x64
            (checked here, on the concrete values, as in every measurement of this module taking them).
    """
    check_carry_and_inputs(carry0, xs)  # the compiled engine sees tracers: check the concrete values here
    f = compiled(_norms_core, cell, bool(train), _wrt_key(wrt))
    s, fr = f(variables, carry0, xs, _default_key(key))
    T = xs.shape[0]
    # engine order: index t = 0..T-1 has lag T - t; flip to ascending lag.
    return {"lags": np.arange(1, T + 1), "spectral": np.asarray(s, np.float64)[::-1].copy(),
            "frobenius": np.asarray(fr, np.float64)[::-1].copy()}


def _matrices_core(cell, train, idx, wrt_key, variables, carry0, xs, key):
    wrt = None if wrt_key is None else dict(wrt_key)
    r = jacobians(cell_step(cell, train, variables, key), carry0, xs, wrt=wrt, spectral=None)
    return r.frobenius_norms, r.matrices[np.asarray(idx, np.int32)]


def lag_singular_values(cell, variables, carry0, xs, key=None, train: bool = True, lags=(1, 10, 100),
                        wrt: dict | None = None) -> dict:
    """Exact ∂h_T/∂h_t at chosen lags (singular values, float64 SVD) and the Frobenius norm at every lag.

    Args:
        cell, variables, carry0, xs, key, train, wrt: as in :func:`lag_norms`.
        lags: lags (1 ≤ lag ≤ T) at which to take the full singular-value spectrum.

    Returns:
        dict: ``lags`` (T,) 1..T, ``frobenius`` (T,) by ascending lag, ``sv_lags`` (K,), ``sv`` (K, n)
        singular values in descending order, ``spectral`` (K,) = ``sv[:, 0]``.
    """
    T = int(xs.shape[0])
    lags = tuple(int(v) for v in lags)
    if any(v < 1 or v > T for v in lags):
        raise ValueError(f"lags must lie in [1, T={T}], got {lags}")
    check_carry_and_inputs(carry0, xs)
    f = compiled(_matrices_core, cell, bool(train), tuple(T - v for v in lags), _wrt_key(wrt))
    fro, mats = f(variables, carry0, xs, _default_key(key))
    sv = np.stack([np.linalg.svd(m, compute_uv=False) for m in np.asarray(mats, np.float64)])
    return {"lags": np.arange(1, T + 1), "frobenius": np.asarray(fro, np.float64)[::-1].copy(),
            "sv_lags": np.asarray(lags), "sv": sv, "spectral": sv[:, 0].copy()}


# ------------------------------------------------------------------------------------------- forward product


def _log_state_norm(h):
    """ln of the RMS over the batch of ‖h‖₂, scaled so that it cannot overflow."""
    m = jnp.maximum(jnp.max(jnp.abs(h)), jnp.finfo(h.dtype).tiny)
    return jnp.log(m) + 0.5 * jnp.log(jnp.maximum(jnp.mean(jnp.sum(jnp.square(h / m), axis=-1)),
                                                  jnp.finfo(h.dtype).tiny))


def forward_core(cell, train: bool, checkpoints: tuple, variables, carry0, xs, key):
    """The traceable part of :func:`forward_lognorms`: (log_fro (T,), log_state (T,), Q at the checkpoints
    (K, n, n), each with ‖Q‖_F = 1: ln‖∂h_T/∂h_0‖₂ = ln σ_max(Q_k) + log_fro[T_k − 1])."""
    step = cell_step(cell, train, variables, key)
    smap = StateMap.from_carry(carry0)
    n = smap.n
    cks = jnp.asarray(np.asarray(checkpoints, np.int32))

    def body(c, inp):
        carry, Q, logscale, buf = c
        x, t = inp
        new_v, pushfwd = jax.linearize(lambda v: smap.flatten(step(smap.unflatten(v, carry), x)),
                                       smap.flatten(carry))
        Q = jax.vmap(pushfwd, in_axes=1, out_axes=1)(Q)
        s = jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(Q))), jnp.finfo(Q.dtype).tiny)
        Q = Q / s
        logscale = logscale + jnp.log(s)
        buf = jnp.where((cks == (t + 1))[:, None, None], Q[None], buf)
        new_carry = step(carry, x)
        return (new_carry, Q, logscale, buf), (logscale, _log_state_norm(new_carry["h"]))

    init = (carry0, jnp.eye(n, dtype=xs.dtype), jnp.zeros((), xs.dtype),
            jnp.zeros((len(checkpoints), n, n), xs.dtype))
    (_, _, _, buf), (logfro, hnorm) = jax.lax.scan(body, init, (xs, jnp.arange(xs.shape[0])))
    return logfro, hnorm, buf


def forward_lognorms(cell, variables, carry0, xs, key=None, train: bool = True,
                     checkpoints: tuple | list | None = None) -> dict:
    """ln‖∂h_T/∂h_0‖ for every prefix length T of one sequence (forward product, log-scale renormalized).

    M_T = J_T ⋯ J_1 is propagated as Q_T · exp(s_T) with ‖Q_T‖_F = 1, so ln‖M_T‖_F = s_T is exact in log space
    for any T; the spectral norm is ln σ_max(Q_T) + s_T at the ``checkpoints``. Cost: T · n Jacobian-vector
    products, memory O(n²·len(checkpoints)).

    Args:
        cell, variables, carry0, xs, key, train: as in :func:`lag_norms`.
        checkpoints: lengths T (1 ≤ T ≤ len(xs)) at which to take the spectral norm.

    Returns:
        dict: ``T`` (len(xs),) 1..len(xs), ``log_fro`` (len(xs),) ln‖∂h_T/∂h_0‖_F, ``checkpoints`` (K,),
        ``log_spec`` (K,) ln‖∂h_T/∂h_0‖₂ at the checkpoints, ``log_state`` (len(xs),) ln of the root mean
        square over the batch of ‖h_T‖₂ (the forward state norm).
    """
    n_steps = xs.shape[0]
    checkpoints = tuple(int(c) for c in (checkpoints or (n_steps,)))
    if any(c < 1 or c > n_steps for c in checkpoints):
        raise ValueError(f"checkpoints must lie in [1, {n_steps}], got {checkpoints}")
    check_carry_and_inputs(carry0, xs)
    f = compiled(forward_core, cell, bool(train), checkpoints)
    logfro, hnorm, buf = f(variables, carry0, xs, _default_key(key))
    logfro = np.asarray(logfro, np.float64)
    buf = np.asarray(buf, np.float64)
    log_spec = np.array([np.log(max(np.linalg.norm(buf[i], 2), 1e-300)) + logfro[c - 1]
                         for i, c in enumerate(checkpoints)])
    return {"T": np.arange(1, n_steps + 1), "log_fro": logfro, "checkpoints": np.asarray(checkpoints),
            "log_spec": log_spec, "log_state": np.asarray(hnorm, np.float64)}


# ------------------------------------------------------------------------------------------- Lyapunov


def _lyapunov_core(cell, train, k, transient, segments, variables, carry0, xs, key, qkey):
    step = cell_step(cell, train, variables, key)
    r = lyapunov_spectrum(step, carry0, xs, k=k, transient=transient, segments=segments, key=qkey)
    return r.exponents, r.stderr


def lyapunov(cell, variables, carry0, xs, key=None, train: bool = True, k: int | None = None,
             transient: int = 0, segments: int = 10, seed: int = 0) -> dict:
    """Top-k Lyapunov exponents (``gradflow.lyapunov_spectrum``, Benettin QR) compiled once per cell shape.

    Args:
        cell, variables, carry0, xs, key, train: as in :func:`lag_norms`.
        k, transient, segments: as in ``gradflow.lyapunov_spectrum``.
        seed: seed of the random orthonormal start.

    Returns:
        dict: ``exponents`` (k,) descending (ln per step), ``stderr`` (k,) from ``segments`` segments.

    Raises:
        ValueError: non-finite exponents (the states overflowed).
    """
    check_carry_and_inputs(carry0, xs)
    f = compiled(_lyapunov_core, cell, bool(train), None if k is None else int(k), int(transient),
                 int(segments))
    e, s = f(variables, carry0, xs, _default_key(key), jax.random.PRNGKey(seed))
    e, s = np.asarray(e, np.float64), np.asarray(s, np.float64)
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(s))):
        raise ValueError("non-finite Lyapunov exponents: the states overflowed; shorten T or lower the gain")
    return {"exponents": e, "stderr": s}


# ------------------------------------------------------------------------------------------- BN statistics


def _stats_core(cell, variables, carry0s, xss, key):
    rngs = {"dropout": key} if getattr(cell.spec, "dropout", 0.0) > 0 else {}

    def step(cb, x):
        carry, b = cb
        (new, _), upd = cell.apply({**variables, "batch_stats": b}, carry, x, train=True,
                                   mutable=["batch_stats"], rngs=rngs)
        return (new, upd["batch_stats"]), None

    def seq(bs, inp):
        return jax.lax.scan(step, (inp[0], bs), inp[1])[0][1], None

    bs, _ = jax.lax.scan(seq, variables["batch_stats"], (carry0s, xss))
    return {**variables, "batch_stats": bs}


def collect_batch_stats(cell, variables: dict, carry0s, xss, key=None) -> dict:
    """Run sequences in train mode with mutable ``batch_stats`` (as training does) and return the variables
    with the updated running averages.

    Args:
        cell: a cell with BN.
        variables: its variables.
        carry0s: initial carries stacked over N sequences (leading axis N).
        xss: (N, T, B, input_size) inputs.
        key: dropout key (cells with dropout).

    Returns:
        variables with the running averages after the N sequences (row t of per-step statistics updated at
        step t of each sequence, ``r ← momentum · r + (1 − momentum) · batch value``).
    """
    return compiled(_stats_core, cell)(variables, carry0s, xss, _default_key(key))


# --------------------------------------------------------------------------- an engine-independent exponent


def _carry_split(carry):
    leaves, treedef = jax.tree_util.tree_flatten(carry)
    is_f = [jnp.issubdtype(jnp.asarray(v).dtype, jnp.inexact) for v in leaves]

    def split(c):
        ls = jax.tree_util.tree_leaves(c)
        return ([v for v, f in zip(ls, is_f, strict=True) if f],
                [v for v, f in zip(ls, is_f, strict=True) if not f])

    def join(fl, ot):
        fi, oi = iter(fl), iter(ot)
        return jax.tree_util.tree_unflatten(treedef, [next(fi) if f else next(oi) for f in is_f])

    return split, join


def top_exponent(step, carry0, xs, key, burn: int | None = None) -> tuple[float, float]:
    """Top Lyapunov exponent of a step by propagating one tangent vector with ``jax.jvp`` (renormalized
    each step).

    An independent measurement, no engine code: the tangent covers every floating leaf of the carry (the
    whole batch state for batch-coupled steps); integer leaves pass through.

    Args:
        step: ``step(carry, x_t) -> carry``.
        carry0: initial carry (leaves with a leading batch axis).
        xs: (T, B, input_size) inputs.
        key: PRNG key of the random initial tangent (or an int seed, see ``gradflow.checks.prng_key``).
        burn: steps discarded as transient, an int (default T // 3).

    Returns:
        (mean log growth per step after the transient, its standard error from the per-step scatter).
    """
    T = int(jnp.shape(xs)[0])
    burn = T // 3 if burn is None else nonneg_int("burn", burn)
    if not 0 <= burn < T - 1:
        raise ValueError(f"burn must be in [0, T-1) with T={T}, got {burn}")
    key = prng_key("key", key, required=True)
    split, join = _carry_split(carry0)
    fl0, ot0 = split(carry0)
    if not fl0:
        raise ValueError("carry has no floating leaves to differentiate")
    keys = jax.random.split(key, len(fl0))
    v0 = [jax.random.normal(k, jnp.shape(v), jnp.asarray(v).dtype) for k, v in zip(keys, fl0, strict=True)]
    n0 = jnp.sqrt(sum(jnp.sum(v**2) for v in v0))

    def body(c, x):
        fl, ot, v = c
        out = step(join(fl, ot), x)
        fl2, v2 = jax.jvp(lambda fl_: split(step(join(fl_, ot), x))[0], (fl,), (v,))
        n = jnp.sqrt(sum(jnp.sum(w**2) for w in v2))
        return (fl2, split(out)[1], [w / n for w in v2]), jnp.log(n)

    run = jax.jit(lambda c, xs_: jax.lax.scan(body, c, xs_)[1])
    logs = np.asarray(run((fl0, ot0, [v / n0 for v in v0]), xs), dtype=np.float64)[burn:]
    if not np.all(np.isfinite(logs)):
        raise ValueError("non-finite tangent growth (state or tangent overflowed)")
    return float(logs.mean()), float(logs.std() / math.sqrt(len(logs)))


# ------------------------------------------------------------------------------- the theory harness


def _cell_tangent_logs(cell, variables, carry0, xs, v0, dkey):
    """Per-step log growth of one tangent of carry["h"] through our rnn-family cell in train mode (the cell's
    own ``apply``, batch statistics, dropout with ``dkey`` folded per step by the cell)."""
    rngs = {"dropout": dkey} if cell.spec.dropout > 0 else {}

    def step(c, x):
        (new, _), _ = cell.apply(variables, c, x, train=True, mutable=["batch_stats"], rngs=rngs)
        return new

    def body(cv, x):
        c, v = cv
        h2, v2 = jax.jvp(lambda h: step({**c, "h": h}, x)["h"], (c["h"],), (v,))
        n = jnp.linalg.norm(v2)
        return ({**c, "h": h2, "t": c["t"] + 1}, v2 / n), jnp.log(n)

    return jax.lax.scan(body, (carry0, v0), xs)[1]


MEASURABLE = ("tanh", "linear", "bn_notanh", "bn_tanh", "ln_notanh", "ln_tanh")
HARNESS_KEYS = frozenset({"gain", "gamma", "gamma_x", "has_input", "dropout", "seed", "x_scale"})


def _harness_config(cfg: dict) -> dict:
    bad = set(cfg) - HARNESS_KEYS
    if bad:
        raise ValueError(f"unknown configuration keys {sorted(bad)}; allowed {sorted(HARNESS_KEYS)}")
    x_scale = float(cfg.get("x_scale", 1.0))
    if not (math.isfinite(x_scale) and x_scale >= 0):
        raise ValueError(f"x_scale must be a finite number >= 0, got {x_scale!r}")
    return {"gain": float(cfg.get("gain", 1.0)), "dropout": float(cfg.get("dropout", 0.0)),
            "has_input": bool(cfg.get("has_input", True)), "x_scale": x_scale,
            "seed": int(cfg.get("seed", 0)), "gamma": cfg.get("gamma"), "gamma_x": cfg.get("gamma_x")}


def _harness_params(params: dict, c: dict) -> tuple[dict, float, float]:
    """W_hh scaled by the gain and the normalization scales set; returns (params, γ_h used, γ_x used)."""
    scales = {s: c["gamma"] for s in ("bn_h", "ln_h", "ln_sum") if s in params and c["gamma"] is not None}
    if "bn_x" in params and c["gamma_x"] is not None:
        scales["bn_x"] = c["gamma_x"]
    params = with_scales({"params": params}, w_hh_factor=c["gain"], scales=scales)["params"]
    gh = float(next((params[s]["scale"][0] for s in ("bn_h", "ln_h", "ln_sum") if s in params), 1.0))
    gx = float(params["bn_x"]["scale"][0]) if "bn_x" in params else 0.0
    return params, gh, gx


def _harness_measure(cell, variables, c, key, steps, batch_size, input_size, dt, burn) -> tuple[float, float]:
    k_x, k_v, k_d = key
    xs = c["x_scale"] * jax.random.normal(k_x, (steps, batch_size, input_size), dt)
    if not c["has_input"]:
        xs = jnp.zeros_like(xs)
    carry0 = cell.initialize_carry(batch_size)
    carry0 = {**carry0, "h": jax.random.normal(k_v, carry0["h"].shape, dt)}
    v0 = jax.random.normal(jax.random.fold_in(k_v, 1), carry0["h"].shape, dt)
    v0 = v0 / jnp.linalg.norm(v0)
    logs = np.asarray(compiled(_cell_tangent_logs, cell)(variables, carry0, xs, v0, k_d))
    b0 = steps // 3 if burn is None else int(burn)
    if not 0 <= b0 < steps - 1:
        raise ValueError(f"burn must be in [0, steps-1), got {b0}")
    logs = logs[b0:]
    if not np.all(np.isfinite(logs)):
        raise ValueError(f"non-finite tangent growth for configuration {c}")
    return float(logs.mean()), float(logs.std() / math.sqrt(len(logs)))


def theory_vs_measurement(name: str, configs, *, hidden_size: int = 256, batch_size: int = 16,
                          input_size: int = 16, steps: int = 600, burn: int | None = None, key=None,
                          dtype: str = "float64") -> dict[str, np.ndarray]:
    """Predicted vs measured top Lyapunov exponent of a preset at init, over a list of configurations.

    Each configuration is a dict with any of: ``gain`` (g of a Gaussian W_hh, default 1), ``gamma``
    (scale of the recurrent-path normalization), ``gamma_x`` (BN_x scale), ``has_input`` (default True:
    x_t ~ N(0, 1) i.i.d.; False: x_t = 0), ``dropout`` (hidden dropout p, fresh mask per step), ``x_scale``
    (std of x_t, default 1; the unnormalized input drive then has σ_x² ≈ x_scale², see
    ``gradflow.theory.input_drive_variance``), ``seed`` (default 0). The cell is built with
    ``gradflow.make_cell``, the normalization scales are overwritten after init, the cell runs in train mode
    (its own ``apply``), and the measurement is the jvp top exponent of one tangent of carry["h"],
    renormalized each step (compiled once per cell: every gain and γ shares it).

    Returns:
        dict of (n_configs,) arrays: "predicted", "measured", "stderr", "tied_correction" (ln
        ρ(W_hh)/g, relevant for ln_notanh and linear, see ``gradflow.theory.tied_weight_correction``),
        "sigma_x2" (the input-drive variance of the drawn W_xh; 0 without input), and each config key used.
    """
    if name not in MEASURABLE:
        raise ValueError(f"theory_vs_measurement supports {MEASURABLE}, got {name!r}")
    if key is None:
        raise ValueError("key is required (explicit PRNG key)")
    cols: dict[str, list] = {k: [] for k in ("predicted", "measured", "stderr", "tied_correction", "sigma_x2",
                                             *sorted(HARNESS_KEYS))}
    dt = jnp.float64 if dtype == "float64" else jnp.float32
    for i, cfg in enumerate(list(configs)):
        c = _harness_config(cfg)
        cell = cell_for(name, hidden_size, input_size, gain=1.0, recurrent_init="gaussian",
                        dropout=c["dropout"], dtype=dtype)
        k_init, *k_rest = jax.random.split(jax.random.fold_in(key, 1000 * i + c["seed"]), 4)
        variables = init_cell(cell, k_init, batch_size=batch_size)
        params, gh, gx = _harness_params(variables["params"], c)
        meas, se = _harness_measure(cell, {**variables, "params": params}, c, k_rest, steps, batch_size,
                                    input_size, dt, burn)
        sx2 = theory.input_drive_variance(params["W_xh"], c["x_scale"] ** 2) if c["has_input"] else 0.0
        pred = theory.predict_rate(name, hidden_size=hidden_size, batch_size=batch_size, gain=c["gain"],
                                   gamma=gh, gamma_x=gx, sigma_x2=sx2, has_input=c["has_input"],
                                   dropout=c["dropout"])
        corr = theory.tied_weight_correction(np.asarray(params["W_hh"]), c["gain"]) if c["gain"] > 0 else 0.0
        row = {**c, "predicted": pred, "measured": meas, "stderr": se, "tied_correction": corr,
               "sigma_x2": sx2, "gamma": gh, "gamma_x": gx}
        for k in cols:
            cols[k].append(row[k])
    return {k: np.asarray(v) for k, v in cols.items()}
