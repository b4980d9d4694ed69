from .vae import LatentAttention, MedVAE, ResBlock
from .wrappers import VAEDecoder, VAEEncoderMean, VAEReconstruction

__all__ = ["LatentAttention", "MedVAE", "ResBlock", "VAEDecoder", "VAEEncoderMean", "VAEReconstruction"]
