from .heads import HeadTrainer
from .iteration import LOSS_TERMS, loss_terms
from .prepare import ImageTarget
from .vae import VAETrainer

__all__ = [
    "LOSS_TERMS",
    "HeadTrainer",
    "ImageTarget",
    "VAETrainer",
    "loss_terms",
]
