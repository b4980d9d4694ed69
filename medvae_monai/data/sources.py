"""List the items of a dataset source: a class-folder tree, a MedMNIST ``.npz`` or an MSD datalist.

Every lister returns plain dicts (``{"image": path-or-tensor, "label"?: int, "mask"?: path, ...}``)
and refuses unusable input with an :class:`~medvae_monai.errors.InputError` that names the path.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from ..errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "class_folder_items",
    "datalist_items",
    "first_image",
    "medmnist_items",
    "reconstruction_suffix",
    "source_kind",
]

logger = logging.getLogger(__name__)

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".dcm")
IMAGE_SUFFIXES = PICTURE_SUFFIXES + VOLUME_SUFFIXES
MASK_SUFFIX = "_mask"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _stem(path: Path) -> str:
    return path.name[: -len(_suffix(path))]


def source_kind(dataset_dir: str | os.PathLike | None) -> str:
    """Classify a ``dataset_dir``: ``phantom``, ``medmnist``, ``datalist`` or ``folder``."""
    if dataset_dir in (None, "", "none", "None"):
        return "phantom"
    p = Path(dataset_dir)
    if not p.exists():
        raise InputError(f"dataset_dir {str(p)!r} does not exist; give an existing folder, .npz or datalist .json.")
    if p.is_file():
        if p.suffix == ".npz":
            return "medmnist"
        if p.suffix == ".json":
            return "datalist"
        raise InputError(f"dataset_dir {str(p)!r} is a file but not a MedMNIST .npz or a datalist .json.")
    if (p / "dataset.json").is_file():
        return "datalist"
    return "folder"


def class_folder_items(
    root: str | os.PathLike, skip_unreadable: bool = False, class_names: Sequence[str] | None = None
) -> tuple[list[dict], list[str]]:
    """Items of a MedNIST-layout tree ``root/<class>/<image>`` (or a flat folder of images), with masks.

    A file ``<stem>_mask.<ext>`` beside an image is its mask (the BUSI layout). Classes are the
    sub-folder names in sorted order, so label indices are stable.

    Args:
        root: the folder holding one sub-folder per class.
        skip_unreadable: skip (and count, with a warning) files that are not images instead of
            raising.
        class_names: the classes a model was trained on, in label order. Every sub-folder must
            be one of them (a missing one is fine, e.g. in a small test set), and labels index this
            list, so they match the model's even when the folders differ.

    Returns:
        ``(items, class_names)``; items hold ``image``, ``label``, ``class_name``, ``source``
        (the path relative to ``root``) and, where present, ``mask``.
    """
    root = Path(root)
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
        stems = {_stem(f): f for f in files if _suffix(f) in IMAGE_SUFFIXES}
        for f in files:
            if _suffix(f) not in IMAGE_SUFFIXES:
                if skip_unreadable:
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
    return items, [] if flat else list(class_names or classes)


def medmnist_items(npz_path: str | os.PathLike, split: str) -> tuple[list[dict], list[str]]:
    """Items of one official split (``train``, ``val`` or ``test``) of a MedMNIST ``.npz``.

    Images become ``(1, H, W)`` uint8 MetaTensors; ``label`` is the first label column
    (MedMNIST binary and multi-class tasks), ``labels`` the full row (multi-label tasks).
    """
    path = Path(npz_path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:  # zip errors, truncation, pickled content
        raise InputError(f"{path}: cannot be read as a MedMNIST .npz ({type(e).__name__}: {e}). Re-download it.") from e
    wanted = {"train": "train", "val": "val", "test": "test"}
    if split not in wanted:
        raise InputError(f"{path}: MedMNIST has the official splits train/val/test, got split={split!r}.")
    ik, lk = f"{split}_images", f"{split}_labels"
    for k in (ik, lk):
        if k not in arrays:
            raise InputError(f"{path}: missing array '{k}' (has {sorted(arrays)}); is this a MedMNIST file?")
    images, labels = arrays[ik], arrays[lk].reshape(len(arrays[lk]), -1)
    if len(images) != len(labels):
        raise InputError(f"{path}: {len(images)} images but {len(labels)} labels in split {split!r}.")
    n_classes = int(labels.max()) + 1 if labels.size else 0
    items = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        t = torch.from_numpy(np.ascontiguousarray(img))
        t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)  # RGB MedMNIST sets are (H, W, 3)
        src = f"{path.stem}/{split}/{i:05d}"
        items.append(
            {
                "image": MetaTensor(t, meta={"filename_or_obj": src}),
                "label": int(lab[0]),
                "labels": lab.astype(np.int64),
                "source": src,
            }
        )
    return items, [str(c) for c in range(n_classes)]


def datalist_items(path: str | os.PathLike, section: str = "training") -> list[dict]:
    """Items of an MSD-style datalist (``dataset.json`` or any JSON with the same structure).

    Relative paths resolve against the JSON's folder. Each entry needs ``image``; ``label`` (a
    mask path, MSD's name) is kept as ``mask`` so that it is not confused with a class label.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "dataset.json"
    try:
        content = json.loads(p.read_text())
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise InputError(f"{p}: cannot be read as a datalist JSON ({e}).") from None
    if not isinstance(content, dict) or section not in content:
        keys = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise InputError(f"{p}: no '{section}' list (found keys {keys}). An MSD datalist has "
                         f'{{"{section}": [{{"image": ..., "label": ...}}, ...]}}.')
    entries = content[section]
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{p}: '{section}' must be a non-empty list of {{'image': path}} entries.")
    base = p.parent
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
        image = base / e["image"]
        if not image.exists():
            raise InputError(f"{p}: entry {i}: image {image} does not exist; fix the path in the datalist.")
        item["image"] = str(image)
        item["source"] = Path(e["image"]).as_posix()  # Path() already drops a leading "./"
        if "label" in e:
            if isinstance(e["label"], (int, float)):
                item["label"] = int(e["label"])
            else:
                mask = base / e["label"]
                if not mask.exists():
                    raise InputError(f"{p}: entry {i}: label {mask} does not exist; fix the path in the datalist.")
                item["mask"] = str(mask)
        items.append(item)
    return items


def first_image(dataset_dir: str | os.PathLike) -> str:
    """Path of one image of a folder or datalist source, found without listing the whole tree.

    It tells pictures from volumes; a folder without any image gets :func:`class_folder_items`'s
    error.
    """
    if source_kind(dataset_dir) == "datalist":
        return datalist_items(dataset_dir)[0]["image"]
    root = Path(dataset_dir)
    for folder in sorted([root] + [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]):
        for f in folder.iterdir():
            if f.is_file() and not f.name.startswith(".") and _suffix(f) in IMAGE_SUFFIXES:
                return str(f)
    return class_folder_items(root)[0][0]["image"]  # raises the explanatory InputError


def reconstruction_suffix(dataset_dir: str | os.PathLike | None) -> str:
    """File type for reconstructions of ``dataset_dir``'s images: PNG for pictures, NIfTI otherwise."""
    kind = source_kind(dataset_dir)
    if kind == "medmnist":
        return ".png"
    if kind in ("folder", "datalist"):
        return ".png" if _suffix(Path(first_image(dataset_dir))) in PICTURE_SUFFIXES else ".nii.gz"
    return ".nii.gz"
