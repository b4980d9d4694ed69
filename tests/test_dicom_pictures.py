"""Single-frame DICOM pictures (issue #11 section 2, issue #14 part 2): pixels in modality units,
MONOCHROME1 inverted, every compression a mammography unit sends, pixel spacing and slice geometry
kept. The files are built with pydicom the way scanners write them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from medvae_monai.data.mammograms import mammogram_phantom, write_mammogram_dicom
from medvae_monai.errors import InputError
from medvae_monai.transforms import LoadImageCheckedd

BITS = 14
LOAD = LoadImageCheckedd("image", image_only=True, ensure_channel_first=True, spatial_dims=2)


def load(path: Path) -> torch.Tensor:
    return LOAD({"image": str(path)})["image"]


@pytest.fixture(scope="module")
def stored() -> np.ndarray:
    return mammogram_phantom((240, 160), seed=3, bits_stored=BITS)


@pytest.mark.parametrize("syntax", ["explicit", "rle", "jpeg2000"])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_modality_units_and_monochrome1(tmp_path: Path, stored: np.ndarray, syntax: str, photometric: str) -> None:
    slope, intercept = 0.5, 100.0
    pixels = stored if photometric == "MONOCHROME2" else (2**BITS - 1 - stored).astype(np.uint16)
    path = write_mammogram_dicom(tmp_path / "x.dcm", pixels, photometric, syntax, BITS, rescale=(slope, intercept))
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID.is_compressed == (syntax != "explicit")
    img = load(path)
    # x first, as every MONAI reader: (C, columns, rows); dense tissue bright whatever the photometric
    assert img.shape == (1, stored.shape[1], stored.shape[0]) and img.dtype == torch.float32
    np.testing.assert_allclose(img[0].numpy(), stored.T * slope + intercept, rtol=0, atol=1e-3)
    assert img.meta["photometric_interpretation"] == photometric
    if photometric == "MONOCHROME1":  # the mirror that restores the stored convention
        assert img.meta["monochrome1_mirror"] == pytest.approx(intercept + (intercept + slope * (2**BITS - 1)))


@pytest.mark.parametrize(
    "pixel, imager, spacing, source",
    [((0.1, 0.12), (0.07, 0.07), (0.1, 0.12), "PixelSpacing"), (None, (0.07, 0.085), (0.07, 0.085), "ImagerPixelSpacing"),
     (None, None, (1.0, 1.0), "none")],
)
def test_pixel_spacing_kept(tmp_path: Path, stored: np.ndarray, pixel, imager, spacing, source: str) -> None:
    path = write_mammogram_dicom(tmp_path / "x.dcm", stored, imager_pixel_spacing=imager, pixel_spacing=pixel)
    img = load(path)
    # DICOM lists (row spacing, column spacing); MONAI's axis 0 runs along a row (columns)
    np.testing.assert_allclose(img.affine.diag()[:2].abs().numpy(), [spacing[1], spacing[0]], atol=1e-9)
    assert img.meta["spacing_source"] == source


def _ct_slice(path: Path, iop, position, thickness=5.0) -> Path:
    """One CT slice as in ../shared/cases/nifti-2d-slice (0.7 mm pixels, 5 mm slice)."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = pydicom.uid.CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = "CT", 32, 24, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.ImagePositionPatient, ds.ImageOrientationPatient = list(position), list(iop)
    ds.PixelSpacing, ds.SliceThickness, ds.RescaleSlope, ds.RescaleIntercept = [0.7, 0.7], thickness, 1, -1024
    ds.PixelData = np.arange(32 * 24, dtype=np.uint16).reshape(32, 24).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_single_slice_keeps_4x4_affine(tmp_path: Path) -> None:
    img = load(_ct_slice(tmp_path / "s.dcm", [1, 0, 0, 0, 1, 0], [-22.4, -22.4, 35.0]))
    # the same slice as dcm2niix writes it (the case's NIfTI twin): RAS, z = 35 mm, 5 mm thick
    expected = np.diag([-0.7, -0.7, 5.0, 1.0])
    expected[:3, 3] = [22.4, 22.4, 35.0]
    np.testing.assert_allclose(img.affine.numpy(), expected, atol=1e-6)
    assert img.shape == (1, 24, 32) and float(img.min()) == -1024.0


def test_oblique_slice_normal_and_thickness(tmp_path: Path) -> None:
    c, s = np.cos(0.3), np.sin(0.3)
    img = load(_ct_slice(tmp_path / "o.dcm", [c, s, 0, 0, 0, -1], [10.0, -5.0, 2.0], thickness=2.5))
    a = img.affine.numpy()[:3, :3]
    assert np.allclose(np.linalg.norm(a, axis=0), [0.7, 0.7, 2.5])
    assert abs(np.dot(a[:, 2], a[:, 0])) < 1e-9 and abs(np.dot(a[:, 2], a[:, 1])) < 1e-9  # the plane's normal


def test_missing_decoder_named(tmp_path: Path, stored: np.ndarray, monkeypatch) -> None:
    path = write_mammogram_dicom(tmp_path / "j2k.dcm", stored, transfer_syntax="jpeg2000")

    class _Unavailable:
        is_available = False

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: _Unavailable())
    with pytest.raises(InputError, match="j2k.dcm.*JPEG 2000.*pylibjpeg-openjpeg"):
        load(path)


def test_classifier_rule_breast_region_at_fixed_size(tmp_path: Path) -> None:
    from monai.data import MetaTensor

    from medvae_monai.transforms import ForegroundToSized

    film = np.zeros((1, 900, 600), np.float32)  # (C, x, y): air with a breast on the chest wall (x = 0)
    film[0, :400, 100:500] = 0.6
    film[0, 350:360, 290:300] = 1.0  # a dense spot, kept at the same relative place
    rule = ForegroundToSized("image", size=128, threshold=0.05, margin=0)
    out = rule({"image": MetaTensor(torch.from_numpy(film), affine=torch.diag(torch.tensor([0.07, 0.07, 1, 1.0])))})
    img = out["image"]
    assert img.shape == (1, 128, 128)
    # 400 x 400 breast -> 128 x 128: the breast fills the output, the air beside it is cropped away
    assert float((img > 0.05).float().mean()) > 0.95
    assert abs(float(img.affine[0, 0]) - 0.07 * 400 / 128) < 1e-6  # spacing follows the resize
    spot = np.unravel_index(int(img[0].argmax()), (128, 128))
    assert abs(spot[0] - 355 * 128 / 400) <= 2 and abs(spot[1] - 195 * 128 / 400) <= 2
    small = MetaTensor(torch.rand(1, 64, 64))
    assert rule({"image": small})["image"] is small  # images no larger than size pass unchanged


# --- the default 2D bundle configs on a class folder of DICOM pictures, no extra flag ---------------

FILM = (576, 320)  # rows, columns: a side above the 512-pixel tile, so the VAE runs tile by tile


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory) -> Path:
    """``CC/film.dcm`` (MONOCHROME1, JPEG 2000, ImagerPixelSpacing) and ``CT/slice.dcm`` (one 5 mm slice)."""
    root = tmp_path_factory.mktemp("dicoms")
    film = mammogram_phantom(FILM, seed=5, bits_stored=BITS)
    write_mammogram_dicom(root / "CC" / "film.dcm", (2**BITS - 1 - film).astype(np.uint16), "MONOCHROME1", "jpeg2000")
    (root / "CT").mkdir()
    _ct_slice(root / "CT" / "slice.dcm", [1, 0, 0, 0, 1, 0], [-22.4, -22.4, 35.0])
    return root


def _check_output(out: Path, src: Path, min_r: float) -> None:
    """Output NIfTI ``out`` against DICOM ``src``: same size, 4x4 affine and units; correlated."""
    import nibabel as nib

    x = load(src)
    img = nib.load(out)
    y = np.asarray(img.dataobj, dtype=np.float32).reshape(x.shape[1:])
    assert img.shape[:2] == tuple(x.shape[1:])
    np.testing.assert_allclose(img.affine, x.affine.numpy(), atol=1e-3)  # spacing, z position, thickness
    x = x[0].numpy()
    assert np.corrcoef(x.ravel(), y.ravel())[0, 1] > min_r
    spread = np.percentile(x, 99.5) - np.percentile(x, 0.5)
    assert abs(np.median(y) - np.median(x)) < 0.05 * spread  # the input's units, not [0, 1]


@pytest.mark.slow
def test_inferring_dicom_pictures(tmp_path: Path, dicom_folder: Path) -> None:
    from tests.conftest import run_bundle

    run_bundle("inferring", "bundle/configs/inference.yaml", "--dataset_dir", str(dicom_folder),
               "--output_dir", str(tmp_path), "--batch_size", "1")
    _check_output(tmp_path / "reconstructions/CC/film_recon.nii.gz", dicom_folder / "CC/film.dcm", 0.98)
    _check_output(tmp_path / "reconstructions/CT/slice_recon.nii.gz", dicom_folder / "CT/slice.dcm", 0.9)


@pytest.mark.slow
def test_latent_store_of_dicom_pictures(tmp_path: Path, dicom_folder: Path) -> None:
    from tests.conftest import run_bundle

    run_bundle("encoding", "bundle/configs/encode.yaml", "--dataset_dir", str(dicom_folder),
               "--output_dir", str(tmp_path / "store"))
    run_bundle("decoding", "bundle/configs/decode.yaml", "--dataset_dir", str(tmp_path / "store"),
               "--output_dir", str(tmp_path / "decoded"))
    _check_output(tmp_path / "decoded/CC/film.nii.gz", dicom_folder / "CC/film.dcm", 0.98)
    _check_output(tmp_path / "decoded/CT/slice.nii.gz", dicom_folder / "CT/slice.dcm", 0.9)


@pytest.mark.slow
def test_infer_classifier_on_dicom_pictures(tmp_path: Path, dicom_folder: Path, repo: Path, monkeypatch) -> None:
    """The classifier config runs on the folder as it is; the film goes through the region rule."""
    import csv

    from monai.bundle import ConfigParser

    from tests.conftest import run_bundle

    monkeypatch.chdir(repo)  # the configs' macros resolve from the repository root
    parser = ConfigParser()
    parser.read_config(str(repo / "bundle/configs/infer_classifier.yaml"))
    parser["dataset_dir"] = str(dicom_folder)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "classifier.pt")  # untrained head
    run_bundle("inferring", "bundle/configs/infer_classifier.yaml", "--dataset_dir", str(dicom_folder),
               "--ckpt_path", str(tmp_path / "classifier.pt"), "--output_dir", str(tmp_path / "out"),
               "--batch_size", "1", "--num_samples", "4")
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert sorted(r["source"] for r in rows) == ["CC/film.dcm", "CT/slice.dcm"]
    for r in rows:
        assert sum(float(r[f"p_{c}"]) for c in ("CC", "CT")) == pytest.approx(1.0, abs=1e-4)
