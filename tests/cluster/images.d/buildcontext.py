"""The build context Docker sends for a Dockerfile: which files ``.dockerignore`` lets in, and a
hash of them (tests/cluster/images keys its image cache with it; tests/test_dockerfiles.py checks
the rules). The matcher follows moby/patternmatcher, which Docker, BuildKit and buildah use.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


def _pattern_regex(pattern: str) -> re.Pattern:
    """One .dockerignore pattern as Docker's matcher (moby/patternmatcher) compiles it."""
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out += re.escape(ch)
            else:
                out += pattern[i:end + 1]
                i = end
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


@dataclass(frozen=True)
class IgnoreRule:
    exclusion: bool          # a `!pattern` line: re-includes what it matches
    pattern: str
    regex: re.Pattern


def dockerignore_rules(context: Path) -> list[IgnoreRule]:
    """The rules of ``context/.dockerignore`` (none when it is absent)."""
    rules = []
    path = context / ".dockerignore"
    if not path.exists():
        return rules
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        pattern = os.path.normpath(line[1:].strip() if exclusion else line).lstrip("/")
        rules.append(IgnoreRule(exclusion, pattern, _pattern_regex(pattern)))
    return rules


def included(rel: str, rules: list[IgnoreRule]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents wins."""
    parts = rel.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    keep = True
    for rule in rules:
        if any(rule.regex.match(c) for c in candidates):
            keep = rule.exclusion
    return keep


def _may_hold_included(rel_dir: str, rules: list[IgnoreRule]) -> bool:
    """Whether an excluded folder can still hold a file that a later `!pattern` re-includes."""
    for rule in rules:
        if not rule.exclusion:
            continue
        literal = re.split(r"[*?\[\\]", rule.pattern, maxsplit=1)[0]
        if literal.startswith(rel_dir + "/") or (rel_dir + "/").startswith(literal):
            return True
    return False


def context_files(context: Path) -> list[str]:
    """Paths (relative, sorted) of every file and symlink the build context holds."""
    rules = dockerignore_rules(context)
    found = []
    for top, dirs, files in os.walk(context):
        rel_top = os.path.relpath(top, context)
        rel_top = "" if rel_top == "." else rel_top + "/"
        keep_dirs = []
        for d in sorted(dirs):
            rel = rel_top + d
            if os.path.islink(os.path.join(top, d)):
                files.append(d)
            elif included(rel, rules) or _may_hold_included(rel, rules):
                keep_dirs.append(d)
        dirs[:] = keep_dirs
        found.extend(rel_top + f for f in files if included(rel_top + f, rules))
    return sorted(found)


def hash_context(context: Path, h) -> int:
    """Feed every context file (path, executable bit, content or link target) into ``h``."""
    files = context_files(context)
    for rel in files:
        p = context / rel
        if p.is_symlink():
            h.update(f"L {rel} {os.readlink(p)}\n".encode())
            continue
        h.update(f"F {rel} {int(os.access(p, os.X_OK))} {p.stat().st_size}\n".encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return len(files)
