from .checks import CheckImaged, CheckImageMaskd
from .dicom import DicomPictureReader
from .features import FEATURE_MODES, FEATURES, FeatureExtract, FeatureExtractd, feature_channels
from .io import LoadImageCheckedd
from .intensity import (
    CT_WINDOWS,
    INTENSITY_KEY,
    CTWindow,
    CTWindowd,
    RestoreUnits,
    RestoreUnitsd,
    ScaleToUnit,
    ScaleToUnitd,
    intensity_map,
    window_bounds,
)
from .nodule import (
    NODULE_CUBE,
    NODULE_HU_WINDOW,
    NODULE_SPACING_MM,
    NoduleCrop,
    NoduleCropd,
    nodule_centre,
    nodule_preprocessing,
)
from .region import ForegroundToSize, ForegroundToSized
from .latent import (
    ImageGeometryd,
    LatentGeometryd,
    attach_latent_geometry,
    image_affine,
    latent_affine,
    restore_image_geometry,
)

__all__ = [
    "CT_WINDOWS",
    "CTWindow",
    "CTWindowd",
    "CheckImageMaskd",
    "INTENSITY_KEY",
    "RestoreUnits",
    "RestoreUnitsd",
    "ScaleToUnit",
    "ScaleToUnitd",
    "CheckImaged",
    "DicomPictureReader",
    "ForegroundToSize",
    "ForegroundToSized",
    "FEATURES",
    "FEATURE_MODES",
    "FeatureExtract",
    "FeatureExtractd",
    "ImageGeometryd",
    "LatentGeometryd",
    "LoadImageCheckedd",
    "NODULE_CUBE",
    "NODULE_HU_WINDOW",
    "NODULE_SPACING_MM",
    "NoduleCrop",
    "NoduleCropd",
    "attach_latent_geometry",
    "feature_channels",
    "image_affine",
    "intensity_map",
    "latent_affine",
    "nodule_centre",
    "nodule_preprocessing",
    "restore_image_geometry",
    "window_bounds",
]
