from .checks import CheckImaged, CheckImageMaskd
from .dicom import DicomPictureReader
from .io import LoadImageCheckedd
from .intensity import CT_WINDOWS, CTWindow, CTWindowd, window_bounds
from .latent import DecodeLatentd, EncodeLatentd, LatentGeometryd, attach_latent_geometry, image_affine, latent_affine

__all__ = [
    "CT_WINDOWS",
    "CTWindow",
    "CTWindowd",
    "CheckImageMaskd",
    "CheckImaged",
    "DecodeLatentd",
    "DicomPictureReader",
    "EncodeLatentd",
    "LatentGeometryd",
    "LoadImageCheckedd",
    "attach_latent_geometry",
    "image_affine",
    "latent_affine",
    "window_bounds",
]
