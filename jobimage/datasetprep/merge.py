"""Merge indexed datasets (Megatron-LM's ``tools/merge_datasets.py``), streaming, atomically: under
the output prefix's lock, published like every output (``publish``: the ``.idx`` appears only after
its ``.bin``, with a journal that the next run finishes if the process is killed in between)."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from . import indexed, ownership
from .errors import BinarizeError
from .layout import remove_stale_work_dirs
from .naming import BLEND_SUFFIX, TMP_DIR_PREFIX
from .publish import COMMIT, DATA, Move, new_tmp_dir, publish, recover, recover_dataset


def prefixes_in_dir(d: Path) -> list[str]:
    """Every ``X.bin``/``X.idx`` pair in a folder, in lexicographic order of the names (as upstream).
    A file without its partner is an error naming it."""
    names = sorted(p.name for p in d.iterdir() if p.is_file() and p.suffix in (".bin", ".idx"))
    stems = sorted({n[:-4] for n in names})
    for s in stems:
        for ext in (".bin", ".idx"):
            if s + ext not in names:
                raise BinarizeError(f"{d / (s + ext)} is missing: every .bin needs its .idx and vice versa")
    if not stems:
        raise BinarizeError(f"{d} holds no .bin/.idx pairs")
    return [os.fspath(d / s) for s in stems]


def read_blend(path: str | os.PathLike) -> list[tuple[float, str]]:
    """A blend list (``weight prefix`` pairs, as Megatron-LM's ``--data-args-path`` reads it).

    Its prefixes are as the training pods mount the volume (e.g. ``/data/...``); one that does not
    exist here is looked for next to the blend file, so a copy of the folder mounted elsewhere reads
    the same."""
    path = Path(path)
    try:
        words = path.read_text(encoding="utf-8").split()
    except OSError as e:
        raise BinarizeError(f"cannot read blend list {path}: {e.strerror}") from None
    if not words or len(words) % 2:
        raise BinarizeError(f"{path} is not a blend list: expected 'weight prefix' pairs, got {len(words)} words")
    out = []
    for i in range(0, len(words), 2):
        try:
            weight = float(words[i])
        except ValueError:
            raise BinarizeError(f"{path}: {words[i]!r} is not a weight (expected 'weight prefix' pairs)") from None
        prefix = words[i + 1]
        if not indexed.idx_path(prefix).exists() and indexed.idx_path(path.parent / Path(prefix).name).exists():
            prefix = os.fspath(path.parent / Path(prefix).name)
        out.append((weight, prefix))
    return out


def merge(inputs: list[str], output_prefix: str, overwrite: bool = False) -> dict:
    """Concatenate datasets in the given order into ``output_prefix.bin/.idx``.

    One folder stands for its pairs in lexicographic order; one blend list (kept shards'
    ``{prefix}_{key}_document.blend.txt``) for its datasets in its order."""
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        inputs = prefixes_in_dir(Path(inputs[0]))
    elif len(inputs) == 1 and inputs[0].endswith(BLEND_SUFFIX):
        inputs = [p for _, p in read_blend(inputs[0])]
    if not inputs:
        raise BinarizeError("merge needs at least one input prefix")
    sources = []
    for p in inputs:
        p = p[:-4] if p.endswith((".bin", ".idx")) else p
        recover_dataset(p)  # a publish of it that was cut is finished first
        ds = indexed.IndexedDataset(p)
        if ds.multimodal:
            raise BinarizeError(f"{p} is a multimodal dataset (it has sequence modes); merge handles text datasets")
        sources.append(indexed.DatasetSource(ds))
    dtypes = {s.ds.dtype.name for s in sources}
    if len(dtypes) > 1:
        detail = ", ".join(f"{Path(s.ds.prefix).name}={s.ds.dtype.name}" for s in sources)
        raise BinarizeError(
            f"cannot merge datasets of different token dtypes ({detail}): they were made with tokenizers of "
            "different vocabulary sizes; re-binarize them with the same tokenizer"
        )
    out = Path(output_prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    with ownership.PrefixLock(out.parent, out.name, who=f"datasetprep merge --output-prefix {output_prefix}"):
        recover(output_prefix)
        remove_stale_work_dirs(output_prefix, None, kinds=(TMP_DIR_PREFIX,))  # of a merge that was cut
        finals = [indexed.bin_path(output_prefix), indexed.idx_path(output_prefix)]
        existing = [p for p in finals if p.exists()]
        if existing and not overwrite:
            raise BinarizeError(f"output {existing[0]} already exists; pass --overwrite to replace it")
        _refuse_output_among_inputs(finals, sources)
        tmp = new_tmp_dir(output_prefix)
        t0 = time.time()
        try:
            info = indexed.assemble(sources, os.fspath(tmp / "out"), sources[0].ds.dtype)
            publish(output_prefix, [Move(tmp / "out.bin", finals[0].name, DATA),
                                    Move(tmp / "out.idx", finals[1].name, COMMIT)], None, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    info["inputs"] = [s.ds.prefix for s in sources]
    info["seconds"] = round(time.time() - t0, 3)
    info.pop("max_document_tokens", None)
    return info


def _refuse_output_among_inputs(finals: list[Path], sources: list[indexed.DatasetSource]) -> None:
    """The output may not be one of the inputs, by name, link or hard link: publishing would replace it."""
    ids = set()
    for s in sources:
        for p in (indexed.bin_path(s.ds.prefix), indexed.idx_path(s.ds.prefix)):
            st = os.stat(p)
            ids.add((st.st_dev, st.st_ino))
    for p in finals:
        try:
            st = os.stat(p)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in ids:
            raise BinarizeError("the output prefix is one of the inputs; choose another output prefix")
