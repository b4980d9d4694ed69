"""One exception type for every input the package refuses, so callers can catch it in one place."""

from __future__ import annotations

import os
import sys
from types import TracebackType

__all__ = ["InputError", "describe_source", "find_input_error", "install_cli_excepthook"]


class InputError(ValueError):
    """Bad user input: a file, folder, tensor or config value. The message names it and the fix."""


def describe_source(data: object) -> str:
    """Best-effort name of where a tensor came from (its ``filename_or_obj`` metadata)."""
    meta = getattr(data, "meta", None)
    if isinstance(meta, dict) and meta.get("filename_or_obj"):
        return str(meta["filename_or_obj"])
    return "<in-memory image>"


def find_input_error(exc: BaseException | None) -> InputError | None:
    """The :class:`InputError` that caused ``exc``, if any.

    MONAI wraps errors raised inside transforms and bundle expressions in its own
    ``RuntimeError`` chains; this walks ``__cause__``/``__context__`` back to ours.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, InputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def install_cli_excepthook() -> None:
    """Print only the :class:`InputError` message when a command-line run dies of bad input.

    Without it, ``python -m monai.bundle run`` shows the user's mistake at the bottom of a page of
    MONAI's wrapping tracebacks. Other exceptions, and every exception when the environment
    variable ``MEDVAE_DEBUG`` is set, keep the full traceback. The exit status stays 1.
    """
    previous = sys.excepthook
    if getattr(previous, "_medvae", False):
        return

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        err = find_input_error(value)
        if err is None or os.environ.get("MEDVAE_DEBUG"):
            previous(kind, value, tb)
            return
        sys.stderr.write(f"InputError: {err}\n(set MEDVAE_DEBUG=1 for the full traceback)\n")

    hook._medvae = True  # type: ignore[attr-defined]
    sys.excepthook = hook
