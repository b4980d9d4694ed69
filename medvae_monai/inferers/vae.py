"""Run a VAE on a batch: the posterior mean's latent and its reconstruction."""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from ..errors import InputError
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

    A network with :meth:`~medvae_monai.networks.MedVAE.enable_tiling` encodes and decodes large
    images tile by tile; the results keep the input's metadata either way, so ``SaveImaged`` writes
    the reconstruction with the input's geometry.

    Args:
        output: ``"reconstruction"`` ``(B, C, *S)``, ``"latent"`` ``(B, latent_channels, *ceil(S / f))``, or
            ``"both"``: ``{"reconstruction": ..., "latent": ...}`` (MONAI's ``FlattenSubKeysd`` lifts them
            to top-level keys in postprocessing).

    Raises:
        InputError: an unknown ``output``.
    """

    def __init__(self, output: str = "reconstruction") -> None:
        super().__init__()
        if output not in _OUTPUTS:
            raise InputError(f"VAEInferer: output must be one of {_OUTPUTS}, got {output!r}.")
        self.output = output

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network: MedVAE, *args, **kwargs) -> torch.Tensor | dict[str, torch.Tensor]:
        mu = _like(network.encode(inputs)[0], inputs)
        if self.output == "latent":
            return mu
        recon = _like(network.decode(mu, spatial_size=list(inputs.shape[2:])), inputs)
        return recon if self.output == "reconstruction" else {"reconstruction": recon, "latent": mu}
