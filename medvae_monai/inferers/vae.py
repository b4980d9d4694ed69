"""Run a VAE on a batch: the posterior mean's latent and its reconstruction, whole or tile by tile."""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from ..errors import InputError
from ..latents.tiling import tiled_decode, tiled_encode
from ..networks import MedVAE

__all__ = ["VAEInferer"]

_OUTPUTS = ("reconstruction", "latent", "both")


def _like(t: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``t`` with the metadata of ``inputs`` when those are a MetaTensor (tiled results are plain)."""
    if isinstance(inputs, MetaTensor) and not isinstance(t, MetaTensor):
        return MetaTensor(t).copy_meta_from(inputs)
    return t


class VAEInferer(Inferer):
    """The posterior mean ``mu`` of each image and its reconstruction ``decode(mu)``, deterministic.

    With ``tile_size`` the image is encoded and the latent decoded through overlapping tiles with
    blended seams (:func:`~medvae_monai.latents.tiled_encode`/:func:`~medvae_monai.latents.tiled_decode`),
    so memory is bounded by the tile, not the image; results then come back on the CPU.

    Args:
        output: ``"reconstruction"`` ``(B, C, *S)``, ``"latent"`` ``(B, latent_channels, *ceil(S / f))``, or
            ``"both"``: ``{"reconstruction": ..., "latent": ...}`` (MONAI's ``FlattenSubKeysd`` lifts them
            to top-level keys in postprocessing).
        tile_size: tile edge in image voxels (a multiple of ``f``), or ``None`` for whole images.
        overlap: voxels shared by neighbouring tiles (a multiple of ``f``).

    Raises:
        InputError: an unknown ``output``.
    """

    def __init__(self, output: str = "reconstruction", tile_size: int | None = None, overlap: int = 32) -> None:
        super().__init__()
        if output not in _OUTPUTS:
            raise InputError(f"VAEInferer: output must be one of {_OUTPUTS}, got {output!r}.")
        self.output = output
        self.tile_size = tile_size
        self.overlap = overlap

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network: MedVAE, *args, **kwargs) -> torch.Tensor | dict[str, torch.Tensor]:
        size = list(inputs.shape[2:])
        if self.tile_size is None:
            mu = network.encode(inputs)[0]
            recon = network.decode(mu, spatial_size=size) if self.output != "latent" else None
        else:
            f = network.downsample_factor
            mu = tiled_encode(network, inputs, self.tile_size, self.overlap)
            recon = None
            if self.output != "latent":
                recon = tiled_decode(network, mu, self.tile_size // f, self.overlap // f, size)
            mu, recon = _like(mu, inputs), None if recon is None else _like(recon, inputs)
        if self.output == "latent":
            return mu
        if self.output == "reconstruction":
            return recon
        return {"reconstruction": recon, "latent": mu}
