"""Processes of the test bed: pid files that survive pid reuse, process groups, readiness waits.

Standard library only (``testbed.py`` runs before the test dependencies are installed).
"""
from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def log(msg: str) -> None:
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


def _proc_start_time(pid: int) -> str | None:
    """Start time (clock ticks since boot) of pid, or None if gone / zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def write_pidfile(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid} {_proc_start_time(pid) or '?'}\n")


def read_pidfile(path: Path) -> int | None:
    """pid from a pidfile if that very process (same start time) is still alive."""
    try:
        pid_s, start = path.read_text().split()[:2]
        pid = int(pid_s)
    except (OSError, ValueError):
        return None
    now = _proc_start_time(pid)
    if now is None or (start != "?" and now != start):
        return None
    return pid


def kill_group(pid: int, name: str, grace: float = 10.0) -> None:
    """SIGTERM the process group led by pid, SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:  # reap if it is our child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if _proc_start_time(pid) is None:
                # leader gone; make sure no straggler in the group survives
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                return
            time.sleep(0.05)
        if sig == signal.SIGTERM:
            log(f"{name} (pid {pid}) ignored SIGTERM; sending SIGKILL")


def spawn(name: str, argv: list[str], st: Path, env: dict | None = None) -> int:
    """Start argv in its own session (so `down` can kill its whole process group), output to
    $STATE/logs/<name>.log, pid in $STATE/pids/<name>.pid."""
    logf = open(st / "logs" / f"{name}.log", "ab")
    logf.write(f"# {time.strftime('%F %T')} {' '.join(argv)}\n".encode())
    logf.flush()
    p = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=logf,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
        cwd=st,
    )
    logf.close()
    write_pidfile(st / "pids" / f"{name}.pid", p.pid)
    return p.pid


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def https_get(url: str, pki: Path, timeout: float = 5.0) -> tuple[int, str]:
    """GET with the admin client certificate, verifying the test bed's CA."""
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return _get(url, ctx, timeout)


def insecure_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return _get(url, ctx, timeout)


def _get(url: str, ctx, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def http_code(res: tuple[int, str]) -> tuple[bool, str]:
    return res[0] == 200, f"HTTP {res[0]}: {res[1][:500]}"


def wait_for(what: str, check, timeout: float, st: Path, watch: list[str]) -> None:
    """Poll check() -> (ok, detail) until ok; fail early if a watched component died."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for name in watch:
            if read_pidfile(st / "pids" / f"{name}.pid") is None:
                raise RuntimeError(f"{name} exited while waiting for {what}; log tail:\n"
                                   + tail(st / "logs" / f"{name}.log"))
        try:
            ok, last = check()
            if ok:
                return
        except Exception as e:  # noqa: BLE001 - connection refused while starting etc.
            last = repr(e)
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}: {last}\n"
                       + "\n".join(f"--- {n} log tail:\n{tail(st / 'logs' / f'{n}.log')}" for n in watch))


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
