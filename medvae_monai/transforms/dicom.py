"""Single-frame DICOM pictures (mammography, radiography, one CT/MR slice) read in modality units.

MONAI's ``PydicomReader`` applies RescaleSlope/Intercept but reads MONOCHROME1 (dense is dark)
as is, sets the slice axis of a one-slice file to 1 mm and falls back to an identity affine when
ImagePositionPatient/ImageOrientationPatient are absent, as they are in every mammogram. This
subclass keeps MONAI's reading, axis order (x first) and LPS to RAS conversion, and fixes those
three facts of the file (PS3.3 C.7.6.2, C.8.11.7, C.11.1):

- pixels are the modality values (the Modality LUT Sequence when present, otherwise
  ``stored * RescaleSlope + RescaleIntercept``);
- MONOCHROME1 is mirrored about the middle of its value range, ``lo + hi - v`` with ``[lo, hi]``
  the modality values of the stored range: the result is the file's MONOCHROME2 twin, in the same
  units. The centre ``lo + hi`` is kept in the metadata as ``monochrome1_mirror`` so that a writer
  can restore the stored convention;
- the affine uses PixelSpacing, else ImagerPixelSpacing (the detector plane, what mammography
  units send), else 1 mm with ``spacing_source: "none"`` in the metadata; the slice axis is the
  plane's normal times SliceThickness (else SpacingBetweenSlices, else 1 mm), at
  ImagePositionPatient, so a one-slice file keeps its z position and thickness.

Only single-frame files (no NumberOfFrames above 1, no segmentation) are claimed; series folders
and multi-frame files go to MONAI's other readers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from monai.data import PydicomReader
from monai.data.utils import orientation_ras_lps

from ..errors import InputError

__all__ = ["DicomPictureReader", "is_single_frame_dicom"]

# pip packages that decode each compressed transfer syntax (pydicom decodes RLE by itself, slowly)
_DECODERS = {
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg",
}


def _read_header(path: str | os.PathLike):
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True)


def is_single_frame_dicom(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one DICOM file holding one 2D frame (not a folder, multi-frame or SEG)."""
    p = str(path)
    if os.path.isdir(p) or not p.lower().endswith(".dcm"):
        return False
    try:
        ds = _read_header(p)
    except Exception:  # not DICOM at all: let LoadImage's other readers (and its error) handle it
        return False
    return int(getattr(ds, "NumberOfFrames", 1) or 1) <= 1 and "SegmentSequence" not in ds


def _check_decoder(ds, filename) -> None:
    """Refuse compressed pixel data that no installed pydicom decoder plugin handles, naming the fix."""
    try:
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom 2 (the MONAI Label environment): pixel_array's own error then
        return
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None or not uid.is_compressed:
        return
    try:
        available = get_decoder(uid).is_available
    except NotImplementedError:  # a transfer syntax pydicom has no decoder for at all
        available = False
    if not available:
        package = _DECODERS.get(str(uid))
        fix = f"pip install pylibjpeg {package} (or python-gdcm)" if package else "re-export it uncompressed"
        raise InputError(f"{filename}: its pixel data is compressed as {uid.name} and no installed decoder reads it; {fix}.")


def _stored_range(ds) -> tuple[int, int]:
    bits = int(getattr(ds, "BitsStored", ds.BitsAllocated))
    if int(getattr(ds, "PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _modality(ds, values: np.ndarray) -> np.ndarray:
    """Stored values to modality units, float32."""
    if "ModalityLUTSequence" in ds:
        try:
            from pydicom.pixels import apply_modality_lut
        except ImportError:  # pydicom 2
            from pydicom.pixel_data_handlers.util import apply_modality_lut

        return np.asarray(apply_modality_lut(values, ds), dtype=np.float32)
    slope, intercept = float(getattr(ds, "RescaleSlope", 1.0)), float(getattr(ds, "RescaleIntercept", 0.0))
    out = values.astype(np.float32)  # float32, not pydicom's float64: half the memory on 13-megapixel images
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


class DicomPictureReader(PydicomReader):
    """MONAI ``PydicomReader`` for single-frame DICOM pictures; see the module docstring.

    ``get_data`` returns ``(W, H)`` float32 modality values (x first, as MONAI's readers) and
    metadata with the RAS ``affine`` (4x4), ``spacing``, ``modality``,
    ``photometric_interpretation``, ``spacing_source`` (``PixelSpacing``, ``ImagerPixelSpacing``
    or ``none``) and, for MONOCHROME1, ``monochrome1_mirror``.

    Raises:
        InputError: compressed pixel data that no installed decoder handles (names the file and
            the package to install), or a frame that is not one greyscale plane.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("prune_metadata", True)
        super().__init__(**kwargs)

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return len(names) == 1 and is_single_frame_dicom(names[0])

    def _get_array_data(self, img, filename):
        _check_decoder(img, filename)
        stored = img.pixel_array  # other failures (truncation, ...) get LoadImageCheckedd's message
        if stored.ndim != 2:
            raise InputError(
                f"{filename}: expected one greyscale frame, got pixel data of shape {stored.shape} "
                f"({getattr(img, 'PhotometricInterpretation', '?')}); convert it to a single-frame MONOCHROME2 image."
            )
        data = _modality(img, stored)
        if str(getattr(img, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            lo, hi = _modality(img, np.asarray(_stored_range(img)))
            mirror = np.float32(min(lo, hi) + max(lo, hi))
            np.subtract(mirror, data, out=data)
        return data

    def _get_meta_dict(self, img) -> dict:
        meta = super()._get_meta_dict(img)
        meta["modality"] = str(getattr(img, "Modality", ""))
        photometric = str(getattr(img, "PhotometricInterpretation", "")).upper()
        meta["photometric_interpretation"] = photometric
        if photometric == "MONOCHROME1":
            lo, hi = _modality(img, np.asarray(_stored_range(img)))
            meta["monochrome1_mirror"] = float(min(lo, hi) + max(lo, hi))
        for attr in ("PixelSpacing", "ImagerPixelSpacing"):
            if attr in img and img[attr].value is not None and len(img[attr].value) >= 2:
                meta["pixel_spacing_mm"] = [float(v) for v in img[attr].value[:2]]
                meta["spacing_source"] = attr
                break
        else:
            meta["pixel_spacing_mm"], meta["spacing_source"] = [1.0, 1.0], "none"
        thickness = getattr(img, "SliceThickness", None) or getattr(img, "SpacingBetweenSlices", None)
        meta["slice_thickness_mm"] = float(thickness) if thickness else 1.0
        return meta

    def _get_affine(self, metadata: dict, lps_to_ras: bool = True):
        """LPS affine of the frame (rows index first, as MONAI's reader before its i/j swap)."""
        dr, dc = metadata["pixel_spacing_mm"]
        row_dir, col_dir, origin = np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.zeros(3)
        if "00200037" in metadata and "00200032" in metadata:
            iop = np.asarray(metadata["00200037"]["Value"], dtype=np.float64)
            row_dir, col_dir = iop[:3], iop[3:]
            origin = np.asarray(metadata["00200032"]["Value"], dtype=np.float64)
        affine = np.eye(4)
        affine[:3, 0] = col_dir * dr  # moving down one row
        affine[:3, 1] = row_dir * dc  # moving right one column
        affine[:3, 2] = np.cross(row_dir, col_dir) * metadata["slice_thickness_mm"]
        affine[:3, 3] = origin
        if not np.isfinite(affine).all():
            raise InputError(f"non-finite DICOM geometry (orientation {row_dir}, {col_dir}, position {origin}).")
        return orientation_ras_lps(affine) if lps_to_ras else affine
