"""MedVAE shapes in 2D and 3D, odd sizes, configuration checks, and the export variants."""

from __future__ import annotations

import pytest
import torch

from medvae_monai.errors import InputError
from medvae_monai.networks import MedVAE, VAEDecoder, VAEEncoderMean, VAEReconstruction


@pytest.mark.parametrize(
    "spatial_dims,size,factor,channels,latent,in_ch",
    [
        (2, (64, 64), 4, (32, 64), 1, 1),
        (2, (63, 50), 4, (16, 32), 2, 1),  # not a multiple of the factor: padded and cropped back
        (2, (64, 48), 8, (8, 16, 16), 4, 3),
        (3, (16, 16, 16), 4, (8, 16), 1, 1),
        (3, (19, 13, 9), 4, (8, 16), 3, 1),
    ],
)
def test_shapes(spatial_dims, size, factor, channels, latent, in_ch):
    torch.manual_seed(0)
    net = MedVAE(spatial_dims, in_ch, latent, channels, factor)
    x = torch.rand(2, in_ch, *size)
    recon, mu, sigma = net(x)
    lat = net.latent_shape(size)
    assert recon.shape == x.shape
    assert mu.shape == sigma.shape == (2, *lat)
    assert lat == (latent, *(-(-s // factor) for s in size))
    assert (sigma > 0).all()
    # decode without a size gives the padded size
    assert net.decode(mu).shape[2:] == tuple(s * factor for s in lat[1:])


def test_attention_and_eval_is_deterministic():
    net = MedVAE(2, 1, 1, (8, 16), 4, attention=True).eval()
    x = torch.rand(1, 1, 32, 32)
    r1, mu, _ = net(x)
    r2, _, _ = net(x)
    assert torch.equal(r1, r2)  # eval mode decodes the mean
    net.train()
    r3, _, _ = net(x)
    assert not torch.equal(r1, r3)  # training mode samples


def test_compression():
    assert MedVAE(2, 1, 1, (32, 64), 4).compression == 16
    assert MedVAE(3, 1, 4, (8, 16, 32), 8).compression == 128


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"downsample_factor": 6}, "power of two"),
        ({"downsample_factor": 8, "channels": (32, 64)}, "needs 3 entries"),
        ({"spatial_dims": 1}, "spatial_dims"),
    ],
)
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MedVAE(**kwargs)


def test_bad_inputs_are_named():
    net = MedVAE(2, 1)
    with pytest.raises(ValueError, match="expects 1 input channel"):
        net(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="4D tensor"):
        net(torch.rand(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="at least the downsampling factor"):
        net(torch.rand(1, 1, 2, 64))


def test_export_variants_share_weights_and_match():
    torch.manual_seed(0)
    vae = MedVAE(2, 1, 1, (8, 16), 4).eval()
    x = torch.rand(2, 1, 30, 30)
    rec, mu, _ = vae(x)
    recon_net = VAEReconstruction.from_vae(vae).eval()
    enc = VAEEncoderMean.from_vae(vae).eval()
    dec = VAEDecoder.from_vae(vae).eval()
    assert set(recon_net.state_dict()) == set(vae.state_dict())
    torch.testing.assert_close(recon_net(x), rec)
    torch.testing.assert_close(enc(x), mu)
    torch.testing.assert_close(dec(mu)[..., :30, :30], rec)


@pytest.mark.parametrize("cls", [VAEReconstruction, VAEEncoderMean])
def test_torchscript_export(cls, tmp_path):
    torch.manual_seed(0)
    net = cls(2, 1, 1, (8, 16), 4).eval()
    x = torch.rand(1, 1, 28, 36)
    scripted = torch.jit.script(net)
    path = tmp_path / "net.ts"
    scripted.save(str(path))
    loaded = torch.jit.load(str(path))
    torch.testing.assert_close(loaded(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_space_to_depth_round_trip(spatial_dims):
    from medvae_monai.networks.vae import depth_to_space, space_to_depth

    x = torch.rand(2, 3, *([4] * spatial_dims))
    y = space_to_depth(x, spatial_dims)
    assert y.shape == (2, 3 * 2**spatial_dims, *([2] * spatial_dims))
    assert torch.equal(depth_to_space(y, spatial_dims), x)
    # each output channel holds one position of every 2x2(x2) block
    assert torch.equal(y[:, 0], x[(slice(None), 0) + (slice(0, None, 2),) * spatial_dims])
