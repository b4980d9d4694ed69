"""A lean KL-regularised VAE with a spatial latent, for 2D images and 3D volumes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import List  # TorchScript: typed lists of tensors (encode_features)

import torch
from monai.networks.blocks import SABlock
from monai.networks.layers import Conv
from torch import nn
from torch.nn import functional as F

from ..errors import InputError

__all__ = ["MedVAE", "ResBlock", "LatentAttention", "depth_to_space", "space_to_depth"]


def space_to_depth(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Fold each 2x2(x2) block into channels: ``(B, C, *S) -> (B, C * 2**d, *(S / 2))``.

    A TorchScript-friendly 2D/3D pixel unshuffle (MONAI's generic one is not scriptable).
    """
    if spatial_dims == 2:
        return F.pixel_unshuffle(x, 2)
    b, c, h, w, d = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2, d // 2, 2)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c * 8, h // 2, w // 2, d // 2)


def depth_to_space(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Inverse of :func:`space_to_depth`: ``(B, C * 2**d, *S) -> (B, C, *(2 * S))``."""
    if spatial_dims == 2:
        return F.pixel_shuffle(x, 2)
    b, c8, h, w, d = x.shape
    c = c8 // 8
    x = x.reshape(b, c, 2, 2, 2, h, w, d)
    return x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, c, h * 2, w * 2, d * 2)


class ResBlock(nn.Module):
    """Normalisation-free residual block: ``x + gain * conv(act(conv(act(x))))``.

    The gain starts at zero (SkipInit), which keeps the block an identity at initialisation and
    trains stably without GroupNorm, whose extra passes are costly on CPUs.

    Args:
        spatial_dims: 2 or 3.
        channels: input and output channels.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.conv1 = conv(channels, channels, kernel_size=3, padding=1)
        self.conv2 = conv(channels, channels, kernel_size=3, padding=1)
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(x))
        h = self.conv2(F.silu(h))
        return x + self.gain * h


class LatentAttention(nn.Module):
    """Global self-attention over the bottleneck positions (MONAI ``SABlock``), with a residual."""

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.attn = SABlock(hidden_size=channels, num_heads=num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, N, C)
        out = self.attn(tokens).transpose(1, 2).reshape(x.shape)
        return x + out


class MedVAE(nn.Module):
    """KL-regularised variational autoencoder with a spatial latent.

    The encoder folds each 2x2(x2) patch into channels (pixel unshuffle) before its first
    convolution, works at ``1/2`` resolution and below, and halves the resolution once per further
    level. The decoder mirrors it with sub-pixel (pixel shuffle) upsampling. Compared with MONAI's
    ``AutoencoderKL`` this drops GroupNorm and full-resolution convolutions, which dominate CPU time,
    and puts more of the capacity in the decoder, where reconstruction quality is decided.

    Inputs whose spatial size is not a multiple of ``downsample_factor`` are zero-padded at the end
    of each spatial axis before encoding, and :meth:`forward` crops the reconstruction back, so
    any size of at least ``downsample_factor`` works. :meth:`decode` returns the padded size unless
    ``spatial_size`` is given.

    Like diffusers' ``AutoencoderKL.enable_tiling``, :meth:`enable_tiling` makes :meth:`encode` and
    :meth:`decode` work tile by tile (overlapping tiles, blended seams,
    :mod:`medvae_monai.latents.tiling`) on inputs with a side above the tile size, so memory is
    bounded by the tile whatever the image size; smaller inputs take the whole-image path.

    Args:
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: image channels (1 for greyscale, 3 for RGB). The output has the same number.
        latent_channels: channels of the latent ``z``.
        channels: feature channels per encoder level, from the finest level down. The number of
            levels sets the downsampling factor: ``downsample_factor == 2 ** len(channels)``.
        downsample_factor: 4 or 8 (any power of two >= 2 is accepted). Checked against
            ``channels``.
        num_res_blocks: residual blocks per encoder level.
        decoder_res_blocks: residual blocks per decoder level; defaults to ``num_res_blocks + 1``.
        attention: add a global self-attention block at the bottleneck of encoder and decoder.

    Shapes:
        ``x``: ``(B, in_channels, *S)``; ``mu``/``sigma``/``z``: ``(B, latent_channels, *ceil(S / f))``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        latent_channels: int = 1,
        channels: Sequence[int] = (32, 64),
        downsample_factor: int = 4,
        num_res_blocks: int = 1,
        decoder_res_blocks: int | None = None,
        attention: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"MedVAE: spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 1 or latent_channels < 1:
            raise ValueError("MedVAE: in_channels and latent_channels must be positive.")
        levels = int(round(math.log2(downsample_factor))) if downsample_factor > 1 else 0
        if downsample_factor < 2 or 2**levels != downsample_factor:
            raise ValueError(f"MedVAE: downsample_factor must be a power of two >= 2, got {downsample_factor}.")
        channels = tuple(int(c) for c in channels)
        if len(channels) != levels:
            raise ValueError(
                f"MedVAE: downsample_factor={downsample_factor} needs {levels} entries in `channels` "
                f"(one per level), got {len(channels)}: {channels}. Add or remove levels to match."
            )
        self.hparams = {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "latent_channels": latent_channels,
            "channels": tuple(channels),
            "downsample_factor": downsample_factor,
            "num_res_blocks": num_res_blocks,
            "decoder_res_blocks": decoder_res_blocks,
            "attention": attention,
        }
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.downsample_factor = downsample_factor
        self.tile_size: int | None = None  # image voxels per tile side; None: whole images (enable_tiling)
        self.tile_overlap: int = 0
        conv = Conv[Conv.CONV, spatial_dims]
        fold = 2**spatial_dims  # channels gained by one pixel (un)shuffle step
        decoder_res_blocks = num_res_blocks + 1 if decoder_res_blocks is None else decoder_res_blocks

        enc: list[nn.Module] = [conv(in_channels * fold, channels[0], kernel_size=3, padding=1)]
        self.level_ends: list[int] = []  # encoder indices of the stride-2 convolutions that end each level
        for i, ch in enumerate(channels):
            enc += [ResBlock(spatial_dims, ch) for _ in range(num_res_blocks)]
            if i + 1 < len(channels):
                self.level_ends.append(len(enc))
                enc.append(conv(ch, channels[i + 1], kernel_size=3, stride=2, padding=1))
        if attention:
            enc.append(LatentAttention(channels[-1]))
        self.encoder = nn.Sequential(*enc)
        self.to_moments = conv(channels[-1], 2 * latent_channels, kernel_size=3, padding=1)

        self.from_latent = conv(latent_channels, channels[-1], kernel_size=3, padding=1)
        self.attention = LatentAttention(channels[-1]) if attention else nn.Identity()
        self.up_blocks = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for i in reversed(range(len(channels))):
            self.up_blocks.append(nn.Sequential(*[ResBlock(spatial_dims, channels[i]) for _ in range(decoder_res_blocks)]))
            out_ch = channels[i - 1] if i > 0 else in_channels
            self.up_convs.append(conv(channels[i], out_ch * fold, kernel_size=3, padding=1))

    def pad_to_factor(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad the end of each spatial axis of ``x`` to a multiple of ``downsample_factor``."""
        f = self.downsample_factor
        pads: list[int] = []
        for i in range(x.ndim - 1, 1, -1):  # F.pad lists the last axis first
            pads += [0, (f - x.shape[i] % f) % f]
        return F.pad(x, pads)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError that says what to change if ``x`` cannot be encoded."""
        if x.ndim != self.spatial_dims + 2:
            axes = "H, W" if self.spatial_dims == 2 else "H, W, D"
            raise ValueError(
                f"MedVAE expects a {self.spatial_dims + 2}D tensor (B, C, {axes}), got shape {tuple(x.shape)}. "
                f"Add the batch/channel dimensions or use spatial_dims={x.ndim - 2}."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"MedVAE expects {self.in_channels} input channel(s), got {x.shape[1]} (shape {tuple(x.shape)}). "
                "Convert the image (e.g. RGB to greyscale) or build the model with the matching in_channels."
            )
        if min(x.shape[2:]) < self.downsample_factor:
            raise ValueError(
                f"MedVAE: every spatial size must be at least the downsampling factor {self.downsample_factor}, "
                f"got {tuple(x.shape[2:])}. Pad or resample the input."
            )

    def enable_tiling(self, tile_size: int | None = 512, overlap: int = 64) -> MedVAE:
        """Encode and decode inputs with a side above ``tile_size`` tile by tile; returns ``self``.

        The network is fully convolutional (without ``attention``), so a tile larger than the
        training images changes nothing but memory, and the result matches the whole-image one up
        to the receptive field at the seams (``tests/test_tiling.py``). With ``attention`` the tile
        should be the training size, since attention sees one tile at a time. Tiling applies in
        eval mode only: training takes whole images, with gradients.

        Args:
            tile_size: tile edge in image voxels, a multiple of ``downsample_factor``; ``None``
                disables tiling.
            overlap: image voxels shared by neighbouring tiles, a multiple of ``downsample_factor``
                and below ``tile_size``.

        Raises:
            InputError: (a ``ValueError``) sizes that are not multiples of ``downsample_factor``, or an
                overlap not below ``tile_size``.
        """
        f = self.downsample_factor
        if tile_size is not None and (tile_size % f or overlap % f or not 0 <= overlap < tile_size):
            raise InputError(
                f"tiling: tile size {tile_size} and overlap {overlap} must be multiples of the downsampling factor {f} "
                f"with 0 <= overlap < tile size, e.g. {64 * f} and {8 * f} (on the command line --tile_size and "
                "--tile_overlap, --overlap on encoding)."
            )
        self.tile_size = None if tile_size is None else int(tile_size)
        self.tile_overlap = int(overlap)
        return self

    def _tiles(self, spatial: list[int], scale: int) -> bool:
        # eval mode only: tiles run without gradients, so training always takes whole images
        return self.tile_size is not None and not self.training and max(spatial) * scale > self.tile_size

    @torch.jit.unused
    def _tiled_encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ..latents.tiling import tiled_posterior  # the tiling module builds on this one

        tile, overlap = self.tile_size, self.tile_overlap
        self.tile_size = None  # tiles take the whole-image path
        try:
            mu, sigma = tiled_posterior(self, x, tile, overlap)
        finally:
            self.tile_size = tile
        return mu.to(x.device), sigma.to(x.device)

    @torch.jit.unused
    def _tiled_decode(self, z: torch.Tensor, spatial_size: list[int] | None) -> torch.Tensor:
        from ..latents.tiling import tiled_decode

        f, tile, overlap = self.downsample_factor, self.tile_size, self.tile_overlap
        self.tile_size = None
        try:
            return tiled_decode(self, z, tile // f, overlap // f, spatial_size).to(z.device)
        finally:
            self.tile_size = tile

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the posterior ``(mu, sigma)``, each ``(B, latent_channels, *ceil(S / f))``."""
        if not torch.jit.is_scripting():  # TorchScript cannot compile the message formatting
            self.check_input(x)
            if self._tiles(list(x.shape[2:]), 1):
                return self._tiled_encode(x)
        h = space_to_depth(self.pad_to_factor(x), self.spatial_dims)
        return self.posterior(self.encoder(h))

    def posterior(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, sigma)`` from the encoder's last features ``(B, channels[-1], *ceil(S / f))``."""
        mu, logvar = self.to_moments(features).chunk(2, dim=1)
        sigma = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))  # keeps sigma numerically safe
        return mu, sigma

    def encode_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """:meth:`encode` that also returns the encoder's features at the end of each level, finest first:
        ``features[i]`` is ``(B, channels[i], *ceil(S / 2 ** (i + 1)))``, the last one the input of
        :meth:`posterior`. A segmentation head concatenates them in, U-Net style. (``List``: TorchScript
        does not resolve ``list[torch.Tensor]`` in a string annotation.)"""
        if not torch.jit.is_scripting():  # TorchScript cannot compile the message formatting
            self.check_input(x)
        h = space_to_depth(self.pad_to_factor(x), self.spatial_dims)
        features = torch.jit.annotate(List[torch.Tensor], [])
        for i, layer in enumerate(self.encoder):
            if i in self.level_ends:
                features.append(h)
            h = layer(h)
        features.append(h)
        mu, sigma = self.posterior(h)
        return mu, sigma, features

    @staticmethod
    def sample(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Reparameterised sample ``z = mu + sigma * eps`` with ``eps ~ N(0, I)``."""
        return mu + sigma * torch.randn_like(sigma)

    def decode(self, z: torch.Tensor, spatial_size: list[int] | None = None) -> torch.Tensor:
        """Decode ``z`` of shape ``(B, latent_channels, *L)`` to ``(B, in_channels, *(L * f))``.

        Args:
            z: latent tensor.
            spatial_size: optional original image size; the output is cropped to it.
        """
        if z.ndim != self.spatial_dims + 2 or z.shape[1] != self.latent_channels:
            raise ValueError(
                "MedVAE.decode expects (B, latent_channels, *spatial) with spatial_dims spatial dims; got a latent "
                "of another shape (check latent_channels and spatial_dims against the encoder's)."
            )
        if not torch.jit.is_scripting():  # a separate `if`: TorchScript skips only this form's body
            if self._tiles(list(z.shape[2:]), self.downsample_factor):
                return self._tiled_decode(z, spatial_size)
        h = self.attention(self.from_latent(z))
        for i, (blocks, up) in enumerate(zip(self.up_blocks, self.up_convs)):
            h = blocks(h)
            if i + 1 < len(self.up_convs):
                h = F.silu(h)
            h = depth_to_space(up(h), self.spatial_dims)
        if spatial_size is not None:
            for axis, size in enumerate(spatial_size):
                h = h.narrow(axis + 2, 0, int(size))
        return h

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(reconstruction, mu, sigma)``; the reconstruction has the input's shape."""
        mu, sigma = self.encode(x)
        z = self.sample(mu, sigma) if self.training else mu
        return self.decode(z, spatial_size=list(x.shape[2:])), mu, sigma

    @classmethod
    def from_vae(cls, vae: MedVAE) -> MedVAE:
        """A ``cls`` (e.g. an export variant) with ``vae``'s architecture and a copy of its weights."""
        net = cls(**vae.hparams)
        net.load_state_dict(vae.state_dict())
        net.enable_tiling(vae.tile_size, vae.tile_overlap)
        return net.to(next(vae.parameters()).device)

    @property
    def compression(self) -> float:
        """Input elements per latent element, e.g. 16 for 64x64x1 -> 16x16x1."""
        return self.in_channels * self.downsample_factor**self.spatial_dims / self.latent_channels

    def latent_shape(self, spatial_size: Sequence[int]) -> tuple[int, ...]:
        """Latent shape ``(latent_channels, *ceil(S / f))`` for an image of ``spatial_size``."""
        f = self.downsample_factor
        return (self.latent_channels, *(-(-int(s) // f) for s in spatial_size))
