"""What a dataset repository holds: remote files, resolutions, glob matching, split inference and
the plans that pick a subset's and split's files."""
from __future__ import annotations

import dataclasses
import logging
import posixpath
import re
from typing import Any, Iterable, Mapping, Sequence

from ..spec import HubDatasetSource
from .client import NOT_FOUND_DATASET, HubError, HubNotFoundError, RemoteFile, _format_of

log = logging.getLogger("datasetprep.hub")

# =============================================================================================== model


@dataclasses.dataclass
class ResolvedDataset:
    """A Hub dataset source pinned to a commit: which files make the (subset, split)."""

    repo: str
    revision: str  # as requested
    sha: str  # commit the files are read from (record this)
    subset: str | None  # config name actually used (None: the repo has no named configs)
    split: str
    files: list[RemoteFile]
    endpoint: str
    data_revision: str = ""  # ref the files come from: == revision, or refs/convert/parquet
    revision_sha: str = ""  # commit `revision` resolved to (== sha unless the Parquet export is used)
    source: str = "configs"  # dataFiles | configs | layout | parquetExport
    available: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # subset -> splits
    notes: list[str] = dataclasses.field(default_factory=list)
    key: str = ""  # cache key of the request (subset, split, dataFiles) it answers

    @property
    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["files"] = [dataclasses.asdict(f) for f in self.files]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ResolvedDataset":
        d = dict(d)
        d["files"] = [RemoteFile(**f) for f in d.get("files", [])]
        return cls(**d)


# =============================================================================================== globbing


_FILES_TO_IGNORE = {"README.md", "config.json", "dataset_info.json", "dataset_infos.json", "dummy_data.zip",
                    "dataset_dict.json"}
_DATA_EXTENSIONS = {
    "parquet", "json", "jsonl", "ndjson", "csv", "tsv", "txt", "arrow", "zip", "tar", "tgz", "gz", "zst", "xz",
    "bz2", "lz4", "xml", "h5", "hdf5", "lance", "tfrecord", "npy", "npz",
}


def _segment_regex(seg: str) -> str:
    out, i = "", 0
    while i < len(seg):
        c = seg[i]
        if c == "*":
            while i + 1 < len(seg) and seg[i + 1] == "*":
                i += 1
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = seg.find("]", i + 2 if i + 1 < len(seg) and seg[i + 1] in "!^" else i + 1)
            if j == -1:
                out += re.escape(c)
            else:
                body = seg[i + 1:j]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out += "[" + body.replace("\\", "\\\\") + "]"
                i = j
        else:
            out += re.escape(c)
        i += 1
    return out


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """fsspec (>= 2023.12) glob semantics, as ``datasets`` resolves ``data_files``: ``*`` and ``?``
    stay inside one path segment, a whole ``**`` segment spans any number of directories."""
    segs = [s for s in pattern.strip("/").split("/") if s not in ("", ".")]
    rx = ""
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        if seg == "**":
            rx += ".+" if last else "(?:[^/]+/)*"
        else:
            rx += _segment_regex(seg) + ("" if last else "/")
    return re.compile(rx + r"\Z")


def _hidden_or_special_unrequested(path: str, pattern: str) -> bool:
    def hidden(parts: Iterable[str]) -> int:
        return sum(1 for p in parts if p.startswith(".") and set(p) != {"."})

    def special(parts: Iterable[str]) -> int:
        return sum(1 for p in parts if p.startswith("__"))

    pp, tp = path.split("/"), pattern.strip("/").split("/")
    return hidden(pp) != hidden(tp) or special(pp[:-1]) != special(tp[:-1])


def match_files(patterns: Sequence[str], files: Sequence[str], *, data_only: bool = False) -> list[str]:
    """Files matching the patterns: pattern order, sorted within a pattern, no duplicates.

    Like ``datasets``: hidden files/dirs and ``__special__`` dirs only when the pattern names them,
    ``README.md`` & co. only when named; ``data_only`` keeps files with a data-file extension.
    """
    out: list[str] = []
    seen: set[str] = set()
    for pat in patterns:
        rx = glob_to_regex(pat)
        base = posixpath.basename(pat.rstrip("/"))
        for f in sorted(files):
            if f in seen or not rx.match(f):
                continue
            if posixpath.basename(f) in _FILES_TO_IGNORE and posixpath.basename(f) != base:
                continue
            if _hidden_or_special_unrequested(f, pat):
                continue
            if data_only and not any(s.lower() in _DATA_EXTENSIONS for s in posixpath.basename(f).split(".")[1:]):
                continue
            seen.add(f)
            out.append(f)
    return out


# =============================================================================================== layouts

_SPLIT_KEYWORDS = {
    "train": ["train", "training"],
    "validation": ["validation", "valid", "dev", "val"],
    "test": ["test", "testing", "eval", "evaluation"],
}
_SEP = "-._ 0-9"
_SPLIT_SHARDED = "data/{split}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]*.*"
# datasets also has "logs" (**/*.eval) and "harbor" (task.toml / instruction.md) layouts: not text
# corpora, left out.
_DEFAULT_PATTERN_DICTS: list[dict[str, list[str]]] = [
    {s: [p.format(keyword=k, sep=_SEP) for k in kws for p in
         ("**/{keyword}/**", "**/{keyword}[{sep}]*/**", "**/*[{sep}]{keyword}/**", "**/*[{sep}]{keyword}[{sep}]*/**")]
     for s, kws in _SPLIT_KEYWORDS.items()},
    {s: [p.format(keyword=k, sep=_SEP) for k in kws for p in ("**/{keyword}[{sep}]*", "**/*[{sep}]{keyword}[{sep}]*")]
     for s, kws in _SPLIT_KEYWORDS.items()},
    {"train": ["**"]},
]


def infer_split_patterns(files: Sequence[str]) -> dict[str, list[str]]:
    """The split → patterns ``datasets`` infers for a folder without ``configs:`` (empty: no data)."""
    data = match_files(["**"], files, data_only=True)
    sharded = glob_to_regex(_SPLIT_SHARDED.replace("{split}", "*"))
    splits: list[str] = []
    for f in data:
        if sharded.match(f):
            name = posixpath.basename(f).split("-")[0]
            m = re.match(r"(.+)-\d{5}-of-\d{5}", posixpath.basename(f))
            name = m.group(1) if m else name
            if name not in splits:
                splits.append(name)
    if splits:
        order = [s for s in ("train", "validation", "test") if s in splits] + sorted(
            s for s in splits if s not in ("train", "validation", "test"))
        return {s: [_SPLIT_SHARDED.format(split=s)] for s in order}
    for patterns in _DEFAULT_PATTERN_DICTS:
        found = {s: ps for s, ps in patterns.items() if match_files(ps, data, data_only=True)}
        if found:
            return found
    return {}


def _sanitize_data_files(data_files: Any) -> dict[str, list[str]]:
    """``configs[].data_files`` (str | list[str] | list[{split, path}] | dict) → split → patterns."""
    if data_files is None:
        return {}
    if isinstance(data_files, str):
        return {"train": [data_files]}
    if isinstance(data_files, Mapping):
        return {str(k): (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in data_files.items()}
    if isinstance(data_files, (list, tuple)):
        if any(isinstance(x, Mapping) for x in data_files):
            out: dict[str, list[str]] = {}
            for x in data_files:
                if not isinstance(x, Mapping) or "split" not in x or "path" not in x:
                    raise HubError(f"invalid data_files entry in the repo's README: {x!r}")
                p = x["path"]
                out[str(x["split"])] = list(p) if isinstance(p, (list, tuple)) else [p]
            return out
        return {"train": [str(x) for x in data_files]}
    raise HubError(f"invalid data_files in the repo's README: {data_files!r}")


def _join(data_dir: str | None, pattern: str) -> str:
    if not data_dir:
        return pattern
    return posixpath.join(data_dir.strip("/"), pattern.lstrip("/"))


def _configs(card: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not card:
        return []
    cfgs = card.get("configs")
    if not cfgs:
        return []
    if not isinstance(cfgs, list) or not all(isinstance(c, Mapping) and "config_name" in c for c in cfgs):
        raise HubError("the repo's README has an invalid `configs:` section (each entry needs `config_name`)")
    return [dict(c) for c in cfgs]


def _config_split_patterns(cfg: Mapping[str, Any], files: Sequence[str]) -> dict[str, list[str]]:
    data_dir = cfg.get("data_dir")
    if cfg.get("data_files") is not None:
        return {s: [_join(data_dir, p) for p in ps] for s, ps in _sanitize_data_files(cfg["data_files"]).items()}
    sub = [f[len(data_dir.strip('/')) + 1:] for f in files if data_dir and f.startswith(data_dir.strip("/") + "/")] \
        if data_dir else list(files)
    return {s: [_join(data_dir, p) for p in ps] for s, ps in infer_split_patterns(sub).items()}


def _default_config(cfgs: list[dict[str, Any]]) -> str | None:
    flagged = [c["config_name"] for c in cfgs if c.get("default")]
    if flagged:
        return flagged[0]
    if len(cfgs) == 1:
        return cfgs[0]["config_name"]
    return None


def _fmt_available(available: Mapping[str, Sequence[str]]) -> str:
    if not available:
        return "none (no data files found)"
    return "; ".join(f"{name} ({', '.join(splits) or 'no splits'})" for name, splits in available.items())


@dataclasses.dataclass
class _Plan:
    subset: str | None
    split: str
    files: list[str]
    source: str
    available: dict[str, list[str]]
    notes: list[str] = dataclasses.field(default_factory=list)


def _not_found(repo: str, detail: str, available: Mapping[str, Sequence[str]]) -> HubNotFoundError:
    return HubNotFoundError(f"{NOT_FOUND_DATASET}: dataset repo {repo}: {detail}. "
                            f"Available subsets and splits: {_fmt_available(available)}")


def _plan_from_listing(src: HubDatasetSource, files: Sequence[str], card: Mapping[str, Any] | None) -> _Plan:
    """Decide the files for (subset, split) on one commit, without network."""
    repo, subset, split = src.repo, src.subset, src.split
    if src.data_files:
        matched = match_files(list(src.data_files), files)
        if not matched:
            sample = ", ".join(list(files)[:20]) + (" ..." if len(files) > 20 else "")
            raise HubNotFoundError(f"{NOT_FOUND_DATASET}: no file of dataset repo {repo} matches dataFiles "
                                   f"{list(src.data_files)}; files in the repo: {sample or 'none'}")
        return _Plan(subset, split, matched, "dataFiles", {subset or "default": [split]})

    cfgs = _configs(card)
    if cfgs:
        available = {c["config_name"]: list(_config_split_patterns(c, files)) for c in cfgs}
        name = subset if subset is not None else _default_config(cfgs)
        if name is None:
            raise _not_found(repo, "the dataset has several subsets and none is the default: set `subset`",
                             available)
        cfg = next((c for c in cfgs if c["config_name"] == name), None)
        if cfg is None:
            raise _not_found(repo, f"subset {name!r} does not exist", available)
        patterns = _config_split_patterns(cfg, files)
        if split not in patterns:
            raise _not_found(repo, f"split {split!r} does not exist in subset {name!r}", available)
        matched = match_files(patterns[split], files)
        if not matched:
            raise _not_found(repo, f"no file matches the patterns {patterns[split]} of subset {name!r} split "
                             f"{split!r}", available)
        return _Plan(name, split, matched, "configs", available)

    # No configs: the conventional layout at the root is the "default" subset; a top-level folder
    # can be named as a subset (like datasets' data_dir).
    default = infer_split_patterns(files)
    used = set()
    for ps in default.values():
        used.update(match_files(ps, files, data_only=True))
    available: dict[str, list[str]] = {}
    if default:
        available["default"] = list(default)
    for d in sorted({f.split("/", 1)[0] for f in files if "/" in f}):
        inside = [f[len(d) + 1:] for f in files if f.startswith(d + "/")]
        if d.startswith((".", "__")) or all(f"{d}/{x}" in used for x in inside):
            continue
        sp = infer_split_patterns(inside)
        if sp:
            available[d] = list(sp)
    name = subset if subset not in (None, "default") else None
    if name is None:
        patterns = default
        shown: str | None = None if subset is None else "default"
    else:
        if name not in available:
            raise _not_found(repo, f"subset {name!r} does not exist", available)
        inside = [f[len(name) + 1:] for f in files if f.startswith(name + "/")]
        patterns = {s: [_join(name, p) for p in ps] for s, ps in infer_split_patterns(inside).items()}
        shown = name
    if not patterns:
        raise _not_found(repo, "no data files found", available)
    if split not in patterns:
        raise _not_found(repo, f"split {split!r} does not exist in subset {shown or 'default'!r}", available)
    return _Plan(shown, split, _majority_format(match_files(patterns[split], files, data_only=True)), "layout",
                 available)


def _family(path: str) -> str:
    fmt = _format_of(path)
    if fmt:
        return fmt
    parts = posixpath.basename(path).lower().split(".")[1:]
    return next((p for p in parts if p not in ("gz", "zst", "xz", "bz2", "lz4")), parts[-1] if parts else "")


def _majority_format(files: list[str]) -> list[str]:
    """As ``datasets`` infers one loader from the most common extension and drops the other files:
    keep the most common family (a supported one on ties)."""
    counts: dict[str, int] = {}
    for f in files:
        counts[_family(f)] = counts.get(_family(f), 0) + 1
    if len(counts) <= 1:
        return files
    best = max(counts, key=lambda fam: (counts[fam], fam in ("parquet", "jsonl")))
    kept = [f for f in files if _family(f) == best]
    log.info("layout: using the %d %s file(s), ignoring %d other file(s)", len(kept), best, len(files) - len(kept))
    return kept


def _plan_from_export(src: HubDatasetSource, files: Sequence[str]) -> _Plan:
    """refs/convert/parquet: ``<subset>/<split>/NNNN.parquet`` (``partial-<split>`` when truncated)."""
    layout: dict[str, dict[str, list[str]]] = {}
    for f in sorted(files):
        parts = f.split("/")
        if len(parts) == 3 and parts[2].endswith(".parquet"):
            layout.setdefault(parts[0], {}).setdefault(parts[1], []).append(f)
    available = {c: sorted({s.removeprefix("partial-") for s in splits}) for c, splits in layout.items()}
    name = src.subset
    if name is None:
        name = "default" if "default" in layout else (next(iter(layout)) if len(layout) == 1 else None)
        if name is None:
            raise _not_found(src.repo, "the Parquet export has several subsets: set `subset`", available)
    if name not in layout:
        raise _not_found(src.repo, f"subset {name!r} does not exist", available)
    splits = layout[name]
    notes = []
    if src.split in splits:
        chosen = splits[src.split]
    elif f"partial-{src.split}" in splits:
        chosen = splits[f"partial-{src.split}"]
        notes.append(f"the Hub's Parquet export of {src.repo} {name}/{src.split} is partial (the dataset is "
                     "bigger than the export limit): only its first rows are used")
        log.warning("%s", notes[-1])
    else:
        raise _not_found(src.repo, f"split {src.split!r} does not exist in subset {name!r}", available)
    return _Plan(name, src.split, chosen, "parquetExport", available, notes)
