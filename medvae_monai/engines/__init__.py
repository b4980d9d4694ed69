from .heads import HeadTrainer, class_weights, label_counts, require_targets
from .iteration import LOSS_TERMS, loss_terms
from .prepare import ImageTarget
from .vae import VAETrainer

__all__ = [
    "LOSS_TERMS",
    "HeadTrainer",
    "ImageTarget",
    "VAETrainer",
    "class_weights",
    "label_counts",
    "loss_terms",
    "require_targets",
]
