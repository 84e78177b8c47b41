"""The edge probe's classifier (docs/edge_probe.py) on synthetic functions, and a sample of its real cases."""

import math
import time
import warnings

import numpy as np
import pytest

from docs import edge_probe as ep


def run(call, expect, timeout=5.0):
    return ep.run_case(ep.Case("synthetic", "f", "", call, expect), timeout)


def raises(exc):
    def f():
        raise exc

    return f


def warns_and_returns(message, value, category=RuntimeWarning):
    def f():
        warnings.warn(message, category, stacklevel=2)
        return value

    return f


# ------------------------------------------------------------------------------------------ classifier


def test_wrong_finite_value_is_silent_wrong():
    o = run(lambda: 2.0, ep.ref(1.0, rtol=1e-6))
    assert o.cls == "silent-wrong"
    assert "2" in o.happened


def test_value_within_tolerance_is_correct_and_outside_is_not():
    assert run(lambda: 1.0 + 1e-7, ep.ref(1.0, rtol=1e-6)).cls == "correct"
    assert run(lambda: 1.0 + 1e-5, ep.ref(1.0, rtol=1e-6)).cls == "silent-wrong"
    assert run(lambda: np.array([1.0, 2.0]), ep.ref(np.array([1.0, 2.0]))).cls == "correct"
    assert run(lambda: np.array([1.0, 2.0]), ep.ref(np.array([1.0, 2.0, 3.0]))).cls == "silent-wrong"


def test_nan_without_warning_is_silent_nan():
    assert run(lambda: math.nan, ep.ref(1.0)).cls == "silent-NaN"
    assert run(lambda: np.array([1.0, math.inf]), ep.ref(np.array([1.0, 2.0]))).cls == "silent-NaN"


def test_bad_argument_accepted_is_silent_wrong_or_silent_nan():
    assert run(lambda: 3.0, ep.bad("k")).cls == "silent-wrong"
    assert run(lambda: object(), ep.bad("k")).cls == "silent-wrong"
    assert run(lambda: (1.0, math.nan), ep.bad("k")).cls == "silent-NaN"


def test_value_error_naming_the_argument_is_clear():
    o = run(raises(ValueError("k must be a positive int, got 0")), ep.bad("k"))
    assert o.cls == "clear"
    assert o.happened.startswith("ValueError")
    assert run(raises(TypeError("gain must be a real number")), ep.bad("gain")).cls == "clear"


def test_error_not_naming_the_argument_is_cryptic():
    assert run(raises(ValueError("zero-size array to reduction operation")), ep.bad("k")).cls == "cryptic"
    # a name inside another word is not the name
    assert run(raises(ValueError("gamma_h must be finite")), ep.bad("gamma")).cls == "cryptic"


def test_key_error_and_other_exception_types_are_cryptic_even_when_naming():
    assert run(raises(KeyError("k")), ep.bad("k")).cls == "cryptic"
    assert run(raises(ZeroDivisionError("k division by zero")), ep.bad("k")).cls == "cryptic"
    assert run(raises(OverflowError("k out of range")), ep.bad("k")).cls == "cryptic"


def test_an_error_raised_inside_a_library_is_cryptic_even_when_naming():
    import jax

    keys = jax.random.split(jax.random.key(0), 3)
    o = run(lambda: jax.random.normal(keys, ()), ep.bad("key"))  # JAX: "normal accepts a single key, ..."
    assert o.cls == "cryptic"
    assert "[raised in jax]" in o.happened


def test_refusing_a_valid_call_is_clear_only_when_it_names_why():
    refuse = raises(ValueError("the arguments overflow float64"))
    assert run(refuse, ep.ref(1.0, names=("overflow",))).cls == "clear"
    assert run(refuse, ep.ref(1.0)).cls == "cryptic"


def test_warnings():
    # a bad argument accepted with a warning naming it: clear; with another warning: warned
    assert run(warns_and_returns("tol is not finite", 1.0), ep.bad("tol")).cls == "clear"
    assert run(warns_and_returns("something odd", 1.0), ep.bad("tol")).cls == "warned"
    # a wrong value with a warning: warned; NaN with a descriptive warning: flagged, correct
    assert run(warns_and_returns("precision lost", 2.0), ep.ref(1.0)).cls == "warned"
    assert run(warns_and_returns("3 values lie below the precision", math.nan), ep.ref(1.0)).cls == "correct"
    # NumPy's generic floating-point warnings do not flag a NaN as inexact
    numpy_warning = warns_and_returns("invalid value encountered in divide", math.nan)
    assert run(numpy_warning, ep.ref(1.0)).cls == "warned"
    # deprecations are noise
    deprecation = warns_and_returns("k is deprecated", 3.0, DeprecationWarning)
    assert run(deprecation, ep.bad("k")).cls == "silent-wrong"


def test_hang_is_cut_by_the_timeout():
    def spin():
        while True:
            pass

    t0 = time.perf_counter()
    o = run(spin, ep.bad("k"), timeout=0.3)
    assert o.cls == "hang"
    assert time.perf_counter() - t0 < 5.0


def test_check_function_and_get():
    even = ep.chk(lambda x: (x % 2 == 0, f"got {x}"), "an even number", get=lambda r: r["n"])
    assert run(lambda: {"n": 4}, even).cls == "correct"
    assert run(lambda: {"n": 3}, even).cls == "silent-wrong"
    assert run(lambda: {"m": 4}, even).cls == "silent-wrong"  # the result lacks the field


def test_close_matches_nan_and_signed_inf_only():
    assert ep.close([math.nan, 1.0], [math.nan, 1.0], 0, 0)
    assert ep.close(-math.inf, -math.inf, 0, 0)
    assert not ep.close(math.inf, -math.inf, 0, 0)
    assert not ep.close(1.0, math.nan, 1e-3, 0)
    assert ep.close(None, None, 0, 0)
    assert not ep.close("a", 1.0, 0, 0)


def test_one_letter_names_do_not_match_the_article():
    names = ep.subj("a")
    assert not ep.names_in("could not convert a string to float", names)
    assert ep.names_in("a is empty", names)
    assert ep.names_in("'a' holds NaN", names)


def test_report_lists_every_call_that_is_neither_clear_nor_correct():
    outcomes = [
        run(raises(ValueError("k must be > 0")), ep.bad("k")),
        run(lambda: 2.0, ep.ref(1.0)),
        run(lambda: 1.0, ep.ref(1.0)),
        run(raises(KeyError("x")), ep.bad("k")),
    ]
    md = ep.report(outcomes)
    assert "python -m docs.edge_probe" in md
    assert "| silent-wrong | a finite result" in md
    assert "## Calls neither clear nor correct (2)" in md
    assert md.count("| `synthetic.f` |") == 2
    assert "| synthetic | 1 | 1 | 1 | 1 | 0 | 0 | 0 | 4 |" in md


# ----------------------------------------------------------------------------------- real probe cases


def test_cases_are_well_formed():
    cases = ep.all_cases(["theory", "stats", "capacity", "unit_bn", "sweep"])
    assert len(cases) > 800
    keys = [(c.module, c.func, c.args) for c in cases]
    assert len(set(keys)) == len(keys)
    for c in cases:
        assert c.expect.kind in ("bad", "ref")
        assert callable(c.call)
        if c.expect.kind == "bad":
            assert c.expect.names, c
        else:
            assert c.expect.check is not None or c.expect.ref is not None or c.expect.why, c


@pytest.mark.parametrize(
    "group, func, args, cls",
    [
        ("theory", "effective_gain", "gain=2, dropout=0.75", "correct"),
        ("theory", "effective_gain", "gain=nan", "clear"),
        ("theory", "memory_state_moment", "lam=0.9, rho=0.5 (plain double loop)", "correct"),
        ("theory", "critical_input_gamma", "name='foo'", "clear"),
        ("unit_bn", "zero_variance_log_gain", "gamma=1e+300, eps=1e-300", "correct"),
        ("stats", "rank", "x=[1, 1, 2]", "correct"),
    ],
)
def test_sample_of_real_cases(group, func, args, cls):
    (c,) = [c for c in ep.all_cases([group]) if c.func == func and c.args == args]
    o = ep.run_case(c, timeout=10.0)
    assert o.cls == cls, o
