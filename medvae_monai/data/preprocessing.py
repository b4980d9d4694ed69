"""The radiology preprocessing chain: load, check, scale to ``[0, 1]`` with
:class:`~medvae_monai.transforms.ScaleToUnitd` (which records its map on the image), fit the size.
:class:`RecordIntensityd` copies that map into the item for the latent store.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Lambdad,
    MapTransform,
    Resized,
    ResizeWithPadOrCropd,
)

from ..transforms import CheckImaged, CheckImageMaskd, LoadImageCheckedd, ScaleToUnitd, intensity_map

__all__ = ["INTENSITY_MODES", "RecordIntensityd", "build_preprocessing"]

INTENSITY_MODES = ("auto", "uint8", "ct", "percentile", "none")


class RecordIntensityd(MapTransform):
    """Copy to ``intensity`` the map ``{a_min, a_max, b_min, b_max, clip}`` that
    :class:`~medvae_monai.transforms.ScaleToUnitd` recorded on the image (the identity without one),
    so a decoder can restore the original units without reading any transform's internals.
    """

    def __init__(self, key: str = "image") -> None:
        super().__init__(key)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        recorded = intensity_map(d[self.first_key(d)])
        d["intensity"] = recorded or {"a_min": 0.0, "a_max": 1.0, "b_min": 0.0, "b_max": 1.0, "clip": False, "storage_max": 0.0}
        return d


def build_preprocessing(
    load_files: bool,
    intensity: str,
    ct_window: str | Sequence[float] = "full",
    spatial_dims: int = 2,
    in_channels: int = 1,
    spatial_size: Sequence[int] | None = None,
    resize: bool = False,
    with_mask: bool = False,
    min_size: int = 4,
    binary_mask: bool = True,
    record_intensity: bool = False,
) -> Compose:
    """The preprocessing chain: ``image`` as a ``(C, *S)`` float32 MetaTensor in ``[0, 1]``.

    Use :meth:`ImageSource.preprocessing <medvae_monai.data.ImageSource.preprocessing>`, which fills
    in the source's settings.

    Args:
        load_files: items hold file paths (load them with the checked loader) rather than tensors.
        intensity: the resolved intensity mode of :class:`~medvae_monai.transforms.ScaleToUnitd`.
        ct_window: CT window preset or ``(level, width)`` for ``ct``.
        spatial_dims: 2 or 3.
        in_channels: channels the model takes; other counts are refused with a clear error.
        spatial_size: resize / pad-or-crop to this size, so batches stack.
        resize: resize to ``spatial_size`` (area; masks nearest) instead of padding or cropping.
        with_mask: also load and resample ``mask``.
        min_size: smallest accepted input size (the VAE's downsampling factor).
        binary_mask: map every mask label above 0 to 1; False keeps label values.
        record_intensity: add a :class:`RecordIntensityd` after the scaling.
    """
    keys = ["image", "mask"] if with_mask else ["image"]
    xs: list = []
    if load_files:
        xs.append(LoadImageCheckedd(keys, image_only=True, ensure_channel_first=True, spatial_dims=spatial_dims))
    else:
        xs.append(EnsureChannelFirstd(keys, channel_dim=0))
    xs.append(CheckImaged("image", channels=in_channels, spatial_dims=spatial_dims, min_size=min_size))
    if with_mask:
        xs.append(CheckImageMaskd("mask", image_key="image"))
    # checked scaling that records its map, so every writer can restore the input's units
    xs.append(ScaleToUnitd("image", mode=intensity, window=ct_window if isinstance(ct_window, str) else tuple(ct_window)))
    if record_intensity:
        xs.append(RecordIntensityd("image"))
    if spatial_size is not None:
        size = [int(s) for s in spatial_size]
        if resize:
            xs.append(Resized("image", spatial_size=size, mode="area"))
            if with_mask:
                xs.append(Resized("mask", spatial_size=size, mode="nearest"))
        else:
            xs.append(ResizeWithPadOrCropd(keys, spatial_size=size))
    xs.append(EnsureTyped("image", dtype="float32", track_meta=True))
    if with_mask and binary_mask:
        xs.append(Lambdad("mask", lambda m: (m > 0).to(m.dtype)))
    return Compose(xs, log_stats=False)
