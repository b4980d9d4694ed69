"""One exception type for every input the package refuses, so callers can catch it in one place."""

from __future__ import annotations

import logging
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
    if not os.environ.get("MEDVAE_DEBUG"):
        for handler in logging.getLogger().handlers:
            handler.addFilter(_drop_input_error_logs)
        # the loggers that report an engine's exception: they do not propagate to the root (or get
        # their handlers later), and a logger's own filter sees every record it logs
        for name in _ENGINE_LOGGERS:
            logging.getLogger(name).addFilter(_drop_input_error_logs)


_ENGINE_LOGGERS = ("monai.handlers.StatsHandler",) + tuple(
    f"ignite.engine.engine.{engine}" for engine in ("VAETrainer", "HeadTrainer", "SupervisedTrainer", "SupervisedEvaluator")
)


def _drop_input_error_logs(record: logging.LogRecord) -> bool:
    """Drop error logs of an :class:`InputError` that the excepthook prints as one line anyway.

    ignite's engine and MONAI's ``StatsHandler`` log an exception raised in a handler (at ERROR,
    the latter with its traceback) before re-raising it; for bad input that buried the one line.
    ignite logs inside its ``except`` block, so ``sys.exc_info()`` names the exception even where
    the record carries none.
    """
    if record.levelno < logging.ERROR:
        return True
    exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
    return find_input_error(exc) is None
