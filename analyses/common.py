"""Shared experiment helpers of the analyses: cells at initialization, inputs, compiled measurements, fits.

Every measurement here is compiled once per cell *shape* (preset, sizes, options, mode, T) with the variables,
inputs and keys as traced arguments, so sweeping gains or seeds reuses one compilation.

- :func:`setup`: a cell, its variables (seeded), the zero carry and Gaussian inputs.
- :func:`lag_norms`: ‖∂h_T/∂h_t‖ (spectral and Frobenius) for every lag, exactly (gradflow's engine).
- :func:`forward_lognorms`: ln‖∂h_T/∂h_0‖ for every T of one long sequence, by a forward product of the step
  Jacobians with log-scale renormalization (finite for any T in float32).
- :func:`fit_rate`: the per-step growth rate (slope of a log-norm against lag) with its standard error.

Conventions: rates are natural log per step; ``train=True`` means BN uses batch statistics (the batch is
analysed as one state of size n = B·d) and dropout is on, as during training.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

import gradflow

#: Cell options that only scale initial values: the cell is built and initialized without them and the
#: variables are scaled (W_hh by the gain ratio, every BN / LN scale set to its γ), so that one compilation
#: serves every gain / γ. ``tests/test_analyses.py`` checks the result equals ``init_cell`` of
#: ``make_cell(preset, ..., gain=g, bn_gamma_init=γ)``.
INIT_ONLY = frozenset({"gain", "bn_gamma_init", "ln_gamma_init"})


@functools.lru_cache(maxsize=256)
def _init_fn(cell, batch: int):
    return jax.jit(lambda key: gradflow.init_cell(cell, key, batch_size=batch))


def with_gain(cell, variables: dict, gain) -> dict:
    """``variables`` with W_hh rescaled from the cell's gain to ``gain`` (traceable: gain may be a tracer)."""
    params = {**variables["params"], "W_hh": variables["params"]["W_hh"] * (gain / cell.spec.gain)}
    return {**variables, "params": params}


def _scaled_variables(cell, variables: dict, options: dict) -> dict:
    spec = cell.spec
    params = dict(variables["params"])
    if "gain" in options:
        if spec.gain == 0:
            raise ValueError("cannot rescale a W_hh initialised with gain 0")
        params["W_hh"] = params["W_hh"] * (float(options["gain"]) / spec.gain)
    for name, sub in list(params.items()):
        if not isinstance(sub, dict) or "scale" not in sub:
            continue
        for prefix, opt in (("bn_", "bn_gamma_init"), ("ln_", "ln_gamma_init")):
            if name.startswith(prefix) and opt in options:
                params[name] = {**sub, "scale": jnp.full_like(sub["scale"], float(options[opt]))}
    return {**variables, "params": params}


def options_key(options: dict | None) -> tuple:
    """A hashable, order-independent form of a dict of cell options."""
    return tuple(sorted((options or {}).items()))


@functools.lru_cache(maxsize=256)
def _cell(preset: str, d: int, input_size: int, opts: tuple):
    return gradflow.make_cell(preset, d, input_size, **dict(opts))


def cell_for(preset: str, d: int, input_size: int, **options):
    """The (cached) cell ``gradflow.make_cell(preset, d, input_size, **options)``."""
    return _cell(preset, int(d), int(input_size), options_key(options))


def setup(preset: str, d: int, input_size: int, batch: int, T: int, seed: int, input_scale: float = 1.0,
          h0_scale: float = 1.0, burn_in: int = 0, train: bool = True, **options):
    """A cell at initialization with its carry and inputs.

    Args:
        preset: a name in ``gradflow.CELLS``.
        d: hidden size.
        input_size: input size.
        batch: B.
        T: sequence length.
        seed: integer seed; parameters, inputs and dropout keys derive from it.
        input_scale: standard deviation of the i.i.d. Gaussian inputs.
        h0_scale: standard deviation of the i.i.d. Gaussian initial state h_0 (and c_0). A zero h_0 makes
            W_hh h_0 constant over the batch, so train-mode BN_h divides by sqrt(ε) at the first step (a
            Jacobian of size γ/sqrt(ε) ≈ 300): every analysis starts from a random state instead.
        burn_in: steps run (with their own inputs, in the mode ``train``) from that random state before
            the returned ``carry0``, so that h_0 is a typical state of the driven network; the step counter
            ``t`` is then reset to 0.
        train: the mode of the burn-in.
        **options: cell options (gain, bn_gamma_init, dropout, t_max, ...).

    Returns:
        (cell, variables, carry0, xs (T, B, input_size), dropout key). ``cell`` is built without the
        :data:`INIT_ONLY` options (the variables carry them).
    """
    cell, variables, carry0, xs, k_drop, xb = setup_parts(preset, d, input_size, batch, T, seed, input_scale,
                                                          h0_scale, burn_in, **options)
    if burn_in > 0:
        carry0 = _burn_fn(cell, bool(train))(variables, carry0, xb, k_drop)
        carry0 = {**carry0, "t": jnp.zeros_like(carry0["t"])}
    return cell, variables, carry0, xs, k_drop


def setup_parts(preset: str, d: int, input_size: int, batch: int, T: int, seed: int, input_scale: float = 1.0,
                h0_scale: float = 1.0, burn_in: int = 0, **options):
    """:func:`setup` before its burn-in: (cell, variables, random carry0, xs, dropout key, burn-in inputs
    (burn_in, B, input_size)). ``burn_carry(cell, train)(variables, carry0, xb, key)`` finishes it."""
    cell = cell_for(preset, d, input_size, **{k: v for k, v in options.items() if k not in INIT_ONLY})
    k_init, k_x, k_drop, k_h = jax.random.split(jax.random.key(seed), 4)
    variables = _scaled_variables(cell, _init_fn(cell, int(batch))(k_init),
                                  {k: v for k, v in options.items() if k in INIT_ONLY})
    xs = input_scale * jax.random.normal(k_x, (T, batch, input_size), cell.dtype)
    carry0 = cell.initialize_carry(batch)
    keys = iter(jax.random.split(k_h, 4))
    carry0 = {k: (h0_scale * jax.random.normal(next(keys), v.shape, v.dtype) if k in ("h", "c") else v)
              for k, v in carry0.items()}
    xb = input_scale * jax.random.normal(next(keys), (max(int(burn_in), 0), batch, input_size), cell.dtype)
    return cell, variables, carry0, xs, k_drop, xb


def burn_carry(cell, train: bool, variables, carry0, xb, key):
    """The burn-in of :func:`setup` (traceable): run ``xb`` from ``carry0``, then reset the step counter."""
    step = gradflow.as_step(cell, variables, train=train, key=key if _needs_key(cell, train) else None)
    c = jax.lax.scan(lambda c, x: (step(c, x), None), carry0, xb)[0]
    return {**c, "t": jnp.zeros_like(c["t"])}


@functools.lru_cache(maxsize=256)
def _burn_fn(cell, train: bool):
    @jax.jit
    def f(variables, carry0, xs, key):
        step = gradflow.as_step(cell, variables, train=train, key=key if _needs_key(cell, train) else None)
        return jax.lax.scan(lambda c, x: (step(c, x), None), carry0, xs)[0]

    return f


@functools.lru_cache(maxsize=256)
def _norms_fn(cell, train: bool, wrt_key):
    from gradflow.jacobians import jacobian_norms

    wrt = None if wrt_key is None else dict(wrt_key)

    @jax.jit
    def f(variables, carry0, xs, key):
        step = gradflow.as_step(cell, variables, train=train, key=key if _needs_key(cell, train) else None)
        r = jacobian_norms(step, carry0, xs, wrt=wrt)
        return r.spectral_norms, r.frobenius_norms

    return f


def _needs_key(cell, train: bool) -> bool:
    return bool(train and getattr(cell.spec, "dropout", 0.0) > 0)


def lag_norms(cell, variables, carry0, xs, key=None, train: bool = True, wrt: dict | None = None) -> dict:
    """‖∂h_T/∂h_t‖ for every t (lag T − t), exactly, without storing the Jacobians.

    Args:
        cell, variables, carry0, xs, key: as returned by :func:`setup`.
        train: batch statistics and dropout on (True) or running averages (False).
        wrt: optional state selection (``{"h": True, "c": False, "t": False}``); default the whole state.

    Returns:
        dict: ``lags`` (T,) 1..T ascending, ``spectral`` (T,), ``frobenius`` (T,) (numpy, float64).
    """
    f = _norms_fn(cell, bool(train), None if wrt is None else tuple(sorted(wrt.items())))
    key = jax.random.key(0) if key is None else key
    s, fr = f(variables, carry0, xs, key)
    T = xs.shape[0]
    # engine order: index t = 0..T-1 has lag T - t; flip to ascending lag.
    return {"lags": np.arange(1, T + 1), "spectral": np.asarray(s, np.float64)[::-1].copy(),
            "frobenius": np.asarray(fr, np.float64)[::-1].copy()}


@functools.lru_cache(maxsize=256)
def _matrices_fn(cell, train: bool, T: int, idx: tuple, wrt_key):
    from gradflow.jacobians import jacobians

    wrt = None if wrt_key is None else dict(wrt_key)
    sel = np.asarray(idx, np.int32)

    @jax.jit
    def f(variables, carry0, xs, key):
        step = gradflow.as_step(cell, variables, train=train, key=key if _needs_key(cell, train) else None)
        r = jacobians(step, carry0, xs, wrt=wrt, spectral=None)
        return r.frobenius_norms, r.matrices[sel]

    return f


def lag_singular_values(cell, variables, carry0, xs, key=None, train: bool = True, lags=(1, 10, 100),
                        wrt: dict | None = None) -> dict:
    """Exact ∂h_T/∂h_t at chosen lags (singular values, float64 SVD) and the Frobenius norm at every lag.

    The Jacobians come from ``gradflow.jacobians`` (one reverse pass, all lags); only the chosen lags are
    decomposed, which is where the time goes for n of a few hundred.

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
    idx = tuple(T - v for v in lags)
    f = _matrices_fn(cell, bool(train), T, idx, None if wrt is None else tuple(sorted(wrt.items())))
    key = jax.random.key(0) if key is None else key
    fro, mats = f(variables, carry0, xs, key)
    mats = np.asarray(mats, np.float64)
    sv = np.stack([np.linalg.svd(m, compute_uv=False) for m in mats])
    return {"lags": np.arange(1, T + 1), "frobenius": np.asarray(fro, np.float64)[::-1].copy(),
            "sv_lags": np.asarray(lags), "sv": sv, "spectral": sv[:, 0].copy()}


def log_lags(T: int, n: int = 16) -> tuple[int, ...]:
    """About ``n`` distinct integer lags from 1 to T, spaced evenly on a log scale (1 and T included)."""
    return tuple(int(v) for v in np.unique(np.round(np.geomspace(1, T, n)).astype(int)))


# ------------------------------------------------------------------------------------------- forward product


def _flat_inexact(carry):
    leaves, treedef = jax.tree_util.tree_flatten(carry)
    mask = [jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in leaves]
    return leaves, treedef, mask


def _flatten(carry):
    leaves, _, mask = _flat_inexact(carry)
    return jnp.concatenate([jnp.ravel(x) for x, m in zip(leaves, mask, strict=True) if m])


def _unflatten(vec, like):
    leaves, treedef, mask = _flat_inexact(like)
    out, i = [], 0
    for x, m in zip(leaves, mask, strict=True):
        if m:
            out.append(vec[i:i + x.size].reshape(x.shape).astype(x.dtype))
            i += x.size
        else:
            out.append(x)
    return treedef.unflatten(out)


@functools.lru_cache(maxsize=256)
def _forward_fn(cell, train: bool, checkpoints: tuple):
    return jax.jit(functools.partial(forward_core, cell, train, checkpoints))


def forward_core(cell, train: bool, checkpoints: tuple, variables, carry0, xs, key):
    """The traceable part of :func:`forward_lognorms`: (log_fro (T,), log_state (T,), Q at the checkpoints
    (K, n, n), each with ‖Q‖_F = 1: ln‖∂h_T/∂h_0‖₂ = ln σ_max(Q_k) + log_fro[T_k − 1])."""
    ck = np.asarray(checkpoints, np.int32)
    step = gradflow.as_step(cell, variables, train=train, key=key if _needs_key(cell, train) else None)
    n = _flatten(carry0).shape[0]
    Q0 = jnp.eye(n, dtype=xs.dtype)
    buf0 = jnp.zeros((len(ck), n, n), xs.dtype)
    cks = jnp.asarray(ck)

    def body(c, inp):
        carry, Q, logscale, buf = c
        x, t = inp

        def g(v):
            return _flatten(step(_unflatten(v, carry), x))

        v0 = _flatten(carry)
        new_v, pushfwd = jax.linearize(g, v0)
        Q = jax.vmap(pushfwd, in_axes=1, out_axes=1)(Q)
        s = jnp.sqrt(jnp.sum(jnp.square(Q)))
        s = jnp.maximum(s, jnp.finfo(Q.dtype).tiny)
        Q = Q / s
        logscale = logscale + jnp.log(s)
        hit = cks == (t + 1)
        buf = jnp.where(hit[:, None, None], Q[None], buf)
        new_carry = step(carry, x)
        h = new_carry["h"]  # ln of the RMS over the batch of ‖h‖₂, scaled so that it cannot overflow
        m = jnp.maximum(jnp.max(jnp.abs(h)), jnp.finfo(h.dtype).tiny)
        hnorm = jnp.log(m) + 0.5 * jnp.log(jnp.maximum(jnp.mean(jnp.sum(jnp.square(h / m), axis=-1)),
                                                        jnp.finfo(h.dtype).tiny))
        return (new_carry, Q, logscale, buf), (logscale, hnorm)

    init = (carry0, Q0, jnp.zeros((), xs.dtype), buf0)
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
    f = _forward_fn(cell, bool(train), checkpoints)
    key = jax.random.key(0) if key is None else key
    logfro, hnorm, buf = f(variables, carry0, xs, key)
    logfro = np.asarray(logfro, np.float64)
    buf = np.asarray(buf, np.float64)
    log_spec = np.array([np.log(max(np.linalg.norm(buf[i], 2), 1e-300)) + logfro[c - 1]
                         for i, c in enumerate(checkpoints)])
    return {"T": np.arange(1, n_steps + 1), "log_fro": logfro, "checkpoints": np.asarray(checkpoints),
            "log_spec": log_spec, "log_state": np.asarray(hnorm, np.float64)}


# ---------------------------------------------------------------------------------------------- fits


def fit_rate(lags, log_norms, lag_min: int = 1, lag_max: int | None = None) -> tuple[float, float]:
    """Per-step growth rate: least-squares slope of ln‖·‖ against lag over [lag_min, lag_max], and its
    standard error (from the residuals; consecutive lags are correlated, so it is a lower bound).

    Args:
        lags: (L,) lags.
        log_norms: (L,) natural-log norms.
        lag_min, lag_max: the fitted window (inclusive).

    Returns:
        (rate, stderr) in ln per step.
    """
    lags = np.asarray(lags, float)
    y = np.asarray(log_norms, float)
    sel = (lags >= lag_min) & (lags <= (lag_max if lag_max is not None else lags.max())) & np.isfinite(y)
    x, y = lags[sel], y[sel]
    if x.size < 3:
        raise ValueError(f"fit_rate needs at least 3 finite points in the window, got {x.size}")
    A = np.stack([x, np.ones_like(x)], 1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    dof = max(x.size - 2, 1)
    s2 = float(resid @ resid) / dof
    se = math.sqrt(s2 / float(np.sum((x - x.mean()) ** 2)))
    return float(coef[0]), se


def classify(rate: float, stderr: float = 0.0, threshold: float = 0.01) -> str:
    """"explodes" if rate > threshold, "vanishes" if rate < −threshold, else "neutral" (|rate| ≤ threshold).

    With the default threshold 0.01 ln/step a norm changes by more than e (×2.7) per 100 steps.
    """
    if rate > threshold:
        return "explodes"
    if rate < -threshold:
        return "vanishes"
    return "neutral"


# ------------------------------------------------------------------------------------------- Lyapunov


@functools.lru_cache(maxsize=256)
def _lyap_fn(cell, train: bool, k: int | None, transient: int, segments: int):
    from gradflow.lyapunov import lyapunov_spectrum

    @jax.jit
    def f(variables, carry0, xs, key, qkey):
        step = gradflow.as_step(cell, variables, train=train, key=key if _needs_key(cell, train) else None)
        r = lyapunov_spectrum(step, carry0, xs, k=k, transient=transient, segments=segments, key=qkey)
        return r.exponents, r.stderr

    return f


def lyapunov(cell, variables, carry0, xs, key=None, train: bool = True, k: int | None = None,
             transient: int = 0, segments: int = 10, seed: int = 0) -> dict:
    """Top-k Lyapunov exponents (``gradflow.lyapunov_spectrum``, Benettin QR) compiled once per cell shape.

    Returns:
        dict: ``exponents`` (k,) descending (ln per step), ``stderr`` (k,) from ``segments`` segments.
    """
    f = _lyap_fn(cell, bool(train), None if k is None else int(k), int(transient), int(segments))
    key = jax.random.key(0) if key is None else key
    e, s = f(variables, carry0, xs, key, jax.random.PRNGKey(seed))
    e, s = np.asarray(e, np.float64), np.asarray(s, np.float64)
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(s))):
        raise ValueError("non-finite Lyapunov exponents: the states overflowed; shorten T or lower the gain")
    return {"exponents": e, "stderr": s}


# ------------------------------------------------------------------------------------------- BN statistics


@functools.lru_cache(maxsize=64)
def _stats_fn(cell):
    @jax.jit
    def f(variables, carry0s, xss, key):
        rngs = {"dropout": key} if getattr(cell.spec, "dropout", 0.0) > 0 else {}

        def seq(bs, inp):
            c0, xs = inp

            def stepf(cb, x):
                carry, b = cb
                (new, _), upd = cell.apply({**variables, "batch_stats": b}, carry, x, train=True,
                                           mutable=["batch_stats"], rngs=rngs)
                return (new, upd["batch_stats"]), None

            (_, bs), _ = jax.lax.scan(stepf, (c0, bs), xs)
            return bs, None

        bs, _ = jax.lax.scan(seq, variables["batch_stats"], (carry0s, xss))
        return {**variables, "batch_stats": bs}

    return f


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
    key = jax.random.key(0) if key is None else key
    return _stats_fn(cell)(variables, carry0s, xss, key)
