"""The geometry of latents and of the images decoded from them: affines, spatial shapes, metadata.

Networks run in inferers (:class:`~medvae_monai.inferers.VAEInferer`); these transforms only move
geometry between an image, its latent and the decoded image.

A latent voxel ``j`` covers image voxels ``j*f .. j*f + f - 1`` along each axis, so the latent's
affine is the image's affine scaled by ``f`` with its origin moved to the centre of that block.
The image's affine and spatial shape also travel in the latent's metadata, so decoding restores
them exactly, including the crop of any padding.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = [
    "ImageGeometryd",
    "LatentGeometryd",
    "attach_latent_geometry",
    "image_affine",
    "latent_affine",
    "restore_image_geometry",
]

ORIGINAL_AFFINE = "original_affine_before_encoding"
ORIGINAL_SHAPE = "spatial_shape_before_encoding"
FACTOR = "downsample_factor"


def _block_transform(affine: torch.Tensor, spatial_dims: int, factor: int) -> torch.Tensor:
    """Homogeneous matrix mapping latent voxel indices to image voxel indices."""
    n = affine.shape[-1]
    t = torch.eye(n, dtype=torch.float64)
    for i in range(spatial_dims):
        t[i, i] = factor
        t[i, -1] = (factor - 1) / 2.0
    return t


def latent_affine(affine: torch.Tensor, spatial_dims: int, factor: int) -> torch.Tensor:
    """Affine of the latent grid for an image ``affine`` and a downsampling ``factor``."""
    a = torch.as_tensor(affine, dtype=torch.float64)
    return a @ _block_transform(a, spatial_dims, factor)


def image_affine(affine: torch.Tensor, spatial_dims: int, factor: int) -> torch.Tensor:
    """Inverse of :func:`latent_affine`."""
    a = torch.as_tensor(affine, dtype=torch.float64)
    return a @ torch.linalg.inv(_block_transform(a, spatial_dims, factor))


def _as_meta(x: torch.Tensor) -> MetaTensor:
    return x if isinstance(x, MetaTensor) else MetaTensor(x)


def attach_latent_geometry(latent: torch.Tensor, image: torch.Tensor, factor: int) -> MetaTensor:
    """Give a latent ``(Cz, *L)`` the geometry of the ``image`` ``(C, *S)`` it was encoded from.

    The result's affine is :func:`latent_affine` of the image's, and its metadata keeps the
    image's metadata plus its affine and spatial shape, which :func:`restore_image_geometry` restores.
    """
    img = _as_meta(image)
    meta = {k: v for k, v in img.meta.items() if k != "affine"}
    meta[ORIGINAL_AFFINE] = img.affine.clone()
    meta[ORIGINAL_SHAPE] = torch.as_tensor(img.shape[1:])
    meta[FACTOR] = int(factor)
    aff = latent_affine(img.affine, img.ndim - 1, factor).to(img.affine.dtype)
    z = latent.as_tensor() if isinstance(latent, MetaTensor) else latent
    return MetaTensor(z.detach().cpu(), affine=aff, meta=meta)


class LatentGeometryd(MapTransform):
    """Attach geometry to latents already computed (e.g. an evaluator's ``pred``), see
    :func:`attach_latent_geometry`.

    Args:
        keys: latent keys.
        image_key: key of the image each latent was encoded from.
        factor: the VAE's downsampling factor.
    """

    def __init__(self, keys: Sequence[Hashable] | Hashable, image_key: str, factor: int, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.factor = int(factor)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = attach_latent_geometry(d[key], d[self.image_key], self.factor)
        return d


def restore_image_geometry(image: torch.Tensor, latent: torch.Tensor) -> MetaTensor:
    """Give an image ``(C, *S')`` decoded from ``latent`` the geometry of the image that was encoded.

    The affine and spatial shape recorded by :func:`attach_latent_geometry` come back (the decoded
    image is cropped to that shape, dropping the encoder's padding); a bare latent, with only its
    own affine (e.g. read back from a NIfTI), gives the block grid's affine (:func:`image_affine`)
    and keeps the decoded size.
    """
    z = _as_meta(latent)
    meta = {k: v for k, v in z.meta.items() if k != "affine"}
    shape = meta.pop(ORIGINAL_SHAPE, None)
    affine = meta.pop(ORIGINAL_AFFINE, None)
    factor = meta.pop(FACTOR, None)
    x = image.as_tensor() if isinstance(image, MetaTensor) else image
    if shape is not None:
        x = x[(slice(None),) + tuple(slice(0, int(s)) for s in torch.as_tensor(shape).flatten())]
    if affine is None:
        f = int(factor) if factor is not None else round(x.shape[1] / z.shape[1])
        affine = image_affine(z.affine, z.ndim - 1, f).to(z.affine.dtype)
    return MetaTensor(x.detach().cpu(), affine=torch.as_tensor(affine), meta=meta)


class ImageGeometryd(MapTransform):
    """Restore the geometry of images decoded from latents (e.g. a decoding inferer's ``pred``), see
    :func:`restore_image_geometry`; the inverse of :class:`LatentGeometryd`.

    Args:
        keys: decoded image keys ``(C, *S')``.
        latent_key: key of the latent each was decoded from.
    """

    def __init__(self, keys: Sequence[Hashable] | Hashable, latent_key: str, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.latent_key = latent_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = restore_image_geometry(d[key], d[self.latent_key])
        return d
