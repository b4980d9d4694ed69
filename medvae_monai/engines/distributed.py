"""Distributed data-parallel (DDP) training of a MedVAE, used by ``bundle/configs/multi_gpu_train.yaml``.

DDP wraps the :class:`~medvae_monai.networks.MedVAE` itself: :class:`~medvae_monai.engines.VAETrainer`
trains through its ``forward``, where DDP all-reduces the gradients."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["log_rank_summary"]

logger = logging.getLogger("medvae_monai")


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
