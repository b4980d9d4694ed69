"""Deterministic train/val/test splits.

Rule, applied per group (per class when items have a ``label``, else to all items): sort the items
by their source path, give the last ``test_fraction`` to ``test``, the ``val_fraction`` just before
it to ``val`` and the rest to ``train``. With the defaults (1/12 val, 1/6 test), a MedNIST class
of files ``000000``–``002999`` splits into train ``000000``–``002249``, val ``002250``–``002499`` and
test ``002500``–``002999``. The split depends only on file names, never on a random seed or on
the order in which the file system lists them. ``trainval`` is train and val together; ``all`` is
everything.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from ..errors import InputError

__all__ = ["SPLITS", "split_items"]

SPLITS = ("train", "val", "test", "trainval", "all")


def _sort_key(item: dict) -> str:
    return str(item.get("source", item.get("image", "")))


def split_items(
    items: Sequence[dict],
    split: str,
    val_fraction: float = 1 / 12,
    test_fraction: float = 1 / 6,
    group_key: str | None = "label",
) -> list[dict]:
    """Select the items of ``split`` (one of :data:`SPLITS`) by the rule in the module docstring."""
    if split not in SPLITS:
        raise InputError(f"Unknown split {split!r}; use one of {SPLITS}.")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise InputError(f"Split fractions must be in [0, 1) and sum below 1, got val={val_fraction}, test={test_fraction}.")
    if split == "all":
        return sorted(items, key=_sort_key)
    groups: dict[object, list[dict]] = defaultdict(list)
    for it in items:
        groups[it.get(group_key) if group_key and isinstance(it.get(group_key), (int, str)) else None].append(it)
    out: list[dict] = []
    for key in sorted(groups, key=str):
        g = sorted(groups[key], key=_sort_key)
        n_test = round(len(g) * test_fraction)
        n_val = round(len(g) * val_fraction)
        n_train = len(g) - n_test - n_val
        parts = {"train": g[:n_train], "val": g[n_train : n_train + n_val], "test": g[n_train + n_val :]}
        parts["trainval"] = parts["train"] + parts["val"]
        out += parts[split]
    return out
