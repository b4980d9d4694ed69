"""Image loading that turns reader failures into one readable :class:`InputError`."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

import torch
from monai.transforms import LoadImaged, SqueezeDim

from ..errors import InputError
from .dicom import DicomPictureReader

__all__ = ["LoadImageCheckedd"]


class LoadImageCheckedd(LoadImaged):
    """``LoadImaged`` (nibabel, ITK, PIL, ... readers) whose failures name the file and the fix.

    Zero-byte, truncated and corrupt files, and files no reader understands, raise
    :class:`InputError` instead of the readers' chained errors. Single-frame DICOM files are read
    by :class:`~medvae_monai.transforms.dicom.DicomPictureReader` (modality units, MONOCHROME1
    inverted, pixel spacing kept).

    Args:
        args: passed to ``LoadImaged``.
        spatial_dims: if 2, a single-slice volume ``(C, H, W, 1)`` (how ITK reads one DICOM
            slice, or a one-slice NIfTI) becomes the image ``(C, H, W)`` it is.
        kwargs: passed to ``LoadImaged``.
    """

    def __init__(self, *args, spatial_dims: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._loader.register(DicomPictureReader())  # registered last, so it is asked first
        self.squeeze = SqueezeDim(dim=-1) if spatial_dims == 2 else None

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
        if self.squeeze is not None:
            for key in self.key_iterator(d):
                if d[key].ndim == 4 and d[key].shape[-1] == 1:
                    d[key] = self.squeeze(d[key])
        return d
