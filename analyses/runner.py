"""The analyses runner: registry, caching, resumption and progress behind ``make figures``.

Conventions every analysis module follows (``analyses/<name>.py``; ``analyses/training.py`` included):

- ``NAME``: str, the module's name (``"decay"``), also the stem of its data files.
- ``CONFIG``: dict, the default configuration (what ``make figures`` runs). JSON-serializable values only
  (numbers, strings, bools, lists, nested dicts); seeds live here.
- ``QUICK`` and ``FULL``: dicts of overrides merged onto ``CONFIG`` (``{**CONFIG, **QUICK}``) for
  ``--quick`` (small sizes, CI) and ``--full`` (larger sizes). They may also be complete configurations.
- ``run(config, progress=None) -> dict``: the computation. Returns a flat dict whose values are numpy arrays,
  floats, ints, strings or lists (of numbers or of strings). ``progress`` is a callable taking one message
  string (``None`` means silent); inside the runner it is a :class:`Progress`, which also offers
  ``progress.memo(label, fn)`` for per-part resumption (see :func:`memo`).
- ``plot(data) -> dict[str, matplotlib.figure.Figure]``: figure file stem -> figure, drawn only from ``data``
  (the dict ``run`` returned, or the one :func:`load_data` reads back), so figures can be redrawn without
  recomputing. Stems are globally unique; by convention they start with ``NAME``.
- Optional ``write_extra(data) -> dict[str, str]``: file name -> text written beside the figures
  (the findings table's ``findings.md`` and ``findings.json``).
- Optional ``DEPENDS``: tuple of analysis names whose results this one reads (the findings table). The
  runner runs them first and calls ``run(config, progress, inputs={name: data})``; their data keys enter this
  one's key.

Files (``out``: ``figures/`` by default, ``figures/.quick/`` with ``--quick``, ``figures/full/`` with
``--full``):

- ``out/data/<name>.npz``: the data, ``out/data/<name>.json``: the sidecar (data key, plot key, configuration,
  gradflow version, elapsed seconds, figure stems, the type of every entry so lists come back as lists).
- ``out/<stem>.png``: the figures (PNG, dpi 120).
- ``figures/.cache/partial/<mode>/<name>/<key>/<label>.npz`` (git-ignored): per-part results of an
  unfinished analysis, dropped when it finishes.

Caching. The data key hashes the configuration, ``gradflow.__version__``, the code of the gradflow
package, the shared helpers ``analyses/common.py``, the analysis module's code and that of every
``analyses`` module it imports, transitively (``dropout`` imports ``decay.select_lags``), all without
docstrings and comments, and the analyses' without their ``plot`` / ``_plot*`` functions (so a change to
the code that produces numbers recomputes them; a change to a figure's looks or to any text only redraws).
The plot key hashes the data key, the whole module source and ``analyses/style.py``. An analysis whose
sidecar holds the current data key is not recomputed if its files read back in full (a truncated or corrupt
data file, sidecar or saved part is named in a warning and recomputed); it is redrawn from its saved data
when the plot key differs or a figure file is missing.
``--force`` recomputes. Every file is written atomically (temporary file + ``os.replace``) and the sidecar is
written last, so a run killed at any point leaves only complete results, and the next run resumes after the
last finished analysis (and, inside an analysis, after the last finished ``memo`` part).

Checks. After a run, ``python -m analyses`` reads back the outputs of every analysis it ran
(:func:`output_problems`: sidecar and data readable, every number finite, every figure present, the findings
table finite) and exits with status 1 naming each problem; ``--check-verdicts DIR`` also fails when a verdict
of the question's cells differs from ``DIR/findings.json`` (CI: the quick figures against the committed ones).

Example (REPL)::

    from analyses import runner, decay
    data = decay.run({**decay.CONFIG, **decay.QUICK}, progress=print)
    figs = decay.plot(data)                       # {"decay": Figure}
    data = runner.load_data("figures/data/decay")  # the saved data of `make figures`
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import importlib
import inspect
import io
import json
import math
import os
import re
import shutil
import sys
import time
import weakref
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from gradflow import cache
from gradflow.checks import atomic_write_bytes, atomic_write_json, json_default

#: Every analysis, in the order the runner runs them (``findings`` last: it reads the others' data).
ANALYSES: tuple[str, ...] = (
    "decay",
    "lengths",
    "spectra",
    "lyapunov",
    "bn_modes",
    "batch_coupling",
    "gamma_init",
    "cooijmans_fig1a",
    "dropout",
    "theory",
    "training",
    "cures",
    "training_study",
    "memory",
    "dynamics",
    "teacher_student",
    "findings",
)

MODES = ("default", "quick", "full")
ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "figures"
DPI = 120


# ----------------------------------------------------------------------------------------------- progress


class Progress:
    """Progress lines for one analysis (to stderr), plus per-part resumption.

    Calling it with a message prints ``[name  12.3s] message`` unless ``quiet``. ``memo(label, fn)`` returns
    ``fn()``'s dict, saved under ``partial_dir`` so that a rerun after an interruption reuses it.

    Args:
        name: the analysis name shown in each line.
        quiet: when True, the analysis' own lines are not printed.
        partial_dir: directory for per-part results, or None (no per-part resumption).
        stream: where lines go (default ``sys.stderr``).
    """

    def __init__(self, name: str, quiet: bool = False, partial_dir: Path | None = None, stream=None):
        self.name = name
        self.quiet = quiet
        self.partial_dir = partial_dir
        self.stream = stream
        self.t0 = time.perf_counter()
        self.memo_hits = 0
        self.memo_misses = 0

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"  [{self.name} {time.perf_counter() - self.t0:7.1f}s] {message}",
                  file=self.stream or sys.stderr, flush=True)

    def memo(self, label: str, fn: Callable[[], dict]) -> dict:
        """Return ``fn()`` (a flat dict as ``run`` returns), reusing a saved copy from an interrupted run."""
        if self.partial_dir is None:
            return fn()
        safe = "".join(c if (c.isalnum() or c in "-_.=") else "_" for c in label)
        path = self.partial_dir / safe
        if (path.parent / (safe + ".json")).exists():
            try:
                out = load_data(path)
                self.memo_hits += 1
                return out
            except ValueError as e:  # truncated or corrupt (load_data names the file)
                print(f"  [{self.name}] warning: saved part unreadable, recomputing it: {e}",
                      file=self.stream or sys.stderr, flush=True)
        out = fn()
        self.memo_misses += 1
        save_data(path, out)
        return out


def memo(progress: Any, label: str, fn: Callable[[], dict]) -> dict:
    """``progress.memo(label, fn)`` when the runner supplied one, else ``fn()`` (REPL use).

    Args:
        progress: the ``progress`` argument ``run`` received (a :class:`Progress`, a callable or None).
        label: a name for this part, unique within the analysis (e.g. ``"tanh_g1.5"``).
        fn: computes the part; returns a flat dict of arrays / scalars / strings / lists.
    """
    if isinstance(progress, Progress):
        return progress.memo(label, fn)
    return fn()


def say(progress: Any, message: str) -> None:
    """Send ``message`` to ``progress`` if it is callable (``None`` is silent)."""
    if progress is not None:
        progress(message)


# ----------------------------------------------------------------------------------------------- storage


def _kind(key: str, value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        return "array"
    raise ValueError(f"data entry {key!r} has unsupported type {type(value).__name__}; use numpy arrays, "
                     "floats, ints, strings or lists")


def save_data(stem: Path | str, data: dict, meta: dict | None = None) -> None:
    """Write ``data`` to ``<stem>.npz`` and the sidecar ``<stem>.json`` (atomically, sidecar last).

    Args:
        stem: path without suffix.
        data: flat dict of arrays, scalars, strings, lists (lists must be rectangular).
        meta: extra sidecar fields (keys, configuration, ...).

    Raises:
        ValueError: an entry has an unsupported type or a list is ragged.
    """
    stem = Path(stem)
    if not isinstance(data, dict):
        raise ValueError(f"analysis data must be a dict, got {type(data).__name__}")
    kinds, arrays = {}, {}
    for k, v in data.items():
        if not isinstance(k, str) or not k.isidentifier():
            raise ValueError(f"data key {k!r} must be an identifier-like string")
        kinds[k] = _kind(k, v)
        try:
            arr = np.asarray(v)
        except ValueError as e:
            raise ValueError(f"data entry {k!r} is ragged: {e}") from e
        if arr.dtype == object:
            raise ValueError(f"data entry {k!r} is ragged or holds objects; pad it or split it")
        arrays[k] = arr
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(stem.with_suffix(".npz"), buf.getvalue())
    atomic_write_json(stem.with_suffix(".json"), {**(meta or {}), "kinds": kinds})


def load_data(stem: Path | str) -> dict:
    """Read data written by :func:`save_data` back into the types ``run`` returned.

    Args:
        stem: path without suffix (``figures/data/decay``).

    Returns:
        dict: arrays as numpy arrays, scalars as Python numbers, strings as str, lists as lists.

    Raises:
        ValueError: a file is missing, truncated or corrupt, or the two do not match; the message names it.
    """
    stem = Path(stem)
    side_path, npz_path = stem.with_suffix(".json"), stem.with_suffix(".npz")
    try:
        kinds = json.loads(side_path.read_text())["kinds"]
        if not isinstance(kinds, dict):
            raise TypeError(f"'kinds' is a {type(kinds).__name__}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"unreadable sidecar {side_path} ({type(e).__name__}: {e})") from e
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in kinds}  # read every entry in full: a truncated file fails here
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"unreadable data file {npz_path} ({type(e).__name__}: {e})") from e
    out = {}
    for k, kind in kinds.items():
        a = arrays[k]
        if kind in ("int", "float", "bool", "str"):
            out[k] = a.item()
        elif kind == "list":
            out[k] = a.tolist()
        else:
            out[k] = a
    return out


def cached_result(stem: Path, dkey: str, warn: Callable[[str], None]) -> tuple[dict | None, dict | None]:
    """``(sidecar, data)`` of a saved result whose sidecar holds the data key ``dkey``, read back in full.

    ``data`` is None when there is no such result: no sidecar, another key, or a file that does not read back
    (truncated, corrupt, missing ``.npz``); the last two cases are reported through ``warn``, naming the file.
    """
    side_path = stem.with_suffix(".json")
    side = read_sidecar(stem)
    if not isinstance(side, dict):
        if side_path.exists():
            warn(f"warning: unreadable sidecar {side_path}; recomputing")
        return None, None
    if side.get("data_key") != dkey:
        return side, None
    try:
        return side, load_data(stem)
    except ValueError as e:
        warn(f"warning: {e}; recomputing")
        return side, None


def read_sidecar(stem: Path | str) -> dict | None:
    """The sidecar dict of a saved result, or None if absent or unreadable."""
    try:
        return json.loads(Path(stem).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------- keys


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def gradflow_code_hash() -> str:
    """Hash of gradflow's version and the code of every module in the package (:func:`code_only`: a change
    to a docstring or a comment does not recompute any analysis)."""
    import gradflow

    pkg = Path(gradflow.__file__).parent
    h = hashlib.sha256(str(getattr(gradflow, "__version__", "?")).encode())
    for p in sorted(pkg.rglob("*.py")):
        h.update(str(p.relative_to(pkg)).encode())
        h.update(code_only(p.read_text()).encode())
    return h.hexdigest()


def _strip_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def code_only(source: str) -> str:
    """Module source without docstrings and comments (``ast`` form): what a data key hashes."""
    return ast.unparse(_strip_docstrings(ast.parse(source)))


def _source_without_plot(source: str) -> str:
    """Module source without ``plot`` / ``_plot*`` functions, docstrings and comments (``ast`` form)."""
    tree = ast.parse(source)
    tree.body = [n for n in tree.body
                 if not (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                         and (n.name == "plot" or n.name.startswith("_plot")))]
    return ast.unparse(_strip_docstrings(tree))


#: Module -> source, held weakly: keyed by the module object, not ``id(module)``, because an id is reused
#: once a module is collected (a test's throwaway module), and a new module would read the old source.
_SOURCES: weakref.WeakKeyDictionary[ModuleType, str] = weakref.WeakKeyDictionary()


def _module_source(module: ModuleType) -> str:
    """The module's source as it was when first asked for (a file edited during a run does not change the
    keys of results computed by the code loaded before the edit)."""
    if module not in _SOURCES:
        try:
            _SOURCES[module] = inspect.getsource(module)
        except (OSError, TypeError):
            _SOURCES[module] = ""
    return _SOURCES[module]


def data_key(module: ModuleType, config: dict, dep_keys: dict | None = None,
             code_hash: str | None = None) -> str:
    """The cache key of an analysis' data: configuration, gradflow code, non-plot module source, inputs."""
    payload = {
        "name": module.NAME,
        "config": config,
        "gradflow": code_hash if code_hash is not None else gradflow_code_hash(),
        "source": _sha(_source_without_plot(_module_source(module)) or module.NAME),
        "helpers": _helpers_hash(),
        "imports": imports_hash(module),
        "deps": dep_keys or {},
    }
    return _sha(json.dumps(payload, sort_keys=True, default=json_default))[:20]


def _helpers_hash() -> str:
    """Hash of the shared measurement helpers (``analyses/common.py``) that every analysis' numbers use."""
    from analyses import common

    return _sha(_source_without_plot(_module_source(common)))


#: Project modules an analysis imports that do not enter its data key: the runner (storage and progress; a
#: stored result that does not read back is detected when loaded) and the plot style (in the plot key).
_NOT_IN_DATA_KEY = ("analyses.runner", "analyses.style")


def _direct_analyses_imports(source: str) -> set[str]:
    """``analyses.*`` module names imported anywhere in ``source`` (also inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)) if source else ():
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("analyses."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "analyses":
                names.update(f"analyses.{a.name}" for a in node.names)
            elif node.module.startswith("analyses."):
                names.add(node.module)
    return names


def imported_analyses(module: ModuleType) -> dict[str, ModuleType]:
    """The ``analyses.*`` modules ``module`` imports, transitively (runner and style left out), by name."""
    found: dict[str, ModuleType] = {}
    todo = [module]
    while todo:
        for name in sorted(_direct_analyses_imports(_module_source(todo.pop()))):
            if name in found or name in _NOT_IN_DATA_KEY or name == module.__name__:
                continue
            try:
                found[name] = importlib.import_module(name)
            except ModuleNotFoundError:  # ``from analyses import f`` of a name that is not a module
                continue
            todo.append(found[name])
    return found


def imports_hash(module: ModuleType) -> dict[str, str]:
    """Name -> hash of the non-plot source of every analyses module ``module`` imports (transitively), so
    that editing a helper another analysis imports (``decay.select_lags`` in dropout) recomputes it."""
    return {name: _sha(_source_without_plot(_module_source(m)))[:20]
            for name, m in sorted(imported_analyses(module).items())}


def plot_key(module: ModuleType, dkey: str) -> str:
    """The cache key of an analysis' figures: its data key, its whole source and the shared style."""
    style = (Path(__file__).parent / "style.py")
    style_src = style.read_text() if style.exists() else ""
    return _sha(dkey + _module_source(module) + style_src)[:20]


def resolve_config(module: ModuleType, mode: str = "default") -> dict:
    """The configuration of ``module`` for a mode: ``CONFIG`` with ``QUICK`` / ``FULL`` merged on top.

    Raises:
        ValueError: unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    cfg = dict(module.CONFIG)
    if mode == "quick":
        cfg.update(getattr(module, "QUICK", {}))
    elif mode == "full":
        cfg.update(getattr(module, "FULL", {}))
    return cfg


# ----------------------------------------------------------------------------------------------- registry


def load_module(name: str) -> ModuleType | None:
    """Import ``analyses.<name>``; None if that module does not exist (yet)."""
    try:
        return importlib.import_module(f"analyses.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"analyses.{name}":
            return None
        raise


def output_dir(mode: str) -> Path:
    """Default output directory of a mode."""
    return {"default": FIGURES, "quick": FIGURES / ".quick", "full": FIGURES / "full"}[mode]


def _order(names: Sequence[str], modules: dict[str, ModuleType]) -> list[str]:
    """``names`` plus their DEPENDS, dependencies first, otherwise in ``ANALYSES`` order."""
    want: list[str] = []

    def visit(n, stack=()):
        if n in stack:
            raise ValueError(f"circular DEPENDS: {' -> '.join((*stack, n))}")
        if n in want or n not in modules:
            return
        for dep in getattr(modules[n], "DEPENDS", ()):
            visit(dep, (*stack, n))
        want.append(n)

    for n in names:
        visit(n)
    return want


# ----------------------------------------------------------------------------------------------- running


def run_all(
    names: Sequence[str] | None = None,
    mode: str = "default",
    out: Path | str | None = None,
    force: bool = False,
    quiet: bool = False,
    modules: dict[str, ModuleType] | None = None,
    stream=None,
) -> dict[str, str]:
    """Run analyses with caching; write data and figures. What ``python -m analyses`` calls.

    Args:
        names: analyses to run (default: all registered and present). Their DEPENDS run first.
        mode: "default", "quick" or "full" (the configuration and, unless ``out`` is given, the directory).
        out: output directory (figures; data under ``out/data``).
        force: recompute the named analyses even if cached (their dependencies only if not cached).
        quiet: suppress the analyses' own progress lines (start/finish lines still print).
        modules: name -> module, overriding the registry (tests).
        stream: where progress goes (default ``sys.stderr``).

    Returns:
        dict: name -> "computed", "redrawn" or "cached".

    Raises:
        ValueError: an unknown analysis name or mode.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    stream = stream or sys.stderr
    modules = _registered_modules(stream) if modules is None else modules
    requested = list(modules) if not names else list(names)
    unknown = [n for n in requested if n not in modules]
    if unknown:
        raise ValueError(f"unknown analysis {unknown}; available: {sorted(modules)}")
    order = _order(requested, modules)
    for n in order:  # snapshot the sources now, with the code that will run
        _module_source(modules[n])
    _helpers_hash()
    out = Path(out) if out is not None else output_dir(mode)
    partial_root = (FIGURES / ".cache" / "partial" / mode if out == output_dir(mode)
                    else out / ".cache" / "partial")
    forced = set(requested) if force else set()
    ctx = _RunContext(mode, out, partial_root, forced, quiet, stream, gradflow_code_hash())
    t_all = time.perf_counter()
    status = {name: _run_one(ctx, f"[{i}/{len(order)}] {name}", name, modules[name])
              for i, name in enumerate(order, 1)}
    if "findings" in order and out.resolve() == FIGURES.resolve() and README.exists():
        if update_readme(README, out):
            print(f"README.md (the answer) and {FINDINGS_DOC.relative_to(ROOT)} rewritten from {out}",
                  file=stream, flush=True)
    print(f"done in {time.perf_counter() - t_all:.1f}s ({mode} mode, {out})", file=stream, flush=True)
    return status


def _registered_modules(stream) -> dict[str, ModuleType]:
    modules = {}
    for n in ANALYSES:
        m = load_module(n)
        if m is None:
            print(f"(analyses.{n} is not present; skipped)", file=stream, flush=True)
        else:
            modules[n] = m
    return modules


@dataclasses.dataclass
class _RunContext:
    """What every analysis of one :func:`run_all` shares; ``keys`` collects the data keys as they are made."""

    mode: str
    out: Path
    partial_root: Path
    forced: set
    quiet: bool
    stream: Any
    code: str
    keys: dict = dataclasses.field(default_factory=dict)

    def say(self, message: str) -> None:
        print(message, file=self.stream, flush=True)


def _run_one(ctx: _RunContext, tag: str, name: str, mod: ModuleType) -> str:
    """Compute, redraw or reuse one analysis; returns "computed", "redrawn" or "cached"."""
    t0 = time.perf_counter()
    cfg = resolve_config(mod, ctx.mode)
    deps = tuple(getattr(mod, "DEPENDS", ()))
    dkey = data_key(mod, cfg, {d: ctx.keys[d] for d in deps if d in ctx.keys}, ctx.code)
    pkey = plot_key(mod, dkey)
    ctx.keys[name] = dkey
    stem = ctx.out / "data" / name
    side, data = (None, None) if name in ctx.forced else cached_result(
        stem, dkey, lambda m: ctx.say(f"{tag}: {m}"))
    if data is not None and side.get("plot_key") == pkey and figures_intact(ctx.out, side, ctx.say, tag):
        ctx.say(f"{tag}: cached ({side.get('elapsed_s', 0):.1f}s when computed)")
        return "cached"
    status = "redrawn" if data is not None else "computed"
    if data is not None:
        ctx.say(f"{tag}: data cached, redrawing figures")
        elapsed = side.get("elapsed_s", 0.0)
    else:
        ctx.say(f"{tag}: computing ...")
        data = _compute(ctx, name, mod, cfg, deps, dkey)
        elapsed = time.perf_counter() - t0
    figs = _write_outputs(ctx.out, name, mod, data)
    meta = {"name": name, "mode": ctx.mode, "data_key": dkey, "plot_key": pkey, "config": cfg,
            "gradflow_version": _gradflow_version(), "elapsed_s": round(elapsed, 2), "figures": sorted(figs),
            "figure_sha256": figs, "depends": list(deps)}
    if status == "computed":
        save_data(stem, data, meta)
        shutil.rmtree(ctx.partial_root / name, ignore_errors=True)
        relieve_memory_maps()
    else:
        atomic_write_json(stem.with_suffix(".json"), {**side, **meta})
    made = ", ".join(sorted(figs)) or "(no figures)"
    ctx.say(f"{tag}: {status} in {time.perf_counter() - t0:.1f}s -> {made}")
    return status


def relieve_memory_maps(share: float = 0.5) -> bool:
    """``gradflow.cache.clear()`` when this process holds more than ``share`` of the kernel's memory-map limit
    (Linux ``vm.max_map_count``, 65,530 here); returns whether it cleared.

    XLA's CPU backend keeps each compiled program's code mapped (~800 maps per training program measured
    here): the full training study died twice of "LLVM compilation error: Cannot allocate memory". Clearing
    only near the limit keeps the compiled programs that later work reuses (clearing after every analysis
    doubled the test suite's time)."""
    try:
        limit = int(Path("/proc/sys/vm/max_map_count").read_text())
        with open("/proc/self/maps") as f:
            held = sum(1 for _ in f)
    except (OSError, ValueError):
        return False
    if held < share * limit:
        return False
    cache.clear()
    return True


def _compute(ctx: _RunContext, name: str, mod: ModuleType, cfg: dict, deps: tuple, dkey: str) -> dict:
    prog = Progress(name, quiet=ctx.quiet, partial_dir=ctx.partial_root / name / dkey, stream=ctx.stream)
    if deps:
        inputs = {d: load_data(ctx.out / "data" / d) for d in deps if d in ctx.keys}
        return mod.run(cfg, prog, inputs=inputs)
    return mod.run(cfg, prog)


def figures_intact(out: Path, side: dict, say: Callable[[str], None], tag: str) -> bool:
    """Whether every figure the sidecar lists is there and readable: its SHA-256 equals the one recorded
    when it was written (sidecars without one: the PNG decodes). A missing, truncated or altered figure is
    named and the figures are redrawn from the cached data."""
    shas = side.get("figure_sha256") or {}
    for s in side.get("figures", []):
        path = out / f"{s}.png"
        if not path.exists():
            say(f"{tag}: figure {path} is missing: redrawing")
            return False
        want = shas.get(s)
        if want is not None and _sha(path.read_bytes()) != want:
            say(f"{tag}: figure {path} differs from the one written (truncated or altered): redrawing")
            return False
        if want is None and not _png_decodes(path):
            say(f"{tag}: figure {path} is unreadable (truncated?): redrawing")
            return False
    return True


def _finite(value: Any) -> bool:
    """Every number in ``value`` (array, scalar, list; strings pass) is finite."""
    if isinstance(value, str):
        return True
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    a = np.asarray(value)
    return a.dtype.kind in "US" or bool(np.all(np.isfinite(a.astype(float))))


def output_problems(out: Path | str, names: Sequence[str]) -> list[str]:
    """What is wrong with the saved outputs of the analyses ``names`` in ``out``, one line each (empty: all
    sound): a missing or unreadable sidecar or data file, no figures, a figure missing or under 2 kB, a
    non-finite number in the data, and for ``findings`` a findings.md without a table or with nan/inf, or a
    findings.json without rows or with a non-finite number. ``python -m analyses`` checks what it ran
    (exit status 1 on a problem); CI runs it on every analysis in quick mode."""
    out, problems = Path(out), []
    for name in names:
        side, stem = read_sidecar(out / "data" / name), out / "data" / name
        if not isinstance(side, dict):
            problems.append(f"{name}: no readable sidecar {stem.with_suffix('.json')}")
            continue
        if not side.get("figures"):
            problems.append(f"{name}: made no figures")
        for s in side.get("figures", []):
            path = out / f"{s}.png"
            if not path.exists() or path.stat().st_size <= 2000:
                problems.append(f"{name}: figure {path} is missing or under 2 kB")
        try:
            data = load_data(stem)
        except ValueError as e:
            problems.append(f"{name}: {e}")
            continue
        if not data:
            problems.append(f"{name}: returned no data")
        bad = [k for k, v in data.items() if not _finite(v)]
        if bad:
            problems.append(f"{name}: non-finite entries {bad}")
    if "findings" in names:
        problems += _findings_problems(out)
    return problems


_NONFINITE_TOKEN = re.compile(r"(?<![\w.])[-+]?(nan|inf)(?![\w])", re.IGNORECASE)


def _findings_problems(out: Path) -> list[str]:
    try:
        md, js = (out / "findings.md").read_text(), json.loads((out / "findings.json").read_text())
    except (OSError, ValueError) as e:
        return [f"findings: unreadable findings.md/.json ({type(e).__name__}: {e})"]
    # a number printed as nan or inf (a token, so words such as "infinite" or "information" pass)
    problems = [] if "|" in md and not _NONFINITE_TOKEN.search(md) else [
        "findings: findings.md has no table or holds nan/inf"]
    rows = js.get("rows") if isinstance(js, dict) else None
    numbers = [v for r in rows or [] for v in r.values() if isinstance(v, int | float)]
    if not rows or not all(math.isfinite(float(v)) for v in numbers):
        problems.append("findings: findings.json has no rows or a non-finite number")
    return problems


def _png_decodes(path: Path) -> bool:
    import matplotlib.image

    try:
        matplotlib.image.imread(path)
    except Exception:  # PIL / matplotlib raise several types for a damaged file
        return False
    return True


def _write_outputs(out: Path, name: str, mod: ModuleType, data: dict) -> dict:
    """The analysis' figures (PNG) and extra files (findings' Markdown / JSON), written atomically.

    Returns:
        {stem: SHA-256 of the PNG written} (recorded in the sidecar, checked by :func:`figures_intact`).
    """
    import matplotlib

    if os.environ.get("MPLBACKEND") is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = mod.plot(data)
    if not isinstance(figs, dict):
        raise ValueError(f"{name}.plot must return a dict of stem -> Figure, got {type(figs).__name__}")
    shas = {}
    for s, fig in figs.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        plt.close(fig)
        atomic_write_bytes(out / f"{s}.png", buf.getvalue())
        shas[s] = _sha(buf.getvalue())
    extra = getattr(mod, "write_extra", None)
    if extra is not None:
        for fname, text in extra(data).items():
            atomic_write_bytes(out / fname, text.encode())
    return shas


# ----------------------------------------------------------------------------------------------- README

README = ROOT / "README.md"
BEGIN = "<!-- findings:begin (written by `make figures` from figures/findings.md; do not edit by hand) -->"
END = "<!-- findings:end -->"

#: The generated findings document: every table and paragraph of :func:`readme_block`.
FINDINGS_DOC = ROOT / "docs" / "findings.md"
FINDINGS_HEAD = """# Findings

Generated by `make figures` from the analyses' outputs in `figures/` (do not edit by hand); a test checks
that it matches the committed figures. Reproduce: `make figures FIGARGS=--force`. The numbers behind each
figure are in `figures/data/<analysis>.npz` (`analyses.runner.load_data`); the derivations in
[theory.md](theory.md).

## At initialization
"""


#: Files the analyses write beside their figures that docs/findings.md quotes, in order, each
#: under its heading (None: the file brings its own).
README_PARTS: tuple[tuple[str, str | None], ...] = (
    ("cures.md", None),
    ("cooijmans_fig1a.md", "### Recurrent BN's Figure 1a in its own setting (numbers)"),
    ("training_study_table.md", "### Training study: why a cell fails to learn, separated by cause"),
    ("training_study_findings.md", None),
    ("dynamics.md", "### Gradient dynamics along training (probes)"),
    ("memory.md", "### The curse of memory: parameter sensitivity beside the state Jacobian"),
    ("teacher_student.md", "### Teacher–student (Zucchet & Orvieto 2024, Fig. 3/4): a dense linear RNN "
     "against the LRU as the teacher's memory grows"),
)


def readme_block(out: Path | str = FIGURES) -> str | None:
    """The body of docs/findings.md, built from ``out/findings.md``, the files of :data:`README_PARTS` that
    exist and, when present, the full training study's files under ``out/full/``.

    Returns None when ``findings.md`` has not been written yet. Its title line is dropped and its headings
    are moved one level down, to sit under the document's ``## At initialization``.
    """
    out = Path(out)
    if not (out / "findings.md").exists():
        return None
    lines = (out / "findings.md").read_text().splitlines()
    body = [("#" + ln if ln.startswith("##") else ln) for ln in lines if not ln.startswith("# ")]
    parts = ["\n".join(body).strip()]
    for fname, heading in README_PARTS:
        if (out / fname).exists():
            text = (out / fname).read_text().strip()
            parts.append(text if heading is None else f"{heading}\n\n{text}")
    parts += full_parts(out / "full")
    return "\n\n".join(parts)


#: Results of ``make figures-full`` quoted in the README when they have been run and committed:
#: (file under figures/full/, the analysis that wrote it, the heading or None to append to the previous part).
FULL_PARTS: tuple[tuple[str, str, str | None], ...] = (
    ("training_study_table.md", "training_study", "### Training study, full design"),
    ("training_study_findings.md", "training_study", None),
)


def compute_time_s(stem: Path | str) -> float | None:
    """How long a saved result took to compute: the data's ``total_wall_s`` where the analysis reports one (a
    resumable analysis, summed over the runs of every invocation: the sidecar's ``elapsed_s`` times only the
    last invocation, which may have read every run from its store), else the sidecar's ``elapsed_s``."""
    try:
        return float(load_data(stem)["total_wall_s"])
    except (ValueError, KeyError):
        side = read_sidecar(stem) or {}
        return side.get("elapsed_s")


def full_parts(full: Path) -> list[str]:
    """The README parts of :data:`FULL_PARTS` present in ``full``, each heading naming the command that
    regenerates it and how long it took (:func:`compute_time_s`)."""
    parts = []
    for fname, name, heading in FULL_PARTS:
        if not (full / fname).exists():
            continue
        text = (full / fname).read_text().strip()
        if heading is not None:
            took_s = compute_time_s(full / "data" / name)
            took = f"; it took {took_s / 60:.0f} min on the machine that ran it" if took_s is not None else ""
            text = (f"{heading} (`make figures-full FIGARGS=\"--only {name}\"`, written to "
                    f"`figures/full/`{took})\n\n{text}")
        parts.append(text)
    return parts


def findings_document(out: Path | str = FIGURES) -> str | None:
    """docs/findings.md: :data:`FINDINGS_HEAD` and :func:`readme_block` (None before findings.md exists)."""
    block = readme_block(out)
    return None if block is None else f"{FINDINGS_HEAD}\n{block}\n"


def answer_block(out: Path | str = FIGURES) -> str | None:
    """The README's answer: the **Answer.** paragraph of ``out/findings.md``, the training study's
    **In short** list (when it has been run) and a link to docs/findings.md; None before findings.md
    exists."""
    out = Path(out)
    if not (out / "findings.md").exists():
        return None
    paras = (out / "findings.md").read_text().split("\n\n")
    parts = [next((p.strip() for p in paras if p.startswith("**Answer.**")), paras[0].strip())]
    study = out / "training_study_findings.md"
    if study.exists():
        text = study.read_text()
        i = text.find("**In short**")
        if i >= 0:
            j = text.find("\n\n**", i + 1)
            parts.append(text[i:] if j < 0 else text[i:j])
    parts.append("Every table and figure, and how each number is made: [docs/findings.md](docs/findings.md).")
    return "\n\n".join(p.strip() for p in parts)


def update_readme(
    readme: Path | str = README, out: Path | str = FIGURES, doc: Path | str = FINDINGS_DOC
) -> bool:
    """Write :func:`answer_block` between the findings markers of ``readme`` and :func:`findings_document`
    to ``doc``.

    Returns:
        bool: True if either file changed.

    Raises:
        ValueError: ``readme`` lacks the markers (or has them out of order).
    """
    readme, doc = Path(readme), Path(doc)
    block, full = answer_block(out), findings_document(out)
    if block is None:
        return False
    text = readme.read_text()
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        raise ValueError(f"{readme} has no findings markers ({BEGIN!r} ... {END!r}); add them where the "
                         "answer belongs")
    new = text[: i + len(BEGIN)] + "\n" + block + "\n" + text[j:]
    changed = new != text
    if changed:
        atomic_write_bytes(readme, new.encode())
    if not doc.exists() or doc.read_text() != full:
        atomic_write_bytes(doc, full.encode())
        changed = True
    return changed


def _gradflow_version() -> str:
    import gradflow

    return str(getattr(gradflow, "__version__", "?"))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m analyses [--quick|--full] [--force] [--only NAME ...] [--out DIR]``."""
    p = argparse.ArgumentParser(prog="python -m analyses", description=(
        "Run gradflow's analyses: figures (PNG) and the data behind them, with caching. "
        f"Analyses: {', '.join(ANALYSES)}."))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small sizes (CI); writes figures/.quick/")
    g.add_argument("--full", action="store_true", help="larger sizes; writes figures/full/")
    p.add_argument("--force", action="store_true", help="recompute even when cached")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these analyses (and what they read)")
    p.add_argument("--out", type=Path, help="output directory (default by mode)")
    p.add_argument("--quiet", action="store_true", help="only one line per analysis")
    p.add_argument("--list", action="store_true", help="list the analyses and exit")
    p.add_argument("--check-verdicts", type=Path, metavar="DIR", help=(
        "after the run, exit 1 if a verdict of the question's cells differs from DIR/findings.json (CI: the "
        "quick figures against the committed ones)"))
    a = p.parse_args(argv)
    if a.list:
        for n in ANALYSES:
            m = load_module(n)
            doc = (m.__doc__ or "").strip().splitlines()[0] if m is not None and m.__doc__ else "(missing)"
            print(f"{n:16s} {doc}")
        return 0
    mode = "quick" if a.quick else "full" if a.full else "default"
    try:
        status = run_all(a.only, mode=mode, out=a.out, force=a.force, quiet=a.quiet)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problems = output_problems(a.out or output_dir(mode), list(status))
    for line in problems:
        print(f"bad output: {line}", file=sys.stderr)
    if problems:
        return 1
    if a.check_verdicts is not None:
        try:
            flips = verdict_flips(a.out or output_dir(mode), a.check_verdicts)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for line in flips:
            print(f"verdict flipped: {line}", file=sys.stderr)
        if flips:
            return 1
        print(f"verdicts of {', '.join(QUESTION_CELLS)} agree with {a.check_verdicts / 'findings.json'}")
    return 0


#: The cells whose verdict is the answer: a quick run that flips one of them contradicts the findings.
QUESTION_CELLS = ("tanh", "bn_notanh", "ln_notanh")


def verdict_flips(out: Path | str, reference: Path | str, cells=QUESTION_CELLS) -> list[str]:
    """The cells of ``cells`` whose verdict in ``out/findings.json`` differs from ``reference/findings.json``
    (or is missing from either), one line each; empty when they agree."""
    def verdicts(folder):
        path = Path(folder) / "findings.json"
        try:
            rows = json.loads(path.read_text())["rows"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: cannot read the verdicts ({e})") from e
        return {r["preset"]: r["verdict"] for r in rows}

    new, ref = verdicts(out), verdicts(reference)
    return [f"{c}: {new.get(c, 'missing')} in {out}, {ref.get(c, 'missing')} in {reference}"
            for c in cells if new.get(c) != ref.get(c) or c not in ref]
