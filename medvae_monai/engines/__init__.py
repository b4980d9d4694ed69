from .heads import (
    ClassificationLoss,
    HeadTrainer,
    ImageTarget,
    SegmentationLoss,
    cache_latents,
    class_weights,
    label_counts,
    posterior_probabilities,
    require_targets,
)
from .vae import LOSS_TERMS, ImageAsTarget, VAETrainer, loss_terms

__all__ = [
    "LOSS_TERMS",
    "ClassificationLoss",
    "HeadTrainer",
    "ImageAsTarget",
    "ImageTarget",
    "SegmentationLoss",
    "VAETrainer",
    "cache_latents",
    "class_weights",
    "label_counts",
    "loss_terms",
    "posterior_probabilities",
    "require_targets",
]
