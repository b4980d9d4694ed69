"""Deterministic single-output variants of :class:`MedVAE` for export and bundle checks.

``verify_net_in_out``, ``ckpt_export``, TorchScript and ONNX need a network that returns one
tensor and does not sample in ``forward``. These subclasses use the posterior mean and keep
:class:`MedVAE`'s constructor and state-dict keys, so any MedVAE checkpoint loads into them
unchanged (MONAI's ``ckpt_export`` copies only matching keys, silently).
"""

from __future__ import annotations

import torch

from .vae import MedVAE

__all__ = ["VAEReconstruction", "VAEEncoderMean", "VAEDecoder"]


class VAEReconstruction(MedVAE):
    """``x -> decode(mu(x))``, cropped to the input size: ``(B, C, *S) -> (B, C, *S)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        mu, _ = self.encode(x)
        return self.decode(mu, spatial_size=list(x.shape[2:]))


class VAEEncoderMean(MedVAE):
    """``x -> mu(x)``: ``(B, C, *S) -> (B, latent_channels, *ceil(S / f))``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.encode(x)[0]


class VAEDecoder(MedVAE):
    """``z -> decode(z)``: ``(B, latent_channels, *L) -> (B, C, *(L * f))``."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.decode(z)
