from .vae import LOSS_TERMS, ImageAsTarget, VAETrainer, loss_terms

__all__ = ["LOSS_TERMS", "ImageAsTarget", "VAETrainer", "loss_terms"]
