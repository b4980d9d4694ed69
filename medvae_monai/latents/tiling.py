"""Encode and decode 2D/3D inputs of any size through overlapping tiles with blended seams.

Tiles start on multiples of the VAE's downsampling factor ``f``, so an image tile maps onto an
exact block of latent voxels and back. Each tile's output is weighted by a separable window that
is zero on the outer quarter of every overlap shared with a neighbour (where the missing context
changes the result most), ramps linearly across the middle half and is one elsewhere; volume
borders are never tapered. The weighted sum is divided by the weight sum, which is the product of
one 1D sum per axis, so no full-size weight map is held. Peak memory is the input, the output and
one tile's activations: bounded by the tile size, not by the volume size, beyond the two arrays.

The result matches the untiled one up to the network's receptive field reaching past a tile:
``tests/test_tiling.py`` states the tolerance. With ``attention=True`` (global attention) tiled
and untiled results differ more, since attention sees one tile at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch

from ..errors import InputError

__all__ = ["tile_starts", "tiled_encode", "tiled_decode", "tiled_posterior"]


def tile_starts(size: int, tile: int, step: int) -> list[int]:
    """Start offsets of tiles of length ``tile``, ``step`` apart, covering ``0 .. size``; the last tile
    ends at ``size``. If ``size``, ``tile`` and ``step`` are multiples of ``f``, so is every offset."""
    if tile >= size:
        return [0]
    starts = list(range(0, size - tile + 1, step))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _axis_window(start: int, length: int, size: int, overlap: int) -> torch.Tensor:
    """1D blend weights of a tile ``[start, start + length)`` on an axis of ``size`` voxels."""
    i = torch.arange(length, dtype=torch.float32) + 0.5
    w = torch.ones(length)
    if overlap <= 0:
        return w
    cut, ramp = overlap / 4.0, overlap / 2.0
    if start > 0:  # a neighbour on the left
        w = torch.minimum(w, ((i - cut) / ramp).clamp(0.0, 1.0))
    if start + length < size:  # a neighbour on the right
        w = torch.minimum(w, ((length - i - cut) / ramp).clamp(0.0, 1.0))
    return w


def _tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int,
    align: int,
    scale: float,
    out_channels: int,
    device: torch.device,
) -> torch.Tensor:
    """Apply ``fn`` to overlapping tiles of ``x (B, C, *S)`` whose outputs are ``scale`` times larger."""
    size = [int(s) for s in x.shape[2:]]
    if tile % align or overlap % align or not 0 <= overlap < tile:
        raise InputError(
            f"tile size {tile} and overlap {overlap} must be multiples of {align} with 0 <= overlap < tile; "
            f"e.g. tile_size={4 * align * 8}, overlap={align * 8}."
        )
    step = tile - overlap
    # tiles must start on multiples of `align`: sizes are padded to a multiple of it by the caller
    grids = [tile_starts(s, tile, step) for s in size]
    out_size = [int(round(s * scale)) for s in size]
    out = torch.zeros((x.shape[0], out_channels, *out_size), dtype=torch.float32)
    o_tile, o_overlap = int(round(tile * scale)), int(round(overlap * scale))
    norms = []  # per-axis sums of the 1D windows: their product is the full weight sum
    for s, o_s, starts in zip(size, out_size, grids):
        norm = torch.zeros(o_s)
        for st in starts:
            o_st, n = int(round(st * scale)), min(o_tile, o_s)
            norm[o_st : o_st + n] += _axis_window(o_st, n, o_s, o_overlap)
        norms.append(norm)
    for starts in itertools.product(*grids):
        src = (slice(None), slice(None)) + tuple(slice(st, st + min(tile, s)) for st, s in zip(starts, size))
        y = fn(x[src].to(device)).float().cpu()
        o_starts = [int(round(st * scale)) for st in starts]
        w = torch.ones(())
        for o_st, n, o_s in zip(o_starts, y.shape[2:], out_size):
            w = w[..., None] * _axis_window(o_st, n, o_s, o_overlap)
        dst = (slice(None), slice(None)) + tuple(slice(o, o + n) for o, n in zip(o_starts, y.shape[2:]))
        out[dst] += y * w
    for axis, norm in enumerate(norms):
        shape = [1] * out.ndim
        shape[2 + axis] = -1
        out /= norm.clamp_min(1e-12).view(shape)
    return out


def _check_tiles(
    network: torch.nn.Module, tile_size: int, overlap: int, unit: str, device: str | torch.device | None
) -> tuple[int, torch.device]:
    """The network's downsampling factor and the device tiles run on (default: the network's)."""
    f = int(network.downsample_factor)
    if tile_size <= 0 or overlap < 0:
        raise InputError(f"{unit} tile_size must be positive and overlap non-negative, got {tile_size}, {overlap}.")
    return f, torch.device(device) if device is not None else next(network.parameters()).device


@torch.no_grad()
def tiled_posterior(
    network: torch.nn.Module,
    image: torch.Tensor,
    tile_size: int = 128,
    overlap: int = 32,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior ``(mu, sigma)`` of ``image`` computed tile by tile (both blended across seams).

    Args:
        network: a :class:`~medvae_monai.networks.MedVAE` in eval mode.
        image: ``(B, C, *S)`` on any device (kept where it is; tiles move to ``device``).
        tile_size: tile edge in image voxels, a multiple of the downsampling factor ``f``.
        overlap: voxels shared by neighbouring tiles, a multiple of ``f``.
        device: where tiles run; defaults to the network's device.

    Returns:
        ``mu`` and ``sigma``, each ``(B, latent_channels, *ceil(S / f))`` on the CPU, float32.
    """
    f, device = _check_tiles(network, tile_size, overlap, "image", device)
    network.check_input(image)
    padded = network.pad_to_factor(image)  # sizes become multiples of f, so every tile start is aligned
    both = _tiled(
        lambda t: torch.cat(network.encode(t), dim=1), padded, tile_size, overlap, f, 1.0 / f,
        2 * network.latent_channels, device,
    )
    return both[:, : network.latent_channels], both[:, network.latent_channels :]


@torch.no_grad()
def tiled_encode(
    network: torch.nn.Module,
    image: torch.Tensor,
    tile_size: int = 128,
    overlap: int = 32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Posterior mean of ``image`` computed tile by tile: :func:`tiled_posterior`'s ``mu``.

    Returns:
        ``mu`` of shape ``(B, latent_channels, *ceil(S / f))`` on the CPU, float32.
    """
    return tiled_posterior(network, image, tile_size, overlap, device)[0]


@torch.no_grad()
def tiled_decode(
    network: torch.nn.Module,
    latent: torch.Tensor,
    tile_size: int = 32,
    overlap: int = 8,
    spatial_size: Sequence[int] | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Decode a latent tile by tile; needs only the latent, not the image it came from.

    Args:
        network: a :class:`~medvae_monai.networks.MedVAE` in eval mode.
        latent: ``(B, latent_channels, *L)``.
        tile_size: tile edge in latent voxels.
        overlap: latent voxels shared by neighbouring tiles.
        spatial_size: crop the output to this image size (the original size before padding).
        device: where tiles run; defaults to the network's device.

    Returns:
        ``(B, in_channels, *(L * f))`` (or ``spatial_size``) on the CPU, float32.
    """
    f, device = _check_tiles(network, tile_size, overlap, "latent", device)
    if latent.ndim != network.spatial_dims + 2 or latent.shape[1] != network.latent_channels:
        raise InputError(
            f"tiled_decode expects a latent (B, {network.latent_channels}, *spatial) with {network.spatial_dims} "
            f"spatial dims, got {tuple(latent.shape)}."
        )
    out = _tiled(network.decode, latent, tile_size, overlap, 1, float(f), network.in_channels, device)
    if spatial_size is not None:
        out = out[(slice(None), slice(None)) + tuple(slice(0, int(s)) for s in spatial_size)]
    return out
