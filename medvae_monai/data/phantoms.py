"""Deterministic CT-like phantoms: the embedded default dataset for offline first runs and tests.

Each phantom is a body cross-section (2D) or volume (3D) in Hounsfield units: air, subcutaneous
fat, soft tissue, two lungs, a liver, a spine, and, depending on the class, one lesion:

============  ==========================================================
class         lesion
============  ==========================================================
``normal``    none (the mask is empty)
``cyst``      a round, sharp, fluid-density (about 5 HU) lesion in the liver
``tumour``    a lobulated, enhancing (about 110 HU) lesion in the liver
============  ==========================================================

Images carry MONAI metadata with a 1 mm (2D) or 1.5 mm (3D) spacing affine, so geometry can be
checked through every transform. Generation depends only on ``(seed, index)``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from monai.data import MetaTensor

__all__ = ["PHANTOM_CLASSES", "make_phantom", "phantom_items"]

PHANTOM_CLASSES = ("normal", "cyst", "tumour")

_HU = {"air": -1000.0, "fat": -100.0, "soft": 40.0, "lung": -850.0, "liver": 60.0, "bone": 700.0}


def _ellipsoid(grid: list[np.ndarray], centre, radii) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def make_phantom(
    index: int, size: int = 64, spatial_dims: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """Generate phantom ``index``.

    Args:
        index: item number; the class is ``index % 3``.
        size: edge length in voxels.
        spatial_dims: 2 or 3.
        seed: dataset seed.

    Returns:
        ``(image_hu, mask, label)``: float32 and uint8 arrays of shape ``(size,) * spatial_dims``,
        and the class index into :data:`PHANTOM_CLASSES`.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"make_phantom: spatial_dims must be 2 or 3, got {spatial_dims}.")
    rng = np.random.default_rng([seed, index, spatial_dims, size])
    label = index % len(PHANTOM_CLASSES)
    axes = [np.linspace(-1.0, 1.0, size, dtype=np.float32)] * spatial_dims
    grid = np.meshgrid(*axes, indexing="ij")
    jitter = lambda s: rng.uniform(-s, s)  # noqa: E731 - small local helper
    extra = [0.0] * (spatial_dims - 2)  # the third axis (cranio-caudal) is centred
    deep = [0.75] * (spatial_dims - 2)

    img = np.full(grid[0].shape, _HU["air"], dtype=np.float32)
    body_r = [0.9 + jitter(0.05), 0.7 + jitter(0.05)] + deep
    img[_ellipsoid(grid, [0, 0] + extra, body_r)] = _HU["fat"]
    inner = _ellipsoid(grid, [0, 0] + extra, [r - 0.08 for r in body_r])
    img[inner] = _HU["soft"]
    for side in (-1, 1):  # lungs
        lung = _ellipsoid(grid, [side * 0.42 + jitter(0.03), -0.15 + jitter(0.03)] + extra, [0.3, 0.38] + deep)
        img[lung & inner] = _HU["lung"]
    liver_c = [-0.35 + jitter(0.04), 0.3 + jitter(0.04)] + extra
    liver_r = [0.35 + jitter(0.03), 0.25 + jitter(0.03)] + [0.5] * (spatial_dims - 2)
    liver = _ellipsoid(grid, liver_c, liver_r) & inner
    img[liver] = _HU["liver"]
    img[_ellipsoid(grid, [0.0, 0.5] + extra, [0.1, 0.1] + deep)] = _HU["bone"]  # vertebra

    mask = np.zeros(grid[0].shape, dtype=np.uint8)
    if label > 0:
        r = rng.uniform(0.08, 0.14)
        c = [liver_c[0] + jitter(0.12), liver_c[1] + jitter(0.08)] + extra
        if label == 1:  # cyst: round and sharp
            lesion = _ellipsoid(grid, c, [r] * spatial_dims)
            value = 5.0
        else:  # tumour: lobulated union of blobs
            lesion = np.zeros_like(mask, dtype=bool)
            for _ in range(4):
                cc = [ci + jitter(r * 0.6) for ci in c]
                lesion |= _ellipsoid(grid, cc, [r * rng.uniform(0.6, 1.0)] * spatial_dims)
            value = 110.0
        lesion &= liver
        img[lesion] = value
        mask[lesion] = 1
    img += rng.normal(0.0, 12.0, img.shape).astype(np.float32)  # quantum noise, HU
    return img.astype(np.float32), mask, label


@lru_cache(maxsize=8)
def _phantom_arrays(start: int, count: int, size: int, spatial_dims: int, seed: int) -> tuple:
    return tuple(make_phantom(i, size, spatial_dims, seed) for i in range(start, start + count))


def phantom_items(
    count: int, size: int = 64, spatial_dims: int = 2, seed: int = 0, start: int = 0
) -> list[dict]:
    """Phantoms ``start .. start + count - 1`` as MONAI-style items.

    Each item is ``{"image": MetaTensor (1, *S) in HU, "mask": MetaTensor (1, *S), "label": int,
    "class_name": str, "source": str}``.
    """
    spacing = 1.0 if spatial_dims == 2 else 1.5
    affine = torch.diag(torch.tensor([spacing] * 3 + [1.0], dtype=torch.float64))
    items = []
    for i, (img, mask, label) in enumerate(_phantom_arrays(start, count, size, spatial_dims, seed), start):
        name = f"phantom{spatial_dims}d/{PHANTOM_CLASSES[label]}/{i:05d}"
        meta = {"filename_or_obj": name, "spatial_shape": np.array(img.shape)}
        items.append(
            {
                "image": MetaTensor(torch.from_numpy(img)[None], affine=affine.clone(), meta=dict(meta)),
                "mask": MetaTensor(torch.from_numpy(mask)[None], affine=affine.clone(), meta=dict(meta)),
                "label": label,
                "class_name": PHANTOM_CLASSES[label],
                "source": name,
            }
        )
    return items
