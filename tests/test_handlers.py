"""Handlers' own logic: the reconstruction figure layout."""

from __future__ import annotations

import torch

from medvae_monai.handlers import reconstruction_grid


def test_reconstruction_grid_layout():
    images = [torch.full((1, 6, 4), float(i) / 10) for i in range(10)]  # MONAI order (W=6, H=4)
    recons = [img + 0.05 for img in images]
    grid = reconstruction_grid(images, recons, n=4)
    assert grid.shape == (3 * 4, 4 * 6)  # rows: input, reconstruction, error; one column per image
    assert grid[0, 0] == 0 and grid[0, -1] == round(0.9 * 255)  # evenly spaced: the first and last image
    assert grid[4, 0] == round(0.05 * 255)  # reconstruction row
    assert grid[8, 0] == round(0.2 * 255)  # |error| x 4
    volume = [torch.rand(1, 5, 5, 3)]
    assert reconstruction_grid(volume, volume, n=8).shape == (15, 5)  # middle slice of a volume
