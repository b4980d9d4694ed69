"""Tiled encoding/decoding: coverage of the tile grid, and tiled against untiled results.

Tolerance: the network's receptive field reaches past a tile's border, so tiled outputs differ
from untiled ones near seams. With an overlap of 32 image voxels (8 latent voxels) the largest
difference, measured on the volumes below, is about 0.2-0.5 % of the output's range; the tests
allow 1 %. A single tile covering the whole input is exact.
"""

from __future__ import annotations

import pytest
import torch

from medvae_monai.errors import InputError
from medvae_monai.latents import tile_starts, tiled_decode, tiled_encode
from medvae_monai.networks import MedVAE
from medvae_monai.networks.vae import ResBlock

TOLERANCE = 0.01  # of the untiled output's range


def _network(spatial_dims: int) -> MedVAE:
    """A random MedVAE whose residual blocks are active (their gain starts at zero), so the
    receptive field is as wide as a trained model's."""
    torch.manual_seed(0)
    net = MedVAE(spatial_dims, 1).eval()
    for m in net.modules():
        if isinstance(m, ResBlock):
            m.gain.data.fill_(0.5)
    return net


def _relative_error(tiled: torch.Tensor, full: torch.Tensor) -> float:
    return float((tiled - full).abs().max() / (full.max() - full.min()))


@pytest.mark.parametrize("size,tile,step", [(200, 96, 64), (64, 40, 16), (40, 64, 32), (96, 32, 32), (100, 48, 40)])
def test_tile_starts_cover_and_align(size, tile, step):
    starts = tile_starts(size, tile, step)
    covered = torch.zeros(size, dtype=torch.bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()
    assert starts[0] == 0 and min(starts[-1] + tile, size) == size
    if size % 8 == 0 and tile % 8 == 0 and step % 8 == 0:
        assert all(s % 8 == 0 for s in starts)


@pytest.mark.parametrize(
    "spatial_dims,size,tile,overlap",
    [(2, (200, 168), 96, 32), (3, (64, 56, 48), 48, 32)],
)
def test_tiled_matches_untiled(spatial_dims, size, tile, overlap):
    net = _network(spatial_dims)
    torch.manual_seed(1)
    x = torch.rand(1, 1, *size)
    with torch.no_grad():
        mu = net.encode(x)[0]
        recon = net.decode(mu, spatial_size=size)
    mu_tiled = tiled_encode(net, x, tile_size=tile, overlap=overlap)
    assert mu_tiled.shape == mu.shape
    assert _relative_error(mu_tiled, mu) < TOLERANCE
    # decoding needs only the latent: no image goes in
    recon_tiled = tiled_decode(net, mu, tile_size=tile // 4, overlap=overlap // 4, spatial_size=size)
    assert recon_tiled.shape == recon.shape == x.shape
    assert _relative_error(recon_tiled, recon) < TOLERANCE


def test_tiling_without_overlap_has_visible_seams():
    """The blending is what keeps seams small: with no overlap the error is far larger."""
    net = _network(2)
    torch.manual_seed(1)
    x = torch.rand(1, 1, 128, 128)
    with torch.no_grad():
        mu = net.encode(x)[0]
    assert _relative_error(tiled_encode(net, x, tile_size=64, overlap=0), mu) > 3 * TOLERANCE
    assert _relative_error(tiled_encode(net, x, tile_size=64, overlap=32), mu) < TOLERANCE


def test_single_tile_is_exact_and_pads_odd_sizes():
    net = _network(2)
    x = torch.rand(2, 1, 37, 50)  # not multiples of the factor 4: padded, then cropped back
    with torch.no_grad():
        mu = net.encode(x)[0]
        recon = net.decode(mu, spatial_size=x.shape[2:])
    torch.testing.assert_close(tiled_encode(net, x, tile_size=64, overlap=16), mu, rtol=0, atol=1e-6)
    out = tiled_decode(net, mu, tile_size=16, overlap=4, spatial_size=x.shape[2:])
    torch.testing.assert_close(out, recon, rtol=0, atol=1e-6)
    assert tiled_decode(net, mu, tile_size=8, overlap=4).shape == (2, 1, 40, 52)


def test_bad_tiles_are_refused():
    net = _network(2)
    x = torch.rand(1, 1, 64, 64)
    with pytest.raises(InputError, match="multiples of 4"):
        tiled_encode(net, x, tile_size=30, overlap=8)
    with pytest.raises(InputError, match="overlap < tile"):
        tiled_encode(net, x, tile_size=32, overlap=32)
    with pytest.raises(InputError, match="latent"):
        tiled_decode(net, torch.rand(1, 2, 16, 16))


def test_enable_tiling_makes_encode_and_decode_tile_large_inputs_only(monkeypatch):
    """diffusers-style model method: inputs above the tile size go through tiles, others do not."""
    import medvae_monai.latents.tiling as tiling

    net = _network(2)
    torch.manual_seed(2)
    big, small = torch.rand(1, 1, 200, 168), torch.rand(1, 1, 64, 48)
    with torch.no_grad():
        mu, sigma = net.encode(big)
        recon = net.decode(mu, spatial_size=[200, 168])
        small_mu = net.encode(small)[0]
    calls, tiled = [], tiling._tiled
    monkeypatch.setattr(tiling, "_tiled", lambda *a, **k: calls.append(a[2]) or tiled(*a, **k))
    assert net.enable_tiling(96, 32) is net
    with torch.no_grad():
        mu_t, sigma_t = net.encode(big)
        recon_t = net.decode(mu_t, spatial_size=[200, 168])
        assert calls == [96, 24]  # one tiled encode (image voxels), one tiled decode (latent voxels)
        torch.testing.assert_close(net.encode(small)[0], small_mu)  # no side above 96: whole image
    assert len(calls) == 2 and net.tile_size == 96
    assert _relative_error(mu_t, mu) < TOLERANCE and _relative_error(sigma_t, sigma) < TOLERANCE
    assert recon_t.shape == big.shape and _relative_error(recon_t, recon) < TOLERANCE
    with pytest.raises(ValueError, match="multiples of the downsampling factor 4"):
        net.enable_tiling(98, 32)
    assert net.enable_tiling(None).tile_size is None
