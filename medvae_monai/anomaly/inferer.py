"""Per-pixel anomaly maps from a VAE, as a MONAI inferer: ``maps = AnomalyInferer(...)(images, vae)``.

Methods (``method=``), all ``(B, C, *S) -> (B, 1, *S)``, larger is more anomalous:

- ``reconstruction``: ``|x - decode(mu(x))|``, the baseline every autoencoder gives.
- ``posterior``: ``|x - mean_s x_s| / (std_s x_s + eps)`` over ``posterior_samples`` decodes of
  ``z_s ~ q(z|x)``: the error in units of the decoder's spread under the posterior
  (Baur et al., "Autoencoders for unsupervised anomaly segmentation in brain MR images", 2021).
- ``elbo``: the per-pixel negative ELBO of the VAE's own training objective (L1 likelihood,
  ``beta``-weighted KL): ``mean_s |x - x_s| + beta * KL``, the KL of each latent position
  (nats, mean over latent channels) spread over the ``f**d`` pixels it decodes. The pixel mean of
  the map is the loss the VAE was trained on (up to the padding to a multiple of ``f``), so the
  map is that loss's decomposition over pixels. Its reconstruction term is the usual VAE score
  (Baur et al. 2021, above); spreading the KL evenly over the pixels a latent decodes is our
  choice (Zimmerer et al., "Unsupervised anomaly localization using variational auto-encoders",
  MICCAI 2019, weigh pixels by the ELBO's gradient instead).
- ``restoration``: ``|x - x_r|`` where ``x_r`` is ``x`` moved towards the VAE's normal manifold by
  ``restoration_steps`` Adam steps on ``-ELBO(x_r) + tv_weight * TV(x_r - x)``: the ELBO stands in
  for the normative prior ``log p(x_r)``, and the total variation of the change keeps it sparse
  and piecewise constant, like a lesion (Chen, You, Tezcan, Konukoglu, "Deep generative models in
  the real-world: an open challenge from medical imaging", arXiv:1806.05452, 2018; You et al.,
  "Unsupervised lesion detection via image restoration with a normative prior", MIDL 2019). The
  ELBO is evaluated at ``z = mu`` rather than one posterior sample, so restoration is
  deterministic; ``x_r`` stays in [0, 1].
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
from torch.nn import functional as F

from ..errors import InputError
from ..losses import gaussian_kl
from .reference import NormativeReference

__all__ = ["METHODS", "AnomalyInferer", "image_score", "total_variation"]

METHODS = ("reconstruction", "posterior", "elbo", "restoration", "normative")


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


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per item: ``(B, C, *S) -> (B,)``, the mean over spatial axes of
    the mean absolute difference between neighbours along that axis (intensity units)."""
    dims = range(2, x.ndim)
    return torch.stack([x.diff(dim=d).abs().flatten(1).mean(1) for d in dims]).mean(0)


class AnomalyInferer(Inferer):
    """Anomaly maps from a :class:`~medvae_monai.networks.MedVAE` (see the module docstring).

    Args:
        method: one of :data:`METHODS`.
        reference: the normal references, required by ``normative``.
        neighbours: ``k`` for ``normative``.
        eps: floor of the standard deviation, in image intensity units ([0, 1] images), so that
            pixels every reference agrees on do not divide by zero.
        smooth_sigma: Gaussian smoothing of the map in pixels; 0 disables it.
        posterior_samples: decodes for ``posterior`` and ``elbo``.
        beta: the KL weight the VAE was trained with (``elbo``, ``restoration``; the bundle's
            ``train.yaml`` uses 1e-4).
        restoration_steps: Adam steps of ``restoration``.
        restoration_lr: Adam step size of ``restoration``, in intensity units per step.
        tv_weight: weight of the total variation of the change in ``restoration``.

    Raises:
        InputError: unknown method, ``normative`` without a reference, or a setting out of range.
    """

    def __init__(
        self,
        method: str = "normative",
        reference: NormativeReference | None = None,
        neighbours: int = 10,
        eps: float = 0.05,
        smooth_sigma: float = 2.0,
        posterior_samples: int = 8,
        beta: float = 1e-4,
        restoration_steps: int = 30,
        restoration_lr: float = 0.02,
        tv_weight: float = 1.0,
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
        if beta < 0 or restoration_steps < 1 or restoration_lr <= 0 or tv_weight < 0:
            raise InputError("anomaly settings: beta >= 0, restoration_steps >= 1, restoration_lr > 0 and tv_weight >= 0.")
        self.method = method
        self.reference = reference
        self.neighbours = int(neighbours)
        self.eps = float(eps)
        self.smooth_sigma = float(smooth_sigma)
        self.posterior_samples = int(posterior_samples)
        self.beta = float(beta)
        self.restoration_steps = int(restoration_steps)
        self.restoration_lr = float(restoration_lr)
        self.tv_weight = float(tv_weight)

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        """``(B, C, *S)`` images in [0, 1] -> ``(B, 1, *S)`` anomaly maps (float32)."""
        x = inputs.as_tensor() if hasattr(inputs, "as_tensor") else torch.as_tensor(inputs)
        x = x.float()
        network.eval()
        size = list(x.shape[2:])
        if self.method == "restoration":
            err = (x - self.restore(x, network)).abs()
        else:
            mu, sigma = network.encode(x)
        if self.method == "reconstruction":
            err = (x - network.decode(mu, spatial_size=size)).abs()
        elif self.method in ("posterior", "elbo"):
            samples = torch.stack(
                [network.decode(network.sample(mu, sigma), spatial_size=size) for _ in range(self.posterior_samples)]
            )
            if self.method == "posterior":
                err = (x - samples.mean(0)).abs() / (samples.std(0) + self.eps)
            else:
                err = (x - samples).abs().mean(0) + self.beta * self._kl_per_pixel(mu, sigma, network, size)
        elif self.method == "normative":
            refs = self.reference.neighbours(network, mu, self.neighbours)  # (B, k, C, *S_ref)
            if list(refs.shape[3:]) != size:
                b, k = refs.shape[:2]
                refs = F.interpolate(refs.flatten(0, 1), size=size, mode="bilinear" if x.ndim == 4 else "trilinear")
                refs = refs.reshape(b, k, *refs.shape[1:])
            err = (x - refs.mean(1)).abs() / (refs.std(1) + self.eps)
        maps = err.mean(1, keepdim=True)
        if self.smooth_sigma > 0:
            maps = GaussianFilter(x.ndim - 2, self.smooth_sigma).to(maps.device)(maps)
        return maps.float()

    @staticmethod
    def _kl_per_pixel(mu: torch.Tensor, sigma: torch.Tensor, network: torch.nn.Module, size: list[int]) -> torch.Tensor:
        """``(B, 1, *S)``: each latent position's KL (mean over channels) on the pixels it decodes."""
        kl = gaussian_kl(mu, sigma).mean(1, keepdim=True)
        kl = F.interpolate(kl, scale_factor=float(network.downsample_factor), mode="nearest")
        return kl[(slice(None), slice(None), *(slice(0, s) for s in size))]

    def negative_elbo(self, x: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
        """``(B,)`` negative ELBO of the VAE's training objective at ``z = mu``: mean L1 + ``beta`` * mean KL."""
        mu, sigma = network.encode(x)
        recon = network.decode(mu, spatial_size=list(x.shape[2:]))
        return (x - recon).abs().flatten(1).mean(1) + self.beta * gaussian_kl(mu, sigma).flatten(1).mean(1)

    def restore(self, x: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
        """``x`` ``(B, C, *S)`` moved towards the VAE's normal manifold (``restoration``; module docstring).

        Gradients are taken with respect to the image only (``torch.autograd.grad``), so the
        network's parameters and their ``.grad`` are left as they are.
        """
        restored = x.clone().requires_grad_(True)
        opt = torch.optim.Adam([restored], lr=self.restoration_lr)
        with torch.enable_grad():
            for _ in range(self.restoration_steps):
                loss = (self.negative_elbo(restored, network) + self.tv_weight * total_variation(restored - x)).sum()
                (restored.grad,) = torch.autograd.grad(loss, [restored])
                opt.step()
                with torch.no_grad():
                    restored.clamp_(0.0, 1.0)
        return restored.detach()
