"""Anomaly maps: the inferer's methods, the normative reference, and bundle/configs/anomaly.yaml end to end."""

from __future__ import annotations

import csv
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medvae_monai.anomaly import AnomalyInferer, NormativeReference, image_score, weights_fingerprint
from medvae_monai.errors import InputError
from medvae_monai.losses import ELBOLoss
from medvae_monai.networks import MedVAE

from .conftest import data_path, run_bundle


@pytest.fixture(scope="module")
def vae2d() -> MedVAE:
    torch.manual_seed(0)
    return MedVAE(2, 1, latent_channels=2, channels=(8, 16)).eval()


@pytest.mark.parametrize("method", ["reconstruction", "posterior", "elbo", "restoration", "normative"])
@pytest.mark.parametrize("dims", [2, 3])
def test_maps_have_the_input_size(method, dims):
    torch.manual_seed(0)
    vae = MedVAE(dims, 1, latent_channels=2, channels=(4, 8)).eval()
    size = (20, 12) if dims == 2 else (12, 8, 8)
    ref = NormativeReference.build(vae, [torch.rand(3, 1, *size)]) if method == "normative" else None
    x = torch.rand(2, 1, *((13, 9) if dims == 2 else (10, 8, 9)))  # not a multiple of the factor, not the reference size
    maps = AnomalyInferer(method, ref, neighbours=2, restoration_steps=3)(x, vae)
    assert maps.shape == (2, 1, *x.shape[2:]) and maps.dtype == torch.float32 and torch.isfinite(maps).all()
    assert (maps >= 0).all()


def test_reference_returns_the_nearest_decoded_references(vae2d):
    torch.manual_seed(1)
    normal = torch.rand(6, 1, 32, 32)
    ref = NormativeReference.build(vae2d, [normal[:3], normal[3:]])
    mu = vae2d.encode(normal[[4, 1]])[0]
    near = ref.neighbours(vae2d, mu, k=2)  # (B, k, C, *S)
    assert near.shape == (2, 2, 1, 32, 32)
    with torch.no_grad():
        want = vae2d.decode(mu, spatial_size=[32, 32]).clamp(0, 1)
    assert torch.allclose(near[:, 0], want, atol=1e-5)  # each image is its own nearest reference
    assert image_score(torch.arange(100.0).reshape(1, 1, 10, 10), 0.05).item() == pytest.approx(97.0)


def test_elbo_map_is_the_training_loss_per_pixel(vae2d):
    """The ELBO map's pixel mean is ELBOLoss (L1, beta) averaged over the same posterior samples."""
    x = torch.rand(3, 1, 32, 32)  # a multiple of the factor: no padding
    inferer = AnomalyInferer("elbo", smooth_sigma=0, posterior_samples=4, beta=0.5)
    torch.manual_seed(3)
    maps = inferer(x, vae2d)
    torch.manual_seed(3)
    with torch.no_grad():
        mu, sigma = vae2d.encode(x)
        loss = ELBOLoss("l1", beta=0.5)
        want = torch.stack([loss(vae2d.decode(vae2d.sample(mu, sigma), [32, 32]), x, mu, sigma)["loss"] for _ in range(4)])
    assert maps.mean().item() == pytest.approx(want.mean().item(), rel=1e-4)


def test_restoration_removes_pasted_patches_from_mednist_images(repo, monkeypatch):
    """Restoration (You et al. 2019) on the committed VAE: the change concentrates on the patch, lowers
    the negative ELBO, and leaves the network's gradients untouched."""
    from medvae_monai.config import load_bundle_network

    root = data_path("MedNIST")
    monkeypatch.chdir(repo)
    vae, _ = load_bundle_network(repo / "bundle/configs/inference.yaml")
    images, inside = [], torch.zeros(9, 1, 64, 64, dtype=torch.bool)
    for i, (cls, (r, c)) in enumerate((c, p) for c in ("Hand", "HeadCT", "BreastMRI") for p in ((10, 36), (30, 20), (40, 40))):
        x = torch.from_numpy(np.array(Image.open(root / cls / "002990.jpeg"), dtype=np.float32) / 255.0)[None]
        x[:, r : r + 14, c : c + 14] = 0.0 if x[:, r : r + 14, c : c + 14].mean() > 0.5 else 1.0  # flat, contrasting
        images.append(x)
        inside[i, :, r : r + 14, c : c + 14] = True
    x = torch.stack(images)
    inferer = AnomalyInferer("restoration", smooth_sigma=0)
    restored = inferer.restore(x, vae)
    with torch.no_grad():
        assert (inferer.negative_elbo(restored, vae) < inferer.negative_elbo(x, vae)).all()
    maps = inferer(x, vae)
    ratio = torch.stack([m[i].mean() / m[~i].mean() for m, i in zip(maps, inside)])
    assert ratio.mean() > 1.5, ratio
    assert all(p.grad is None for p in vae.parameters())


def test_reference_refuses_another_checkpoint(vae2d, tmp_path):
    ref = NormativeReference.build(vae2d, [torch.rand(4, 1, 16, 16)])
    path = ref.save(tmp_path / "ref.pt")
    assert NormativeReference.load(path, vae2d).fingerprint == weights_fingerprint(vae2d)
    other = MedVAE(2, 1, latent_channels=2, channels=(8, 16))
    with pytest.raises(InputError, match="another checkpoint"):
        NormativeReference.load(path, other)
    with pytest.raises(InputError, match="needs a reference"):
        AnomalyInferer("normative", None)


@pytest.mark.slow
def test_bundle_maps_and_scores_on_mednist_with_a_pasted_patch(tmp_path):
    """The issue's check: a patch pasted into unseen MedNIST pictures, maps in the file's pixel order."""
    root = data_path("MedNIST")
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    patched = {}
    for cls in ("Hand", "HeadCT", "BreastMRI"):
        a = np.array(Image.open(root / cls / "002990.jpeg"))
        Image.fromarray(a).save(src / f"{cls}_clean.png")
        r, c = int(rng.integers(4, 20)), int(rng.integers(30, 46))  # off the diagonal: a transposed map misses it
        a[r : r + 14, c : c + 14] = 0 if a[r : r + 14, c : c + 14].mean() > 127 else 255  # a flat, contrasting patch
        Image.fromarray(a).save(src / f"{cls}_patched.png")
        patched[cls] = (r, c)
    out = tmp_path / "out"
    run_bundle("inferring", "bundle/configs/anomaly.yaml", "--dataset_dir", str(src), "--output_dir", str(out))
    with open(out / "scores.csv") as f:
        rows = {r["image"].rsplit("/", 1)[-1]: r for r in csv.DictReader(f)}
    assert len(rows) == 6 and {r["method"] for r in rows.values()} == {"normative"}
    for cls, (r, c) in patched.items():
        m = np.load(out / f"{cls}_patched.npy", allow_pickle=False)
        assert m.shape == (64, 64) and m.dtype == np.float32
        inside = np.zeros(m.shape, bool)
        inside[r : r + 14, c : c + 14] = True
        assert m[inside].mean() > 1.5 * m[~inside].mean(), cls
        assert float(rows[f"{cls}_patched.png"]["score"]) > float(rows[f"{cls}_clean.png"]["score"]), cls


@pytest.mark.slow
def test_bundle_volume_map_keeps_the_affine_with_a_task_vae(tmp_path):
    """A 3D task VAE by --ckpt_path: no reference matches it, so the reconstruction error, as NIfTI."""
    vol = data_path("Task04_Hippocampus", "imagesTr", "hippocampus_001.nii.gz")
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(vol, src / vol.name)
    torch.manual_seed(0)
    ckpt = tmp_path / "vae3d.pt"
    torch.save(MedVAE(3, 1, latent_channels=1, channels=(32, 64), num_res_blocks=1, decoder_res_blocks=2).state_dict(), ckpt)
    out = tmp_path / "out"
    proc = run_bundle("inferring", "bundle/configs/anomaly.yaml", "--dataset_dir", str(src), "--output_dir", str(out),
                      "--spatial_dims", "3", "--ckpt_path", str(ckpt))
    assert "reconstruction error" in proc.stdout  # the fallback is announced
    got, want = nib.load(out / "hippocampus_001.nii.gz"), nib.load(vol)
    assert got.shape == want.shape and np.allclose(got.affine, want.affine)
    assert got.get_data_dtype() == np.float32
    with open(out / "scores.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["method"] == "reconstruction" and float(row["score"]) > 0


def test_committed_reference_matches_the_committed_vae(repo, monkeypatch):
    """Replacing bundle/models/model.pt needs a new anomaly_reference.pt (see anomaly.yaml's building_reference)."""
    from medvae_monai.config import load_bundle_network

    monkeypatch.chdir(repo)
    vae, ckpt = load_bundle_network(repo / "bundle/configs/inference.yaml")
    assert ckpt is not None
    ref = NormativeReference.load(repo / "bundle/models/anomaly_reference.pt", vae)
    assert len(ref.latents) >= 1000 and ref.latents.shape[1] == vae.latent_channels


def test_benchmark_pastes_mood_anomalies_into_hippocampus_volumes(repo, monkeypatch):
    """benchmarks/anomaly.py's MOOD-style paste in 3D: every other volume, labels exactly the changed voxels."""
    paths = [data_path("Task04_Hippocampus", "imagesTr", f"hippocampus_{i:03d}.nii.gz") for i in (1, 3)]
    monkeypatch.syspath_prepend(str(repo / "benchmarks"))
    from anomaly import paste_anomalies

    vols = [np.asarray(nib.load(p).dataobj, dtype=np.float32) for p in paths]
    crop = tuple(min(v.shape[d] for v in vols) for d in range(3))
    vols = [torch.from_numpy(v[: crop[0], : crop[1], : crop[2]] / v.max()) for v in vols]
    clean = torch.stack([vols[0], vols[1], vols[1].flip(0), vols[0].flip(1)])[:, None]
    x, masks, kinds = paste_anomalies(clean, np.random.default_rng(0), sizes=(4, 9))
    assert kinds == ["normal", "foreign_patch", "normal", "intensity_shift"]
    assert not masks[0::2].any() and all(masks[i].any() for i in (1, 3))
    assert (x - clean).abs()[~masks].max() <= 1e-3  # nothing visible changes outside the labels
    assert ((x - clean).abs()[masks] > 1e-3).all()
