from .datasets import (
    INTENSITY_MODES,
    CheckedCacheDataset,
    DatasetInfo,
    list_items,
    make_dataset,
    preprocessing,
    preprocessing_for,
)
from .phantoms import PHANTOM_CLASSES, make_phantom, phantom_items
from .sources import class_folder_items, datalist_items, medmnist_items, reconstruction_suffix, source_kind
from .splits import SPLITS, split_items

__all__ = [
    "INTENSITY_MODES",
    "PHANTOM_CLASSES",
    "SPLITS",
    "CheckedCacheDataset",
    "DatasetInfo",
    "class_folder_items",
    "datalist_items",
    "list_items",
    "make_dataset",
    "make_phantom",
    "medmnist_items",
    "phantom_items",
    "preprocessing",
    "preprocessing_for",
    "reconstruction_suffix",
    "source_kind",
    "split_items",
]
