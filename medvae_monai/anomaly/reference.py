"""The normative reference of the anomaly score: posterior means of normal training images.

A compression VAE reconstructs what it is shown, anomalies included, so its reconstruction error
alone marks little of a pasted lesion (``benchmarks/results/anomaly.md``). The reference adds what
"normal" looks like: the posterior means ``mu`` of normal training images. For a query image the
``k`` references nearest in latent space (Euclidean distance between whole latents, i.e. a
k-nearest-neighbour estimate under the aggregate posterior) are decoded, and their per-pixel mean
and standard deviation are the normative model the image is compared with (see
:class:`~medvae_monai.anomaly.AnomalyInferer`).

A reference is tied to the VAE that encoded it: it stores a fingerprint of the weights and
refuses another checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.nn import functional as F

from ..errors import InputError
from ..utils import atomic_torch_save, load_state_dict

__all__ = ["NormativeReference", "reference_for", "weights_fingerprint"]

logger = logging.getLogger("medvae_monai")


def weights_fingerprint(network: torch.nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of a network's state dict, keys and values in key order."""
    h = hashlib.sha256()
    for key, value in sorted(network.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class NormativeReference:
    """Posterior means of normal images and the decoded images they stand for.

    Args:
        latents: ``(N, latent_channels, *L)`` posterior means of ``N`` normal images, all of
            one size.
        fingerprint: :func:`weights_fingerprint` of the VAE that encoded them.
        image_size: the spatial size ``S`` of those images (the decoder's output is cropped to it).
    """

    def __init__(self, latents: torch.Tensor, fingerprint: str, image_size: list[int]) -> None:
        if latents.ndim < 4 or len(latents) < 2:
            raise InputError(f"a normative reference needs at least 2 latents (N, C, *L), got shape {tuple(latents.shape)}.")
        self.latents = latents.float()
        self.fingerprint = fingerprint
        self.image_size = [int(s) for s in image_size]
        self._decoded: torch.Tensor | None = None

    @classmethod
    @torch.no_grad()
    def build(cls, vae: torch.nn.Module, batches: Iterable[torch.Tensor], device: str | torch.device = "cpu") -> NormativeReference:
        """Encode normal images, batches ``(B, C, *S)`` of one size, with ``vae`` (a MedVAE)."""
        vae.eval()
        mus, size = [], None
        for x in batches:
            x = torch.as_tensor(x).float().to(device)
            if size is not None and list(x.shape[2:]) != size:
                raise InputError(
                    f"normative reference images must share one size, got {size} and {list(x.shape[2:])}; "
                    "set --spatial_size so they are resized to one."
                )
            size = list(x.shape[2:])
            mus.append(vae.encode(x)[0].cpu())
        if not mus:
            raise InputError("the normative reference has no images; give --reference_dir a folder of normal training images.")
        return cls(torch.cat(mus), weights_fingerprint(vae), size)

    def save(self, path: str | os.PathLike) -> Path:
        """Atomically save as a plain tensor dict (loads with ``torch.load(weights_only=True)``)."""
        return atomic_torch_save(
            {"latents": self.latents.half(), "fingerprint": self.fingerprint, "image_size": torch.tensor(self.image_size)}, path
        )

    @classmethod
    def load(cls, path: str | os.PathLike, vae: torch.nn.Module) -> NormativeReference:
        """Load a saved reference and check it was built with ``vae``'s weights.

        Raises:
            InputError: the file is missing or corrupt, or was built with another checkpoint.
        """
        state = load_state_dict(path)
        if not isinstance(state, dict) or not {"latents", "fingerprint", "image_size"} <= set(state):
            raise InputError(f"{path}: not a normative reference (needs latents, fingerprint, image_size).")
        ref = cls(state["latents"], str(state["fingerprint"]), state["image_size"].tolist())
        actual = weights_fingerprint(vae)
        if ref.fingerprint != actual:
            raise InputError(
                f"{path}: built with another checkpoint (weights {ref.fingerprint}, this one {actual}). Build a reference "
                "for this checkpoint with: python -m monai.bundle run building_reference --config_file "
                "bundle/configs/anomaly.yaml --reference_dir TRAIN_DIR --ckpt_path CKPT, or pass --reference_dir."
            )
        return ref

    @torch.no_grad()
    def neighbours(self, vae: torch.nn.Module, mu: torch.Tensor, k: int) -> torch.Tensor:
        """The decoded ``k`` references nearest to each query latent.

        Args:
            vae: the MedVAE the reference was built with.
            mu: ``(B, latent_channels, *L')`` query posterior means; a latent grid of another size
                is resampled to the reference's for the search.
            k: neighbours per query (at most the reference size).

        Returns:
            ``(B, k, C, *S)`` decoded neighbours at the reference image size ``S``.
        """
        bank = self.latents.to(mu.device)
        if mu.shape[1:] != bank.shape[1:]:
            if mu.shape[1] != bank.shape[1]:
                raise InputError(f"latent channels differ: query {mu.shape[1]}, reference {bank.shape[1]}; rebuild the reference.")
            mu = F.interpolate(mu, size=bank.shape[2:], mode="area")
        idx = torch.cdist(mu.flatten(1), bank.flatten(1)).topk(min(k, len(bank)), largest=False).indices
        return self.decoded(vae, mu.device)[idx]

    def decoded(self, vae: torch.nn.Module, device: torch.device) -> torch.Tensor:
        """All references decoded once, ``(N, C, *S)`` in [0, 1], cached."""
        if self._decoded is None or self._decoded.device != device:
            vae.eval()
            with torch.no_grad():
                parts = [vae.decode(z.to(device), spatial_size=self.image_size) for z in self.latents.split(256)]
            self._decoded = torch.cat(parts).clamp(0.0, 1.0)
        return self._decoded


def reference_for(
    vae: torch.nn.Module,
    reference_file: str | os.PathLike | None = None,
    reference_dir: str | os.PathLike | None = None,
    max_images: int = 2000,
    spatial_dims: int = 2,
    in_channels: int = 1,
    spatial_size: list[int] | None = None,
    intensity: str = "auto",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    strict: bool = False,
) -> NormativeReference | None:
    """The reference a bundle config asks for: built from ``reference_dir``'s training split
    (an evenly spaced subset of at most ``max_images``) when given, else loaded from
    ``reference_file`` when it exists, else ``None``.

    Only the ``train`` split of ``reference_dir`` is used, so a reference built from the same
    dataset as the images scored never holds them (see :mod:`medvae_monai.data.splits`). A
    missing file, or one built with another checkpoint (e.g. a task VAE given by ``--ckpt_path``),
    gives ``None`` with a logged warning, or raises :class:`InputError` with ``strict``.
    """
    if reference_dir not in (None, ""):
        from ..data import CheckedCacheDataset, ImageSource  # data imports transforms; avoid a cycle

        source = ImageSource(reference_dir, spatial_dims, in_channels, spatial_size, intensity, max_items=max_images)
        xform = source.preprocessing(min_size=int(vae.downsample_factor))
        images = [d["image"].as_tensor() for d in CheckedCacheDataset(source.items("train"), xform)]
        batches = (torch.stack(images[i : i + batch_size]) for i in range(0, len(images), batch_size))
        return NormativeReference.build(vae, batches, device)
    if reference_file in (None, "") or not Path(reference_file).is_file():
        logger.warning("no normative reference (%s): anomaly maps fall back to the reconstruction error.", reference_file)
        return None
    try:
        return NormativeReference.load(reference_file, vae)
    except InputError as e:
        if strict:
            raise
        logger.warning("%s Falling back to the reconstruction error.", e)
        return None
