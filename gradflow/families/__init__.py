"""The registry of cell families that live in one module each (``gradflow.families.<name>``).

A family module holds everything gradflow knows about the family: its options (a frozen dataclass derived
from `gradflow.families.base.FamilyOptions`), its linen cell, its equations for `gradflow.describe`, a NumPy
reference step for the tests, and, where one exists, the exact diagonal of its state Jacobian (for the
closed-form all-lag log norms) or a predicted rate. It ends with ``FAMILY = base.Family(...)``.

Adding a family: write ``gradflow/families/<name>.py``, add its name to :data:`NAMES` below, add a row to
``tests/test_families.py``'s parametrization. `gradflow.make_cell`, `init_cell`, `as_step`, `describe`,
`gradflow.CELLS` and every engine function then accept it.

This module imports nothing heavy (``gradflow.specs`` reads :data:`NAMES`); a family module is imported the
first time its name is used.

Example:
    >>> import gradflow
    >>> "mingru" in gradflow.CELLS
    True
    >>> print(gradflow.describe("mingru").splitlines()[0])
    z_t = σ(W_z x_t + b_z),  h̃_t = W_h x_t + b_h
"""

from __future__ import annotations

import importlib
from typing import Any

#: The registry: one name per family module gradflow/families/<name>.py.
NAMES: tuple[str, ...] = ("mingru", "minlstm", "rglru", "s6", "lru_stack")

__all__ = ["NAMES", "get", "is_family", "make", "describe", "predicted_rate"]


def get(name: str):
    """The `gradflow.families.base.Family` record of a registered family name (ValueError otherwise)."""
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"unknown cell family {name!r}; registered families: {', '.join(NAMES)}")
    return importlib.import_module(f"gradflow.families.{name}").FAMILY


def is_family(spec: Any) -> bool:
    """Whether ``spec`` is a registered family name or a family's options object."""
    if isinstance(spec, str):
        return spec in NAMES
    return getattr(type(spec), "family", None) in NAMES and hasattr(spec, "size_problem")


def make(spec: Any, hidden_size: int, input_size: int, **options):
    """The cell of a family name (or options object) with ``options`` overriding its defaults."""
    from gradflow.families import base

    return base.make(get(spec if isinstance(spec, str) else type(spec).family), spec, hidden_size,
                     input_size, **options)


def describe(spec: Any) -> str:
    """The equations of a family name or options object (what `gradflow.describe` prints)."""
    from gradflow.families import base

    return base.describe(get(spec if isinstance(spec, str) else type(spec).family), spec)


def predicted_rate(name: str, params: dict, options: Any = None) -> tuple[float, str]:
    """(predicted rate ln per step, its kind) of a family's parameters; (nan, "none") where it has none."""
    fam = get(name)
    if fam.rate is None:
        return float("nan"), "none"
    return fam.rate(params, fam.options() if options is None else options)
