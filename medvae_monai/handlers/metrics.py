"""Evaluation metrics as ignite handlers, and the writer of ``metrics.json``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import IgniteMetricHandler
from monai.metrics import SSIMMetric

from ..outputs import contained_path
from ..utils import atomic_write_json

__all__ = ["MetricsWriter", "SSIM"]

logger = logging.getLogger("medvae_monai")


class SSIM(IgniteMetricHandler):
    """Mean SSIM over images (MONAI ``SSIMMetric``), as an ignite metric.

    Args:
        spatial_dims: 2 or 3.
        data_range: intensity range of the images (1 for [0, 1]).
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``.
    """

    def __init__(self, spatial_dims: int = 2, data_range: float = 1.0, output_transform: Callable = lambda x: x) -> None:
        super().__init__(metric_fn=SSIMMetric(spatial_dims=spatial_dims, data_range=data_range), output_transform=output_transform)


class MetricsWriter:
    """Write the evaluator's metrics and run facts to ``<output_dir>/metrics.json`` (atomically).

    By default the metrics are the evaluator's scalar ``engine.state.metrics`` and ``n_images``;
    subclasses that compute their own (:class:`~medvae_monai.handlers.HeadMetricsWriter`) override
    :meth:`attach` and :meth:`metrics_of`.

    Args:
        output_dir: destination folder.
        extra: constant fields to add (split, dataset, compression, ...).
        filename: file name.
    """

    def __init__(self, output_dir: str | os.PathLike, extra: dict | None = None, filename: str = "metrics.json") -> None:
        self.output_dir, self.filename = output_dir, filename
        self.extra = dict(extra or {})

    @property
    def path(self) -> Path:
        return contained_path(self.output_dir, self.filename)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def metrics_of(self, engine: Engine) -> tuple[dict, dict]:
        """``(metrics, facts)`` to write: the evaluator's scalar metrics, and the number of images."""
        metrics = {k: float(v) for k, v in engine.state.metrics.items() if np.isscalar(v) or torch.is_tensor(v)}
        n_images = len(engine.data_loader.dataset) if hasattr(engine.data_loader, "dataset") else None
        return metrics, {"n_images": n_images}

    def __call__(self, engine: Engine) -> None:
        metrics, facts = self.metrics_of(engine)
        path = atomic_write_json(self.path, {**metrics, **self.extra, **facts})
        summary = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items() if not isinstance(v, dict)}
        logger.info("Metrics: %s -> %s", summary, path)
