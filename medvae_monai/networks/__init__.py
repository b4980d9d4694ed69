from .heads import (
    CLASSIFICATION_TASKS,
    LatentClassifier,
    LatentClassifierEnsemble,
    LatentImageClassifier,
    LatentImageSegmenter,
    LatentSegmenter,
)
from .vae import LatentAttention, MedVAE, ResBlock
from .wrappers import VAEDecoder, VAEEncoderMean, VAEReconstruction

__all__ = [
    "CLASSIFICATION_TASKS",
    "LatentClassifier",
    "LatentClassifierEnsemble",
    "LatentImageClassifier",
    "LatentImageSegmenter",
    "LatentSegmenter",
    "LatentAttention",
    "MedVAE",
    "ResBlock",
    "VAEDecoder",
    "VAEEncoderMean",
    "VAEReconstruction",
]
