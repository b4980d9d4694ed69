from .adversarial import AdversarialTerm
from .classification import ClassificationLoss, SegmentationLoss
from .elbo import ELBOLoss, gaussian_kl

__all__ = ["AdversarialTerm", "ClassificationLoss", "ELBOLoss", "SegmentationLoss", "gaussian_kl"]
