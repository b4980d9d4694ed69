"""Inferers: how a network is run on a batch, as MONAI's ``SimpleInferer`` and ``SlidingWindowInferer``."""

from .posterior import PosteriorSamplingInferer
from .vae import VAEInferer

__all__ = ["PosteriorSamplingInferer", "VAEInferer"]
