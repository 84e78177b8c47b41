"""One call for the main numbers of a recurrence: growth rate with an honest uncertainty, top Lyapunov
exponents with a convergence check, a verdict, spectra at a few lags and the mean-field prediction.

Example:
    >>> import jax, jax.numpy as jnp
    >>> W = 0.9 * jnp.eye(4)
    >>> s = summary(lambda h, x: h @ W.T + x, jnp.zeros((2, 4)), jnp.zeros((60, 2, 4)), k=2)
    >>> round(s.rate, 4), s.verdict
    (-0.1054, 'vanishes')
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from gradflow.cells import make_cell
from gradflow.checks import flag, int_at_least, nonneg_float, nonneg_int, positive_int, prng_key
from gradflow.lyapunov import exponent_statistics, qr_log_diagonals
from gradflow.per_example import ExamplePlan
from gradflow.progress import reporting, resolve, say
from gradflow.specs import PRESETS
from gradflow.spectra import SpectrumResult, growth_rate, spectra
from gradflow.statemap import is_traced, validate_inputs
from gradflow.streaming import streaming_log_norms
from gradflow.theory import predict_rate

__all__ = ["Summary", "summary", "verdict_of", "THRESHOLD", "PREDICTED", "NEEDS_INPUT_VARIANCE"]

#: The presets :func:`gradflow.theory.predict_rate` has a mean-field prediction for.
PREDICTED = ("tanh", "linear", "bn_notanh", "bn_tanh", "ln_notanh", "ln_tanh")
#: Presets whose predicted rate depends on the variance of the input drive (``sigma_x2``).
NEEDS_INPUT_VARIANCE = ("tanh", "ln_tanh")

THRESHOLD = 0.01
"""ln/step: |rate| <= 0.01 is "neutral" (a norm changes by less than a factor e per 100 steps), as in the
analyses."""


def verdict_of(rate: float, threshold: float = THRESHOLD) -> str:
    """"explodes" if rate > threshold, "vanishes" if rate < -threshold, else "neutral"."""
    if rate > threshold:
        return "explodes"
    if rate < -threshold:
        return "vanishes"
    return "neutral"


@dataclasses.dataclass(frozen=True)
class Summary:
    """The result of :func:`summary`.

    Attributes:
        rate: growth rate of ||∂h_T/∂h_t||_F per step of lag (natural log), fitted over ``fit_window``.
        rate_stderr: its uncertainty: the standard error of the mean of the per-example rates
            (``uncertainty == "examples"``), or of the slopes of ``segments`` consecutive lag segments
            (``"segments"``, one example or a batch-coupled step). Not the fit residual, which is far smaller.
        uncertainty: "examples" or "segments".
        unit_rates: (U,) the per-example rates or per-segment slopes the uncertainty comes from.
        intercept: fitted log norm at lag 0 (mean over examples).
        fit_window: (min_lag, max_lag) of the fit.
        verdict: "explodes" / "neutral" / "vanishes": rate against ±``threshold`` ln/step.
        threshold: the verdict's threshold (0.01 ln/step by default).
        exponents: (k,) top Lyapunov exponents (mean over examples in per-example mode), descending.
        exponents_stderr: (k,) standard errors from consecutive segments of the post-transient steps.
        exponent_halves: (2, k) the exponents from the first and the second half of the post-transient steps.
        converged: False when the halves disagree by more than 3 combined standard errors (a warning was
            issued: use a longer sequence or a larger transient).
        spectra: SpectrumResult at a few lags (per-example: fields with a leading batch axis). Singular
            values below the precision of the computation are NaN (``spectra.resolved`` False); the repr
            counts them instead of a warning (at long lags of a vanishing cell most are, in float32).
        prediction: mean-field prediction of the rate from gradflow.theory, or None.
        prediction_note: where the prediction comes from, or why there is none.
        lags: (T,) the lags of ``log_norms``.
        log_norms: (U_e, T) log Frobenius norms (one row per example, or one row).
        per_example: whether the step was applied to each example alone.
    """

    rate: float
    rate_stderr: float
    uncertainty: str
    unit_rates: np.ndarray
    intercept: float
    fit_window: tuple
    verdict: str
    threshold: float
    exponents: np.ndarray
    exponents_stderr: np.ndarray
    exponent_halves: np.ndarray
    converged: bool
    spectra: SpectrumResult
    prediction: float | None
    prediction_note: str
    lags: np.ndarray
    log_norms: np.ndarray
    per_example: bool

    def __repr__(self) -> str:
        pred = "none" if self.prediction is None else f"{self.prediction:+.4f}"
        exps = ", ".join(f"{e:+.4f}" for e in np.asarray(self.exponents)[:4])
        more = ", …" if np.size(self.exponents) > 4 else ""
        return (
            f"Summary(rate={self.rate:+.4f} ± {self.rate_stderr:.4f} ln/step ({self.uncertainty}, "
            f"{np.size(self.unit_rates)}), verdict={self.verdict!r} (±{self.threshold}), "
            f"exponents=[{exps}{more}] (converged={self.converged}), prediction={pred}, "
            f"spectra at lags {np.asarray(self.spectra.lags).tolist()}{self._unresolved()}, "
            f"T={np.size(self.lags)}, "
            f"per_example={self.per_example})"
        )

    def _unresolved(self) -> str:
        ok = self.spectra.resolved
        bad = 0 if ok is None else int(np.sum(~np.asarray(ok)))
        return f" ({bad} of {np.size(ok)} singular values unresolved: NaN)" if bad else ""

    def to_dict(self) -> dict:
        """Plain Python values (floats, lists, strings): JSON-ready."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, SpectrumResult):
                v = {k: np.asarray(a).tolist() for k, a in v._asdict().items() if a is not None}
            elif isinstance(v, (np.ndarray, jax.Array)):
                v = np.asarray(v).tolist()
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    def plot(self):
        """A matplotlib Figure: log norm against lag with the fitted rate, and the singular-value spectra."""
        import matplotlib.pyplot as plt

        fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
        lags = np.asarray(self.lags)
        for row in np.atleast_2d(self.log_norms):
            ax.plot(lags, row, color="0.6", lw=0.7)
        lo, hi = self.fit_window
        x = np.linspace(lo, hi, 50)
        ax.plot(x, self.intercept + self.rate * x, "C3--", lw=1.5,
                label=f"rate {self.rate:+.4f} ± {self.rate_stderr:.4f} ln/step ({self.verdict})")
        ax.set(xlabel="lag T − t", ylabel="log ‖∂h_T/∂h_t‖_F", title="norm against lag")
        ax.legend(fontsize=8)
        log_sv = np.asarray(self.spectra.log_singular_values)
        if log_sv.ndim == 3:  # per example: average the log spectra
            log_sv = log_sv.mean(axis=0)
        for i, lag in enumerate(np.asarray(self.spectra.lags)):
            bx.plot(np.arange(1, log_sv.shape[1] + 1), log_sv[i], marker=".", lw=1, label=f"lag {lag}")
        bx.set(xlabel="index i", ylabel="log σ_i", title="singular values")
        bx.legend(fontsize=8)
        fig.tight_layout()
        return fig


def _segment_slopes(y, lags, lo, hi, segments):
    """Slopes of log norm against lag in ``segments`` consecutive lag ranges inside [lo, hi]."""
    order = np.argsort(lags)
    x, y = np.asarray(lags, np.float64)[order], np.asarray(y, np.float64)[order]
    keep = (x >= lo) & (x <= hi) & np.isfinite(y)
    x, y = x[keep], y[keep]
    parts = np.array_split(np.arange(x.size), segments)
    return np.array([np.polyfit(x[p], y[p], 1)[0] for p in parts if p.size >= 2])


def _rate_part(log_f, lags, min_lag, segments):
    """(rate, stderr, kind, unit rates, intercept, window) from log norms (U, T)."""
    T = log_f.shape[-1]
    lo, hi = int(min_lag), T
    fits = [growth_rate(row, lags, min_lag=lo) for row in log_f]
    rates = np.array([g.rate for g in fits])
    intercept = float(np.mean([g.intercept for g in fits]))
    if rates.size >= 2:
        return float(rates.mean()), float(rates.std(ddof=1) / math.sqrt(rates.size)), "examples", rates, \
            intercept, (lo, hi)
    slopes = _segment_slopes(log_f[0], lags, lo, hi, segments)
    se = float(slopes.std(ddof=1) / math.sqrt(slopes.size)) if slopes.size >= 2 else float("nan")
    return float(rates[0]), se, "segments", slopes, intercept, (lo, hi)


def _lyapunov_part(step, carry0, xs, k, transient, per_example, key, segments=10, progress=None):
    logs = qr_log_diagonals(step, carry0, xs, k=k, key=key, per_example=per_example, progress=progress)
    logs = np.asarray(logs)
    logs = logs[..., transient:, :]
    if logs.ndim == 3:  # per example: each example's columns in its own descending order, then averaged
        order = np.argsort(-logs.mean(axis=1), axis=-1)
        logs = np.take_along_axis(logs, order[:, None, :], axis=-1).mean(axis=0)
    exps, se = (np.asarray(a) for a in exponent_statistics(jnp.asarray(logs), segments))
    m = logs.shape[0] // 2
    halves = [exponent_statistics(jnp.asarray(part), max(2, segments // 2)) for part in (logs[:m], logs[m:])]
    (h1, s1), (h2, s2) = ((np.asarray(a), np.asarray(b)) for a, b in halves)
    tol = 3 * np.sqrt(s1**2 + s2**2) + 1e-6  # floor: 1e-6 ln/step, below any meaningful difference
    converged = bool(np.all(np.abs(h1 - h2) <= tol))
    if not converged:
        i = int(np.argmax(np.abs(h1 - h2) / tol))
        warnings.warn(
            f"summary: the Lyapunov exponents have not converged: exponent {i + 1} is {h1[i]:+.5f} over the "
            f"first half of the {logs.shape[0]} post-transient steps and {h2[i]:+.5f} over the second, more "
            "than 3 standard errors apart; use a longer sequence (or a larger transient)",
            RuntimeWarning,
            stacklevel=3,
        )
    return exps, se, np.stack([h1, h2]), converged


def _check_preset(preset, theory_options) -> dict:
    """Refuse an unknown preset name or theory option up front (before any computation); the options."""
    if preset is None:
        if theory_options:
            raise ValueError("summary: theory_options without preset=: name the preset the options are for")
        return {}
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"summary: unknown preset {preset!r}; known cells: {', '.join(PRESETS)} "
                         f"(the mean field covers {', '.join(PREDICTED)})")
    if theory_options is None:
        return {}
    if not isinstance(theory_options, dict):
        raise ValueError(f"summary: theory_options must be a dict, got {type(theory_options).__name__}")
    allowed = set(inspect.signature(predict_rate).parameters) - {"name"}
    unknown = sorted(set(theory_options) - allowed)
    if unknown:
        raise ValueError(f"summary: unknown theory_options {unknown}; predict_rate takes {sorted(allowed)}")
    return dict(theory_options)


def _inputs_nonzero(xs) -> bool:
    """Whether any input is nonzero (eager; True when traced: the inputs cannot be looked at)."""
    leaves = jax.tree_util.tree_leaves(xs)
    if is_traced(*leaves):
        return True
    return any(bool(np.any(np.asarray(x) != 0)) for x in leaves)


def _prediction(preset, opts, hidden_size, batch_size, has_input):
    """(prediction or None, note). The input drive is taken into account: ``has_input`` follows ``xs``
    unless given, and a preset whose rate depends on the input variance (tanh, ln_tanh) gets no prediction
    (with a warning) for nonzero inputs unless ``sigma_x2`` is given."""
    if preset is None:
        return None, "no prediction: pass preset= (a gradflow.theory.predict_rate family) to get one"
    if preset not in PREDICTED:
        return None, f"no prediction: the mean field covers {', '.join(PREDICTED)}, not {preset!r}"
    opts = {"hidden_size": hidden_size, "batch_size": batch_size, "has_input": has_input, **opts}
    if preset in NEEDS_INPUT_VARIANCE and opts["has_input"] and "sigma_x2" not in opts:
        why = (f"the inputs xs are nonzero and the {preset!r} mean field depends on their drive: pass "
               "theory_options={'sigma_x2': Var[(W_xh x_t)_i]} (the variance of the input product per unit), "
               "or has_input=False for the input-free rate")
        warnings.warn(f"summary: no prediction: {why}", RuntimeWarning, stacklevel=3)
        return None, f"no prediction: {why}"
    try:
        rate = float(predict_rate(preset, **opts))
    except ValueError as e:  # a limit of the theory (e.g. BN in eval mode): the summary stands without it
        return None, f"no prediction for {preset!r}: {e}"
    return rate, f"gradflow.theory.predict_rate({preset!r}, {opts})"


def _preset_mismatch(preset, carry0, hidden_size, coupled) -> str | None:
    """Why ``preset`` does not describe a step with this carry (and batch coupling), or None."""
    B = _batch_size(carry0)
    ours = make_cell(preset, hidden_size, 1).initialize_carry(B)
    want = sorted(tuple(np.shape(x)) for x in jax.tree_util.tree_leaves(ours)
                  if jnp.issubdtype(jnp.result_type(x), jnp.floating))
    got = sorted(tuple(np.shape(x)) for x in jax.tree_util.tree_leaves(carry0)
                 if jnp.issubdtype(jnp.result_type(x), jnp.inexact))
    if want != got:
        return f"its state leaves have shapes {want}, the step's carry {got}"
    if coupled is not None and coupled != PRESETS[preset].has_bn:
        return ("it has batch normalization (train mode couples the examples of a batch) but the step treats "
                "them independently" if PRESETS[preset].has_bn else
                "the step couples the examples of the batch (batch statistics?) but the preset does not")
    return None


def _quiet_spectra(step, carry0, xs, lags, wrt, per_example):
    say("spectra")
    # The summary reports both itself: plain values beyond float32's range keep exact logs, and the singular
    # values below the precision of the computation (NaN) are counted in its repr.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*outside .*range", RuntimeWarning)
        warnings.filterwarnings("ignore", ".*lie below the precision", RuntimeWarning)
        return spectra(step, carry0, xs, lags=lags, wrt=wrt, per_example=per_example)


def _resolve_per_example(step, carry0, xs, per_example, need_coupling=False):
    """(per_example, B, coupled): auto (None) is per-example when the batch has B > 1 uncoupled examples;
    ``coupled`` says whether the step couples the examples (None when not looked at or B = 1)."""
    if per_example is False and not need_coupling:
        return False, 1, None
    try:
        plan = ExamplePlan.build(step, carry0, xs)
    except ValueError:
        if per_example:
            raise
        return False, 1, (True if _batch_size(carry0) > 1 else None)
    coupled = False if plan.B > 1 else None
    if per_example is False or (per_example is None and plan.B == 1):
        return False, 1, coupled
    return True, plan.B, coupled


def _check_arguments(T, k, transient, min_lag, segments, threshold, per_example):
    """The checked (k, transient, min_lag, segments, threshold); ValueError naming a bad one."""
    if per_example is not None:
        flag("per_example", per_example)
    k = positive_int("k", k)
    transient = T // 10 if transient is None else nonneg_int("transient", transient)
    if transient > T - 4:
        raise ValueError(f"transient must leave at least 4 of the T = {T} steps for the exponents, got "
                         f"{transient}")
    min_lag = max(1, T // 10) if min_lag is None else positive_int("min_lag", min_lag)
    if min_lag > T - 2:
        raise ValueError(f"min_lag must leave at least 3 lags (<= T - 2 = {T - 2}) for the rate fit, got "
                         f"{min_lag}")
    steps = T - transient
    segments = int_at_least("segments", segments, 2)
    if segments > steps // 2:
        raise ValueError(f"segments must be <= half the {steps} post-transient steps ({steps // 2}: each "
                         f"half of them is cut into segments // 2 >= 1 parts), got {segments}")
    return k, transient, min_lag, segments, nonneg_float("threshold", threshold)


def _hidden_size(carry0, m):
    if isinstance(carry0, dict) and "h" in carry0 and np.ndim(carry0["h"]) == 2:
        return int(np.shape(carry0["h"])[1])
    return int(m)


def summary(
    step, carry0, xs, *, k=8, transient=None, min_lag=None, lags=None, per_example=None, segments=10,
    threshold=THRESHOLD, preset=None, theory_options=None, key=None, wrt=None, progress=None,
) -> Summary:
    """Growth rate, Lyapunov exponents, verdict, spectra and mean-field prediction of a recurrence at once.

    Args:
        step, carry0, xs, wrt: as in :func:`gradflow.jacobians` (xs time-major: (T, B, ...)).
        k: number of Lyapunov exponents (capped at the state size).
        transient: steps discarded before averaging the exponents (default T // 10).
        min_lag: smallest lag in the rate fit (default max(1, T // 10): short lags carry the transient).
        lags: lags of the spectra (default 1, T // 10, T // 2, T).
        per_example: None (default: per example when the batch has several uncoupled examples), True or
            False (the whole batch state, as the engine's default).
        segments: segments for the uncertainties when there is one example (and for the exponents).
        threshold: the verdict's threshold in ln/step (default 0.01, as in the analyses).
        preset, theory_options: optional: the preset the step is (a name in ``gradflow.CELLS``) and keyword
            options of :func:`gradflow.theory.predict_rate` (gain, gamma, sigma_x2, ...; hidden_size and
            batch_size default to the carry's, has_input to whether ``xs`` has a nonzero entry). An unknown
            name or option raises; a preset whose state shapes or batch coupling differ from the step's
            warns. Without a preset, or for a preset the theory does not cover, ``prediction`` is None; so
            too (with a warning) for tanh / ln_tanh driven by nonzero inputs without ``sigma_x2``, whose
            rate depends on the input variance.
        key: PRNG key for the Lyapunov start (default ``jax.random.PRNGKey(0)``).
        progress: None/"auto" (a line per stage when T >= 2000, and the streaming/Lyapunov lines of long
            runs), True, False, or a callable receiving the lines (see :mod:`gradflow.progress`).

    Returns:
        :class:`Summary` (short repr, ``.to_dict()``, ``.plot()``).

    Raises:
        ValueError: T < 8; k, min_lag or segments not a positive int (segments >= 2 and at most half the
            post-transient steps); transient outside [0, T - 4]; threshold negative or not finite;
            per_example not None/True/False; an unknown preset or theory option; a bad key.

    Warns:
        RuntimeWarning when the exponents of the two halves of the sequence disagree beyond their error bars,
        when ``preset`` does not match the step, or when a prediction needs ``sigma_x2``.
    """
    smap, T = validate_inputs(step, carry0, xs, wrt)
    if T < 8:
        raise ValueError(f"summary needs a sequence of at least 8 steps, got T = {T}")
    k, transient, min_lag, segments, threshold = _check_arguments(
        T, k, transient, min_lag, segments, threshold, per_example)
    opts = _check_preset(preset, theory_options)
    key = prng_key("key", key)
    per_example, B, coupled = _resolve_per_example(step, carry0, xs, per_example, preset is not None)
    m = smap.n // B
    if preset is not None:
        why = _preset_mismatch(preset, carry0, _hidden_size(carry0, m), coupled)
        if why:
            warnings.warn(f"summary: preset {preset!r} does not match the step: {why}; its prediction is "
                          "not about this recurrence", RuntimeWarning, stacklevel=2)
    lags = sorted({1, max(1, T // 10), max(1, T // 2), T}) if lags is None else lags
    every = resolve(progress, T, long=T >= 2000)
    inner = progress if progress is not None else "auto"
    with reporting(progress, "summary", every):
        say(f"T = {T}, {f'per example (B = {B})' if per_example else 'whole batch state'}: norms")
        st = streaming_log_norms(step, carry0, xs, wrt=wrt, spectral=None, per_example=per_example,
                                 progress=inner)
    log_f = np.atleast_2d(np.asarray(st.log_frobenius, np.float64))
    lag_arr = np.asarray(st.lags)
    rate, se, kind, units, intercept, window = _rate_part(log_f, lag_arr, min_lag, segments)
    with reporting(progress, "summary", every):
        say(f"rate {rate:+.4f} ± {se:.4f}; Lyapunov exponents")
        k = min(k, smap.n // B if per_example else smap.n)
        exps, exps_se, halves, converged = _lyapunov_part(
            step, carry0, xs, k, transient, per_example, key, segments, inner
        )
        sp = _quiet_spectra(step, carry0, xs, lags, wrt, per_example)
    batch = B if per_example else _batch_size(carry0)
    pred, note = _prediction(preset, opts, _hidden_size(carry0, m), batch, _inputs_nonzero(xs))
    verdict = verdict_of(rate, threshold)
    return Summary(
        rate, se, kind, units, intercept, window, verdict, float(threshold), exps, exps_se, halves, converged,
        sp, pred, note, lag_arr, log_f, per_example,
    )


def _batch_size(carry0):
    shapes = [np.shape(x) for x in jax.tree_util.tree_leaves(carry0) if np.ndim(x) > 0]
    return int(shapes[0][0]) if shapes else 1
