"""Posterior sampling: class probabilities for several latents ``z ~ q(z | x)`` of each image."""

from __future__ import annotations

import torch
from monai.inferers import Inferer

from ..errors import InputError
from ..networks.heads import LatentImageClassifier

__all__ = ["PosteriorSamplingInferer"]


class PosteriorSamplingInferer(Inferer):
    """Class probabilities of a classifier for ``num_samples`` posterior samples of each image.

    Their mean over samples is the predictive probability under the posterior, their standard
    deviation its spread: large where the VAE is unsure of the image's code. A head trained on
    posterior samples (:class:`~medvae_monai.engines.HeadTrainer`'s ``sample_latent``) has learnt
    that spread.

    Args:
        num_samples: posterior samples per image, at least 2 (a spread needs two).

    Raises:
        InputError: ``num_samples < 2``.
    """

    def __init__(self, num_samples: int = 16) -> None:
        super().__init__()
        if num_samples < 2:
            raise InputError(f"--num_samples {num_samples}: give 2 or more posterior samples per image (a spread needs two).")
        self.num_samples = int(num_samples)

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network: LatentImageClassifier, *args, **kwargs) -> torch.Tensor:
        """``(B, C, *S)`` images -> ``(B, num_samples, num_classes)`` probabilities."""
        x = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        probs = network.head.probabilities(network.sample_logits(x, self.num_samples))  # (S, B, K)
        return probs.transpose(0, 1)
