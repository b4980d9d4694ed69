"""Per-pixel anomaly maps from a VAE, as a MONAI inferer: ``maps = AnomalyInferer(...)(images, vae)``.

Methods (``method=``), all ``(B, C, *S) -> (B, 1, *S)``, larger is more anomalous:

- ``reconstruction``: ``|x - decode(mu(x))|``, the baseline every autoencoder gives.
- ``posterior``: ``|x - mean_s x_s| / (std_s x_s + eps)`` over ``posterior_samples`` decodes of
  ``z_s ~ q(z|x)``: the error in units of the decoder's spread under the posterior
  (Baur et al., "Autoencoders for unsupervised anomaly segmentation in brain MR images", 2021).
- ``normative``: ``|x - mean_k r_k| / (std_k r_k + eps)`` over the decoded ``k`` nearest normal
  references (:class:`~medvae_monai.anomaly.NormativeReference`): the pixel's z-score under a
  Gaussian fitted to the nearest normal anatomy, a restoration of the image from normal ones.

Maps are averaged over channels and smoothed with a Gaussian of ``smooth_sigma`` pixels (MONAI
``GaussianFilter``): anomalies are regions, and smoothing trades single-pixel noise for region
contrast. :func:`image_score` reduces a map to the per-image score. The figures behind the
default choice are in ``benchmarks/results/anomaly.md``.
"""

from __future__ import annotations

import torch
from monai.inferers import Inferer
from monai.networks.layers import GaussianFilter

from ..errors import InputError
from .reference import NormativeReference

__all__ = ["METHODS", "AnomalyInferer", "image_score"]

METHODS = ("reconstruction", "posterior", "normative")


def image_score(maps: torch.Tensor, top_fraction: float = 0.01) -> torch.Tensor:
    """Per-image anomaly score: the mean of the largest ``top_fraction`` of each map's values.

    A local anomaly raises a few pixels a lot; the whole-map mean would dilute it, the single
    maximum would follow noise.

    Args:
        maps: ``(B, 1, *S)`` anomaly maps.
        top_fraction: share of pixels averaged, in (0, 1].

    Returns:
        ``(B,)`` scores.
    """
    if not 0 < top_fraction <= 1:
        raise InputError(f"top_fraction must be in (0, 1], got {top_fraction}.")
    flat = maps.flatten(1)
    k = max(1, int(round(flat.shape[1] * top_fraction)))
    return flat.topk(k, dim=1).values.mean(1)


class AnomalyInferer(Inferer):
    """Anomaly maps from a :class:`~medvae_monai.networks.MedVAE` (see the module docstring).

    Args:
        method: one of :data:`METHODS`.
        reference: the normal references, required by ``normative``.
        neighbours: ``k`` for ``normative``.
        eps: floor of the standard deviation, in image intensity units ([0, 1] images), so that
            pixels every reference agrees on do not divide by zero.
        smooth_sigma: Gaussian smoothing of the map in pixels; 0 disables it.
        posterior_samples: decodes for ``posterior``.

    Raises:
        InputError: unknown method, or ``normative`` without a reference.
    """

    def __init__(
        self,
        method: str = "normative",
        reference: NormativeReference | None = None,
        neighbours: int = 10,
        eps: float = 0.05,
        smooth_sigma: float = 2.0,
        posterior_samples: int = 8,
    ) -> None:
        if method not in METHODS:
            raise InputError(f"anomaly method must be one of {METHODS}, got {method!r}.")
        if method == "normative" and reference is None:
            raise InputError(
                "the normative anomaly method needs a reference of normal images: pass --reference_dir TRAIN_DIR, "
                "or --method reconstruction."
            )
        if neighbours < 2 or eps <= 0 or smooth_sigma < 0 or posterior_samples < 2:
            raise InputError("anomaly settings: neighbours >= 2, eps > 0, smooth_sigma >= 0 and posterior_samples >= 2.")
        self.method = method
        self.reference = reference
        self.neighbours = int(neighbours)
        self.eps = float(eps)
        self.smooth_sigma = float(smooth_sigma)
        self.posterior_samples = int(posterior_samples)

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        """``(B, C, *S)`` images in [0, 1] -> ``(B, 1, *S)`` anomaly maps (float32)."""
        x = inputs.as_tensor() if hasattr(inputs, "as_tensor") else torch.as_tensor(inputs)
        x = x.float()
        network.eval()
        size = list(x.shape[2:])
        mu, sigma = network.encode(x)
        if self.method == "reconstruction":
            err = (x - network.decode(mu, spatial_size=size)).abs()
        elif self.method == "posterior":
            samples = torch.stack(
                [network.decode(network.sample(mu, sigma), spatial_size=size) for _ in range(self.posterior_samples)]
            )
            err = (x - samples.mean(0)).abs() / (samples.std(0) + self.eps)
        else:
            refs = self.reference.neighbours(network, mu, self.neighbours)  # (B, k, C, *S_ref)
            if list(refs.shape[3:]) != size:
                b, k = refs.shape[:2]
                refs = torch.nn.functional.interpolate(refs.flatten(0, 1), size=size, mode="bilinear" if x.ndim == 4 else "trilinear")
                refs = refs.reshape(b, k, *refs.shape[1:])
            err = (x - refs.mean(1)).abs() / (refs.std(1) + self.eps)
        maps = err.mean(1, keepdim=True)
        if self.smooth_sigma > 0:
            maps = GaussianFilter(x.ndim - 2, self.smooth_sigma).to(maps.device)(maps)
        return maps.float()
