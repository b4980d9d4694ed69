from .adversarial import AdversarialTerm
from .elbo import ELBOLoss, KLWarmup, gaussian_kl

__all__ = ["AdversarialTerm", "ELBOLoss", "KLWarmup", "gaussian_kl"]
