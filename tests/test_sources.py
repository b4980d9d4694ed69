"""ImageSource: one description of dataset_dir. The CSV datalist (LIDC-IDRI nodules and small CSVs),
a single image file, patient-grouped splits, the picture-or-volume rule and the intensity record."""

from __future__ import annotations

import collections

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medvae_monai.data import (
    CheckedCacheDataset,
    CSVDatalistSource,
    ImageFileSource,
    ImageSource,
    make_dataset,
    split_items,
)
from medvae_monai.errors import InputError

from .conftest import data_path, run_bundle


def _nifti(path, shape=(12, 10, 8), value=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    vol = np.random.default_rng(seed).normal(size=shape).astype(np.float32) if value is None else np.full(shape, value)
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([0.7, 0.7, 2.5, 1.0])), path)


def _png(path, value=100, shape=(16, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


def _csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def test_lidc_csv_datalist_splits_by_patient():
    csv = data_path("LIDC-IDRI-NoduleVOIs", "labels.csv")
    source = ImageSource(csv, spatial_dims=3)
    assert isinstance(source, CSVDatalistSource) and source.kind == "csv"
    assert len(source.all_items) == 806 and len({it["patient_id"] for it in source.all_items}) == 441
    assert source.class_names == ["0", "1"] and source.has_masks and not source.is_picture
    assert source.output_suffix == ".nii.gz" and source.root == csv.parent
    first = source.items("all")[0]
    assert first["source"] == "image/LIDC-IDRI-0003_R_2.nii.gz" and first["label"] == 1  # the diagnosis column
    assert first["diameter_mm"] == pytest.approx(21.454) and first["malignancy"] == 5  # extra columns kept
    assert first["mask"] == str(csv.parent / "nodule_mask" / "LIDC-IDRI-0003_R_2.nii.gz")
    parts = {s: source.items(s) for s in ("train", "val", "test")}
    patients = {s: {it["patient_id"] for it in part} for s, part in parts.items()}
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"]
                or patients["val"] & patients["test"])  # no patient on both sides
    assert sum(len(p) for p in parts.values()) == 806 and sum(len(p) for p in patients.values()) == 441
    for s, frac in (("val", 1 / 12), ("test", 1 / 6)):  # fractions of patients, stratified by malignancy
        assert len(patients[s]) == pytest.approx(441 * frac, abs=2)
        share = collections.Counter(it["label"] for it in parts[s])[1] / len(parts[s])
        assert share == pytest.approx(277 / 806, abs=0.06)
    # the same folder as dataset_dir reads its labels.csv; the split is deterministic
    again = ImageSource(csv.parent, spatial_dims=3)
    assert again.kind == "csv" and again.items("test") == parts["test"]
    assert {source.split_of(it) for it in parts["val"]} == {"val"}
    # the nodule volumes load through the source's chain, masks aligned
    ds = CheckedCacheDataset(parts["test"][:2], source.preprocessing(with_mask=True))
    ref = nib.load(parts["test"][0]["image"])
    assert tuple(ds[0]["image"].shape[1:]) == ref.shape == tuple(ds[0]["mask"].shape[1:])
    torch.testing.assert_close(ds[0]["image"].affine, torch.as_tensor(ref.affine), check_dtype=False)


def test_small_csv_with_relative_paths_class_names_and_masks(tmp_path):
    for i in range(6):
        _png(tmp_path / "img" / f"{i}.png", 40 * i)
        _png(tmp_path / "seg" / f"{i}.png", 255 if i % 2 else 0)
    rows = [(f"img/{i}.png", f"seg/{i}.png", ["benign", "malignant"][i % 2], f"P{i // 2}", i * 1.5) for i in range(6)]
    csv = _csv(tmp_path / "list.csv", ["image", "mask", "label", "patient_id", "size_mm"], rows)
    source = ImageSource(csv)
    assert source.kind == "csv" and source.class_names == ["benign", "malignant"] and source.is_picture
    assert source.output_suffix == ".png" and source.has_masks
    items = source.items("all")
    assert [it["label"] for it in items] == [0, 1, 0, 1, 0, 1] and items[1]["class_name"] == "malignant"
    assert items[3]["size_mm"] == 4.5 and items[0]["patient_id"] == "P0"
    ds = make_dataset(csv, "all", with_mask=True)
    assert ds.source.kind == "csv" and ds[1]["image"].shape == ds[1]["mask"].shape == (1, 16, 16)
    assert float(ds[1]["mask"].max()) == 1.0 and float(ds[0]["mask"].max()) == 0.0
    # a model's class list fixes the indices; a name outside it is refused
    relabelled = ImageSource(csv, class_names=["normal", "benign", "malignant"]).items("all")
    assert [it["label"] for it in relabelled][:2] == [1, 2]
    with pytest.raises(InputError, match="'malignant' is not one of the classes"):
        ImageSource(csv, class_names=["benign", "normal"]).items("all")


def test_csv_without_patients_or_labels_and_its_errors(tmp_path):
    for i in range(12):
        _nifti(tmp_path / f"v{i}.nii.gz", seed=i)
    rows = [(f"v{i}.nii.gz", i % 2, 60 + i) for i in range(12)]
    _csv(tmp_path / "labels.csv", ["image", "diagnosis", "age"], rows)
    source = ImageSource(tmp_path, spatial_dims=3)
    assert source.kind == "csv" and source.class_names == ["0", "1"] and not source.has_masks
    # without patient ids, the file-name rule of split_items applies, per class
    assert source.items("test") == split_items(source.all_items, "test")
    with pytest.raises(InputError, match="masks were requested"):
        source.preprocessing(with_mask=True)
    unlabelled = ImageSource(_csv(tmp_path / "u.csv", ["image"], [(f"v{i}.nii.gz",) for i in range(3)]), spatial_dims=3)
    assert unlabelled.class_names == [] and "label" not in unlabelled.items("all")[0]
    bad = {
        "no 'image' column \\(is 'images' it": (["images", "label"], [("v0.nii.gz", 0)]),
        "row 3: image .*missing.nii.gz does not exist": (["image"], [("v0.nii.gz",), ("missing.nii.gz",)]),
        "rows 2 and 3 both list v0.nii.gz": (["image"], [("v0.nii.gz",), ("v0.nii.gz",)]),
        "row 2 has no patient_id": (["image", "patient_id"], [("v0.nii.gz", "")]),
        "values \\[-1\\] are outside": (["image", "label"], [("v0.nii.gz", -1)]),
        "row 3 has no 'diagnosis' \\(1 of 3 rows": (["image", "diagnosis"], [("v0.nii.gz", 0), ("v1.nii.gz", ""), ("v2.nii.gz", 1)]),
        "row 4: 'diagnosis' is 'benign', but row 2 has 0": (["image", "diagnosis"],
                                                            [("v0.nii.gz", 0), ("v1.nii.gz", 1), ("v2.nii.gz", "benign")]),
    }
    # breaker round 3, finding 7: the same file spelled twice (relative and absolute) is a duplicate too
    bad[f"rows 2 and 3 both list v0.nii.gz \\(as {tmp_path}/v0.nii.gz\\)"] = (["image"], [("v0.nii.gz",), (tmp_path / "v0.nii.gz",)])
    for match, (header, rows) in bad.items():
        with pytest.raises(InputError, match=match):
            ImageSource(_csv(tmp_path / "bad.csv", header, rows)).items("all")
    # finding 6: a ragged row shifted values into other columns; it is refused naming the row
    (tmp_path / "ragged.csv").write_text("image,diagnosis,age\nv0.nii.gz,0,61\nv1.nii.gz,1\n")
    with pytest.raises(InputError, match="row 3 has 2 fields and the header 3"):
        ImageSource(tmp_path / "ragged.csv").items("all")
    (tmp_path / "long.csv").write_text("image,diagnosis\nv0.nii.gz,0,61\n")
    with pytest.raises(InputError, match="row 2 has 3 fields and the header 2"):
        ImageSource(tmp_path / "long.csv").items("all")


def test_csv_extra_columns_are_typed_per_column_so_batches_collate(tmp_path):
    """Breaker round 3, finding 6: an empty or 'n/a' cell in an extra column (diameter_mm) left items with other
    keys or types, and collating a batch failed with a 100-line traceback."""
    from monai.data import list_data_collate

    for i in range(4):
        _nifti(tmp_path / f"v{i}.nii.gz", seed=i)
    rows = [("v0.nii.gz", 0, 12.5, "n/a", 3), ("v1.nii.gz", 1, "", "left", 4), ("v2.nii.gz", 0, 7, "", 5), ("v3.nii.gz", 1, 30, "right", 6)]
    _csv(tmp_path / "labels.csv", ["image", "diagnosis", "diameter_mm", "side", "readers"], rows)
    items = ImageSource(tmp_path, spatial_dims=3).items("all")
    assert [it["readers"] for it in items] == [3, 4, 5, 6]
    diameters = [it["diameter_mm"] for it in items]
    assert diameters[0] == 12.5 and np.isnan(diameters[1]) and diameters[2:] == [7.0, 30.0]
    assert [it["side"] for it in items] == ["n/a", "left", "", "right"]
    batch = list_data_collate([{k: it[k] for k in ("diameter_mm", "side", "readers", "label")} for it in items])
    assert batch["diameter_mm"].dtype == torch.float64 and batch["side"] == ["n/a", "left", "", "right"]


def test_single_image_file_is_a_dataset(tmp_path):
    _png(tmp_path / "scan.png", 200)
    source = ImageSource(tmp_path / "scan.png")
    assert isinstance(source, ImageFileSource) and source.kind == "file" and source.is_picture
    assert source.root == tmp_path and source.output_suffix == ".png"
    for split in ("train", "val", "test", "all"):  # any config runs on it
        assert [it["source"] for it in source.items(split)] == ["scan.png"]
    x = make_dataset(tmp_path / "scan.png", "test")[0]["image"]
    assert x.shape == (1, 16, 16) and float(x.max()) == pytest.approx(200 / 255)
    _nifti(tmp_path / "ct.nii.gz")
    volume = ImageSource(tmp_path / "ct.nii.gz", spatial_dims=3)
    assert volume.kind == "file" and not volume.is_picture and volume.output_suffix == ".nii.gz"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="notes.txt.*no supported kind"):
        ImageSource(tmp_path / "notes.txt")


def test_picture_or_volume_and_intensity_record(tmp_path):
    phantoms = ImageSource(None, max_items=4)
    assert phantoms.kind == "phantom" and not phantoms.is_picture and phantoms.intensity_mode == "ct"
    assert phantoms.output_suffix == ".nii.gz" and phantoms.root is None
    medmnist = ImageSource(data_path("MedMNIST", "breastmnist.npz"))
    assert medmnist.is_picture and medmnist.output_suffix == ".png" and medmnist.intensity_mode == "uint8"
    # the recorded map inverts the scaling: CT window (fixed) and percentiles (per image)
    for source, mode in ((phantoms, "ct"), (ImageSource(None, 3, max_items=2, intensity="percentile"), "percentile")):
        item = source.items("val")[0]
        raw = item["image"].clone()
        d = source.preprocessing(record_intensity=True)(item)
        p = d["intensity"]
        assert source.intensity_mode == mode and p["b_min"] == 0.0 and p["b_max"] == 1.0
        back = d["image"] * (p["a_max"] - p["a_min"]) + p["a_min"]
        inside = (raw >= p["a_min"]) & (raw <= p["a_max"])
        torch.testing.assert_close(back[inside], raw[inside].float(), atol=1e-2, rtol=1e-4)


@pytest.mark.slow
def test_bundle_inference_on_a_csv_datalist_and_on_one_file(tmp_path):
    data = tmp_path / "data"
    for i in range(2):
        _png(data / "img" / f"{i}.png", 60 + 80 * i, (64, 64))
    rows = [("img/0.png", "a", "p0"), ("img/1.png", "b", "p1")]
    csv = _csv(data / "list.csv", ["image", "label", "patient_id"], rows)
    for dataset_dir, out in ((csv, tmp_path / "csv"), (data / "img" / "1.png", tmp_path / "one")):
        run_bundle("inferring", "bundle/configs/inference.yaml", "--dataset_dir", str(dataset_dir),
                   "--output_dir", str(out))
    written = sorted(p.relative_to(tmp_path / "csv").as_posix() for p in (tmp_path / "csv").rglob("*.*"))
    assert written == ["latents/img/0_latent.nii.gz", "latents/img/1_latent.nii.gz",
                       "reconstructions/img/0_recon.png", "reconstructions/img/1_recon.png"]
    assert sorted(p.name for p in (tmp_path / "one").rglob("*.*")) == ["1_latent.nii.gz", "1_recon.png"]
    recon = np.asarray(Image.open(tmp_path / "one" / "reconstructions" / "1_recon.png"))
    assert recon.shape == (64, 64) and abs(float(recon.mean()) - 140) < 40  # a reconstruction of the input


def test_msd_datalist_sections_are_its_splits(tmp_path, caplog):
    """Breaker round 3, finding 4: a datalist's own 'validation' and 'test' sections were ignored, and --split test
    took training images. They are the splits now; MSD's unlabelled 'test' list is not one, and a line says so."""
    import json

    for name in [f"tr{i}" for i in range(12)] + ["va0", "va1", "te0", "te1", "te2"]:
        _nifti(tmp_path / "img" / f"{name}.nii.gz", seed=len(name))
        _nifti(tmp_path / "lab" / f"{name}.nii.gz", value=1)

    def entry(name):
        return {"image": f"img/{name}.nii.gz", "label": f"lab/{name}.nii.gz"}

    listing = tmp_path / "dataset.json"
    training = [entry(f"tr{i}") for i in range(12)]
    listing.write_text(json.dumps({"training": training, "validation": [entry("va0"), entry("va1")],
                                   "test": [entry(f"te{i}") for i in range(3)]}))  # fmt: skip
    source = ImageSource(listing, spatial_dims=3)
    names = {s: sorted(it["source"].split("/")[1][:3] for it in source.items(s)) for s in ("train", "val", "test")}
    assert names["val"] == ["va0", "va1"] and names["test"] == ["te0", "te1", "te2"] and len(names["train"]) == 12
    assert len(source.items("all")) == 17 and len(source.items("trainval")) == 14
    # only a validation section: test is cut from training (1/6 of 12 = 2), val is the section
    listing.write_text(json.dumps({"training": training, "validation": [entry("va0")]}))
    source = ImageSource(listing, spatial_dims=3)
    assert len(source.items("test")) == 2 and len(source.items("train")) == 10 and len(source.items("val")) == 1
    # MSD's own test list: unlabelled images, not a split; val and test are cut from training as before
    listing.write_text(json.dumps({"training": training, "test": ["img/te0.nii.gz"]}))
    source = ImageSource(listing, spatial_dims=3)
    with caplog.at_level("WARNING", logger="medvae_monai"):
        assert all(it["source"].startswith("img/tr") for it in source.items("test"))
    assert "'test' section (1 images) lacks the mask of 'training'" in caplog.text
