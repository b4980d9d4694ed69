"""Lung-nodule preprocessing for CT volumes of interest (VOIs): HU window, isotropic spacing, a
fixed-size cube centred on the nodule.

Choices, for LIDC-IDRI nodule VOIs (in-plane 0.46–0.98 mm, slices 0.45–2.5 mm; each VOI is the
nodule's bounding box plus ~20 voxels in-plane and ~1 slice in z, median extent 30 x 30 x 7.5 mm):

- **Spacing 1 mm isotropic** (:data:`NODULE_SPACING_MM`): the scale of the LUNA16 and
  NoduleMNIST3D pipelines; it keeps the in-plane detail of the typical 0.7 mm scan within a factor
  1.5 and upsamples the thick slices instead of throwing in-plane voxels away, and makes a voxel
  count a physical size, so the model sees the same millimetres from every scanner.
- **Cube 32 mm = 32^3 voxels** (:data:`NODULE_CUBE`): every nodule fits (LIDC diameters here are
  3.3–32.3 mm, 99% under 25 mm) with the median VOI's whole in-plane context (30 mm); 32 is a
  multiple of the VAE's downsampling factor (latent 8^3 at factor 4), and 32^3 keeps a 3D VAE
  trainable on a CPU. Where the VOI is smaller (nearly always in z), the cube is padded with air.
- **HU range the VAE sees** (:data:`NODULE_HU_WINDOW`, level -300, width 1400 = -1000…+400 HU):
  air to past soft tissue, so the lung parenchyma (-900…-500), ground-glass (-700…-300) and solid
  nodule (-100…+100) keep their contrast, and calcification (>= +200 HU, a benign sign) stays
  distinct from solid tissue instead of being clipped at +150 as the radiological lung window
  (level -600, width 1500) would clip it. The bottom of the window is air, so padding with 0 after
  windowing is padding with air.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import List

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    AsDiscreted,
    BorderPad,
    Compose,
    EnsureTyped,
    MapTransform,
    SpatialCrop,
    Spacingd,
    Transform,
)

from ..errors import InputError
from .checks import CheckImaged, CheckImageMaskd
from .intensity import CTWindowd
from .io import LoadImageCheckedd

__all__ = [
    "NODULE_CUBE",
    "NODULE_HU_WINDOW",
    "NODULE_SPACING_MM",
    "NUM_CUBE_ORIENTATIONS",
    "NoduleCrop",
    "NoduleCropd",
    "nodule_centre",
    "nodule_preprocessing",
    "orient_cube",
]

NODULE_SPACING_MM = 1.0
NODULE_CUBE = 32
NODULE_HU_WINDOW = (-300.0, 1400.0)  # (level, width) in HU: -1000 ... +400
# flips of the three axes x {identity, in-plane transpose}: with the flips, the four 90-degree
# rotations in the axial plane; a nodule has no preferred side, and at 1 mm isotropic these are exact
NUM_CUBE_ORIENTATIONS = 16


def nodule_centre(mask: torch.Tensor | np.ndarray | None, spatial_shape: Sequence[int]) -> list[int]:
    """Voxel index of the centre of the mask's bounding box, or of the volume if there is no mask.

    Args:
        mask: ``(C, *S)`` nodule mask (any value > 0 is the nodule), or ``None``.
        spatial_shape: ``S``, used when the mask is missing or empty.

    Returns:
        one integer index per spatial axis.
    """
    if mask is not None:
        nz = torch.as_tensor(mask).reshape(-1, *mask.shape[1:]).amax(0).nonzero()
        if len(nz):
            return [int((lo + hi) // 2) for lo, hi in zip(nz.amin(0).tolist(), nz.amax(0).tolist())]
    return [int(s) // 2 for s in spatial_shape]


def orient_cube(x: torch.Tensor, index: int) -> torch.Tensor:
    """One of the :data:`NUM_CUBE_ORIENTATIONS` orientations of a nodule cube, for augmentation and
    test-time averaging.

    Args:
        x: ``(..., X, Y, Z)``: the last three axes are spatial, X and Y in the axial plane.
        index: 0 (unchanged) to 15; bits 0-2 flip X, Y, Z, bit 3 swaps X and Y (before the flips).

    Returns:
        a tensor of ``x``'s shape (X and Y swapped for ``index >= 8``).

    Raises:
        InputError: ``index`` outside 0..15 or fewer than three axes.
    """
    if not 0 <= index < 16 or x.dim() < 3:  # 16 = NUM_CUBE_ORIENTATIONS (TorchScript reads no global)
        if not torch.jit.is_scripting():  # TorchScript cannot compile the message formatting
            raise InputError(f"orient_cube: index must be in 0..15 for a (..., X, Y, Z) tensor, "
                             f"got {index} for shape {tuple(x.shape)}.")
        raise ValueError("orient_cube: index must be in 0..15 for a (..., X, Y, Z) tensor.")
    if index & 8:
        x = x.transpose(-3, -2)
    dims: List[int] = []
    for bit, dim in ((1, -3), (2, -2), (4, -1)):
        if index & bit:
            dims.append(dim)
    return x.flip(dims) if len(dims) > 0 else x


class NoduleCrop(Transform):
    """Cut a cube of ``size`` voxels centred on the nodule, padding with ``0`` where the volume ends.

    The centre is the centre of the mask's bounding box (:func:`nodule_centre`), else the volume's
    centre. The volume is first padded by half a cube on every side (MONAI ``BorderPad``) and then
    cropped (``SpatialCrop``), so the nodule stays exactly in the middle even at the VOI's border,
    and the affine in the output's metadata stays correct.

    Args:
        size: cube edge in voxels (an int) or one size per spatial axis.

    Shapes:
        ``img`` ``(C, *S)`` -> ``(C, *size)``; ``mask`` ``(C', *S)`` or ``None``.
    """

    def __init__(self, size: int | Sequence[int] = NODULE_CUBE) -> None:
        self.size = size

    def _roi(self, img: torch.Tensor, mask) -> tuple[BorderPad, SpatialCrop]:
        dims = img.ndim - 1
        size = [int(self.size)] * dims if isinstance(self.size, int) else [int(s) for s in self.size]
        half = [s // 2 + 1 for s in size]
        centre = [c + h for c, h in zip(nodule_centre(mask, img.shape[1:]), half)]
        return BorderPad(spatial_border=[h for h in half for _ in (0, 1)]), SpatialCrop(roi_center=centre, roi_size=size)

    def __call__(self, img: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        pad, crop = self._roi(img, mask)
        return crop(pad(img))


class NoduleCropd(MapTransform):
    """Dictionary version of :class:`NoduleCrop`: one cube, from ``mask_key``, for every key.

    Args:
        keys: keys to crop (image and mask).
        mask_key: the mask that gives the centre; ``None`` or a missing key means the volume's centre.
        size: cube edge in voxels.
        allow_missing_keys: do not raise if a key is absent.

    Raises:
        InputError: ``mask_key`` holds something other than a loaded mask (a file path, say).
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str | None = "mask",
        size: int | Sequence[int] = NODULE_CUBE,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.cropper = NoduleCrop(size)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        mask = None if self.mask_key is None else d.get(self.mask_key)
        if mask is not None and not isinstance(mask, (torch.Tensor, np.ndarray)):
            # a datalist's mask path that no loader read (nodule_preprocessing(['image']) on a CSV with masks)
            raise InputError(f"NoduleCropd: {self.mask_key!r} is {mask!r}, not a loaded mask; load it first "
                             f"(nodule_preprocessing(['image', {self.mask_key!r}])) or pass mask_key=None "
                             "to centre the cube on the volume.")
        pad, crop = self.cropper._roi(d[keys[0]], mask)
        for key in keys:
            d[key] = crop(pad(d[key]))
        return d


def nodule_preprocessing(
    keys: Sequence[str] = ("image", "mask"),
    spacing_mm: float = NODULE_SPACING_MM,
    size: int = NODULE_CUBE,
    window: str | Sequence[float] = NODULE_HU_WINDOW,
) -> Compose:
    """Load a nodule VOI (and its mask) and return the cube the nodule models read.

    Chain: load (channel first) -> check -> ``Spacingd`` to ``spacing_mm`` isotropic (trilinear
    image, nearest mask) -> ``CTWindowd`` to [0, 1] -> :class:`NoduleCropd` -> float32 image,
    binary mask.

    Args:
        keys: image key first, then an optional mask key (absent masks are allowed: the cube is
            then centred on the volume). A mask is read only if its key is listed: with
            ``['image']`` an item's ``mask`` path is left as is and the cube is centred on the volume.
        spacing_mm: isotropic voxel size in mm.
        size: cube edge in voxels.
        window: CT window preset or ``(level, width)`` in HU.

    Returns:
        a ``Compose`` giving ``image`` ``(1, size, size, size)`` float32 in [0, 1] (0 = -1000 HU
        and below) and ``mask`` ``(1, size, size, size)`` in {0, 1}.

    Raises:
        InputError: unreadable file, not a 3D single-channel volume, or a mask that does not
            cover the image's voxels.
    """
    image_key, *mask_keys = keys
    keys = list(keys)
    window = window if isinstance(window, str) else tuple(float(v) for v in window)
    xs = [
        LoadImageCheckedd(keys, image_only=True, ensure_channel_first=True, allow_missing_keys=True),
        CheckImaged(image_key, channels=1, spatial_dims=3, min_size=1),
    ]
    if mask_keys:
        xs.append(CheckImageMaskd(mask_keys, image_key=image_key, allow_missing_keys=True))
    xs += [
        Spacingd(keys, pixdim=[spacing_mm] * 3, mode=["bilinear"] + ["nearest"] * len(mask_keys), allow_missing_keys=True),
        CTWindowd(image_key, window=window),
        NoduleCropd(keys, mask_key=mask_keys[0] if mask_keys else None, size=size, allow_missing_keys=True),
        EnsureTyped(image_key, dtype=torch.float32, track_meta=True),
    ]
    if mask_keys:
        xs.append(AsDiscreted(mask_keys, threshold=0.5, allow_missing_keys=True))
    return Compose(xs, log_stats=False)
