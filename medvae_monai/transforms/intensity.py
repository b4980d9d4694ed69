"""Radiology intensity transforms: CT windowing."""

from __future__ import annotations

from monai.config import KeysCollection
from monai.transforms import ScaleIntensityRange, ScaleIntensityRanged

__all__ = ["CT_WINDOWS", "CTWindow", "CTWindowd", "window_bounds"]

# (level, width) in Hounsfield units; common radiology presets
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "full": (0.0, 2000.0),  # -1000 (air) to +1000 HU
}


def window_bounds(window: str | tuple[float, float]) -> tuple[float, float]:
    """Return ``(hu_min, hu_max)`` for a preset name or a ``(level, width)`` pair."""
    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise ValueError(f"Unknown CT window {window!r}; choose one of {sorted(CT_WINDOWS)} or give (level, width).")
        level, width = CT_WINDOWS[window]
    else:
        level, width = (float(v) for v in window)
    if width <= 0:
        raise ValueError(f"CT window width must be positive, got {width}.")
    return level - width / 2.0, level + width / 2.0


class CTWindow(ScaleIntensityRange):
    """Clip Hounsfield units to a window and scale it linearly to ``[0, 1]``.

    Idempotent on its output only if the window is ``[0, 1]``; apply it once, to HU data.

    Args:
        window: preset name from :data:`CT_WINDOWS` or a ``(level, width)`` pair in HU.
    """

    def __init__(self, window: str | tuple[float, float] = "full") -> None:
        lo, hi = window_bounds(window)
        super().__init__(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)


class CTWindowd(ScaleIntensityRanged):
    """Dictionary version of :class:`CTWindow`."""

    def __init__(self, keys: KeysCollection, window: str | tuple[float, float] = "full", allow_missing_keys: bool = False):
        lo, hi = window_bounds(window)
        super().__init__(keys, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True, allow_missing_keys=allow_missing_keys)
