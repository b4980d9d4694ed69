"""Figures of reconstructions for VAE training and evaluation."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys

from ..outputs import contained_path
from ..utils import atomic_write

__all__ = ["ReconstructionGrid", "reconstruction_grid"]


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
