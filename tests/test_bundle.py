"""The bundle's train, evaluate and inference configs end to end, through `python -m monai.bundle run`."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from .conftest import data_path, run_bundle

pytestmark = pytest.mark.slow
TINY = ("--max_items", "32", "--batch_size", "8")


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory) -> Path:
    """One tiny training on the embedded phantoms (the README's first command, shortened)."""
    out = tmp_path_factory.mktemp("train")
    proc = run_bundle("training", "bundle/configs/train.yaml", *TINY, "--max_epochs", "1", "--output_dir", str(out))
    assert "embedded phantom dataset" in proc.stdout
    return out


def test_training_writes_checkpoint_metrics_and_figure(phantom_run):
    for name in ("model.pt", "checkpoints/last.pt", "checkpoints/best.pt", "reconstructions.png"):
        assert (phantom_run / name).is_file(), name
    assert any((phantom_run / "tensorboard").iterdir())
    state = torch.load(phantom_run / "model.pt", weights_only=True)
    assert "encoder.0.weight" in state
    last = torch.load(phantom_run / "checkpoints/last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 4 and {"optimizer", "lr_scheduler", "network"} <= set(last)


def test_training_resumes_from_last_checkpoint(phantom_run, tmp_path):
    run = tmp_path / "resumed"
    import shutil

    shutil.copytree(phantom_run, run)
    before = torch.load(run / "checkpoints/last.pt", weights_only=True)
    proc = run_bundle("training", "bundle/configs/train.yaml", *TINY, "--max_epochs", "2", "--output_dir", str(run))
    assert "Resumed from" in proc.stdout and "at epoch 1, iteration 4" in proc.stdout
    after = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert after["trainer"]["iteration"] == 8  # continued, not restarted
    assert after["optimizer"]["state"][0]["step"] == before["optimizer"]["state"][0]["step"] + 4
    # `run` is MONAI Label's alias for `training`; at max_epochs it has nothing left to do
    proc = run_bundle("run", "bundle/configs/train.yaml", *TINY, "--max_epochs", "2", "--output_dir", str(run))
    assert "nothing to do" in proc.stdout


def test_evaluate_writes_metrics(phantom_run, tmp_path):
    run_bundle(
        "evaluating", "bundle/configs/evaluate.yaml", *TINY,
        "--ckpt_path", str(phantom_run / "model.pt"), "--output_dir", str(tmp_path), "--split", "test",
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_images"] == 32 and metrics["compression"] == 16.0 and metrics["split"] == "test"
    assert 5.0 < metrics["psnr"] < 60.0 and -1.0 <= metrics["ssim"] <= 1.0
    assert (tmp_path / "reconstructions.png").is_file()


def test_inference_on_nifti_keeps_affine(phantom_run, tmp_path):
    src = tmp_path / "scans"
    src.mkdir()
    aff = np.array([[0.8, 0, 0, -40.0], [0, 0.8, 0, 12.0], [0, 0, 1, 3.0], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    for i in range(2):
        img = (rng.random((40, 36)) * 255).astype(np.float32)
        nib.save(nib.Nifti1Image(img, aff), src / f"slice{i}.nii.gz")
    out = tmp_path / "out"
    run_bundle(
        "inferring", "bundle/configs/inference.yaml",
        "--dataset_dir", str(src), "--ckpt_path", str(phantom_run / "model.pt"), "--output_dir", str(out),
    )
    recon = nib.load(out / "reconstructions" / "slice0_recon.nii.gz")
    latent = nib.load(out / "latents" / "slice0_latent.nii.gz")
    assert recon.shape[:2] == (40, 36)
    np.testing.assert_allclose(recon.affine, aff, atol=1e-5)
    assert latent.shape[:2] == (10, 9)
    np.testing.assert_allclose(latent.affine[0, 0], 3.2, atol=1e-5)  # 4 x 0.8 mm


def test_bundle_on_real_mednist(tmp_path):
    root = data_path("MedNIST")
    out = tmp_path / "train"
    run_bundle("training", "bundle/configs/train.yaml", "--dataset_dir", str(root), *TINY,
               "--max_epochs", "1", "--output_dir", str(out))
    run_bundle("evaluating", "bundle/configs/evaluate.yaml", "--dataset_dir", str(root), *TINY,
               "--ckpt_path", str(out / "model.pt"), "--output_dir", str(tmp_path / "eval"))
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n_images"] == 32
    run_bundle("inferring", "bundle/configs/inference.yaml", "--dataset_dir", str(root), "--max_items", "6",
               "--ckpt_path", str(out / "model.pt"), "--output_dir", str(tmp_path / "infer"))
    pngs = sorted((tmp_path / "infer" / "reconstructions").rglob("*_recon.png"))
    assert len(pngs) == 6 and pngs[0].parent.name in {"AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT"}
    from PIL import Image

    assert Image.open(pngs[0]).size == (64, 64)


def test_unknown_override_is_refused(tmp_path):
    proc = run_bundle("training", "bundle/configs/train.yaml", "--max_epoch", "1", "--output_dir", str(tmp_path),
                      check=False)
    assert proc.returncode != 0
    assert "unknown config override --max_epoch" in proc.stdout and "--max_epochs" in proc.stdout
