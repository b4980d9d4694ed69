"""Anomaly maps and per-image anomaly scores from a VAE (``bundle/configs/anomaly.yaml``)."""

from .inferer import METHODS, AnomalyInferer, image_score
from .reference import NormativeReference, reference_for, weights_fingerprint
from .writers import AnomalyMapd, AnomalyScoreWriter, SaveAnomalyMapd

__all__ = [
    "METHODS",
    "AnomalyInferer",
    "AnomalyMapd",
    "AnomalyScoreWriter",
    "NormativeReference",
    "SaveAnomalyMapd",
    "image_score",
    "reference_for",
    "weights_fingerprint",
]
