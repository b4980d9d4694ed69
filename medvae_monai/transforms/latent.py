"""Dictionary transforms that encode images to latents and decode them back, keeping geometry.

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

__all__ = ["EncodeLatentd", "DecodeLatentd", "LatentGeometryd", "attach_latent_geometry", "latent_affine", "image_affine"]

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
    image's metadata plus its affine and spatial shape, which :class:`DecodeLatentd` restores.
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


class EncodeLatentd(MapTransform):
    """Encode ``data[key]`` of shape ``(C, *S)`` into a latent MetaTensor ``(Cz, *ceil(S / f))``.

    Args:
        keys: image keys to encode.
        network: a :class:`~medvae_monai.networks.MedVAE` (or anything with ``encode`` and
            ``downsample_factor``).
        latent_key_postfix: the latent is stored under ``f"{key}_{postfix}"``.
        sigma_key_postfix: if given, the posterior standard deviation is stored too.
        device: where to run the network; the latent comes back on the CPU.
        allow_missing_keys: do not raise if a key is absent.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable,
        network: torch.nn.Module,
        latent_key_postfix: str = "latent",
        sigma_key_postfix: str | None = None,
        device: str | torch.device = "cpu",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.network = network
        self.latent_key_postfix = latent_key_postfix
        self.sigma_key_postfix = sigma_key_postfix
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.network.eval()
        f = int(self.network.downsample_factor)
        for key in self.key_iterator(d):
            img = _as_meta(d[key])
            mu, sigma = self.network.encode(img.as_tensor()[None].float().to(self.device))
            d[f"{key}_{self.latent_key_postfix}"] = attach_latent_geometry(mu[0], img, f)
            if self.sigma_key_postfix:
                d[f"{key}_{self.sigma_key_postfix}"] = attach_latent_geometry(sigma[0], img, f)
        return d


class DecodeLatentd(MapTransform):
    """Decode latent ``data[key]`` of shape ``(Cz, *L)`` back to an image MetaTensor.

    The output's affine and spatial shape come from the metadata written by
    :class:`EncodeLatentd`; a bare latent (no such metadata) decodes to ``L * f`` voxels with
    the affine implied by its own.

    Args:
        keys: latent keys to decode.
        network: a :class:`~medvae_monai.networks.MedVAE`.
        output_key_postfix: the image is stored under ``f"{key}_{postfix}"``.
        device: where to run the network; the image comes back on the CPU.
        allow_missing_keys: do not raise if a key is absent.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable,
        network: torch.nn.Module,
        output_key_postfix: str = "decoded",
        device: str | torch.device = "cpu",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.network = network
        self.output_key_postfix = output_key_postfix
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.network.eval()
        f = int(self.network.downsample_factor)
        for key in self.key_iterator(d):
            z = _as_meta(d[key])
            sd = z.ndim - 1
            meta = {k: v for k, v in z.meta.items() if k != "affine"}
            shape = meta.pop(ORIGINAL_SHAPE, None)
            affine = meta.pop(ORIGINAL_AFFINE, None)
            meta.pop(FACTOR, None)
            size = None if shape is None else [int(s) for s in torch.as_tensor(shape).flatten()]
            out = self.network.decode(z.as_tensor()[None].float().to(self.device), spatial_size=size)[0].cpu()
            if affine is None:
                affine = image_affine(z.affine, sd, f).to(z.affine.dtype)
            d[f"{key}_{self.output_key_postfix}"] = MetaTensor(out, affine=torch.as_tensor(affine), meta=meta)
        return d
