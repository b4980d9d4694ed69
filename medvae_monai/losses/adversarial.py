"""Optional patch-adversarial term (MONAI ``PatchDiscriminator`` + ``PatchAdversarialLoss``)."""

from __future__ import annotations

import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from torch import nn

__all__ = ["AdversarialTerm"]


class AdversarialTerm(nn.Module):
    """A patch discriminator and its least-squares GAN losses for VAE training.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        channels: discriminator width.
        num_layers_d: discriminator depth.
        weight: weight of the generator's adversarial loss in the VAE objective.
    """

    def __init__(
        self, spatial_dims: int = 2, in_channels: int = 1, channels: int = 32, num_layers_d: int = 3, weight: float = 0.01
    ) -> None:
        super().__init__()
        self.discriminator = PatchDiscriminator(
            spatial_dims=spatial_dims, num_layers_d=num_layers_d, channels=channels, in_channels=in_channels, norm="INSTANCE"
        )
        self.criterion = PatchAdversarialLoss(criterion="least_squares")
        self.weight = float(weight)

    def generator_loss(self, recon: torch.Tensor) -> torch.Tensor:
        """Weighted loss that rewards reconstructions the discriminator takes for real."""
        logits = self.discriminator(recon.contiguous())[-1]
        return self.weight * self.criterion(logits, target_is_real=True, for_discriminator=False)

    def discriminator_loss(self, recon: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Discriminator loss on detached reconstructions (fake) and inputs (real)."""
        fake = self.discriminator(recon.detach().contiguous())[-1]
        true = self.discriminator(real.contiguous())[-1]
        return 0.5 * (
            self.criterion(fake, target_is_real=False, for_discriminator=True)
            + self.criterion(true, target_is_real=True, for_discriminator=True)
        )
