"""The bundle's train, evaluate and inference configs end to end, through `python -m monai.bundle run`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from .conftest import REPO, data_path, run_bundle

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
    # other data in the same output folder (here a different training set) is refused, not mixed in
    proc = run_bundle("training", "bundle/configs/train.yaml", "--max_items", "16", "--batch_size", "8", "--max_epochs", "3",
                      "--output_dir", str(run), check=False)  # fmt: skip
    assert proc.returncode != 0 and "written for other data or settings" in proc.stdout and "--resume false" in proc.stdout
    # so is another batch size: ignite would keep the saved iterations per epoch (a fraction of the data)
    proc = run_bundle("training", "bundle/configs/train.yaml", "--max_items", "32", "--batch_size", "4", "--max_epochs", "3",
                      "--output_dir", str(run), check=False)  # fmt: skip
    assert proc.returncode != 0 and '"batch_size": 8' in proc.stdout and '"batch_size": 4' in proc.stdout
    assert "Traceback" not in proc.stdout and "ERROR" not in proc.stdout  # one line, not ignite's and MONAI's logs of it
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["trainer"]["iteration"] == 8


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
        img = nib.Nifti1Image((rng.random((40, 36)) * 255).astype(np.float32), aff)
        if i == 1:  # microns in MNI space: MONAI's writer wrote units 'unknown' (read as mm) and code 1 (scanner)
            img.header.set_xyzt_units("micron", "sec")
            img.set_sform(aff, code=4)
        nib.save(img, src / f"slice{i}.nii.gz")
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
    for name in ("reconstructions/slice1_recon.nii.gz", "latents/slice1_latent.nii.gz"):
        header = nib.load(out / name).header
        assert header.get_xyzt_units() == ("micron", "sec") and header["sform_code"] == header["qform_code"] == 4, name
    codes = [nib.load(p).header["sform_code"] for p in (out / "reconstructions/slice0_recon.nii.gz", src / "slice0.nii.gz")]
    assert codes[0] == codes[1]  # nibabel's default for an image made from an affine (2, aligned) stays


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


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_a_renamed_copy_runs_from_its_folder_and_from_anywhere(tmp_path):
    """The Zoo way (cd into the bundle, configs/...) and --bundle_root from an unrelated folder, on a
    renamed copy; neither writes into the bundle (default outputs go beside it)."""
    copy = tmp_path / "zoo" / "medvae_renamed"
    shutil.copytree(REPO / "bundle", copy)
    before = _tree(copy)
    pics = tmp_path / "pics"  # the bundle-cwd case: two greyscale PNGs
    pics.mkdir()
    from PIL import Image

    for i in range(2):
        Image.fromarray(((np.mgrid[0:64, 0:64][1] * 3 + 40 + 10 * i).clip(0, 255)).astype(np.uint8)).save(pics / f"p{i}.png")
    proc = run_bundle("inferring", "configs/inference.yaml", "--dataset_dir", str(pics), cwd=copy)
    out = tmp_path / "zoo" / "runs" / "inference"
    assert f"outputs: {out}" in proc.stdout
    assert sorted(p.name for p in (out / "reconstructions").iterdir()) == ["p0_recon.png", "p1_recon.png"]
    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    run_bundle(
        "inferring", str(copy / "configs" / "inference.yaml"), "--bundle_root", str(copy),
        "--dataset_dir", "../pics", "--output_dir", "out", cwd=elsewhere,
    )  # fmt: skip
    assert (elsewhere / "out" / "latents" / "p1_latent.nii.gz").is_file()
    assert _tree(copy) == before, "running the bundle wrote into its folder"


def test_command_line_mistakes_give_one_line(tmp_path):
    """A misspelled run id is refused with the valid ones before anything is written; --help lists them;
    a config outside its bundle names --bundle_root."""
    out = tmp_path / "out"
    proc = run_bundle("train", "bundle/configs/train.yaml", "--output_dir", str(out), check=False)
    assert proc.returncode == 1 and not out.exists()
    assert "unknown run id 'train'" in proc.stdout and "training, run" in proc.stdout and "Traceback" not in proc.stdout
    proc = run_bundle("run", "bundle/configs/inference.yaml", "--help")
    assert "run ids: inferring" in proc.stdout and "--dataset_dir None" in proc.stdout
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(REPO / "bundle" / "configs" / "inference.yaml", lone)
    proc = run_bundle("inferring", str(lone / "inference.yaml"), "--output_dir", str(out), check=False)
    assert proc.returncode == 1 and "--bundle_root" in proc.stdout and "Traceback" not in proc.stdout


def test_a_volume_given_to_the_2d_model_names_the_fix(tmp_path):
    """The issue's 2D/3D mix-up: a 3D NIfTI into the default (2D) VAE says what is wrong and which
    options fix it, in one line, before any weights or outputs."""
    import nibabel as nib

    vol = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((24, 24, 16)).astype(np.float32), np.eye(4)), vol)
    proc = run_bundle("inferring", "bundle/configs/inference.yaml", "--dataset_dir", str(vol),
                      "--output_dir", str(tmp_path / "out"), check=False)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stdout, proc.stdout[-2000:]
    assert "this input is a 3D volume and the model is 2D" in proc.stdout and "--spatial_dims 3" in proc.stdout


def test_classifier_checkpoint_keeps_its_class_names(tmp_path):
    """A head keeps its class names in the state dict (weights_only-safe), so inference on a flat
    folder needs no --class_names and evaluation indexes labels by the checkpoint's classes."""
    import json

    import torch
    from monai.bundle import ConfigParser

    from medvae_monai.errors import InputError
    from medvae_monai.networks import LatentClassifier
    from medvae_monai.utils import checkpoint_class_names, load_state_dict

    with pytest.raises(InputError, match="2 class names"):
        LatentClassifier(2, 1, 3, class_names=["a", "b"])
    names = ["benign", "malignant", "normal"]
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle" / "configs" / "infer_classifier.yaml"))
    parser["bundle_root"], parser["class_names"] = str(REPO / "bundle"), names
    torch.manual_seed(0)
    ckpt = tmp_path / "cls.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    assert checkpoint_class_names(ckpt) == names and "head.class_names_utf8" in load_state_dict(ckpt)

    flat = tmp_path / "flat"  # no class sub-folders: the source alone has no class names
    flat.mkdir()
    from PIL import Image

    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((64, 64)) * 255).astype(np.uint8)).save(flat / f"u{i}.png")
    run_bundle("inferring", "bundle/configs/infer_classifier.yaml", "--dataset_dir", str(flat),
               "--ckpt_path", str(ckpt), "--num_samples", "2", "--output_dir", str(tmp_path / "out"))  # fmt: skip
    rows = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"]
    assert len(rows) == 2 and all(set(r["probability"]) == set(names) and r["prediction"] in names for r in rows)
