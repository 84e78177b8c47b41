"""The generated API reference (docs/reference.py, `make docs`): complete, checked, and committed current."""

import importlib
import re
import sys
import types
from pathlib import Path

import pytest

import gradflow

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # docs/ is a package of the checkout, not of the installed distribution
reference = importlib.import_module("docs.reference")


@pytest.fixture(scope="module")
def built():
    """One generation of the real reference: (text, problems)."""
    return reference.build()


def test_lists_every_public_name(built):
    text, _ = built
    headings = {line.strip("#` ") for line in text.splitlines() if line.startswith("#")}
    for name in gradflow.__all__:
        assert f"gradflow.{name}" in headings, name
        obj = getattr(gradflow, name)
        if isinstance(obj, types.ModuleType) and hasattr(obj, "__all__"):
            for sub in obj.__all__:
                assert f"gradflow.{name}.{sub}" in headings, f"{name}.{sub}"
    assert "gradflow.measure.theory_vs_measurement" in headings  # a module without __all__: its definitions


def test_current_code_has_no_broken_reference(built):
    _, errors = built
    assert errors == []


def test_committed_reference_is_current(built):
    text, _ = built
    assert reference.OUTPUT.read_text(encoding="utf-8") == text, (
        "docs/reference.md is stale: run `make docs` and commit it")


def test_broken_reference_in_a_docstring_is_reported(monkeypatch):
    doc = gradflow.describe.__doc__ + "\nSee ``gradflow.no_such_name`` and `gradflow.theory.no_such_rate`.\n"
    monkeypatch.setattr(gradflow.describe, "__doc__", doc)
    errors = reference.check_docstrings(reference.collect())
    assert any("gradflow.describe" in e and "`gradflow.no_such_name`" in e for e in errors), errors
    assert any("`gradflow.theory.no_such_rate`" in e for e in errors), errors
    assert len(errors) == 2, errors


def test_broken_reference_in_markdown_is_reported(tmp_path):
    md = tmp_path / "notes.md"
    lines = [
        "Fine: ``gradflow.make_cell(name, d)``, `gradflow.theory.predict_rate`, `gradflow.families.NAMES`,",
        "`gradflow.jacobians.certified_sigma` (the module, not the façade's function `gradflow.jacobians`).",
        "Broken: ``gradflow.no_such_name`` and `gradflow.measure.nope`; not references: gradflow.bare_text,",
        "`gf.no_such_name`, `mygradflow.x`.",
        "",
        "```python",
        "x = `gradflow.in_a_fence`",
        "```",
    ]
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    errors = reference.check_markdown([md])
    assert len(errors) == 2, errors
    assert "notes.md:3: `gradflow.measure.nope` does not resolve" in errors[0]
    assert "notes.md:3: `gradflow.no_such_name` does not resolve" in errors[1]


def test_missing_name_and_missing_docstring_are_reported():
    fake = types.ModuleType("fakepkg", "A fake package.")

    def undocumented():
        pass

    fake.undocumented = undocumented
    fake.__all__ = ["undocumented", "ghost"]
    report = reference.collect(fake)
    assert report.errors == ["fakepkg.__all__ lists 'ghost', which does not exist"]
    assert reference.check_docstrings(report) == [
        "fakepkg.undocumented: exported function without a docstring"]


def test_check_fails_on_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "reference.md"
    stale.write_text("# an old reference\n", encoding="utf-8")
    assert reference.main(["--check", "--output", str(stale)]) == 1
    assert "is stale" in capsys.readouterr().err
    assert stale.read_text(encoding="utf-8") == "# an old reference\n"  # --check writes nothing


def _contract_layout() -> dict[str, set[str]]:
    """The module names docs/CONTRACT.md's layout block lists under gradflow/ and analyses/."""
    text = (ROOT / "docs" / "CONTRACT.md").read_text()
    block = text.split("## Layout and ownership", 1)[1].split("```")[1]
    listed: dict[str, set[str]] = {}
    folder = None
    for line in block.splitlines():
        m = re.match(r"^(\w+)/", line)
        if m:
            folder = m.group(1)
            continue
        if folder:  # a line may name two modules ("decay.py  ...   lengths.py  ...")
            for name, kind in re.findall(r"(?:^  |\s{2,})(\w+)(\.py|/)(?=\s)", line):
                listed.setdefault(folder, set()).add(name + kind)
    return listed


def test_contract_lists_every_module_of_the_package():
    """docs/CONTRACT.md's layout names exactly the modules (and sub-packages) gradflow/ and analyses/ hold."""
    listed = _contract_layout()
    for folder in ("gradflow", "analyses"):
        here = {p.name for p in (ROOT / folder).glob("*.py")}
        here |= {p.name + "/" for p in (ROOT / folder).iterdir() if (p / "__init__.py").exists()}
        assert listed.get(folder, set()) == here, (folder, sorted(here ^ listed.get(folder, set())))
