"""Targets and label statistics: which item key a task learns from, and the class counts and weights
of a training set.

The task rule, written once: ``binary`` and ``multiclass`` heads learn the integer ``label`` (a
softmax over the classes), ``multilabel`` heads the ``labels`` row (one sigmoid per label),
segmentation heads the ``mask``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from monai.transforms import Activationsd, AsDiscreted, Compose

from ..errors import InputError
from ..networks.heads import CLASSIFICATION_TASKS

__all__ = [
    "TARGET_KEYS",
    "class_weights",
    "classification_postprocessing",
    "label_counts",
    "require_classes",
    "require_targets",
    "target_key",
]

TARGET_KEYS = {"binary": "label", "multiclass": "label", "multilabel": "labels", "segmentation": "mask"}

_TARGET_HELP = {
    "mask": "A segmentation head needs masks: '<name>_mask.png' beside each '<name>.png' (BUSI layout), a "
    "datalist whose entries have a 'label' mask path (MSD layout), or a CSV datalist with a 'mask' column.",
    "label": "A classifier needs labels: put the images in one sub-folder per class (MedNIST layout), or use a "
    "MedMNIST .npz, a datalist with an integer 'label' per entry, or a CSV datalist with a 'label' or "
    "'diagnosis' column.",
}


def target_key(task: str) -> str:
    """The item key that a ``task`` head learns from (see the module docstring).

    Raises:
        InputError: unknown task.
    """
    if task not in TARGET_KEYS:
        raise InputError(f"task must be one of {tuple(TARGET_KEYS)}, got {task!r}.")
    return TARGET_KEYS[task]


def classification_postprocessing(task: str, num_classes: int) -> Compose:
    """Logits ``pred`` to probabilities (softmax, or sigmoid for ``multilabel``) and ``label`` to
    one-hot (``multilabel`` rows are already), for MONAI's classification metrics."""
    multilabel = target_key(task) == "labels"
    return Compose([
        Activationsd("pred", softmax=not multilabel, sigmoid=multilabel),
        AsDiscreted("label", to_onehot=None if multilabel else num_classes),
    ])


def require_targets(items: Sequence[dict], key: str = "label") -> Sequence[dict]:
    """Return ``items`` if every one has a ``key`` target (``label``, ``labels`` or ``mask``).

    Raises:
        InputError: naming how many items lack it, the first one, and how to provide it.
    """
    missing = [str(it.get("source", it.get("image"))) for it in items if key not in it]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(items)} images have no '{key}', e.g. {missing[0]}. "
            + _TARGET_HELP.get(key, _TARGET_HELP["label"])
        )
    return items


def require_classes(items: Sequence[dict], class_names: Sequence[str], split: str, task: str = "multiclass") -> Sequence[dict]:
    """Return ``items`` (of ``split``) if every class of ``class_names`` has an image among them.

    A class missing from the validation split makes AUROC NaN at every epoch, and the best model is
    then chosen by comparing NaNs (it stays at epoch 1); missing from training, it is never learnt.
    ``multilabel`` items are not checked (a label may be rare).

    Raises:
        InputError: naming the split, the first missing class and the fix.
    """
    if task == "multilabel":
        return items
    counts = Counter(int(it["label"]) for it in items if "label" in it)
    missing = [name for c, name in enumerate(class_names) if not counts.get(c)]
    if missing:
        raise InputError(
            f"the {split} split has no image of class {missing[0]!r}{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: "
            "a classifier needs every class in train and val (AUROC is undefined otherwise). Give the class at "
            "least 3 images (each split then gets one), or remove it."
        )
    return items


def label_counts(
    items: Sequence[dict],
    num_classes: int,
    task: str = "multiclass",
    class_names: Sequence[str] | None = None,
    label_key: str | None = None,
) -> list[int]:
    """Images per class (per label for ``multilabel``), after checking labels against the config.

    Args:
        items: training items from :meth:`ImageSource.items <medvae_monai.data.ImageSource.items>`.
        num_classes: classes the head is configured for.
        task: one of ``binary``, ``multiclass``, ``multilabel``.
        class_names: the dataset's class names, if it has them (class folders).
        label_key: item key of the label; defaults to :func:`target_key`.

    Raises:
        InputError: an item has no label, a label is out of range, or the dataset's class count
            differs from ``num_classes``.
    """
    if task not in CLASSIFICATION_TASKS:
        raise InputError(f"task must be one of {CLASSIFICATION_TASKS}, got {task!r}.")
    key = label_key or target_key(task)
    require_targets(items, key)
    if class_names and len(class_names) != num_classes:
        raise InputError(
            f"the dataset has {len(class_names)} classes {list(class_names)} but the config says "
            f"num_classes={num_classes}; pass --num_classes {len(class_names)}."
        )
    if task == "multilabel":
        rows = torch.as_tensor([list(map(int, it[key])) for it in items])
        if rows.shape[1] != num_classes:
            raise InputError(f"the labels have {rows.shape[1]} columns but the config says num_classes={num_classes}.")
        return rows.sum(0).tolist()
    counts = Counter(int(it[key]) for it in items)
    bad = sorted(c for c in counts if not 0 <= c < num_classes)
    if bad:
        raise InputError(
            f"labels {bad} are outside 0..{num_classes - 1}: the dataset has more classes than the config's "
            f"num_classes={num_classes}; pass --num_classes {max(counts) + 1}."
        )
    return [counts.get(c, 0) for c in range(num_classes)]


def class_weights(items: Sequence[dict], num_classes: int, task: str = "multiclass", **kwargs) -> torch.Tensor:
    """Inverse-frequency class weights ``n / (K * n_k)`` for imbalanced data (see :func:`label_counts`).

    For ``multilabel`` it returns the BCE ``pos_weight`` ``n_neg / n_pos`` per label.
    """
    counts = torch.as_tensor(label_counts(items, num_classes, task, **kwargs), dtype=torch.float32)
    if task == "multilabel":
        return (len(items) - counts) / counts.clamp_min(1)
    return counts.sum() / (num_classes * counts.clamp_min(1))
