"""Small tokenizer files made at test time (a tiktoken rank file derived from the golden HF BPE,
and a synthetic 128000-rank file that gets Llama 3's special tokens)."""
from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path

from paths import HF_DIR


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def ranks_from_hf_bpe(tokenizer_json: Path = HF_DIR / "tokenizer.json") -> dict[bytes, int]:
    d = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    u2b = {v: k for k, v in _bytes_to_unicode().items()}
    ranks = {bytes([i]): i for i in range(256)}
    for a, b in d["model"]["merges"]:
        t = bytes(u2b[c] for c in a) + bytes(u2b[c] for c in b)
        ranks.setdefault(t, len(ranks))
    return ranks


def write_ranks(ranks: dict[bytes, int], path: Path) -> Path:
    with open(path, "wb") as f:
        for tok, r in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(base64.b64encode(tok) + b" " + str(r).encode() + b"\n")
    return path


def llama3_like_ranks(n: int = 128000) -> dict[bytes, int]:
    """n distinct tokens: the BPE-derived ranks first, then synthetic letter strings."""
    ranks = ranks_from_hf_bpe()
    letters = b"abcdefghijklmnopqrstuvwxyz"
    for k in (3, 4):
        for combo in itertools.product(letters, repeat=k):
            t = bytes(combo)
            if t not in ranks:
                ranks[t] = len(ranks)
                if len(ranks) == n:
                    return ranks
    raise AssertionError("not enough synthetic tokens")
