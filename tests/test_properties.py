"""Property-based tests (hypothesis): transforms keep shape, dtype and geometry; CT windowing is a
projection; encode/decode shapes and geometry hold for random sizes in 2D and 3D; loaders given
random bytes raise InputError, never hang or crash."""

from __future__ import annotations

import gzip
import io
import math
import signal
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor
from PIL import Image

from medvae_monai.data import ImageSource
from medvae_monai.errors import InputError, find_input_error
from medvae_monai.inferers import VAEInferer
from medvae_monai.networks import MedVAE
from medvae_monai.transforms import (
    CT_WINDOWS,
    CheckImaged,
    CTWindow,
    ImageGeometryd,
    LatentGeometryd,
    LoadImageCheckedd,
    latent_affine,
    window_bounds,
)
from medvae_monai.utils import load_state_dict

# few examples, no per-example deadline: the point is coverage of odd cases, in seconds
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def affines(draw, spatial_dims: int) -> torch.Tensor:
    """A random non-degenerate affine: spacing 0.2-5 mm (any sign), a small rotation, any origin."""
    spacing = [draw(st.floats(0.2, 5.0)) * draw(st.sampled_from([-1.0, 1.0])) for _ in range(spatial_dims)]
    angle = draw(st.floats(-0.5, 0.5))
    a = torch.eye(spatial_dims + 1, dtype=torch.float64)
    rot = torch.eye(spatial_dims, dtype=torch.float64)
    rot[0, 0], rot[0, 1], rot[1, 0], rot[1, 1] = math.cos(angle), -math.sin(angle), math.sin(angle), math.cos(angle)
    a[:spatial_dims, :spatial_dims] = rot @ torch.diag(torch.tensor(spacing, dtype=torch.float64))
    a[:spatial_dims, -1] = torch.tensor([draw(st.floats(-300, 300)) for _ in range(spatial_dims)], dtype=torch.float64)
    return a


@st.composite
def images(draw, spatial_dims: int | None = None, max_side: int = 24) -> MetaTensor:
    """A random channel-first HU image ``(1, *S)`` with a random affine."""
    sd = spatial_dims or draw(st.sampled_from([2, 3]))
    side = max_side if sd == 2 else max_side // 2
    shape = [draw(st.integers(4, side)) for _ in range(sd)]
    seed = draw(st.integers(0, 2**32 - 1))
    data = np.random.default_rng(seed).uniform(-1200, 2500, (1, *shape)).astype(np.float32)
    return MetaTensor(torch.from_numpy(data), affine=draw(affines(sd)))


def _hu(y: torch.Tensor, window) -> torch.Tensor:
    lo, hi = window_bounds(window)
    return lo + y * (hi - lo)


windows = st.one_of(st.sampled_from(sorted(CT_WINDOWS)), st.tuples(st.floats(-1000, 1000), st.floats(1.0, 4000.0)))


@SETTINGS
@given(img=images(), window=windows)
def test_ct_window_keeps_shape_dtype_geometry_and_range(img: MetaTensor, window) -> None:
    out = CTWindow(window)(img)
    assert out.shape == img.shape and out.dtype == torch.float32
    assert torch.equal(out.affine, img.affine)
    assert out.min() >= 0.0 and out.max() <= 1.0


@SETTINGS
@given(img=images(), window=windows)
def test_ct_window_is_a_projection(img: MetaTensor, window) -> None:
    """CTWindow maps HU to [0, 1], so applying it twice is not meant to be a no-op. What is
    idempotent is the clipping it stands for: windowing the HU image that a windowed output
    represents gives that output again, ``w(hu(w(x))) == w(x)``."""
    w = CTWindow(window)
    once = w(img)
    twice = w(_hu(once, window))
    torch.testing.assert_close(twice, once, atol=1e-5, rtol=0)


@SETTINGS
@given(x=st.floats(0.0, 1.0))
def test_ct_window_on_unit_range_is_idempotent(x: float) -> None:
    """With the window [0, 1] (level 0.5, width 1) the output is its own input: idempotent."""
    w = CTWindow((0.5, 1.0))
    t = torch.full((1, 4, 4), x)
    torch.testing.assert_close(w(w(t)), w(t))


@SETTINGS
@given(img=images(), data=st.data())
def test_preprocessing_keeps_shape_and_geometry(img: MetaTensor, data) -> None:
    sd = img.ndim - 1
    intensity = data.draw(st.sampled_from(["ct", "percentile", "uint8", "none"]))
    xform = ImageSource(None, spatial_dims=sd, intensity=intensity).preprocessing()
    if intensity in ("uint8", "none"):  # HU values (-1200..2500) do not fit these ranges: refused, not clipped
        with pytest.raises(Exception) as info:
            xform({"image": img.clone()})
        assert find_input_error(info.value) is not None
        return
    out = xform({"image": img.clone()})["image"]
    assert out.shape == img.shape and out.dtype == torch.float32
    assert torch.allclose(out.affine.double(), img.affine.double())
    if intensity != "none":
        assert out.min() >= 0.0 and out.max() <= 1.0
    # and the check is a pure check: it returns its input unchanged
    checked = CheckImaged("image", channels=1, spatial_dims=sd)({"image": out})["image"]
    assert checked is out


TINY = {  # tiny MedVAEs by spatial_dims and downsampling factor
    sd: {f: MedVAE(sd, 1, channels=(4,) * int(math.log2(f)), downsample_factor=f).eval() for f in (2, 4)} for sd in (2, 3)
}


@settings(SETTINGS, max_examples=12)
@given(img=images(max_side=40), factor=st.sampled_from([2, 4]))
def test_encode_decode_shapes_for_random_sizes(img: MetaTensor, factor: int) -> None:
    sd = img.ndim - 1
    net = TINY[sd][factor]
    x = img.as_tensor()[None]
    with torch.no_grad():
        recon, mu, sigma = net(x)
        latent = tuple(math.ceil(s / factor) for s in x.shape[2:])
        assert mu.shape == sigma.shape == (1, 1, *latent) and (sigma > 0).all()
        assert recon.shape == x.shape
        assert net.decode(mu, spatial_size=x.shape[2:]).shape == x.shape
        assert net.decode(mu).shape == (1, 1, *(s * factor for s in latent))  # the padded size


@settings(SETTINGS, max_examples=12)
@given(img=images(max_side=32), factor=st.sampled_from([2, 4]))
def test_latent_round_trip_keeps_geometry(img: MetaTensor, factor: int) -> None:
    sd = img.ndim - 1
    net = TINY[sd][factor]
    with torch.no_grad():
        mu = VAEInferer("latent")(img[None], net)[0]
    d = LatentGeometryd("image_latent", "image", factor)({"image": img, "image_latent": mu})
    z = d["image_latent"]
    # latent voxel j sits at the centre of the image block j*f .. j*f + f - 1
    j = torch.tensor([*(s - 1 for s in z.shape[1:]), 1.0], dtype=torch.float64)
    centre = torch.tensor([*(jj * factor + (factor - 1) / 2 for jj in j[:-1].tolist()), 1.0], dtype=torch.float64)
    torch.testing.assert_close(z.affine.double() @ j, img.affine.double() @ centre)
    torch.testing.assert_close(z.affine.double(), latent_affine(img.affine, sd, factor))
    with torch.no_grad():
        d["decoded"] = net.decode(z.as_tensor()[None])[0]
    out = ImageGeometryd("decoded", latent_key="image_latent")(d)["decoded"]
    assert out.shape == img.shape
    torch.testing.assert_close(out.affine.double(), img.affine.double())


@contextmanager
def time_limit(seconds: int):
    """Turn a hang into a test failure (SIGALRM; main thread on POSIX)."""

    def _raise(signum, frame):
        raise TimeoutError(f"loader still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# real format signatures, so the readers get past their first check and into the payload
MAGIC = {
    ".png": b"\x89PNG\r\n\x1a\n",
    ".jpg": b"\xff\xd8\xff\xe0",
    ".nii": b"\x5c\x01\x00\x00",  # sizeof_hdr = 348
    ".nii.gz": b"\x1f\x8b\x08\x00",
    ".dcm": b"\x00" * 128 + b"DICM",
    ".nrrd": b"NRRD0004\n",
    ".mha": b"ObjectType = Image\nNDims = 2\n",
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=st.sampled_from(sorted(MAGIC)), with_magic=st.booleans(), payload=st.binary(min_size=1, max_size=4096))
def test_random_bytes_give_input_error(tmp_path_factory, suffix: str, with_magic: bool, payload: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / f"x{suffix}"
    path.write_bytes((MAGIC[suffix] if with_magic else b"") + payload)
    with time_limit(30), pytest.raises(InputError, match="x" + suffix.replace(".", "\\.")):
        LoadImageCheckedd("image", image_only=True, ensure_channel_first=True)({"image": str(path)})


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 24), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _nifti_bytes() -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(np.random.default_rng(2).random((6, 7, 5), dtype=np.float32), np.diag([1.5, 1.5, 2.0, 1.0]))
    return img.to_bytes()


FILES = {".png": _png_bytes(), ".nii": _nifti_bytes(), ".nii.gz": gzip.compress(_nifti_bytes(), mtime=0)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=st.sampled_from(sorted(FILES)), cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_files_give_input_error_or_the_whole_image(tmp_path_factory, suffix: str, cut: float) -> None:
    """Any prefix of a valid file either fails with InputError or, if only trailing metadata was
    cut, loads as the complete image: never a partly filled one."""
    full = FILES[suffix]
    d = tmp_path_factory.mktemp("cut")
    (d / f"full{suffix}").write_bytes(full)
    (d / f"cut{suffix}").write_bytes(full[: int(len(full) * cut)])
    load = LoadImageCheckedd("image", image_only=True, ensure_channel_first=True)
    ref = load({"image": str(d / f"full{suffix}")})["image"]
    try:
        with time_limit(30):
            got = load({"image": str(d / f"cut{suffix}")})["image"]
    except InputError as e:
        assert f"cut{suffix}" in str(e)
    else:
        assert got.shape == ref.shape and torch.equal(got.as_tensor(), ref.as_tensor())


@SETTINGS
@given(payload=st.binary(max_size=2048), kind=st.sampled_from(["npz", "json", "pt"]))
def test_random_bytes_to_dataset_and_checkpoint_loaders(tmp_path_factory, payload: bytes, kind: str) -> None:
    d = tmp_path_factory.mktemp("fuzz")
    if kind == "pt":  # half the time inside a zip container, as torch.save writes
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("archive/data.pkl", payload)
        payload = buf.getvalue() if len(payload) % 2 else payload
    path = d / f"x.{kind}"
    path.write_bytes(payload)
    with time_limit(30), pytest.raises(InputError, match="x\\." + kind):
        load_state_dict(path) if kind == "pt" else ImageSource(path).items("train")


def test_intact_files_load(tmp_path: Path) -> None:
    """A control for the fuzzers: the intact files load."""
    for suffix, content in FILES.items():
        (tmp_path / f"ok{suffix}").write_bytes(content)
        load = LoadImageCheckedd("image", image_only=True, ensure_channel_first=True)
        assert load({"image": str(tmp_path / f"ok{suffix}")})["image"].shape[0] == 1
