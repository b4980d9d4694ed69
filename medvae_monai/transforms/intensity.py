"""Radiology intensity transforms: CT windowing, checked scaling to [0, 1] and back to the input's units."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, ScaleIntensityRange, ScaleIntensityRanged, Transform
from monai.transforms.utils_pytorch_numpy_unification import percentile

from ..errors import InputError, describe_source

__all__ = [
    "CT_WINDOWS",
    "CTWindow",
    "CTWindowd",
    "INTENSITY_KEY",
    "RestoreUnits",
    "RestoreUnitsd",
    "ScaleToUnit",
    "ScaleToUnitd",
    "intensity_map",
    "window_bounds",
]

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


INTENSITY_KEY = "intensity"  # meta key of the map ScaleToUnit applied: {a_min, a_max, b_min, b_max, clip}
_PIL_BITS = {"1": 8, "L": 8, "P": 8, "LA": 8, "RGB": 8, "RGBA": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16}


def _bit_depth(img: torch.Tensor, src: str) -> int:
    """Bits per sample of a picture: from its PIL mode when the reader recorded it, else from its
    values (ITK reads TIFF without a mode), which must then be whole numbers: fractions (a float
    TIFF already scaled to [0, 1]) read as grey levels would come out nearly black.

    Raises:
        InputError: fractional values, or values that fit neither 8 nor 16 bits, naming the file and the fix.
    """
    mode = getattr(img, "meta", {}).get("mode")
    if mode in _PIL_BITS:
        return _PIL_BITS[mode]
    values = torch.as_tensor(img)
    lo, hi = float(values.min()), float(values.max())
    if values.is_floating_point() and not torch.equal(values, values.round()):
        raise InputError(
            f"{src}: picture values {lo:g}..{hi:g} are not whole numbers (a float picture), so they are no 8- or "
            "16-bit grey levels; save float data as NIfTI (.nii.gz) or MHA, which keep its values, or re-export it "
            "as an 8- or 16-bit greyscale PNG."
        )
    if lo >= 0 and hi <= 255:
        return 8
    if lo >= 0 and hi <= 65535:
        return 16
    raise InputError(
        f"{src}: picture values {lo:g}..{hi:g} fit neither 8 nor 16 bits (mode {mode!r}); save signed or float "
        "data as NIfTI (.nii.gz) or MHA, which keep its values, or re-export it as an 8- or 16-bit greyscale PNG."
    )


_warned_narrow = False


def _warn_narrow_range(img: torch.Tensor, top: float, src: str) -> None:
    """Say once per process when 16-bit pictures hold 12-bit (or fewer) data: the network then sees
    them nearly black, in 1/16 of its input range; the output keeps the file's units either way."""
    global _warned_narrow
    hi = float(img.max())
    if _warned_narrow or top < 65535 or hi >= 4096 or hi <= 0:
        return
    _warned_narrow = True
    warnings.warn(
        f"{src}: a 16-bit picture whose values reach only {hi:g} of 65535 (12-bit data?), scaled by its bit depth "
        "it fills 1/16 of the model's input range or less; --intensity percentile scales each image to its content.",
        stacklevel=3,
    )


class ScaleToUnit(Transform):
    """Scale an image to ``[0, 1]``, check the result, and record the map in ``meta["intensity"]``.

    Modes (the ``a_min``, ``a_max`` mapped to 0 and 1):

    - ``bit_depth``: ``0 .. 2**bits - 1`` of the picture's bit depth (its PIL mode: 8 for ``L``,
      16 for ``I;16``), so a 16-bit X-ray keeps its 65536 grey levels.
    - ``uint8``: ``0 .. 255``; refused when over 1 % of the pixels lie above 255 (a 16-bit file).
    - ``ct``: a CT window in HU (``window``: preset name or ``(level, width)``); values outside
      are clipped, as windowing intends.
    - ``percentile``: the image's ``lower`` .. ``upper`` percentiles (MONAI's
      ``ScaleIntensityRangePercentiles``). When they coincide (over 99.5 % background, e.g. a few
      hot spots on exact zeros) it falls back to the image's min .. max, with a warning naming
      the file.
    - ``none``: identity; the image must already lie in ``[0, 1]``.

    The result is checked: finite, within ``[0, 1]``, and not constant unless the input was (a
    blank slice stays blank; under ``percentile`` it maps to 0). The recorded map lets every
    writer put outputs back into the input's units (:class:`RestoreUnits`).

    Raises:
        InputError: naming the file, when the result fails a check or the mode cannot apply.
    """

    def __init__(self, mode: str = "percentile", window: str | tuple[float, float] = "full", lower: float = 0.5, upper: float = 99.5) -> None:
        if mode not in ("bit_depth", "uint8", "ct", "percentile", "none"):
            raise InputError(f"intensity mode must be bit_depth, uint8, ct, percentile or none, got {mode!r}.")
        self.mode, self.window, self.lower, self.upper = mode, window, lower, upper

    def bounds(self, img: torch.Tensor) -> tuple[float, float]:
        """``(a_min, a_max)`` for ``img`` under this mode."""
        src = describe_source(img)
        if self.mode == "bit_depth":
            top = float(2 ** _bit_depth(img, src) - 1)
            _warn_narrow_range(img, top, src)
            return 0.0, top
        if self.mode == "uint8":
            above = float((torch.as_tensor(img) > 255).float().mean())
            if above > 0.01:
                raise InputError(
                    f"{src}: {above:.0%} of its values exceed 255, so --intensity uint8 would saturate them (a 16-bit "
                    "image?); use --intensity auto (the file's bit depth) or percentile."
                )
            return 0.0, 255.0
        if self.mode == "ct":
            return window_bounds(self.window if isinstance(self.window, str) else tuple(self.window))
        if self.mode == "none":
            return 0.0, 1.0
        flat = torch.as_tensor(img, dtype=torch.float32).flatten()
        a_min, a_max = float(percentile(flat, self.lower)), float(percentile(flat, self.upper))
        if a_max - a_min <= 1e-6 * max(1.0, abs(a_max)):
            a_min, a_max = float(flat.min()), float(flat.max())
            warnings.warn(
                f"{src}: the {self.lower}-{self.upper} percentile window collapsed (over {100 - self.upper + self.lower:g} % "
                f"of voxels equal {a_min:g}); scaling by its min..max {a_min:g}..{a_max:g} instead.",
                stacklevel=2,
            )
        if a_max == a_min:  # a constant image (a blank slice): keep it, as 0, invertibly
            a_max = a_min + 1.0
        return a_min, a_max

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        src = describe_source(img)
        a_min, a_max = self.bounds(img)
        if self.mode == "none" and (float(img.min()) < 0 or float(img.max()) > 1):
            raise InputError(
                f"{src}: --intensity none needs values in [0, 1], got {float(img.min()):g}..{float(img.max()):g}; "
                "use --intensity auto."
            )
        out = ScaleIntensityRange(a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True)(img)
        out = out if isinstance(out, MetaTensor) else MetaTensor(out)
        lo, hi = float(out.min()), float(out.max())
        if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo and hi <= 1.0):
            raise InputError(f"{src}: scaling gave values {lo:g}..{hi:g}, not within [0, 1]; check the file for NaN/Inf.")
        if hi - lo <= 0 and float(img.max()) > float(img.min()):  # the scaling flattened real content
            raise InputError(
                f"{src}: after --intensity {self.mode} scaling ({a_min:g}..{a_max:g} -> 0..1) the image is constant "
                f"({lo:g}): its values lie outside that range. Choose another --intensity (or --ct_window)."
            )
        # a picture file's storage range, so outputs go back to its uint8/uint16 under any mode (0: none)
        mode = getattr(img, "meta", {}).get("mode")
        storage_max = float(2 ** _PIL_BITS[mode] - 1) if mode in _PIL_BITS else 0.0
        out.meta[INTENSITY_KEY] = {
            "a_min": a_min, "a_max": a_max, "b_min": 0.0, "b_max": 1.0, "clip": True, "storage_max": storage_max,
        }
        return out


class ScaleToUnitd(MapTransform):
    """Dictionary version of :class:`ScaleToUnit`."""

    def __init__(self, keys: KeysCollection, mode: str = "percentile", window: str | tuple[float, float] = "full", lower: float = 0.5, upper: float = 99.5, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleToUnit(mode, window, lower, upper)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


def intensity_map(img: torch.Tensor) -> dict[str, float] | None:
    """The map :class:`ScaleToUnit` recorded on ``img`` (a batch's first item's, once collated), or None."""
    m = getattr(img, "meta", {}).get(INTENSITY_KEY)
    if m is None:
        return None
    return {k: float(torch.as_tensor(v).flatten()[0]) for k, v in m.items()}


class RestoreUnits(Transform):
    """Map ``[0, 1]`` network output back to the input's units with the map :class:`ScaleToUnit` recorded.

    A CT scan in HU gives HU out, a 16-bit X-ray 0..65535; pictures are rounded and cast to their
    storage type (``uint8`` / ``uint16``, from the map's ``storage_max``, under every intensity mode,
    ``percentile`` included) so a PNG writer keeps them. With no recorded map the
    image is returned unchanged.

    Args:
        picture_dtype: cast pictures to their storage type (``uint8``/``uint16``) after rounding and clamping.
    """

    def __init__(self, picture_dtype: bool = True) -> None:
        self.picture_dtype = picture_dtype

    def __call__(self, img: torch.Tensor, intensity: Mapping[str, float] | None) -> torch.Tensor:
        if intensity is None:
            return img
        p = {k: float(v) for k, v in intensity.items()}
        scale = (p["a_max"] - p["a_min"]) / (p["b_max"] - p["b_min"])
        out = (img - p["b_min"]) * scale + p["a_min"]  # linear: a decoder's overshoot is kept, not clipped
        legacy = p["a_max"] if p["a_min"] == 0 and p["a_max"] in (255.0, 65535.0) else 0.0  # maps without storage_max
        cap = p.get("storage_max", 0.0) or legacy
        if self.picture_dtype and cap:
            out = out.round().clamp(0, cap).to(torch.uint8 if cap <= 255 else torch.uint16)
        return out


class RestoreUnitsd(MapTransform):
    """Dictionary version of :class:`RestoreUnits`: maps ``keys`` with the map recorded on ``image_key``.

    Use it before ``SaveImaged`` so every route out writes the input's units (``inference.yaml``).
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", picture_dtype: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.restore = RestoreUnits(picture_dtype)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        intensity = intensity_map(d[self.image_key])
        for key in self.key_iterator(d):
            d[key] = self.restore(d[key], intensity)
        return d
