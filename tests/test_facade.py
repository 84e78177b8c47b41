"""The public façade: ``gradflow.__all__`` is what docs/api.md's table of public names lists."""

import re
from pathlib import Path

import gradflow

API = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def readme_public_names() -> set[str]:
    text = API.read_text()
    table = text[text.index("| name | what |"):]
    table = table[:table.index("\n\n", table.index("| --- |"))]
    names = set()
    for row in table.splitlines()[2:]:
        first = row.split("|")[1]
        names |= set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)", first))
    return names


def test_all_matches_readme_table():
    listed = readme_public_names()
    exported = set(gradflow.__all__)
    assert listed - exported == set(), f"in docs/api.md but not in __all__: {sorted(listed - exported)}"
    assert exported - listed == set(), f"in __all__ but not in docs/api.md: {sorted(exported - listed)}"


def test_all_names_resolve_and_are_unique():
    assert len(gradflow.__all__) == len(set(gradflow.__all__))
    for name in gradflow.__all__:
        assert getattr(gradflow, name) is not None, name
