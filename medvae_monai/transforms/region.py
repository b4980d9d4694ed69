"""The classifier's rule for pictures larger than it takes: the object's region at a fixed size.

A full-field mammogram (about 4600 x 2800 pixels, mostly air) is far larger than the images a
latent classifier is trained on, and half of it is background. Classifying it whole would need a
13-megapixel latent pass per posterior sample; shrinking the whole film would spend most pixels on
air. The rule, applied only to images with a side above ``size``:

1. crop to the foreground, the bounding box of voxels above ``threshold`` (after intensity
   scaling to [0, 1], so the breast on air), plus ``margin`` voxels (MONAI ``CropForeground``);
2. resize so that the longer side is ``size``, keeping the aspect ratio, by area averaging
   (MONAI ``Resize(size_mode="longest", mode="area")``), so every output pixel averages the input
   pixels it covers;
3. pad the shorter side to ``size`` with zeros (air), centred (MONAI ``SpatialPad``), so every
   image comes out ``size`` x ``size`` and batches stack.

Images no larger than ``size`` pass unchanged, so small training sets (MedNIST, BUSI) see the same
pixels as before. With ``size=512`` a 4600 x 2800 film with a 4200 x 2300 breast becomes about
0.12 mm pixels over the breast: masses and architecture remain visible, single microcalcifications
(0.1-0.5 mm) do not; detecting those needs the full-resolution (tiled) latent.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.transforms import Compose, CropForeground, MapTransform, Resize, SpatialPad

__all__ = ["ForegroundToSize", "ForegroundToSized"]


class ForegroundToSize:
    """Array version: ``(C, *S) -> (C, size, ..., size)`` for images with a side above ``size``.

    Args:
        size: output edge in voxels.
        threshold: foreground is ``image > threshold`` (any channel).
        margin: voxels kept around the foreground's bounding box.
    """

    def __init__(self, size: int = 512, threshold: float = 0.05, margin: int = 16) -> None:
        if size < 1:
            raise ValueError(f"ForegroundToSize: size must be positive, got {size}.")
        self.size = int(size)
        self.chain = Compose(
            [
                CropForeground(select_fn=lambda x: x > threshold, margin=margin, allow_smaller=True),
                Resize(spatial_size=self.size, size_mode="longest", mode="area"),
                SpatialPad(spatial_size=self.size, method="symmetric"),
            ]
        )

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if max(int(s) for s in img.shape[1:]) <= self.size:
            return img
        return self.chain(img)


class ForegroundToSized(MapTransform):
    """Dictionary version of :class:`ForegroundToSize`.

    Args:
        keys: image keys.
        size: output edge in voxels.
        threshold: foreground is ``image > threshold``.
        margin: voxels kept around the foreground's bounding box.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable,
        size: int = 512,
        threshold: float = 0.05,
        margin: int = 16,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.fit = ForegroundToSize(size, threshold, margin)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.fit(d[key])
        return d
