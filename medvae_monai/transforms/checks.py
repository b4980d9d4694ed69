"""Validation transforms: refuse images the model cannot take, with a message that names the file."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.transforms import MapTransform

from ..errors import InputError, describe_source

__all__ = ["CheckImaged"]


class CheckImaged(MapTransform):
    """Check channel-first images: channel count, number of spatial dims, minimum size, finiteness.

    Args:
        keys: image keys.
        channels: required channel count, or ``None`` to accept any.
        spatial_dims: required number of spatial dimensions (2 or 3), or ``None``.
        min_size: smallest allowed spatial size along every axis.
        allow_missing_keys: do not raise if a key is absent.

    Raises:
        InputError: naming the file and the fix.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable,
        channels: int | None = None,
        spatial_dims: int | None = None,
        min_size: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.min_size = min_size

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            src = describe_source(img)
            shape = tuple(img.shape)
            if self.spatial_dims is not None and len(shape) != self.spatial_dims + 1:
                hint = (
                    "a 4D (multi-frame or multi-echo) volume: select one 3D volume"
                    if len(shape) - 1 > self.spatial_dims
                    else "too few dimensions: check the file is the right kind of image"
                )
                raise InputError(
                    f"{src}: expected a {self.spatial_dims}D image (channel-first shape (C, *{self.spatial_dims} dims)), "
                    f"got shape {shape} under key '{key}': {hint}."
                )
            if self.channels is not None and shape[0] != self.channels:
                fix = "convert it to greyscale" if self.channels == 1 else f"give an image with {self.channels} channels"
                raise InputError(
                    f"{src}: the model takes {self.channels} channel(s), the image under '{key}' has {shape[0]} "
                    f"(shape {shape}); {fix}, or use a model built with in_channels={shape[0]}."
                )
            if min(shape[1:]) < self.min_size:
                raise InputError(
                    f"{src}: spatial size {shape[1:]} is below the minimum {self.min_size} on some axis; "
                    "pad or resample the image first."
                )
            if not torch.isfinite(torch.as_tensor(img)).all():
                n_bad = int((~torch.isfinite(torch.as_tensor(img))).sum())
                raise InputError(
                    f"{src}: {n_bad} NaN/Inf voxel(s) under '{key}'; fix or mask them (e.g. "
                    "numpy.nan_to_num) before encoding."
                )
        return d
