"""In-memory cache of the posterior of every training image, for heads trained on a frozen encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..networks.heads import LatentImageClassifier

__all__ = ["cache_latents"]


@torch.no_grad()
def cache_latents(
    network: LatentImageClassifier, data: Sequence[dict], batch_size: int = 64, device: str | torch.device = "cpu"
) -> list[dict]:
    """Encode every item's ``image`` once and keep the posterior in memory, so the encoder runs once
    per image rather than once per epoch.

    Returns items ``{"mu": (Cz, *L), "sigma": (Cz, *L), **other keys}`` (without the image), for a
    frozen head trained by :class:`~medvae_monai.engines.HeadTrainer`.
    """
    network.eval()
    out: list[dict] = []
    for start in range(0, len(data), batch_size):
        chunk = data[start : start + batch_size]
        # plain tensors: MetaTensor bookkeeping would slow every later step on the cached latents
        x = torch.stack([torch.as_tensor(d["image"]).as_subclass(torch.Tensor) for d in chunk]).float().to(device)
        mu, sigma = network.vae.encode(x)
        for d, m, s in zip(chunk, mu.cpu(), sigma.cpu()):
            out.append({**{k: v for k, v in d.items() if k != "image"}, "mu": m, "sigma": s})
    return out
