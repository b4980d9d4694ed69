"""Data sources: phantoms, deterministic splits, MedNIST folders, MedMNIST npz, MSD datalists
through the nibabel and ITK readers, and clear errors for unusable folders and files."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medvae_monai.data import PHANTOM_CLASSES, ImageSource, make_dataset, make_phantom, split_items
from medvae_monai.errors import InputError

from .conftest import data_path


def test_phantoms_are_deterministic_and_realistic():
    a, mask_a, label_a = make_phantom(5, 64, 2, seed=0)
    b, mask_b, label_b = make_phantom(5, 64, 2, seed=0)
    assert np.array_equal(a, b) and np.array_equal(mask_a, mask_b) and label_a == label_b
    assert not np.array_equal(a, make_phantom(5, 64, 2, seed=1)[0])
    assert -1100 < a.min() < -900 and 600 < a.max() < 800  # air to bone, in HU
    labels = [make_phantom(i, 32, 3)[2] for i in range(3)]
    assert labels == [0, 1, 2]
    for i in range(1, 3):  # cyst and tumour phantoms carry a lesion mask
        img, mask, _ = make_phantom(i, 32, 3)
        assert img.shape == mask.shape == (32, 32, 32) and mask.sum() > 0
    assert make_phantom(0, 32, 3)[1].sum() == 0


def test_phantom_dataset_is_the_default():
    ds = make_dataset(None, "val", max_items=12)
    assert ds.source.kind == "phantom" and ds.source.class_names == list(PHANTOM_CLASSES)
    x = ds[0]["image"]
    assert x.shape == (1, 64, 64) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_split_rule():
    items = [{"source": f"c{c}/{i:06d}.png", "label": c} for c in range(2) for i in range(24)]
    parts = {s: split_items(items, s) for s in ("train", "val", "test", "trainval", "all")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [36, 4, 8]
    assert parts["test"][0]["source"] == "c0/000020.png"  # the last sixth of each class, by name
    assert sorted(i["source"] for i in parts["trainval"]) == sorted(i["source"] for i in parts["train"] + parts["val"])
    assert len(parts["all"]) == 48
    shuffled = list(reversed(items))
    assert split_items(shuffled, "test") == parts["test"]  # independent of listing order
    with pytest.raises(InputError, match="Unknown split"):
        split_items(items, "holdout")


def test_patient_split_keeps_each_patient_on_one_side():
    # 30 patients with 1-3 nodules each; patients 0-9 have a malignant one
    items = [{"source": f"p{p:02d}_{n}", "patient_id": f"p{p:02d}", "label": int(p < 10 and n == 0)}
             for p in range(30) for n in range(1 + p % 3)]
    parts = {s: split_items(items, s) for s in ("train", "val", "test")}
    patients = {s: {i["patient_id"] for i in v} for s, v in parts.items()}
    assert not patients["train"] & patients["test"] and not patients["val"] & (patients["train"] | patients["test"])
    assert sum(len(v) for v in parts.values()) == len(items)
    # the last sixth of each stratum's sorted patients: 2 of the 10 malignant, 3 of the 20 others
    assert patients["test"] == {"p08", "p09", "p27", "p28", "p29"}
    assert split_items(list(reversed(items)), "test") == parts["test"]


def test_mednist_split_matches_documented_file_ranges():
    root = data_path("MedNIST")
    source = ImageSource(root)
    test, train, val = source.items("test"), source.items("train"), source.items("val")
    assert source.class_names == ["AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT"]
    assert len(test) == 3000 and len(val) == 1500 and len(train) == 13500
    numbers = {s: sorted({int(i["source"].split("/")[1][:6]) for i in part}) for s, part in
               (("train", train), ("val", val), ("test", test))}
    assert numbers["train"][0] == 0 and numbers["train"][-1] == 2249
    assert numbers["val"][0] == 2250 and numbers["val"][-1] == 2499
    assert numbers["test"][0] == 2500 and numbers["test"][-1] == 2999
    ds = make_dataset(root, "test", max_items=12)
    x = ds[0]["image"]
    assert x.shape == (1, 64, 64) and float(x.max()) <= 1.0 and ds[0]["label"] == 0


def test_medmnist_official_splits():
    npz = data_path("MedMNIST", "breastmnist.npz")
    sizes = {s: len(ImageSource(npz).items(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 546, "val": 78, "test": 156}
    ds = make_dataset(npz, "test")
    assert ds[0]["image"].shape == (1, 28, 28) and ds[0]["label"] in (0, 1)


def test_msd_datalist_with_nibabel_and_itk(tmp_path):
    rng = np.random.default_rng(0)
    aff = np.diag([1.5, 1.5, 3.0, 1.0])
    entries = []
    for i in range(3):
        vol = rng.normal(size=(12, 10, 8)).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, aff), tmp_path / f"img{i}.nii.gz")
        nib.save(nib.Nifti1Image((vol > 1).astype(np.uint8), aff), tmp_path / f"lab{i}.nii.gz")
        entries.append({"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps({"training": entries}))
    ds = make_dataset(tmp_path, "all", spatial_dims=3, with_mask=True, spatial_size=(16, 16, 8))
    assert len(ds) == 3 and ds.source.kind == "datalist" and ds.source.has_masks
    item = ds[0]
    assert item["image"].shape == item["mask"].shape == (1, 16, 16, 8)
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    # the ITK reader takes MetaImage (.mha) through the same chain
    import itk

    itk.imwrite(itk.image_from_array(rng.normal(size=(8, 10, 12)).astype(np.float32)), str(tmp_path / "vol.mha"))
    (tmp_path / "mha.json").write_text(json.dumps({"training": [{"image": "vol.mha"}]}))
    vol = make_dataset(tmp_path / "mha.json", "all", spatial_dims=3)[0]["image"]
    assert vol.shape == (1, 12, 10, 8)


def test_real_hippocampus_volume_keeps_affine():
    root = data_path("Task04_Hippocampus")
    ds = make_dataset(root, "test", spatial_dims=3, with_mask=True, binary_mask=False, max_items=2)
    first = ImageSource(root, spatial_dims=3, max_items=2).items("test")[0]
    ref = nib.load(first["image"])
    torch.testing.assert_close(ds[0]["image"].affine, torch.as_tensor(ref.affine), check_dtype=False)
    assert tuple(ds[0]["image"].shape[1:]) == ref.shape and set(torch.unique(ds[0]["mask"]).tolist()) == {0, 1, 2}


def test_clear_errors_for_unusable_input(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="hold.* no images"):
        ImageSource(empty).items("all")
    cls = tmp_path / "tree" / "CXR"
    cls.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(cls / "ok.png")
    (cls / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match=r"notes.txt: not an image file"):
        ImageSource(tmp_path / "tree").items("all")
    (cls / "notes.txt").unlink()
    (cls / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(InputError, match=r"broken.png: cannot be read as an image"):
        make_dataset(tmp_path / "tree", "all")
    (cls / "broken.png").unlink()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(cls / "rgb.png")
    with pytest.raises(InputError, match=r"rgb.png.*takes 1 channel"):
        make_dataset(tmp_path / "tree", "all", in_channels=1)
    with pytest.raises(InputError, match="does not exist"):
        ImageSource(tmp_path / "nowhere").items("all")
