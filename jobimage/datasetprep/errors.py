"""Errors for users: the engine's own error types, and what any exception means for the user.

:func:`describe` turns an exception into a message (what is wrong, and how to fix it) and an
:data:`~datasetprep.contract.ErrorKind` (may a rerun of the same work succeed?). This module is light
(no numpy, no Hub client): the CLI imports it on every path, the operator's too. The exception types
of the heavy modules (``tokenization``, ``hub``) are recognised only when those modules are loaded --
an exception cannot be of a type whose module was never imported.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the contract's pydantic models are imported where a result is made (failure)
    from .contract import ErrorKind, Failed


class BinarizeError(RuntimeError):
    """A run failed; the message is for users (what is wrong and how to fix it)."""

    kind: ErrorKind = "permanent"


class WorkerLost(BinarizeError):
    """A worker process died without an error (killed by the OS, out of memory): may pass next time."""

    kind: ErrorKind = "transient"


class InputError(ValueError):
    """Bad input data; the message names the file, line or row, and field."""


class InputChanged(InputError):
    """An input file changed while a run used it (the message names it and how)."""


class FormatError(ValueError):
    """A file is not a valid MMIDIDX dataset."""


#: OS errors that a rerun of the same work cannot fix.
_PERMANENT_OS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _loaded(module: str, name: str) -> tuple[type, ...]:
    mod = sys.modules.get(module)
    return (getattr(mod, name),) if mod is not None else ()


def describe(exc: BaseException) -> tuple[str, ErrorKind]:
    """``(message for users, kind)`` of an exception; unknown errors are labelled internal."""
    if isinstance(exc, BinarizeError):
        return str(exc), exc.kind
    if isinstance(exc, (InputError, FormatError) + _loaded("datasetprep.tokenization", "TokenizerError")):
        return str(exc), "permanent"
    if isinstance(exc, _loaded("datasetprep.hub.client", "HubUnavailableError")):
        return str(exc), "transient"
    if isinstance(exc, _loaded("datasetprep.hub.client", "HubError")):
        return str(exc), "permanent"
    if exc.__class__.__name__ == "ValidationError" and exc.__class__.__module__.startswith("pydantic"):
        from .spec import format_validation_error

        return format_validation_error(exc), "permanent"
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}", "permanent" if isinstance(exc, _PERMANENT_OS) else "transient"
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return (f"{exc.name} is not installed here: this command needs the engine (the job image, or "
                "pip install datasetprep)", "permanent")
    if isinstance(exc, MemoryError):  # may pass on a retry (another node, less pressure): not certain
        return "out of memory: use fewer workers or give the job more memory", "transient"
    if type(exc) is ValueError:
        return str(exc), "permanent"
    return f"internal error ({type(exc).__name__}: {exc}); please report it with the command you ran", "internal"


def user_message(exc: BaseException) -> str:
    """The message to show for an error."""
    return describe(exc)[0]


def failure(exc: BaseException, *, secret: str | None = None) -> Failed:
    """The job's result for an exception, with ``secret`` (the token) masked in the message."""
    from .contract import Failed

    message, kind = describe(exc)
    if secret:
        message = message.replace(secret, "***")
    return Failed(error=message, kind=kind)
