"""Diagnostic heads on MedVAE latents: classification on the spatial latent, and segmentation that
predicts full-resolution masks from the latent, optionally with the encoder's skip features.

A head alone maps latents to predictions. :class:`LatentImageClassifier` and
:class:`LatentImageSegmenter` join a :class:`~medvae_monai.networks.MedVAE` and a head into one
image-in network with a deterministic single-tensor ``forward`` (the posterior mean goes to the
head), which the bundle configs train, evaluate, export and load with ``--ckpt_path``; their
state dict holds ``vae.*`` and ``head.*``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from monai.networks.layers import Conv
from monai.networks.nets import UNet
from monai.networks.utils import pixelshuffle
from torch import nn
from torch.nn import functional as F

from ..errors import InputError
from ..transforms.nodule import NUM_CUBE_ORIENTATIONS, orient_cube
from ..utils import CLASS_NAMES_KEY, decode_class_names
from .vae import MedVAE, ResBlock

__all__ = [
    "CLASSIFICATION_TASKS",
    "LatentClassifier",
    "LatentClassifierEnsemble",
    "LatentImageClassifier",
    "LatentImageSegmenter",
    "LatentSegmenter",
]

CLASSIFICATION_TASKS = ("binary", "multiclass", "multilabel")


def crop_to(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """``x`` ``(B, C, *S)`` cropped to its first ``size`` elements on each spatial axis (TorchScript-compatible)."""
    for d, s in enumerate(size):
        x = x.narrow(2 + d, 0, s)
    return x


class LatentClassifier(nn.Module):
    """Classification head on a spatial latent: a small residual CNN, then mean and max pooling.

    ``binary`` is a two-class softmax, so binary and multi-class heads share outputs, losses and
    metrics (class 1 is the positive class); ``multilabel`` gives one independent sigmoid per
    label.

    Args:
        spatial_dims: 2 or 3.
        latent_channels: channels of the latent.
        num_classes: classes (``binary``: 2) or labels (``multilabel``).
        task: ``binary``, ``multiclass`` or ``multilabel``.
        channels: feature channels per level; every level after the first halves the resolution.
        dropout: dropout before the final linear layer.
        class_names: the class names in label order, kept in the state dict (buffer
            ``class_names_utf8``, their JSON list as bytes, so ``torch.load(weights_only=True)`` reads
            it), so inference takes them from the checkpoint (:func:`medvae_monai.utils.checkpoint_class_names`).
            None or empty: no names are kept.

    Shapes:
        ``z``: ``(B, latent_channels, *L)`` -> logits ``(B, num_classes)``.

    Raises:
        InputError: an unknown task, too few classes, or ``class_names`` of another length than ``num_classes``.
    """

    __jit_unused_properties__ = ["class_names"]  # TorchScript compiles properties; this one is Python only

    def __init__(
        self,
        spatial_dims: int,
        latent_channels: int,
        num_classes: int,
        task: str = "multiclass",
        channels: Sequence[int] = (64, 128),
        dropout: float = 0.1,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if class_names and len(class_names) != num_classes:
            raise InputError(
                f"LatentClassifier: {len(class_names)} class names {list(class_names)} for num_classes={num_classes}; "
                f"pass --num_classes {len(class_names)}, or --class_names with {num_classes} names."
            )
        if class_names:  # a buffer, not a Python attribute: it travels in the state dict with the weights
            names = json.dumps([str(c) for c in class_names]).encode()
            self.register_buffer(CLASS_NAMES_KEY, torch.tensor(list(names), dtype=torch.uint8))
        if task not in CLASSIFICATION_TASKS:
            raise InputError(f"LatentClassifier: task must be one of {CLASSIFICATION_TASKS}, got {task!r}.")
        if task == "binary" and num_classes != 2:
            raise InputError(f"LatentClassifier: a binary task has num_classes=2 (softmax over 2), got {num_classes}.")
        if num_classes < 2 and task != "multilabel":
            raise InputError(f"LatentClassifier: num_classes must be at least 2, got {num_classes}.")
        conv = Conv[Conv.CONV, spatial_dims]
        self.spatial_dims = spatial_dims
        self.latent_channels = latent_channels
        self.num_classes = num_classes
        self.task = task
        layers: list[nn.Module] = [conv(latent_channels, channels[0], kernel_size=3, padding=1)]
        for i, ch in enumerate(channels):
            if i > 0:
                layers.append(conv(channels[i - 1], ch, kernel_size=3, stride=2, padding=1))
            layers.append(ResBlock(spatial_dims, ch))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * channels[-1], num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.features(z)).flatten(2)  # (B, C, N)
        pooled = torch.cat([h.mean(-1), h.amax(-1)], dim=1)
        return self.fc(self.dropout(pooled))

    @property
    def class_names(self) -> list[str] | None:
        """The class names kept in the state dict (label order), or None."""
        names = getattr(self, CLASS_NAMES_KEY, None)
        return None if names is None else decode_class_names(names)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(..., num_classes)`` from logits of that shape: softmax over the last axis,
        or per-label sigmoid for ``multilabel``."""
        return torch.sigmoid(logits) if self.task == "multilabel" else torch.softmax(logits, dim=-1)


class LatentClassifierEnsemble(nn.Module):
    """``num_heads`` :class:`LatentClassifier` heads of one architecture, trained from different
    seeds; the logits are their mean (a deep ensemble, Lakshminarayanan et al., NeurIPS 2017).

    Args:
        num_heads: heads in the ensemble, at least 1.
        kwargs: :class:`LatentClassifier`'s arguments, the same for every head.

    Shapes:
        ``z``: ``(B, latent_channels, *L)`` -> logits ``(B, num_classes)``.
    """

    probabilities = LatentClassifier.probabilities

    def __init__(self, num_heads: int, **kwargs) -> None:
        super().__init__()
        if int(num_heads) < 1:
            raise InputError(f"LatentClassifierEnsemble: num_heads must be at least 1, got {num_heads}.")
        self.heads = nn.ModuleList(LatentClassifier(**kwargs) for _ in range(int(num_heads)))
        first = self.heads[0]
        self.spatial_dims, self.latent_channels, self.num_classes, self.task = (
            first.spatial_dims, first.latent_channels, first.num_classes, first.task)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(z) for head in self.heads]).mean(0)


class LatentSegmenter(nn.Module):
    """Segmentation head: upsamples a latent ``f``-fold to a full-resolution label map.

    First a small U-Net on the latent grid (``context_channels``, MONAI ``UNet``) gathers context:
    the latent is itself an image, and without it the head sees only a few latent pixels around
    each output pixel, too little to tell a lesion from a shadow of the same brightness (on BUSI
    the plain head stayed all background). Then each stage refines features with a residual block
    and doubles the resolution with a 1x1 sub-pixel convolution (pixel shuffle). With
    ``skip_channels`` the encoder's features at each resolution (latent size up to half size) are
    concatenated in, U-Net style, which restores boundary detail the latent alone does not keep.

    Args:
        spatial_dims: 2 or 3.
        latent_channels: channels of the latent.
        num_classes: output channels, background included (e.g. 2 for a binary mask).
        downsample_factor: the VAE's factor ``f`` (a power of two).
        channels: feature channels per stage, from the latent's resolution up; one per stage
            (``log2(f)`` entries).
        skip_channels: the encoder's feature channels from its finest level down (MedVAE's
            ``channels``), or ``None`` for no skips.
        context_channels: channels per level of the U-Net on the latent grid (each further level
            halves the grid; latents of other sizes, or too small, are padded for it), or ``None`` to leave it out.

    Shapes:
        ``z``: ``(B, latent_channels, *L)``, ``skips[i]``: ``(B, skip_channels[i], *(L * f / 2 ** (i + 1)))``
        -> logits ``(B, num_classes, *(L * f))``.
    """

    def __init__(
        self,
        spatial_dims: int,
        latent_channels: int,
        num_classes: int,
        downsample_factor: int = 4,
        channels: Sequence[int] = (64, 32),
        skip_channels: Sequence[int] | None = None,
        context_channels: Sequence[int] | None = (32, 64, 128),
    ) -> None:
        super().__init__()
        levels = max(int(downsample_factor).bit_length() - 1, 0)
        if downsample_factor < 2 or 2**levels != downsample_factor or len(channels) != levels:
            raise InputError(
                f"LatentSegmenter: downsample_factor={downsample_factor} needs a power of two >= 2 and one entry in "
                f"`channels` per factor-2 stage ({levels}), got {tuple(channels)}."
            )
        if skip_channels is not None and len(skip_channels) != levels:
            raise InputError(
                f"LatentSegmenter: skip_channels must list the encoder's {levels} level widths (MedVAE `channels`), "
                f"got {tuple(skip_channels)}."
            )
        conv = Conv[Conv.CONV, spatial_dims]
        fold = 2**spatial_dims
        self.spatial_dims = spatial_dims
        self.latent_channels = latent_channels
        self.num_classes = num_classes
        self.downsample_factor = downsample_factor
        self.use_skips = skip_channels is not None
        if context_channels is not None and len(context_channels) < 2:
            raise InputError(
                f"LatentSegmenter: context_channels needs at least two levels, e.g. (32, 64, 128), or None; "
                f"got {tuple(context_channels)}."
            )
        self.context: nn.Module | None = None
        self.context_multiple = 1
        in_ch = latent_channels
        if context_channels is not None:
            strides = (2,) * (len(context_channels) - 1)
            self.context = UNet(spatial_dims, latent_channels, context_channels[0], context_channels, strides, num_res_units=1)
            self.context_multiple = 2 ** len(strides)
            in_ch = context_channels[0]
        # stage k runs at L * 2**k; the encoder level at that resolution is levels - 1 - k
        skips = list(reversed(skip_channels)) if skip_channels is not None else [0] * levels
        self.stages = nn.ModuleList()
        for k, ch in enumerate(channels):
            out_ch = channels[k + 1] if k + 1 < levels else channels[-1]
            self.stages.append(
                nn.Sequential(
                    conv(in_ch + skips[k], ch, kernel_size=3, padding=1),
                    ResBlock(spatial_dims, ch),
                    nn.SiLU(),
                    # 1x1 before the shuffle: each voxel makes its 2**d children (a stride-2
                    # transposed conv of kernel 2); a 3x3 here costs 27x more in 3D, at 8x the channels
                    conv(ch, out_ch * fold, kernel_size=1),
                )
            )
            in_ch = out_ch
        self.out = conv(in_ch, num_classes, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        n = len(self.stages)
        h = z if self.context is None else self._with_context(z)
        for k, stage in enumerate(self.stages):
            if self.use_skips:
                if skips is None or len(skips) != n:
                    raise ValueError("LatentSegmenter was built with skips and needs one skip feature per stage.")
                h = torch.cat([h, skips[n - 1 - k]], dim=1)
            h = pixelshuffle(stage(h), self.spatial_dims, 2)
        return self.out(F.silu(h))

    def _with_context(self, z: torch.Tensor) -> torch.Tensor:
        """The context U-Net's features at the latent's size (padded to its multiple, then cropped).

        The padding also leaves at least 2 elements per axis at the coarsest level, where instance
        norm needs more than one."""
        size = z.shape[2:]
        m = self.context_multiple
        pad: list[int] = []  # F.pad's order: last axis first, (before, after) per axis
        for s in size:
            pad = [0, max((-s) % m, 2 * m - s)] + pad
        if sum(pad) > 0:
            z = F.pad(z, pad, mode="replicate")
        return crop_to(self.context(z), size)


class _LatentImageModel(nn.Module):
    """A VAE and a head as one network. ``freeze_encoder`` stops gradients into the VAE."""

    def __init__(self, vae: MedVAE, head: nn.Module, freeze_encoder: bool = True) -> None:
        super().__init__()
        if not isinstance(freeze_encoder, bool):  # e.g. the string "false" from a command line
            raise InputError(
                f"freeze_encoder must be True or False, got {freeze_encoder!r}; on the command line write "
                "--freeze_encoder False (capitalised, a Python literal)."
            )
        if head.latent_channels != vae.latent_channels:
            raise InputError(
                f"{type(self).__name__}: the head takes {head.latent_channels} latent channel(s) but the VAE "
                f"gives {vae.latent_channels}; build the head with latent_channels={vae.latent_channels}."
            )
        self.vae = vae
        self.head = head
        self.freeze_encoder = freeze_encoder

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mu, sigma)`` of ``x``, without gradients when the encoder is frozen (written
        with ``torch.no_grad``, which TorchScript compiles, unlike ``torch.set_grad_enabled(flag)``)."""
        if self.freeze_encoder:
            with torch.no_grad():
                return self.vae.encode(x)
        return self.vae.encode(x)


class LatentImageClassifier(_LatentImageModel):
    """``x -> head(mu(x))``: image ``(B, C, *S)`` to logits ``(B, num_classes)``.

    Args:
        vae: the :class:`~medvae_monai.networks.MedVAE` whose posterior mean the head reads.
        head: a :class:`LatentClassifier` or :class:`LatentClassifierEnsemble`.
        freeze_encoder: train the head only (True) or fine-tune the encoder with it (False).
        orientations: test-time augmentation for 3D nodule cubes: the logits are the mean over the
            first ``orientations`` of :func:`~medvae_monai.transforms.orient_cube`'s flips and
            in-plane rotations (1: the image as given; at most 16).

    Raises:
        InputError: ``orientations`` outside 1..16, or above 1 for a 2D VAE.
    """

    def __init__(self, vae: MedVAE, head: nn.Module, freeze_encoder: bool = True, orientations: int = 1) -> None:
        super().__init__(vae, head, freeze_encoder)
        if not 1 <= int(orientations) <= NUM_CUBE_ORIENTATIONS or (int(orientations) > 1 and vae.spatial_dims != 3):
            raise InputError(f"LatentImageClassifier: orientations must be 1..{NUM_CUBE_ORIENTATIONS}, and 1 for a 2D "
                             f"VAE, got {orientations} for a {vae.spatial_dims}D VAE.")
        self.orientations = int(orientations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.encode(x)[0])
        for i in range(1, self.orientations):  # a loop, not a comprehension: TorchScript compiles it
            logits = logits + self.head(self.encode(orient_cube(x, i))[0])
        return logits / self.orientations

    def sample_logits(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Logits for ``num_samples`` posterior samples ``z ~ q(z | x)``: ``(num_samples, B, num_classes)``
        (each sample's logits averaged over the orientations)."""
        per_view = []
        for v in (orient_cube(x, i) for i in range(self.orientations)):
            mu, sigma = self.encode(v)
            per_view.append(torch.stack([self.head(self.vae.sample(mu, sigma)) for _ in range(num_samples)]))
        return torch.stack(per_view).mean(0)


class LatentImageSegmenter(_LatentImageModel):
    """``x -> head(mu(x), encoder features)``: image ``(B, C, *S)`` to logits ``(B, num_classes, *S)``.

    Inputs whose size is not a multiple of the VAE's factor are padded as the VAE pads them, and
    the logits are cropped back to the input size.

    Args:
        vae: the :class:`~medvae_monai.networks.MedVAE` to encode with.
        head: a :class:`LatentSegmenter`; with skips, built with ``skip_channels=vae.hparams["channels"]``.
        freeze_encoder: train the head only (True) or fine-tune the encoder with it (False).
    """

    def __init__(self, vae: MedVAE, head: LatentSegmenter, freeze_encoder: bool = True) -> None:
        super().__init__(vae, head, freeze_encoder)
        if head.downsample_factor != vae.downsample_factor:
            raise InputError(
                f"LatentImageSegmenter: head downsample_factor {head.downsample_factor} differs from the VAE's "
                f"{vae.downsample_factor}; build the head with the VAE's factor."
            )

    def encode_with_skips(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``(mu, sigma, skips)``; ``skips`` are the encoder features from the finest level down
        (:meth:`~medvae_monai.networks.MedVAE.encode_features`), without gradients when frozen."""
        if self.freeze_encoder:
            with torch.no_grad():
                return self.vae.encode_features(x)
        return self.vae.encode_features(x)

    def segment(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, mu, sigma)``: the logits cropped to the input size, and the posterior (for a
        reconstruction term when fine-tuning)."""
        skips: list[torch.Tensor] | None = None
        if self.head.use_skips:
            mu, sigma, skips = self.encode_with_skips(x)
        else:
            mu, sigma = self.encode(x)
        return crop_to(self.head(mu, skips), x.shape[2:]), mu, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segment(x)[0]
