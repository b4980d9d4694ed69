"""Reconstruction figures, metrics files and KL warm-up for VAE training and evaluation."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import IgniteMetricHandler
from monai.metrics import SSIMMetric
from monai.utils import CommonKeys as Keys

from ..losses import ELBOLoss, KLWarmup
from ..outputs import contained_path
from ..utils import atomic_write, atomic_write_json

__all__ = ["KLWarmupHandler", "ReconstructionGrid", "MetricsWriter", "SSIM", "reconstruction_grid"]

logger = logging.getLogger("medvae_monai")


class KLWarmupHandler:
    """Set ``loss.beta`` from a :class:`~medvae_monai.losses.KLWarmup` schedule before each iteration.

    Args:
        loss: the :class:`~medvae_monai.losses.ELBOLoss` whose ``beta`` to drive.
        beta: final KL weight.
        warmup_steps: iterations of linear warm-up from 0.
    """

    def __init__(self, loss: ELBOLoss, beta: float, warmup_steps: int) -> None:
        self.loss = loss
        self.schedule = KLWarmup(beta, warmup_steps)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.loss.beta = self.schedule(engine.state.iteration)


class SSIM(IgniteMetricHandler):
    """Mean SSIM over images (MONAI ``SSIMMetric``), as an ignite metric.

    Args:
        spatial_dims: 2 or 3.
        data_range: intensity range of the images (1 for [0, 1]).
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``.
    """

    def __init__(self, spatial_dims: int = 2, data_range: float = 1.0, output_transform: Callable = lambda x: x) -> None:
        super().__init__(metric_fn=SSIMMetric(spatial_dims=spatial_dims, data_range=data_range), output_transform=output_transform)


def _middle_slice(x: torch.Tensor) -> torch.Tensor:
    """``(C, *S)`` -> ``(H, W)``: the first channel, the middle slice of a volume."""
    x = x[0]
    while x.ndim > 2:
        x = x[..., x.shape[-1] // 2]
    return x


def reconstruction_grid(images: Sequence[torch.Tensor], recons: Sequence[torch.Tensor], n: int = 8) -> np.ndarray:
    """Three rows, input, reconstruction and ``|error|``, for ``n`` evenly spaced images of the given
    ones, as a uint8 ``(3 * H, n * W)`` array.

    Intensities are clipped to [0, 1]; the error row is scaled so that 0.25 is white.
    """
    pairs = list(zip(images, recons))
    if len(pairs) > n:
        pairs = [pairs[round(i * (len(pairs) - 1) / (n - 1))] for i in range(n)] if n > 1 else pairs[:1]
    cols = []
    for img, rec in pairs:
        a = _middle_slice(img.detach().float().cpu()).clamp(0, 1).T  # MONAI's (W, H) to picture order
        b = _middle_slice(rec.detach().float().cpu()).clamp(0, 1).T
        err = ((a - b).abs() * 4).clamp(0, 1)
        cols.append(torch.cat([a, b, err], dim=0))
    grid = torch.cat(cols, dim=1) if cols else torch.zeros(1, 1)
    return (grid.numpy() * 255).round().astype(np.uint8)


class ReconstructionGrid:
    """After each evaluation, write a PNG (and a TensorBoard image) of inputs, reconstructions and errors.

    It shows ``n`` evenly spaced images of the evaluator's first batch.

    Args:
        output_dir: where ``reconstructions.png`` goes (atomically replaced each time).
        summary_writer: optional TensorBoard ``SummaryWriter``; the image is labelled with the
            evaluator's epoch, which MONAI's ``ValidationHandler`` sets to the trainer's.
        n: images to show.
    """

    def __init__(self, output_dir: str | os.PathLike, summary_writer=None, n: int = 8):
        self.output_dir = Path(output_dir)
        self.writer = summary_writer
        self.n = n
        self._images: list[torch.Tensor] = []
        self._recons: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._images, self._recons = [], []

    def _collect(self, engine: Engine) -> None:
        if engine.state.iteration > 1:  # the first batch only
            return
        out = engine.state.output
        rows = out if isinstance(out, list) else [out]
        for r in rows:
            images, preds = r[Keys.IMAGE], r[Keys.PRED]
            if images.ndim == preds.ndim and images.ndim >= 4:  # still batched
                self._images += list(images)
                self._recons += list(preds)
            else:
                self._images.append(images)
                self._recons.append(preds)

    def _write(self, engine: Engine) -> None:
        grid = reconstruction_grid(self._images, self._recons, self.n)
        from PIL import Image

        def save(f):
            buf = io.BytesIO()
            Image.fromarray(grid).save(buf, format="PNG")
            f.write(buf.getvalue())

        atomic_write(contained_path(self.output_dir, "reconstructions.png"), save)
        if self.writer is not None:
            self.writer.add_image("input | reconstruction | error", grid[None], global_step=engine.state.epoch)


class MetricsWriter:
    """Write the evaluator's metrics and run facts to ``<output_dir>/metrics.json`` (atomically).

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

    def __call__(self, engine: Engine) -> None:
        metrics = {k: float(v) for k, v in engine.state.metrics.items() if np.isscalar(v) or torch.is_tensor(v)}
        n_images = len(engine.data_loader.dataset) if hasattr(engine.data_loader, "dataset") else None
        payload = {**metrics, **self.extra, "n_images": n_images}
        atomic_write_json(self.path, payload)
        logger.info("Metrics: %s -> %s", {k: round(v, 4) for k, v in metrics.items()}, self.path)
