"""Reading the docs as data, so tests can hold them to the product (tests/test_docs.py,
tests/test_docs_commands_cluster.py): the messages docs/troubleshooting.md quotes, the message
templates in the code, and the shell blocks of a Markdown page with the substitutions a reader makes.

Quoted messages use a placeholder notation: an ALL-CAPS word (``FILE``, ``LINE``, ``N``, ``KEY``,
``URL``...; ``'KEY'`` with its quotes) stands for a value, ``...`` (or ``…``) for text left out.
"""
from __future__ import annotations

import dataclasses
import io
import math
import re
import tokenize
from collections.abc import Iterable, Iterator
from pathlib import Path

from paths import REPO

CODE_DIRS = (REPO / "jobimage" / "datasetprep", REPO / "operator" / "datasetprep_operator")
_HOLE = "\x00"  # where an f-string puts a value

# ------------------------------------------------------------------------------- messages
_SEPARATOR = re.compile(r"^\|[-:| ]+\|$")


def table_quotes(markdown: str, header: str = "message") -> list[str]:
    """The code spans in the first cell of every table whose first header cell starts with ``header``."""
    quotes, lines, active = [], markdown.splitlines(), False
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            active = False
            continue
        if _SEPARATOR.match(line):
            continue
        first = line.strip("|").split("|")[0].strip()
        if i + 1 < len(lines) and _SEPARATOR.match(lines[i + 1]):
            active = first.lower().startswith(header)
        elif active:
            quotes += [m.group(2).strip() for m in re.finditer(r"(`+)(.+?)\1", first)]
    return quotes


def _string_groups(source: str) -> Iterator[list[str]]:
    """Runs of adjacent string literals (Python joins them into one), as written."""
    run: list[str] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.STRING:
            run.append(tok.string)
        elif tok.type in (tokenize.NL, tokenize.COMMENT) or (tok.type == tokenize.NEWLINE and not run):
            continue
        elif run:
            yield run
            run = []


def _literal_text(token: str) -> str:
    prefix = re.match(r"^[rRbBfFuU]*", token).group(0)
    quote = token[len(prefix):][:3] if token[len(prefix):][:3] in ('"""', "'''") else token[len(prefix)]
    body = token[len(prefix) + len(quote):-len(quote)]
    if "f" in prefix.lower():  # every {expression} is a value: a hole
        out, depth = [], 0
        i = 0
        while i < len(body):
            ch = body[i]
            if body.startswith("{{", i) and depth == 0:
                out.append("{")
                i += 2
                continue
            if body.startswith("}}", i) and depth == 0:
                out.append("}")
                i += 2
                continue
            if ch == "{":
                if depth == 0:
                    out.append(_HOLE)
                depth += 1
            elif ch == "}":
                depth -= 1
            elif depth == 0:
                out.append(ch)
            i += 1
        body = "".join(out)
    if "r" not in prefix.lower():
        body = body.replace("\\n", "\n").replace("\\'", "'").replace('\\"', '"').replace("\\\\", "\\")
    return body


def code_templates(dirs: Iterable[Path] = CODE_DIRS) -> list[str]:
    """Every string literal of the product's Python code, adjacent ones joined, an f-string's
    expressions as holes: the messages it can print, as templates."""
    out = []
    for folder in dirs:
        for path in sorted(folder.rglob("*.py")):
            for run in _string_groups(path.read_text()):
                out.append("".join(_literal_text(t) for t in run))
    return out


_PLACEHOLDER = re.compile(r"'?\b[A-Z][A-Z0-9_]*(?::[A-Z][A-Z0-9_]*)*\b'?|0x\.\.")
_ELISION = re.compile(r"\s*(?:\(\.\.\.\)|\.\.\.|…)\s*")
#: ALL-CAPS words that are literal text in messages, not placeholders.
LITERAL_CAPS = {"JSON", "UTF", "BOM", "BPE", "EOD", "HTTP", "API", "CSV", "DNS", "TLS", "MMIDIDX", "OS", "CRC32",
                "HF_TOKEN", "HF_TOKEN_FILE", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HTTPS_PROXY", "NO_PROXY", "U", "D800"}
_TOKEN = re.compile(r"\x00|[A-Za-z0-9_]+|[^\sA-Za-z0-9_]")


def _doc_tokens(fragment: str) -> list[str]:
    def hole(m: re.Match) -> str:
        word = m.group(0).strip("'")
        return m.group(0) if word in LITERAL_CAPS else f" {_HOLE} "
    return _TOKEN.findall(_PLACEHOLDER.sub(hole, fragment))


def _align(doc: list[str], code: list[str]) -> tuple[int, list[list[str]]]:
    """Read ``doc`` as a stretch of ``code``: a placeholder of ``doc`` may stand for one or more code
    tokens, a hole of ``code`` for one or more doc tokens. Returns the most characters of doc's
    literal tokens matched by code's literal tokens, in order, and the doc text the code's holes took
    in that reading; (-1, []) when there is no reading."""
    n, m = len(doc), len(code)
    score = [[-1] * (m + 1) for _ in range(n + 1)]
    back: list[list[tuple[int, int, bool] | None]] = [[None] * (m + 1) for _ in range(n + 1)]
    for j in range(m + 1):
        score[0][j] = 0  # the stretch may start anywhere in the code
    for i in range(1, n + 1):
        d = doc[i - 1]
        for j in range(1, m + 1):
            c = code[j - 1]
            options = []
            if score[i - 1][j - 1] >= 0 and (d == c or d == _HOLE or c == _HOLE):
                gain = len(d) if d == c and d != _HOLE else 0
                options.append((score[i - 1][j - 1] + gain, (i - 1, j - 1, c == _HOLE and d != _HOLE)))
            if d == _HOLE and score[i][j - 1] >= 0:
                options.append((score[i][j - 1], (i, j - 1, False)))
            if c == _HOLE and score[i - 1][j] >= 0:
                options.append((score[i - 1][j], (i - 1, j, True)))
            if options:
                score[i][j], back[i][j] = max(options, key=lambda o: o[0])
    j = max(range(m + 1), key=lambda k: score[n][k])
    if score[n][j] < 0:
        return -1, []
    best, i, taken, run = score[n][j], n, [], []
    while i > 0 and back[i][j] is not None:
        pi, pj, absorbed = back[i][j]
        if absorbed:
            run.insert(0, doc[i - 1])
        if run and (not absorbed or pj < j):  # the hole's first doc token: its run is complete
            taken.insert(0, run)
            run = []
        i, j = pi, pj
    if run:
        taken.insert(0, run)
    return best, taken


def _spaced(tokens: list[str]) -> str:
    return re.sub(r"\s+", " ", " ".join(tokens))


def _phrase(run: list[str]) -> str:
    """The doc text a code value took, without the punctuation around it."""
    words = [t for t in run if t != _HOLE]
    while words and not re.match(r"\w", words[0]):
        words.pop(0)
    while words and not re.match(r"\w", words[-1]):
        words.pop()
    return _spaced(words)


def unmatched_fragments(quote: str, templates: list[str], share: float = 0.6) -> list[str]:
    """The parts of ``quote`` (cut at ``...``) that no code template can print; [] when it is real.

    A part is real when it reads as a stretch of a template (a placeholder of the quote standing for
    code text, a value of the code for quoted text) and either half of the quote's literal text is
    the template's own literal text, or the quoted text its values took is itself literal text of the
    code (a message built from a template and a phrase passed into it, e.g. a description table).
    """
    missing = []
    tokenized = [(_TOKEN.findall(t), set(_TOKEN.findall(t))) for t in templates]
    phrases = " \n ".join(_spaced(_TOKEN.findall(t)) for t in templates)
    for fragment in (f.strip() for f in _ELISION.split(quote)):
        doc = _doc_tokens(fragment)
        literal = sum(len(t) for t in doc if t != _HOLE)
        words = {t for t in doc if t != _HOLE and len(t) > 3}
        if not words:  # punctuation left by an elision
            continue
        need = max(1, math.ceil(share * literal))

        def real(code: list[str]) -> bool:
            matched, taken = _align(doc, code)
            if matched >= need:
                return True
            return matched >= 12 and all(re.search(rf"(?<!\w){re.escape(_phrase(run))}(?!\w)", phrases)
                                         for run in taken)

        if not any(words & vocab and real(code) for code, vocab in tokenized):
            missing.append(fragment)
    return missing


# -------------------------------------------------------------------------- shell blocks
@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced ``sh``/``bash`` block of a page."""

    page: str
    line: int
    """Line of the opening fence (1-based)."""
    section: str
    """The heading above it."""
    text: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def shell_blocks(path: Path) -> list[Block]:
    """The ``sh``/``bash``/``shell`` fenced blocks of a Markdown page, in order."""
    blocks, section, fence, start, body = [], "", None, 0, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if fence is None:
            if line.startswith("#"):
                section = line.lstrip("#").strip()
            m = re.match(r"^(\s*)(```+)\s*(\w*)", line)
            if m:
                fence, start, body = (m.group(2), m.group(3)), n, []
        elif line.strip().startswith(fence[0]):
            if fence[1] in ("sh", "bash", "shell"):
                blocks.append(Block(path.name, start, section, "\n".join(body) + "\n"))
            fence = None
        else:
            body.append(line)
    return blocks


def block_key(block: Block, blocks: list[Block]) -> str:
    """``page#section#n``: the n-th shell block (0-based) under its heading -- stable when lines move."""
    same = [b for b in blocks if b.page == block.page and b.section == block.section]
    return f"{block.page}#{block.section}#{same.index(block)}"


def named_files(path: Path) -> dict[str, str]:
    """The ``yaml`` blocks of a page that start with ``# NAME.yaml``: files the reader writes."""
    files, fence, body = {}, None, []
    for line in path.read_text().splitlines():
        if fence is None:
            m = re.match(r"^\s*```+\s*ya?ml\s*$", line)
            if m:
                fence, body = True, []
        elif line.strip().startswith("```"):
            m = re.match(r"^# ([\w.-]+\.ya?ml)$", body[0].strip()) if body else None
            if m:
                files[m.group(1)] = "\n".join(body[1:]) + "\n"
            fence = None
        else:
            body.append(line)
    return files


#: How tests/test_docs_commands_cluster.py treats each shell block of these pages: in which step of
#: its reader's path it runs, or why it does not. A new block fails tests/test_docs.py until it is
#: listed here.
PAGES = ("quickstart.md", "install.md")
RUN = {
    "quickstart.md#1. No cluster#0": "no cluster",
    "quickstart.md#2. Install the operator (Helm)#0": "install",
    "quickstart.md#3. A DatasetPrep with kubectl#0": "dataset",
    "quickstart.md#3. A DatasetPrep with kubectl#1": "dataset",
    "quickstart.md#A training mixture (DatasetBlend)#0": "blend",
    "quickstart.md#4. Files on a volume (offline)#0": "offline",
    "install.md#Cluster-wide (default)#0": "cluster-wide",
    "install.md#Cluster-wide (default)#1": "namespaces first",
    "install.md#Namespaced#0": "namespaced",
    "install.md#Check it#0": "check",
    "install.md#What the chart grants (RBAC)#0": "check",
    "install.md#Upgrading#0": "upgrade",
    "install.md#Upgrading#1": "adopt the CRD",
    "install.md#Uninstalling (the data stays)#0": "uninstall",
}
NOT_RUN = {
    "install.md#Uninstalling (the data stays)#1": "deletes every DatasetPrep and the CRD of the shared test bed; "
                                                  "tests/test_chart_cluster.py checks the CRD's removal",
    "install.md#Building the images#0": "no Docker daemon or registry on the bed; tests/cluster/images builds the "
                                        "same Dockerfiles with buildah",
    "install.md#Testing the chart#0": "the test suite itself",
}


@dataclasses.dataclass(frozen=True)
class Substitution:
    """Text of the docs the tests replace, as the pages say a reader does."""

    text: str
    by: str
    """The replacement; ``{NAME}`` is filled from the test's context."""
    why: str


SUBSTITUTIONS = (
    Substitution("REGISTRY", "ghcr.io/datasetprep", "the names the images built for the bed carry"),
    Substitution("pip install -e .", ":", "the test's Python has the package installed"),
    Substitution("helm install datasetprep charts/datasetprep-operator",
                 "helm install datasetprep charts/datasetprep-operator --set-json {hub_env}",
                 "the bed has no internet: its Hub is tests/hubserver.py"),
    Substitution("REPLACE_WITH_YOUR_HF_TOKEN", "{token}", "the Hub token the reader puts in the Secret"),
)


def substitute(text: str, context: dict[str, str], used: set[str] | None = None) -> str:
    """``text`` with :data:`SUBSTITUTIONS` applied (each one applied is added to ``used``)."""
    for sub in SUBSTITUTIONS:
        if sub.text in text:
            text = text.replace(sub.text, sub.by.format(**context))
            if used is not None:
                used.add(sub.text)
    return text
