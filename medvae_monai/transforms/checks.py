"""Validation transforms: refuse images the model cannot take, with a message that names the file."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.transforms import MapTransform

from ..errors import InputError, describe_source

__all__ = ["CheckImaged", "CheckImageMaskd"]


def _dims_hint(got: int, want: int, channels: int) -> str:
    """The fix for a ``channels``-channel image with ``got`` spatial dims given to a ``want``-D model."""
    if (got, want) == (3, 2):
        four_d = " (or a 4D volume, whose 4th axis reads as channels: select one 3D volume)" if channels > 1 else ""
        return (
            f"this input is a 3D volume{four_d} and the model is 2D (the committed models/model.pt is a 2D VAE): pass "
            "--spatial_dims 3 with a 3D checkpoint (--ckpt_path, or --vae_ckpt under a head; train.yaml --spatial_dims 3 "
            "trains one), or give 2D slices"
        )
    if (got, want) == (2, 3):
        return "this input is a 2D image and the model is 3D: pass --spatial_dims 2 with a 2D checkpoint, or give volumes"
    if got > want:
        return "a 4D (multi-frame or multi-echo) volume: select one 3D volume"
    return "too few dimensions: check the file is the right kind of image"


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
                hint = _dims_hint(len(shape) - 1, self.spatial_dims, shape[0])
                raise InputError(
                    f"{src}: expected a {self.spatial_dims}D image (channel-first shape (C, *{self.spatial_dims} dims)), "
                    f"got shape {shape} under key '{key}': {hint}."
                )
            if self.channels is not None and shape[0] != self.channels:
                fix = "convert it to greyscale" if self.channels == 1 else f"give an image with {self.channels} channels"
                if self.channels == 1 and len(shape) == 4:
                    fix = "for a 4D volume (its 4th axis is read as channels) select one 3D volume"
                if shape[0] in (2, 4) and len(shape) == 3:  # LA / RGBA: the alpha channel is not image content
                    fix = "it has an alpha (transparency) channel: flatten it onto a background and save it as greyscale"
                else:
                    fix += f", or use a model built with in_channels={shape[0]}"
                raise InputError(
                    f"{src}: the model takes {self.channels} channel(s), the image under '{key}' has {shape[0]} "
                    f"(shape {shape}); {fix}."
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


class CheckImageMaskd(MapTransform):
    """Check that an image and its mask cover the same voxels: equal spatial shape and affine.

    A mask exported at another resolution or orientation would otherwise be resampled or cropped
    silently and no longer match the anatomy.

    Args:
        keys: mask keys.
        image_key: key of the image each mask belongs to, channel-first ``(C, *S)``.
        atol: tolerance on affine entries (mm), for rounding in exported headers.
        allow_missing_keys: do not raise if a key is absent.

    Raises:
        InputError: naming both files and the fix.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable,
        image_key: str = "image",
        atol: float = 1e-3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.atol = atol

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        img = d[self.image_key]
        for key in self.key_iterator(d):
            mask = d[key]
            where = f"{describe_source(img)} and its mask {describe_source(mask)}"
            if tuple(img.shape[1:]) != tuple(mask.shape[1:]):
                raise InputError(
                    f"{where}: spatial shapes differ, {tuple(img.shape[1:])} vs {tuple(mask.shape[1:])}. "
                    "Re-export the mask on the image's grid (same size and spacing)."
                )
            a_img, a_mask = getattr(img, "affine", None), getattr(mask, "affine", None)
            if a_img is not None and a_mask is not None:
                a_img = torch.as_tensor(a_img, dtype=torch.float64)
                a_mask = torch.as_tensor(a_mask, dtype=torch.float64)
                if not torch.allclose(a_img, a_mask, rtol=0.0, atol=self.atol):
                    raise InputError(
                        f"{where}: affines differ (image {a_img.tolist()}, mask {a_mask.tolist()}), so they are not "
                        "on the same grid. Resample the mask to the image (e.g. monai.transforms.ResampleToMatch) "
                        "and save it with the image's header."
                    )
        return d
