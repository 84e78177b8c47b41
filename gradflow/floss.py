"""Gradient flossing (Engelken 2023): push the top-k Lyapunov exponents of a recurrence towards zero.

The exponents are computed along the forward pass by Benettin's QR method, as in
:func:`gradflow.lyapunov_spectrum`: k tangent vectors Q (n, k) are pushed forward by the step Jacobian,
Z = J_t Q, and re-orthonormalized, Z = Q' R; λ_i is the mean of log|R_ii| over the steps after a transient.
Here the QR is differentiated (``jnp.linalg.qr`` has a JVP), so the loss Σ_{i≤k} λ_i² has a gradient with
respect to everything the step closes over (its parameters). :func:`floss` minimizes it alone with Adam
("pre-flossing"); :func:`flossing_loss` can be added to a training loss.

Example:
    >>> import jax, jax.numpy as jnp, gradflow
    >>> cell = gradflow.make_cell("tanh", 4, 2, gain=3.0)
    >>> v = gradflow.init_cell(cell, jax.random.key(0))
    >>> xs = jax.random.normal(jax.random.key(1), (30, 2, 2))
    >>> step = gradflow.as_step(cell, v)
    >>> float(gradflow.flossing_loss(step, cell.initialize_carry(2), xs)) > 0
    True
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradflow.cache import compiled
from gradflow.cells import GradflowCell
from gradflow.checks import nonneg_float, positive_float, positive_int, prng_key, real_array, state_k
from gradflow.statemap import StateMap, check_carry_and_inputs, validate_inputs
from gradflow.step import as_step, check_finite

__all__ = ["DEFAULT_LEARNING_RATE", "DEFAULT_STATE_WINDOW", "clip_to_adam_rms", "floss", "floss_schedule",
           "flossing_exponents", "flossing_loss"]

#: Peak Adam learning rate of the default schedule (see :func:`floss_schedule`).
DEFAULT_LEARNING_RATE = 0.03
#: Default window (steps) of the gradient through the trajectory (see :func:`flossing_exponents`).
DEFAULT_STATE_WINDOW = 25


def floss_schedule(steps: int, peak: float = DEFAULT_LEARNING_RATE, final_fraction: float = 0.01):
    """The default learning-rate schedule of :func:`floss`: cosine decay from ``peak`` to
    ``peak · final_fraction`` over ``steps`` steps.

    A large step early moves a strongly vanishing network (λ₁ ≈ −1) to the edge within a few dozen steps;
    the decay then lets a network that starts near the edge (λ₁ ≈ +0.2) settle there instead of oscillating
    around λ₁ = 0 at Adam's step size.

    Raises:
        ValueError: ``steps`` not a positive int, ``peak`` not > 0, ``final_fraction`` outside [0, 1].
    """
    steps, peak = positive_int("steps", steps), positive_float("peak", peak)
    if nonneg_float("final_fraction", final_fraction) > 1:
        raise ValueError(f"final_fraction must lie in [0, 1], got {final_fraction!r}")
    return optax.cosine_decay_schedule(peak, steps, alpha=float(final_fraction))


def flossing_exponents(step, carry0, xs, *, k: int = 1, transient: int = 0, key=None,
                       state_window: int | None = DEFAULT_STATE_WINDOW) -> jax.Array:
    """Top-k Lyapunov exponents by a differentiable QR iteration (traceable; concrete NaN/inf in ``carry0`` or
    ``xs``, or float64 values beyond float32's range without x64, raise ValueError; traced values are not
    checked).

    Args:
        step: ``step(carry, x_t) -> carry`` (e.g. ``gradflow.as_step(cell, variables)``); gradients flow to
            whatever it closes over.
        carry0: h_0 (leaves with a leading batch axis B; the state is every inexact leaf, the whole batch).
        xs: (T, B, input_size).
        k: number of exponents, 1 <= k <= n.
        transient: initial steps whose QR factors are not averaged (0 <= transient < T).
        key: PRNG key of the random orthonormal start (default ``jax.random.PRNGKey(0)``, the same start as
            :func:`gradflow.lyapunov_spectrum`).
        state_window: how far back the gradient follows the trajectory h_t: within consecutive windows of
            ``state_window`` steps (the states are held fixed, ``stop_gradient``, at every window's start);
            1 holds every state fixed (only the step Jacobians J_t = ∂h_t/∂h_{t−1} at the given states and the
            tangent vectors are differentiated); None differentiates through the whole trajectory (the exact
            gradient of the finite-T exponents). The values do not depend on it; only the gradient does. The
            exact gradient grows like e^{λ₁·T}: in the chaotic regime it is astronomically large and points
            nowhere useful (≈1e9 for a tanh RNN at gain 3, d = 32, T = 100; Adam stalls). Holding every state
            fixed leaves out how the states' saturation responds to the parameters, which biases it (at gain 3
            it overstated dλ₁/d(scale of W_hh) 2.5-fold) and pre-flossing then mostly fails at gain 3. A
            window of 25 steps (the default) keeps the growth bounded (e^{25λ₁}). Measured with
            :func:`floss`'s defaults and fresh inputs (tanh RNN, d = 32, B = 8, T = 200, 300 steps, seeds
            0–4, λ₁ on 800 fresh steps; programs compiled with and without XLA's optimizations): gain 0.5
            (λ₁ ≈ −1.1) reached |λ₁| < 0.09 for 10 of 10 (8 < 0.04). In the chaotic regime the end point
            hangs on rounding: gain 3 (λ₁ +0.16..+0.21) ended at −0.27, −0.35, +0.12, +0.08, −0.00
            unoptimized and −0.15, +0.01, +0.01, +0.17, +0.01 optimized (the exponent always fell, by
            0.03–0.51, but overshot or stuck as often as not); near the edge (gain 2, λ₁ ≈ 0) Adam's steps
            of 0.03 per entry drifted λ₁ to −0.03..−0.27 in 8 of 10, and a smaller peak rate (0.01, 0.003)
            left gain 3 stuck above +0.13. Use pre-flossing to lift a vanishing network to the edge.

    Returns:
        (k,) exponents in the column order of Q (asymptotically descending; not sorted, so that the
        result is smooth in the parameters), natural log per step.
    """
    smap, T = validate_inputs(step, carry0, xs, check_values=False)  # shapes only: runs under jit / grad
    check_carry_and_inputs(carry0, xs)  # concrete leaves only (skipped under tracing)
    k = state_k(k, smap.n)
    if isinstance(transient, bool) or not isinstance(transient, (int, np.integer)) or not 0 <= transient < T:
        raise ValueError(f"transient must be an int with 0 <= transient < T = {T}, got {transient!r}")
    state_window = _check_window(state_window)
    key = prng_key("key", key)
    key = jax.random.PRNGKey(0) if key is None else key
    Q0, _ = jnp.linalg.qr(jax.random.normal(key, (smap.n, k), smap.dtype))
    full = StateMap.from_carry(carry0)

    def body(c, x):
        h, Qt, t = c  # the tangent vectors as rows (k, n)
        if state_window is not None:  # cut the gradient through the states every state_window steps
            cut = (t % state_window) == 0
            h = jax.tree_util.tree_map(lambda a: jnp.where(cut, jax.lax.stop_gradient(a), a), h)
        v = full.flatten(h)
        f = lambda u: full.flatten(step(full.unflatten(u, h), x))
        Zt = jax.vmap(lambda q: jax.jvp(f, (v,), (q,))[1])(Qt)  # (J Q)^T
        Q, R = jnp.linalg.qr(Zt.T)
        return (step(h, x), Q.T, t + 1), jnp.log(jnp.abs(jnp.diagonal(R)))

    _, logs = jax.lax.scan(body, (carry0, Q0.T, 0), xs)
    return jnp.mean(logs[int(transient):], axis=0)


def flossing_loss(step, carry0, xs, *, k: int = 1, transient: int = 0, key=None,
                  state_window: int | None = DEFAULT_STATE_WINDOW) -> jax.Array:
    """The flossing loss Σ_{i≤k} λ_i² of :func:`flossing_exponents` (a scalar; traceable, differentiable).

    Add ``weight * flossing_loss(gradflow.as_step(cell, variables), carry0, xs, k=k)`` to a training loss
    to floss while training.
    """
    lam = flossing_exponents(step, carry0, xs, k=k, transient=transient, key=key,
                             state_window=state_window)
    return jnp.sum(lam**2)


_ADAM = optax.scale_by_adam()
#: Gradient entries are clipped to this many times Adam's running RMS of that entry before the update.
CLIP_SIGMAS = 3.0


def clip_to_adam_rms(grads, adam_state, sigmas: float = CLIP_SIGMAS):
    """Clip every gradient entry to ± ``sigmas`` × its running RMS in Adam's second moment (bias-corrected);
    the first step is left as it is.

    The finite-time exponents have rare huge gradients (a step where a tangent vector is nearly annihilated,
    a window that crosses a chaotic stretch). Unclipped, one of them inflates Adam's second moment, the next
    step jumps far in its direction and the updates then stall for hundreds of steps.
    """
    count = adam_state.count
    corr = 1.0 - 0.999 ** jnp.maximum(count, 1).astype(jnp.float32)

    def clip(g, nu):
        bound = sigmas * jnp.sqrt(nu / corr.astype(nu.dtype))
        return jnp.where(count > 0, jnp.clip(g, -bound, bound), g)

    return jax.tree_util.tree_map(clip, grads, adam_state.nu)


def _update_core(cell, train, k, transient, has_key, window,
                 params, opt_state, lr, variables, carry0, xs, key, qkey):
    """One pre-flossing step (compiled once per static settings through ``gradflow.cache``)."""

    def loss(params):
        v = {**variables, "params": params}
        step = as_step(cell, v, train=train, key=key if has_key else None)
        lam = flossing_exponents(step, carry0, xs, k=k, transient=transient, key=qkey, state_window=window)
        return jnp.sum(lam**2), lam

    (val, lam), g = jax.value_and_grad(loss, has_aux=True)(params)
    g = clip_to_adam_rms(g, opt_state)
    direction, opt_state = _ADAM.update(g, opt_state)
    params = jax.tree_util.tree_map(lambda p, u: p - (lr * u).astype(p.dtype), params, direction)
    return params, opt_state, val, lam


def _check_window(state_window) -> int | None:
    if state_window is None:
        return None
    if isinstance(state_window, bool) or not isinstance(state_window, (int, np.integer)) or state_window < 1:
        raise ValueError(f"state_window must be a positive int or None, got {state_window!r}")
    return int(state_window)


def _floss_setup(cell, variables, xs, steps, learning_rate, carry0):
    """Eager checks of :func:`floss`; returns (xs (a first sequence), the sampler or None, carry0, the
    learning rate (float or schedule))."""
    steps = positive_int("steps", steps)
    if not isinstance(variables, dict) or "params" not in variables:
        raise ValueError("variables must be a dict with a 'params' entry (see gradflow.init_cell)")
    check_finite(variables, "variables")
    sample = xs if callable(xs) else None
    xs = sample(jax.random.key(0)) if sample is not None else xs
    real_array("xs" if sample is None else "xs(key)", xs)  # None, strings: refused naming xs
    xs = jnp.asarray(xs)
    if xs.ndim != 3:
        raise ValueError(f"xs must have shape (T, B, input_size), got {xs.shape}")
    if carry0 is None:
        if not isinstance(cell, GradflowCell):
            raise ValueError("carry0 is required for a cell that is not one of gradflow's (make_cell)")
        carry0 = cell.initialize_carry(xs.shape[1])
    lr = floss_schedule(steps) if learning_rate is None else learning_rate
    if not callable(lr):
        lr = positive_float("learning_rate (a number, or an optax schedule)", lr)
    return xs, sample, carry0, lr


def floss(cell, variables, xs, *, k: int = 1, steps: int = 300, learning_rate=None, train: bool = True,
          key=None, carry0=None, transient: int | None = None,
          state_window: int | None = DEFAULT_STATE_WINDOW, progress=None):
    """Pre-flossing: minimize Σ_{i≤k} λ_i² over the cell's parameters with Adam; return the new variables.

    Every step computes the top-k exponents along a sequence from ``carry0`` (a differentiable QR,
    :func:`flossing_exponents`) and takes one Adam step on their sum of squares, with every gradient entry
    clipped to 3× its running RMS (:func:`clip_to_adam_rms`). Only ``variables["params"]`` changes (BN
    running statistics are kept as they are).

    Args:
        cell: one of our cells (``gradflow.make_cell``) or a linen cell whose variables are a dict with a
            ``"params"`` entry (anything ``gradflow.as_step`` accepts with such variables).
        variables: ``{"params": ..., ...}``.
        xs: the inputs driving the trajectory: an array (T, B, input_size), the same sequence every step, or
            a function ``key -> (T, B, input_size)`` drawing a fresh sequence every step (recommended: one
            fixed sequence lets the optimizer fit that sequence's exponents, which then differ from those
            of fresh inputs; a tanh RNN at gain 0.5 flossed to λ₁ = 0.000 on its sequence measured −0.13 to
            −0.2 on fresh ones). T of a few hundred steps: the exponents of short sequences are noisy.
        k: number of exponents pushed to zero (1 <= k <= n = the batch's state size).
        steps: number of Adam steps (>= 1).
        learning_rate: a float (constant), an optax schedule, or None for :func:`floss_schedule` (cosine
            decay from :data:`DEFAULT_LEARNING_RATE` to 1% of it over ``steps``).
        train: the cell's mode (BN batch statistics, dropout).
        key: PRNG key: the QR's random start, the keys passed to ``xs`` (a function) and, for a cell with
            dropout in train mode, the dropout masks (default ``jax.random.key(0)``).
        carry0: h_0 (default: ``cell.initialize_carry(B)``, our cells only). With BN in train mode prefer a
            random h_0: a zero state makes W_hh h_0 constant over the batch.
        transient: initial steps not averaged into the exponents (default T // 10).
        state_window: see :func:`flossing_exponents` (default 25).
        progress: optional callable receiving ``(step, loss, exponents)`` every step (host values).

    Returns:
        The variables with flossed ``params``.

    Raises:
        ValueError: bad arguments (k, steps, variables without params, missing carry0), non-finite loss.

    Example:
        >>> import jax, gradflow
        >>> cell = gradflow.make_cell("tanh", 4, 2, gain=3.0)
        >>> v = gradflow.init_cell(cell, jax.random.key(0))
        >>> xs = jax.random.normal(jax.random.key(1), (40, 2, 2))
        >>> v2 = gradflow.floss(cell, v, xs, steps=5)
        >>> sorted(v2["params"]) == sorted(v["params"])
        True
    """
    xs, sample, carry0, lr = _floss_setup(cell, variables, xs, steps, learning_rate, carry0)
    transient = xs.shape[0] // 10 if transient is None else transient
    key = prng_key("key", key)
    key = jax.random.key(0) if key is None else key
    k_drop, k_q, k_x = jax.random.split(key, 3)
    has_key = isinstance(cell, GradflowCell) and train and cell.spec.dropout > 0
    step = as_step(cell, variables, train=train, key=k_drop if has_key else None)  # eager checks
    validate_inputs(step, carry0, xs)
    flossing_exponents(step, carry0, xs[:1], k=k, key=k_q)  # checks k (shapes only, traced below)
    if isinstance(transient, bool) or not isinstance(transient, (int, np.integer)):
        raise ValueError(f"transient must be an int, got {transient!r}")
    window = _check_window(state_window)
    update = compiled(_update_core, cell, bool(train), int(k), int(transient), has_key, window)
    params, opt_state = variables["params"], _ADAM.init(variables["params"])
    for i in range(int(steps)):
        rate = float(lr(i)) if callable(lr) else float(lr)
        x_i = xs if sample is None else sample(jax.random.fold_in(k_x, i))
        params, opt_state, val, lam = update(params, opt_state, rate, variables, carry0, x_i, k_drop, k_q)
        if progress is not None or i == int(steps) - 1:
            val = float(val)
            if not math.isfinite(val):
                raise ValueError(f"the flossing loss became non-finite at step {i + 1}: lower learning_rate")
            if progress is not None:
                progress(i + 1, val, np.asarray(lam))
    out = {**variables, "params": params}
    check_finite(out, "the flossed variables")
    return out
