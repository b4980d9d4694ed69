"""Build MONAI datasets for any supported source with one call.

``make_dataset(dataset_dir, split)`` picks the loader from what ``dataset_dir`` is
(see :func:`~medvae_monai.data.sources.source_kind`), applies the deterministic split, and
wraps the items in a MONAI ``CacheDataset`` with a radiology preprocessing chain. With no
``dataset_dir`` it generates the embedded phantom dataset and logs that it does.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence

import torch
from monai.data import CacheDataset, Dataset
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Lambdad,
    Resized,
    ResizeWithPadOrCropd,
)

from ..errors import InputError, describe_source, find_input_error
from ..transforms import CheckImaged, CheckImageMaskd, LoadImageCheckedd, ScaleToUnitd
from .phantoms import PHANTOM_CLASSES, phantom_items
from .sources import PICTURE_SUFFIXES, class_folder_items, datalist_items, first_image, medmnist_items, source_kind
from .splits import split_items

__all__ = [
    "INTENSITY_MODES",
    "CheckedCacheDataset",
    "DatasetInfo",
    "list_items",
    "make_dataset",
    "preprocessing",
    "preprocessing_for",
]

logger = logging.getLogger("medvae_monai")

INTENSITY_MODES = ("auto", "uint8", "ct", "percentile", "none")

# embedded default: enough phantoms for a meaningful first training run in about a minute
PHANTOM_COUNT = {2: 720, 3: 120}
PHANTOM_SIZE = {2: 64, 3: 32}


class DatasetInfo(dict):
    """What :func:`list_items` found: ``kind``, ``class_names``, ``dataset_dir``, ``has_masks``."""


def list_items(
    dataset_dir: str | os.PathLike | None,
    split: str = "train",
    spatial_dims: int = 2,
    seed: int = 0,
    skip_unreadable: bool = False,
    max_items: int | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[list[dict], DatasetInfo]:
    """Items of ``split`` from ``dataset_dir`` and a description of the source.

    Args:
        dataset_dir: class-folder tree, MedMNIST ``.npz``, datalist ``.json`` / MSD folder, or
            ``None`` for the embedded phantoms.
        split: ``train``, ``val``, ``test``, ``trainval`` or ``all``. MedMNIST uses its official
            splits; everything else uses :func:`~medvae_monai.data.splits.split_items`.
        spatial_dims: 2 or 3, for the phantoms.
        seed: phantom seed.
        skip_unreadable: skip non-image files in class folders with a warning.
        max_items: keep an evenly spaced subset of at most this many items (quick runs).
        class_names: expected classes in label order (e.g. a trained classifier's); a class
            folder with another name is refused, see
            :func:`~medvae_monai.data.sources.class_folder_items`.
    """
    items, info = _list_all(dataset_dir, split, spatial_dims, seed, skip_unreadable, class_names)
    if max_items is not None and 0 < max_items < len(items):
        step = len(items) / max_items
        items = [items[int(i * step)] for i in range(max_items)]
    return items, info


def _list_all(
    dataset_dir: str | os.PathLike | None,
    split: str,
    spatial_dims: int,
    seed: int,
    skip_unreadable: bool,
    class_names: Sequence[str] | None = None,
) -> tuple[list[dict], DatasetInfo]:
    kind = source_kind(dataset_dir)
    info = DatasetInfo(kind=kind, dataset_dir=None if kind == "phantom" else str(dataset_dir), class_names=[])
    if kind == "phantom":
        n = PHANTOM_COUNT[spatial_dims]
        logger.warning(
            "No dataset_dir given: using the embedded phantom dataset (%d %dD CT phantoms of %d voxels per side, "
            "seed %d). Pass --dataset_dir to use real images.",
            n, spatial_dims, PHANTOM_SIZE[spatial_dims], seed,
        )
        items = phantom_items(n, PHANTOM_SIZE[spatial_dims], spatial_dims, seed)
        info["class_names"] = list(PHANTOM_CLASSES)
    elif kind == "medmnist":
        if split in ("train", "val", "test"):
            items, info["class_names"] = medmnist_items(dataset_dir, split)
            info["has_masks"] = False
            return items, info
        parts = ("train", "val") if split == "trainval" else ("train", "val", "test")
        items = []
        for s in parts:
            part, info["class_names"] = medmnist_items(dataset_dir, s)
            items += part
        info["has_masks"] = False
        return items, info
    elif kind == "datalist":
        items = datalist_items(dataset_dir)
    else:
        items, info["class_names"] = class_folder_items(dataset_dir, skip_unreadable, class_names)
    items = split_items(items, split)
    if not items:
        raise InputError(f"{dataset_dir or 'phantoms'}: split {split!r} is empty; use more images or another split.")
    info["has_masks"] = all("mask" in it for it in items)
    return items, info


def _is_picture(items: Sequence[dict]) -> bool:
    first = items[0]["image"]
    return isinstance(first, str) and first.lower().endswith(PICTURE_SUFFIXES)


def preprocessing(
    kind: str,
    items: Sequence[dict],
    spatial_dims: int = 2,
    in_channels: int = 1,
    spatial_size: Sequence[int] | None = None,
    intensity: str = "auto",
    ct_window: str | Sequence[float] = "full",
    with_mask: bool = False,
    min_size: int = 4,
    binary_mask: bool = True,
) -> Compose:
    """The preprocessing chain for items from :func:`list_items`: ``image`` in [0, 1], ``(C, *S)``.

    Args:
        kind: source kind from :func:`list_items`.
        items: the items (used to tell pictures from volumes).
        spatial_dims: 2 or 3.
        in_channels: channels the model takes; other counts are refused with a clear error.
        spatial_size: resize pictures / pad-or-crop volumes to this size, so batches stack.
        intensity: ``auto`` (uint8 for pictures and MedMNIST, CT window for phantoms,
            0.5–99.5 percentiles for volumes), ``uint8``, ``ct``, ``percentile`` or ``none``.
        ct_window: window preset or ``(level, width)`` for ``ct``.
        with_mask: also load and resample ``mask`` (nearest neighbour).
        min_size: smallest accepted input size (the VAE's downsampling factor).
        binary_mask: map every label above 0 to 1; False keeps label values (e.g. MSD
            Hippocampus 1 anterior / 2 posterior).
    """
    if intensity not in INTENSITY_MODES:
        raise InputError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}.")
    keys = ["image", "mask"] if with_mask else ["image"]
    xs: list = []
    if kind in ("folder", "datalist"):
        xs += [LoadImageCheckedd(keys, image_only=True, ensure_channel_first=True, spatial_dims=spatial_dims)]
    else:
        xs += [EnsureChannelFirstd(keys, channel_dim=0)]
    if intensity == "auto":
        intensity = {"phantom": "ct", "medmnist": "uint8"}.get(kind) or ("bit_depth" if _is_picture(items) else "percentile")
    xs.append(CheckImaged("image", channels=in_channels, spatial_dims=spatial_dims, min_size=min_size))
    if with_mask:
        xs.append(CheckImageMaskd("mask", image_key="image"))
    # checked scaling that records its map, so every writer can restore the input's units
    xs.append(ScaleToUnitd("image", mode=intensity, window=ct_window if isinstance(ct_window, str) else tuple(ct_window)))
    if spatial_size is not None:
        size = [int(s) for s in spatial_size]
        if kind in ("folder", "medmnist") and spatial_dims == 2:
            xs.append(Resized("image", spatial_size=size, mode="area"))
            if with_mask:
                xs.append(Resized("mask", spatial_size=size, mode="nearest"))
        else:
            xs.append(ResizeWithPadOrCropd(keys, spatial_size=size))
    xs.append(EnsureTyped("image", dtype="float32", track_meta=True))
    if with_mask and binary_mask:
        xs.append(Lambdad("mask", lambda m: (m > 0).to(m.dtype)))
    return Compose(xs, log_stats=False)


class CheckedCacheDataset(CacheDataset):
    """``CacheDataset`` that loads and checks every item up front and, when one fails, raises the
    package's :class:`~medvae_monai.errors.InputError` alone instead of MONAI's wrapped
    ``RuntimeError("applying transform ...")`` chain, so the message names the bad file.

    Args:
        data: the items.
        transform: a ``Compose`` of deterministic transforms (it is cached).
        skip_bad: opt in to dropping items whose file is refused (corrupt, wrong shape, NaN, ...)
            instead of failing; each is logged, and one warning at the end gives the count.
        kwargs: passed to ``CacheDataset``.
    """

    def __init__(self, data: Sequence[dict], transform, skip_bad: bool = False, **kwargs) -> None:
        kwargs.setdefault("progress", False)
        kwargs.setdefault("copy_cache", False)
        self.skip_bad = skip_bad
        self.skipped: list[tuple[dict, str]] = []  # (item, reason) of every dropped item
        try:
            super().__init__(data, transform, **kwargs)
        except RuntimeError as e:
            cause = find_input_error(e)
            if cause is not None:
                raise cause from None
            raise

    def _load_cache_item(self, idx: int):
        try:
            return super()._load_cache_item(idx)
        except Exception as e:
            err = find_input_error(e) if self.skip_bad else None
            if err is None:
                raise
            return err  # marks the item as bad; set_data drops it

    def set_data(self, data: Sequence) -> None:
        super().set_data(data)
        if self._cache is None:
            return
        if self.skip_bad:
            self._drop_bad()
        self._warn_mixed_sizes()

    def _warn_mixed_sizes(self) -> None:
        """Batches of more than one image need one size; say so before the DataLoader's stack error."""
        shapes: dict[tuple, str] = {}
        for d in self._cache:
            img = d.get("image") if isinstance(d, dict) else None
            if isinstance(img, torch.Tensor):
                shapes.setdefault(tuple(img.shape), describe_source(img))
        if len(shapes) > 1:
            (s1, f1), (s2, f2) = list(shapes.items())[:2]
            warnings.warn(
                f"the images have {len(shapes)} different shapes, e.g. {s1} ({f1}) and {s2} ({f2}); batches of more "
                "than one image will fail to stack. Set spatial_size (--spatial_size [H, W]) or use batch_size 1.",
                stacklevel=3,
            )

    def _drop_bad(self) -> None:
        bad = {i for i, c in enumerate(self._cache) if isinstance(c, InputError)}
        if not bad:
            return
        for i in sorted(bad):
            logger.warning("skipped: %s", self._cache[i])
            self.skipped.append((self.data[i], str(self._cache[i])))
        if len(bad) == len(self.data):
            raise InputError(f"all {len(bad)} item(s) were refused; the first: {self._cache[min(bad)]}")
        self.data = [d for i, d in enumerate(self.data) if i not in bad]
        self._cache = [c for i, c in enumerate(self._cache) if i not in bad]
        self.cache_num = len(self._cache)
        warnings.warn(
            f"skipped {len(bad)} of {len(bad) + len(self.data)} item(s) that could not be used (see the log, or "
            f"the dataset's `skipped` list); the first: {self.skipped[0][1][:300]}",
            stacklevel=2,
        )


def preprocessing_for(
    dataset_dir: str | os.PathLike | None,
    spatial_dims: int = 2,
    in_channels: int = 1,
    spatial_size: Sequence[int] | None = None,
    intensity: str = "auto",
    ct_window: str | Sequence[float] = "full",
    with_mask: bool = False,
    min_size: int = 4,
    binary_mask: bool = True,
) -> Compose:
    """:func:`preprocessing` for the source that ``dataset_dir`` names (used by the bundle configs)."""
    kind = source_kind(dataset_dir)
    # one image tells pictures from volumes; the dataset's own listing reports stray files
    items = [] if kind in ("phantom", "medmnist") else [{"image": first_image(dataset_dir)}]
    return preprocessing(
        kind, items, spatial_dims, in_channels, spatial_size, intensity, ct_window, with_mask, min_size, binary_mask
    )


def make_dataset(
    dataset_dir: str | os.PathLike | None = None,
    split: str = "train",
    spatial_dims: int = 2,
    in_channels: int = 1,
    spatial_size: Sequence[int] | None = None,
    intensity: str = "auto",
    ct_window: str | Sequence[float] = "full",
    with_mask: bool = False,
    cache: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    min_size: int = 4,
    skip_unreadable: bool = False,
    max_items: int | None = None,
    binary_mask: bool = True,
) -> Dataset:
    """A ready MONAI dataset of ``split`` from ``dataset_dir`` (see :func:`list_items`).

    Items come out as ``{"image": MetaTensor (C, *S) in [0, 1], "label"?, "mask"?, "source", ...}``.
    With ``cache`` (the default) every item is loaded and checked up front, so a bad file fails
    here, with its name, rather than mid-epoch. The dataset's ``info`` attribute holds the
    :class:`DatasetInfo`.

    With ``skip_unreadable``, non-image files and (when cached) files that are refused on loading
    (corrupt, truncated, wrong shape, NaN, ...) are skipped instead: one warning gives the count,
    and the cached dataset's ``skipped`` attribute lists ``(item, reason)``.
    """
    items, info = list_items(dataset_dir, split, spatial_dims, seed, skip_unreadable, max_items)
    if with_mask and not info["has_masks"]:
        raise InputError(
            f"{dataset_dir}: masks were requested but not every image has one (BUSI layout: '<name>_mask.png' "
            "beside '<name>.png'; datalists: a 'label' path per entry)."
        )
    xform = preprocessing(
        info["kind"], items, spatial_dims, in_channels, spatial_size, intensity, ct_window, with_mask, min_size,
        binary_mask,
    )
    if cache:
        ds = CheckedCacheDataset(items, xform, skip_bad=skip_unreadable, num_workers=num_workers or None)
    else:
        ds = Dataset(items, xform)
    ds.info = info
    return ds
