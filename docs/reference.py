"""Generate docs/reference.md, the API reference of gradflow's public façade, and check the references.

The reference lists, in façade order, every name of ``gradflow.__all__`` and, for each module exported there
(``gradflow.theory``, ``gradflow.tasks``, ...), every name of that module's ``__all__`` (a module without
one: its public functions and classes, in source order): the kind, the signature (``inspect.signature``) and
the docstring's first paragraph with its Args / Attributes / Returns / Raises / Warns / Example sections as
written.

It fails (exit status 1, one line per problem) on a broken reference:

- a name in an ``__all__`` (of any gradflow module) that does not exist;
- an exported module, function or class without a docstring of its own;
- a cross-reference written in backticks (single or double) as a dotted name starting with ``gradflow.`` that
  does not resolve (import the module, then getattr step by step), in the docstrings of the exported objects
  and in README.md and docs/*.md (fenced code blocks excepted);
- with ``--check``: a committed docs/reference.md that differs from what it would generate now.

Usage, from the repository root (``make docs``, ``make docs-check``)::

    .venv/bin/python -m docs.reference            # write docs/reference.md
    .venv/bin/python -m docs.reference --check    # write nothing; fail when docs/reference.md is stale
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__" and str(ROOT) not in sys.path[:1]:
    sys.path.insert(0, str(ROOT))  # `python docs/reference.py`: this checkout's gradflow

import gradflow  # noqa: E402

OUTPUT = ROOT / "docs" / "reference.md"
SECTIONS = ("Args", "Attributes", "Returns", "Raises", "Warns", "Example", "Examples")
_SECTION_RE = re.compile(r"^(" + "|".join(SECTIONS) + r"):\s*$")
# a code span: a run of backticks, its content, the same run (CommonMark); the content's leading dotted name
_CODE_SPAN_RE = re.compile(r"(?<!`)(`+)((?:(?!\n\s*\n).)+?)(?<!`)\1(?!`)", re.S)
_DOTTED_RE = re.compile(r"gradflow(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_FENCE_RE = re.compile(r"^\s*(```|~~~)")
_ADDRESS_RE = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclasses.dataclass
class Entry:
    """One documented name: its qualified name, the object, and where it was exported."""

    qualname: str
    obj: object
    module: str  # the module whose __all__ (or public definitions) lists it


@dataclasses.dataclass
class Report:
    """The entries, in reference order, and the problems found while collecting and checking them."""

    entries: list[Entry] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------------------------------ collecting


def public_names(module: types.ModuleType) -> list[str]:
    """The module's ``__all__``; without one, the public functions and classes it defines, in source order."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    defined = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue  # imported from elsewhere
        try:
            line = inspect.getsourcelines(obj)[1]
        except (OSError, TypeError):
            line = 0
        defined.append((line, name))
    return [name for _, name in sorted(defined)]


def collect(package: types.ModuleType = gradflow) -> Report:
    """Walk the façade: ``package.__all__``, then each exported module's public names."""
    report = Report()
    report.entries.append(Entry(package.__name__, package, package.__name__))
    modules = []
    for name in package.__all__:
        if not hasattr(package, name):
            report.errors.append(f"{package.__name__}.__all__ lists {name!r}, which does not exist")
            continue
        obj = getattr(package, name)
        if isinstance(obj, types.ModuleType):
            modules.append((name, obj))
        else:
            report.entries.append(Entry(f"{package.__name__}.{name}", obj, package.__name__))
    for name, module in modules:
        qual = f"{package.__name__}.{name}"
        report.entries.append(Entry(qual, module, package.__name__))
        for sub in public_names(module):
            if not hasattr(module, sub):
                report.errors.append(f"{module.__name__}.__all__ lists {sub!r}, which does not exist")
                continue
            report.entries.append(Entry(f"{qual}.{sub}", getattr(module, sub), module.__name__))
    return report


def check_all_lists(package: types.ModuleType = gradflow) -> list[str]:
    """Every ``__all__`` of every module of the package names attributes that exist (not only the façade)."""
    errors = []
    subs = pkgutil.walk_packages(package.__path__, package.__name__ + ".")
    names = [package.__name__] + [m.name for m in subs]
    for modname in names:
        if modname.rsplit(".", 1)[-1].startswith("_"):
            continue
        try:
            module = importlib.import_module(modname)
        except Exception as e:  # noqa: BLE001 - reported, not raised: the check names every problem
            errors.append(f"{modname}: import failed: {type(e).__name__}: {e}")
            continue
        for name in getattr(module, "__all__", ()):
            if not hasattr(module, name):
                errors.append(f"{modname}.__all__ lists {name!r}, which does not exist")
    return errors


# ------------------------------------------------------------------------------------------- describing


def kind_of(obj) -> str:
    """function / class / NamedTuple / dataclass / module / constant (its type)."""
    if isinstance(obj, types.ModuleType):
        return "module"
    if inspect.isclass(obj):
        if issubclass(obj, tuple) and hasattr(obj, "_fields"):
            return "NamedTuple"
        if dataclasses.is_dataclass(obj):
            bases = [b for b in obj.__mro__[1:] if b is not object]
            flax_module = any(f"{b.__module__}.{b.__name__}" == "flax.linen.module.Module" for b in bases)
            return "class (flax.linen.Module)" if flax_module else "dataclass"
        return "class"
    if inspect.isroutine(obj) or (callable(obj) and hasattr(obj, "__wrapped__")):
        return "function"
    return f"constant ({type(obj).__name__})"


def is_documentable(obj) -> bool:
    """Modules, functions and classes must carry a docstring of their own; constants cannot."""
    return not kind_of(obj).startswith("constant")


def own_doc(obj) -> str | None:
    """The object's own docstring, cleaned; None when absent or generated (NamedTuple / dataclass default)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not doc or not doc.strip():
        return None
    doc = inspect.cleandoc(doc)
    if inspect.isclass(obj) and "\n" not in doc and doc.startswith(obj.__name__ + "(") and doc.endswith(")"):
        return None  # the `Name(field, ...)` that collections.namedtuple and dataclasses write
    return doc


def signature_of(obj, name: str) -> str | None:
    """``name(params) -> return``, or None where there is none (modules, constants, builtins without one)."""
    if not callable(obj) or isinstance(obj, types.ModuleType):
        return None
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    if kind_of(obj) == "class (flax.linen.Module)":  # flax's own plumbing, spelled differently per version
        sig = sig.replace(parameters=[p for p in sig.parameters.values() if p.name not in ("parent", "name")])
    return name + _ADDRESS_RE.sub("", str(sig))


def value_summary(obj) -> str:
    """A short, deterministic description of a constant (sets and dict keys sorted; long values elided)."""
    if isinstance(obj, dict):
        keys = sorted(map(str, obj))
        shown = ", ".join(keys[:12]) + (", ..." if len(keys) > 12 else "")
        return f"{len(obj)} entries; keys: {shown}"
    if isinstance(obj, (set, frozenset)):
        text = "{" + ", ".join(sorted(map(repr, obj))) + "}"
    elif isinstance(obj, (tuple, list, str, int, float, bool)) or obj is None:
        text = repr(obj)
    else:
        text = f"<{type(obj).__name__}>"
    text = _ADDRESS_RE.sub("", text)
    return text if len(text) <= 300 else text[:297] + "..."


def doc_parts(doc: str) -> tuple[str, list[tuple[str, str]]]:
    """The first paragraph, and the (header, body) of each Args/Returns/... section, bodies as written."""
    lines = doc.splitlines()
    first = []
    for line in lines:
        if not line.strip() or _SECTION_RE.match(line):
            break
        first.append(line.strip())
    sections, i = [], 0
    while i < len(lines):
        m = _SECTION_RE.match(lines[i])
        if not m:
            i += 1
            continue
        body, i = [], i + 1
        while i < len(lines) and (not lines[i].strip() or lines[i][:1].isspace()):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        sections.append((m.group(1), inspect.cleandoc("\n".join(body))))
    return " ".join(first), sections


def slug(text: str, seen: dict[str, int]) -> str:
    """GitHub's heading anchor: lower case, punctuation but - and _ dropped, spaces to -, deduplicated."""
    base = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
    n = seen.get(base, 0)
    seen[base] = n + 1
    return base if n == 0 else f"{base}-{n}"


def render(report: Report) -> str:
    """The Markdown of docs/reference.md."""
    seen: dict[str, int] = {}
    anchors = [slug(e.qualname, seen) for e in report.entries]
    out = [
        "# gradflow API reference",
        "",
        "Generated from the docstrings of the public façade by `python -m docs.reference` (`make docs`);",
        "do not edit by hand. `make docs-check` (run by CI) fails when this file is stale or a reference is",
        "broken. Each entry: its kind, its signature, the first paragraph of its docstring and its Args /",
        "Attributes / Returns / Raises / Warns / Example sections as written.",
        "",
        "## Contents",
        "",
    ]
    for e, a in zip(report.entries, anchors, strict=True):
        indent = "" if isinstance(e.obj, types.ModuleType) else "  "
        out.append(f"{indent}- [`{e.qualname}`](#{a})")
    for e in report.entries:
        is_module = isinstance(e.obj, types.ModuleType)
        out += ["", ("## " if is_module else "### ") + f"`{e.qualname}`", ""]
        kind = kind_of(e.obj)
        where = "" if is_module or e.module == "gradflow" else f" in `{e.module}`"
        out.append(f"*{kind}*{where}")
        sig = signature_of(e.obj, e.qualname.rsplit(".", 1)[-1])
        if sig is not None:
            out += ["", "```python", sig, "```"]
        if kind.startswith("constant"):
            out += ["", f"Value: `{value_summary(e.obj)}`"]
        doc = own_doc(e.obj) if is_documentable(e.obj) else None
        if doc:
            first, sections = doc_parts(doc)
            if first:
                out += ["", first]
            for header, body in sections:
                fence = "```pycon" if header.startswith("Example") else "```text"
                out += ["", f"**{header}:**", "", fence, body, "```"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------- checking


def references(text: str) -> list[str]:
    """The dotted names starting with ``gradflow.`` at the start of the text's code spans (fences skipped)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if _FENCE_RE.match(line):
            fenced = not fenced
            kept.append("")
            continue
        kept.append("" if fenced else line)
    found = []
    for m in _CODE_SPAN_RE.finditer("\n".join(kept)):
        d = _DOTTED_RE.match(m.group(2).strip())
        if d:
            found.append(d.group(0))
    return found


def resolve(dotted: str) -> bool:
    """Whether a dotted name starting with ``gradflow.`` names something: import the module, then getattr
    step by step.

    Where a façade attribute shadows a submodule of the same name (``gradflow.jacobians`` is the function, and
    the module ``gradflow.jacobians`` holds ``certified_sigma``), both readings are followed; a missing step
    below a module tries to import it as a submodule; the last step may be a declared dataclass field (one
    without a default is no class attribute)."""
    parts = dotted.split(".")
    try:
        candidates = [importlib.import_module(parts[0])]
    except ImportError:
        return False
    for i, part in enumerate(parts[1:], start=1):
        found = [getattr(c, part) for c in candidates if hasattr(c, part)]
        if any(isinstance(c, types.ModuleType) for c in candidates):
            try:
                found.append(importlib.import_module(".".join(parts[: i + 1])))
            except Exception:  # no such submodule (or one that fails to import): not this reading
                pass
        last = i == len(parts) - 1
        if last and any(part in _field_names(c) for c in candidates):
            return True
        if not found:
            return False
        candidates = found
    return True


def _field_names(obj) -> set[str]:
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        return {f.name for f in dataclasses.fields(obj)}
    return set()


def check_docstrings(report: Report) -> list[str]:
    """Missing docstrings and broken ``gradflow.`` references in the docstrings of the exported objects."""
    errors = []
    for e in report.entries:
        if not is_documentable(e.obj):
            continue
        doc = own_doc(e.obj)
        if doc is None:
            errors.append(f"{e.qualname}: exported {kind_of(e.obj)} without a docstring")
            continue
        for ref in references(doc):
            if not resolve(ref):
                errors.append(f"{e.qualname} (docstring): `{ref}` does not resolve")
    return errors


def source_files(root: Path = ROOT) -> list[Path]:
    """The Python sources whose docstrings are scanned as well: gradflow, analyses, benchmarks, docs/*.py."""
    files = [p for d in ("gradflow", "analyses", "benchmarks") for p in sorted((root / d).rglob("*.py"))]
    return files + sorted((root / "docs").glob("*.py"))


def check_sources(paths) -> list[str]:
    """Broken ``gradflow.`` references in the docstrings (module, class, function) of Python sources, read
    with ``ast`` (nothing imported): the internal modules' docstrings name public and internal objects too."""
    errors = []
    for path in paths:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
        nodes = [n for n in ast.walk(tree)
                 if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in nodes:
            doc = ast.get_docstring(node, clean=False)
            if not doc:
                continue
            first = node.body[0].lineno  # the docstring's first line; the raw docstring keeps its lines
            doc_lines = doc.splitlines()
            for ref in references(doc):
                if not resolve(ref):
                    at = next((first + i for i, text in enumerate(doc_lines) if ref in text), first)
                    errors.append(f"{_shown(path)}:{at}: `{ref}` does not resolve")
    return errors


def _shown(path) -> Path:
    path = Path(path)
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def markdown_files(root: Path = ROOT) -> list[Path]:
    """README.md and docs/*.md, the generated reference excepted (its references are the docstrings')."""
    return [root / "README.md"] + sorted(p for p in (root / "docs").glob("*.md") if p.name != OUTPUT.name)


def check_markdown(paths) -> list[str]:
    """Broken ``gradflow.`` references in Markdown files, with their line numbers."""
    errors = []
    for path in paths:
        text = Path(path).read_text(encoding="utf-8")
        for ref in sorted(set(references(text))):
            if resolve(ref):
                continue
            lines = [str(n) for n, line in enumerate(text.splitlines(), 1) if ref in line]
            errors.append(f"{_shown(path)}:{','.join(lines) or '?'}: `{ref}` does not resolve")
    return errors


def build(package: types.ModuleType = gradflow, md_paths=None, py_paths=None) -> tuple[str, list[str]]:
    """The reference's text and every problem found (empty when the reference is sound)."""
    report = collect(package)
    errors = list(report.errors)
    errors += [e for e in check_all_lists(package) if e not in errors]
    errors += check_docstrings(report)
    errors += [e for e in check_sources(source_files() if py_paths is None else py_paths) if e not in errors]
    errors += check_markdown(markdown_files() if md_paths is None else md_paths)
    return render(report), errors


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true",
                   help="write nothing; fail when docs/reference.md differs from a fresh generation")
    p.add_argument("--output", type=Path, default=OUTPUT, help="the file to write or check")
    args = p.parse_args(argv)
    text, errors = build()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
        if current != text:
            errors.append(f"{_shown(args.output)} is stale (differs from a fresh generation): "
                          "run `make docs` and commit it")
    for e in errors:
        print(f"reference: {e}", file=sys.stderr)
    if errors:
        print(f"reference: {len(errors)} problem(s); {args.output.name} "
              f"{'checked' if args.check else 'not written'}", file=sys.stderr)
        return 1
    if not args.check:
        args.output.write_text(text, encoding="utf-8")
        print(f"reference: wrote {args.output} ({text.count(chr(10))} lines)")
    else:
        print(f"reference: {args.output.name} is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
