"""Stopping on request: SIGTERM, the publish that must not be cut, and ``datasetprep job`` as PID 1.

* :func:`install` makes SIGTERM (what ``kill PID`` and a container runtime send) raise
  :class:`Terminated` in the main thread, as Ctrl-C raises ``KeyboardInterrupt``: the worker pool is
  killed, temporary files are removed, nothing is published, and the entry points exit 143 with a
  message. The worker processes die with their parent however it dies (``pool`` sets
  ``PR_SET_PDEATHSIG`` and a watchdog).
* :func:`deferred` holds SIGTERM and SIGINT back for the few milliseconds of a publish's renames,
  then delivers them: a stop request never cuts a publish in two (a SIGKILL still can; the publish
  journal covers that).
* :func:`supervise`: the first process of a container (PID 1) gets no default signal handling from
  the kernel and inherits every orphaned process. ``datasetprep job`` started as PID 1 forks: the
  child does the work, PID 1 forwards the stop signals to it, reaps every process that ends, and
  exits with the child's status (like ``tini``).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

EXIT_TERMINATED = 128 + signal.SIGTERM  # 143
_STOP = (signal.SIGTERM, signal.SIGINT)
_FORWARD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt, so that no ``except Exception`` of a
    reader or tokenizer swallows it on its way out."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def install() -> None:
    """SIGTERM raises :class:`Terminated` in the main thread (call it from the main thread)."""
    signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """SIGTERM and SIGINT that arrive inside the block are delivered when it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in _STOP}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if got:
            signal.raise_signal(got[0])


def supervise(child: Callable[[], int]) -> int:
    """Run ``child`` in a forked process and be its init: forward stop signals, reap every process.

    Returns the child's exit status (128 + N when a signal N ended it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = child()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    for s in _FORWARD:
        signal.signal(s, lambda signum, frame: _forward(pid, signum))
    code = 1
    while True:
        try:
            done, status = os.waitpid(-1, 0)  # reaps the child and every orphan handed to PID 1
        except ChildProcessError:
            return code
        if done == pid:
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
            _reap_rest()
            return code


def _forward(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _reap_rest() -> None:
    """Reap what already ended; whatever still runs dies with PID 1 (the kernel kills the rest of
    the PID namespace when its init exits)."""
    while True:
        try:
            done, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if done == 0:
            return
