"""One description of a ``dataset_dir``, worked out once: :class:`ImageSource`.

``ImageSource(dataset_dir, ...)`` picks the source class that claims ``dataset_dir`` (a class-folder
tree, a MedMNIST ``.npz``, an MSD datalist, a CSV datalist, a single image file, or ``None`` for the
embedded phantoms) and returns an instance of it. The instance lists the items once and answers
everything a config needs: its ``kind``, ``class_names``, whether it has masks, picture or volume,
the output suffix, the items of each split, and its preprocessing chain.

Adding a source is one subclass: it sets ``kind`` and ``priority``, implements :meth:`ImageSource.claims`
and :meth:`ImageSource._list`, and registers itself by being defined (``__init_subclass__``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from monai.transforms import Compose

from ..errors import InputError
from .preprocessing import INTENSITY_MODES, build_preprocessing
from .splits import SPLITS, split_items

__all__ = ["ImageSource", "PICTURE_SUFFIXES", "VOLUME_SUFFIXES", "IMAGE_SUFFIXES", "file_suffix", "is_picture_file"]

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".dcm")
IMAGE_SUFFIXES = PICTURE_SUFFIXES + VOLUME_SUFFIXES


def file_suffix(path: str | os.PathLike) -> str:
    """Lower-case suffix of ``path``, with ``.nii.gz`` as one suffix."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def is_picture_file(path: str | os.PathLike) -> bool:
    """The picture-or-volume rule, written once: PNG/JPEG/BMP/TIFF files are 8-bit pictures; every
    other image file (NIfTI, MHA, NRRD, DICOM) holds physical units and is treated as a volume."""
    return file_suffix(path) in PICTURE_SUFFIXES


def _no_dataset(dataset_dir) -> bool:
    return dataset_dir is None or str(dataset_dir) in ("", "none", "None", "null")


class ImageSource:
    """The images of ``dataset_dir`` and everything derived from them, worked out once.

    ``ImageSource(dataset_dir, ...)`` returns the subclass instance that claims ``dataset_dir``
    (highest ``priority`` first); calling a subclass directly skips the choice.

    Args:
        dataset_dir: a class-folder tree (MedNIST layout, BUSI masks), a MedMNIST ``.npz``, an MSD
            datalist (``.json`` or a folder with ``dataset.json``), a CSV datalist (``.csv`` or a
            folder with ``labels.csv``), a single image file, or ``None`` for the embedded phantoms.
        spatial_dims: 2 or 3.
        in_channels: channels the model takes; other counts are refused when an image loads.
        spatial_size: resize pictures / pad-or-crop volumes to this size, so batches stack.
        intensity: ``auto`` (the bit depth for pictures, uint8 for MedMNIST, the CT window for phantoms, 0.5–99.5
            percentiles for volumes), ``uint8``, ``ct``, ``percentile`` or ``none``.
        ct_window: CT window preset or ``(level, width)`` in HU for ``intensity="ct"``.
        max_items: keep an evenly spaced subset of at most this many items per split (quick runs).
        skip_unreadable: skip (with a warning and a count) files that are not images.
        class_names: the classes a model was trained on, in label order; the source's labels are
            checked against them and index them.
        seed: phantom seed.

    Attributes:
        kind: ``folder``, ``medmnist``, ``datalist``, ``csv``, ``file`` or ``phantom``.
        root: the folder that each item's ``source`` path is relative to (``None`` when the items
            are not files).

    Raises:
        InputError: ``dataset_dir`` does not exist, is of no supported kind, or holds no images.
    """

    kind: ClassVar[str] = ""
    priority: ClassVar[int] = 0  # higher claims first; the class-folder tree is the fallback
    from_files: ClassVar[bool] = True  # items are file paths (False: in-memory tensors)
    resize_pictures: ClassVar[bool] = False  # 2D spatial_size: resize (True) or pad/crop (False)
    _registry: ClassVar[list[type[ImageSource]]] = []

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            ImageSource._registry.append(cls)

    def __new__(cls, dataset_dir=None, *args, **kwargs):
        if cls is ImageSource:
            cls = cls.class_for(dataset_dir)
        return super().__new__(cls)

    @classmethod
    def class_for(cls, dataset_dir: str | os.PathLike | None) -> type[ImageSource]:
        """The source class that claims ``dataset_dir``."""
        path = None if _no_dataset(dataset_dir) else Path(dataset_dir)
        if path is not None and not path.exists():
            raise InputError(
                f"dataset_dir {str(path)!r} does not exist; give an existing folder, image file, .npz, or datalist "
                ".json/.csv."
            )
        if path is not None and (path / "store.json").is_file():  # latents.format.STORE_FILE (not imported: a cycle)
            raise InputError(
                f"dataset_dir {str(path)!r} is a latent store (it holds store.json), not images: decode it with "
                "decode.yaml, or read its latents with medvae_monai.latents.LatentDataset."
            )
        for source_cls in sorted(ImageSource._registry, key=lambda c: -c.priority):
            if source_cls.claims(path):
                return source_cls
        raise InputError(
            f"dataset_dir {str(path)!r} is a file of no supported kind: give a folder, an image file "
            f"({', '.join(IMAGE_SUFFIXES)}), a MedMNIST .npz, or a datalist .json/.csv."
        )

    @classmethod
    def claims(cls, path: Path | None) -> bool:
        """Whether this class reads ``path`` (``None``: no ``dataset_dir``)."""
        raise NotImplementedError

    def __init__(
        self,
        dataset_dir: str | os.PathLike | None = None,
        spatial_dims: int = 2,
        in_channels: int = 1,
        spatial_size: Sequence[int] | None = None,
        intensity: str = "auto",
        ct_window: str | Sequence[float] = "full",
        max_items: int | None = None,
        skip_unreadable: bool = False,
        class_names: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        if intensity not in INTENSITY_MODES:
            raise InputError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}.")
        self.dataset_dir = None if _no_dataset(dataset_dir) else Path(dataset_dir)
        if spatial_dims not in (2, 3):
            raise InputError(f"spatial_dims {spatial_dims!r}: give 2 (pictures) or 3 (volumes).")
        if spatial_size is not None and (
            isinstance(spatial_size, (str, int)) or len(spatial_size) != spatial_dims or min(spatial_size) < 1
        ):
            raise InputError(
                f"spatial_size {spatial_size!r}: give {spatial_dims} positive sizes for spatial_dims {spatial_dims} "
                f"(e.g. --spatial_size \"{[64] * spatial_dims}\"), or null to keep each image's size."
            )
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.spatial_size = None if spatial_size is None else [int(s) for s in spatial_size]
        self.intensity = intensity
        self.ct_window = ct_window if isinstance(ct_window, str) else tuple(float(v) for v in ct_window)
        self.max_items = max_items
        self.skip_unreadable = skip_unreadable
        self.expected_class_names = list(class_names) if class_names else None
        self.seed = seed
        self.root = self.dataset_dir

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.dataset_dir)!r}, spatial_dims={self.spatial_dims})"

    # -- listing: subclasses implement _list ---------------------------------------------------
    def _list(self) -> tuple[list[dict], list[str]]:
        """Every item of the source and its class names (label order); called once."""
        raise NotImplementedError

    @cached_property
    def _listing(self) -> tuple[list[dict], list[str]]:
        items, names = self._list()
        if not items:
            raise InputError(f"{self.dataset_dir}: holds no images; point dataset_dir at images or a datalist.")
        return items, names

    @property
    def all_items(self) -> list[dict]:
        """Every item, as listed (before any split)."""
        return self._listing[0]

    @property
    def class_names(self) -> list[str]:
        """Class names in label order (empty when the items have no class labels)."""
        return list(self._listing[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @cached_property
    def has_masks(self) -> bool:
        """Whether every item has a ``mask``."""
        return all("mask" in it for it in self.all_items)

    @cached_property
    def is_picture(self) -> bool:
        """Pictures (8-bit PNG/JPEG-like files, MedMNIST) rather than volumes in physical units."""
        first = self.all_items[0]["image"]
        return isinstance(first, (str, os.PathLike)) and is_picture_file(first)

    @property
    def output_suffix(self) -> str:
        """File type for images written from this source: ``.png`` for pictures, ``.nii.gz`` otherwise."""
        return ".png" if self.is_picture else ".nii.gz"

    @property
    def intensity_mode(self) -> str:
        """The intensity mode after resolving ``auto`` (see the class docstring)."""
        if self.intensity != "auto":
            return self.intensity
        return "bit_depth" if self.is_picture else "percentile"

    # -- splits --------------------------------------------------------------------------------
    def _split(self, split: str) -> list[dict]:
        """The items of ``split`` (deterministic; see :mod:`medvae_monai.data.splits`)."""
        return split_items(self.all_items, split)

    def items(self, split: str = "all") -> list[dict]:
        """The items of ``split`` (``train``, ``val``, ``test``, ``trainval`` or ``all``).

        Returns:
            fresh dicts ``{"image": path or MetaTensor, "source": str, "label"?: int, "mask"?: path,
            "patient_id"?: str, ...}``, an evenly spaced subset of at most ``max_items``.

        Raises:
            InputError: unknown split, or the split is empty.
        """
        if split not in SPLITS:
            raise InputError(f"Unknown split {split!r}; use one of {SPLITS}.")
        items = self._split(split)
        if not items:
            raise InputError(
                f"{self.dataset_dir or 'phantoms'}: split {split!r} is empty; use more images or another split."
            )
        if self.max_items is not None and 0 < self.max_items < len(items):
            step = len(items) / self.max_items
            items = [items[int(i * step)] for i in range(self.max_items)]
        return [dict(it) for it in items]

    @cached_property
    def _split_of(self) -> dict[str, str]:
        return {it["source"]: s for s in ("train", "val", "test") for it in self._split(s)}

    def split_of(self, item: dict) -> str | None:
        """The split (``train``, ``val`` or ``test``) that ``item`` belongs to."""
        return self._split_of.get(item["source"])

    # -- preprocessing ---------------------------------------------------------------------------
    def preprocessing(
        self,
        with_mask: bool = False,
        min_size: int = 4,
        binary_mask: bool = True,
        record_intensity: bool = False,
    ) -> Compose:
        """The deterministic preprocessing chain for this source's items: ``image`` as ``(C, *S)``
        float32 in ``[0, 1]`` (see :func:`~medvae_monai.data.preprocessing.build_preprocessing`).

        Args:
            with_mask: also load and resample ``mask`` (nearest neighbour).
            min_size: smallest accepted input size (the VAE's downsampling factor).
            binary_mask: map every mask label above 0 to 1; False keeps label values.
            record_intensity: store under ``intensity`` the map the chain applied to each image
                (:class:`~medvae_monai.data.preprocessing.RecordIntensityd`), so a decoder can restore
                the original units.
        """
        if with_mask and not self.has_masks:
            raise InputError(
                f"{self.dataset_dir}: masks were requested but not every image has one (BUSI layout: "
                "'<name>_mask.png' beside '<name>.png'; MSD datalists: a 'label' path per entry; CSV datalists: a "
                "'mask' column)."
            )
        return build_preprocessing(
            load_files=self.from_files,
            intensity=self.intensity_mode,
            ct_window=self.ct_window,
            spatial_dims=self.spatial_dims,
            in_channels=self.in_channels,
            spatial_size=self.spatial_size,
            resize=self.resize_pictures and self.spatial_dims == 2,
            with_mask=with_mask,
            min_size=min_size,
            binary_mask=binary_mask,
            record_intensity=record_intensity,
        )
