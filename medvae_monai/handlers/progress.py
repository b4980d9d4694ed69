"""A progress bar that stays quiet in CI and in logs."""

from __future__ import annotations

import os
import sys

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar as _IgniteProgressBar
from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["ProgressBar", "progress_enabled"]


def progress_enabled() -> bool:
    """Bars are off when ``MEDVAE_QUIET=1``, when ``CI`` is set, or when stderr is not a terminal."""
    if os.environ.get("MEDVAE_QUIET", "") not in ("", "0") or os.environ.get("CI"):
        return False
    return sys.stderr.isatty()


class ProgressBar(_IgniteProgressBar):
    """ignite's tqdm ``ProgressBar`` showing the loss, disabled where :func:`progress_enabled` says so.

    While the engine runs, log records go through ``tqdm.write`` (tqdm's ``logging_redirect_tqdm``),
    so the per-iteration INFO lines print above the bar instead of onto its line.

    Args:
        output_transform: maps ``engine.state.output`` to the shown values (default: ``loss``).
        enabled: force on or off; ``None`` decides with :func:`progress_enabled`.
    """

    def __init__(self, output_transform=None, enabled: bool | None = None, **tqdm_kwargs) -> None:
        self.enabled = progress_enabled() if enabled is None else enabled
        super().__init__(persist=False, disable=not self.enabled, **tqdm_kwargs)
        self._output_transform = output_transform

    def attach(self, engine, metric_names=None, output_transform=None, **kwargs) -> None:  # type: ignore[override]
        if self.enabled:
            super().attach(engine, metric_names=metric_names, output_transform=output_transform or self._output_transform, **kwargs)
            engine.add_event_handler(Events.STARTED, self._redirect_logging)
            # not on EXCEPTION_RAISED: a handler there would stop ignite from re-raising the error
            engine.add_event_handler(Events.COMPLETED | Events.TERMINATE, self._restore_logging)

    def _redirect_logging(self, engine: Engine) -> None:
        if getattr(self, "_redirect", None) is None:
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    def _restore_logging(self, engine: Engine) -> None:
        redirect, self._redirect = getattr(self, "_redirect", None), None
        if redirect is not None:
            redirect.__exit__(None, None, None)
