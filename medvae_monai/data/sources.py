"""The standard image sources: phantoms, class-folder trees, MedMNIST ``.npz``, MSD datalists and
single image files (the CSV datalist is in :mod:`~medvae_monai.data.csv_datalist`).

Each is an :class:`~medvae_monai.data.ImageSource` subclass; ``ImageSource(dataset_dir)`` picks the
one that claims ``dataset_dir``. Every lister returns plain dicts (``{"image": path-or-tensor,
"source": str, "label"?: int, "mask"?: path, ...}``) and refuses unusable input with an
:class:`~medvae_monai.errors.InputError` that names the path.
"""

from __future__ import annotations

import difflib
import json
import logging
import warnings
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from ..errors import InputError
from .phantoms import PHANTOM_CLASSES, phantom_items
from .source import IMAGE_SUFFIXES, ImageSource, file_suffix
from .splits import TEST_FRACTION, VAL_FRACTION, split_items

__all__ = ["ClassFolderSource", "ImageFileSource", "MSDDatalistSource", "MedMNISTSource", "PhantomSource"]

logger = logging.getLogger("medvae_monai")

MASK_SUFFIX = "_mask"
# embedded default: enough phantoms for a meaningful first training run in about a minute
PHANTOM_COUNT = {2: 720, 3: 120}
PHANTOM_SIZE = {2: 64, 3: 32}


def _stem(path: Path) -> str:
    return path.name[: -len(file_suffix(path))]


class PhantomSource(ImageSource):
    """The embedded CT phantoms (:mod:`~medvae_monai.data.phantoms`), used when there is no ``dataset_dir``."""

    kind = "phantom"
    priority = 100
    from_files = False

    @classmethod
    def claims(cls, path):
        return path is None

    @property
    def intensity_mode(self) -> str:
        return "ct" if self.intensity == "auto" else self.intensity

    def _list(self):
        n, size = PHANTOM_COUNT[self.spatial_dims], PHANTOM_SIZE[self.spatial_dims]
        logger.warning(
            "No dataset_dir given: using the embedded phantom dataset (%d %dD CT phantoms of %d voxels per side, "
            "seed %d). Pass --dataset_dir to use real images.",
            n, self.spatial_dims, size, self.seed,
        )
        return phantom_items(n, size, self.spatial_dims, self.seed), list(PHANTOM_CLASSES)


class ClassFolderSource(ImageSource):
    """A MedNIST-layout tree ``root/<class>/<image>`` (or a flat folder of images), with masks.

    A file ``<stem>_mask.<ext>`` beside an image is its mask (the BUSI layout). Classes are the
    sub-folder names in sorted order, so label indices are stable. With ``class_names`` (a trained
    model's classes), every sub-folder must be one of them (a missing one is fine, e.g. in a small
    test set), and labels index that list. Items hold ``image``, ``label``, ``class_name``,
    ``source`` (the path relative to the root) and, where present, ``mask``.
    """

    kind = "folder"
    priority = 0  # any folder that no other source claims
    resize_pictures = True

    @classmethod
    def claims(cls, path):
        return path is not None and path.is_dir()

    def _list(self):
        root, class_names = self.dataset_dir, self.expected_class_names
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        flat = not classes  # a plain folder of images: no labels
        if flat and class_names:
            raise InputError(
                f"{root}: no class sub-folders, so the images have no labels, but classes {list(class_names)} are "
                "expected. Put each class's images in a sub-folder named after it."
            )
        if flat:
            classes = [""]
        if class_names:
            unknown = [c for c in classes if c not in class_names]
            if unknown:
                close = difflib.get_close_matches(unknown[0], list(class_names), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise InputError(
                    f"{root / unknown[0]}: unknown class {unknown[0]!r}{hint}; the model's classes are "
                    f"{list(class_names)}. Rename or remove the folder, or retrain with this class."
                )
        items: list[dict] = []
        skipped: list[str] = []
        for i, name in enumerate(classes):
            label = list(class_names).index(name) if class_names else i
            files = sorted(f for f in (root / name).iterdir() if f.is_file() and not f.name.startswith("."))
            if flat:
                files = [f for f in files if f.name not in ("dataset.json", "SHA256SUMS") and not f.name.endswith(".md")]
            stems = {_stem(f): f for f in files if file_suffix(f) in IMAGE_SUFFIXES}
            for f in files:
                if file_suffix(f) not in IMAGE_SUFFIXES:
                    if self.skip_unreadable:
                        skipped.append(str(f))
                        continue
                    raise InputError(
                        f"{f}: not an image file (supported: {', '.join(IMAGE_SUFFIXES)}). Remove it from the class "
                        "folder, or pass skip_unreadable=True to skip such files with a warning."
                    )
                stem = _stem(f)
                if stem.endswith(MASK_SUFFIX) and stem[: -len(MASK_SUFFIX)] in stems:
                    continue  # a mask, attached to its image below
                item = {"image": str(f), "source": f.name} if flat else {
                    "image": str(f), "label": label, "class_name": name, "source": f"{name}/{f.name}"}
                mask = stems.get(stem + MASK_SUFFIX)
                if mask is not None:
                    item["mask"] = str(mask)
                items.append(item)
        if skipped:
            warnings.warn(f"{root}: skipped {len(skipped)} non-image file(s), e.g. {skipped[0]}", stacklevel=2)
        if not items:
            where = "the folder" if flat else f"the class folders {classes}"
            raise InputError(
                f"{root}: {where} hold(s) no images ({', '.join(IMAGE_SUFFIXES)}). Point dataset_dir at a folder of "
                "images, or at a MedNIST-layout folder with one sub-folder of images per class."
            )
        empty = [c for c in classes if not flat and not any(it["class_name"] == c for it in items)]
        if empty and not class_names:  # the folder would be a class no model ever sees (AUROC NaN)
            raise InputError(
                f"{root / empty[0]}: class folder {empty[0]!r} holds no images, so it would be a class without "
                "examples; add its images or remove the folder."
            )
        return items, [] if flat else list(class_names or classes)


class MedMNISTSource(ImageSource):
    """A MedMNIST ``.npz`` with its official ``train``/``val``/``test`` splits.

    Images become ``(1, H, W)`` (or ``(3, H, W)``) uint8 MetaTensors; ``label`` is the first label
    column (binary and multi-class tasks), ``labels`` the full row (multi-label tasks).
    """

    kind = "medmnist"
    priority = 30
    from_files = False
    resize_pictures = True
    is_picture = True
    has_masks = False
    PARTS = ("train", "val", "test")

    @classmethod
    def claims(cls, path):
        return path is not None and path.is_file() and path.suffix == ".npz"

    @property
    def intensity_mode(self) -> str:
        return "uint8" if self.intensity == "auto" else self.intensity

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.root = None
        self._parts: dict[str, list[dict]] = {}

    @cached_property
    def _arrays(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self.dataset_dir, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except Exception as e:  # zip errors, truncation, pickled content
            raise InputError(
                f"{self.dataset_dir}: cannot be read as a MedMNIST .npz ({type(e).__name__}: {e}). Re-download it."
            ) from e
        for k in (f"{s}_{a}" for s in self.PARTS for a in ("images", "labels")):
            if k not in arrays:
                raise InputError(f"{self.dataset_dir}: missing array '{k}' (has {sorted(arrays)}); is this a MedMNIST file?")
        return arrays

    def _part(self, split: str) -> list[dict]:
        if split not in self._parts:
            images, labels = self._arrays[f"{split}_images"], self._arrays[f"{split}_labels"]
            labels = labels.reshape(len(labels), -1)
            if len(images) != len(labels):
                raise InputError(f"{self.dataset_dir}: {len(images)} images but {len(labels)} labels in split {split!r}.")
            items = []
            for i, (img, lab) in enumerate(zip(images, labels)):
                t = torch.from_numpy(np.ascontiguousarray(img))
                t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)  # RGB MedMNIST sets are (H, W, 3)
                src = f"{self.dataset_dir.stem}/{split}/{i:05d}"
                items.append({"image": MetaTensor(t, meta={"filename_or_obj": src}), "label": int(lab[0]),
                              "labels": lab.astype(np.int64), "source": src})
            self._parts[split] = items
        return self._parts[split]

    def _split(self, split):
        parts = {"trainval": ("train", "val"), "all": self.PARTS}.get(split, (split,))
        return [it for p in parts for it in self._part(p)]

    def _list(self):
        return self._split("all"), self.class_names

    @property
    def class_names(self) -> list[str]:  # from the label arrays alone, without building every item
        labels = np.concatenate([self._arrays[f"{s}_labels"].reshape(-1) for s in self.PARTS])
        return [str(c) for c in range(int(labels.max()) + 1 if labels.size else 0)]


def _check_file(listing: Path, where: str, what: str, path: Path) -> None:
    if not path.exists():
        raise InputError(f"{listing}: {where}: {what} {path} does not exist; fix the path in the datalist.")


class MSDDatalistSource(ImageSource):
    """An MSD-style datalist (``dataset.json``, or any JSON with its structure).

    Relative paths resolve against the JSON's folder. Each entry needs ``image``; ``label`` (a
    mask path, MSD's name) is kept as ``mask`` so that it is not confused with a class label; an
    integer ``label`` is a class label.

    Splits (MONAI's ``load_decathlon_datalist`` sections): ``train`` is cut from ``training``.
    A non-empty ``validation`` section is ``val``, and a ``test`` section whose entries carry what
    the ``training`` entries carry (a mask or class ``label`` wherever those have one) is ``test``;
    a split without its own section is cut from ``training`` by the rule of
    :mod:`~medvae_monai.data.splits`. MSD's own ``test`` lists unlabelled images: it is not a split
    (a warning says so), and ``--split test`` is cut from ``training`` as before.
    """

    kind = "datalist"
    priority = 20
    section = "training"
    own_sections = {"val": "validation", "test": "test"}

    @classmethod
    def claims(cls, path):
        return path is not None and ((path.is_file() and path.suffix == ".json") or (path / "dataset.json").is_file())

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.listing = self.dataset_dir / "dataset.json" if self.dataset_dir.is_dir() else self.dataset_dir
        self.root = self.listing.parent

    def _list(self):
        training, own_splits = self._sections
        return training + [it for part in own_splits.values() for it in part], []

    @cached_property
    def _sections(self) -> tuple[list[dict], dict[str, list[dict]]]:
        """The 'training' entries, and the sections that are splits (``{"val": [...], "test": [...]}``)."""
        p = self.listing
        try:
            content = json.loads(p.read_text())
        except (OSError, ValueError) as e:  # ValueError: JSONDecodeError and UnicodeDecodeError
            raise InputError(f"{p}: cannot be read as a datalist JSON ({e}).") from None
        if not isinstance(content, dict) or self.section not in content:
            keys = sorted(content) if isinstance(content, dict) else type(content).__name__
            raise InputError(f"{p}: no '{self.section}' list (found keys {keys}). An MSD datalist has "
                             f'{{"{self.section}": [{{"image": ..., "label": ...}}, ...]}}.')
        training = self._entries(content, self.section)
        labelled = {k for k in ("mask", "label") if all(k in it for it in training)}
        own_splits = {}
        for split, section in self.own_sections.items():
            if not content.get(section):
                continue
            entries = self._entries(content, section)
            if labelled <= set.intersection(*(set(it) for it in entries)):
                own_splits[split] = entries
            else:
                logger.warning("%s: its '%s' section (%d images) lacks the %s of 'training' (unlabelled, as MSD's "
                               "test images are), so it is not a split: --split %s is cut from 'training'.",
                               p, section, len(entries), " and ".join(sorted(labelled)), split)
        return training, own_splits

    def _entries(self, content: dict, section: str) -> list[dict]:
        p, entries = self.listing, content[section]
        if not isinstance(entries, list) or not entries:
            raise InputError(f"{p}: '{section}' must be a non-empty list of {{'image': path}} entries.")
        items = []
        for i, e in enumerate(entries):
            if isinstance(e, str):
                e = {"image": e}
            if not isinstance(e, dict) or "image" not in e:
                raise InputError(f"{p}: entry {i} of '{section}' has no 'image' key (got {e!r}); each entry needs 'image'.")
            types = {"image": str, "label": (str, int, float)}
            bad = [k for k, t in types.items() if k in e and not isinstance(e[k], t)]
            if bad:
                raise InputError(
                    f"{p}: entry {i} of '{section}': '{bad[0]}' must be a file path"
                    f"{' or an integer class' if bad[0] == 'label' else ''}, got {e[bad[0]]!r}."
                )
            item: dict = {k: v for k, v in e.items() if k not in ("image", "label")}
            image = self.root / e["image"]
            _check_file(p, f"entry {i} of '{section}'", "image", image)
            item["image"] = str(image)
            item["source"] = Path(e["image"]).as_posix()  # Path() already drops a leading "./"
            if "label" in e:
                if isinstance(e["label"], (int, float)):
                    item["label"] = int(e["label"])
                else:
                    mask = self.root / e["label"]
                    _check_file(p, f"entry {i} of '{section}'", "label", mask)
                    item["mask"] = str(mask)
            items.append(item)
        return items

    def _split(self, split):
        training, own = self._sections
        if not own:
            return super()._split(split)
        if split == "all":
            return sorted(self.all_items, key=lambda it: it["source"])
        cut = {"val_fraction": 0.0 if "val" in own else VAL_FRACTION, "test_fraction": 0.0 if "test" in own else TEST_FRACTION}
        parts = ("train", "val") if split == "trainval" else (split,)
        out = [it for part in parts for it in (own[part] if part in own else split_items(training, part, **cut))]
        return sorted(out, key=lambda it: it["source"])


class ImageFileSource(ImageSource):
    """A single image file: a dataset of one item, which every split holds (so that any config runs on it)."""

    kind = "file"
    priority = 40
    resize_pictures = True

    @classmethod
    def claims(cls, path):
        return path is not None and path.is_file() and file_suffix(path) in IMAGE_SUFFIXES

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.root = self.dataset_dir.parent

    def _list(self):
        return [{"image": str(self.dataset_dir), "source": self.dataset_dir.name}], []

    def _split(self, split):
        return self.all_items
