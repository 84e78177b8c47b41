"""Shared experiment helpers of the analyses: cells at initialization, their inputs.

The measurements themselves (compiled once per cell shape with the variables, inputs and keys as traced
arguments, so sweeping gains or seeds reuses one compilation) are in ``gradflow.measure``; growth rates are
``gradflow.growth_rate``.

- :func:`setup`: a cell, its variables (seeded), a random carry and Gaussian inputs.
- :func:`fit_rate`: ``gradflow.growth_rate`` as the (rate, stderr) pair the analyses store.
- verdicts (explodes / neutral / vanishes) come from ``gradflow.summary.verdict_of``, the one verdict
  function.

Conventions: rates are natural log per step; ``train=True`` means BN uses batch statistics (the batch is
analysed as one state of size n = B·d) and dropout is on, as during training.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import gradflow
from gradflow import fitting, measure
from gradflow.cache import cached

#: Cell options that only scale initial values: the cell is built and initialized without them and the
#: variables are scaled (W_hh by the gain ratio, every BN / LN scale set to its γ), so that one compilation
#: serves every gain / γ. ``tests/test_analyses.py`` checks the result equals ``init_cell`` of
#: ``make_cell(preset, ..., gain=g, bn_gamma_init=γ)``.
INIT_ONLY = frozenset({"gain", "bn_gamma_init", "ln_gamma_init"})


def with_gain(cell, variables: dict, gain) -> dict:
    """``variables`` with W_hh rescaled from the cell's gain to ``gain`` (traceable: gain may be a tracer)."""
    if cell.spec.gain == 0:
        raise ValueError("cannot rescale a W_hh initialised with gain 0")
    return measure.with_scales(variables, w_hh_factor=gain / cell.spec.gain)


def _scaled_variables(cell, variables: dict, options: dict) -> dict:
    if "gain" in options:
        variables = with_gain(cell, variables, float(options["gain"]))
    scales = {}
    for name, sub in variables["params"].items():
        for prefix, opt in (("bn_", "bn_gamma_init"), ("ln_", "ln_gamma_init")):
            if isinstance(sub, dict) and "scale" in sub and name.startswith(prefix) and opt in options:
                scales[name] = float(options[opt])
    return measure.with_scales(variables, scales=scales)


def setup(preset: str, d: int, input_size: int, batch: int, T: int, seed: int, input_scale: float = 1.0,
          h0_scale: float = 1.0, burn_in: int = 0, train: bool = True, **options):
    """A cell at initialization with its carry and inputs.

    Args:
        preset: a name in ``gradflow.CELLS``, or a cell object (:func:`as_cell`: one of ours, or a user's
            flax.linen cell, which then keeps its own state size and ignores ``d`` and ``options``).
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
        carry0 = measure.burn(cell, bool(train), variables, carry0, xb, k_drop)
        carry0 = {**carry0, "t": jnp.zeros_like(carry0["t"])}
    return cell, variables, carry0, xs, k_drop


def setup_parts(preset: str, d: int, input_size: int, batch: int, T: int, seed: int, input_scale: float = 1.0,
                h0_scale: float = 1.0, burn_in: int = 0, **options):
    """:func:`setup` before its burn-in: (cell, variables, random carry0, xs, dropout key, burn-in inputs
    (burn_in, B, input_size)). ``burn_carry(cell, train)(variables, carry0, xb, key)`` finishes it."""
    cell = as_cell(preset, d, input_size, **{k: v for k, v in options.items() if k not in INIT_ONLY})
    k_init, k_x, k_drop, k_h = jax.random.split(jax.random.key(seed), 4)
    variables = _scaled_variables(cell, measure.init_variables(cell, int(batch), k_init),
                                  {k: v for k, v in options.items() if k in INIT_ONLY})
    xs = input_scale * jax.random.normal(k_x, (T, batch, input_size), cell.dtype)
    carry0 = cell.initialize_carry(batch)
    keys = iter(jax.random.split(k_h, 4))
    carry0 = {k: (h0_scale * jax.random.normal(next(keys), v.shape, v.dtype) if k in ("h", "c") else v)
              for k, v in carry0.items()}
    xb = input_scale * jax.random.normal(next(keys), (max(int(burn_in), 0), batch, input_size), cell.dtype)
    return cell, variables, carry0, xs, k_drop, xb


def as_cell(cell, d: int, input_size: int, **options):
    """A gradflow cell from a name in ``gradflow.CELLS`` (built with ``d`` and ``options``), one of our cell
    objects (used as is; its input size must be ``input_size``) or a user's flax.linen cell
    (``gradflow.fitting.wrap_cell``: it keeps its own state size). The one option an object takes is
    ``dtype``: a linen cell with a ``param_dtype`` field is cloned in it (flax's cells carry that dtype).

    Raises:
        ValueError: an object of another kind, other options given with an object, a wrong input size, or a
            cell that does not compute in the requested ``dtype``.
    """
    if isinstance(cell, str):
        return measure.cell_for(cell, d, input_size, **options)
    dtype = options.pop("dtype", None)
    if options:
        raise ValueError(f"cell options {sorted(options)} apply to a named cell only, not to {cell!r}")
    if isinstance(cell, gradflow.cells.GradflowCell):
        if cell.input_size != int(input_size):
            raise ValueError(f"{cell!r} takes inputs of size {cell.input_size}, the task gives {input_size}")
    elif isinstance(cell, nn.Module):  # cached: one wrapped cell per (module, input size), compiles reused
        module = cell.clone(param_dtype=dtype) if dtype and hasattr(cell, "param_dtype") else cell
        n_in = int(input_size)
        cell = cached(("user_cell", module, n_in), lambda: fitting.wrap_cell(module, n_in))
    else:
        raise ValueError(f"a cell must be a name in gradflow.CELLS, a gradflow cell or a flax.linen cell; "
                         f"got {type(cell).__name__}")
    if dtype is not None and cell.dtype != jnp.dtype(dtype):
        raise ValueError(f"{cell!r} computes in {cell.dtype}, the analysis asks for {dtype}: build it in "
                         f"{dtype} (a linen cell: its param_dtype)")
    return cell


def burn_carry(cell, train: bool, variables, carry0, xb, key):
    """The burn-in of :func:`setup` (traceable): run ``xb`` from ``carry0``, then reset the step counter."""
    c = measure.final_carry(cell, train, variables, carry0, xb, key)
    return {**c, "t": jnp.zeros_like(c["t"])}


def log_lags(T: int, n: int = 16) -> tuple[int, ...]:
    """About ``n`` distinct integer lags from 1 to T, spaced evenly on a log scale (1 and T included)."""
    return tuple(int(v) for v in np.unique(np.round(np.geomspace(1, T, n)).astype(int)))


# ---------------------------------------------------------------------------------------------- fits


def fit_rate(lags, log_norms, lag_min: int = 1, lag_max: int | None = None) -> tuple[float, float]:
    """(rate, stderr) of ``gradflow.growth_rate(log_norms, lags, min_lag=lag_min, max_lag=lag_max)``: the
    least-squares slope of ln‖·‖ against lag in ln per step (the stderr is the fit residual's; consecutive
    lags are correlated, so it is a lower bound)."""
    g = gradflow.growth_rate(np.asarray(log_norms, np.float64), np.asarray(lags), min_lag=lag_min,
                             max_lag=lag_max)
    return g.rate, g.stderr
