"""Geometry checks at load time: the affine a reader gives must be the one the file's header holds.

MONAI's readers build the affine themselves (nibabel's sform-first ``affine``, ITK's direction,
spacing and origin turned from LPS to RAS). When that ever differs from the header (a reader change,
a NIfTI whose sform and qform disagree read by another library, an oblique MHA), every output would
silently sit somewhere else. :func:`check_header_affine` reads the header again with the format's
own library and refuses the file by name when they differ; :func:`check_dicom_series` refuses a DICOM
series with missing slices or uneven spacing, which a reader would stack as if evenly spaced.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError

__all__ = ["AFFINE_ATOL_MM", "check_dicom_series", "check_header_affine", "header_affine"]

AFFINE_ATOL_MM = 1e-3  # what "the same affine" means, in mm
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def header_affine(path: str | os.PathLike) -> np.ndarray | None:
    """The RAS affine a file's own header gives, read with the format's library; None for other formats.

    NIfTI: nibabel's ``affine`` (the sform when its code is set, else the qform). MHA/MHD/NRRD: ITK's
    direction, spacing and origin (LPS), turned to RAS.
    """
    name = str(path).lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asarray(nib.load(str(path)).affine, dtype=np.float64)
    if name.endswith((".mha", ".mhd", ".nrrd")):
        import itk

        reader = itk.ImageFileReader.New(FileName=str(path))
        reader.UpdateOutputInformation()  # header only
        out = reader.GetOutput()
        direction = np.asarray(out.GetDirection(), dtype=np.float64)
        spacing = np.asarray(out.GetSpacing(), dtype=np.float64)
        sd = len(spacing)
        lps = np.eye(4)
        lps[:sd, :sd] = direction * spacing[None, :]
        lps[:sd, 3] = np.asarray(out.GetOrigin(), dtype=np.float64)
        return _LPS_TO_RAS @ lps
    return None


def _as4x4(affine: np.ndarray, n: int) -> np.ndarray:
    """The top-left ``n - 1`` spatial block and translation (the last column, whatever the affine's own
    size: a header's 4x4 is compared with a 2D image's 3x3) of ``affine`` in a 4x4."""
    out = np.eye(4)
    out[: n - 1, : n - 1], out[: n - 1, 3] = affine[: n - 1, : n - 1], affine[: n - 1, -1]
    return out


def check_header_affine(img: torch.Tensor, path: str | os.PathLike) -> torch.Tensor:
    """``img`` with the affine of ``path``'s own header, or a refusal when its reader's differs unexplained.

    A NIfTI whose sform and qform disagree is read by MONAI's nibabel reader with the qform, while
    nibabel (and the issue's rule) take the sform: the image then gets nibabel's ``affine`` and a
    warning says so. Any other difference over 1e-3 mm is refused.

    Raises:
        InputError: naming the file, both affines and the fix.
    """
    want = header_affine(path)
    got = getattr(img, "affine", None)
    if want is None or got is None:
        return img
    got = np.asarray(torch.as_tensor(got, dtype=torch.float64))
    n = min(len(got), len(want))
    g, w = _as4x4(got, n), _as4x4(want, n)
    if np.allclose(g, w, rtol=0.0, atol=AFFINE_ATOL_MM):
        return img
    if str(path).lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        qform = _as4x4(np.asarray(nib.load(str(path)).get_qform(), dtype=np.float64), n)
        if np.allclose(g, qform, rtol=0.0, atol=AFFINE_ATOL_MM):
            warnings.warn(f"{path}: its sform and qform disagree; the reader took the qform, kept the sform (nibabel's affine).", stacklevel=2)
            fixed = torch.as_tensor(got, dtype=torch.float64).clone()
            fixed[: n - 1, : n - 1] = torch.from_numpy(want[: n - 1, : n - 1])
            fixed[: n - 1, n - 1] = torch.from_numpy(want[: n - 1, 3])
            img.affine = fixed
            return img
    fix = "nibabel: img.set_qform(img.affine)" if str(path).lower().endswith((".nii", ".nii.gz")) else "ITK: itk.imwrite"
    raise InputError(
        f"{path}: the reader's affine {np.round(g, 4).tolist()} differs from the file's header "
        f"{np.round(w, 4).tolist()}; refusing rather than placing outputs elsewhere. Re-save the file with one "
        f"consistent affine (e.g. {fix})."
    )


def check_dicom_series(folder: str | os.PathLike, rtol: float = 0.01) -> None:
    """Refuse a DICOM series folder whose slices are not evenly spaced along their normal.

    Positions come from each file's ImagePositionPatient projected on the normal of its
    ImageOrientationPatient (pydicom, headers only).

    Raises:
        InputError: naming the series, the gaps found and the fix.
    """
    import pydicom

    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    positions = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:
            continue  # not DICOM (DICOMDIR, notes): the reader skips it too
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            continue
        iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        positions.append(float(np.dot(np.cross(iop[:3], iop[3:]), np.asarray(ds.ImagePositionPatient, dtype=np.float64))))
    if len(positions) < 3:
        return
    steps = np.diff(np.sort(positions))
    typical = float(np.median(steps))
    if typical <= 0 or np.any(np.abs(steps - typical) > rtol * typical):
        raise InputError(
            f"{folder}: DICOM series with uneven slice spacing (steps {np.unique(np.round(steps, 3)).tolist()} mm; "
            "missing or duplicate slices?). A reader would stack them as evenly spaced; export the complete series "
            "or resample it onto a regular grid first."
        )
