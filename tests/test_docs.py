"""The docs cannot drift from the product (issue 16 item 8), the parts that need no cluster:

* every message docs/troubleshooting.md quotes is one the code can print (``docsmd``: the quote,
  with its placeholders, must read as a stretch of a message template of the code);
* docs/install.md's RBAC table is the operator's permission table;
* every shell block of the quickstart and the install guide is run by
  tests/test_docs_commands_cluster.py, or listed there as not run, with the reason.

Messages the API server prints are checked against a real one in tests/test_docs_cluster.py.
"""
from __future__ import annotations

import re

import pytest

import docsmd
from datasetprep_operator import permissions
from paths import REPO

TROUBLESHOOTING = (REPO / "docs" / "troubleshooting.md").read_text()


@pytest.fixture(scope="module")
def templates() -> list[str]:
    return docsmd.code_templates()


def test_every_message_troubleshooting_quotes_is_one_the_code_prints(templates):
    quotes = docsmd.table_quotes(TROUBLESHOOTING)
    assert len(quotes) > 50, "the message tables of troubleshooting.md were not found"
    wrong = {q: docsmd.unmatched_fragments(q, templates) for q in quotes}
    wrong = {q: parts for q, parts in wrong.items() if parts}
    assert not wrong, "quoted in docs/troubleshooting.md, printed by no code:\n" + "\n".join(
        f"  {q!r}: {parts}" for q, parts in wrong.items())


@pytest.mark.parametrize("invented", [
    "FILE:LINE: the record is haunted",
    "input X matches every file",
    "output X already exists; pass --force",
    "a worker process died with an error",
    "FILE: cannot write the Parquet row groups",
    "DIR/state.json is not valid YAML",
    "--output-prefix 'PREFIX/' names a file, not a folder",
    "tokenizer file X is a Word document",
    "... unavailable after N attempts",  # what troubleshooting.md said before the Hub's messages changed
    "the Hub at URL did not answer",
])
def test_the_check_refuses_messages_the_code_does_not_print(templates, invented):
    assert docsmd.unmatched_fragments(invented, templates), invented


def test_placeholders_and_code_values_line_up():
    """A placeholder stands for code text, a code value for example text -- both ways."""
    templates = ["{where}: field {key!r} is {kind}, expected a string", "cannot read the {what} ({e})",
                 "Parquet row groups {a}-{b}"]
    templates = [docsmd._literal_text('f"' + t + '"') for t in templates]
    assert not docsmd.unmatched_fragments("FILE:LINE: field 'text' is int, expected a string", templates)
    assert not docsmd.unmatched_fragments("FILE:LINE: field 'KEY' is TYPE, expected a string", templates)
    assert not docsmd.unmatched_fragments("cannot read the Parquet row groups ...", templates)  # composed
    assert docsmd.unmatched_fragments("cannot read the Zip archive", templates)  # no such phrase


def test_install_md_rbac_table_is_the_permission_table():
    install = (REPO / "docs" / "install.md").read_text()
    section = install[install.index("## What the chart grants (RBAC)"):install.index("## Network policies")]
    documented: dict[tuple[str, str], set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].startswith("`") and cells[0] != "API group":
            group = "" if cells[0] == "core" else cells[0].strip("`")
            resource = re.match(r"`([^`]+)`", cells[1]).group(1)
            documented[(group, resource)] = {v.strip() for v in cells[2].split(",")}
    expected = {(p.group, p.resource): set(p.verbs) for p in permissions.PERMISSIONS
                if not p.cluster and p.mode != "cluster"}
    assert documented == expected
    cluster_wide = section[section.index("Cluster-wide, in cluster mode only"):section.index("Not granted, on purpose")]
    for p in permissions.PERMISSIONS:
        if p.cluster:
            assert f"`{p.resource}` {', '.join(p.verbs)}" in cluster_wide, p


# ------------------------------------------------------------------------- shell blocks
def _blocks() -> list[docsmd.Block]:
    return [b for page in docsmd.PAGES for b in docsmd.shell_blocks(REPO / "docs" / page)]


def test_every_shell_block_of_quickstart_and_install_is_run_or_says_why_not():
    blocks = _blocks()
    keys = {docsmd.block_key(b, blocks) for b in blocks}
    assert len(keys) == len(blocks)
    unlisted = keys - set(docsmd.RUN) - set(docsmd.NOT_RUN)
    stale = (set(docsmd.RUN) | set(docsmd.NOT_RUN)) - keys
    assert not unlisted, f"shell blocks neither run by tests/test_docs_commands_cluster.py nor in NOT_RUN: {unlisted}"
    assert not stale, f"docsmd.RUN / NOT_RUN name blocks the pages no longer have: {stale}"
    assert not set(docsmd.RUN) & set(docsmd.NOT_RUN)


def test_every_substitution_is_used_and_the_pages_say_so():
    context = {"hub_env": "X", "token": "T"}
    used: set[str] = set()
    for b in _blocks():
        docsmd.substitute(b.text, context, used)
    for example in (REPO / "examples").rglob("*.yaml"):
        docsmd.substitute(example.read_text(), context, used)
    assert used == {s.text for s in docsmd.SUBSTITUTIONS}, "a substitution that no longer applies anywhere"
    tested = (REPO / "docs" / "quickstart.md").read_text().split("## How this page is tested")[1]
    for what in ("`REGISTRY` is `ghcr.io/datasetprep`", "token placeholder", "extraEnv", "pip install -e ."):
        assert what in tested, what


def test_blocks_are_valid_bash_and_the_named_values_file_exists():
    import subprocess

    for b in _blocks():
        proc = subprocess.run(["bash", "-n"], input=b.text, capture_output=True, text=True)
        assert proc.returncode == 0, f"{b.id}: {proc.stderr}"
    files = docsmd.named_files(REPO / "docs" / "install.md")
    assert set(files) == {"values-namespaced.yaml"}
    assert "values-namespaced.yaml" in next(b.text for b in _blocks() if "-f values-namespaced.yaml" in b.text)


def test_every_example_datasetprep_is_a_valid_spec():
    import yaml

    from datasetprep.spec import parse_spec

    found = 0
    for path in sorted((REPO / "examples").rglob("*.yaml")) + sorted((REPO / "deploy").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "DatasetPrep":
                parse_spec(doc["spec"])
                found += 1
    assert found >= 5
