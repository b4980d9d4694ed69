"""Bundle runs of the diagnostic heads: train, evaluate and infer, end to end, on a generated
MedNIST-layout folder with BUSI-style masks (class folders, ``<name>_mask.png``)."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medvae_monai.data.phantoms import PHANTOM_CLASSES, make_phantom
from medvae_monai.networks import MedVAE
from medvae_monai.utils import atomic_torch_save
from tests.conftest import run_bundle

pytestmark = pytest.mark.slow

CLS = ["bundle/configs/train_classifier.yaml", "bundle/configs/evaluate_classifier.yaml", "bundle/configs/infer_classifier.yaml"]
SEG = ["bundle/configs/train_segmentation.yaml", "bundle/configs/evaluate_segmentation.yaml", "bundle/configs/infer_segmentation.yaml"]
SIZE = (36, 40)  # not square, and resized to 32x32 for the network: inference must restore it


@pytest.fixture(scope="module")
def lesions(tmp_path_factory):
    """12 images per class; 'malignant' lesions are larger and brighter than 'benign' ones."""
    root = tmp_path_factory.mktemp("lesions")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: SIZE[0], : SIZE[1]]
    for cls, (radius, level) in {"benign": (4, 150), "malignant": (9, 230)}.items():
        (root / cls).mkdir()
        for i in range(12):
            cy, cx = rng.integers(12, SIZE[0] - 12), rng.integers(12, SIZE[1] - 12)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            img = np.clip(rng.normal(60, 15, SIZE) + mask * level, 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / cls / f"case{i:02d}.png")
            Image.fromarray((mask * 255).astype(np.uint8)).save(root / cls / f"case{i:02d}_mask.png")
    vae = root.parent / "vae.pt"  # an untrained VAE of the bundle's vae_def is enough to run the configs
    atomic_torch_save(MedVAE(2, 1, latent_channels=1, channels=(32, 64)).state_dict(), vae)
    return root, vae


def test_classifier_train_evaluate_infer(lesions, tmp_path):
    data, vae = lesions
    common = ["--dataset_dir", str(data), "--spatial_size", "[32, 32]", "--batch_size", "8"]
    run_bundle("training", CLS[0], *common, "--max_epochs", "2", "--vae_ckpt", str(vae), "--output_dir", str(tmp_path / "train"))
    model = tmp_path / "train" / "model.pt"
    assert model.is_file() and (tmp_path / "train" / "checkpoints" / "last.pt").is_file()

    run_bundle("evaluating", CLS[1], *common, "--ckpt_path", str(model), "--output_dir", str(tmp_path / "eval"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_images"] == 4 and metrics["split"] == "test"  # 2 test images per class
    assert 0 <= metrics["auroc"] <= 1 and 0 <= metrics["acc"] <= 1
    for name in ("benign", "malignant"):
        assert set(metrics["per_class"][name]) == {"auroc", "sensitivity", "specificity", "n"}

    run_bundle("inferring", CLS[2], *common, "--ckpt_path", str(model), "--num_samples", "4", "--output_dir", str(tmp_path / "infer"))
    rows = list(csv.DictReader((tmp_path / "infer" / "predictions.csv").open()))
    assert len(rows) == 24 and rows[0]["source"].endswith(".png")
    for r in rows:
        assert float(r["p_benign"]) + float(r["p_malignant"]) == pytest.approx(1.0, abs=1e-4)
        assert float(r["std_benign"]) >= 0 and r["prediction"] in ("benign", "malignant")
    assert json.loads((tmp_path / "infer" / "predictions.json").read_text())["num_samples"] == 4


def test_classifier_class_count_mismatch_is_refused(lesions, tmp_path):
    data, vae = lesions
    proc = run_bundle(
        "training", CLS[0], "--dataset_dir", str(data), "--num_classes", "3", "--max_epochs", "1",
        "--vae_ckpt", str(vae), "--output_dir", str(tmp_path), check=False,
    )
    assert proc.returncode != 0
    assert "InputError" in proc.stdout and "--num_classes 2" in proc.stdout


def test_segmentation_train_evaluate_infer(lesions, tmp_path):
    data, vae = lesions
    common = ["--dataset_dir", str(data), "--spatial_size", "[32, 32]", "--batch_size", "8"]
    run_bundle("training", SEG[0], *common, "--max_epochs", "2", "--freeze_encoder", "False", "--recon_weight", "0.5",
               "--vae_ckpt", str(vae), "--output_dir", str(tmp_path / "train"))
    model = tmp_path / "train" / "model.pt"
    assert model.is_file()

    run_bundle("evaluating", SEG[1], *common, "--ckpt_path", str(model), "--output_dir", str(tmp_path / "eval"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["task"] == "segmentation" and set(metrics["per_label"]) == {"lesion"}
    assert metrics["dice"] is None or 0 <= metrics["dice"] <= 1
    assert "hd95" in metrics["per_label"]["lesion"]

    run_bundle("inferring", SEG[2], *common, "--ckpt_path", str(model), "--max_items", "4", "--output_dir", str(tmp_path / "infer"))
    masks = sorted((tmp_path / "infer" / "masks").rglob("*_seg.png"))
    assert len(masks) == 4
    for m in masks:
        arr = np.asarray(Image.open(m))
        assert arr.shape == SIZE  # the input's geometry, not the network's 32x32
        assert set(np.unique(arr)) <= {0, 255}


def test_lung_ct_3d_classifier_on_phantoms_and_an_msd_datalist(tmp_path):
    """The lung-CT path: 3D CT volumes in HU through the lung window and a 3D VAE under the head,
    on the embedded 3D phantoms and on an MSD-style datalist of NIfTI CT volumes."""
    vae = tmp_path / "vae3d.pt"  # untrained, of the bundle's vae_def in 3D: enough to run the configs
    atomic_torch_save(MedVAE(3, 1, latent_channels=1, channels=(32, 64)).state_dict(), vae)
    ct = ["--spatial_dims", "3", "--intensity", "ct", "--ct_window", "lung", "--batch_size", "4"]

    run_bundle(
        "training", CLS[0], *ct, "--vae_ckpt", str(vae), "--max_items", "12", "--max_epochs", "1",
        "--output_dir", str(tmp_path / "train"),
    )  # fmt: skip
    model = tmp_path / "train" / "model.pt"
    run_bundle("evaluating", CLS[1], *ct, "--max_items", "6", "--ckpt_path", str(model), "--output_dir", str(tmp_path / "eval"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_images"] == 6 and set(metrics["per_class"]) == set(PHANTOM_CLASSES)

    # the same model on an MSD-style datalist: NIfTI volumes with an anisotropic CT spacing, integer labels
    data = tmp_path / "chest_ct"
    (data / "imagesTr").mkdir(parents=True)
    entries = []
    for i in range(6):
        hu, _, label = make_phantom(i, 32, 3)
        name = f"imagesTr/case_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(hu, np.diag([0.8, 0.8, 2.5, 1.0])), data / name)
        entries.append({"image": name, "label": label})
    (data / "dataset.json").write_text(json.dumps({"name": "phantom chest CT", "training": entries}))
    names = ["--dataset_dir", str(data), "--class_names", str(list(PHANTOM_CLASSES))]
    run_bundle("inferring", CLS[2], *ct, *names, "--ckpt_path", str(model), "--num_samples", "2", "--output_dir", str(tmp_path / "infer"))
    rows = list(csv.DictReader((tmp_path / "infer" / "predictions.csv").open()))
    assert rows and all(r["source"].endswith(".nii.gz") and r["prediction"] in PHANTOM_CLASSES for r in rows)
    for r in rows:
        assert sum(float(r[f"p_{c}"]) for c in PHANTOM_CLASSES) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_infer_classifier_without_its_checkpoint_names_the_checkpoint(tmp_path):
    """A flat folder and no classifier checkpoint: the error names --ckpt_path, not 'num_classes ... got 0'."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((64, 64)) * 255).astype(np.uint8)).save(flat / f"{i}.png")
    missing = tmp_path / "classifier.pt"
    proc = run_bundle(
        "inferring", "bundle/configs/infer_classifier.yaml", "--dataset_dir", str(flat), "--ckpt_path", str(missing),
        "--output_dir", str(tmp_path / "out"), check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert f"checkpoint '{missing}' does not exist" in proc.stdout and "--ckpt_path" in proc.stdout
    assert "num_classes" not in proc.stdout
    assert not (tmp_path / "out").exists()  # a run refused at start-up leaves no empty output folder


def test_classifier_class_names_say_why_there_are_too_few(tmp_path):
    import torch

    from medvae_monai.errors import InputError
    from medvae_monai.utils import classifier_class_names

    assert classifier_class_names(None, ["a", "b"], None) == ["a", "b"]
    assert classifier_class_names(["x", "y"], ["a"], None) == ["x", "y"]
    seg = tmp_path / "seg.pt"
    torch.save({"w": torch.zeros(1)}, seg)
    with pytest.raises(InputError, match="keeps no class names"):
        classifier_class_names(None, [], seg)
    with pytest.raises(InputError, match="at least 2 class folders"):
        classifier_class_names(None, ["only"], None)
