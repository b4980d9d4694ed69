from .checkpoint import ResumableCheckpoint
from .divergence import StopOnDivergence
from .heads import HeadMetricsWriter, PredictionWriter, classification_metrics, segmentation_metrics
from .metrics import SSIM, MetricsWriter
from .progress import ProgressBar, progress_enabled
from .reconstruction import ReconstructionGrid, reconstruction_grid
from .schedules import KLWarmup

__all__ = [
    "SSIM",
    "StopOnDivergence",
    "HeadMetricsWriter",
    "KLWarmup",
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
