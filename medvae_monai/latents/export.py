"""Write decoded store items as files: PNG for pictures, NIfTI (original affine) for volumes."""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import MetaTensor
from PIL import Image

from ..image_writers import AsIsNibabelWriter, set_nifti_header
from ..outputs import OutputNames, output_path_for
from ..utils import atomic_write, ensure_writable_dir

__all__ = ["decode_to", "output_path", "write_decoded"]


def output_path(store, index: int, output_dir: str | os.PathLike = ".") -> Path:
    """Item ``index``'s decoded file under ``output_dir``: its source's safe relative name with
    ``.png`` or ``.nii.gz`` (see :func:`~medvae_monai.outputs.output_path_for`).

    Raises:
        InputError: the path would resolve outside ``output_dir`` or onto an encoded source.
    """
    rec = store.records[index]
    return output_path_for(rec["source"], output_dir, store.meta.get("source_root"), ext=rec["output_ext"], inputs=store.sources)


def decode_to(store, output_dir: str | os.PathLike, network, indices: Sequence[int] | None = None, device=None) -> list[Path]:
    """Decode items of ``store`` (default: all) into ``output_dir``, each named after its source.

    Every output path is checked before the first is written, so a refused store writes nothing.

    Raises:
        InputError: the store is incomplete (:meth:`LatentStore.require_complete`), an output path is
            not contained, or two sources map to one output name.
    """
    store.require_complete()
    ensure_writable_dir(output_dir)
    network.eval()
    idx = range(len(store)) if indices is None else indices
    names = OutputNames()
    for i in idx:
        names.claim(output_path(store, i, output_dir), store.records[i]["source"])
    return [write_decoded(store, i, store.decode(i, network, device), output_dir) for i in idx]


def write_decoded(store, index: int, image: MetaTensor, output_dir: str | os.PathLike) -> Path:
    """Atomically write item ``index`` of ``store`` decoded as ``image`` under ``output_dir``
    (at :func:`output_path`).

    Pictures become 8-bit PNGs in the source's orientation (written with PIL: MONAI's
    ``PILWriter`` would rescale intensities); volumes become float32 NIfTI through MONAI's
    ``NibabelWriter`` (:class:`~medvae_monai.image_writers.AsIsNibabelWriter`) with the record's
    affine, units and form codes, so geometry out equals geometry in.

    Returns:
        The written path.
    """
    rec = store.records[index]
    path = output_path(store, index, output_dir)
    arr = image.detach().cpu().numpy()
    if rec["output_ext"] == ".png":  # the source's bit depth: 8 or 16
        top = 65535 if rec["intensity"]["a_max"] > 255 else 255
        pic = np.clip(np.rint(arr), 0, top).astype(np.uint16 if top > 255 else np.uint8)
        if store.meta["source_kind"] != "medmnist":  # picture files: MONAI's PIL reader puts x (width) first
            pic = np.swapaxes(pic, 1, 2)
        pic = pic[0] if pic.shape[0] == 1 else np.moveaxis(pic, 0, -1)
        buf = io.BytesIO()
        Image.fromarray(pic).save(buf, format="PNG")
        return atomic_write(path, lambda fh: fh.write(buf.getvalue()))
    affine = np.asarray(rec["affine"], dtype=np.float64)
    header = rec.get("nifti", {})  # the NIfTI source's units and affine space (absent in older stores)
    if arr.ndim == 3 and len(affine) == 4:  # a one-slice image given to a 2D model: (H, W, 1) with its 4x4 affine;
        # nibabel directly, MONAI's NibabelWriter fails on a trailing singleton axis (monai 1.6.1)
        vol = arr[0][:, :, None] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)[:, :, None, :]
        nii = nib.Nifti1Image(vol.astype(np.float32), affine)
        set_nifti_header(nii, affine, header, units=2)  # mm where the source did not say (DICOM, ITK files)
        return atomic_write(path, lambda fh: fh.write(gzip.compress(nii.to_bytes(), mtime=0)))
    writer = AsIsNibabelWriter(output_dtype=np.float32)  # writes atomically
    writer.set_data_array(arr if arr.shape[0] > 1 else arr[0], channel_dim=0 if arr.shape[0] > 1 else None)
    writer.set_metadata({"affine": affine, "original_affine": affine, **header}, resample=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.write(str(path), verbose=False)
    return path
