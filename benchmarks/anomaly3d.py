"""Anomaly maps on 3D volumes: voxel AUROC/AUPRC (and image AUROC where some volumes are normal).

The methods and metrics of ``benchmarks/anomaly.py`` (the VAE's reconstruction, posterior, ELBO,
restoration and normative maps, a plain autoencoder of the VAE's size trained here, the intensity
z-score against the training mean volume), on:

1. ``hippocampus``: MSD Task04 Hippocampus MRI test volumes (40x56x40 as in ``benchmarks/tasks.py``)
   with MOOD-style synthetic anomalies (:func:`anomaly.paste_anomalies`: foreign cubes, intensity
   shifts, blur; cubes of 6 to 13 voxels) in every other volume. No committed VAE was trained on
   these volumes, so a small 3D MedVAE (latent 4 channels, ``channels=(16, 32)``) is trained here on
   the training split for ``--minutes``: an under-trained model, and the figures say so much.
2. ``lidc``: real lesions: the nodule masks of the LIDC-IDRI VOIs' test patients (the 32 mm cube of
   :func:`medvae_monai.transforms.nodule_preprocessing`), with the committed nodule VAE
   (``bundle/models/nodule.pt``, trained without labels on the training patients' VOIs) and a
   normative reference of the training cubes. Every cube is centred on a nodule and the VOIs are too
   small to cut nodule-free cubes from, so the VAE has learned nodules as normal anatomy and there
   is no image-level AUROC (no normal volumes).

Restoration costs ``restoration_steps`` encoder-decoder passes per volume, so ``--n_test`` caps the
test volumes (evenly spaced). Usage (from the repository root)::

    python benchmarks/anomaly3d.py --minutes 1 --n_test 40 --out benchmarks/results/anomaly3d.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.utils import set_determinism

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from anomaly import markdown, paste_anomalies, run_dataset, run_record, train_autoencoder  # noqa: E402
from nodules import VAE_ARGS  # noqa: E402
from nodules import load_split as load_nodules  # noqa: E402
from tasks import TASKS, load_split  # noqa: E402

import medvae_monai.data  # noqa: E402
from medvae_monai.anomaly import NormativeReference  # noqa: E402
from medvae_monai.networks import MedVAE  # noqa: E402
from medvae_monai.utils import atomic_write, atomic_write_json, load_state_dict  # noqa: E402

HIPPOCAMPUS_VAE = {"spatial_dims": 3, "in_channels": 1, "latent_channels": 4, "channels": (16, 32)}


def evenly(items: list, n: int) -> list:
    """At most ``n`` items, evenly spaced (deterministic)."""
    return items if len(items) <= n else [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def committed_nodule_vae() -> tuple[MedVAE, dict]:
    """The VAE of ``bundle/models/nodule.pt`` (a VAE + head state dict), in eval mode."""
    state = load_state_dict(REPO / "bundle/models/nodule.pt")
    vae = MedVAE(**VAE_ARGS)
    vae.load_state_dict({k.removeprefix("vae."): v for k, v in state.items() if k.startswith("vae.")})
    return vae.eval(), {"source": "bundle/models/nodule.pt (its VAE): trained without labels on the training patients' VOIs",
                        "architecture": VAE_ARGS}


def hippocampus(root: Path, seconds: float, n_test: int) -> dict:
    spec = TASKS["hippocampus"]
    train_x = torch.stack([d["image"] for d in load_split(spec, root, "train", None)[0]])
    test_x = torch.stack([d["image"] for d in evenly(load_split(spec, root, "test", None)[0], n_test)])
    x, masks, kinds = paste_anomalies(test_x, np.random.default_rng(0), sizes=(6, 14))
    vae, info = train_autoencoder(MedVAE(**HIPPOCAMPUS_VAE), train_x, seconds, variational=True)
    info.update(source="trained here on the training split (no committed VAE fits these volumes)", architecture=HIPPOCAMPUS_VAE)
    reference = NormativeReference.build(vae, train_x.split(32))
    entry, _ = run_dataset("hippocampus", vae, info, reference, train_x, x, masks, kinds, seconds)
    entry["description"] = ("MSD Task04 Hippocampus MRI test volumes (40x56x40) with MOOD-style synthetic anomalies "
                            "(cubes of 6-13 voxels) in every other volume; models and references from the training split.")
    return entry


def lidc(root: Path, seconds: float, n_test: int, cache_dir: str | None) -> dict:
    source = medvae_monai.data.ImageSource(root / "LIDC-IDRI-NoduleVOIs", spatial_dims=3, class_names=["benign", "malignant"])
    train_items = load_nodules(source, "train", cache_dir)
    test_items = evenly(load_nodules(source, "test", cache_dir), n_test)
    train_x = torch.stack([d["image"] for d in train_items])
    x = torch.stack([d["image"] for d in test_items])
    masks = torch.stack([d["mask"] for d in test_items]) > 0
    vae, info = committed_nodule_vae()
    reference = NormativeReference.build(vae, train_x.split(32))
    entry, _ = run_dataset("lidc", vae, info, reference, train_x, x, masks, ["nodule"] * len(x), seconds)
    entry["description"] = ("LIDC-IDRI nodule VOIs of the test patients, 32 mm cubes at 1 mm centred on the nodule; voxel "
                            "labels the nodule masks. Every cube holds a nodule (no image-level AUROC), and the VAE and "
                            "references saw nodules in training, as normal anatomy.")
    return entry


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default="benchmarks/results/anomaly3d.json")
    p.add_argument("--minutes", type=float, default=1.0, help="training budget of each model trained here")
    p.add_argument("--n_test", type=int, default=40, help="test volumes per dataset (evenly spaced)")
    p.add_argument("--datasets", default="hippocampus,lidc")
    p.add_argument("--cache_dir", default=None, help="keep the preprocessed nodule cubes here (benchmarks/nodules.py's cache)")
    p.add_argument("--machine_note", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    set_determinism(seed=0)
    root, seconds, t_start = Path(args.data), args.minutes * 60, time.perf_counter()
    results: dict = {"datasets": {}}
    if "hippocampus" in args.datasets:
        results["datasets"]["hippocampus"] = hippocampus(root, seconds, args.n_test)
    if "lidc" in args.datasets:
        results["datasets"]["lidc"] = lidc(root, seconds, args.n_test, args.cache_dir)
    results.update(run_record(argv, args.machine_note, t_start))
    out = Path(args.out)
    text = markdown(results, "Anomaly maps on 3D volumes: voxel AUROC / AUPRC and image AUROC")
    atomic_write_json(out, results)
    atomic_write(out.with_suffix(".md"), lambda f: f.write(text), mode="w")
    print(text)


if __name__ == "__main__":
    main()
