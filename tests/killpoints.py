"""Kill a command at every file-system commit point, with strace, and check the output folder.

``points(cmd)`` runs the command once under ``strace`` and lists every rename, unlink, fsync and
rmdir its main thread makes, as ``(syscall, n)``: the n-th call of that syscall. ``kill_at(cmd,
point)`` runs it again with ``strace --inject=SYSCALL:signal=SIGKILL:when=n``: the process dies
at the entry of that very call, before the kernel does it (strace counts each syscall per thread;
with one worker everything that touches the output happens in the main thread).

``check_folder(folder, allowed)`` is the invariant: every ``X.idx`` present has its ``X.bin``, and
the pair is byte for byte one of the allowed outputs (the old one, the new one); every blend list
present is an allowed one and names only complete pairs; every manifest present describes the files
next to it (sizes and sha256).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

SYSCALLS = ("rename", "renameat", "renameat2", "unlink", "unlinkat", "fsync", "fdatasync", "rmdir")
_LINE = re.compile(r"^([a-z0-9_]+)\((.*)\) += (-?\d+)")


def cli(*args: str) -> list[str]:
    """``datasetprep ARGS`` as this interpreter runs it."""
    return [sys.executable, "-m", "datasetprep.cli", *args]


def points(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> list[tuple[str, int, str]]:
    """Every commit point of one uninterrupted run: ``(syscall, n, the traced line)``."""
    trace = cwd / ".." / f"trace-{os.getpid()}.txt"
    p = subprocess.run(["strace", "-qq", "-o", str(trace), "-e", "trace=" + ",".join(SYSCALLS), *cmd], cwd=cwd,
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    counts: dict[str, int] = {}
    out = []
    for line in trace.read_text().splitlines():
        m = _LINE.match(line)
        if m and m.group(1) in SYSCALLS:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
            out.append((m.group(1), counts[m.group(1)], line))
    trace.unlink()
    return out


def kill_at(cmd: list[str], cwd: Path, syscall: str, n: int, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    return subprocess.run(["strace", "-qq", "-o", "/dev/null", "-e", "trace=" + syscall,
                           "-e", f"inject={syscall}:signal=SIGKILL:when={n}", *cmd],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def killed(p: subprocess.CompletedProcess) -> bool:
    return p.returncode in (-9, 137)


def fresh_copy(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)
    return dst


def outputs(folder: Path) -> dict[str, bytes]:
    """The final names in ``folder`` (everything not hidden) and their bytes; blend lists with the
    folder's own path replaced by ``{OUT}`` (they name datasets by absolute path), manifests without
    what differs between two runs of the same work (when, how long, how much was resumed)."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        data = p.read_bytes()
        if p.name.endswith(".blend.txt"):
            data = data.replace(os.fsencode(folder.resolve()), b"{OUT}")
        if p.name.endswith(".manifest.json"):
            doc = json.loads(data)
            for field in ("created", "stats", "input", "work_key"):  # when, how long; where (paths)
                doc.pop(field, None)
            data = json.dumps(doc, sort_keys=True).encode()
        out[p.name] = data
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_folder(folder: Path, allowed: list[dict[str, bytes]]) -> None:
    """The invariant (module doc). ``allowed``: the complete outputs the folder may show (name → bytes)."""
    files = outputs(folder)
    for name in files:
        if name.endswith(".idx"):
            stem = name[:-4]
            assert stem + ".bin" in files, f"{name} without its .bin"
            pair = (files[stem + ".bin"], files[name])
            assert any((o.get(stem + ".bin"), o.get(name)) == pair for o in allowed), \
                f"{stem}.bin/.idx is not a complete pair of one run (a mix, or a partial file)"
        elif name.endswith(".blend.txt"):
            assert any(o.get(name) == files[name] for o in allowed), f"{name} is no run's blend list"
            for line in files[name].decode().splitlines():
                prefix = Path(line.split()[1].replace("{OUT}", str(folder.resolve()))).name
                assert prefix + ".idx" in files and prefix + ".bin" in files, f"{name} names {prefix}, which is missing"
    for name in files:
        if not name.endswith(".manifest.json"):
            continue
        m = json.loads((folder / name).read_bytes())
        for o in m["outputs"]:
            entries = o.get("shards") or [] if o.get("blend_file") else [o]
            if o.get("blend_file"):
                assert o["blend_file"] in files, f"{name} lists {o['blend_file']}, which is missing"
            for e in entries:
                for ext in ("bin", "idx"):
                    data = files.get(f"{e['prefix']}.{ext}")
                    assert data is not None, f"{name} lists {e['prefix']}.{ext}, which is missing"
                    assert len(data) == e[f"{ext}_bytes"] and _sha(data) == e[f"{ext}_sha256"], \
                        f"{name} does not describe {e['prefix']}.{ext}"


def leftovers(folder: Path) -> list[str]:
    """Names of ours that a finished run must not leave (work, temporary, journal, lock)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".datasetprep"))
