"""docs/reliability.md and docs/reliability-inputs.md name, for every guarantee, the test that tries to break
it: each named test must exist (a renamed or deleted test would leave a guarantee without its proof)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("docs/reliability.md", "docs/reliability-inputs.md")
_REF = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`|`::(\w+)`")


def _tests_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def _references(doc: Path) -> list[tuple[str, str | None]]:
    """(file, test) for every reference; ``::name`` means the last file named before it, on its row or above."""
    refs, current = [], None
    for line in doc.read_text().splitlines():
        for m in _REF.finditer(line):
            if m.group(1):
                current = m.group(1)
                refs.append((current, m.group(2)))
            else:
                assert current is not None, f"{doc.name}: `::{m.group(3)}` before any test file is named"
                refs.append((current, m.group(3)))
    return refs


@pytest.mark.parametrize("doc", DOCS)
def test_every_test_a_reliability_doc_names_exists(doc):
    """``tests/f.py::name`` must be in that file; a bare ``::name`` in the file named before it, or (rows
    that continue another file's list) in one of the doc's test files."""
    refs = _references(ROOT / doc)
    assert len(refs) >= 20, f"{doc} names only {len(refs)} tests"
    files = {file for file, _ in refs}
    missing = [file for file in files if not (ROOT / file).is_file()]
    known = {file: _tests_of(ROOT / file) for file in files if file not in missing}
    anywhere = set().union(*known.values())
    full = {(m.group(1), m.group(2)) for m in _REF.finditer((ROOT / doc).read_text()) if m.group(1)}
    for file, name in refs:
        if name is None or file in missing or name in known[file]:
            continue
        if (file, name) in full or name not in anywhere:
            missing.append(f"{file}::{name}")
    assert not missing, f"{doc} names tests that do not exist: {missing}"
