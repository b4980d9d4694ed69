from .checkpoint import ResumableCheckpoint
from .heads import HeadMetricsWriter, PredictionWriter, classification_metrics, segmentation_metrics
from .progress import ProgressBar, progress_enabled
from .reconstruction import SSIM, KLWarmupHandler, MetricsWriter, ReconstructionGrid, reconstruction_grid

__all__ = [
    "SSIM",
    "HeadMetricsWriter",
    "KLWarmupHandler",
    "MetricsWriter",
    "PredictionWriter",
    "ProgressBar",
    "ReconstructionGrid",
    "ResumableCheckpoint",
    "classification_metrics",
    "progress_enabled",
    "reconstruction_grid",
    "segmentation_metrics",
]
