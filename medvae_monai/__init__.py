"""medvae-monai: variational autoencoders for medical images, as a MONAI plugin and bundle."""

from __future__ import annotations

__version__ = "0.2.0"

from . import anomaly, bundle, config, data, engines, handlers, inferers, latents, losses, networks, transforms, utils  # noqa: E402
from .errors import InputError  # noqa: E402
from .image_writers import register_as_is_writers  # noqa: E402

register_as_is_writers()  # SaveImage(resample=False) on 2D images with a 4x4 affine: see image_writers

__all__ = [
    "InputError", "__version__", "anomaly", "bundle", "config", "data", "engines", "handlers", "inferers", "latents", "losses",
    "networks", "transforms", "utils",
]
