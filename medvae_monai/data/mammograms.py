"""Synthetic full-field digital mammograms, written as scanner-like single-frame DICOM files.

No labelled, openly licensed mammography set can be had offline, so tests, benchmarks and the
README figure use these: a breast on the chest wall (compressed-breast outline, skin line,
fibroglandular texture with the power-law spectrum of real mammograms, a round mass and a cluster of
microcalcifications) on air, as detector values of a ``bits_stored``-bit detector.

:func:`write_mammogram_dicom` stores an array as the DICOM a mammography unit sends (pydicom):
Digital Mammography X-Ray Image IOD (For Presentation), MONOCHROME1 or MONOCHROME2, 16 bits
allocated, optional RescaleSlope/Intercept, ImagerPixelSpacing (the detector plane) and/or
PixelSpacing, uncompressed, RLE Lossless or JPEG 2000 Lossless. Compression needs pydicom's
encoders: RLE is native, JPEG 2000 uses ``pylibjpeg-openjpeg``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["TRANSFER_SYNTAXES", "mammogram_phantom", "write_mammogram_dicom"]

# name -> DICOM transfer syntax UID
TRANSFER_SYNTAXES = {
    "explicit": "1.2.840.10008.1.2.1",  # Explicit VR Little Endian, uncompressed
    "rle": "1.2.840.10008.1.2.5",  # RLE Lossless
    "jpeg2000": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Image Compression (Lossless Only)
}
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"


def _power_law_texture(rng: np.random.Generator, shape: tuple[int, int], beta: float = 3.0) -> np.ndarray:
    """Zero-mean, unit-std noise whose power spectrum falls as ``1 / f**beta``.

    Mammographic anatomical background has such a spectrum with ``beta`` about 3 (Burgess, Jacobson,
    Judy, Med. Phys. 28(4):419-437, 2001), so it has structure at every scale down to a pixel, unlike
    a smooth blob model. Built with one real FFT in float32 (about 0.2 GB for 13 megapixels).
    """
    fy = np.fft.fftfreq(shape[0]).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(shape[1]).astype(np.float32)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    f[0, 0] = 1.0
    amp = f ** np.float32(-beta / 2)
    amp[0, 0] = 0.0
    phase = rng.uniform(0, 2 * np.pi, amp.shape).astype(np.float32)
    out = np.fft.irfft2(amp * np.exp(1j * phase).astype(np.complex64), s=shape).astype(np.float32)
    return (out - out.mean()) / (out.std() + 1e-12)


def mammogram_phantom(
    shape: Sequence[int] = (4600, 2800), seed: int = 0, bits_stored: int = 14, laterality: str = "L"
) -> np.ndarray:
    """A synthetic craniocaudal mammogram as detector values, MONOCHROME2 convention (dense is bright).

    Args:
        shape: ``(rows, columns)``; full-field detectors are about 4600 x 2800 (0.07 mm pixels).
        seed: generation depends only on ``(seed, shape)``.
        bits_stored: the detector's bit depth; values lie in ``[0, 2**bits_stored - 1]``.
        laterality: ``L`` puts the chest wall on the left edge, ``R`` on the right.

    Returns:
        ``uint16`` array of ``shape``: air about 2 % of full scale, breast 25-85 %.
    """
    rows, cols = (int(s) for s in shape)
    rng = np.random.default_rng([seed, rows, cols])
    yy = (np.arange(rows, dtype=np.float32)[:, None] - rows / 2) / (rows * 0.46)
    xx = np.arange(cols, dtype=np.float32)[None, :] / (cols * 0.78)  # distance from the chest wall
    r = np.sqrt(yy**2 + xx**2)  # < 1 inside the breast outline (a half-ellipse)
    thickness = np.sqrt(np.clip(1.0 - r**2, 0.0, 1.0))  # compressed-breast thickness falls off to the skin
    breast = r < 1.0
    dense = np.clip(0.6 * _power_law_texture(rng, (rows, cols)) + 0.8 * (1.0 - r), -1.0, 2.0)
    img = np.where(breast, 0.25 + 0.35 * thickness + 0.12 * np.clip(dense, 0, None) * thickness, 0.02)
    img += np.where(breast & (r > 0.985), 0.08, 0.0)  # skin line
    cy, cx = rows * rng.uniform(0.35, 0.65), cols * rng.uniform(0.2, 0.45)
    rad = min(rows, cols) * 0.035
    img += 0.12 * np.exp(-(((np.arange(rows)[:, None] - cy) ** 2 + (np.arange(cols)[None, :] - cx) ** 2) / (2 * rad**2)))
    for _ in range(12):  # a microcalcification cluster: bright specks of 2-4 pixels
        y, x = int(cy + rng.normal(0, rad * 1.5)), int(cx + rad * 3 + rng.normal(0, rad))
        s = int(rng.integers(1, 3))
        img[max(0, y - s) : y + s, max(0, x - s) : x + s] += 0.2
    img += 0.004 * rng.standard_normal((rows, cols), dtype=np.float32)  # quantum noise
    if laterality.upper() == "R":
        img = img[:, ::-1]
    top = 2**bits_stored - 1
    return np.clip(np.rint(img * top), 0, top).astype(np.uint16)


def write_mammogram_dicom(
    path: str | os.PathLike,
    stored: np.ndarray,
    photometric: str = "MONOCHROME2",
    transfer_syntax: str = "explicit",
    bits_stored: int = 14,
    imager_pixel_spacing: Sequence[float] | None = (0.07, 0.07),
    pixel_spacing: Sequence[float] | None = None,
    rescale: tuple[float, float] | None = None,
    laterality: str = "L",
) -> Path:
    """Write ``stored`` (uint16 ``(rows, columns)``, the raw stored values) as a single-frame MG DICOM.

    Args:
        path: the ``.dcm`` file to write.
        stored: stored pixel values; for ``MONOCHROME1`` pass the already inverted values
            (``2**bits_stored - 1 - x``), as a scanner would.
        photometric: ``MONOCHROME1`` (dense is dark in the stored values) or ``MONOCHROME2``.
        transfer_syntax: a key of :data:`TRANSFER_SYNTAXES`.
        bits_stored: BitsStored (BitsAllocated is 16).
        imager_pixel_spacing: ImagerPixelSpacing in mm (row, column), or ``None`` to omit it.
        pixel_spacing: PixelSpacing in mm, or ``None`` to omit it.
        rescale: ``(slope, intercept)`` to write RescaleSlope/RescaleIntercept, or ``None``.
        laterality: ImageLaterality; the PatientOrientation follows it.

    Returns:
        ``path``.

    Raises:
        ValueError: unknown ``transfer_syntax`` or ``photometric``.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}, got {transfer_syntax!r}.")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}.")
    stored = np.ascontiguousarray(stored, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MG_FOR_PRESENTATION, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "MG", "Phantom^Mammogram", "SYNMG0001"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality, ds.ViewPosition = laterality, "CC"
    ds.PatientOrientation = ["A", "R"] if laterality == "L" else ["P", "L"]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    if imager_pixel_spacing is not None:
        ds.ImagerPixelSpacing = [float(v) for v in imager_pixel_spacing]
    if pixel_spacing is not None:
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = float(rescale[0]), float(rescale[1]), "US"
    ds.PixelData = stored.tobytes()
    if transfer_syntax != "explicit":
        ds.compress(UID(TRANSFER_SYNTAXES[transfer_syntax]), stored, encoding_plugin="pylibjpeg"
                    if transfer_syntax == "rle" else "")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path
