"""Feature-extraction transforms: 2D and 3D, geometry kept, deterministic, the three uses."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from medvae_monai.errors import InputError
from medvae_monai.transforms import FEATURES, FeatureExtract, FeatureExtractd, feature_channels


def _image(dims: int) -> MetaTensor:
    torch.manual_seed(0)
    size = (24, 20) if dims == 2 else (12, 10, 8)
    affine = torch.diag(torch.tensor([0.7, 0.8, 2.5, 1.0], dtype=torch.float64))
    affine[:3, 3] = torch.tensor([-10.0, 5.0, 3.0], dtype=torch.float64)
    return MetaTensor(torch.rand(1, *size), affine=affine, meta={"filename_or_obj": "case0.nii.gz"})


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("feature", FEATURES)
def test_features_keep_geometry_and_are_deterministic(feature, dims):
    img = _image(dims)
    for mode, channels in (("replace", 1), ("channels", 2)):
        out = FeatureExtract(feature, mode)(img)
        assert out.shape == (channels, *img.shape[1:]) and channels == feature_channels(1, mode)
        assert torch.equal(out.affine, img.affine) and out.meta["filename_or_obj"] == "case0.nii.gz"
        assert torch.equal(out, FeatureExtract(feature, mode)(img))  # deterministic
        assert torch.isfinite(out).all()
    if mode == "channels":
        assert torch.equal(out[:1].as_tensor(), img.as_tensor())  # the image is kept as channel 0


def test_edge_magnitude_marks_edges_in_unit_range():
    img = torch.zeros(1, 16, 16)
    img[:, :, 8:] = 1.0  # a vertical step edge between columns 7 and 8
    mag = FeatureExtract("sobel", "replace")(img)[0]
    assert 0.0 <= float(mag.min()) and float(mag.max()) <= 1.0
    assert mag[:, 7:9].min() > 0.3 and mag[:, :5].max() == 0 and mag[:, 11:].max() == 0


def test_dict_modes_and_errors():
    img = _image(2)
    d = FeatureExtractd("image", "gaussian", "key", sigma=1.5)({"image": img})
    assert torch.equal(d["image"], img) and d["image_gaussian"].shape == img.shape  # heads-only: image untouched
    assert d["image_gaussian"].std() < img.std()
    d = FeatureExtractd("image", "histeq", "channels")({"image": img})
    assert d["image"].shape[0] == 2 and float(d["image"][1].max()) == pytest.approx(1.0)
    with pytest.raises(InputError, match="unknown feature"):
        FeatureExtract("canny")
    with pytest.raises(InputError, match="mode"):
        FeatureExtract("sobel", "key")
