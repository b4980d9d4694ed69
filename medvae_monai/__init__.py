"""medvae-monai: variational autoencoders for medical images, as a MONAI plugin and bundle."""

from __future__ import annotations

__version__ = "0.2.0"

from . import anomaly, bundle, config, data, engines, handlers, inferers, latents, losses, networks, transforms, utils  # noqa: E402
from .errors import InputError  # noqa: E402

__all__ = [
    "InputError", "__version__", "anomaly", "bundle", "config", "data", "engines", "handlers", "inferers", "latents", "losses",
    "networks", "transforms", "utils",
]
