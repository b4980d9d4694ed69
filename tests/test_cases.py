"""The bug-report cases of ``../shared/cases``, each turned into the right value it must give.

Every case's ``make.py`` writes its inputs into ``tmp_path`` (see ``conftest.make_case``); the tests
run the product the way the report did and assert the behaviour that the cases' README names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from PIL import Image, ImageOps
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays
from hypothesis import strategies as st

from medvae_monai.config import load_bundle_network, parse_setting, require_output
from medvae_monai.data import ImageSource
from medvae_monai.errors import InputError, find_input_error
from medvae_monai.latents import encode_dataset
from medvae_monai.networks import MedVAE
from medvae_monai.transforms import RestoreUnits, ScaleToUnit
from medvae_monai.transforms.geometry import check_dicom_series, check_header_affine

from .conftest import REPO, make_case, run_bundle


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _network(spatial_dims: int) -> MedVAE:
    torch.manual_seed(0)
    return MedVAE(spatial_dims, 1).eval()


# --- datalist-abs-paths: no output ever lands on an input, every output stays under output_dir ----------------


def _symlinked_datalist(data: Path, sub: str, suffix: str) -> Path:
    """``lists/datalist_links.json`` listing symlinks (``links/*``) to the case's inputs."""
    (data / "links").mkdir(exist_ok=True)
    entries = []
    for src in sorted((data / sub).glob(f"*{suffix}")):
        (data / "links" / src.name).symlink_to(src)
        entries.append({"image": f"../links/{src.name}"})
    path = data / "lists" / f"datalist_links{suffix.replace('.', '_')}.json"
    path.write_text(json.dumps({"training": entries}))
    return path


@pytest.mark.parametrize(
    "datalist, spatial_dims, outputs",
    [
        ("datalist.json", 3, {"vols/case0.nii.gz", "vols/case1.nii.gz"}),  # absolute paths
        ("datalist_rel.json", 3, {"vols/case0.nii.gz", "vols/case1.nii.gz"}),  # ../ paths
        ("datalist2d.json", 2, {"pics/pic0.png", "pics/pic1.png"}),  # absolute paths, pictures
        ("links3d", 3, {"links/case0.nii.gz", "links/case1.nii.gz"}),  # symlinked sources
        ("links2d", 2, {"links/pic0.png", "links/pic1.png"}),
    ],
)
def test_datalist_abs_paths_store_decode_stays_contained(
    tmp_path: Path, datalist: str, spatial_dims: int, outputs: set[str]
) -> None:
    data = make_case("datalist-abs-paths", tmp_path / "case")
    if datalist.startswith("links"):
        sub, suffix = ("vols", ".nii.gz") if spatial_dims == 3 else ("pics", ".png")
        dl = _symlinked_datalist(data, sub, suffix)
    else:
        dl = data / "lists" / datalist
    before = _tree(data)
    store = encode_dataset(_network(spatial_dims), dl, tmp_path / "store", spatial_dims=spatial_dims)
    out = tmp_path / "decoded"
    written = store.decode_to(out, _network(spatial_dims))
    assert _tree(data) == before  # no input file written
    assert {p.relative_to(out).as_posix() for p in written} == outputs
    assert all(out.resolve() in p.resolve().parents for p in written)


def test_datalist_abs_paths_decode_into_the_input_folder_is_refused(tmp_path: Path) -> None:
    data = make_case("datalist-abs-paths", tmp_path / "case")
    before = _tree(data)
    store = encode_dataset(_network(3), data / "lists" / "datalist.json", tmp_path / "store", spatial_dims=3)
    with pytest.raises(InputError, match="input"):  # --output_dir = the folder the images came from
        store.decode_to(data, _network(3))
    assert _tree(data) == before


@pytest.mark.slow
@pytest.mark.parametrize("datalist, spatial_dims", [("datalist.json", 3), ("datalist2d.json", 2)])  # ../: store test
def test_datalist_abs_paths_bundle_inference_stays_contained(tmp_path: Path, datalist: str, spatial_dims: int) -> None:
    data = make_case("datalist-abs-paths", tmp_path / "case")
    before = _tree(data)
    out = tmp_path / "out"
    args = ["--dataset_dir", str(data / "lists" / datalist), "--output_dir", str(out), "--spatial_dims", str(spatial_dims)]
    if spatial_dims == 3:  # the committed model is 2D: a 3D network of the same config, untrained
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(REPO / "bundle" / "configs" / "inference.yaml"))
        parser["spatial_dims"] = 3
        torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "net3d.pt")
        args += ["--ckpt_path", str(tmp_path / "net3d.pt")]
    run_bundle("inferring", "bundle/configs/inference.yaml", *args)
    assert _tree(data) == before
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    stem = "vols/case" if spatial_dims == 3 else "pics/pic"
    ext = ".nii.gz" if spatial_dims == 3 else ".png"
    assert written == sorted(
        [f"latents/{stem}{i}_latent.nii.gz" for i in range(2)] + [f"reconstructions/{stem}{i}_recon{ext}" for i in range(2)]
    )
    assert np.all([out.resolve() in p.resolve().parents for p in out.rglob("*")])


# --- bool-override: command-line values are typed by the id's default, or refused by key ----------------------


@pytest.mark.parametrize(
    "raw, default, value",
    [
        *[(t, False, False) for t in ("false", "False", "FALSE", "0", "no", "No")],
        *[(t, False, True) for t in ("true", "True", "1", "yes", "YES")],
        ("32", 32, 32), ("8.0", 32, 8), ("1e-3", 0.002, 0.001), ("2", 0.5, 2.0),
        ("null", None, None), ("None", None, None),
    ],
)
def test_typed_settings(raw: str, default: object, value: object) -> None:
    typed = parse_setting("key", raw, default)
    assert typed == value and type(typed) is type(value)


@pytest.mark.parametrize(
    "raw, default", [("maybe", False), ("flase", True), ("", False), ("3.5", 32), ("abc", 32), ("nan", 0.1), ("inf", 1.0)]
)
def test_untyped_settings_are_refused_naming_the_key(raw: str, default: object) -> None:
    with pytest.raises(InputError, match="--batch_size"):
        parse_setting("batch_size", raw, default)


@pytest.mark.parametrize(
    "key, raw, default",
    [("batch_size", "0", 32), ("max_epochs", "-1", 20), ("num_workers", "-2", 0), ("max_items", "0", None),
     ("tile_size", "0", "$512 if @spatial_dims == 2 else None"), ("learning_rate", "0", 0.002), ("ssim_weight", "-0.1", 0.0)],
)
def test_out_of_range_settings_are_refused_naming_the_key_and_the_bound(key: str, raw: str, default: object) -> None:
    with pytest.raises(InputError, match=f"--{key} .*out of range; give a number (>=|>) "):
        parse_setting(key, raw, default)


@pytest.mark.parametrize(
    "key, raw, default, value",
    [("max_items", "8", None, 8), ("max_items", "null", None, None), ("tile_size", "null", "$512 if @spatial_dims == 2 else None", None),
     ("ckpt_path", "None", "@pretrained_ckpt", None), ("num_workers", "0", 0, 0),
     ("tile_size", "256", "$512 if @spatial_dims == 2 else None", 256), ("beta", "0", 1e-4, 0.0)],
)
def test_in_range_bounded_settings_are_typed(key: str, raw: str, default: object, value: object) -> None:
    typed = parse_setting(key, raw, default)
    assert typed == value and type(typed) is type(value)


def test_overlay_key_that_misspells_a_base_id_is_refused(tmp_path: Path) -> None:
    from medvae_monai.config import check_overlay_keys

    base = "bundle/configs/train.yaml"
    for overlay in ("bundle/configs/vae_f8c4.yaml", "bundle/configs/multi_gpu_train.yaml"):
        check_overlay_keys([base, overlay])  # the shipped overlays: their own ids are not typos
    (tmp_path / "ov.yaml").write_text("my_schedule: 3\nbatchsize: 8\n")
    with pytest.raises(InputError, match="ov.yaml: key 'batchsize' .*did you mean 'batch_size'"):
        check_overlay_keys([base, str(tmp_path / "ov.yaml")])
    (tmp_path / "bs0.yaml").write_text("batch_size: 0\n")
    with pytest.raises(InputError, match="bs0.yaml: batch_size: '0': out of range; give a number >= 1"):
        check_overlay_keys([base, str(tmp_path / "bs0.yaml")])


def test_drop_last_counts_each_ranks_share() -> None:
    """torchrun, 2 ranks, 45 training items, batch 32: each rank holds 23, so the ragged batch is kept."""
    from monai.data import DistributedSampler

    from medvae_monai.config import drop_last_for

    items = list(range(45))
    assert drop_last_for(items, 32) is True
    assert drop_last_for(DistributedSampler(items, num_replicas=2, rank=1, even_divisible=True), 32) is False


@given(word=st.sampled_from(["true", "false", "yes", "no", "1", "0"]), flips=st.lists(st.booleans(), min_size=5, max_size=5))
def test_any_spelling_of_a_boolean_parses(word: str, flips: list[bool]) -> None:
    spelled = "".join(c.upper() if f else c for c, f in zip(word, flips + [False] * len(word)))
    assert parse_setting("resume", spelled, True) is (word in ("true", "yes", "1"))


@pytest.mark.slow
@pytest.mark.parametrize("spelling", ["false"])  # the other spellings: test_typed_settings
def test_bool_override_skip_unreadable_false_stops_on_the_broken_file(tmp_path: Path, spelling: str) -> None:
    data = make_case("bool-override", tmp_path / "case")
    proc = run_bundle(
        "training", "bundle/configs/train.yaml", "--dataset_dir", str(data), "--output_dir", str(tmp_path / "run"),
        "--skip_unreadable", spelling, "--max_epochs", "1", check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "broken.png" in proc.stdout and "InputError" in proc.stdout
    assert not (tmp_path / "run" / "model.pt").exists()


# --- few-images-train: a set smaller than one batch trains, and a run never exits 0 without its model ---------


@pytest.mark.slow
def test_few_images_train_writes_the_model_and_resume_false_retrains(tmp_path: Path) -> None:
    data = make_case("few-images-train", tmp_path / "case")
    run = ["--dataset_dir", str(data), "--output_dir", str(tmp_path / "run"), "--max_epochs", "1"]
    proc = run_bundle("training", "bundle/configs/train.yaml", *run)  # default --batch_size 32 > 18 training images
    assert "fewer than --batch_size 32" in proc.stdout
    assert (tmp_path / "run" / "model.pt").is_file()
    again = run_bundle("training", "bundle/configs/train.yaml", *run, "--resume", "false")
    assert "Resumed" not in again.stdout and "nothing to do" not in again.stdout  # trained again from scratch


def test_require_output_refuses_a_missing_model(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="model.pt"):
        require_output(tmp_path / "model.pt")


# --- pictures: bit depth, palette, mode and EXIF orientation are facts of the file --------------------------


def _load(path: Path, intensity: str = "auto", spatial_dims: int = 2) -> torch.Tensor:
    pre = ImageSource(path, spatial_dims, 1, None, intensity, "full").preprocessing(min_size=4)
    return pre({"image": str(path)})["image"]


def _shown(path: Path) -> np.ndarray:
    """What a viewer shows, as the reader lays it out (MONAI's PIL reader puts x first)."""
    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("I")).astype(np.float64).T


def test_png16_keeps_its_grey_levels(tmp_path: Path) -> None:
    data = make_case("png16", tmp_path / "case") / "xray16"
    for path in sorted(data.glob("*.png")):
        x = _load(path)
        raw = np.asarray(Image.open(path)).astype(np.float64).T
        assert len(np.unique(x.numpy())) > 50 and 0 < float(x.min()) and float(x.max()) < 1
        np.testing.assert_allclose(x[0].numpy() * 65535, raw, atol=0.5)


def test_png16_reconstruction_correlates_with_the_input(tmp_path: Path) -> None:
    data = make_case("png16", tmp_path / "case") / "xray16"
    network, _ = load_bundle_network(REPO / "bundle" / "configs" / "inference.yaml")
    store = encode_dataset(network, data, tmp_path / "store", spatial_dims=2)  # the committed (8-bit MedNIST) VAE
    for path in store.decode_to(tmp_path / "out", network):
        out = np.asarray(Image.open(path))
        src = np.asarray(Image.open(data / path.name))
        assert out.dtype == np.uint16  # 16 bits in, 16 bits out
        assert np.corrcoef(out.ravel(), src.ravel())[0, 1] > 0.9


@pytest.mark.slow
def test_png16_through_inferring_writes_16_bit_pngs(tmp_path: Path) -> None:
    """Every route out keeps the bit depth: ``inference.yaml`` once failed with "cannot write mode I as PNG"."""
    data = make_case("png16", tmp_path / "case") / "xray16"
    run_bundle("inferring", "bundle/configs/inference.yaml", "--dataset_dir", str(data), "--output_dir", str(tmp_path / "run"))
    outs = sorted((tmp_path / "run" / "reconstructions").rglob("*.png"))
    assert len(outs) == len(list(data.glob("*.png")))
    for path in outs:
        out = np.asarray(Image.open(path))
        src = np.asarray(Image.open(data / path.name.replace("_recon", "")))
        assert out.dtype == np.uint16 and out.shape == src.shape
        assert np.corrcoef(out.ravel(), src.ravel())[0, 1] > 0.9


def test_png_palette_is_applied(tmp_path: Path) -> None:
    path = make_case("png-palette", tmp_path / "case") / "palette" / "img0.png"
    x = _load(path)
    grey = np.asarray(Image.open(path).convert("L")).astype(np.float64).T
    assert np.abs(x[0].numpy() * 255 - grey).max() <= 1


@pytest.mark.parametrize("mode", ["rgba", "la"])
def test_png_alpha_modes_are_refused_naming_the_file(tmp_path: Path, mode: str) -> None:
    path = make_case("png-palette", tmp_path / "case") / mode / "img0.png"
    with pytest.raises(Exception) as info:
        _load(path)
    err = find_input_error(info.value)
    assert err is not None and str(path) in str(err) and "alpha" in str(err) and "in_channels" not in str(err)


def _picture(path: Path, mode: str, orientation: int | None) -> np.ndarray:
    """A non-square picture in ``mode`` (the siblings of the picture cases), with an EXIF orientation."""
    yy, xx = np.mgrid[0:40, 0:24]
    grey = (20 + 4 * xx + 2 * yy).astype(np.uint8)
    grey[5:12, 3:9] = 250  # an asymmetric mark, so a wrong orientation shows
    if mode == "I;16":
        img = Image.fromarray(grey.astype(np.uint16) * 257)
    elif mode == "P":  # grey palette in frequency order (pngquant)
        perm = np.random.default_rng(1).permutation(256)
        img = Image.frombytes("P", (24, 40), np.argsort(perm)[grey].astype(np.uint8).tobytes())
        img.putpalette(np.repeat(perm[:, None], 3, axis=1).astype(np.uint8).ravel().tolist())
    elif mode == "1":
        img = Image.fromarray(grey > 120)
    else:
        img = Image.fromarray(grey).convert(mode)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(path, exif=exif.tobytes()) if path.suffix in (".png", ".jpg") and mode != "1" else img.save(path)
    return grey


@pytest.mark.parametrize("mode, bits", [("L", 8), ("I;16", 16), ("P", 8), ("1", 8)])
@pytest.mark.parametrize("orientation", [None, 3, 6, 8])
def test_picture_modes_bit_depths_and_orientation(tmp_path: Path, mode: str, bits: int, orientation: int | None) -> None:
    path = tmp_path / "pics" / "img.png"
    path.parent.mkdir()
    _picture(path, mode, orientation if mode != "1" else None)
    x = _load(path)
    assert x.meta["intensity"]["a_max"] == 2**bits - 1
    np.testing.assert_allclose(x[0].numpy() * (2**bits - 1), _shown(path), atol=0.5)


def test_exif_orientation_is_written_back(tmp_path: Path) -> None:
    """A decoded picture shows the way its input shows (rotated pixels, no orientation tag)."""
    (tmp_path / "pics").mkdir()
    _picture(tmp_path / "pics" / "img.png", "L", 6)
    store = encode_dataset(_network(2), tmp_path / "pics", tmp_path / "store", spatial_dims=2)
    (out,) = store.decode_to(tmp_path / "out", _network(2))
    assert Image.open(out).size == ImageOps.exif_transpose(Image.open(tmp_path / "pics" / "img.png")).size == (40, 24)


# --- intensity: scaling checks its own result; a collapsed percentile window falls back to min..max --------


def test_sparse_volume_reaches_the_network_in_unit_range(tmp_path: Path) -> None:
    data = make_case("sparse-volume", tmp_path / "case")
    for path in sorted(data.glob("sparse*.nii.gz")):
        with pytest.warns(UserWarning, match="collapsed"):
            x = _load(path, spatial_dims=3)
        assert 0.0 == float(x.min()) and float(x.max()) == 1.0
        assert x.meta["intensity"]["a_max"] == float(nib.load(path).get_fdata().max())


@pytest.mark.parametrize(
    "mode, values, match",
    [
        ("ct", 5000.0 + np.arange(256, dtype=np.float64).reshape(8, 8, 4), "constant"),  # all above the window: not HU
        ("uint8", np.arange(256, dtype=np.float64).reshape(8, 8, 4) * 100, "exceed 255"),
        ("none", np.arange(256, dtype=np.float64).reshape(8, 8, 4), r"\[0, 1\]"),
    ],
)
def test_scaling_refuses_a_useless_result_naming_the_file(tmp_path: Path, mode: str, values: np.ndarray, match: str) -> None:
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(values.astype(np.float32), np.eye(4)), path)
    with pytest.raises(Exception) as info:
        _load(path, intensity=mode, spatial_dims=3)
    err = find_input_error(info.value)
    assert err is not None and str(path) in str(err)
    assert re.search(match, str(err))


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.float32, (6, 5, 4), elements=st.floats(-3000, 3000, width=32)),
    st.sampled_from(["percentile", "ct"]),
)
def test_scaled_images_are_finite_in_unit_range_and_restore_to_their_units(values: np.ndarray, mode: str) -> None:
    img = MetaTensor(torch.from_numpy(values), meta={"filename_or_obj": "x.nii.gz"})
    try:
        x = ScaleToUnit(mode, window="full")(img)
    except InputError as e:
        assert "x.nii.gz" in str(e)  # refused by name (constant, or nothing in the window)
        return
    assert torch.isfinite(x).all() and 0 <= float(x.min()) and float(x.max()) <= 1
    assert float(x.max()) > float(x.min()) or values.min() == values.max()  # flat only when the input is
    p = x.meta["intensity"]
    inside = (values >= p["a_min"]) & (values <= p["a_max"])  # values inside the window come back exactly
    back = RestoreUnits()(x.as_tensor(), p).numpy()
    np.testing.assert_allclose(back[inside], values[inside], atol=1e-3 * max(1.0, p["a_max"] - p["a_min"]))


@pytest.mark.parametrize("pil_mode, bits, dtype", [("L", 8, torch.uint8), ("I;16", 16, torch.uint16)])
@pytest.mark.parametrize("mode", ["percentile", "bit_depth"])
def test_pictures_restore_to_their_storage_type_under_every_intensity_mode(pil_mode: str, bits: int, dtype, mode: str) -> None:
    """A 16-bit PNG under --intensity percentile came back as float32, which no PNG writer takes."""
    values = torch.linspace(100, 0.9 * (2**bits - 1), 64).reshape(1, 8, 8).round()
    img = MetaTensor(values, meta={"filename_or_obj": "x.png", "mode": pil_mode})
    x = ScaleToUnit(mode)(img)
    back = RestoreUnits()(x.as_tensor(), x.meta["intensity"])
    assert back.dtype == dtype
    assert torch.equal(back.float(), values.clamp(float(x.meta["intensity"]["a_min"]), float(x.meta["intensity"]["a_max"])).round())
    overshoot = RestoreUnits()(torch.full_like(x.as_tensor(), 1.5), x.meta["intensity"])
    assert int(overshoot.int().max()) == 2**bits - 1  # clamped to the storage range, not wrapped


def test_twelve_bit_data_in_a_16_bit_picture_is_named_once(monkeypatch) -> None:
    import medvae_monai.transforms.intensity as intensity

    monkeypatch.setattr(intensity, "_warned_narrow", False)
    img = MetaTensor(torch.linspace(0, 4080, 64).reshape(1, 8, 8), meta={"filename_or_obj": "xray.png", "mode": "I;16"})
    with pytest.warns(UserWarning, match="xray.png: a 16-bit picture whose values reach only 4080 of 65535.*percentile"):
        ScaleToUnit("bit_depth")(img)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ScaleToUnit("bit_depth")(img)  # once per process, not once per image


# --- units: every route out writes the input's units (ct-hu-units) ------------------------------------------


@pytest.mark.slow
def test_ct_hu_units_inference_and_decode_both_write_hu(tmp_path: Path) -> None:
    data = make_case("ct-hu-units", tmp_path / "case")
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle" / "configs" / "inference.yaml"))
    parser["spatial_dims"] = 3
    net = parser.get_parsed_content("network_def").eval()
    torch.save(net.state_dict(), tmp_path / "net3d.pt")
    run_bundle(
        "inferring", "bundle/configs/inference.yaml", "--dataset_dir", str(data / "dataset.json"), "--spatial_dims", "3",
        "--intensity", "ct", "--ckpt_path", str(tmp_path / "net3d.pt"), "--output_dir", str(tmp_path / "infer"),
    )  # fmt: skip
    store = encode_dataset(net, data / "dataset.json", tmp_path / "store", spatial_dims=3, intensity="ct")
    (decoded,) = store.decode_to(tmp_path / "decoded", net)
    inferred = nib.load(tmp_path / "infer" / "reconstructions" / "ct0_recon.nii.gz")
    a, b = inferred.get_fdata(), nib.load(decoded).get_fdata()
    assert a.shape == b.shape == (32, 32, 12)
    np.testing.assert_allclose(a, b, atol=1.0)  # the same HU, whichever config wrote it
    assert a.min() < -500.0 and a.max() - a.min() > 1.0  # HU (air near -1000), not window units 0..1
    np.testing.assert_allclose(inferred.affine, nib.load(data / "ct0.nii.gz").affine, atol=1e-3)


# --- geometry: the affine out is the affine in, for every format and dimensionality -------------------------


@pytest.mark.parametrize("fmt", ["nii/slice0.nii.gz", "dcm/slice0.dcm"])
def test_nifti_2d_slice_keeps_its_4x4_affine_through_the_store(tmp_path: Path, fmt: str) -> None:
    data = make_case("nifti-2d-slice", tmp_path / "case")
    src = data / fmt
    (tmp_path / "list").mkdir()
    dl = tmp_path / "list" / "datalist.json"
    dl.write_text(json.dumps({"training": [{"image": str(src)}]}))
    x = _load(src, intensity="ct")
    assert tuple(x.shape) == (1, 64, 64) and tuple(x.affine.shape) == (4, 4)
    store = encode_dataset(_network(2), dl, tmp_path / "store", spatial_dims=2, intensity="ct")
    (out,) = store.decode_to(tmp_path / "out", _network(2))
    img = nib.load(out)
    want = np.diag([-0.7, -0.7, 5.0, 1.0])
    want[:3, 3] = [22.4, 22.4, 35.0]  # z position and slice thickness kept
    assert img.shape[:2] == (64, 64) and int(np.prod(img.shape)) == 64 * 64
    np.testing.assert_allclose(img.affine, want, atol=1e-3)


def _rotation(a: float, b: float) -> np.ndarray:
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    return np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, cb, -sb], [0, sb, cb]])


def _write_volume(path: Path, affine: np.ndarray, shape=(16, 12, 8)) -> None:
    vol = np.indices(shape).sum(0).astype(np.float32) * 10
    if path.name.endswith((".nii", ".nii.gz")):
        nib.save(nib.Nifti1Image(vol, affine), path)
        return
    import itk

    img = itk.image_from_array(np.ascontiguousarray(vol.transpose(2, 1, 0)))  # ITK arrays are z, y, x
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(lps[:3, :3] / spacing)))
    itk.imwrite(img, str(path))


_AFFINES = {
    "axis": np.diag([0.8, 0.8, 3.0, 1.0]),
    "flipped": np.diag([-0.7, -0.7, 2.5, 1.0]),
    "oblique": np.vstack([np.hstack([_rotation(0.3, 0.2) * [0.9, 1.1, 2.0], [[-40.0], [12.5], [7.0]]]), [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
@pytest.mark.parametrize("name", sorted(_AFFINES))
def test_affine_in_is_affine_out_through_the_store(tmp_path: Path, suffix: str, name: str) -> None:
    (tmp_path / "vols").mkdir()
    path = tmp_path / "vols" / f"v{suffix}"
    _write_volume(path, _AFFINES[name])
    x = _load(path, spatial_dims=3)
    np.testing.assert_allclose(np.asarray(x.affine), _AFFINES[name], atol=1e-3)
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps({"training": [{"image": f"vols/v{suffix}"}]}))
    store = encode_dataset(_network(3), dl, tmp_path / "store", spatial_dims=3)
    (out,) = store.decode_to(tmp_path / "out", _network(3))
    np.testing.assert_allclose(nib.load(out).affine, _AFFINES[name], atol=1e-3)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_2d_itk_image_with_origin_and_direction_keeps_its_geometry(tmp_path: Path, suffix: str) -> None:
    """Breaker round 3, finding 1: the header check took a 2D file's origin from the z column (0), so every
    2D MHA/NRRD with a non-zero origin was refused as 'differs from the file's header'."""
    import itk

    t = 0.3
    direction = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    img = itk.image_from_array(np.arange(24 * 20, dtype=np.float32).reshape(24, 20))  # ITK arrays are y, x
    img.SetSpacing([0.5, 0.7])
    img.SetOrigin([-100.0, -120.0])
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))
    itk.imwrite(img, str(tmp_path / f"p{suffix}"))
    lps = np.eye(3)
    lps[:2, :2], lps[:2, 2] = direction * [0.5, 0.7], [-100.0, -120.0]
    x = _load(tmp_path / f"p{suffix}", spatial_dims=2)
    np.testing.assert_allclose(np.asarray(x.affine), np.diag([-1.0, -1.0, 1.0]) @ lps, atol=1e-3)


def test_nifti_units_and_affine_space_survive_the_store(tmp_path: Path) -> None:
    """Noticed in breaker round 3: MONAI's NIfTI writer drops xyzt_units (a volume in microns came
    back as 'unknown', which readers take as mm) and writes both form codes as 1 (scanner)."""
    (tmp_path / "vols").mkdir()
    img = nib.Nifti1Image(np.indices((16, 12, 8)).sum(0).astype(np.float32), _AFFINES["axis"])
    img.header.set_xyzt_units("micron", "msec")
    img.set_sform(_AFFINES["axis"], code=4)  # MNI
    img.set_qform(_AFFINES["axis"], code=4)
    nib.save(img, tmp_path / "vols" / "v.nii.gz")
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps({"training": [{"image": "vols/v.nii.gz"}]}))
    store = encode_dataset(_network(3), dl, tmp_path / "store", spatial_dims=3)
    (out,) = store.decode_to(tmp_path / "out", _network(3))
    header = nib.load(out).header
    assert header.get_xyzt_units() == ("micron", "msec") and header["sform_code"] == header["qform_code"] == 4
    np.testing.assert_allclose(nib.load(out).affine, _AFFINES["axis"], atol=1e-3)


def test_nifti_sform_and_qform_disagree_keeps_nibabels_affine(tmp_path: Path) -> None:
    path = tmp_path / "v.nii.gz"
    img = nib.Nifti1Image(np.indices((16, 12, 8)).sum(0).astype(np.float32), _AFFINES["oblique"])
    img.set_qform(_AFFINES["axis"], code=1)  # a stale qform, as some converters leave it
    img.set_sform(_AFFINES["oblique"], code=2)
    nib.save(img, path)
    assert not np.allclose(nib.load(path).get_qform(), nib.load(path).get_sform())
    with pytest.warns(UserWarning, match="kept the sform"):  # MONAI's reader took the qform: said and corrected
        x = _load(path, spatial_dims=3)
    np.testing.assert_allclose(np.asarray(x.affine), nib.load(path).affine, atol=1e-3)  # the sform


def test_reader_affine_differing_from_the_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v.nii.gz"
    _write_volume(path, _AFFINES["oblique"])
    img = MetaTensor(torch.zeros(1, 16, 12, 8), affine=torch.eye(4))  # what a reader that lost the header gives
    with pytest.raises(InputError, match="differs from the file's header"):
        check_header_affine(img, path)


@settings(max_examples=25, deadline=None)
@given(
    st.floats(-3.1, 3.1), st.floats(-1.5, 1.5), st.lists(st.floats(0.2, 5.0), min_size=3, max_size=3),
    st.lists(st.floats(-500, 500), min_size=3, max_size=3), st.sampled_from([".nii.gz", ".mha"]),
)  # fmt: skip
def test_any_affine_survives_loading(tmp_path_factory, a: float, b: float, spacing: list, origin: list, suffix: str) -> None:
    affine = np.eye(4)
    affine[:3, :3] = _rotation(a, b) * spacing
    affine[:3, 3] = origin
    path = tmp_path_factory.mktemp("aff") / f"v{suffix}"
    _write_volume(path, affine, shape=(4, 4, 4))
    np.testing.assert_allclose(np.asarray(_load(path, spatial_dims=3).affine), affine, atol=1e-3)


def _ct_series(folder: Path, z: list[float]) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    series = generate_uid()
    for i, zi in enumerate(z):
        fm = FileMetaDataset()
        fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = fm
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, fm.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series, series, series
        ds.Modality, ds.InstanceNumber = "CT", i + 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, zi], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness, ds.Rows, ds.Columns = [0.7, 0.7], 2.5, 16, 16
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation, ds.RescaleIntercept, ds.RescaleSlope = 15, 0, -1024, 1
        ds.PixelData = (np.arange(256, dtype=np.uint16).reshape(16, 16) * (i + 1)).tobytes()
        ds.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)


@pytest.mark.parametrize("z", [[0, 2.5, 5, 10, 12.5], [0, 2.5, 4, 7.5, 10]], ids=["missing-slice", "uneven"])
def test_dicom_series_with_missing_slices_or_uneven_spacing_is_refused(tmp_path: Path, z: list[float]) -> None:
    _ct_series(tmp_path / "series", z)
    with pytest.raises(InputError, match="uneven slice spacing") as info:
        check_dicom_series(tmp_path / "series")
    assert str(tmp_path / "series") in str(info.value)
    _ct_series(tmp_path / "even", [0, 2.5, 5, 7.5, 10])
    check_dicom_series(tmp_path / "even")  # a complete series passes
