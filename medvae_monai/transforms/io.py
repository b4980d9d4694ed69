"""Image loading that turns reader failures into one readable :class:`InputError`."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.data import MetaTensor, PILReader
from monai.transforms import LoadImaged
from PIL import Image as PILImage
from PIL import ImageOps

from ..errors import InputError
from .dicom import DicomPictureReader
from .geometry import check_dicom_series, check_header_affine

__all__ = ["LoadImageCheckedd", "picture_as_stored"]


def picture_as_stored(img: PILImage.Image) -> PILImage.Image:
    """The pixels a viewer shows for a picture file, in a mode the package reads (PIL converter).

    Stated rule, per mode: EXIF orientation is applied (``ImageOps.exif_transpose``), so
    outputs, written without the tag, show the same way as the input; ``P`` (palette) becomes
    ``L`` when the palette is grey and ``RGB`` otherwise (``RGBA`` with transparency); ``1``
    becomes ``L`` (0/255). ``L``, ``I;16`` (16-bit), ``RGB`` and the alpha modes ``LA``/``RGBA``
    are kept: a greyscale model refuses the 2- and 4-channel ones by channel count, naming the file,
    rather than silently dropping an alpha that may hold the image.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in ("P", "PA"):
        palette = np.asarray(img.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
        grey = len(palette) > 0 and bool((palette == palette[:, :1]).all())
        alpha = img.mode == "PA" or "transparency" in img.info
        img = img.convert(("LA" if grey else "RGBA") if alpha else ("L" if grey else "RGB"))
    elif img.mode == "1":
        img = img.convert("L")
    return img


class LoadImageCheckedd(LoadImaged):
    """``LoadImaged`` (nibabel, ITK, PIL, ... readers) whose failures name the file and the fix.

    Zero-byte, truncated and corrupt files, and files no reader understands, raise
    :class:`InputError` instead of the readers' chained errors. The reader's affine is compared
    with the file's own header, and a DICOM series folder must be evenly spaced
    (:mod:`~medvae_monai.transforms.geometry`). Pictures are read as a viewer shows them
    (:func:`picture_as_stored`). Single-frame DICOM files are read
    by :class:`~medvae_monai.transforms.dicom.DicomPictureReader` (modality units, MONOCHROME1
    inverted, pixel spacing kept).

    Args:
        args: passed to ``LoadImaged``.
        spatial_dims: if 2, a single-slice volume ``(C, H, W, 1)`` (a one-slice NIfTI, as
            dcm2niix writes one CT slice) becomes the image ``(C, H, W)`` it is, keeping its 4x4
            affine, so outputs keep its z position and slice thickness.
        kwargs: passed to ``LoadImaged``.
    """

    def __init__(self, *args, spatial_dims: int | None = None, **kwargs) -> None:
        # MONAI registers every reader it knows, including its GPU (nvImageCodec) DICOM reader, which
        # warns twice per LoadImage on a machine without CUDA; this package decodes DICOM on the CPU
        # (DicomPictureReader) and never asks that reader, so its notice is noise here
        plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
        level, plugin_log.level = plugin_log.level, logging.ERROR
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
                super().__init__(*args, **kwargs)
        finally:
            plugin_log.setLevel(level)
        self._loader.register(PILReader(converter=picture_as_stored))  # before MONAI's own PILReader
        self._loader.register(DicomPictureReader())  # registered last, so it is asked first
        self.single_slice = spatial_dims == 2

    def __call__(self, data: Mapping[Hashable, object], reader=None) -> dict[Hashable, torch.Tensor]:
        for key in self.key_iterator(dict(data)):
            path = data[key]
            if isinstance(path, (str, bytes)) or hasattr(path, "__fspath__"):
                try:
                    empty = os.path.getsize(path) == 0
                except OSError as e:
                    raise InputError(f"{path}: cannot be opened ({e.strerror}); check the path and permissions.") from None
                if empty:
                    raise InputError(f"{path}: the file is empty (0 bytes); re-export or remove it.")
        for key in self.key_iterator(dict(data)):
            if isinstance(data[key], (str, os.PathLike)) and os.path.isdir(data[key]):
                check_dicom_series(data[key])
        try:
            d = super().__call__(data, reader)
        except InputError:
            raise
        except Exception as e:
            paths = [str(data[k]) for k in self.key_iterator(dict(data))]
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(
                f"{', '.join(paths)}: cannot be read as an image ({type(e).__name__}: {reason[:300]}). The file is "
                "corrupt, truncated or not an image; re-export or remove it."
            ) from None
        for key in self.key_iterator(d):
            if isinstance(data[key], (str, os.PathLike)):
                d[key] = check_header_affine(d[key], data[key])
        if self.single_slice:
            for key in self.key_iterator(d):
                if d[key].ndim == 4 and d[key].shape[-1] == 1:
                    d[key] = _drop_slice_axis(d[key])
        return d


def _drop_slice_axis(img: MetaTensor) -> MetaTensor:
    """``(C, H, W, 1)`` -> ``(C, H, W)`` keeping the 4x4 affine (z position and slice thickness).

    MONAI's ``SqueezeDim`` shrinks the affine to 3x3, which puts the slice at z = 0 with no
    thickness; the single-frame DICOM reader keeps 4x4 too, so every format gives outputs the
    input's geometry.
    """
    meta = {k: v for k, v in img.meta.items() if k != "affine"}
    meta["spatial_shape"] = np.asarray(img.shape[1:-1])  # MONAI's writers tell channel from spatial axes by it
    return MetaTensor(img.as_tensor()[..., 0], affine=img.affine, meta=meta)
