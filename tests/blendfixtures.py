"""Datasets, components and plans for the DatasetBlend tests (test_blending.py, test_blendjob.py,
test_operator_blend.py): small MMIDIDX datasets written by the engine's own writer, and DatasetPrep bodies
as the operator's status builders write them."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datasetprep import blending, indexed
from datasetprep.blending import ComponentData, TokenizerFacts
from datasetprep.blendspec import parse_blend_spec

SP = TokenizerFacts(type="sentencepiece", vocab_size=8000, eod_id=2, fingerprint="a" * 64, path="tokenizer.model")
HF = TokenizerFacts(type="huggingface", vocab_size=50257, eod_id=50256, fingerprint="b" * 64,
                    path="gpt2/tokenizer.json")


def write_dataset(prefix: Path, docs: list[list[int]], dtype: str = "uint16") -> dict:
    """``prefix.bin/.idx`` holding ``docs`` (one sequence each), written by the engine's writer."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    part = indexed.PartWriter(str(prefix) + ".part", np.dtype(dtype))
    for doc in docs:
        part.add_document([np.asarray(doc, dtype=dtype)] if doc else [])
    info = indexed.assemble([part.close()], str(prefix), np.dtype(dtype))
    for ext in (".bin", ".len", ".doc"):
        Path(str(prefix) + ".part" + ext).unlink(missing_ok=True)
    return info


def docs(n: int, length: int, start: int = 3) -> list[list[int]]:
    return [[(start + i + j) % 7000 + 3 for j in range(length)] + [2] for i in range(n)]


def merged(name: str, tokens: int, *, documents: int = 10, sequences: int = 10, tokenizer: TokenizerFacts = SP,
           dtype: str = "uint16", claim: str = "data", prefix: str | None = None, eod: bool = True,
           generation: int = 1) -> ComponentData:
    return ComponentData(name=name, text_key="text", generation=generation, claim=claim, tokens=tokens,
                         documents=documents, sequences=sequences, dtype=dtype, tokenizer=tokenizer, append_eod=eod,
                         prefix=prefix or f"{name}_text_document")


def kept(name: str, shard_tokens: tuple[int, ...] | None, *, known: bool = True, claim: str = "data") -> ComponentData:
    return ComponentData(name=name, text_key="text", generation=1, claim=claim, tokens=sum(shard_tokens or ()),
                         documents=None, sequences=None, dtype="uint16", tokenizer=SP, append_eod=True,
                         blend_file=f"{name}/ds_text_document.blend.txt",
                         shard_tokens=shard_tokens if known else None)


def plan_of(spec: dict, *components: ComponentData, files_claim: str | None = None) -> blending.BlendPlan:
    parsed = parse_blend_spec(spec)
    by_name = {c.name: c for c in components}
    return blending.plan(parsed, {comp.key: by_name[comp.dataset_prep] for _, comp in parsed.all_components()},
                         files_claim=files_claim)
