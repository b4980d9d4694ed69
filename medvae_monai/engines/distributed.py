"""Distributed data-parallel (DDP) training of a MedVAE, used by ``bundle/configs/multi_gpu_train.yaml``."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

from ..networks import MedVAE

__all__ = ["VAETrainingForward", "log_rank_summary"]

logger = logging.getLogger("medvae_monai")


class VAETrainingForward(nn.Module):
    """The stochastic training pass of a :class:`MedVAE` as one ``forward``, for DDP to wrap.

    DDP all-reduces gradients only for a pass through its own ``forward``, but the bundle's
    network is the deterministic :class:`~medvae_monai.networks.VAEReconstruction` and
    :class:`~medvae_monai.engines.VAETrainer` needs ``(recon, mu, sigma)`` from a sampled latent.
    This module holds the very same network (no copy), so the evaluator, the optimiser and the
    checkpoints keep using it unchanged.

    Args:
        vae: any :class:`MedVAE` (or subclass); its parameters are shared, not copied.
    """

    def __init__(self, vae: MedVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, C, *S) -> (recon (B, C, *S), mu, sigma (B, latent_channels, *ceil(S / f)))``."""
        return MedVAE.forward(self.vae, x)  # samples z in training mode, whatever vae's subclass


def log_rank_summary(engine, network: nn.Module) -> str:
    """Log what this rank trained, and a checksum of its weights.

    Under DDP every rank ends with identical weights, so equal checksums across ranks show that
    the gradients were synchronised.

    Args:
        engine: the finished trainer.
        network: the trained network.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    with torch.no_grad():
        checksum = sum(float(p.double().sum()) for p in network.parameters())
    msg = (
        f"rank {rank} of {world}: trained {engine.state.iteration} iterations in {engine.state.epoch} epochs on "
        f"{len(engine.data_loader.sampler)} items; weight checksum {checksum:.10e}"
    )
    logger.info(msg)
    return msg
