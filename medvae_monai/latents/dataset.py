"""A torch ``Dataset`` over a latent store, for training heads on latents instead of images."""

from __future__ import annotations

import os

from torch.utils.data import Dataset

from ..errors import InputError
from .reader import LatentStore

__all__ = ["LatentDataset"]


class LatentDataset(Dataset):
    """Items of a :class:`~medvae_monai.latents.LatentStore` as training samples.

    Every latent is read (and checksum-verified) once, at construction, and kept in memory:
    a 2D MedNIST latent is 1 KiB, so even 100k items fit easily, and an epoch then costs no I/O.

    Args:
        store: a store or its folder.
        split: keep only items of this split (``train``, ``val`` or ``test``, as recorded at
            encoding); ``None`` keeps all.
        with_mask: also return each item's mask at image resolution (segmentation heads),
            loaded from the store's mask reference on every access.

    From an entropy-coded store (``--codec entropy``) the latent is the decoded, quantised one
    (integers times the rate point's inverse gain, :meth:`LatentStore.latent`), so heads train
    straight from a coded store.

    Raises:
        InputError: the store is incomplete (shards missing their manifest), or holds no item of ``split``.

    Items:
        ``{"latent": (latent_channels, *L) float32, "label": int (when the source has labels),
        "mask": (1, *S) (with ``with_mask``), "source": str, "index": int}``.
    """

    def __init__(
        self, store: LatentStore | str | os.PathLike, split: str | None = None, with_mask: bool = False
    ) -> None:
        self.store = (store if isinstance(store, LatentStore) else LatentStore(store)).require_complete()
        self.indices = [i for i, r in enumerate(self.store.records) if split is None or r.get("split") == split]
        if not self.indices:
            raise InputError(
                f"{self.store.path}: no items of split {split!r} (the store holds {len(self.store)} items encoded "
                f"from split {self.store.meta['split']!r}); encode with --split all or the split you need."
            )
        self.with_mask = with_mask
        self.latents = [self.store.latent(i) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        index = self.indices[i]
        rec = self.store.records[index]
        out: dict = {"latent": self.latents[i], "source": rec["source"], "index": index}
        if "label" in rec:
            out["label"] = rec["label"]
        if self.with_mask:
            out["mask"] = self.store.mask(index).as_tensor()
        return out
