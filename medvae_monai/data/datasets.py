"""MONAI datasets over an :class:`~medvae_monai.data.ImageSource`'s items, loaded and checked up front.

``make_dataset(dataset_dir, split)`` is the one-call form: it builds the source, takes the split's
items and wraps them with the source's preprocessing in a :class:`CheckedCacheDataset`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from multiprocessing.pool import ThreadPool

import torch
from monai.data import Dataset
from monai.transforms import Compose, RandomizableTrait, Transform

from ..errors import InputError, describe_source, find_input_error
from .source import ImageSource

__all__ = ["CheckedCacheDataset", "make_dataset"]

logger = logging.getLogger("medvae_monai")


class CheckedCacheDataset(Dataset):
    """A dataset whose items are loaded, checked and cached up front, like MONAI's ``CacheDataset``:
    the transforms up to the first random one run once per item, at construction, and the rest on
    every access. A file that is refused raises the package's :class:`~medvae_monai.errors.InputError`
    alone, naming the file, instead of MONAI's wrapped ``RuntimeError("applying transform ...")`` chain.

    The cache is filled here rather than by ``CacheDataset``, because dropping refused items from
    ``CacheDataset`` would mean rewriting its private cache.

    Args:
        data: the items.
        transform: a ``Compose`` (or a sequence of transforms).
        skip_bad: opt in to dropping items whose file is refused (corrupt, wrong shape, NaN, ...)
            instead of failing; each is logged, one warning at the end gives the count, and
            ``skipped`` lists ``(item, reason)``.
        num_workers: threads that load the items (``None``: one per CPU).

    Raises:
        InputError: an item is refused (without ``skip_bad``), or every item is.
    """

    def __init__(self, data: Sequence[dict], transform, skip_bad: bool = False, num_workers: int | None = 1) -> None:
        chain = transform if isinstance(transform, Compose) else Compose(transform)
        chain = chain.flatten()  # a nested Compose is Randomizable: it would end the cached prefix at once
        self.chain = chain
        self.first_random = chain.get_index_of_first(
            lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform)
        )
        self.skip_bad = skip_bad
        self.skipped: list[tuple[dict, str]] = []  # (item, reason) of every dropped item
        workers = num_workers if num_workers is not None else os.cpu_count() or 1
        if workers > 1:
            with ThreadPool(workers) as pool:
                loaded = pool.map(self._load, data)
        else:
            loaded = [self._load(item) for item in data]
        good = [d for d in loaded if not isinstance(d, InputError)]
        self._report_skipped(data, loaded, len(good))
        tail = None if self.first_random is None else Compose(chain.transforms[self.first_random :])
        super().__init__(good, tail)

    def _load(self, item: dict) -> dict | InputError:
        try:
            return self.chain(dict(item), end=self.first_random, threading=True)
        except Exception as e:
            err = find_input_error(e)
            if err is None:
                raise
            if not self.skip_bad:
                raise err from None
            return err  # marks the item as refused

    def _report_skipped(self, data: Sequence[dict], loaded: list, n_good: int) -> None:
        for item, d in zip(data, loaded):
            if isinstance(d, InputError):
                logger.warning("skipped: %s", d)
                self.skipped.append((item, str(d)))
        if not self.skipped:
            return
        if n_good == 0:
            raise InputError(f"all {len(self.skipped)} item(s) were refused; the first: {self.skipped[0][1]}")
        warnings.warn(
            f"skipped {len(self.skipped)} of {len(data)} item(s) that could not be used (see the log, or "
            f"the dataset's `skipped` list); the first: {self.skipped[0][1][:300]}",
            stacklevel=3,
        )

    def batch_size_for(self, batch_size: int, training: bool = False) -> int:
        """The batch size that stacks: ``batch_size``, or 1 when the items differ in shape.

        Images of several sizes (a folder of studies, MSD volumes) cannot be stacked into one
        batch; the DataLoader would fail deep in its collate function. For inference and
        evaluation each item then goes alone, keeping its own size, and a line says how to batch
        them; training refuses, because one-at-a-time training silently changes the optimisation.

        Raises:
            InputError: ``training`` with items of several shapes and ``batch_size`` > 1, naming two
                of the files and the ``--spatial_size`` that pads or crops (resizes, for pictures)
                every item to the largest extent along each axis.
        """
        shapes: dict[tuple, str] = {}
        for d in self.data:
            img = d.get("image") if isinstance(d, dict) else None
            if isinstance(img, torch.Tensor):
                shapes.setdefault(tuple(img.shape[1:]), describe_source(img))
        if len(shapes) < 2 or int(batch_size) <= 1:
            return int(batch_size)
        (s1, f1), (s2, f2) = list(shapes.items())[:2]
        largest = [max(s[i] for s in shapes) for i in range(len(s1))]
        found = f"the images have {len(shapes)} different shapes, e.g. {list(s1)} ({f1}) and {list(s2)} ({f2})"
        if training:
            raise InputError(
                f"{found}: batches of {batch_size} cannot be stacked. Give --spatial_size \"{largest}\" "
                "(pads or crops volumes, resizes pictures) or --batch_size 1."
            )
        logger.warning("%s: processing them one at a time, each at its own size (--spatial_size \"%s\" batches them).",
                       found, largest)
        return 1


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
    """A ready MONAI dataset of ``split`` from ``dataset_dir`` (arguments as for
    :class:`~medvae_monai.data.ImageSource` and its ``preprocessing``).

    Items come out as ``{"image": MetaTensor (C, *S) in [0, 1], "label"?, "mask"?, "source", ...}``.
    With ``cache`` (the default) every item is loaded and checked up front, so a bad file fails
    here, with its name, rather than mid-epoch. The dataset's ``source`` attribute is the
    :class:`~medvae_monai.data.ImageSource`.

    With ``skip_unreadable``, non-image files and (when cached) files that are refused on loading
    (corrupt, truncated, wrong shape, NaN, ...) are skipped instead: one warning gives the count,
    and the cached dataset's ``skipped`` attribute lists ``(item, reason)``.
    """
    source = ImageSource(dataset_dir, spatial_dims, in_channels, spatial_size, intensity, ct_window, max_items,
                         skip_unreadable, seed=seed)
    items = source.items(split)
    xform = source.preprocessing(with_mask=with_mask, min_size=min_size, binary_mask=binary_mask)
    if cache:
        ds = CheckedCacheDataset(items, xform, skip_bad=skip_unreadable, num_workers=num_workers or None)
    else:
        ds = Dataset(items, xform)
    ds.source = source
    return ds
