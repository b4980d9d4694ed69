from .checkpoint import ResumableCheckpoint
from .progress import ProgressBar, progress_enabled
from .reconstruction import SSIM, KLWarmupHandler, MetricsWriter, ReconstructionGrid, reconstruction_grid

__all__ = [
    "SSIM",
    "KLWarmupHandler",
    "MetricsWriter",
    "ProgressBar",
    "ReconstructionGrid",
    "ResumableCheckpoint",
    "progress_enabled",
    "reconstruction_grid",
]
