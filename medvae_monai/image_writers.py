"""MONAI's NIfTI/ITK writers, registered so that ``resample=False`` writes the array as it is.

Why this module exists: in MONAI 1.6.1 ``SaveImage(resample=False)`` still runs
``SpatialResample`` with ``spatial_size=None``. For a 2D image carrying a 4x4 affine (the phantoms,
single-frame DICOM, whose affine keeps the slice position) that call raises ``TypeError`` inside
``spatial_resample`` and ``SaveImage`` then reports "cannot find a suitable writer"
(Project-MONAI/MONAI#9068, fix proposed in #9080, not released). With no target affine and no
target shape there is nothing to resample, so these subclasses return the data and its affine
unchanged, as MONAI's own code path does when it works; every other call goes to MONAI.

The NIfTI writer also keeps the input's header codes that MONAI drops: MONAI writes
``xyzt_units`` 0 (unknown, which readers take as mm) and ``sform_code``/``qform_code`` 1 (scanner)
whatever the input said, so a volume in microns came back read as 1,000x larger, and an
MNI-aligned one as scanner space. :func:`nifti_header_fields` reads them from the input's metadata
(MONAI's NibabelReader puts the whole header there) and the latent store keeps them per item.

They, and a PIL writer, also write atomically: MONAI's writers write straight to the final path,
so a run killed mid-write left a truncated ``.nii.gz`` or PNG under its final name, which every tool
listing the output folder takes for a result. Here each file goes to a temporary file beside it
(with the same image suffix, since the writer picks the format by it), is synced, then renamed.

:func:`register_as_is_writers` makes them the only writer of each extension for which MONAI
lists NibabelWriter, ITKWriter or PILWriter (the first it lists), in MONAI's writer registry
(``monai.data.image_writer.SUPPORTED_WRITERS``, the table ``register_writer`` fills), so a
failing write raises instead of falling back; ``import medvae_monai`` calls it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import image_writer
from monai.data.image_writer import ImageWriter, ITKWriter, NibabelWriter, PILWriter
from monai.data.utils import to_affine_nd
from monai.utils import convert_data_type, convert_to_tensor

from .data.source import file_suffix
from .utils import atomic_write_file

__all__ = [
    "AsIsITKWriter",
    "AsIsNibabelWriter",
    "AtomicPILWriter",
    "nifti_header_fields",
    "register_as_is_writers",
    "set_nifti_header",
]

NIFTI_HEADER_KEYS = ("xyzt_units", "sform_code", "qform_code")


def nifti_header_fields(meta: Mapping | None) -> dict[str, int]:
    """The NIfTI header codes of ``meta`` that a written NIfTI must keep: ``xyzt_units`` (spatial and
    time units, NIfTI-1 ``NIFTI_UNITS_*``), ``sform_code`` and ``qform_code`` (the affine's space,
    ``NIFTI_XFORM_*``), as ints; keys the metadata lacks (a PNG, an ITK-read file) are left out."""
    out = {}
    for key in NIFTI_HEADER_KEYS:
        value = (meta or {}).get(key)
        if value is not None:
            out[key] = int(np.asarray(convert_data_type(value, np.ndarray)[0]).reshape(-1)[0])
    return out


def set_nifti_header(image: nib.Nifti1Image, affine: np.ndarray, fields: Mapping[str, int], units: int = 0) -> None:
    """Give ``image`` the 4x4 ``affine`` as both sform and qform, in the space and units of
    ``fields`` (:func:`nifti_header_fields`): one code serves both forms, the space the reader took
    the affine from (the sform's if set, else the qform's; 1 = scanner if neither); ``units``
    (an ``xyzt_units`` code) where ``fields`` has none."""
    code = fields.get("sform_code") or fields.get("qform_code") or 1
    image.set_sform(affine, code=code)
    image.set_qform(affine, code=code)
    image.header["xyzt_units"] = fields.get("xyzt_units") or units


class _WriteAtomically:
    def write(self, filename, verbose: bool = False, **kwargs) -> None:
        """Write ``filename`` through a synced temporary file beside it, renamed into place
        (:func:`~medvae_monai.utils.atomic_write_file`), which keeps the image suffix the writer reads."""
        path = Path(filename)
        suffix = path.name[len(path.name) - len(file_suffix(path)) :]  # as written: the writer may read its case
        write = super().write
        atomic_write_file(path, lambda tmp: write(tmp, verbose=verbose, **kwargs), suffix=f".tmp{suffix}")


class _WriteAsIs:
    @classmethod
    def resample_if_needed(cls, data_array, affine=None, target_affine=None, output_spatial_shape=None, **kwargs):
        """``(data, affine)`` unchanged when there is no target; otherwise MONAI's resampling.

        Returns the same types as :meth:`monai.data.ImageWriter.resample_if_needed`: the data and
        the affine converted to the input's array type.
        """
        if target_affine is not None or output_spatial_shape is not None:
            return super().resample_if_needed(data_array, affine, target_affine, output_spatial_shape, **kwargs)
        data = convert_to_tensor(data_array, track_meta=True)
        if affine is not None:
            data.affine = convert_to_tensor(affine, track_meta=False)
        out, *_ = convert_data_type(data, output_type=type(data_array))
        out_affine, *_ = convert_data_type(data.affine, output_type=type(data_array))
        return out, out_affine


class _KeepNiftiHeader:
    def set_metadata(self, meta_dict: Mapping | None = None, resample: bool = True, **options) -> None:
        super().set_metadata(meta_dict, resample, **options)
        self.header_fields = nifti_header_fields(meta_dict)

    def write(self, filename, verbose: bool = False, **obj_kwargs) -> None:
        """:meth:`monai.data.NibabelWriter.write` with the input's units and affine space.

        Written out here because MONAI's ``write`` sets both form codes to 1 between building the
        image and saving it, leaving no hook (:func:`set_nifti_header` gives the codes).
        """
        ImageWriter.write(self, filename, verbose=verbose)  # the log line
        data, dtype = self.data_obj, self.output_dtype
        self.data_obj = self.create_backend_obj(data, affine=self.affine, dtype=dtype, **obj_kwargs)
        affine = np.eye(4) if self.affine is None else convert_data_type(self.affine, np.ndarray)[0]
        affine = to_affine_nd(r=3, affine=affine)
        set_nifti_header(self.data_obj, affine, getattr(self, "header_fields", {}))
        nib.save(self.data_obj, filename)


class AsIsNibabelWriter(_WriteAtomically, _KeepNiftiHeader, _WriteAsIs, NibabelWriter):
    """:class:`monai.data.NibabelWriter` that writes unresampled data as it is, atomically, with the
    input's NIfTI units and form codes (see module docstring)."""


class AsIsITKWriter(_WriteAtomically, _WriteAsIs, ITKWriter):
    """:class:`monai.data.ITKWriter` that writes unresampled data as it is, atomically (see module docstring)."""


class AtomicPILWriter(_WriteAtomically, PILWriter):
    """:class:`monai.data.PILWriter` that writes atomically (see module docstring)."""


_AS_IS = {NibabelWriter: AsIsNibabelWriter, ITKWriter: AsIsITKWriter, PILWriter: AtomicPILWriter}


def register_as_is_writers() -> None:
    """Make the as-is, atomic writer the only writer of every extension whose first NibabelWriter,
    ITKWriter or PILWriter it replaces (see the module docstring).

    Idempotent. MONAI fills its registry lazily on the first ``SaveImage``; it is filled here first
    so that PNG and the other defaults stay registered.
    """
    if not image_writer.SUPPORTED_WRITERS:
        image_writer.init()
    for ext, writers in list(image_writer.SUPPORTED_WRITERS.items()):
        first = next((w for w in writers if w in _AS_IS), None)
        if first is not None:
            # ours alone, no fall-backs: SaveImage tries the next writer when one raises, and that one
            # (MONAI's in place, or ITK for a NIfTI, with its own units) would write without a word
            image_writer.SUPPORTED_WRITERS[ext] = (_AS_IS[first],)
