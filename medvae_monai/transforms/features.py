"""Feature-extraction transforms: denoising, edges and contrast, from MONAI's own filters.

One feature per transform, chosen by name (:data:`FEATURES`), and one of three uses (``mode``):

- ``replace``: the feature replaces the image (e.g. a denoised image is what the VAE encodes);
- ``channels``: the feature is appended as extra channels, ``(C, *S) -> (C + F, *S)``
  (e.g. image + edge magnitude; the VAE is built with ``in_channels=C + F``);
- ``key`` (dictionary version only): the feature is stored under ``f"{key}_{feature}"`` and the
  image is left alone, so the VAE sees the image and only a head that reads that key sees the
  feature.

Features (all keep the input's spatial size, MetaTensor affine and metadata, in 2D and 3D, and
are deterministic):

- ``gaussian``: MONAI ``GaussianSmooth`` (``sigma`` in voxels);
- ``median``: MONAI ``MedianSmooth`` (``radius`` in voxels);
- ``sobel``: edge magnitude ``sqrt(sum_d g_d^2) / sqrt(D)`` of MONAI ``SobelGradients`` per
  channel, in [0, 1] for images in [0, 1] (``D`` spatial dims; the normalised Sobel kernel gives
  ``|g_d| <= 1``);
- ``histeq``: MONAI ``HistogramNormalize`` (histogram equalisation to [0, 1]; ``num_bins``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import GaussianSmooth, HistogramNormalize, MapTransform, MedianSmooth, SobelGradients, Transform

from ..errors import InputError

__all__ = ["FEATURES", "FEATURE_MODES", "FeatureExtract", "FeatureExtractd", "feature_channels"]

FEATURES = ("gaussian", "median", "sobel", "histeq")
FEATURE_MODES = ("replace", "channels", "key")


class _EdgeMagnitude(Transform):
    """Per-channel Sobel gradient magnitude, ``(C, *S) -> (C, *S)``."""

    def __init__(self) -> None:
        self.sobel = SobelGradients(kernel_size=3, padding_mode="reflect")

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        dims = img.ndim - 1
        mags = []
        for c in range(img.shape[0]):
            g = self.sobel(img[c : c + 1])  # (D, *S): one gradient per spatial axis
            mags.append(g.square().sum(0, keepdim=True).sqrt() / math.sqrt(dims))
        return torch.cat(mags).clamp(0.0, 1.0)


def _filter(feature: str, sigma: float, radius: int, num_bins: int) -> Transform:
    if feature == "gaussian":
        return GaussianSmooth(sigma=sigma)
    if feature == "median":
        return MedianSmooth(radius=radius)
    if feature == "sobel":
        return _EdgeMagnitude()
    if feature == "histeq":
        return HistogramNormalize(num_bins=num_bins, min=0.0, max=1.0)
    raise InputError(f"unknown feature {feature!r}; choose one of {FEATURES}.")


def feature_channels(in_channels: int, mode: str) -> int:
    """Channels the VAE sees after a feature transform in ``mode`` (every feature keeps ``C``)."""
    return 2 * in_channels if mode == "channels" else in_channels


class FeatureExtract(Transform):
    """Compute one feature of a ``(C, *S)`` image and replace it or append it as channels.

    Args:
        feature: one of :data:`FEATURES`.
        mode: ``replace`` or ``channels`` (see the module docstring).
        sigma: Gaussian standard deviation in voxels (``gaussian``).
        radius: median filter radius in voxels (``median``).
        num_bins: histogram bins (``histeq``).

    Returns:
        A MetaTensor with the input's affine and metadata: ``(C, *S)`` (replace) or
        ``(2C, *S)`` (channels).

    Raises:
        InputError: unknown feature or mode.
    """

    def __init__(self, feature: str = "sobel", mode: str = "channels", sigma: float = 1.0, radius: int = 1, num_bins: int = 256) -> None:
        if mode not in FEATURE_MODES[:2]:
            raise InputError(f"FeatureExtract: mode must be 'replace' or 'channels' (use FeatureExtractd for 'key'), got {mode!r}.")
        self.feature, self.mode = feature, mode
        self.filter = _filter(feature, sigma, radius, num_bins)

    def compute(self, img: torch.Tensor) -> MetaTensor:
        """The feature alone, ``(C, *S)``, with ``img``'s geometry."""
        img = img if isinstance(img, MetaTensor) else MetaTensor(img)
        out = self.filter(img.float())
        return MetaTensor(torch.as_tensor(out).as_subclass(torch.Tensor), meta=dict(img.meta))

    def __call__(self, img: torch.Tensor) -> MetaTensor:
        feat = self.compute(img)
        if self.mode == "replace":
            return feat
        base = img if isinstance(img, MetaTensor) else MetaTensor(img)
        return MetaTensor(torch.cat([base.as_tensor().float(), feat.as_tensor()]), meta=dict(base.meta))


class FeatureExtractd(MapTransform):
    """Dictionary version of :class:`FeatureExtract`, with the ``key`` mode for heads-only features.

    Args:
        keys: image keys.
        feature: one of :data:`FEATURES`.
        mode: one of :data:`FEATURE_MODES`; ``key`` writes ``f"{key}_{feature}"``.
        sigma, radius, num_bins: see :class:`FeatureExtract`.
    """

    def __init__(self, keys: KeysCollection, feature: str = "sobel", mode: str = "channels", sigma: float = 1.0,
                 radius: int = 1, num_bins: int = 256, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in FEATURE_MODES:
            raise InputError(f"FeatureExtractd: mode must be one of {FEATURE_MODES}, got {mode!r}.")
        self.mode = mode
        self.extract = FeatureExtract(feature, "channels" if mode == "key" else mode, sigma, radius, num_bins)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.mode == "key":
                d[f"{key}_{self.extract.feature}"] = self.extract.compute(d[key])
            else:
                d[key] = self.extract(d[key])
        return d
