"""Edge probe: call gradflow's public functions with bad or extreme arguments and classify every outcome.

``python -m docs.edge_probe`` (from the checkout root) runs every case, prints the counts and writes
``docs/edge_probe.md``. ``--only MODULE ...`` restricts the run (nothing is written then, unless ``--out``);
``--timeout S`` sets the per-call limit (20 s). About 3 minutes on one core.

Each case is one call with an independent expectation:

- a bad argument (wrong type, bool for an int, negative or zero size, NaN/inf, wrong shape, empty array, a
  key of the wrong kind, a value outside the documented range) must be refused: a ValueError/TypeError or a
  warning whose message names the argument (or the quantity at fault);
- a valid but extreme call (long lags where norms underflow float32, saturated tanh, gains near 0 or huge,
  values beyond float32's range, float64 arrays without jax x64, BN with a tiny variance) has a reference
  value computed here without gradflow: NumPy float64 closed forms, plain loops, exact fractions.

Classes: ``clear`` (refused, naming the argument or quantity), ``cryptic`` (raised, but the message does not
name it, or an exception type such as KeyError, AttributeError, ZeroDivisionError, OverflowError),
``correct`` (matches the reference within the stated tolerance, or NaN with a warning), ``silent-wrong``
(finite result that disagrees, or a bad argument accepted without a word), ``silent-NaN`` (NaN/inf with no
warning or error), ``hang`` (no result within the timeout), ``warned`` (warns, but returns a wrong value or
accepts a bad argument with a warning that does not name it).
"""

from __future__ import annotations

import argparse
import atexit
import collections
import functools
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("GRADFLOW_PROGRESS", "0")
ROOT = Path(__file__).resolve().parent.parent
if sys.path[:1] != [str(ROOT)]:
    sys.path.insert(0, str(ROOT))  # this checkout's gradflow, not an installed one

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import gradflow as gf  # noqa: E402
from gradflow import capacity, stats, tasks, theory, unit_bn  # noqa: E402
from gradflow import stable as gstable  # noqa: E402
from gradflow import train as gtrain  # noqa: E402

CLASSES = ("clear", "cryptic", "correct", "silent-wrong", "silent-NaN", "hang", "warned")
#: warning categories that say nothing about the call (library deprecations)
NOISE = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
#: NumPy's floating-point warnings say that something overflowed or divided by zero somewhere, not which
#: argument or result is affected: they do not flag a NaN result as inexact
INCIDENTAL = re.compile(r"encountered in|Mean of empty slice|Degrees of freedom <= 0")
NAN, INF = float("nan"), float("inf")
OUT = Path(__file__).resolve().parent / "edge_probe.md"

# ----------------------------------------------------------------------------------------------- framework


class Expect(NamedTuple):
    """What a case expects. ``kind="bad"``: refused, with a message naming one of ``names``. ``kind="ref"``: a
    result equal to ``ref`` (a value, or a zero-argument function computing it) within ``rtol``/``atol``, or
    accepted by ``check(result) -> (ok, detail)``; a refusal naming one of ``names`` is then ``clear``."""

    kind: str
    names: tuple = ()
    ref: Any = None
    check: Callable | None = None
    get: Callable | None = None
    rtol: float = 1e-6
    atol: float = 0.0
    why: str = ""


class Case(NamedTuple):
    module: str
    func: str
    args: str
    call: Callable[[], Any]
    expect: Expect


class Outcome(NamedTuple):
    case: Case
    cls: str
    happened: str
    seconds: float


def bad(*names: str, why: str = "") -> Expect:
    """A bad argument: must be refused by a message naming one of ``names`` (``re:`` prefix: a regex)."""
    plain = [n for n in names if not n.startswith("re:")]
    return Expect("bad", tuple(names), why=why or f"refused, naming {plain[0] if plain else names[0][3:]}")


def ref(value, *, rtol: float = 1e-6, atol: float = 0.0, get=None, names=(), why: str = "") -> Expect:
    """A valid call whose result (or ``get(result)``) must equal ``value`` within the tolerances."""
    return Expect("ref", tuple(names), ref=value, get=get, rtol=rtol, atol=atol, why=why)


def chk(check, why: str, *, names=(), get=None) -> Expect:
    """A valid call whose result (or ``get(result)``) must satisfy ``check(x) -> (ok, detail)``."""
    return Expect("ref", tuple(names), check=check, get=get, why=why)


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException, so that the probed code's ``except Exception`` cannot swallow
    it."""


def _on_alarm(signum, frame):
    raise _Timeout()


def names_in(text: str, names) -> bool:
    """Whether ``text`` names one of ``names`` (as a word, case-insensitive; ``re:...`` entries are
    regexes)."""
    for n in names:
        pat = n[3:] if n.startswith("re:") else r"(?<![A-Za-z0-9_])" + re.escape(n) + r"(?![A-Za-z0-9_])"
        if re.search(pat, text, re.I):
            return True
    return False


def raised_in(exc: BaseException) -> str | None:
    """The third-party package (jax, flax, numpy, ...) whose code raised ``exc``, or None when gradflow (or
    the caller's own code) raised it: the innermost Python frame of its traceback decides."""
    tb = exc.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    parts = path.parts
    if "site-packages" in parts:  # first: the checkout's own .venv lies under ROOT
        i = parts.index("site-packages")
        return parts[i + 1] if i + 1 < len(parts) else "site-packages"
    if path.is_relative_to(ROOT):
        return None
    return path.name


def _short(text: str, n: int = 150) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def numeric_leaves(x) -> list[np.ndarray] | None:
    """The numeric leaves of a result (arrays, numbers, in any pytree), or None when it has none."""
    out = []
    for leaf in jax.tree_util.tree_leaves(x):
        if isinstance(leaf, str):
            continue
        try:
            a = np.asarray(leaf)
        except Exception:  # noqa: BLE001 (PRNG keys and other non-numeric leaves)
            continue
        if a.dtype.kind in "biufc":
            out.append(a)
    return out or None


def all_finite(x) -> bool:
    leaves = numeric_leaves(x)
    return leaves is None or all(bool(np.all(np.isfinite(a))) for a in leaves)


def brief(x) -> str:
    """A short text of a result: numbers, the shape and first values of arrays, the type of other objects."""
    if x is None:
        return "None"
    if isinstance(x, bool | int | float | complex | np.number):
        return f"{x:.6g}" if isinstance(x, float | np.floating) else repr(x)
    if isinstance(x, np.ndarray | jax.Array) and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        a = np.asarray(x)
        if a.ndim == 0:
            return brief(a.item())
        flat = ", ".join(f"{v:.4g}" if a.dtype.kind in "fc" else str(v) for v in a.ravel()[:4])
        return f"{a.dtype}{list(a.shape)} [{flat}{', …' if a.size > 4 else ''}]"
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        first = brief(getattr(x, x._fields[0]))
        return f"{type(x).__name__}({x._fields[0]}={first}, …)"
    if isinstance(x, tuple | list) and len(x) <= 4:
        return "(" + ", ".join(brief(v) for v in x) + ")"
    if isinstance(x, str):
        return repr(_short(x, 40))
    return f"a {type(x).__name__}"


def close(got, want, rtol: float, atol: float) -> bool:
    """Equal within ``atol + rtol·|want|`` elementwise; NaN matches NaN and an inf the same inf only."""
    if want is None or isinstance(want, str):
        return got == want
    try:
        g = np.asarray(got)
        w = np.asarray(want)
    except Exception:  # noqa: BLE001
        return False
    if g.dtype.kind not in "biufc" or w.dtype.kind not in "biufc":
        return False
    if g.shape != w.shape:
        if w.ndim == 0 and g.size == 1:
            g = g.reshape(())
        else:
            return False
    kind = np.complex128 if "c" in (g.dtype.kind, w.dtype.kind) else np.float64
    g, w = g.astype(kind), w.astype(kind)
    if np.any(np.isnan(g) != np.isnan(w)):
        return False
    gi, wi = np.isinf(g), np.isinf(w)
    if np.any(gi != wi) or np.any(g[gi] != w[wi]):
        return False
    ok = np.isfinite(w)
    return bool(np.all(np.abs(g[ok] - w[ok]) <= atol + rtol * np.abs(w[ok])))


def classify(
    expect: Expect,
    result=None,
    exc: BaseException | None = None,
    hung: bool = False,
    caught=(),
    timeout: float = 20.0,
) -> tuple[str, str]:
    """The class of one outcome and a line saying what happened."""
    ws = [w for w in caught if not issubclass(w.category, NOISE)]
    wtext = "; ".join(f"{w.category.__name__}: {_short(w.message, 110)}" for w in ws[:2])
    named_w = any(names_in(str(w.message), expect.names) for w in ws)
    if hung:
        return "hang", f"no result within {timeout:g} s"
    if exc is not None:
        where = raised_in(exc)
        msg = f"{type(exc).__name__}: {_short(exc)}" + (f" [raised in {where}]" if where else "")
        own = where is None  # a library's internal error is cryptic whatever words it contains
        if isinstance(exc, ValueError | TypeError) and own and (names_in(str(exc), expect.names) or named_w):
            return "clear", msg
        return "cryptic", msg
    if expect.kind == "bad":
        got = result
        if expect.get is not None:
            try:
                got = expect.get(result)
            except Exception:  # noqa: BLE001
                got = result
        if named_w:
            return "clear", f"returns {brief(got)}; warns {wtext}"
        if ws:
            return "warned", f"returns {brief(got)}; warns {wtext}"
        leaves = numeric_leaves(got)
        if leaves is not None and not all(bool(np.all(np.isfinite(a))) for a in leaves):
            return "silent-NaN", f"returns {brief(got)}"
        return "silent-wrong", f"accepted: returns {brief(got)}"
    try:
        got = expect.get(result) if expect.get is not None else result
    except Exception as e:  # noqa: BLE001
        return "silent-wrong", f"returns {brief(result)} without the expected field ({type(e).__name__}: {e})"
    if expect.check is not None:
        try:
            ok, detail = expect.check(got)
        except Exception as e:  # noqa: BLE001
            ok, detail = False, f"returns {brief(got)} (check failed: {type(e).__name__}: {_short(e, 60)})"
    else:
        want = expect.ref() if callable(expect.ref) else expect.ref
        ok, detail = close(got, want, expect.rtol, expect.atol), f"returns {brief(got)}"
    if ok:
        return "correct", detail + (f"; warns {wtext}" if ws else "")
    finite = all_finite(got)
    if any(not INCIDENTAL.search(str(w.message)) for w in ws) and not finite:
        return "correct", f"{detail} (flagged); warns {wtext}"
    if ws:
        return "warned", f"{detail}; warns {wtext}"
    return ("silent-wrong" if finite else "silent-NaN"), detail


def run_case(case: Case, timeout: float = 20.0) -> Outcome:
    """Call ``case.call()`` under an alarm of ``timeout`` seconds with every warning recorded; classify."""
    result, exc, hung = None, None, False
    t0 = time.perf_counter()
    filtering = jax.config.jax_traceback_filtering
    jax.config.update("jax_traceback_filtering", "off")  # keep JAX's frames: who raised decides the class
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            result = case.call()
            try:
                jax.block_until_ready(result)
            except Exception:  # noqa: BLE001 (not a pytree of arrays)
                pass
        except _Timeout:
            hung = True
        except Exception as e:  # noqa: BLE001 (every exception is an outcome)
            exc = e
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            jax.config.update("jax_traceback_filtering", filtering)
    seconds = time.perf_counter() - t0
    cls, happened = classify(case.expect, result, exc, hung, caught, timeout)
    return Outcome(case, cls, happened, seconds)


def expected_text(e: Expect) -> str:
    if e.why:
        return e.why
    if e.kind == "bad":
        return "refused"
    if e.check is not None:
        return "passes its check"
    want = "(computed)" if callable(e.ref) else brief(e.ref)
    return f"≈ {want} (rtol {e.rtol:g}{f', atol {e.atol:g}' if e.atol else ''})"


# ------------------------------------------------------------------------------------ argument variants


def _label(v) -> str:
    if isinstance(v, np.ndarray | jax.Array):
        if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            return f"key{list(v.shape)}"
        return f"{np.asarray(v).dtype}{list(v.shape)}"
    if isinstance(v, float) and math.isfinite(v) and abs(v) >= 1e6:
        return f"{v:g}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2**40:
        return f"2**{int(math.log2(abs(v)))}" if v > 0 else f"-2**{int(math.log2(-v))}"
    return _short(repr(v), 40)


def int_variants(lo: int, hi: int | None = None, *, none_ok: bool = False) -> list[tuple[Any, str]]:
    """Bad values for an int argument that must be >= lo (and <= hi)."""
    vals = [lo - 1] + ([-1] if lo - 1 > -1 else []) + [True, 2.5, "3", NAN, [lo + 1]]
    if not none_ok:
        vals.append(None)
    if hi is not None:
        vals += [hi + 1, 2**63]
    return [(v, _label(v)) for v in vals]


def float_variants(
    lo: float | None = None,
    *,
    lo_open: bool = False,
    hi: float | None = None,
    hi_open: bool = False,
    inf_ok: bool = False,
    none_ok: bool = False,
) -> list[tuple[Any, str]]:
    """Bad values for a float argument with an optional range [lo, hi] (open ends with lo_open/hi_open)."""
    vals: list = [NAN, True, "0.5", [0.5], 1j]
    if not inf_ok:
        vals += [INF, -INF]
    elif lo is not None:
        vals.append(-INF)
    if not none_ok:
        vals.append(None)
    if lo is not None:
        vals.append(lo - 1.0)
        if lo_open:
            vals.append(lo)
    if hi is not None:
        vals.append(hi + 0.5)
        if hi_open:
            vals.append(hi)
    return [(v, _label(v)) for v in vals]


KEY = jax.random.key(0)


def key_variants(required: bool = False) -> list[tuple[Any, str]]:
    vals = [
        (1.5, "1.5"),
        ("key", "'key'"),
        (np.array([1, 2, 3], np.uint32), "uint32[3]"),
        (jax.random.split(KEY, 3), "3 stacked keys"),
        (np.zeros(2, np.float32), "float32[2]"),
        (True, "True"),
        (-1, "-1"),
    ]
    return vals + ([(None, "None")] if required else [])


def vary(
    module: str, func: str, fn: Callable, base: dict, arg: str, variants, names=None, why: str = ""
) -> list[Case]:
    """One case per bad value of ``arg`` (the others from ``base``), each expected refused naming ``arg``."""
    names = tuple(names) if names else (arg,)
    out = []
    for value, label in variants:
        kw = dict(base, **{arg: value})
        out.append(Case(module, func, f"{arg}={label}", functools.partial(fn, **kw), bad(*names, why=why)))
    return out


def case(module: str, func: str, args: str, call: Callable, expect: Expect) -> Case:
    return Case(module, func, args, call, expect)


# ----------------------------------------------------------------------------------------- references


def ref_gauss(f, q: float) -> float:
    """E[f(√q z)], z ~ N(0, 1), by the trapezoid rule in a = √q z on a grid that resolves both the Gaussian
    (scale √q) and f (features within |a| < 60): independent of gradflow's Gauss–Hermite quadrature."""
    if q == 0:
        return float(f(np.zeros(1))[0])
    s = math.sqrt(q)
    a = np.union1d(np.linspace(-14 * s, 14 * s, 40001), np.linspace(-60.0, 60.0, 60001))
    a = a[np.abs(a) <= 14 * s]
    w = np.exp(-0.5 * (a / s) ** 2) / (s * math.sqrt(2 * math.pi))
    return float(np.trapezoid(f(a) * w, a))


def _sech2(a):
    e = np.exp(-np.abs(a))
    return (2 * e / (1 + e * e)) ** 2


def ref_tanh_q(g: float, s: float = 0.0) -> float:
    """Fixed point of q = g² E[tanh²(√q z)] + s by bisection (0 in the ordered regime without drive)."""
    if s == 0 and g <= 1:
        return 0.0
    F = lambda q: g * g * ref_gauss(lambda a: np.tanh(a) ** 2, q) + s - q
    lo, hi = (1e-300 if s == 0 else 0.0), g * g + s + 1.0
    if s == 0:
        lo = 1e-12 * min(1.0, g * g - 1)  # F > 0 just above 0 when g > 1
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if F(mid) > 0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return 0.5 * (lo + hi)


def ref_chi1(g: float, s: float = 0.0) -> float:
    return g * g * ref_gauss(lambda a: _sech2(a) ** 2, ref_tanh_q(g, s))


def ref_rank(s) -> np.ndarray:
    """Roy–Vetterli effective rank in float64 with the scale divided out (exp of the entropy of s/Σs)."""
    s = np.asarray(s, np.float64)
    m = s.max(axis=-1, keepdims=True)
    p = s / np.where(m > 0, m, 1.0)
    tot = p.sum(axis=-1, keepdims=True)
    p = np.where(tot > 0, p / np.where(tot > 0, tot, 1.0), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return np.where(tot[..., 0] > 0, np.exp(h), 0.0)


def ref_mw_p(a, b) -> tuple[float, float]:
    """U of a and the exact two-sided permutation p-value, by a plain loop over every split."""
    import itertools

    def u(x, y):
        return sum(1.0 if xi > yi else 0.5 if xi == yi else 0.0 for xi in x for yi in y)

    pooled = list(a) + list(b)
    n, m = len(a), len(b)
    u0, mean = u(a, b), n * m / 2
    count = total = 0
    for idx in itertools.combinations(range(n + m), n):
        x = [pooled[i] for i in idx]
        y = [pooled[i] for i in range(n + m) if i not in idx]
        total += 1
        count += abs(u(x, y) - mean) >= abs(u0 - mean) - 1e-9
    return u0, count / total


def ref_ranks(x) -> np.ndarray:
    x = list(map(float, x))
    return np.array([sum(1.0 for y in x if y < v) + (sum(1.0 for y in x if y == v) + 1) / 2 for v in x])


def ref_spearman(x, y) -> float:
    rx, ry = ref_ranks(x), ref_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    d = math.sqrt(float(np.sum(rx * rx) * np.sum(ry * ry)))
    return NAN if d == 0 else float(np.sum(rx * ry) / d)


def frac_state_moment(lam: float, rho: float) -> float:
    """(1 + ρλ) / ((1 − ρλ)(1 − λ²)) in exact rational arithmetic (the arguments as exact binary
    fractions)."""
    lam_, rho_ = Fraction(lam), Fraction(rho)
    return float((1 + rho_ * lam_) / ((1 - rho_ * lam_) * (1 - lam_ * lam_)))


def loop_state_moment(lam: float, rho: float, terms: int = 4000) -> float:
    """Σ_{k,l} λ^{k+l} ρ^{|k−l|} by a plain double loop (truncated; for |λ| well below 1)."""
    total = 0.0
    for k in range(terms):
        lk = lam**k
        if abs(lk) < 1e-30:
            break
        for j in range(terms):
            lj = lam**j
            if abs(lj) < 1e-30:
                break
            total += lk * lj * rho ** abs(k - j)
    return total


def frac_sensitivity_moment(lam: float, rho: float) -> float:
    l_, r_ = Fraction(lam), Fraction(rho)
    num = (1 + l_ * l_) * (1 - l_ * l_ * r_ * r_) + 2 * l_ * r_ * (1 - l_ * l_)
    return float(num / ((1 - l_ * l_) ** 3 * (1 - l_ * r_) ** 2))


def ref_lru_init_rate(n: int, r_min: float, r_max: float) -> float:
    """½ ∫₀¹ N u^{N−1} ln(r_min² + (r_max² − r_min²) u) du by the trapezoid rule on a fine grid in u."""
    u = np.linspace(0.0, 1.0, 400001)
    f = n * u ** (n - 1) * np.log(r_min**2 + (r_max**2 - r_min**2) * u)
    return float(0.5 * np.trapezoid(f, u))


def log_fro_diag(d, lag) -> float:
    """ln ‖diag(d)^lag‖_F in float64 without under/overflow."""
    logs = 2 * lag * np.log(np.abs(np.asarray(d, np.float64)))
    m = logs.max()
    return float(0.5 * (m + np.log(np.sum(np.exp(logs - m)))))


# ------------------------------------------------------------------------------------------------ theory

SQ = lambda a: a**2  # noqa: E731
#: what a refusal of a valid call whose intermediate values leave float64 must name to count as clear
OVERFLOW = ("overflow", "overflows", "float64", "underflow")


def _theory_cases() -> list[Case]:
    M, out = "theory", []
    add = out.append
    T = theory

    # gauss_expectation(f, q, n_points)
    fn = T.gauss_expectation
    out += vary(M, "gauss_expectation", fn, {"f": SQ, "q": 1.0}, "q", float_variants(lo=0.0))
    out += vary(M, "gauss_expectation", fn, {"f": SQ, "q": 1.0}, "n_points", int_variants(2))
    out += vary(M, "gauss_expectation", fn, {"q": 1.0}, "f", [(None, "None"), ("x²", "'x²'"), (3, "3")])
    for q in (2.0, 0.0, 1e-300, 1e300):
        add(case(M, "gauss_expectation", f"f=a², q={q:g}", functools.partial(fn, SQ, q), ref(q, rtol=1e-12)))
    add(
        case(
            M,
            "gauss_expectation",
            "f=cos, q=100",
            functools.partial(fn, np.cos, 100.0),
            ref(math.exp(-50.0), atol=1e-6, why="e^-50 (atol 1e-6)"),
        )
    )
    add(
        case(
            M,
            "gauss_expectation",
            "f=tanh², q=1e12",
            functools.partial(fn, lambda a: np.tanh(a) ** 2, 1e12),
            ref(lambda: ref_gauss(lambda a: np.tanh(a) ** 2, 1e12), rtol=1e-4),
        )
    )

    # normalized_coordinate_expectation(f, n)
    fn = T.normalized_coordinate_expectation
    for v, lab in [(2, "2"), (0, "0"), (-1, "-1"), (True, "True"), (2.5, "2.5"), ("4", "'4'"), (NAN, "nan")]:
        add(
            case(
                M,
                "normalized_coordinate_expectation",
                f"n={lab}",
                functools.partial(fn, SQ, v),
                bad("n", "normalized size"),
            )
        )
    for n in (3, 4, 10**9, None):
        add(
            case(
                M,
                "normalized_coordinate_expectation",
                f"f=y², n={_label(n)}",
                functools.partial(fn, SQ, n),
                ref(1.0, rtol=1e-9),
            )
        )

    # tanh_variance_map(q, gain, sigma_x2, sigma_b2)
    fn = T.tanh_variance_map
    base = {"q": 1.0, "gain": 2.0}
    for arg in ("q", "gain", "sigma_x2", "sigma_b2"):
        out += vary(M, "tanh_variance_map", fn, base, arg, float_variants(lo=0.0))
    for q, g in [(1.0, 2.0), (1e300, 1.0), (1.0, 1e-200), (0.5, 1.0)]:
        add(
            case(
                M,
                "tanh_variance_map",
                f"q={q:g}, gain={g:g}",
                functools.partial(fn, q, g),
                ref(lambda q=q, g=g: g * g * ref_gauss(lambda a: np.tanh(a) ** 2, q), rtol=1e-6),
            )
        )
    add(
        case(
            M,
            "tanh_variance_map",
            "q=1, gain=1e200",
            functools.partial(fn, 1.0, 1e200),
            ref(
                INF,
                names=("gain", "overflow", "float64"),
                why="inf (beyond float64) or refused naming overflow",
            ),
        )
    )

    # tanh_fixed_point(gain, sigma_x2, sigma_b2, dropout, tol)
    fn = T.tanh_fixed_point
    for arg in ("gain", "sigma_x2", "sigma_b2"):
        out += vary(M, "tanh_fixed_point", fn, {"gain": 2.0}, arg, float_variants(lo=0.0))
    out += vary(
        M, "tanh_fixed_point", fn, {"gain": 2.0}, "dropout", float_variants(lo=0.0, hi=1.0, hi_open=True)
    )
    out += vary(
        M,
        "tanh_fixed_point",
        fn,
        {"gain": 2.0},
        "tol",
        [
            (NAN, "nan"),
            (-1.0, "-1.0"),
            (INF, "inf"),
            (True, "True"),
            ("1e-13", "'1e-13'"),
            (None, "None"),
            (1j, "1j"),
        ],
    )
    for g, s, p in [
        (2.0, 0.0, 0.0),
        (1.5, 0.0, 0.0),
        (1e-300, 0.0, 0.0),
        (0.999, 0.0, 0.0),
        (1.01, 0.0, 0.0),
        (1e6, 0.0, 0.0),
        (2.0, 1e300, 0.0),
        (2.0, 1e-300, 0.0),
        (2.0, 0.0, 0.999999),
    ]:
        geff = g / math.sqrt(1 - p)
        add(
            case(
                M,
                "tanh_fixed_point",
                f"gain={g:g}, sigma_x2={s:g}, dropout={p:g}",
                functools.partial(fn, g, s, dropout=p),
                ref(lambda geff=geff, s=s: ref_tanh_q(geff, s), rtol=1e-5),
            )
        )
    add(
        case(
            M,
            "tanh_fixed_point",
            "gain=1e200",
            functools.partial(fn, 1e200),
            ref(
                INF, names=("gain", "overflow", "float64"), why="inf (q* ≈ 1e400) or refused naming overflow"
            ),
        )
    )

    # tanh_chi1 / tanh_rnn_rate
    # χ₁ = g² below the edge of chaos (q* = 0); the rate is then ln g (g² may underflow, ln g does not)
    chi1 = lambda g: ref_chi1(g) if g > 1 else g * g
    rate = lambda g: 0.5 * math.log(ref_chi1(g)) if g > 1 else (math.log(g) if g > 0 else -INF)
    for name, fn, f in [("tanh_chi1", T.tanh_chi1, chi1), ("tanh_rnn_rate", T.tanh_rnn_rate, rate)]:
        out += vary(M, name, fn, {"gain": 2.0}, "gain", float_variants(lo=0.0))
        out += vary(M, name, fn, {"gain": 2.0}, "dropout", float_variants(lo=0.0, hi=1.0, hi_open=True))
        for g in (2.0, 0.5, 1e-300, 1e6):
            add(case(M, name, f"gain={g:g}", functools.partial(fn, g), ref(lambda g=g, f=f: f(g), rtol=1e-5)))
        add(case(M, name, "gain=0", functools.partial(fn, 0.0), ref(f(0.0))))
    big = 0.5 * math.log(1e200 * (4.0 / 3.0) / math.sqrt(2 * math.pi))
    add(
        case(
            M,
            "tanh_rnn_rate",
            "gain=1e200",
            functools.partial(T.tanh_rnn_rate, 1e200),
            ref(
                big,
                rtol=1e-6,
                names=("overflow", "float64", "gain"),
                why=f"≈ {big:.6g} (½ ln(g·4/(3√(2π)))) or refused naming overflow",
            ),
        )
    )

    # input_drive_variance(W_xh, x_second_moment, gates)
    fn = T.input_drive_variance
    W = np.full((8, 4), 0.5)
    for Wv, lab, want in [
        (W, "0.5·ones(8,4)", 2.0),
        (np.full((8, 4), 1e150), "1e150·ones(8,4)", 8e300),
        (W.astype(np.float32), "float32 0.5·ones", 2.0),
    ]:
        add(
            case(
                M,
                "input_drive_variance",
                f"W_xh={lab}, x_second_moment=2",
                functools.partial(fn, Wv, 2.0),
                ref(want, rtol=1e-12),
            )
        )
    add(
        case(
            M,
            "input_drive_variance",
            "W_xh=0.5·ones(8,4), gates=4",
            functools.partial(fn, W, 1.0, 4),
            ref(1.0, rtol=1e-12),
        )
    )
    Wbad = [
        (np.full((8, 4), NAN), "NaN(8,4)"),
        (np.ones(4), "ones(4)"),
        (np.ones((2, 4, 4)), "ones(2,4,4)"),
        (np.zeros((0, 4)), "zeros(0,4)"),
        (np.array([["a"]]), "[['a']]"),
        (None, "None"),
        (np.full((8, 4), INF), "inf(8,4)"),
    ]
    out += vary(M, "input_drive_variance", fn, {}, "W_xh", Wbad)
    out += vary(M, "input_drive_variance", fn, {"W_xh": W}, "gates", int_variants(1) + [(3, "3 (8 rows)")])
    out += vary(M, "input_drive_variance", fn, {"W_xh": W}, "x_second_moment", float_variants(lo=0.0))

    # effective_gain(gain, dropout)
    fn = T.effective_gain
    out += vary(M, "effective_gain", fn, {"dropout": 0.0}, "gain", float_variants(lo=0.0))
    out += vary(
        M, "effective_gain", fn, {"gain": 1.0}, "dropout", float_variants(lo=0.0, hi=1.0, hi_open=True)
    )
    p = 1 - 2**-53
    for g, d, want in [
        (2.0, 0.75, 4.0),
        (1e-300, 0.0, 1e-300),
        (1.0, p, 1 / math.sqrt(float(1 - Fraction(p)))),
        (1e308, 0.75, INF),
    ]:
        add(
            case(
                M,
                "effective_gain",
                f"gain={g:g}, dropout={d!r}",
                functools.partial(fn, g, d),
                ref(want, rtol=1e-12, names=("overflow", "gain")),
            )
        )

    # linear_lyapunov_spectrum(W)
    fn = T.linear_lyapunov_spectrum
    rot = 0.5 * np.array([[0.0, -1.0], [1.0, 0.0]])
    for Wv, lab, want in [
        (np.diag([2.0, 0.5]), "diag(2, .5)", [math.log(2), -math.log(2)]),
        (np.diag([1e-300, 1e300]), "diag(1e-300, 1e300)", [math.log(1e300), math.log(1e-300)]),
        (np.zeros((2, 2)), "zeros(2,2)", [-INF, -INF]),
        (np.array([[0.0, 1.0], [0.0, 0.0]]), "Jordan block, eigenvalue 0", [-INF, -INF]),
        (rot, "0.5·rotation", [math.log(0.5)] * 2),
        (np.array([[0.3]]), "[[0.3]]", [math.log(0.3)]),
        (np.zeros((0, 0)), "zeros(0,0)", np.zeros(0)),
    ]:
        add(
            case(
                M,
                "linear_lyapunov_spectrum",
                f"W={lab}",
                functools.partial(fn, Wv),
                ref(np.array(want), rtol=1e-9),
            )
        )
    out += vary(
        M,
        "linear_lyapunov_spectrum",
        fn,
        {},
        "W",
        [
            (np.full((2, 2), NAN), "NaN(2,2)"),
            (np.full((2, 2), INF), "inf(2,2)"),
            (np.ones((2, 3)), "ones(2,3)"),
            (np.ones(3), "ones(3)"),
            (np.ones((2, 2, 2)), "ones(2,2,2)"),
            (None, "None"),
            (np.array([["a", "b"], ["c", "d"]]), "strings(2,2)"),
        ],
    )

    # bn_eval_matrix(W_hh, scale, var, eps)
    fn = T.bn_eval_matrix
    W2 = np.array([[1.0, 2.0], [3.0, 4.0]])
    base = {"W_hh": W2, "scale": np.array([1.0, 2.0]), "var": np.array([3.0, 0.0]), "eps": 1e-5}
    for s_, v_, e_, lab in [
        ([1.0, 2.0], [3.0, 0.0], 1e-5, "var=[3, 0]"),
        ([1.0, 1.0], [1e-300, 0.0], 1e-300, "var=[1e-300, 0], eps=1e-300"),
        ([1.0, 1.0], [0.0, 0.0], 1e-5, "var=0 (tiny-variance BN)"),
    ]:
        want = (np.array(s_) / np.sqrt(np.array(v_) + e_))[:, None] * W2
        add(
            case(
                M, "bn_eval_matrix", lab, functools.partial(fn, W2, np.array(s_), np.array(v_), e_), ref(want)
            )
        )
    out += vary(
        M,
        "bn_eval_matrix",
        fn,
        base,
        "var",
        [
            (np.array([-1.0, 1.0]), "[-1, 1]"),
            (np.array([-1e-6, 1.0]), "[-1e-6, 1] (negative)"),
            (np.array([NAN, 1.0]), "[nan, 1]"),
            (np.ones(3), "ones(3)"),
        ],
    )
    out += vary(
        M, "bn_eval_matrix", fn, dict(base, var=np.zeros(2)), "eps", float_variants(lo=0.0, lo_open=True)
    )
    out += vary(
        M,
        "bn_eval_matrix",
        fn,
        base,
        "scale",
        [(np.array([NAN, 1.0]), "[nan, 1]"), (np.ones(3), "ones(3)"), (None, "None")],
    )
    out += vary(
        M,
        "bn_eval_matrix",
        fn,
        base,
        "W_hh",
        [(np.ones((2, 3)), "ones(2,3)"), (np.full((2, 2), NAN), "NaN(2,2)"), (None, "None")],
    )

    # cell_eval_matrix(spec, variables, t)
    fn = T.cell_eval_matrix
    Wl = np.array([[0.5, 0.1], [0.0, 0.9]], np.float32)
    lin_vars = {"params": {"W_hh": Wl, "W_xh": np.ones((2, 1), np.float32), "b": np.zeros(2, np.float32)}}
    var_rows = np.array([[1.0, 2.0], [3.0, 4.0], [0.25, 0.5]])
    bn_vars = {
        "params": {
            "W_hh": Wl,
            "W_xh": np.ones((2, 1), np.float32),
            "bn_h": {"scale": np.array([1.0, 2.0]), "bias": np.zeros(2)},
            "bn_x": {"scale": np.ones(2), "bias": np.zeros(2)},
        },
        "batch_stats": {
            "bn_h": {"mean": np.zeros((3, 2)), "var": var_rows},
            "bn_x": {"mean": np.zeros((3, 2)), "var": np.ones((3, 2))},
        },
    }
    eps = gf.PRESETS["bn_notanh"].bn_eps
    bn_ref = lambda row: (
        (np.array([1.0, 2.0]) / np.sqrt(var_rows[row] + eps))[:, None] * Wl.astype(np.float64)
    )
    add(
        case(
            M,
            "cell_eval_matrix",
            "'linear'",
            functools.partial(fn, "linear", lin_vars),
            ref(Wl.astype(float)),
        )
    )
    for t, row in [(None, 2), (0, 0), (1, 1), (10**9, 2)]:
        add(
            case(
                M,
                "cell_eval_matrix",
                f"'bn_notanh', t={_label(t)}",
                functools.partial(fn, "bn_notanh", bn_vars, t),
                ref(bn_ref(row), rtol=1e-6),
            )
        )
    out += vary(
        M,
        "cell_eval_matrix",
        fn,
        {"spec": "bn_notanh", "variables": bn_vars},
        "t",
        [(-1, "-1"), (-4, "-4"), (True, "True"), (2.5, "2.5"), ("1", "'1'"), (NAN, "nan"), ([1], "[1]")],
    )
    for sp, lab in [
        ("tanh", "'tanh'"),
        ("foo", "'foo'"),
        (3, "3"),
        (None, "None"),
        ("ln_notanh", "'ln_notanh'"),
    ]:
        add(
            case(
                M,
                "cell_eval_matrix",
                f"spec={lab}",
                functools.partial(fn, sp, lin_vars),
                bad("spec", "cell", "linear", "identity", str(sp)),
            )
        )
    out += vary(
        M,
        "cell_eval_matrix",
        fn,
        {"spec": "bn_notanh"},
        "variables",
        [({}, "{}"), (None, "None"), ({"params": {}}, "{'params': {}}"), (lin_vars, "variables without BN")],
        names=("variables", "params", "W_hh", "batch_stats", "bn_h"),
    )

    # bn_train_chi / bn_train_rate / bn_feedforward_rate
    F = Fraction
    lin_chi = lambda gh, gx, B: float(F(gh) ** 2 / (F(gh) ** 2 + F(gx) ** 2) * F(B - 2, B - 3))
    fn = T.bn_train_chi
    for gh, gx, B, b, lab, want in [
        (1.0, 0.0, 8, 0.0, "gamma_h=1, B=8", 1.2),
        (1.0, 1.0, 32, 0.0, "gamma_h=gamma_x=1, B=32", lin_chi(1, 1, 32)),
        (1e-200, 0.0, 8, 0.0, "gamma_h=1e-200, B=8", 1.2),
        (1e200, 0.0, 8, 0.0, "gamma_h=1e200, B=8", 1.2),
        (1.0, 1e-200, 8, 0.0, "gamma_x=1e-200", 1.2),
        (-1.0, 0.0, 8, 0.0, "gamma_h=-1", 1.2),
        (1.0, 0.0, 10**9, 0.0, "B=10**9", (10**9 - 2) / (10**9 - 3)),
        (1.0, 0.0, 8, 1e10, "bias=1e10", 1.2),
    ]:
        add(
            case(
                M,
                "bn_train_chi",
                lab,
                functools.partial(fn, gh, gx, B, "linear", b),
                ref(want, rtol=1e-6, names=OVERFLOW),
            )
        )
    add(
        case(
            M,
            "bn_train_chi",
            "tanh, gamma_h=1e-8, B=8",
            functools.partial(fn, 1e-8, 0.0, 8, "tanh"),
            ref(1.2, rtol=1e-6, why="≈ 1.2 (tanh is linear at γ = 1e-8)"),
        )
    )
    base = {"gamma_h": 1.0, "gamma_x": 0.0, "batch_size": 8}
    out += vary(M, "bn_train_chi", fn, base, "batch_size", int_variants(4))
    for arg in ("gamma_h", "gamma_x", "bias"):
        out += vary(M, "bn_train_chi", fn, base, arg, float_variants())
    out += vary(M, "bn_train_chi", fn, base, "dropout", float_variants(lo=0.0, hi=1.0, hi_open=True))
    out += vary(
        M,
        "bn_train_chi",
        fn,
        base,
        "activation",
        [("relu", "'relu'"), (None, "None"), (3, "3"), ("TANH", "'TANH'")],
        names=("activation",),
    )
    fn = T.bn_train_rate
    for gh, gx, B, want in [
        (1.0, 0.0, 8, 0.5 * math.log(1.2)),
        (0.0, 0.0, 8, -INF),
        (1e200, 0.0, 8, 0.5 * math.log(1.2)),
    ]:
        add(
            case(
                M,
                "bn_train_rate",
                f"gamma_h={gh:g}, B={B}",
                functools.partial(fn, gh, gx, B),
                ref(want, rtol=1e-6, names=OVERFLOW),
            )
        )
    out += vary(M, "bn_train_rate", fn, base, "batch_size", int_variants(4)[:5])
    fn = T.bn_feedforward_rate
    for B in (4, 8, 10**9):
        add(
            case(
                M,
                "bn_feedforward_rate",
                f"batch_size={_label(B)}",
                functools.partial(fn, B),
                ref(0.5 * math.log1p(1.0 / (B - 3)), rtol=1e-6),
            )
        )
    out += vary(M, "bn_feedforward_rate", fn, {}, "batch_size", int_variants(4))
    out += vary(
        M, "bn_feedforward_rate", fn, {"batch_size": 8}, "activation", [("relu", "'relu'"), (None, "None")]
    )

    # ln_chi / ln_rate / ln_sum_chi / ln_sum_rate
    fn = T.ln_chi
    lnc = lambda gh, gx, b, d: float(
        F(gh) ** 2 / (F(gh) ** 2 + F(gx) ** 2 + F(b) ** 2) * (1 if d is None else F(d - 2, d - 3))
    )
    for gh, gx, d, b in [
        (1.0, 0.0, None, 0.0),
        (1.0, 0.0, 4, 0.0),
        (1.0, 1.0, 8, 0.0),
        (1e-200, 0.0, None, 0.0),
        (1e200, 0.0, None, 0.0),
        (1.0, 0.0, 10**9, 0.0),
        (1.0, 0.0, 8, 2.0),
    ]:
        add(
            case(
                M,
                "ln_chi",
                f"gamma_h={gh:g}, gamma_x={gx:g}, hidden_size={_label(d)}, bias={b:g}",
                functools.partial(fn, gh, gx, d, "linear", b),
                ref(lnc(gh, gx, b, d), rtol=1e-6, names=OVERFLOW),
            )
        )
    base = {"gamma_h": 1.0, "gamma_x": 0.0, "hidden_size": 8}
    out += vary(M, "ln_chi", fn, base, "hidden_size", [(v, lab) for v, lab in int_variants(4, none_ok=True)])
    for arg in ("gamma_h", "gamma_x", "bias"):
        out += vary(M, "ln_chi", fn, base, arg, float_variants()[:6])
    out += vary(
        M, "ln_chi", fn, base, "dropout", float_variants(lo=0.0, hi=1.0, hi_open=True)[:6] + [(1.0, "1.0")]
    )
    fn = T.ln_rate
    add(
        case(
            M,
            "ln_rate",
            "gamma_h=1, hidden_size=4",
            functools.partial(fn, 1.0, 0.0, 4),
            ref(0.5 * math.log(2.0), rtol=1e-9),
        )
    )
    add(case(M, "ln_rate", "gamma_h=0", functools.partial(fn, 0.0, 0.0, 8), ref(-INF)))
    out += vary(M, "ln_rate", fn, {"gamma_h": 1.0}, "hidden_size", int_variants(4, none_ok=True)[:5])
    fn = T.ln_sum_chi
    lsc = lambda gm, g, sx, d: float(
        F(gm) ** 2 * F(g) ** 2 / (F(g) ** 2 * F(gm) ** 2 + F(sx)) * (1 if d is None else F(d - 2, d - 3))
    )
    for gm, g, sx, d in [
        (1.0, 1.0, 0.0, None),
        (1.0, 2.0, 4.0, None),
        (1.0, 1.0, 0.0, 4),
        (1.0, 1e-200, 0.0, None),
        (1.0, 1e200, 0.0, None),
        (1e-200, 1.0, 0.0, None),
        (1.0, 1e-3, 1e-300, None),
    ]:
        add(
            case(
                M,
                "ln_sum_chi",
                f"gamma={gm:g}, gain={g:g}, sigma_x2={sx:g}, hidden_size={_label(d)}",
                functools.partial(fn, gm, g, sx, d),
                ref(lsc(gm, g, sx, d), rtol=1e-6, names=OVERFLOW),
            )
        )
    base = {"gamma": 1.0, "gain": 1.0}
    out += vary(M, "ln_sum_chi", fn, base, "gain", float_variants(lo=0.0))
    out += vary(M, "ln_sum_chi", fn, base, "sigma_x2", float_variants(lo=0.0))
    out += vary(M, "ln_sum_chi", fn, base, "gamma", float_variants()[:6])
    out += vary(M, "ln_sum_chi", fn, base, "hidden_size", int_variants(4, none_ok=True)[:6])
    fn = T.ln_sum_rate
    add(case(M, "ln_sum_rate", "gamma=1, gain=1", functools.partial(fn, 1.0, 1.0), ref(0.0, atol=1e-12)))
    add(
        case(
            M,
            "ln_sum_rate",
            "gamma=1, gain=1e-200",
            functools.partial(fn, 1.0, 1e-200),
            ref(0.0, atol=1e-12, names=OVERFLOW, why="0 (σ_x² = 0: the gain cancels)"),
        )
    )

    # predict_rate
    fn = T.predict_rate
    pr = lambda name, **kw: functools.partial(fn, name, **dict({"hidden_size": 8, "batch_size": 8}, **kw))
    for args, call, want in [
        ("'linear', gain=2", pr("linear", gain=2.0), math.log(2.0)),
        ("'linear', gain=0", pr("linear", gain=0.0), -INF),
        ("'linear', gain=2, dropout=0.75", pr("linear", gain=2.0, dropout=0.75), math.log(4.0)),
        (
            "'bn_notanh', B=8, gamma=gamma_x=1",
            pr("bn_notanh", gamma=1.0, gamma_x=1.0),
            0.5 * math.log(0.5 * 1.2),
        ),
        (
            "'bn_notanh', B=8, gamma=1, has_input=False",
            pr("bn_notanh", gamma=1.0, has_input=False),
            0.5 * math.log(1.2),
        ),
        (
            "'ln_notanh', d=8, gamma=1, gamma_x=0",
            pr("ln_notanh", gamma=1.0, gamma_x=0.0),
            0.5 * math.log(6 / 5),
        ),
        ("'tanh', gain=2", pr("tanh", gain=2.0), lambda: 0.5 * math.log(ref_chi1(2.0))),
    ]:
        add(case(M, "predict_rate", args, call, ref(want, rtol=1e-5)))
    for nm in ("foo", None, 3, "lstm", "TANH"):
        add(case(M, "predict_rate", f"name={nm!r}", pr(nm), bad("name", str(nm))))
    pbase = {"name": "bn_notanh", "hidden_size": 8, "batch_size": 8}
    out += vary(M, "predict_rate", fn, pbase, "hidden_size", int_variants(1))
    out += vary(M, "predict_rate", fn, pbase, "batch_size", int_variants(1))
    out += vary(M, "predict_rate", fn, dict(pbase, name="tanh"), "gain", float_variants(lo=0.0))
    out += vary(
        M, "predict_rate", fn, pbase, "gamma", float_variants(none_ok=True)[:5], names=("gamma", "gamma_h")
    )
    out += vary(M, "predict_rate", fn, pbase, "gamma_x", float_variants(none_ok=True)[:5])
    out += vary(M, "predict_rate", fn, dict(pbase, name="tanh"), "sigma_x2", float_variants(lo=0.0))
    out += vary(M, "predict_rate", fn, pbase, "has_input", [("yes", "'yes'"), (1, "1"), (None, "None")])
    out += vary(M, "predict_rate", fn, pbase, "train", [("yes", "'yes'"), (0, "0"), (None, "None")])
    out += vary(
        M,
        "predict_rate",
        fn,
        dict(pbase, name="linear"),
        "dropout",
        float_variants(lo=0.0, hi=1.0, hi_open=True),
    )

    # tied_weight_correction(W_hh, gain)
    fn = T.tied_weight_correction
    D = np.diag([2.0, 0.5])
    add(
        case(
            M,
            "tied_weight_correction",
            "diag(2, .5), gain=2",
            functools.partial(fn, D, 2.0),
            ref(0.0, atol=1e-12),
        )
    )
    add(
        case(
            M,
            "tied_weight_correction",
            "diag(2, .5), gain=1e-300",
            functools.partial(fn, D, 1e-300),
            ref(math.log(2.0) - math.log(1e-300), rtol=1e-12),
        )
    )
    out += vary(M, "tied_weight_correction", fn, {"W_hh": D}, "gain", float_variants(lo=0.0, lo_open=True))
    out += vary(
        M,
        "tied_weight_correction",
        fn,
        {"gain": 1.0},
        "W_hh",
        [(np.full((2, 2), NAN), "NaN(2,2)"), (np.ones((2, 3)), "ones(2,3)"), (None, "None")],
        names=("W_hh", "W"),
    )

    # LRU: lru_eigenvalues, lru_rate, lru_spectrum, lru_init_rate
    nu = np.log([0.1, 0.01])
    good = {"nu_log": nu, "theta_log": np.zeros(2)}
    add(
        case(
            M,
            "lru_eigenvalues",
            "nu_log=log[.1, .01], theta_log=0",
            functools.partial(T.lru_eigenvalues, good),
            ref(np.exp(-np.exp(nu) + 1j), rtol=1e-12),
        )
    )
    add(
        case(
            M, "lru_rate", "nu_log=log[.1, .01]", functools.partial(T.lru_rate, good), ref(-0.01, rtol=1e-12)
        )
    )
    add(
        case(
            M,
            "lru_rate",
            "nu_log=[-800, 0]",
            functools.partial(T.lru_rate, {"nu_log": np.array([-800.0, 0.0]), "theta_log": np.zeros(2)}),
            ref(0.0, atol=1e-300),
        )
    )
    add(
        case(
            M,
            "lru_rate",
            "nu_log=[710, 720] (|λ| = e^-e^710)",
            functools.partial(T.lru_rate, {"nu_log": np.array([710.0, 720.0]), "theta_log": np.zeros(2)}),
            ref(-INF, why="-inf (−e^710 overflows float64)"),
        )
    )
    add(
        case(
            M,
            "lru_spectrum",
            "nu_log=log[.1, .01]",
            functools.partial(T.lru_spectrum, good),
            ref(np.array([-0.01, -0.01, -0.1, -0.1]), rtol=1e-12),
        )
    )
    lru_bad = [
        ({}, "{}"),
        ([], "[]"),
        (None, "None"),
        ({"nu_log": nu}, "no theta_log"),
        ({"nu_log": np.array([NAN, 0.0]), "theta_log": np.zeros(2)}, "nu_log with NaN"),
        ({"nu_log": np.zeros(2), "theta_log": np.zeros(3)}, "shapes (2,) and (3,)"),
        ({"nu_log": np.zeros(0), "theta_log": np.zeros(0)}, "empty nu_log"),
    ]
    for fname in ("lru_eigenvalues", "lru_rate", "lru_spectrum"):  # no modes: an empty spectrum, but no rate
        out += vary(
            M,
            fname,
            getattr(T, fname),
            {},
            "params",
            lru_bad if fname == "lru_rate" else lru_bad[:-1],
            names=("params", "nu_log", "theta_log", "empty", "modes"),
        )
    add(
        case(
            M,
            "lru_spectrum",
            "empty nu_log, theta_log",
            functools.partial(T.lru_spectrum, dict(lru_bad[-1][0])),
            ref(np.zeros(0)),
        )
    )
    fn = T.lru_init_rate
    for n, lo, hi, want in [
        (32, 0.0, 1.0, -1 / 64),
        (10**9, 0.0, 1.0, -0.5e-9),
        (1, 0.0, 1e-300, math.log(1e-300) - 0.5),
        (4, 0.5, 0.9, lambda: ref_lru_init_rate(4, 0.5, 0.9)),
        (8, 0.999999, 1.0, lambda: ref_lru_init_rate(8, 0.999999, 1.0)),
    ]:
        add(
            case(
                M,
                "lru_init_rate",
                f"n_modes={_label(n)}, r_min={lo:g}, r_max={hi:g}",
                functools.partial(fn, n, lo, hi),
                ref(want, rtol=1e-5),
            )
        )
    out += vary(M, "lru_init_rate", fn, {}, "n_modes", int_variants(1))
    out += vary(
        M,
        "lru_init_rate",
        fn,
        {"n_modes": 4},
        "r_min",
        float_variants(lo=0.0),
        names=("r_min",),
    )
    out += vary(M, "lru_init_rate", fn, {"n_modes": 4, "r_max": 0.9}, "r_min",
                [(0.95, "0.95 (> r_max = 0.9)")], names=("r_min",))
    out += vary(
        M,
        "lru_init_rate",
        fn,
        {"n_modes": 4},
        "r_max",
        float_variants(lo=0.0, lo_open=True, hi=1.0),
        names=("r_max",),
    )

    # relu_rate_bound(W_hh)
    fn = T.relu_rate_bound
    for Wv, lab, want in [
        (np.diag([3.0, -0.5]), "diag(3, -.5)", math.log(3.0)),
        (np.zeros((2, 2)), "zeros", -INF),
        (1e-300 * np.eye(2), "1e-300·I", math.log(1e-300)),
    ]:
        add(case(M, "relu_rate_bound", f"W_hh={lab}", functools.partial(fn, Wv), ref(want, rtol=1e-12)))
    out += vary(
        M,
        "relu_rate_bound",
        fn,
        {},
        "W_hh",
        [
            (np.full((2, 2), NAN), "NaN(2,2)"),
            (np.ones((2, 3)), "ones(2,3)"),
            (np.ones(2), "ones(2)"),
            (None, "None"),
        ],
    )

    # input_variance_share(gamma_x, gamma_h)
    fn = T.input_variance_share
    for gx, gh, want in [
        (1.0, 1.0, 0.5),
        (1e200, 1e200, 0.5),
        (1e-200, 1e-200, 0.5),
        (0.0, 1.0, 0.0),
        (1e200, 1.0, 1.0),
        (1.0, 1e200, 0.0),
    ]:
        add(
            case(
                M,
                "input_variance_share",
                f"gamma_x={gx:g}, gamma_h={gh:g}",
                functools.partial(fn, gx, gh),
                ref(want, rtol=1e-12, atol=1e-300),
            )
        )
    out += vary(M, "input_variance_share", fn, {"gamma_h": 1.0}, "gamma_x", float_variants(lo=0.0))
    out += vary(
        M, "input_variance_share", fn, {"gamma_x": 1.0}, "gamma_h", float_variants(lo=0.0, lo_open=True)
    )

    # critical_input_gamma(name, batch_size, hidden_size, gamma_h)
    fn = T.critical_input_gamma
    for args, call, want in [
        ("'bn_notanh', batch_size=8", functools.partial(fn, "bn_notanh", batch_size=8), 1 / math.sqrt(5)),
        ("'ln_notanh', hidden_size=4", functools.partial(fn, "ln_notanh", hidden_size=4), 1.0),
        (
            "'bn_notanh', batch_size=10**12",
            functools.partial(fn, "bn_notanh", batch_size=10**12),
            1 / math.sqrt(10**12 - 3),
        ),
        (
            "'bn_notanh', batch_size=8, gamma_h=1e-300",
            functools.partial(fn, "bn_notanh", batch_size=8, gamma_h=1e-300),
            1e-300 / math.sqrt(5),
        ),
    ]:
        add(case(M, "critical_input_gamma", args, call, ref(want, rtol=1e-12)))
    for nm in ("foo", None, 3, "tanh"):
        add(
            case(
                M,
                "critical_input_gamma",
                f"name={nm!r}",
                functools.partial(fn, nm, batch_size=8),
                bad("name", str(nm)),
            )
        )
    out += vary(M, "critical_input_gamma", fn, {"name": "bn_notanh"}, "batch_size", int_variants(4))
    out += vary(
        M,
        "critical_input_gamma",
        fn,
        {"name": "bn_notanh", "batch_size": 8},
        "gamma_h",
        float_variants(lo=0.0, lo_open=True),
    )

    # memory_state_moment / memory_sensitivity_moment (exact fractions; a plain loop for moderate λ)
    for fname, exact in [
        ("memory_state_moment", frac_state_moment),
        ("memory_sensitivity_moment", frac_sensitivity_moment),
    ]:
        fn = getattr(T, fname)
        for lam, rho in [
            (0.9, 0.0),
            (0.9, 0.5),
            (-0.9, 0.3),
            (0.0, 0.0),
            (1e-300, 0.5),
            (0.999999, 0.0),
            (1 - 2**-52, 0.0),
            (-(1 - 2**-52), 0.0),
            (0.5, -0.999999),
        ]:
            add(
                case(
                    M,
                    fname,
                    f"lam={lam!r}, rho={rho!r}",
                    functools.partial(fn, lam, rho),
                    ref(exact(lam, rho), rtol=1e-9),
                )
            )
        out += vary(
            M, fname, fn, {"rho": 0.0}, "lam", float_variants(lo=-1.0, lo_open=True, hi=1.0, hi_open=True)
        )
        out += vary(
            M, fname, fn, {"lam": 0.5}, "rho", float_variants(lo=-1.0, lo_open=True, hi=1.0, hi_open=True)
        )
    add(
        case(
            M,
            "memory_state_moment",
            "lam=0.9, rho=0.5 (plain double loop)",
            functools.partial(T.memory_state_moment, 0.9, 0.5),
            ref(lambda: loop_state_moment(0.9, 0.5), rtol=1e-9),
        )
    )
    return out


def subj(arg: str) -> tuple[str, ...]:
    """Names for a one-letter argument (``a``, ``x``): the letter as the subject of a sentence or quoted,
    not the English article."""
    return (
        rf"re:\b{arg}\b (is|are|holds|has|have|must|contains|should|needs)\b",
        rf"re:['`]{arg}['`]",
        rf"re:\b{arg}\s*=",
        rf"re:\b{arg}\[",
    )


# ------------------------------------------------------------------------------- spectra helpers, stats


def _spectra_helper_cases() -> list[Case]:
    M, out = "spectra", []
    add = out.append
    SV = ("singular_values", "spectrum", "singular values")
    for fname, fn in [("effective_rank", gf.effective_rank), ("condition_number", gf.condition_number)]:
        valid = [
            ([1.0, 1.0, 1.0], "[1, 1, 1]"),
            ([3.0, 2.0, 1.0], "[3, 2, 1]"),
            ([1.0, 0.0, 0.0], "[1, 0, 0]"),
            (jnp.array([1e38] * 3, jnp.float32), "float32 [1e38]*3"),
            ([1e39] * 3, "list [1e39]*3"),
            (np.array([1e-40] * 3), "float64 [1e-40]*3"),
            (np.array([1e200] * 3), "float64 [1e200]*3"),
            (np.array([1e-200] * 3), "float64 [1e-200]*3"),
            (np.array([1.0, 1e-30]), "float64 [1, 1e-30]"),
            (np.zeros(3), "zeros(3)"),
            (np.array([[1.0, 1.0], [1.0, 0.0]]), "[[1, 1], [1, 0]]"),
            (np.array([NAN, 1.0]), "[nan, 1]"),
            (np.array([2e-40, 1e-40]), "float64 [2e-40, 1e-40]"),
            (jnp.array([1e38, 1e-38], jnp.float32), "float32 [1e38, 1e-38]"),
            (np.array([1e100, 1e-100]), "float64 [1e100, 1e-100]"),
            (np.array([2e-46, 1e-46]), "float64 [2e-46, 1e-46] (below float32's subnormals)"),
        ]
        for v, lab in valid:
            a = np.asarray(v, np.float64)
            if fname == "effective_rank":
                want = np.where(np.isnan(a).any(axis=-1), NAN, ref_rank(a))
                why = "0 (the zero matrix has rank 0) or NaN with a warning" if lab == "zeros(3)" else ""
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    want = np.where(
                        a.min(-1) > 0,
                        a.max(-1) / np.where(a.min(-1) > 0, a.min(-1), 1.0),
                        np.where(np.isnan(a).any(-1), NAN, INF),
                    )
                why = ""
            add(
                case(
                    M,
                    fname,
                    lab,
                    functools.partial(fn, v),
                    ref(want, rtol=1e-5, names=("float32", "x64", "float64", "range"), why=why),
                )
            )
        for v, lab in [
            ([], "[]"),
            (np.zeros((2, 0)), "zeros(2,0)"),
            ([-1.0, 1.0], "[-1, 1]"),
            (["a", "b"], "['a', 'b']"),
            (None, "None"),
            ([True, False], "[True, False]"),
            ([1j, 1.0], "[1j, 1]"),
            ([INF, 1.0], "[inf, 1]"),
            ("abc", "'abc'"),
        ]:
            add(
                case(
                    M,
                    fname,
                    f"singular_values={lab}",
                    functools.partial(fn, v),
                    bad(*SV, "empty", "negative"),
                )
            )

    # spectrum_of(result_or_matrices, lags)
    fn = gf.spectrum_of
    Ms = np.stack([np.diag([0.5**lag, 0.25**lag]) for lag in (3, 2, 1)]).astype(np.float32)
    sv = lambda r: r.singular_values
    add(
        case(
            M,
            "spectrum_of",
            "diag(.5, .25)^lag, lags 3,2,1",
            functools.partial(fn, Ms),
            ref(Ms.diagonal(axis1=1, axis2=2).astype(np.float64), rtol=1e-6, get=sv),
        )
    )
    add(
        case(
            M,
            "spectrum_of",
            "same, lags=[1]",
            functools.partial(fn, Ms, [1]),
            ref(np.array([[0.5, 0.25]]), rtol=1e-6, get=sv),
        )
    )
    for scale, lab in [(1e-40, "float64 diag(2e-40, 1e-40)"), (1e200, "float64 diag(2e200, 1e200)")]:
        Md = np.diag([2.0, 1.0])[None] * scale
        add(
            case(
                M,
                "spectrum_of",
                lab,
                functools.partial(fn, Md),
                ref(
                    np.array([[2.0, 1.0]]) * scale,
                    rtol=1e-5,
                    get=sv,
                    names=("float32", "x64", "float64"),
                    why="the float64 singular values, or refused naming float32/x64",
                ),
            )
        )
    out += vary(
        M,
        "spectrum_of",
        fn,
        {"result_or_matrices": Ms},
        "lags",
        [
            (0, "0"),
            (4, "4 (T=3)"),
            (-1, "-1"),
            (1.5, "1.5"),
            ("1", "'1'"),
            ([[1]], "[[1]]"),
            (True, "True"),
            (NAN, "nan"),
        ],
    )
    jr = gf.JacobianResult(None, jnp.ones(3), jnp.ones(3), jnp.arange(3, 0, -1))
    out += vary(
        M,
        "spectrum_of",
        fn,
        {},
        "result_or_matrices",
        [
            (jr, "JacobianResult without matrices"),
            (np.ones((2, 2)), "ones(2,2)"),
            (np.ones((3, 2, 3)), "ones(3,2,3)"),
            (np.full((2, 2, 2), NAN), "NaN(2,2,2)"),
            (None, "None"),
            ("M", "'M'"),
        ],
        names=("matrices", "result_or_matrices", "finite", "NaN", "empty", "T"),
    )

    # growth_rate(log_norms, lags, min_lag, max_lag)
    fn = gf.growth_rate
    lags = np.arange(1, 21)
    y = 0.5 - 0.3 * lags
    rate = lambda r: r.rate
    yinf = y.copy()
    yinf[5] = -INF
    for label, args, kw, want, rtol in [
        ("y = 0.5 − 0.3·lag", (y, lags), {}, -0.3, 1e-9),
        ("y = 1e300·lag", (1e300 * lags, lags), {}, 1e300, 1e-9),
        ("y = 1e-300·lag", (1e-300 * lags, lags), {}, 1e-300, 1e-9),
        ("y = −1e5·lag (float32)", ((-1e5 * lags).astype(np.float32), lags), {}, -1e5, 1e-6),
        ("a -inf at one lag", (yinf, lags), {}, -0.3, 1e-9),
        ("min_lag=5, max_lag=10", (y, lags), {"min_lag": 5, "max_lag": 10}, -0.3, 1e-9),
        ("per example (2, 20)", (np.stack([y, 0.2 * lags]), lags), {}, np.array([-0.3, 0.2]), 1e-9),
    ]:
        add(case(M, "growth_rate", label, functools.partial(fn, *args, **kw), ref(want, rtol=rtol, get=rate)))
    base = {"log_norms": y, "lags": lags}
    out += vary(
        M,
        "growth_rate",
        fn,
        base,
        "min_lag",
        [(NAN, "nan"), ("1", "'1'"), (None, "None"), (True, "True"), (100, "100 (> T)"), (INF, "inf")],
    )
    out += vary(
        M,
        "growth_rate",
        fn,
        base,
        "max_lag",
        [(NAN, "nan"), ("10", "'10'"), (True, "True"), (0, "0"), (-5, "-5")],
    )
    add(
        case(
            M,
            "growth_rate",
            "min_lag=15, max_lag=10",
            functools.partial(fn, y, lags, min_lag=15, max_lag=10),
            bad("min_lag", "max_lag"),
        )
    )
    out += vary(
        M,
        "growth_rate",
        fn,
        {"lags": None},
        "log_norms",
        [
            ([], "[]"),
            ([1.0, 2.0], "[1, 2]"),
            (np.full(10, NAN), "all NaN"),
            (None, "None"),
            (np.ones((2, 2, 5)), "ones(2,2,5)"),
            ("abc", "'abc'"),
        ],
        names=("log_norms", "points", "finite"),
    )
    out += vary(
        M,
        "growth_rate",
        fn,
        {"log_norms": y},
        "lags",
        [(np.arange(5), "arange(5) (20 log norms)"), (np.full(20, NAN), "NaN(20)"), ("x", "'x'")],
    )
    return out


def _stats_cases() -> list[Case]:
    M, out = "stats", []
    add = out.append
    pv = lambda r: np.array([r.u, r.p_value])
    for a, b in [
        ([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]),
        ([1, 1, 2], [1, 2, 2]),
        ([INF, 1, 2], [3, 4, 5]),
        ([1e308, -1e308, 0.0], [1, 2, 3]),
        ([1, 1, 1], [1, 1, 1]),
    ]:
        add(
            case(
                M,
                "mann_whitney",
                f"a={a}, b={b}",
                functools.partial(stats.mann_whitney, a, b),
                ref(np.array(ref_mw_p(a, b)), rtol=1e-9, get=pv),
            )
        )
    A = ("a",) + subj("a") + ("sample", "first sample")
    B = ("b",) + subj("b") + ("sample", "second sample")
    sample_bad = [
        ([], "[]"),
        ([NAN, 1.0], "[nan, 1]"),
        ("abc", "'abc'"),
        (None, "None"),
        ([1j, 2.0], "[1j, 2]"),
    ]
    out += vary(
        M,
        "mann_whitney",
        stats.mann_whitney,
        {"b": [1, 2, 3]},
        "a",
        sample_bad,
        names=A[1:],
        why="refused, naming a",
    )
    out += vary(
        M,
        "mann_whitney",
        stats.mann_whitney,
        {"a": [1, 2, 3]},
        "b",
        sample_bad[:3],
        names=B[1:],
        why="refused, naming b",
    )

    def md_check(want):
        def check(r):
            d, lo, hi = r
            ok = d == want and lo <= hi and (math.isinf(want) or lo <= d <= hi)
            return ok, f"returns ({d:.6g}, {lo:.6g}, {hi:.6g})"

        return check

    fn = stats.median_difference
    add(
        case(
            M,
            "median_difference",
            "a=[1,2,3], b=[4,5,6]",
            functools.partial(fn, [1, 2, 3], [4, 5, 6]),
            chk(md_check(-3.0), "difference −3 inside its interval"),
        )
    )
    add(
        case(
            M,
            "median_difference",
            "a=[inf, inf, 1], b=[1,2,3]",
            functools.partial(fn, [INF, INF, 1], [1, 2, 3]),
            chk(md_check(INF), "difference +inf (infinite values are allowed)"),
        )
    )
    base = {"a": [1, 2, 3], "b": [4, 5, 6]}
    out += vary(
        M, "median_difference", fn, base, "level", float_variants(lo=0.0, lo_open=True, hi=1.0, hi_open=True)
    )
    out += vary(M, "median_difference", fn, base, "resamples", int_variants(1))
    out += vary(
        M, "median_difference", fn, base, "seed", [(-1, "-1"), ("a", "'a'"), (2.5, "2.5"), (True, "True")]
    )
    out += vary(
        M,
        "median_difference",
        fn,
        {"b": [1, 2, 3]},
        "a",
        sample_bad[:3],
        names=A[1:],
        why="refused, naming a",
    )

    fn = functools.partial(stats.spearman, resamples=400)  # the interval is not checked: fewer resamples
    for x, y in [
        ([1, 2, 3, 4], [1, 3, 2, 4]),
        ([1, 2, 3], [3, 2, 1]),
        ([1, 1, 1, 1], [1, 2, 3, 4]),
        ([1, 2, 2, 3], [INF, 1, 2, 3]),
    ]:
        add(
            case(
                M,
                "spearman",
                f"x={x}, y={y}",
                functools.partial(fn, x, y),
                ref(
                    ref_spearman(x, y),
                    rtol=1e-9,
                    get=lambda r: r[0],
                    why="the rank correlation (NaN for a constant sample, as documented)",
                ),
            )
        )
    base = {"x": [1, 2, 3, 4], "y": [1, 3, 2, 4]}
    out += vary(
        M,
        "spearman",
        fn,
        base,
        "y",
        [([1, 2, 3], "3 values (x has 4)"), ([1, NAN, 2, 3], "with NaN"), (None, "None")],
        names=subj("y") + ("paired", "lengths"),
        why="refused, naming y",
    )
    out += vary(
        M,
        "spearman",
        fn,
        {"x": [1, 2], "y": [2, 1]},
        "level",
        [(0.95, "0.95 with 2 pairs")],
        names=("pairs", "at least 3"),
    )
    out += vary(
        M, "spearman", fn, base, "level", float_variants(lo=0.0, lo_open=True, hi=1.0, hi_open=True)[:6]
    )
    out += vary(M, "spearman", stats.spearman, base, "resamples", int_variants(1)[:6])
    out += vary(M, "spearman", fn, base, "seed", [(-1, "-1"), ("a", "'a'"), (2.5, "2.5")])

    fn = stats.rank
    for x in ([3, 1, 2], [1, 1, 2], [INF, 1], [5.0]):
        add(case(M, "rank", f"x={x}", functools.partial(fn, x), ref(ref_ranks(x), rtol=1e-12)))
    out += vary(
        M,
        "rank",
        fn,
        {},
        "x",
        [([NAN, 1.0], "[nan, 1]"), ("abc", "'abc'"), (None, "None")],
        names=subj("x") + ("NaN",),
        why="refused, naming x",
    )
    return out


def _capacity_cases() -> list[Case]:
    M, out = "capacity", []
    add = out.append
    fn = capacity.memory_curve
    u = np.random.default_rng(0).uniform(size=(4000, 20))
    shift = u[:, ::-1][:, :3].copy()
    want = np.array([1.0, 1.0, 1.0, 0.0, 0.0])
    r2 = lambda r: r.r2
    for states, lab in [
        (shift, "delay line of 3"),
        (shift * 1e-150, "delay line × 1e-150"),
        (shift * 1e150, "delay line × 1e150"),
        (shift * 1e200, "delay line × 1e200"),
        (shift.astype(np.float32), "float32 delay line"),
        (np.concatenate([shift, np.ones((4000, 1))], 1), "delay line + a constant feature"),
    ]:
        add(
            case(
                M,
                "memory_curve",
                f"states={lab}, max_lag=5",
                functools.partial(fn, states, u, 5),
                ref(want, atol=0.02, get=r2, names=OVERFLOW, why="r² ≈ [1, 1, 1, 0, 0] (atol 0.02)"),
            )
        )
    add(
        case(
            M,
            "memory_curve",
            "states=zeros(4000, 3)",
            functools.partial(fn, np.zeros((4000, 3)), u, 5),
            ref(np.zeros(5), atol=1e-9, get=r2, why="r² = 0 (no information)"),
        )
    )
    base = {"states": shift, "inputs": u, "max_lag": 5}
    out += vary(M, "memory_curve", fn, base, "ridge", float_variants(lo=0.0))
    out += vary(
        M,
        "memory_curve",
        fn,
        base,
        "test_fraction",
        float_variants(lo=0.0, lo_open=True, hi=1.0, hi_open=True),
    )
    out += vary(M, "memory_curve", fn, base, "max_lag", int_variants(1, 20))
    ns = shift.copy()
    ns[0, 0] = NAN
    out += vary(
        M,
        "memory_curve",
        fn,
        base,
        "states",
        [
            (ns, "a NaN"),
            (shift[:, 0], "1-D"),
            (shift[:100], "100 rows (inputs 4000)"),
            (None, "None"),
            (np.full((4000, 3), "a"), "strings"),
        ],
        names=("states", "non-finite", "shape"),
    )
    out += vary(
        M,
        "memory_curve",
        fn,
        base,
        "inputs",
        [(u[..., None], "3-D"), (np.full_like(u, INF), "inf"), (u[:3], "3 rows")],
        names=("inputs", "non-finite", "shape"),
    )
    add(
        case(
            M,
            "memory_curve",
            "3 sequences",
            functools.partial(fn, shift[:3], u[:3], 2),
            bad("sequences", "test_fraction", "split", "states"),
        )
    )
    return out


# ----------------------------------------------------------------------------------- stable, norm, unit_bn

F32_TINY = float(np.finfo(np.float32).tiny)


def _stable_refs(a: float) -> dict[str, tuple[float, float, float]]:
    """Values, first and second derivatives of tanh, sech², sigmoid and sigmoid' in float64 (no overflow)."""
    if math.isnan(a):
        return {k: (NAN, NAN, NAN) for k in ("tanh", "sech2", "sigmoid", "sigmoid_prime")}
    th = math.tanh(a)
    e2 = math.exp(-2 * abs(a)) if math.isfinite(a) else 0.0
    s2 = 4 * e2 / (1 + e2) ** 2  # sech²(a)
    e = math.exp(-abs(a)) if math.isfinite(a) else 0.0
    sig = 1 / (1 + e) if a >= 0 else e / (1 + e)
    q = e / (1 + e) ** 2
    th2 = math.tanh(a / 2)
    e1 = math.exp(-abs(a)) if math.isfinite(a) else 0.0
    s2h = 4 * e1 / (1 + e1) ** 2  # sech²(a/2)
    return {
        "tanh": (th, s2, -2 * th * s2),
        "sech2": (s2, -2 * th * s2, -2 * s2 * (s2 - 2 * th * th)),
        "sigmoid": (sig, q, -q * th2),
        "sigmoid_prime": (q, -q * th2, q * th2 * th2 - 0.5 * q * s2h),
    }


def _stable_cases() -> list[Case]:
    M, out = "stable", []
    values = [
        0.0,
        1.0,
        -1.0,
        5.0,
        9.5,
        12.0,
        20.0,
        -20.0,
        40.0,
        44.0,
        50.0,
        88.0,
        100.0,
        1e4,
        1e39,
        -1e39,
        NAN,
    ]
    for name in ("tanh", "sech2", "sigmoid", "sigmoid_prime"):
        f = getattr(gstable, name)
        fns = [f, jax.grad(f), jax.grad(jax.grad(f))]
        for a in values:
            a32 = float(np.float32(a)) if math.isfinite(a) and abs(a) < 3.4e38 else math.copysign(INF, a)
            a32 = NAN if math.isnan(a) else a32
            for order, g in enumerate(fns):
                want = _stable_refs(a32)[name][order]
                what = ("", "d/da ", "d²/da² ")[order]
                out.append(
                    case(
                        M,
                        name,
                        f"{what}at a={a:g}",
                        functools.partial(g, jnp.float32(a)),
                        ref(
                            want,
                            rtol=2e-5,
                            atol=F32_TINY,
                            why=f"≈ {want:.6g} (rtol 2e-5; 0 allowed below float32's normal range)",
                        ),
                    )
                )
        # None or a list: the same refusal as jnp.tanh's (JAX's array convention), not probed; a string goes
        # through the custom_jvp
        for v, lab in [("a", "'a'")]:
            out.append(
                case(
                    M,
                    name,
                    f"a={lab}",
                    functools.partial(f, v),
                    bad("argument", "position 0", "re:\\ba\\b ="),
                )
            )
    return out


def _norm_cases() -> list[Case]:
    M, out = "norm", []
    add = out.append
    eps = 1e-5

    def bn_ref(z, scale, bias=None, e=eps, axis=0):
        z = np.asarray(z, np.float64)
        c = z - z.mean(axis, keepdims=True)
        y = c / np.sqrt((c * c).mean(axis, keepdims=True) + e) * np.asarray(scale, np.float64)
        return y + (0.0 if bias is None else np.asarray(bias, np.float64))

    z13 = jnp.array([[1.0], [3.0]])
    tiny = np.array([[1.0], [1.0 + 1e-6]], np.float32)
    for args, call, want, tol in [
        ("z=[[1],[3]]", functools.partial(gf.batch_norm, z13, jnp.ones(1)), bn_ref(z13, [1.0]), 1e-6),
        (
            "z=[[1],[1+1e-6]] (variance ≪ eps)",
            functools.partial(gf.batch_norm, jnp.asarray(tiny), jnp.ones(1)),
            bn_ref(tiny, [1.0]),
            1e-3,
        ),
        (
            "z constant, bias=2",
            functools.partial(gf.batch_norm, jnp.full((3, 1), 5.0), jnp.ones(1), jnp.full(1, 2.0)),
            np.full((3, 1), 2.0),
            1e-6,
        ),
        (
            "z=[[3.0]] (B = 1)",
            functools.partial(gf.batch_norm, jnp.array([[3.0]]), jnp.ones(1)),
            np.zeros((1, 1)),
            0,
        ),
        (
            "z=[[1],[3]], eps=1e-30",
            functools.partial(gf.batch_norm, z13, jnp.ones(1), None, 1e-30),
            bn_ref(z13, [1.0], e=1e-30),
            1e-6,
        ),
        (
            "float64 z=[[1e39],[3e39]]",
            functools.partial(gf.batch_norm, np.array([[1e39], [3e39]]), jnp.ones(1)),
            bn_ref([[1.0], [3.0]], [1.0], e=0.0),
            1e-5,
        ),
    ]:
        add(case(M, "batch_norm", args, call, ref(want, rtol=tol, atol=1e-7, names=("float32", "x64", "z"))))
    J = jax.jacfwd(lambda z: gf.batch_norm(z, jnp.ones(1)).ravel())
    add(
        case(
            M,
            "batch_norm",
            "Jacobian at a constant batch of 4 (zero variance)",
            functools.partial(J, jnp.full((4, 1), 5.0)),
            ref(
                (np.eye(4) - 0.25) / math.sqrt(eps),
                rtol=1e-4,
                get=lambda j: np.reshape(j, (4, 4)),
                why="γ/√ε (I − 11ᵀ/4) (rtol 1e-4)",
            ),
        )
    )
    base = {"z": z13, "scale": jnp.ones(1)}
    out += vary(
        M,
        "batch_norm",
        gf.batch_norm,
        dict(base, z=jnp.full((3, 1), 5.0)),
        "eps",
        float_variants(lo=0.0, lo_open=True),
    )
    out += vary(
        M,
        "batch_norm",
        gf.batch_norm,
        base,
        "scale",
        [(jnp.ones(2), "ones(2) (F = 1)"), (jnp.array([NAN]), "[nan]"), (None, "None")],
    )
    out += vary(
        M,
        "batch_norm",
        gf.batch_norm,
        base,
        "bias",
        [(jnp.ones(3), "ones(3) (F = 1)"), (jnp.array([NAN]), "[nan]")],
    )
    out += vary(
        M,
        "batch_norm",
        gf.batch_norm,
        base,
        "z",
        [
            (jnp.ones(3), "ones(3) (1-D)"),
            (jnp.zeros((0, 1)), "zeros(0,1) (empty batch)"),
            (np.array([["a"], ["b"]]), "strings"),
            (jnp.array([[NAN], [1.0]]), "[[nan],[1]]"),
        ],
    )
    z2 = jnp.array([[1.0, 3.0]])
    for args, call, want in [
        ("z=[[1, 3]]", functools.partial(gf.layer_norm, z2, jnp.ones(2)), bn_ref(z2, [1.0, 1.0], axis=-1)),
        (
            "z=(2, 3, 2) batch",
            functools.partial(gf.layer_norm, jnp.arange(12.0).reshape(2, 3, 2), jnp.ones(2)),
            bn_ref(np.arange(12.0).reshape(2, 3, 2), [1.0, 1.0], axis=-1),
        ),
        (
            "z constant rows",
            functools.partial(gf.layer_norm, jnp.full((2, 3), 7.0), jnp.ones(3)),
            np.zeros((2, 3)),
        ),
        (
            "float64 z=[[1e39, 3e39]]",
            functools.partial(gf.layer_norm, np.array([[1e39, 3e39]]), jnp.ones(2)),
            bn_ref([[1.0, 3.0]], [1.0, 1.0], e=0.0, axis=-1),
        ),
    ]:
        add(case(M, "layer_norm", args, call, ref(want, rtol=1e-5, atol=1e-7, names=("float32", "x64", "z"))))
    base = {"z": z2, "scale": jnp.ones(2)}
    out += vary(
        M,
        "layer_norm",
        gf.layer_norm,
        dict(base, z=jnp.full((1, 2), 5.0)),
        "eps",
        float_variants(lo=0.0, lo_open=True),
    )
    out += vary(
        M, "layer_norm", gf.layer_norm, base, "scale", [(jnp.ones(3), "ones(3) (F = 2)"), (None, "None")]
    )
    out += vary(
        M, "layer_norm", gf.layer_norm, base, "z", [(jnp.zeros((1, 0)), "zeros(1,0)"), (None, "None")]
    )
    return out


def _unit_bn_cases() -> list[Case]:
    M, out = "unit_bn", []
    add = out.append
    fn = unit_bn.zero_variance_log_gain
    for g, e in [(0.1, 1e-5), (1e300, 1e-300), (1e-300, 1e300)]:
        add(
            case(
                M,
                "zero_variance_log_gain",
                f"gamma={g:g}, eps={e:g}",
                functools.partial(fn, g, e),
                ref(math.log(g) - 0.5 * math.log(e), rtol=1e-12),
            )
        )
    out += vary(M, "zero_variance_log_gain", fn, {"eps": 1e-5}, "gamma", float_variants(lo=0.0, lo_open=True))
    out += vary(M, "zero_variance_log_gain", fn, {"gamma": 0.1}, "eps", float_variants(lo=0.0, lo_open=True))

    def two_point(g, q):
        ya, yb = math.sqrt((1 - q) / q), -math.sqrt(q / (1 - q))
        sig = math.sqrt(q * (1 - q)) * abs(math.tanh(g * ya) - math.tanh(g * yb))
        return max(
            math.log(g) + math.log(float(_sech2(g * y))) - math.log(sig) if _sech2(g * y) > 0 else -INF
            for y in (ya, yb)
        )

    fn = unit_bn.two_point_log_gain
    for g, q, want in [
        (1.0, 0.5, math.log(2 / math.sinh(2))),
        (1e-8, 0.5, 0.0),
        (400.0, 0.5, math.log(800.0) - 800.0 + math.log(2.0)),
        (1.0, 1e-9, None),
        (1.0, 0.3, None),
    ]:
        want = two_point(g, q) if want is None else want
        add(
            case(
                M,
                "two_point_log_gain",
                f"gamma={g:g}, q={q:g}",
                functools.partial(fn, g, q),
                ref(want, rtol=1e-9, atol=1e-12, names=OVERFLOW),
            )
        )
    out += vary(
        M,
        "two_point_log_gain",
        fn,
        {"gamma": 1.0},
        "q",
        float_variants(lo=0.0, lo_open=True, hi=1.0, hi_open=True),
    )
    out += vary(M, "two_point_log_gain", fn, {"q": 0.5}, "gamma", float_variants(lo=0.0, lo_open=True)[:6])

    fn = unit_bn.forward
    w = np.ones(2) / math.sqrt(2)
    add(
        case(
            M,
            "forward",
            "zero inputs (zero batch variance)",
            functools.partial(fn, np.zeros((3, 4)), w, 0.5),
            ref(np.full((3, 2), math.sqrt(1e-5)), rtol=1e-12, get=lambda r: r["s"]),
        )
    )
    base = {"xs": np.zeros((3, 4)), "w": w, "gamma": 0.5}
    out += vary(M, "forward", fn, base, "gamma", float_variants(lo=0.0, lo_open=True)[:7])
    out += vary(M, "forward", fn, base, "eps", float_variants(lo=0.0, lo_open=True)[:7])
    out += vary(
        M,
        "forward",
        fn,
        base,
        "xs",
        [(np.zeros(3), "zeros(3)"), (np.full((3, 4), NAN), "NaN(3,4)"), (None, "None")],
    )
    out += vary(
        M,
        "forward",
        fn,
        base,
        "h0",
        [(np.zeros((4, 3)), "zeros(4,3) (d = 2)"), (np.full((4, 2), INF), "inf")],
    )
    fwd = unit_bn.forward(np.random.default_rng(0).standard_normal((6, 4)), w, 1.0)
    fn = unit_bn.backward_log_norms
    add(
        case(
            M,
            "backward_log_norms",
            "g_T = 0",
            functools.partial(fn, fwd, np.zeros((4, 2))),
            ref(
                np.full(7, -INF),
                get=lambda r: r["log_mean_norm"],
                why="−inf at every t (an exactly zero cotangent)",
            ),
        )
    )
    out += vary(
        M,
        "backward_log_norms",
        fn,
        {"fwd": fwd},
        "g_T",
        [(np.zeros((4, 3)), "zeros(4,3)"), (np.full((4, 2), NAN), "NaN(4,2)"), (None, "None")],
    )
    fn = unit_bn.unit_exponents
    for tf, tt in [(-1, 2), (2, 2), (0, 7), (True, 2), (0.5, 2), ("0", 2)]:
        add(
            case(
                M,
                "unit_exponents",
                f"t_from={tf!r}, t_to={tt!r}",
                functools.partial(fn, fwd, tf, tt),
                bad("t_from", "t_to"),
            )
        )
    out += vary(
        M,
        "unit_exponents",
        fn,
        {"fwd": fwd, "t_from": 0, "t_to": 3},
        "seed",
        [(-1, "-1"), ("a", "'a'"), (2.5, "2.5")],
    )
    return out


# ----------------------------------------------------------------------------------------------- engine
#
# One linear step h_t = W h_{t-1} + u x_t with W = diag(0.5, 0.25): ∂h_T/∂h_t = W^lag exactly, so every norm,
# singular value and exponent has a closed form; at lag 300 the plain norms underflow float32 (0.5^300 ≈
# 5e-91) while their logs are ordinary numbers. The saturated step h_t = tanh(2 h_{t-1} + 30 x_t) (x = 1,
# gradflow.stable.tanh) has the per-step derivative 2 sech²(32) ≈ 1e-27 at every step.

W_LIN = jnp.diag(jnp.array([0.5, 0.25]))
U_LIN = jnp.array([1.0, 0.5])
T_LONG = 300
LOG_W = np.log([0.5, 0.25])


def lin_step(h, x):
    return h @ W_LIN.T + x * U_LIN


def sat_step(h, x):
    return gstable.tanh(2.0 * h + 30.0 * x)


def zero_step(h, x):
    return 0.0 * h


def lin_pstep(params, h, x):
    return h * params["w"] + x


C0 = jnp.ones((1, 2))
XS = jnp.zeros((T_LONG, 1, 1))
C0B = jnp.ones((2, 2))
XSB = jnp.zeros((T_LONG, 2, 1))
LAGS = T_LONG - np.arange(T_LONG)
SAT_RATE = math.log(2.0) + math.log(float(_sech2(32.0)))
CARRY_NAMES = ("carry0", "carry", "h_0", "state", "states", "carry leaf")
XS_NAMES = ("xs", "inputs", "input", "x_t", "T", "time axis", "sequence length")


def carry_variants() -> list[tuple[Any, str]]:
    return [
        (jnp.full((1, 2), NAN), "NaN(1,2)"),
        (jnp.full((1, 2), INF), "inf(1,2)"),
        (np.array([[1e39, 1.0]]), "float64 [[1e39, 1]] (beyond float32)"),
        (jnp.ones((1, 2), jnp.int32), "int32"),
        (jnp.ones(2), "ones(2) (no batch axis)"),
        (jnp.ones((1, 3)), "ones(1,3) (n = 3, W is 2×2)"),
        (None, "None"),
        ("abc", "'abc'"),
        (jnp.ones((1, 2), jnp.complex64), "complex64"),
        (jnp.ones((1, 2), jnp.float16), "float16"),
    ]


def xs_variants() -> list[tuple[Any, str]]:
    nan_xs = np.zeros((T_LONG, 1, 1), np.float32)
    nan_xs[3] = NAN
    return [
        (jnp.asarray(nan_xs), "NaN at t = 3"),
        (jnp.full((T_LONG, 1, 1), INF), "inf"),
        (jnp.zeros((0, 1, 1)), "zeros(0,1,1) (T = 0)"),
        (np.full((T_LONG, 1, 1), 1e39), "float64 1e39 (beyond float32)"),
        (jnp.zeros((1, T_LONG, 1)), "batch-major (1, T, 1)"),
        (None, "None"),
        ("abc", "'abc'"),
    ]


def wrt_variants() -> list[tuple[Any, str]]:
    return [
        (False, "False (nothing)"),
        ({"h": True}, "{'h': True} (carry is an array)"),
        ("h", "'h'"),
        ([True, False], "[True, False]"),
        (1, "1"),
    ]


def engine_common(
    M: str,
    fname: str,
    fn: Callable,
    base: dict,
    *,
    carry="carry0",
    xs="xs",
    wrt=True,
    subset: int | None = None,
    empty: bool = True,
) -> list[Case]:
    """The bad carry0 / xs / wrt cases of one engine function (``subset``: only the first few of each)."""
    cv, xv = carry_variants()[:subset], xs_variants()[:subset]
    out = vary(M, fname, fn, base, carry, cv, names=CARRY_NAMES + (carry,))
    out += vary(M, fname, fn, base, xs, xv, names=XS_NAMES + (xs,))
    # an empty batch: carry (0, 2) with inputs (T, 0, 1): a state of size 0
    kw = dict(base, **{carry: jnp.ones((0, 2)), xs: jnp.zeros((T_LONG, 0, 1))})
    if empty:
        out.append(
            case(
                M,
                fname,
                f"{carry}=ones(0,2), {xs}=zeros(T,0,1) (empty batch)",
                functools.partial(fn, **kw),
                bad(*CARRY_NAMES, "empty", "batch", "n = 0", "size 0"),
            )
        )
    if wrt:
        out += vary(M, fname, fn, base, "wrt", wrt_variants()[:subset])
    return out


def _engine_cases() -> list[Case]:
    out = []
    add = out.append
    base = {"step": lin_step, "carry0": C0, "xs": XS}
    lin_lsn = LAGS * LOG_W[0]
    lin_lfn = np.array([log_fro_diag([0.5, 0.25], lag) for lag in LAGS])

    # jacobians / jacobian_norms / step_jacobians
    M = "jacobians"
    for fname, fn, tol in [
        ("jacobians", gf.jacobians, {"rtol": 1e-5}),
        ("jacobian_norms", gf.jacobian_norms, {"rtol": 1e-5, "atol": 1e-3}),
    ]:
        # jacobian_norms' default spectral="certified" guarantees 1e-3 relative accuracy of σ: 1e-3 in ln σ
        add(
            case(
                M,
                fname,
                "W = diag(.5, .25), T = 300: log spectral norms",
                functools.partial(fn, lin_step, C0, XS),
                ref(lin_lsn, get=lambda r: r.log_spectral_norms, **tol),
            )
        )
        add(
            case(
                M,
                fname,
                "same: log Frobenius norms",
                functools.partial(fn, lin_step, C0, XS),
                ref(lin_lfn, rtol=1e-5, get=lambda r: r.log_frobenius_norms),
            )
        )
        out += engine_common(M, fname, fn, base)
        out += vary(M, fname, fn, base, "spectral", [("foo", "'foo'"), (1, "1"), (True, "True")])
        out += vary(M, fname, fn, dict(base, spectral="power"), "power_iters", int_variants(1))
        out += vary(M, fname, fn, base, "per_example", [("yes", "'yes'"), (2, "2")])
    add(
        case(
            M,
            "jacobian_norms",
            "float64 carry0 without x64",
            functools.partial(gf.jacobian_norms, lin_step, np.ones((1, 2)), XS),
            ref(lin_lfn, rtol=1e-5, get=lambda r: r.log_frobenius_norms),
        )
    )
    add(
        case(
            M,
            "jacobian_norms",
            "saturated tanh, 2 sech²(32) per step: log norms",
            functools.partial(gf.jacobian_norms, sat_step, jnp.ones((1, 1)), jnp.ones((T_LONG, 1, 1))),
            ref(LAGS * SAT_RATE, rtol=1e-5, get=lambda r: r.log_frobenius_norms),
        )
    )
    add(
        case(
            M,
            "step_jacobians",
            "W = diag(.5, .25)",
            functools.partial(gf.step_jacobians, lin_step, C0, XS[:20]),
            ref(np.broadcast_to(np.diag([0.5, 0.25]), (20, 2, 2)), rtol=1e-7),
        )
    )
    out += engine_common(
        M, "step_jacobians", gf.step_jacobians, base, empty=False
    )  # (T, 0, 0) is right for n = 0

    # streaming_log_norms
    M, fn = "streaming", gf.streaming_log_norms
    add(
        case(
            M,
            "streaming_log_norms",
            "W = diag(.5, .25), T = 300",
            functools.partial(fn, lin_step, C0, XS),
            ref(lin_lfn, rtol=1e-5, get=lambda r: r.log_frobenius),
        )
    )
    add(
        case(
            M,
            "streaming_log_norms",
            "saturated tanh",
            functools.partial(fn, sat_step, jnp.ones((1, 1)), jnp.ones((T_LONG, 1, 1))),
            ref(LAGS * SAT_RATE, rtol=1e-5, get=lambda r: r.log_frobenius),
        )
    )
    out += engine_common(M, "streaming_log_norms", fn, base)
    out += vary(M, "streaming_log_norms", fn, dict(base, key=KEY), "probes", int_variants(1, none_ok=True))
    add(
        case(
            M,
            "streaming_log_norms",
            "probes=4 without key",
            functools.partial(fn, lin_step, C0, XS, probes=4),
            bad("key"),
        )
    )
    out += vary(M, "streaming_log_norms", fn, dict(base, probes=4), "key", key_variants())
    out += vary(M, "streaming_log_norms", fn, base, "spectral", [("foo", "'foo'"), (2, "2")])
    out += vary(
        M, "streaming_log_norms", fn, dict(base, spectral="power"), "power_iters", int_variants(1)[:5]
    )
    out += vary(M, "streaming_log_norms", fn, base, "progress", [("loud", "'loud'"), (3, "3")])

    # spectra
    M, fn = "spectra", gf.spectra
    add(
        case(
            M,
            "spectra",
            "lags=[1, 300]: log σ₁",
            functools.partial(fn, lin_step, C0, XS, lags=[1, T_LONG]),
            ref(np.array([1, T_LONG]) * LOG_W[0], rtol=1e-5, get=lambda r: r.log_singular_values[:, 0]),
        )
    )
    add(
        case(
            M,
            "spectra",
            "lags=[1]: both singular values",
            functools.partial(fn, lin_step, C0, XS, lags=[1]),
            ref(np.array([[0.5, 0.25]]), rtol=1e-6, get=lambda r: r.singular_values),
        )
    )
    out += engine_common(M, "spectra", fn, base)
    out += vary(
        M,
        "spectra",
        fn,
        base,
        "lags",
        [
            (0, "0"),
            (T_LONG + 1, "301"),
            (-1, "-1"),
            (1.5, "1.5"),
            ("1", "'1'"),
            ([[1]], "[[1]]"),
            (True, "True"),
            (NAN, "nan"),
            (10**12, "10**12"),
        ],
    )

    # lyapunov_spectrum / lyapunov_statistics
    M, fn = "lyapunov", gf.lyapunov_spectrum
    exps = lambda r: r.exponents
    add(
        case(
            M,
            "lyapunov_spectrum",
            "W = diag(.5, .25), transient=50",
            functools.partial(fn, lin_step, C0, XS, transient=50),
            ref(LOG_W, rtol=1e-4, get=exps),
        )
    )
    add(
        case(
            M,
            "lyapunov_spectrum",
            "saturated tanh",
            functools.partial(fn, sat_step, jnp.ones((1, 1)), jnp.ones((T_LONG, 1, 1))),
            ref(np.array([SAT_RATE]), rtol=1e-5, get=exps),
        )
    )
    add(
        case(
            M,
            "lyapunov_spectrum",
            "zero step h ↦ 0",
            functools.partial(fn, zero_step, C0, XS),
            ref(
                np.array([-INF, -INF]),
                get=exps,
                names=("zero", "-inf", "singular", "degenerate", "exponent"),
                why="−inf (an exactly zero Jacobian) or refused naming it",
            ),
        )
    )
    out += engine_common(M, "lyapunov_spectrum", fn, base)
    out += vary(M, "lyapunov_spectrum", fn, base, "k", int_variants(1, 2, none_ok=True))
    out += vary(
        M,
        "lyapunov_spectrum",
        fn,
        base,
        "transient",
        [(-1, "-1"), (T_LONG, "300 (= T)"), (True, "True"), (2.5, "2.5"), ("1", "'1'")],
    )
    out += vary(
        M,
        "lyapunov_spectrum",
        fn,
        base,
        "segments",
        [(1, "1"), (0, "0"), (T_LONG + 1, "301"), (True, "True"), (2.5, "2.5"), ("3", "'3'")],
    )
    out += vary(M, "lyapunov_spectrum", fn, base, "key", key_variants())
    out += vary(
        M,
        "lyapunov_spectrum",
        fn,
        base,
        "interval",
        [(True, "True"), (0, "0"), (-1, "-1"), (2.5, "2.5"), ("fast", "'fast'"), (NAN, "nan")],
    )
    out += vary(M, "lyapunov_spectrum", fn, base, "per_example", [("yes", "'yes'")])
    out += vary(M, "lyapunov_spectrum", fn, base, "progress", [("loud", "'loud'")])
    fn = gf.lyapunov_statistics
    stat3 = lambda s: np.array([s.kaplan_yorke, s.entropy_rate, s.mean_exponent], np.float64)
    add(
        case(
            M,
            "lyapunov_statistics",
            "of W = diag(.5, .25)",
            lambda: gf.lyapunov_statistics(gf.lyapunov_spectrum(lin_step, C0, XS, transient=50)),
            ref(np.array([0.0, 0.0, LOG_W.mean()]), rtol=1e-4, atol=1e-6, get=stat3),
        )
    )
    LR = gf.LyapunovResult
    deg = LR(jnp.array([-INF, -INF]), jnp.zeros(2), 100, jnp.full((4, 2), -INF), 2)
    add(
        case(
            M,
            "lyapunov_statistics",
            "exponents [-inf, -inf] (zero Jacobian)",
            functools.partial(fn, deg),
            ref(
                np.array([0.0, 0.0, -INF]),
                get=stat3,
                names=("inf", "-inf", "exponents", "finite"),
                why="dimension 0, entropy 0, mean −inf (or refused naming the infinite exponents)",
            ),
        )
    )
    nanr = LR(jnp.array([NAN, -1.0]), jnp.zeros(2), 100, jnp.full((4, 2), NAN), 2)
    nodata = LR(jnp.array([0.1, -1.0]), jnp.zeros(2), 100, None, 2)
    out += vary(
        M,
        "lyapunov_statistics",
        fn,
        {},
        "result",
        [
            (None, "None"),
            ("x", "'x'"),
            (3, "3"),
            (nodata, "built by hand (no segment_exponents)"),
            (nanr, "NaN exponents"),
        ],
        names=("result", "LyapunovResult", "segment_exponents", "NaN", "finite"),
    )

    # summary (validation before the measurement: each refused case is cheap)
    M, fn = "summary", gf.summary
    add(
        case(
            M,
            "summary",
            "W = diag(.5, .25), T = 300: rate",
            functools.partial(fn, lin_step, C0, XS),
            ref(LOG_W[0], rtol=2e-3, get=lambda s: s.rate, why="ln 0.5 (rtol 2e-3: a fit over lags 30..300)"),
        )
    )
    add(case(M, "summary", "T = 5", functools.partial(fn, lin_step, C0, XS[:5]), bad("T", "xs", "8")))
    out += engine_common(M, "summary", fn, base, subset=4, wrt=False)
    out += vary(
        M, "summary", fn, base, "k", [(0, "0"), (-1, "-1"), (True, "True"), (2.5, "2.5"), ("3", "'3'")]
    )
    out += vary(
        M,
        "summary",
        fn,
        base,
        "transient",
        [(-1, "-1"), (297, "297 (> T − 4)"), (True, "True"), (2.5, "2.5")],
    )
    out += vary(
        M,
        "summary",
        fn,
        base,
        "min_lag",
        [(0, "0"), (True, "True"), (2.5, "2.5"), ("1", "'1'"), (T_LONG + 1, "301")],
    )
    out += vary(M, "summary", fn, base, "lags", [(0, "0"), (T_LONG + 1, "301"), ("1", "'1'")])
    out += vary(M, "summary", fn, base, "per_example", [("yes", "'yes'"), (2, "2")])
    out += vary(M, "summary", fn, base, "segments", [(1, "1"), (True, "True"), (1000, "1000")])
    out += vary(
        M,
        "summary",
        fn,
        base,
        "threshold",
        [(NAN, "nan"), (-1.0, "-1.0"), (INF, "inf"), ("0.1", "'0.1'"), (True, "True")],
    )
    out += vary(M, "summary", fn, base, "preset", [("foo", "'foo'"), (3, "3")])
    out += vary(
        M, "summary", fn, base, "theory_options", [({"foo": 1}, "{'foo': 1}"), ("x", "'x'"), (3, "3")]
    )
    out += vary(M, "summary", fn, base, "key", key_variants()[:5])
    out += vary(M, "summary", fn, base, "progress", [("loud", "'loud'")])

    # estimators
    M, fn = "estimators", gf.top_singular_value
    add(
        case(
            M,
            "top_singular_value",
            "lag = 300: log σ",
            functools.partial(fn, lin_step, C0, XS, T_LONG),
            ref(T_LONG * LOG_W[0], rtol=1e-5, get=lambda r: r.log_sigma),
        )
    )
    tbase = dict(base, lag=10)
    out += engine_common(M, "top_singular_value", fn, tbase, subset=6)
    out += vary(M, "top_singular_value", fn, tbase, "lag", int_variants(1, T_LONG))
    out += vary(M, "top_singular_value", fn, tbase, "iters", int_variants(1))
    out += vary(M, "top_singular_value", fn, tbase, "key", key_variants())
    fn = gf.hutchinson_frobenius
    add(
        case(
            M,
            "hutchinson_frobenius",
            "lag = 300: log ‖·‖_F",
            functools.partial(fn, lin_step, C0, XS, T_LONG, key=KEY),
            ref(
                log_fro_diag([0.5, 0.25], T_LONG),
                rtol=1e-5,
                get=lambda r: r.log_frobenius,
                why="ln ‖W^300‖_F (Rademacher probes are exact for a diagonal M)",
            ),
        )
    )
    hbase = dict(base, lag=10, key=KEY)
    out += engine_common(M, "hutchinson_frobenius", fn, hbase, subset=6)
    out += vary(M, "hutchinson_frobenius", fn, hbase, "lag", int_variants(1, T_LONG)[:7])
    out += vary(M, "hutchinson_frobenius", fn, hbase, "probes", int_variants(1))
    out += vary(M, "hutchinson_frobenius", fn, hbase, "key", key_variants(required=True))

    # batch
    M = "batch"
    add(
        case(
            M,
            "batch_block_norms",
            "B = 2 uncoupled: log diagonal norms",
            functools.partial(gf.batch_block_norms, lin_step, C0B, XSB),
            ref(np.repeat(lin_lfn[:, None], 2, 1), rtol=1e-5, get=lambda r: r.log_frobenius_norms),
        )
    )
    add(
        case(
            M,
            "batch_block_norms",
            "B = 2 uncoupled: log cross norms",
            functools.partial(gf.batch_block_norms, lin_step, C0B, XSB),
            ref(np.full(T_LONG, -INF), get=lambda r: r.log_cross, why="−inf (no coupling)"),
        )
    )
    add(
        case(
            M,
            "batch_blocks",
            "B = 2, T = 20: cross blocks",
            functools.partial(gf.batch_blocks, lin_step, C0B, XSB[:20]),
            ref(
                np.zeros((20, 2, 2)),
                get=lambda b: b[:, 0, 1].reshape(20, 2, 2)[:, :, :] if b.ndim == 5 else b,
                why="zero cross-example blocks",
            ),
        )
    )
    bb = {"step": lin_step, "carry0": C0, "xs": XS}  # the bad values have a batch of 1
    for fname in ("batch_blocks", "batch_block_norms"):
        out += engine_common(M, fname, getattr(gf, fname), bb, subset=5)
    add(
        case(
            M,
            "frozen_statistics_comparison",
            "step as its own frozen step",
            functools.partial(gf.frozen_statistics_comparison, lin_step, lin_step, C0B, XSB[:50]),
            ref(np.ones((50, 2)), rtol=1e-5, get=lambda r: r.overstatement),
        )
    )
    out += vary(
        M,
        "frozen_statistics_comparison",
        gf.frozen_statistics_comparison,
        dict(bb, step=lin_step),
        "frozen_step",
        [(None, "None"), ("x", "'x'"), (lambda h, x: h[:, :1], "a step that changes the shape")],
        names=("frozen_step", "step"),
    )

    # sensitivity
    M = "sensitivity"
    fn = gf.param_sensitivity
    P = {"w": jnp.float32(0.5)}
    c1, x1 = jnp.ones((1, 1)), jnp.zeros((T_LONG, 1, 1))
    # h_t = w h_{t-1} + 1 from h_0 = 2 stays at 2:
    # step t+1's share ∂h_T/∂h_{t+1} · ∂h_{t+1}/∂w = w^(T−t−1) · 2
    c2, x2 = jnp.full((1, 1), 2.0), jnp.ones((T_LONG, 1, 1))
    add(
        case(
            M,
            "param_sensitivity",
            "h_t = 0.5 h_{t-1} + 1 at h = 2, T = 300: per-lag ln ‖C_t‖",
            functools.partial(fn, lin_pstep, P, c2, x2),
            ref(
                math.log(2.0) + (LAGS - 1) * math.log(0.5),
                rtol=1e-5,
                get=lambda r: r.log_contribution_all,
                why="ln 2 + (lag − 1) ln 0.5 (rtol 1e-5)",
            ),
        )
    )
    add(
        case(
            M,
            "param_sensitivity",
            "same: ln ‖∂h_T/∂w‖",
            functools.partial(fn, lin_pstep, P, c2, x2),
            ref(
                math.log(4.0 * (1 - 0.5**T_LONG)),
                rtol=1e-5,
                get=lambda r: r.log_total_all,
                why="ln(2 Σ_j 0.5^j) = ln 4",
            ),
        )
    )
    sbase = {"pstep": lin_pstep, "params": P, "carry0": c1, "xs": x1}
    out += vary(
        M,
        "param_sensitivity",
        fn,
        sbase,
        "params",
        [
            ({"w": jnp.float32(NAN)}, "{'w': nan}"),
            ({"w": 1}, "{'w': 1} (int)"),
            (None, "None"),
            ({}, "{}"),
            ({"w": "a"}, "{'w': 'a'}"),
        ],
        names=("params", "parameters", "w"),
    )
    out += vary(M, "param_sensitivity", fn, sbase, "groups", [("foo", "'foo'"), (3, "3"), (None, "None")])
    out += vary(M, "param_sensitivity", fn, dict(sbase, key=KEY), "probes", int_variants(2, none_ok=True)[:6])
    add(
        case(
            M,
            "param_sensitivity",
            "probes=4 without key",
            functools.partial(fn, lin_pstep, P, c1, x1, probes=4),
            bad("key"),
        )
    )
    out += vary(
        M,
        "param_sensitivity",
        fn,
        sbase,
        "cotangent",
        [(jnp.ones((1, 3)), "ones(1,3) (carry is (1,1))"), (jnp.full((1, 1), NAN), "NaN"), ("x", "'x'")],
    )
    out += vary(
        M,
        "param_sensitivity",
        fn,
        sbase,
        "carry0",
        carry_variants()[:3] + [(None, "None")],
        names=CARRY_NAMES,
    )
    out += vary(M, "param_sensitivity", fn, sbase, "xs", xs_variants()[:4], names=XS_NAMES)
    cell = gf.make_cell("tanh", 2, 1)
    cv = gf.init_cell(cell, KEY)
    out += vary(
        M,
        "param_step",
        gf.param_step,
        {"variables": cv},
        "cell",
        [(None, "None"), ("tanh", "'tanh'"), (3, "3")],
    )
    out += vary(
        M,
        "param_step",
        gf.param_step,
        {"cell": cell, "variables": cv},
        "train",
        [("yes", "'yes'"), (1, "1"), (None, "None")],
    )
    out += vary(M, "param_step", gf.param_step, {"cell": cell, "variables": cv}, "key", key_variants()[:4])

    # floss
    M = "floss"
    for fname, fn, get, want in [
        ("flossing_exponents", gf.flossing_exponents, lambda e: np.sort(np.asarray(e))[::-1], LOG_W),
        ("flossing_loss", gf.flossing_loss, None, float(np.sum(LOG_W**2))),
    ]:
        add(
            case(
                M,
                fname,
                "W = diag(.5, .25), k = 2, transient=50",
                functools.partial(fn, lin_step, C0, XS, k=2, transient=50),
                ref(want, rtol=1e-4, get=get),
            )
        )
        out += engine_common(
            M, fname, fn, base, wrt=False, subset=None if fname == "flossing_exponents" else 3
        )
        out += vary(M, fname, fn, base, "k", int_variants(1, 2)[:7] + [(3, "3 (n = 2)")])
    fn = gf.flossing_exponents
    out += vary(
        M,
        "flossing_exponents",
        fn,
        base,
        "transient",
        [(-1, "-1"), (T_LONG, "300 (= T)"), (True, "True"), (2.5, "2.5")],
    )
    out += vary(M, "flossing_exponents", fn, base, "state_window", int_variants(1, none_ok=True)[:6])
    out += vary(M, "flossing_exponents", fn, base, "key", key_variants()[:5])
    fn = gf.floss_schedule

    def sched_check(steps, peak, frac):
        def check(s):
            a, b = float(s(0)), float(s(steps))
            return (
                abs(a - peak) <= 1e-6 * peak and abs(b - peak * frac) <= 1e-6 * peak,
                f"schedule(0) = {a:.6g}, schedule({steps}) = {b:.6g}",
            )

        return check

    for steps, peak, frac in [(10, 0.03, 0.01), (1, 0.5, 0.5), (10**9, 0.03, 0.0)]:
        add(
            case(
                M,
                "floss_schedule",
                f"steps={_label(steps)}, peak={peak}, final_fraction={frac}",
                functools.partial(fn, steps, peak, frac),
                chk(sched_check(steps, peak, frac), f"{peak} at step 0, {peak * frac:g} at step {steps}"),
            )
        )
    out += vary(M, "floss_schedule", fn, {}, "steps", int_variants(1))
    out += vary(M, "floss_schedule", fn, {"steps": 10}, "peak", float_variants(lo=0.0, lo_open=True))
    out += vary(M, "floss_schedule", fn, {"steps": 10}, "final_fraction", float_variants(lo=0.0, hi=1.0))
    fcell = gf.make_cell("tanh", 2, 1)
    fv = gf.init_cell(fcell, KEY)
    fxs = jax.random.normal(jax.random.key(1), (20, 2, 1))
    fbase = {"cell": fcell, "variables": fv, "xs": fxs, "steps": 2}
    fn = gf.floss
    out += vary(M, "floss", fn, fbase, "k", [(0, "0"), (5, "5 (n = 4)"), (True, "True"), (2.5, "2.5")])
    out += vary(
        M, "floss", fn, fbase, "steps", [(0, "0"), (-1, "-1"), (True, "True"), (2.5, "2.5"), ("2", "'2'")]
    )
    out += vary(
        M,
        "floss",
        fn,
        fbase,
        "learning_rate",
        [(NAN, "nan"), (-1.0, "-1.0"), (0.0, "0.0"), ("0.1", "'0.1'"), (True, "True"), (INF, "inf")],
    )
    nx = np.asarray(fxs).copy()
    nx[2] = NAN
    out += vary(
        M,
        "floss",
        fn,
        fbase,
        "xs",
        [(jnp.asarray(nx), "NaN at t = 2"), (jnp.zeros((20, 2, 3)), "input_size 3"), (None, "None")],
        names=XS_NAMES,
    )
    out += vary(
        M, "floss", fn, fbase, "variables", [({}, "{}"), (None, "None")], names=("variables", "params")
    )
    out += vary(M, "floss", fn, fbase, "train", [("yes", "'yes'")])
    out += vary(M, "floss", fn, fbase, "transient", [(-1, "-1"), (20, "20 (= T)"), (True, "True")])
    out += vary(M, "floss", fn, fbase, "state_window", [(0, "0"), (True, "True"), (2.5, "2.5")])
    out += vary(
        M,
        "floss",
        fn,
        fbase,
        "carry0",
        [(jnp.full((2, 2), NAN), "NaN"), (jnp.ones((3, 2)), "ones(3,2)")],
        names=CARRY_NAMES,
    )

    # step: unroll
    M, fn = "step", gf.unroll
    add(
        case(
            M,
            "unroll",
            "W = diag(.5, .25): h_1..h_20",
            functools.partial(fn, lin_step, C0, XS[:20]),
            ref(np.stack([[[0.5**t, 0.25**t]] for t in range(1, 21)]), rtol=1e-6),
        )
    )
    # unroll is a plain scan: complex, float16 or empty carries and T = 0 are fine there
    ok = ("complex64", "float16", "int32", "zeros(0,1,1) (T = 0)")
    out += [
        c
        for c in engine_common(M, "unroll", fn, base, wrt=False, empty=False)
        if not any(c.args.endswith(o) for o in ok)
    ]
    out += vary(M, "unroll", fn, base, "step", [(None, "None"), ("x", "'x'")])
    return out


# ------------------------------------------------------------------------------- cells, steps, describe

RNN_PRESETS = ("tanh", "linear", "bn_notanh", "bn_input_tanh", "bn_tanh", "ln_notanh", "ln_tanh", "irnn")
FAMILY_OPTIONS = {
    "mingru": [("candidate", "foo"), ("candidate", 3), ("parallel", "yes"), ("dtype", "float16")],
    "minlstm": [("candidate", "foo"), ("parallel", 2), ("dtype", "int32")],
    "rglru": [
        ("c", NAN),
        ("c", 0.0),
        ("c", -1.0),
        ("a_min", NAN),
        ("a_min", -0.1),
        ("a_max", 1.5),
        ("a_max", NAN),
        ("a_init", "foo"),
    ],
    "s6": [
        ("state_size", 0),
        ("state_size", -1),
        ("state_size", True),
        ("state_size", 2.5),
        ("dt_min", 0.0),
        ("dt_min", -1.0),
        ("dt_min", NAN),
        ("dt_max", NAN),
        ("dt_floor", -1.0),
        ("dt_floor", NAN),
        ("dt_rank", 0),
        ("dt_rank", True),
        ("dt_rank", 2.5),
    ],
    "lru_stack": [
        ("layers", 0),
        ("layers", -1),
        ("layers", True),
        ("layers", 2.5),
        ("mixing", "foo"),
        ("norm", "foo"),
        ("norm", 3),
        ("r_min", -0.1),
        ("r_max", 1.5),
        ("max_phase", 0.0),
        ("max_phase", NAN),
    ],
}


def _cell_cases() -> list[Case]:
    M, out = "cells", []
    add = out.append
    mk = gf.make_cell
    size_bad = [(0, "0"), (-1, "-1"), (True, "True"), (2.5, "2.5"), ("4", "'4'"), (None, "None")]
    for name in gf.CELLS:
        for arg, other in (("hidden_size", "input_size"), ("input_size", "hidden_size")):
            for v, lab in size_bad:
                kw = {arg: v, other: 2 if other == "input_size" else 4}
                add(
                    case(
                        M, "make_cell", f"{name!r}, {arg}={lab}", functools.partial(mk, name, **kw), bad(arg)
                    )
                )
        add(
            case(
                M,
                "make_cell",
                f"{name!r}, foo=1 (unknown option)",
                functools.partial(mk, name, 4, 2, foo=1),
                bad("foo", "option"),
            )
        )
    add(
        case(
            M,
            "make_cell",
            "'lru', hidden_size=3 (odd)",
            functools.partial(mk, "lru", 3, 2),
            bad("hidden_size", "even"),
        )
    )
    for nm, lab in [("foo", "'foo'"), (None, "None"), (3, "3"), ("TANH", "'TANH'")]:
        add(
            case(
                M,
                "make_cell",
                f"name={lab}",
                functools.partial(mk, nm, 4, 2),
                bad("name", str(nm), "unknown"),
            )
        )
    add(
        case(
            M,
            "make_cell",
            "CellSpec(family='xyz')",
            lambda: mk(gf.CellSpec(family="xyz"), 4, 2),
            bad("family"),
        )
    )
    opt_bad = {
        "gain": [NAN, INF, -1.0, "1", True, None],
        "dropout": [1.0, -0.1, NAN, 1.5, "0.1", True],
        "t_max": [0, -1, True, 2.5, None],
        "recurrent_init": ["foo", None, 3],
        "dtype": ["float16", "int32", 3],
        "dropout_mode": ["foo"],
    }
    for name in gf.PRESETS:
        for opt, vals in opt_bad.items():
            for v in vals:
                add(
                    case(
                        M,
                        "make_cell",
                        f"{name!r}, {opt}={_label(v)}",
                        functools.partial(mk, name, 4, 2, **{opt: v}),
                        bad(opt),
                    )
                )
    per_kind = [
        (
            ("bn_notanh", "bn_input_tanh", "bn_tanh", "bn_lstm"),
            {
                "bn_eps": [0.0, -1e-5, NAN, INF],
                "bn_gamma_init": [NAN, INF],
                "bn_momentum": [NAN, -0.1, 1.5],
                "per_step_stats": ["yes", 1],
                "input_stats": ["foo"],
            },
        ),
        (
            ("ln_notanh", "ln_tanh", "ln_lstm"),
            {"ln_eps": [0.0, -1e-5, NAN, INF], "ln_gamma_init": [NAN, INF]},
        ),
        (("lstm", "bn_lstm", "ln_lstm"), {"forget_bias": [NAN, INF, "1"]}),
        (("tanh", "linear", "irnn"), {"activation": ["sigmoid", None]}),
        (
            ("lru", "lru_block"),
            {"r_min": [-0.1, NAN, 1.0], "r_max": [1.5, NAN, 0.0], "max_phase": [0.0, -1.0, NAN]},
        ),
    ]
    bad_options = [(name, opt, v) for names, opts in per_kind for name in names
                   for opt, vals in opts.items() for v in vals]
    bad_options += [(name, opt, v) for name, opts in FAMILY_OPTIONS.items() for opt, v in opts]
    for name, opt, v in bad_options:
        call = functools.partial(mk, name, 4, 2, **{opt: v})
        add(case(M, "make_cell", f"{name!r}, {opt}={_label(v)}", call, bad(opt)))
    add(
        case(
            M,
            "make_cell",
            "'lru', r_min=0.9, r_max=0.5",
            functools.partial(mk, "lru", 4, 2, r_min=0.9, r_max=0.5),
            bad("r_min", "r_max"),
        )
    )
    add(
        case(
            M,
            "make_cell",
            "'rglru', a_min=0.99, a_max=0.9",
            functools.partial(mk, "rglru", 4, 2, a_min=0.99, a_max=0.9),
            bad("a_min", "a_max"),
        )
    )
    add(
        case(
            M,
            "make_cell",
            "'s6', dt_min=0.5, dt_max=0.1",
            functools.partial(mk, "s6", 4, 2, dt_min=0.5, dt_max=0.1),
            bad("dt_min", "dt_max"),
        )
    )

    # valid extremes: the initialized W_hh
    whh = lambda v: np.asarray(v["params"]["W_hh"], np.float64)
    init = lambda name, **o: lambda: gf.init_cell(mk(name, 4, 2, **o), KEY)
    add(
        case(
            M,
            "make_cell+init_cell",
            "'tanh', orthogonal, gain=1e30: singular values of W_hh",
            init("tanh", recurrent_init="orthogonal", gain=1e30),
            ref(np.full(4, 1e30), rtol=1e-5, get=lambda v: np.linalg.svd(whh(v), compute_uv=False)),
        )
    )
    add(
        case(
            M,
            "make_cell+init_cell",
            "'irnn', gain=1e38",
            init("irnn", gain=1e38),
            ref(1e38 * np.eye(4), rtol=1e-6, get=whh),
        )
    )
    add(
        case(
            M,
            "make_cell+init_cell",
            "'irnn', gain=1e39 (beyond float32)",
            init("irnn", gain=1e39),
            bad("gain", "float32", why="refused naming gain (W_hh = 1e39·I is inf in float32)"),
        )
    )
    add(
        case(
            M,
            "make_cell+init_cell",
            "'tanh', gain=0",
            init("tanh", gain=0.0),
            ref(np.zeros((4, 4)), get=whh, names=("gain",), why="W_hh = 0, or refused naming gain"),
        )
    )

    # init_cell
    cell = mk("tanh", 4, 2)
    out += vary(
        M,
        "init_cell",
        gf.init_cell,
        {"cell": cell},
        "key",
        key_variants(required=True),
        names=("key", "PRNG"),
    )
    out += vary(M, "init_cell", gf.init_cell, {"cell": cell, "key": KEY}, "batch_size", int_variants(1))
    import flax.linen as nn

    out += vary(
        M,
        "init_cell",
        gf.init_cell,
        {"key": KEY},
        "cell",
        [(None, "None"), ("tanh", "'tanh'"), (nn.Dense(3), "nn.Dense(3)")],
        names=("cell", "make_cell"),
    )

    # as_step: one step from h_0 = 0 against NumPy: h_1 = tanh(W_xh x + b)
    v = gf.init_cell(cell, KEY)
    X = np.linspace(-1, 1, 6).reshape(3, 2).astype(np.float32)
    h1 = np.tanh(
        X.astype(np.float64) @ np.asarray(v["params"]["W_xh"], np.float64).T
        + np.asarray(v["params"]["b"], np.float64)
    )
    add(
        case(
            "step",
            "as_step",
            "'tanh' d=4: h_1 from h_0 = 0",
            lambda: gf.as_step(cell, v)(cell.initialize_carry(3), X),
            ref(h1, rtol=1e-5, atol=1e-7, get=lambda c: c["h"]),
        )
    )
    v64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), v)
    add(
        case(
            "step",
            "as_step",
            "float64 variables without x64",
            lambda: gf.as_step(cell, v64)(cell.initialize_carry(3), X),
            ref(h1, rtol=1e-5, atol=1e-7, get=lambda c: c["h"], names=("float64", "x64")),
        )
    )
    other = gf.init_cell(mk("tanh", 5, 2), KEY)
    vnan = jax.tree_util.tree_map(lambda a: a, v)
    vnan["params"]["W_hh"] = v["params"]["W_hh"].at[0, 0].set(NAN)
    vint = {"params": dict(v["params"], W_hh=jnp.ones((4, 4), jnp.int32))}
    vextra = {"params": v["params"], "batch_stats": {"bn_h": {"mean": jnp.zeros(4)}}}
    out += vary(
        "step",
        "as_step",
        gf.as_step,
        {"cell": cell},
        "variables",
        [
            (None, "None"),
            ({}, "{}"),
            ({"params": {}}, "{'params': {}}"),
            (other, "variables of a d=5 cell"),
            (vnan, "W_hh with a NaN"),
            (vint, "int32 W_hh"),
            (vextra, "an extra batch_stats collection"),
        ],
        names=("variables", "params", "W_hh", "batch_stats", "collection"),
    )
    out += vary(
        "step",
        "as_step",
        gf.as_step,
        {"cell": cell, "variables": v},
        "train",
        [("yes", "'yes'"), (1, "1"), (None, "None")],
    )
    out += vary("step", "as_step", gf.as_step, {"cell": cell, "variables": v}, "key", key_variants())
    out += vary(
        "step",
        "as_step",
        gf.as_step,
        {"variables": v},
        "cell",
        [(None, "None"), ("tanh", "'tanh'"), (3, "3")],
    )

    # unroll_cell: the linear preset against a NumPy loop
    lcell = mk("linear", 3, 2)
    lv = gf.init_cell(lcell, KEY)
    P = {k: np.asarray(a, np.float64) for k, a in lv["params"].items()}
    xs = np.asarray(jax.random.normal(jax.random.key(2), (30, 2, 2)), np.float64)
    h, hs = np.zeros((2, 3)), []
    for t in range(30):
        h = h @ P["W_hh"].T + xs[t] @ P["W_xh"].T + P["b"]
        hs.append(h)
    xs32 = jnp.asarray(xs, jnp.float32)
    add(
        case(
            "step",
            "unroll_cell",
            "'linear' d=3, T=30 (eval)",
            lambda: gf.unroll_cell(lcell, lv, lcell.initialize_carry(2), xs32),
            ref(np.stack(hs), rtol=1e-4, atol=1e-5, get=lambda r: r[0]["h"]),
        )
    )
    ubase = {"cell": lcell, "variables": lv, "carry0": lcell.initialize_carry(2), "xs": xs32}
    nx = np.asarray(xs32).copy()
    nx[4] = NAN
    out += vary(
        "step",
        "unroll_cell",
        gf.unroll_cell,
        ubase,
        "xs",
        [
            (jnp.zeros((30, 2, 3)), "input_size 3 (cell: 2)"),
            (jnp.asarray(nx), "NaN at t = 4"),
            (jnp.zeros((0, 2, 2)), "T = 0"),
            (None, "None"),
        ],
        names=XS_NAMES,
    )
    out += vary("step", "unroll_cell", gf.unroll_cell, ubase, "train", [("yes", "'yes'"), (1, "1")])
    out += vary(
        "step",
        "unroll_cell",
        gf.unroll_cell,
        ubase,
        "variables",
        [({}, "{}"), (None, "None")],
        names=("variables", "params"),
    )
    out += vary(
        "step",
        "unroll_cell",
        gf.unroll_cell,
        ubase,
        "carry0",
        [
            (lcell.initialize_carry(5), "batch 5 (xs: 2)"),
            ({"h": jnp.full((2, 3), NAN), "t": jnp.zeros(2, jnp.int32)}, "NaN h"),
        ],
        names=CARRY_NAMES,
    )

    # check_finite, describe
    add(
        case(
            "step",
            "check_finite",
            "finite tree with an int leaf",
            lambda: gf.check_finite({"a": jnp.ones(2), "t": 3}),
            ref(None, why="None (no error)"),
        )
    )
    for tree, lab in [
        ({"a": jnp.array([NAN])}, "{'a': [nan]}"),
        ({"a": [jnp.ones(1), np.array([INF])]}, "{'a': [ones, [inf]]}"),
    ]:
        add(
            case(
                "step",
                "check_finite",
                lab,
                functools.partial(gf.check_finite, tree),
                bad("re:\\['a'\\]", why="refused, naming the leaf ['a']"),
            )
        )
    add(
        case(
            "specs",
            "describe",
            "'bn_notanh'",
            lambda: gf.describe("bn_notanh").splitlines()[0],
            ref("h_t = BN_h(W_hh h_{t-1}) + BN_x(W_xh x_t)"),
        )
    )
    out += vary(
        "specs",
        "describe",
        gf.describe,
        {},
        "spec",
        [("foo", "'foo'"), (None, "None"), (3, "3")],
        names=("spec", "name", "foo", "unknown"),
    )
    return out


# ------------------------------------------------------------------------------------------ tasks, train


def _scratch(prefix: str) -> str:
    """A temporary folder for the file cases, removed when the process exits."""
    td = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, td, True)
    return td


def _task_cases() -> list[Case]:
    M, out = "tasks", []
    add = out.append
    for fname, arg, lo in [
        ("adding", "seq_len", 2),
        ("adding_product", "seq_len", 2),
        ("recall", "seq_len", 2),
        ("copy_memory", "delay", 1),
        ("adding_affine_floor", "seq_len", 2),
    ]:
        out += vary(M, fname, getattr(tasks, fname), {}, arg, int_variants(lo), names=(arg, "T", "length"))
    for T in (2, 3, 10, 1001, 10**9):
        h = T // 2
        add(
            case(
                M,
                "adding_affine_floor",
                f"seq_len={_label(T)}",
                functools.partial(tasks.adding_affine_floor, T),
                ref(float(1 - (Fraction(1, h) + Fraction(1, T - h)) / 2), rtol=1e-12),
            )
        )
    add(
        case(
            M,
            "adding",
            "seq_len=10**7 (lazy)",
            functools.partial(tasks.adding, 10**7),
            ref(
                np.array([10**7, 2, 1 / 6]),
                rtol=1e-12,
                get=lambda t: np.array([t.seq_len, t.input_size, t.baseline]),
            ),
        )
    )
    add(
        case(
            M,
            "copy_memory",
            "delay=1",
            functools.partial(tasks.copy_memory, 1),
            ref(21, get=lambda t: t.seq_len),
        )
    )
    task = tasks.adding(10)

    def adding_check(b):
        xs, ys = (np.asarray(a, np.float64) for a in b)
        markers = xs[:, :, 1].sum(0)
        target = (xs[:, :, 0] * xs[:, :, 1]).sum(0)
        ok = xs.shape == (10, 4, 2) and np.all(markers == 2) and np.allclose(ys, target, rtol=1e-6)
        return ok, f"xs {xs.shape}, markers per sequence {markers.tolist()}"

    add(
        case(
            M,
            "Task.sample",
            "adding(10), batch 4: two markers, y = Σ u·m",
            functools.partial(task.sample, KEY, 4),
            chk(adding_check, "xs (10, 4, 2), two markers per sequence, y = Σ_t u_t m_t"),
        )
    )
    out += vary(M, "Task.sample", task.sample, {"key": KEY}, "batch_size", int_variants(1)[:7])
    out += vary(M, "Task.sample", task.sample, {"batch_size": 4}, "key", key_variants(required=True))
    mt = tasks.make_task
    add(case(M, "make_task", "'copy', 10", lambda: mt("copy", 10).seq_len, ref(30)))
    for args, call, names in [
        ("'foo'", functools.partial(mt, "foo", 10), ("name", "foo", "unknown")),
        ("None", functools.partial(mt, None, 10), ("name", "None", "unknown")),
        ("'adding' without length", functools.partial(mt, "adding"), ("length",)),
        ("'digits', length=10", functools.partial(mt, "digits", 10), ("length",)),
        ("'adding', 10, foo=1", functools.partial(mt, "adding", 10, foo=1), ("foo", "options")),
        ("'adding', length=True", functools.partial(mt, "adding", True), ("length", "seq_len")),
    ]:
        add(case(M, "make_task", args, call, bad(*names)))
    digits = tasks.digits()
    add(
        case(
            M,
            "with_validation",
            "digits, 0.25",
            lambda: tasks.with_validation(digits, 0.25).train_size,
            ref(1078),
        )
    )
    out += vary(
        M,
        "with_validation",
        tasks.with_validation,
        {"task": digits},
        "fraction",
        float_variants(lo=0.0, lo_open=True, hi=1.0, hi_open=True),
    )
    out += vary(
        M,
        "with_validation",
        tasks.with_validation,
        {"fraction": 0.2},
        "task",
        [
            (None, "None"),
            ("digits", "'digits'"),
            (tasks.with_validation(digits, 0.2), "an already split task"),
        ],
        names=("task", "training arrays", "Task", "split"),
    )
    add10 = tasks.adding(10)
    add(
        case(
            M,
            "with_validation",
            "adding(10) (synthetic: returned unchanged)",
            lambda: tasks.with_validation(add10, 0.2) is add10,
            ref(True),
        )
    )
    out += vary(
        M,
        "with_validation",
        tasks.with_validation,
        {"task": digits},
        "seed",
        [(-1, "-1"), ("a", "'a'"), (2.5, "2.5")],
    )
    out += vary(
        M,
        "digits",
        tasks.digits,
        {},
        "test_fraction",
        float_variants(lo=0.0, lo_open=True, hi=1.0, hi_open=True)[:8],
    )
    out += vary(
        M, "digits", tasks.digits, {}, "seed", [(-1, "-1"), ("a", "'a'"), (2.5, "2.5"), (True, "True")]
    )
    out += vary(M, "digits", tasks.digits, {}, "permuted", [("yes", "'yes'"), (2, "2")])
    out += vary(
        M,
        "mnist1d",
        tasks.mnist1d,
        {},
        "num_samples",
        [(0, "0"), (-1, "-1"), (True, "True"), (2.5, "2.5"), ("10", "'10'")],
    )
    out += vary(M, "mnist1d", tasks.mnist1d, {"num_samples": 100}, "seed", [(-1, "-1"), ("a", "'a'")])
    af = tasks.affine_fit
    add(
        case(
            M,
            "affine_fit",
            "adding(10)",
            functools.partial(af, task, KEY),
            ref(0.8, atol=0.03, why="≈ 0.8 = the affine floor 1 − 2/T (atol 0.03, the documented example)"),
        )
    )
    out += vary(
        M,
        "affine_fit",
        af,
        {"task": task, "key": KEY},
        "n_train",
        [(20, "20 (= T·input_size)"), (0, "0"), (-1, "-1"), (True, "True"), (2.5, "2.5")],
    )
    out += vary(
        M,
        "affine_fit",
        af,
        {"task": task, "key": KEY, "n_train": 100},
        "n_test",
        [(0, "0"), (-1, "-1"), (True, "True"), (2.5, "2.5")],
    )
    out += vary(
        M,
        "affine_fit",
        af,
        {"key": KEY},
        "task",
        [(tasks.copy_memory(5), "copy_memory(5)"), (None, "None")],
        names=("task", "tasks", "regression"),
    )
    out += vary(
        M,
        "affine_fit",
        af,
        {"task": task, "n_train": 100, "n_test": 100},
        "key",
        key_variants(required=True)[:4] + [(None, "None")],
    )
    return out


def _train_cases() -> list[Case]:
    M, out = "train", []
    add = out.append
    TC = gtrain.TrainConfig
    for f in ("steps", "batch_size", "eval_every", "eval_size", "record_every"):
        out += vary(M, "TrainConfig", TC, {}, f, int_variants(1))
    for f in ("floss_k", "floss_every"):
        out += vary(M, "TrainConfig", TC, {"floss": True, "floss_weight": 1.0}, f, int_variants(1)[:6])
    for f in ("checkpoint_every",):
        out += vary(M, "TrainConfig", TC, {}, f, int_variants(0))
    out += vary(M, "TrainConfig", TC, {"floss": True}, "floss_pre_steps", int_variants(0)[:6])
    out += vary(M, "TrainConfig", TC, {}, "learning_rate", float_variants(lo=0.0, lo_open=True))
    out += vary(M, "TrainConfig", TC, {}, "clip_norm", float_variants(lo=0.0, lo_open=True, none_ok=True))
    out += vary(
        M,
        "TrainConfig",
        TC,
        {},
        "seed",
        [(-1, "-1"), (2**32, "2**32"), (True, "True"), (2.5, "2.5"), ("0", "'0'"), (None, "None")],
    )
    out += vary(M, "TrainConfig", TC, {}, "floss", [("yes", "'yes'"), (1, "1"), (None, "None")])
    out += vary(M, "TrainConfig", TC, {"floss": True}, "floss_weight", float_variants(lo=0.0)[:9])
    out += vary(M, "TrainConfig", TC, {}, "probe_every", int_variants(1, none_ok=True)[:6])
    out += vary(M, "TrainConfig", TC, {"probe_every": 5}, "probe_size", int_variants(1)[:6])
    add(
        case(
            M,
            "TrainConfig",
            "floss=True alone (no flossing would happen)",
            functools.partial(TC, floss=True),
            bad("floss", "floss_weight", "floss_pre_steps"),
        )
    )

    task = tasks.adding(5)
    cell = gf.make_cell("tanh", 4, 2)
    tiny = TC(steps=2, batch_size=4, eval_every=1, eval_size=8, record_every=1)
    tr = functools.partial(gtrain.train, config=tiny)
    out += vary(
        M,
        "train",
        tr,
        {"task": task},
        "cell",
        [(None, "None"), ("tanh", "'tanh'"), (gf.make_cell("tanh", 4, 3), "input_size 3 (task: 2)")],
        names=("cell", "input_size"),
    )
    out += vary(M, "train", tr, {"cell": cell}, "task", [(None, "None"), ("adding", "'adding'")])
    out += vary(
        M,
        "train",
        gtrain.train,
        {"cell": cell, "task": task},
        "config",
        [("x", "'x'"), ({"steps": 2}, "a dict")],
    )
    v = gf.init_cell(cell, KEY)
    vnan = {"params": dict(v["params"], b=jnp.full(4, NAN))}
    out += vary(
        M,
        "train",
        tr,
        {"cell": cell, "task": task},
        "variables",
        [(vnan, "b with NaN"), ({}, "{}"), ({"params": {}}, "{'params': {}}")],
        names=("variables", "params", "b", "non-finite"),
    )
    fitc = functools.partial(gf.fit, config=tiny)
    out += vary(M, "fit", fitc, {"task": task}, "cell", [(None, "None"), ("tanh", "'tanh'"), (3, "3")])
    out += vary(M, "fit", fitc, {"cell": cell}, "task", [(None, "None"), ("adding", "'adding'")])

    params, bs = gtrain.init_params(cell, task, KEY)
    out += vary(
        M,
        "init_params",
        gtrain.init_params,
        {"cell": cell, "task": task},
        "key",
        key_variants(required=True)[:5] + [(None, "None")],
    )
    out += vary(
        M,
        "init_params",
        gtrain.init_params,
        {"task": task, "key": KEY},
        "cell",
        [(gf.make_cell("tanh", 4, 3), "input_size 3 (task: 2)"), (None, "None")],
        names=("cell", "input_size"),
    )
    xs = jnp.zeros((5, 3, 2))
    fbase = {"cell": cell, "params": params, "batch_stats": bs, "xs": xs, "train": False}
    out += vary(M, "forward", gtrain.forward, fbase, "train", [("yes", "'yes'"), (None, "None")])
    out += vary(M, "forward", gtrain.forward, fbase, "readout", [("foo", "'foo'"), (None, "None")])
    nxs = np.zeros((5, 3, 2), np.float32)
    nxs[1] = NAN
    out += vary(
        M,
        "forward",
        gtrain.forward,
        fbase,
        "xs",
        [
            (jnp.zeros((5, 3, 3)), "input_size 3"),
            (jnp.asarray(nxs), "NaN at t = 1"),
            (jnp.zeros((5, 3)), "2-D"),
        ],
        names=XS_NAMES,
    )
    out += vary(M, "forward", gtrain.forward, fbase, "perturb", [(jnp.zeros((5, 3, 5)), "(5, 3, 5) (d = 4)")])
    ys = jnp.zeros(3)
    ebase = {"cell": cell, "task": task, "params": params, "batch_stats": bs, "xs": xs, "ys": ys}
    out += vary(
        M, "evaluate", gtrain.evaluate, ebase, "xs", [(jnp.asarray(nxs), "NaN at t = 1")], names=XS_NAMES
    )
    out += vary(
        M,
        "evaluate",
        gtrain.evaluate,
        ebase,
        "ys",
        [(jnp.zeros(5), "5 targets (batch 3)"), (jnp.full(3, NAN), "NaN targets")],
        names=("ys", "targets"),
    )
    out += vary(
        M,
        "gradient_flow",
        gtrain.gradient_flow,
        ebase,
        "xs",
        [(jnp.asarray(nxs), "NaN at t = 1")],
        names=XS_NAMES,
    )
    out += vary(M, "gradient_flow", gtrain.gradient_flow, ebase, "train", [("yes", "'yes'")])
    td = _scratch("edge_probe_")
    txt = Path(td) / "not_a_checkpoint.npz"
    txt.write_text("hello")
    template = {"params": params, "batch_stats": bs, "opt_state": None}
    out += vary(
        M,
        "load_checkpoint",
        gtrain.load_checkpoint,
        {"template": template},
        "path",
        [(str(Path(td) / "missing.npz"), "a missing file"), (str(txt), "a text file"), (td, "a folder")],
        names=("checkpoint", "path", "file", "re:edge_probe_"),
    )
    out += vary(
        M,
        "batch_for_step",
        gtrain.batch_for_step,
        {"task": task, "config": tiny},
        "step",
        [(-1, "-1"), (True, "True"), (2.5, "2.5"), ("1", "'1'"), (None, "None")],
    )
    lbase = {"cell": cell, "variables": v, "task": task, "key": KEY}
    out += vary(
        M, "lyapunov", gtrain.lyapunov, lbase, "k", [(0, "0"), (-1, "-1"), (5, "5 (n = 4)"), (True, "True")]
    )
    out += vary(
        M, "lyapunov", gtrain.lyapunov, lbase, "steps", [(0, "0"), (-1, "-1"), (True, "True"), (2.5, "2.5")]
    )
    out += vary(
        M, "lyapunov", gtrain.lyapunov, lbase, "transient", [(-1, "-1"), (True, "True"), (10**6, "10**6")]
    )
    out += vary(M, "lyapunov", gtrain.lyapunov, lbase, "key", [(1.5, "1.5"), ("k", "'k'"), (None, "None")])
    pxs, pys = jnp.zeros((2, 3, 2)), jnp.zeros(3)
    add(
        case(
            M,
            "probe",
            "T = 2",
            functools.partial(gtrain.probe, cell, task, params, bs, pxs, pys),
            bad("T", "xs", "steps", "3"),
        )
    )
    # valid: NumPy scalars are accepted as ints; a batch is the task's (T, B, input_size) sample
    add(case(M, "TrainConfig", "steps=np.int64(5)", lambda: TC(steps=np.int64(5)).steps, ref(5)))
    add(
        case(
            M,
            "batch_for_step",
            "step 0 of adding(5), batch 4",
            functools.partial(gtrain.batch_for_step, task, tiny, 0),
            chk(
                lambda b: (
                    tuple(b[0].shape) == (5, 4, 2) and tuple(b[1].shape) == (4,),
                    f"shapes {tuple(b[0].shape)}, {tuple(b[1].shape)}",
                ),
                "xs (5, 4, 2), ys (4,)",
            ),
        )
    )
    return out


# ----------------------------------------------------------------------------------------- sweep, measure


def _sweep_cases() -> list[Case]:
    M, out = "sweep", []
    add = out.append
    G = gf.Grid
    for args, call, names in [
        ("static={'a': []}", lambda: G(static={"a": []}), ("a", "empty")),
        ("traced={'a': ['x']}", lambda: G(traced={"a": ["x"]}), ("a",)),
        ("traced={'a': [1.0, 'x']}", lambda: G(traced={"a": [1.0, "x"]}), ("a",)),
        ("static={'a': [object()]}", lambda: G(static={"a": [object()]}), ("a",)),
        ("'a' both static and traced", lambda: G(static={"a": [1]}, traced={"a": [1.0]}), ("a",)),
        ("static='x'", lambda: G(static="x"), ("static",)),
        ("traced={'a': [[1.0, 2.0]]}", lambda: G(traced={"a": [[1.0, 2.0]]}), ("a",)),
        ("traced={3: [1.0]}", lambda: G(traced={3: [1.0]}), ("3", "name")),
    ]:
        add(case(M, "Grid", args, call, bad(*names)))

    def fn(static):
        return lambda c: {"y": c["a"] ** static["p"] + c["seed"]}

    grid = G(static={"p": [1, 2]}, traced={"a": [1.0, 2.0], "seed": [0, 10]})
    add(
        case(
            M,
            "run_sweep",
            "the documented example",
            lambda: gf.run_sweep(fn, grid)["y"],
            ref(np.array([1.0, 11.0, 2.0, 12.0, 1.0, 11.0, 4.0, 14.0])),
        )
    )
    base = {"fn": fn, "grid": grid}
    out += vary(M, "run_sweep", gf.run_sweep, base, "chunk", int_variants(1)[:7])
    out += vary(M, "run_sweep", gf.run_sweep, base, "fn", [(None, "None"), ("x", "'x'")])
    out += vary(M, "run_sweep", gf.run_sweep, base, "grid", [(None, "None"), ({"a": [1]}, "a dict")])
    out += vary(M, "run_sweep", gf.run_sweep, base, "tag", [(3, "3"), (None, "None")])
    out += vary(M, "run_sweep", gf.run_sweep, base, "progress", [("loud", "'loud'"), (3, "3")])
    out += vary(M, "run_sweep", gf.run_sweep, base, "store", [(3, "3")])
    table = {
        "a": np.array([1.0, 1.0, 2.0, 2.0]),
        "b": np.array([10.0, 20.0, 10.0, 20.0]),
        "y": np.array([10.0, 20.0, 20.0, 40.0]),
    }
    add(
        case(
            M,
            "pivot",
            "a × b",
            lambda: gf.pivot(table, ["a", "b"], "y")[1],
            ref(np.array([[10.0, 20.0], [20.0, 40.0]])),
        )
    )
    out += vary(
        M, "pivot", gf.pivot, {"table": table, "axes": ["a", "b"]}, "column", [("z", "'z'"), (None, "None")]
    )
    out += vary(
        M,
        "pivot",
        gf.pivot,
        {"table": table, "column": "y"},
        "axes",
        [(["a"], "['a'] (rows repeat)"), (["c"], "['c']"), ("a", "'a'")],
        names=("axes", "a", "c", "repeated"),
    )
    td = _scratch("edge_probe_sweep_")
    f = Path(td) / "file.txt"
    f.write_text("x")
    out += vary(
        M,
        "load_table",
        gf.load_table,
        {},
        "store",
        [
            (str(Path(td) / "missing"), "a missing folder"),
            (str(f), "a file"),
            (td, "an empty folder"),
            (None, "None"),
        ],
        names=("store", "folder", "chunks", "re:edge_probe_sweep_"),
    )
    return out


def _measure_cases() -> list[Case]:
    from gradflow import measure

    M, out = "measure", []
    add = out.append
    add(
        case(
            M,
            "top_exponent",
            "W = diag(.5, .25)",
            functools.partial(measure.top_exponent, lin_step, C0, XS, KEY),
            ref(LOG_W[0], rtol=1e-3, get=lambda r: r[0]),
        )
    )
    out += vary(
        M,
        "top_exponent",
        measure.top_exponent,
        {"step": lin_step, "carry0": C0, "xs": XS, "key": KEY},
        "burn",
        [(-1, "-1"), (T_LONG, "300 (= T)"), (True, "True"), (2.5, "2.5")],
    )
    out += vary(
        M,
        "top_exponent",
        measure.top_exponent,
        {"step": lin_step, "carry0": C0, "xs": XS},
        "key",
        [(None, "None"), (1.5, "1.5")],
    )
    out += vary(
        M,
        "cell_for",
        measure.cell_for,
        {"d": 4, "input_size": 2},
        "preset",
        [("foo", "'foo'"), (None, "None")],
        names=("preset", "name", "foo", "unknown"),
    )
    cell = measure.cell_for("tanh", 4, 2)
    out += vary(
        M,
        "init_variables",
        measure.init_variables,
        {"cell": cell, "key": KEY},
        "batch",
        int_variants(1)[:5],
        names=("batch", "batch_size"),
    )
    v = measure.init_variables(cell, 2, KEY)
    nxs = np.zeros((10, 2, 2), np.float32)
    nxs[3] = NAN
    lbase = {
        "cell": cell,
        "variables": v,
        "carry0": cell.initialize_carry(2),
        "xs": jnp.zeros((10, 2, 2)),
        "train": False,
    }
    out += vary(
        M, "lag_norms", measure.lag_norms, lbase, "xs", [(jnp.asarray(nxs), "NaN at t = 3")], names=XS_NAMES
    )
    out += vary(M, "lyapunov", measure.lyapunov, lbase, "k", [(0, "0"), (5, "5 (n = 8)")][:1] + [(-1, "-1")])
    out += vary(
        M,
        "lag_singular_values",
        measure.lag_singular_values,
        lbase,
        "lags",
        [((0,), "(0,)"), ((11,), "(11,)")],
    )
    return out


GENERATORS = {
    "theory": _theory_cases,
    "spectra": _spectra_helper_cases,
    "stats": _stats_cases,
    "capacity": _capacity_cases,
    "stable": _stable_cases,
    "norm": _norm_cases,
    "unit_bn": _unit_bn_cases,
    "engine": _engine_cases,
    "cells": _cell_cases,
    "tasks": _task_cases,
    "train": _train_cases,
    "sweep": _sweep_cases,
    "measure": _measure_cases,
}


def all_cases(only=None) -> list[Case]:
    """Every case (of the generators named in ``only``, default all), built with warnings silenced."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, gen in GENERATORS.items():
            if only is None or name in only:
                out += gen()
    return out


# ----------------------------------------------------------------------------------------------- report


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def report(outcomes: list[Outcome], seconds: float | None = None, timeout: float = 20.0) -> str:
    """The Markdown document: counts per class and per module, and every call that is neither clear nor
    correct."""
    counts = collections.Counter(o.cls for o in outcomes)
    n = len(outcomes)
    lines = [
        "# Edge probe: gradflow's public functions under bad and extreme arguments",
        "",
        "Generated by `docs/edge_probe.py`; regenerate with `python -m docs.edge_probe` from the checkout "
        "root "
        "(about 3 minutes on one core). Do not edit by hand.",
        "",
        f"{n} calls. Each is a bad argument that must be refused (a ValueError/TypeError or a warning naming "
        "the "
        "argument or the quantity at fault) or a valid extreme call with a reference value computed without "
        "gradflow (NumPy float64 closed forms, plain loops, exact fractions); the expectation of each call "
        "is "
        f"in the table below and in the probe's source. Per-call limit: {timeout:g} s.",
        "",
        "| class | meaning | calls |",
        "|---|---|---:|",
    ]
    meaning = {
        "clear": "refused (or warned), the message names the argument or quantity",
        "cryptic": "raised, but not a ValueError/TypeError of gradflow's naming it (KeyError, OverflowError, "
        "a JAX/Flax/NumPy internal error, …)",
        "correct": "valid call, matches the reference (or NaN with a warning saying so)",
        "silent-wrong": "a finite result that disagrees, or a bad argument accepted without a word",
        "silent-NaN": "NaN or inf with no warning or error",
        "hang": f"no result within {timeout:g} s",
        "warned": "warns, but returns a wrong value or accepts a bad argument with a warning not naming it",
    }
    for c in CLASSES:
        lines.append(f"| {c} | {meaning[c]} | {counts.get(c, 0)} |")
    lines += [
        "",
        "## Per module",
        "",
        "| module | " + " | ".join(CLASSES) + " | total |",
        "|---|" + "---:|" * (len(CLASSES) + 1),
    ]
    per = collections.defaultdict(collections.Counter)
    for o in outcomes:
        per[o.case.module][o.cls] += 1
    for mod in sorted(per):
        row = per[mod]
        lines.append(
            f"| {mod} | " + " | ".join(str(row.get(c, 0)) for c in CLASSES) + f" | {sum(row.values())} |"
        )
    bad_ones = [o for o in outcomes if o.cls not in ("clear", "correct")]
    order = {c: i for i, c in enumerate(CLASSES)}
    bad_ones.sort(key=lambda o: (order[o.cls], o.case.module, o.case.func))
    lines += [
        "",
        f"## Calls neither clear nor correct ({len(bad_ones)})",
        "",
        "| class | function | arguments | what happened | expected |",
        "|---|---|---|---|---|",
    ]
    for o in bad_ones:
        c = o.case
        lines.append(
            f"| {o.cls} | `{c.module}.{c.func}` | {_cell(c.args)} | {_cell(o.happened)} | "
            f"{_cell(expected_text(c.expect))} |"
        )
    return "\n".join(lines) + "\n"


def run_all(cases: list[Case], timeout: float = 20.0, progress=None) -> list[Outcome]:
    outcomes = []
    for i, c in enumerate(cases):
        outcomes.append(run_case(c, timeout))
        if progress is not None and (i + 1) % 200 == 0:
            progress(f"{i + 1}/{len(cases)} calls")
    return outcomes


def main(argv=None) -> list[Outcome]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--only", nargs="*", choices=sorted(GENERATORS), help="run these groups only (writes nothing)"
    )
    p.add_argument("--timeout", type=float, default=20.0, help="per-call limit in seconds")
    p.add_argument("--out", default=None, help=f"where to write the report (default {OUT.relative_to(ROOT)})")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    cases = all_cases(a.only)
    say = lambda m: print(m, file=sys.stderr, flush=True)
    say(f"edge probe: {len(cases)} calls")
    outcomes = run_all(cases, a.timeout, progress=say)
    seconds = time.perf_counter() - t0
    counts = collections.Counter(o.cls for o in outcomes)
    print(
        f"{len(outcomes)} calls in {seconds:.0f} s: " + ", ".join(f"{c} {counts.get(c, 0)}" for c in CLASSES)
    )
    out = Path(a.out) if a.out else (OUT if not a.only else None)
    if out is not None:
        out.write_text(report(outcomes, seconds, a.timeout))
        print(f"wrote {out}")
    return outcomes


if __name__ == "__main__":
    main()
