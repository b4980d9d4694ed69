"""CT windowing, image checks, and the geometry-preserving latent round trip."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from medvae_monai.errors import InputError
from medvae_monai.inferers import VAEInferer
from medvae_monai.networks import MedVAE
from medvae_monai.transforms import (
    CTWindow,
    CTWindowd,
    CheckImaged,
    ImageGeometryd,
    LatentGeometryd,
    image_affine,
    latent_affine,
    window_bounds,
)


def test_ct_window_presets_and_scaling():
    assert window_bounds("lung") == (-1350.0, 150.0)
    assert window_bounds((40, 400)) == (-160.0, 240.0)
    hu = torch.tensor([[-2000.0, -160.0, 40.0, 240.0, 3000.0]])
    out = CTWindow((40, 400))(hu)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 0.5, 1.0, 1.0]]))
    d = CTWindowd("image", "abdomen")({"image": hu})
    torch.testing.assert_close(d["image"], out)
    with pytest.raises(ValueError, match="Unknown CT window"):
        CTWindow("spleen")
    with pytest.raises(ValueError, match="width"):
        CTWindow((0, 0))


def test_check_image_errors_name_the_file():
    img = MetaTensor(torch.rand(3, 16, 16), meta={"filename_or_obj": "/data/rgb.png"})
    with pytest.raises(InputError, match=r"/data/rgb.png.*takes 1 channel"):
        CheckImaged("image", channels=1, spatial_dims=2)({"image": img})
    with pytest.raises(InputError, match="expected a 3D image.*4D .*select one 3D volume"):
        CheckImaged("image", spatial_dims=3)({"image": MetaTensor(torch.rand(1, 4, 4, 4, 2))})
    # 2D/3D mix-ups name --spatial_dims, not a 4D volume
    with pytest.raises(InputError, match="a 3D volume and the model is 2D.*--spatial_dims 3"):
        CheckImaged("image", spatial_dims=2)({"image": MetaTensor(torch.rand(1, 4, 4, 4))})
    with pytest.raises(InputError, match="a 2D image and the model is 3D.*--spatial_dims 2"):
        CheckImaged("image", spatial_dims=3)({"image": MetaTensor(torch.rand(1, 4, 4))})
    bad = torch.rand(1, 8, 8)
    bad[0, 1, 1] = float("nan")
    with pytest.raises(InputError, match="1 NaN/Inf"):
        CheckImaged("image")({"image": bad})
    with pytest.raises(InputError, match="below the minimum 4"):
        CheckImaged("image", min_size=4)({"image": torch.rand(1, 2, 8)})
    ok = {"image": torch.rand(1, 8, 8)}
    assert CheckImaged("image", channels=1, spatial_dims=2, min_size=4)(ok)["image"] is ok["image"]


def test_latent_affine_centres_blocks():
    aff = torch.tensor([[0.5, 0, 0, 10.0], [0, 0.5, 0, -3.0], [0, 0, 2.0, 7.0], [0, 0, 0, 1]], dtype=torch.float64)
    lat = latent_affine(aff, 3, 4)
    # latent voxel 0 sits at the centre of image voxels 0..3, i.e. image index 1.5
    centre = aff @ torch.tensor([1.5, 1.5, 1.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(lat[:, 3], centre)
    torch.testing.assert_close(torch.diag(lat)[:3], torch.tensor([2.0, 2.0, 8.0], dtype=torch.float64))
    torch.testing.assert_close(image_affine(lat, 3, 4), aff)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (30, 21)), (3, (13, 16, 9))])
def test_encode_decode_keeps_geometry(spatial_dims, shape):
    torch.manual_seed(0)
    net = MedVAE(spatial_dims, 1, 2, (8, 16), 4).eval()
    aff = torch.eye(4, dtype=torch.float64)
    aff[0, 0], aff[1, 1], aff[2, 2] = 0.7, 0.8, 2.5
    aff[:3, 3] = torch.tensor([-100.0, 20.0, 5.0])
    img = MetaTensor(torch.rand(1, *shape), affine=aff, meta={"filename_or_obj": "case.nii.gz"})
    with torch.no_grad():
        mu, sigma = net.encode(img.as_tensor()[None])
    d = LatentGeometryd(["image_latent", "image_sigma"], "image", 4)({"image": img, "image_latent": mu[0], "image_sigma": sigma[0]})
    z = d["image_latent"]
    assert z.shape == (2, *(-(-s // 4) for s in shape))
    assert d["image_sigma"].shape == z.shape
    torch.testing.assert_close(z.affine, latent_affine(aff, spatial_dims, 4).to(z.affine.dtype))
    with torch.no_grad():
        d["decoded"] = net.decode(z.as_tensor()[None])[0]  # the padded size: the geometry crops it
    out = ImageGeometryd("decoded", latent_key="image_latent")(d)["decoded"]
    assert out.shape == img.shape
    torch.testing.assert_close(out.affine, img.affine)
    assert out.meta["filename_or_obj"] == "case.nii.gz"
    with torch.no_grad():
        expected = net(img.as_tensor()[None])[0][0]
    torch.testing.assert_close(out.as_tensor(), expected)
    torch.testing.assert_close(VAEInferer()(img[None], net)[0].as_tensor(), expected)  # the inferer's reconstruction
    # a latent carrying only its own affine (e.g. read back from a NIfTI) decodes to the block grid
    bare = MetaTensor(z.as_tensor(), affine=z.affine)
    with torch.no_grad():
        decoded = net.decode(bare.as_tensor()[None])[0]
    out2 = ImageGeometryd("z_decoded", latent_key="z")({"z": bare, "z_decoded": decoded})["z_decoded"]
    assert out2.shape[1:] == tuple(4 * s for s in z.shape[1:])
    torch.testing.assert_close(out2.affine, img.affine)


def test_latent_geometry_for_precomputed_latents():
    img = MetaTensor(torch.rand(1, 16, 16), affine=torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0], dtype=torch.float64)))
    d = LatentGeometryd("pred", "image", 4)({"image": img, "pred": torch.rand(1, 4, 4)})
    assert d["pred"].affine[0, 0] == 8.0 and d["pred"].affine[0, 3] == 3.0


def test_loading_prints_no_gpu_decoder_notice(tmp_path, caplog, recwarn):
    """MONAI's nvImageCodec DICOM reader warns on CPU-only machines; the package's loader keeps it quiet."""
    import logging

    import numpy as np
    from PIL import Image

    from medvae_monai.transforms import LoadImageCheckedd

    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "a.png")
    with caplog.at_level(logging.WARNING):
        out = LoadImageCheckedd("image", image_only=True)({"image": str(tmp_path / "a.png")})
    assert out["image"].shape == (8, 8)
    assert not [r for r in caplog.records if "nvImageCodec" in r.getMessage()]
    assert not [w for w in recwarn if "nvImageCodec" in str(w.message)]
