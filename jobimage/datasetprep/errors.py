"""Turning exceptions into messages for users (what is wrong, and how to fix it)."""
from __future__ import annotations

from .indexed import FormatError
from .pipeline import BinarizeError
from .readers import InputError
from .tokenization import TokenizerError

KNOWN = (BinarizeError, TokenizerError, InputError, FormatError)


def user_message(exc: BaseException) -> str:
    """The message to show for an error; unknown errors are labelled as internal."""
    if isinstance(exc, KNOWN):
        return str(exc)
    try:
        from .hub import HubError
    except Exception:  # pragma: no cover - hub support not installed
        HubError = ()  # type: ignore[assignment]
    if HubError and isinstance(exc, HubError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    if isinstance(exc, MemoryError):
        return "out of memory: use fewer workers or give the job more memory"
    if type(exc) is ValueError:
        return str(exc)
    return f"internal error ({type(exc).__name__}: {exc}); please report it with the command you ran"
