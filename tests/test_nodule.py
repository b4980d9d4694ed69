"""Lung-nodule preprocessing on real LIDC-IDRI VOIs and on constructed volumes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from monai.data import MetaTensor

from medvae_monai.errors import InputError
from medvae_monai.networks import LatentClassifierEnsemble, LatentImageClassifier, MedVAE
from medvae_monai.transforms import (
    NUM_CUBE_ORIENTATIONS,
    NoduleCrop,
    NoduleCropd,
    nodule_centre,
    nodule_preprocessing,
    orient_cube,
)
from tests.conftest import data_path, run_bundle


def test_nodule_crop_centres_the_mask_and_pads_at_the_border():
    img = torch.arange(20 * 20 * 6, dtype=torch.float32).reshape(1, 20, 20, 6) + 1  # no zero voxel inside
    mask = torch.zeros(1, 20, 20, 6)
    mask[0, 1:4, 15:18, 4:6] = 1  # a nodule at the VOI's corner
    assert nodule_centre(mask, img.shape[1:]) == [2, 16, 4]
    out = NoduleCrop(8)(img, mask)
    assert out.shape == (1, 8, 8, 8)
    assert out[0, 4, 4, 4] == img[0, 2, 16, 4]  # the nodule's centre is the cube's centre
    assert (out[0, :2] == 0).all() and (out[0, :, :, 6:] == 0).all()  # padding beyond the VOI
    d = NoduleCropd(["image", "mask"], size=8)({"image": img, "mask": mask})
    assert torch.equal(d["image"], out) and d["mask"][0, 4, 4, 4] == 1
    # no mask: the volume's centre
    assert NoduleCrop(8)(img)[0, 4, 4, 4] == img[0, 10, 10, 3]


def test_orient_cube_gives_sixteen_distinct_invertible_views():
    x = torch.randn(2, 1, 4, 4, 4)
    views = [orient_cube(x, i) for i in range(NUM_CUBE_ORIENTATIONS)]
    assert torch.equal(views[0], x) and all(v.shape == x.shape for v in views)
    assert len({v.numpy().tobytes() for v in views}) == NUM_CUBE_ORIENTATIONS  # all different for a generic cube
    assert torch.equal(orient_cube(x, 8), x.transpose(2, 3)) and torch.equal(orient_cube(x, 5), x.flip([2, 4]))
    for i in range(NUM_CUBE_ORIENTATIONS):  # each view is one of the 16 again after any other: a group
        assert any(torch.equal(orient_cube(views[i], 13), v) for v in views)
    with pytest.raises(InputError, match="0..15"):
        orient_cube(x, NUM_CUBE_ORIENTATIONS)


def test_classifier_averaged_over_orientations_is_invariant_to_them():
    torch.manual_seed(0)
    vae = MedVAE(3, 1, latent_channels=2, channels=(4,), downsample_factor=2).eval()
    head = LatentClassifierEnsemble(2, spatial_dims=3, latent_channels=2, num_classes=2, task="binary", channels=(4,))
    net = LatentImageClassifier(vae, head, orientations=NUM_CUBE_ORIENTATIONS).eval()
    x = torch.rand(3, 1, 8, 8, 8)
    with torch.no_grad():
        logits = net(x)
        manual = torch.stack([torch.stack([h(vae.encode(orient_cube(x, o))[0]) for h in head.heads]).mean(0)
                              for o in range(NUM_CUBE_ORIENTATIONS)]).mean(0)
        assert torch.allclose(logits, manual, atol=1e-5)
        assert torch.allclose(net(orient_cube(x, 11)), logits, atol=1e-5)  # averaging over a group
        assert not torch.allclose(LatentImageClassifier(vae, head)(orient_cube(x, 11)), LatentImageClassifier(vae, head)(x))
        assert net.sample_logits(x, 4).shape == (4, 3, 2)
        assert torch.allclose(torch.jit.script(net)(x), logits, atol=1e-6)  # exports like every head (ckpt_export)
    with pytest.raises(InputError, match="num_heads"):
        LatentClassifierEnsemble(0, spatial_dims=3, latent_channels=2, num_classes=2)
    with pytest.raises(InputError, match="orientations"):
        LatentImageClassifier(MedVAE(2, 1, latent_channels=2), LatentClassifierEnsemble(1, spatial_dims=2, latent_channels=2,
                                                                                         num_classes=2), orientations=4)


def test_nodule_preprocessing_on_lidc_voi():
    root = data_path("LIDC-IDRI-NoduleVOIs")
    row = next(csv.DictReader(open(root / "labels.csv")))
    d = nodule_preprocessing()({"image": str(root / row["image"]), "mask": str(root / row["mask"])})
    img, mask = d["image"], d["mask"]
    assert img.shape == mask.shape == (1, 32, 32, 32) and img.dtype == torch.float32
    assert isinstance(img, MetaTensor) and torch.allclose(img.pixdim.float(), torch.ones(3))  # 1 mm isotropic
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    centre = mask[0].nonzero().float().mean(0)
    assert (centre - 15.5).abs().max() < 3  # the nodule sits in the middle of the cube
    # the nodule (soft tissue) is brighter than its lung surroundings in the -1000..+400 HU window
    assert img[mask > 0].mean() > img[(mask == 0) & (img > 0)].mean() + 0.2
    # image only: centred on the VOI, also for a CSV item that lists a mask (its path is left unread)
    item = {"image": str(root / row["image"]), "mask": str(root / row["mask"])}
    only = nodule_preprocessing(["image"])(item)
    assert only["image"].shape == (1, 32, 32, 32) and only["mask"] == item["mask"]
    # a mask key whose value no loader read is refused by name, not cropped around a string
    with pytest.raises(InputError, match="'mask' is '.*', not a loaded mask"):
        NoduleCropd(["image"], size=8)({"image": torch.zeros(1, 8, 8, 8), "mask": item["mask"]})


def _lidc_subset(tmp_path, n_per_class: int = 4):
    """A labels.csv (absolute paths) of the first nodules of each class: an LIDC-layout CSV datalist."""
    root = data_path("LIDC-IDRI-NoduleVOIs")
    rows = list(csv.DictReader(open(root / "labels.csv")))
    rows = [r for c in ("0", "1") for r in [r for r in rows if r["diagnosis"] == c][:n_per_class]]
    out = tmp_path / "labels.csv"
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "image": str(root / r["image"]), "mask": str(root / r["mask"])})
    return out, rows


def test_committed_nodule_model_evaluates_and_infers_an_lidc_csv(tmp_path):
    labels, rows = _lidc_subset(tmp_path)
    run_bundle("evaluating", "bundle/configs/evaluate_nodule.yaml", "--dataset_dir", str(labels), "--split", "all",
               "--output_dir", str(tmp_path / "eval"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_images"] == len(rows) == 8 and 0 <= metrics["acc"] <= 1
    assert metrics["auroc"] >= 0.75  # these nodules are separated (AUROC 1.0); the test-split AUROC is in the README

    run_bundle("inferring", "bundle/configs/infer_nodule.yaml", "--dataset_dir", str(labels), "--num_samples", "4",
               "--output_dir", str(tmp_path / "infer"))
    out = list(csv.DictReader((tmp_path / "infer" / "predictions.csv").open()))
    assert len(out) == 8
    for r in out:
        assert float(r["p_benign"]) + float(r["p_malignant"]) == pytest.approx(1.0, abs=1e-4)
        assert float(r["std_malignant"]) >= 0 and r["prediction"] in ("benign", "malignant")

    # a plain folder of VOI files, with neither labels nor masks (breaker round 4, finding 5: it asked for class folders)
    flat = tmp_path / "flat"
    flat.mkdir()
    for r in rows[:2]:
        (flat / Path(r["image"]).name).symlink_to(data_path("LIDC-IDRI-NoduleVOIs") / r["image"])
    run_bundle("inferring", "bundle/configs/infer_nodule.yaml", "--dataset_dir", str(flat), "--num_samples", "2",
               "--output_dir", str(tmp_path / "infer_flat"))  # fmt: skip
    assert len(list(csv.DictReader((tmp_path / "infer_flat" / "predictions.csv").open()))) == 2

    # the same CSV without its diagnosis column: evaluation is refused before the engine starts, naming the fix
    unlabelled = tmp_path / "unlabelled.csv"
    table = list(csv.DictReader(labels.open()))
    with unlabelled.open("w", newline="") as f:
        w = csv.DictWriter(f, [k for k in table[0] if k != "diagnosis"], extrasaction="ignore")
        w.writeheader()
        w.writerows(table)
    refused = run_bundle("evaluating", "bundle/configs/evaluate_nodule.yaml", "--dataset_dir", str(unlabelled), "--split",
                         "all", "--output_dir", str(tmp_path / "refused"), check=False)
    assert refused.returncode != 0 and "8 of 8 images have no 'label'" in refused.stdout
    assert "a CSV datalist with a 'label' or 'diagnosis' column" in refused.stdout
    assert not (tmp_path / "refused" / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("config, run_id", [("evaluate_nodule", "evaluating"), ("infer_nodule", "inferring")])
def test_nodule_configs_take_help_and_max_items(tmp_path, config, run_id):
    """Every config answers --help with its run ids and takes --max_items (the fresh-clone report)."""
    root = data_path("LIDC-IDRI-NoduleVOIs")
    helped = run_bundle(run_id, f"bundle/configs/{config}.yaml", "--help")
    assert f"run ids: {run_id}" in helped.stdout and "max_items" in helped.stdout
    out = tmp_path / "out"
    run_bundle(run_id, f"bundle/configs/{config}.yaml", "--dataset_dir", str(root), "--split", "test", "--max_items", "3", "--output_dir", str(out))
    if run_id == "evaluating":
        assert json.loads((out / "metrics.json").read_text())["n_images"] == 3
    else:
        assert len(list(csv.DictReader(open(out / "predictions.csv")))) == 3
