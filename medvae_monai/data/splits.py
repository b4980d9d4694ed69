"""Deterministic train/val/test splits.

Rule, applied per group (per class when items have a ``label``, else to all items): sort the items
by their source path, give the last ``test_fraction`` to ``test``, the ``val_fraction`` just before
it to ``val`` and the rest to ``train``. With the defaults (1/12 val, 1/6 test), a MedNIST class
of files ``000000``–``002999`` splits into train ``000000``–``002249``, val ``002250``–``002499`` and
test ``002500``–``002999``. A group of three or more items keeps at least one item in ``val`` and one
in ``test``. The split depends only on file names, never on a random seed or on
the order in which the file system lists them. ``trainval`` is train and val together; ``all`` is
everything.

Items that carry a ``patient_id`` are split by patient, so that no patient is on two sides: the
same rule applies to the sorted patient IDs, per group of patients with the same highest label
(e.g. patients with any malignant nodule form one group), and each patient's items follow it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from ..errors import InputError

__all__ = ["SPLITS", "TEST_FRACTION", "VAL_FRACTION", "split_items"]

SPLITS = ("train", "val", "test", "trainval", "all")
VAL_FRACTION, TEST_FRACTION = 1 / 12, 1 / 6


def _sort_key(item: dict) -> str:
    return str(item.get("source", item.get("image", "")))


def split_items(
    items: Sequence[dict],
    split: str,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    group_key: str | None = "label",
    patient_key: str = "patient_id",
) -> list[dict]:
    """Select the items of ``split`` (one of :data:`SPLITS`) by the rule in the module docstring.

    Args:
        items: the items.
        split: one of :data:`SPLITS`.
        val_fraction: fraction of each group for ``val``.
        test_fraction: fraction of each group for ``test``.
        group_key: item key whose value groups (stratifies) the split.
        patient_key: item key of the patient; when every item has one, whole patients are split.
    """
    if split not in SPLITS:
        raise InputError(f"Unknown split {split!r}; use one of {SPLITS}.")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise InputError(f"Split fractions must be in [0, 1) and sum below 1, got val={val_fraction}, test={test_fraction}.")
    if split == "all":
        return sorted(items, key=_sort_key)
    if items and all(it.get(patient_key) not in (None, "") for it in items):
        return _split_patients(items, split, val_fraction, test_fraction, group_key, patient_key)
    groups: dict[object, list[dict]] = defaultdict(list)
    for it in items:
        groups[it.get(group_key) if group_key and isinstance(it.get(group_key), (int, str)) else None].append(it)
    out: list[dict] = []
    for key in sorted(groups, key=str):
        out += _take(sorted(groups[key], key=_sort_key), split, val_fraction, test_fraction)
    return out


def _take(ordered: list, split: str, val_fraction: float, test_fraction: float) -> list:
    n = len(ordered)
    # a group of 3 or more keeps at least one item in each split whose fraction is set, so that a small
    # class is still in val (a class missing there makes AUROC NaN) and in test
    n_test = max(round(n * test_fraction), int(test_fraction > 0 and n >= 3))
    n_val = max(round(n * val_fraction), int(val_fraction > 0 and n >= 3))
    n_train = len(ordered) - n_test - n_val
    parts = {"train": ordered[:n_train], "val": ordered[n_train : n_train + n_val], "test": ordered[n_train + n_val :]}
    parts["trainval"] = parts["train"] + parts["val"]
    return parts[split]


def _split_patients(
    items: Sequence[dict], split: str, val_fraction: float, test_fraction: float, group_key: str | None, patient_key: str
) -> list[dict]:
    by_patient: dict[str, list[dict]] = defaultdict(list)
    for it in items:
        by_patient[str(it[patient_key])].append(it)

    def stratum(patient: str) -> str:
        labels = [it.get(group_key) for it in by_patient[patient] if group_key and isinstance(it.get(group_key), (int, str))]
        return str(max(labels, key=str)) if labels else ""

    strata: dict[str, list[str]] = defaultdict(list)
    for patient in sorted(by_patient):
        strata[stratum(patient)].append(patient)
    chosen = {p for key in sorted(strata) for p in _take(strata[key], split, val_fraction, test_fraction)}
    return sorted((it for it in items if str(it[patient_key]) in chosen), key=_sort_key)
