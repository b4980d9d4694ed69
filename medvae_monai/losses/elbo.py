"""Evidence lower bound (ELBO) for a VAE with a diagonal Gaussian posterior and N(0, I) prior."""

from __future__ import annotations

import torch
from torch import nn
from monai.losses import SSIMLoss
from torch.nn import functional as F

__all__ = ["ELBOLoss", "gaussian_kl"]

_RECONSTRUCTION = ("l1", "l2", "bce")


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Closed-form ``KL(N(mu, sigma^2) || N(0, 1))`` for every latent element.

    Args:
        mu: posterior means, any shape.
        sigma: posterior standard deviations (> 0), the shape of ``mu``.

    Returns:
        Elementwise KL in nats, the shape of ``mu``.
    """
    var = sigma.square()
    return 0.5 * (mu.square() + var - 1.0 - torch.log(var.clamp_min(1e-30)))


class ELBOLoss(nn.Module):
    """Negative ELBO: ``reconstruction + ssim_weight * (1 - SSIM) + beta * KL``.

    Both terms are means, the reconstruction over image elements and the KL over latent elements,
    so ``beta`` is a per-element trade-off that does not change with image size. The free-bits
    floor (Kingma et al., 2016) applies per latent channel, to the batch- and position-averaged KL:
    channels whose KL is below ``free_bits`` nats are not pushed further towards the prior, which
    prevents posterior collapse.

    Args:
        reconstruction: ``"l1"``, ``"l2"`` or ``"bce"`` (``bce`` expects targets in [0, 1] and
            treats the decoder output as logits).
        beta: KL weight, unless a call passes its own (the trainer passes ``engine.state.kl_weight``,
            which :class:`~medvae_monai.handlers.KLWarmup` schedules).
        free_bits: per-channel KL floor in nats; 0 disables it.
        ssim_weight: weight of MONAI's ``SSIMLoss`` (1 - SSIM, Gaussian window 11, sigma 1.5,
            data range 1; Wang et al., 2004) added to the reconstruction term; 0 disables it. A
            structural term lifts SSIM where L1 alone blurs fine texture.
        spatial_dims: 2 or 3, for the SSIM window; only used with ``ssim_weight > 0``.

    Shapes:
        ``recon``/``target``: ``(B, C, *S)``; ``mu``/``sigma``: ``(B, Cz, *L)``.
    """

    def __init__(
        self,
        reconstruction: str = "l1",
        beta: float = 1e-4,
        free_bits: float = 0.0,
        ssim_weight: float = 0.0,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if reconstruction not in _RECONSTRUCTION:
            raise ValueError(f"ELBOLoss: reconstruction must be one of {_RECONSTRUCTION}, got {reconstruction!r}.")
        if beta < 0 or free_bits < 0 or ssim_weight < 0:
            raise ValueError("ELBOLoss: beta, free_bits and ssim_weight must be >= 0.")
        self.reconstruction = reconstruction
        self.beta = float(beta)
        self.free_bits = float(free_bits)
        self.ssim_weight = float(ssim_weight)
        self.ssim = SSIMLoss(spatial_dims=spatial_dims, data_range=1.0) if ssim_weight > 0 else None

    def reconstruction_loss(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.ssim is not None:
            return self._pixel_loss(recon, target) + self.ssim_weight * self.ssim(recon, target)
        return self._pixel_loss(recon, target)

    def _pixel_loss(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.reconstruction == "l1":
            return F.l1_loss(recon, target)
        if self.reconstruction == "l2":
            return F.mse_loss(recon, target)
        return F.binary_cross_entropy_with_logits(recon, target)

    def kl_loss(self, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        kl = gaussian_kl(mu, sigma)
        if self.free_bits > 0:
            per_channel = kl.transpose(0, 1).flatten(1).mean(1)  # (Cz,)
            return per_channel.clamp_min(self.free_bits).mean()
        return kl.mean()

    def forward(
        self,
        recon: torch.Tensor,
        target: torch.Tensor,
        mu: torch.Tensor,
        sigma: torch.Tensor,
        beta: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return ``{"loss", "recon_loss", "kl"}``; ``kl`` is the (floored) mean KL before the KL weight,
        ``beta`` if given, else ``self.beta``."""
        if recon.shape != target.shape:
            raise ValueError(f"ELBOLoss: reconstruction {tuple(recon.shape)} and target {tuple(target.shape)} differ.")
        rec = self.reconstruction_loss(recon, target)
        kl = self.kl_loss(mu, sigma)
        return {"loss": rec + (self.beta if beta is None else float(beta)) * kl, "recon_loss": rec, "kl": kl}
