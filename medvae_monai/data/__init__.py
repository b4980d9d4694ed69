from .source import IMAGE_SUFFIXES, PICTURE_SUFFIXES, VOLUME_SUFFIXES, ImageSource, file_suffix, is_picture_file
from .sources import ClassFolderSource, ImageFileSource, MedMNISTSource, MSDDatalistSource, PhantomSource
from .csv_datalist import CSVDatalistSource
from .datasets import CheckedCacheDataset, make_dataset
from .labels import (
    TARGET_KEYS,
    class_weights,
    classification_postprocessing,
    label_counts,
    require_classes,
    require_targets,
    target_key,
)
from .phantoms import PHANTOM_CLASSES, make_phantom, phantom_items
from .preprocessing import INTENSITY_MODES, RecordIntensityd, build_preprocessing
from .splits import SPLITS, split_items

__all__ = [
    "IMAGE_SUFFIXES",
    "INTENSITY_MODES",
    "PHANTOM_CLASSES",
    "PICTURE_SUFFIXES",
    "SPLITS",
    "TARGET_KEYS",
    "VOLUME_SUFFIXES",
    "CSVDatalistSource",
    "CheckedCacheDataset",
    "ClassFolderSource",
    "ImageFileSource",
    "ImageSource",
    "MSDDatalistSource",
    "MedMNISTSource",
    "PhantomSource",
    "RecordIntensityd",
    "build_preprocessing",
    "class_weights",
    "classification_postprocessing",
    "file_suffix",
    "is_picture_file",
    "label_counts",
    "make_dataset",
    "make_phantom",
    "phantom_items",
    "require_classes",
    "require_targets",
    "split_items",
    "target_key",
]
