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
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from gradflow.lyapunov import exponent_statistics, qr_log_diagonals
from gradflow.per_example import ExamplePlan
from gradflow.progress import reporting, resolve, say
from gradflow.spectra import SpectrumResult, growth_rate, spectra
from gradflow.statemap import validate_inputs
from gradflow.streaming import streaming_log_norms

__all__ = ["Summary", "summary", "verdict_of", "THRESHOLD"]

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
        spectra: SpectrumResult at a few lags (per-example: fields with a leading batch axis).
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
            f"spectra at lags {np.asarray(self.spectra.lags).tolist()}, T={np.size(self.lags)}, "
            f"per_example={self.per_example})"
        )

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


def _prediction(preset, theory_options, hidden_size, batch_size):
    if preset is None:
        return None, "no prediction: pass preset= (a gradflow.theory.predict_rate family) to get one"
    try:
        from gradflow import theory

        opts = {"hidden_size": hidden_size, "batch_size": batch_size, **(theory_options or {})}
        return float(theory.predict_rate(preset, **opts)), f"gradflow.theory.predict_rate({preset!r}, {opts})"
    except Exception as e:  # the theory covers some presets only; a summary never fails because of it
        return None, f"no prediction for {preset!r}: {type(e).__name__}: {e}"


def _quiet_spectra(step, carry0, xs, lags, wrt, per_example):
    say("spectra")
    with warnings.catch_warnings():  # plain singular values out of float32's range: the logs are kept
        warnings.filterwarnings("ignore", ".*outside .*range", RuntimeWarning)
        return spectra(step, carry0, xs, lags=lags, wrt=wrt, per_example=per_example)


def _resolve_per_example(step, carry0, xs, per_example):
    """(per_example, B): auto (None) is per-example when the batch has B > 1 uncoupled examples."""
    if per_example is False:
        return False, 1
    try:
        plan = ExamplePlan.build(step, carry0, xs)
    except ValueError:
        if per_example:
            raise
        return False, 1
    if per_example is None and plan.B == 1:
        return False, 1
    return True, plan.B


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
        preset, theory_options: optional: a gradflow.theory.predict_rate family ("tanh", "bn_notanh", ...)
            and its keyword options (gain, gamma, ...; hidden_size and batch_size default to the carry's).
            Without them, or when the theory has no prediction, ``prediction`` is None.
        key: PRNG key for the Lyapunov start (default ``jax.random.PRNGKey(0)``).
        progress: None/"auto" (a line per stage when T >= 2000, and the streaming/Lyapunov lines of long
            runs), True, False, or a callable receiving the lines (see :mod:`gradflow.progress`).

    Returns:
        :class:`Summary` (short repr, ``.to_dict()``, ``.plot()``).

    Warns:
        RuntimeWarning when the exponents of the two halves of the sequence disagree beyond their error bars.
    """
    smap, T = validate_inputs(step, carry0, xs, wrt)
    if T < 8:
        raise ValueError(f"summary needs a sequence of at least 8 steps, got T = {T}")
    per_example, B = _resolve_per_example(step, carry0, xs, per_example)
    m = smap.n // B
    transient = T // 10 if transient is None else int(transient)
    min_lag = max(1, T // 10) if min_lag is None else int(min_lag)
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
        k = min(int(k), smap.n // B if per_example else smap.n)
        exps, exps_se, halves, converged = _lyapunov_part(
            step, carry0, xs, k, transient, per_example, key, segments, inner
        )
        sp = _quiet_spectra(step, carry0, xs, lags, wrt, per_example)
    batch = B if per_example else _batch_size(carry0)
    pred, note = _prediction(preset, theory_options, _hidden_size(carry0, m), batch)
    verdict = verdict_of(rate, threshold)
    return Summary(
        rate, se, kind, units, intercept, window, verdict, float(threshold), exps, exps_se, halves, converged,
        sp, pred, note, lag_arr, log_f, per_example,
    )


def _batch_size(carry0):
    shapes = [np.shape(x) for x in jax.tree_util.tree_leaves(carry0) if np.ndim(x) > 0]
    return int(shapes[0][0]) if shapes else 1
