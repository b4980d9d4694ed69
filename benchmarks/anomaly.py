"""Anomaly maps on real images with local anomalies: pixel AUROC/AUPRC and image AUROC, per method.

Data (test images never seen in training; every model and reference uses the training split only):

1. ``mednist``: MOOD-style synthetic anomalies (Zimmerer et al., Medical Out-of-Distribution
   Analysis Challenge, 2020) pasted into half of an evenly spaced subset of the MedNIST test split:
   foreign patches (a patch of another test image), intensity shifts and Gaussian blur, squares of
   8 to 20 pixels at random places; a draw that changes the patch by less than 0.05 in mean
   absolute intensity is redrawn, as it is no visible anomaly. The other half stays normal.
   Pixel labels are the patch pixels whose intensity changed.
2. ``busi``: real breast-ultrasound lesions (BUSI, 96x96), the lesion masks as pixel labels, the
   ``normal`` test images as normal images; the VAE and the plain autoencoder are trained here on
   the training split's normal images (``--minutes`` each), the only normal anatomy there is.

Methods, in the same run on the same images:

- ``vae_reconstruction``, ``vae_posterior``, ``vae_elbo``, ``vae_restoration``, ``vae_normative``:
  :class:`medvae_monai.anomaly.AnomalyInferer` with the VAE (MedNIST: the committed
  ``bundle/models/model.pt`` and its committed reference), default settings (restoration's were
  chosen on MedNIST *training* images with pasted anomalies, never on the test split);
- ``ae_reconstruction``, ``ae_normative``: a plain (deterministic) autoencoder of the VAE's
  architecture and size (posterior sampling off, no KL term), trained here for ``--minutes``;
- ``zscore``: ``|x - mean| / (std + eps)`` against the training images' mean and standard deviation
  images (the intensity baseline).

All maps get the same Gaussian smoothing (sigma 2 px); the image score is
:func:`medvae_monai.anomaly.image_score`. Usage (from the repository root)::

    python benchmarks/anomaly.py --out benchmarks/results/anomaly.json --minutes 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_roc_auc
from monai.networks.layers import GaussianFilter
from monai.utils import set_determinism
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from harness import train  # noqa: E402
from tasks import TASKS, load_split, pretrained_vae  # noqa: E402

from medvae_monai.anomaly import AnomalyInferer, NormativeReference, image_score  # noqa: E402
from medvae_monai.data import CheckedCacheDataset, ImageSource  # noqa: E402
from medvae_monai.engines import VAETrainer  # noqa: E402
from medvae_monai.losses import ELBOLoss  # noqa: E402
from medvae_monai.networks import MedVAE  # noqa: E402
from medvae_monai.utils import atomic_write, atomic_write_json  # noqa: E402

TARGETS = {"mednist_foreign_patch_pixel_auroc": 0.85, "mednist_foreign_patch_image_auroc": 0.80}
KINDS = ("foreign_patch", "intensity_shift", "blur")
SMOOTH = 2.0


def auroc(labels: torch.Tensor, scores: torch.Tensor) -> float:
    """Mann-Whitney AUROC with tied scores averaged. MONAI's ``compute_roc_auc`` loops in Python
    over every element, minutes for the ~10^6 pixels here; it is used for the image-level AUROC."""
    y = labels.flatten().bool()
    s = scores.flatten().double()
    order = s.argsort()
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, ranks)
    ranks = (sums / counts)[inverse]  # average rank within ties
    npos, nneg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def auprc(labels: torch.Tensor, scores: torch.Tensor) -> float:
    """Average precision (step-wise area under the precision-recall curve), ties broken by order."""
    y = labels.flatten().double()[scores.flatten().argsort(descending=True)]
    precision = y.cumsum(0) / torch.arange(1, len(y) + 1, dtype=torch.float64)
    return float((precision * y).sum() / y.sum())


def paste_anomalies(x: torch.Tensor, rng: np.random.Generator, sizes: tuple[int, int] = (8, 21)) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """MOOD-style anomalies in every other image of ``x`` ``(N, 1, *S)`` (2D or 3D): squares or cubes
    with a side drawn from ``range(*sizes)``; returns images, masks, kinds."""
    x = x.clone()
    n, spatial = len(x), list(x.shape[2:])
    masks = torch.zeros_like(x, dtype=torch.bool)
    kinds = ["normal"] * n
    blur = GaussianFilter(len(spatial), 2.0)

    def box(s: int) -> tuple[slice, ...]:
        return tuple(slice(a, a + s) for a in (int(v) for v in rng.integers(0, [d - s for d in spatial])))

    for j, i in enumerate(range(1, n, 2)):
        kind = KINDS[j % len(KINDS)]
        for _ in range(20):
            s = int(rng.integers(*sizes))
            where = (i, 0, *box(s))
            region = x[where]
            if kind == "foreign_patch":
                o = int(rng.integers(n))
                new = x[(o, 0, *box(s))]
            elif kind == "intensity_shift":
                new = (region + float(rng.choice([-1, 1]) * rng.uniform(0.2, 0.5))).clamp(0, 1)
            else:
                new = blur(x[i : i + 1])[(0, *where[1:])]
            if (new - region).abs().mean() >= 0.05:
                break
        changed = (new - region).abs() > 1e-3
        x[where] = new
        masks[where] = changed
        kinds[i] = kind
    return x, masks, kinds


class PlainAutoencoder(MedVAE):
    """The MedVAE architecture as a deterministic autoencoder: the decoder always gets ``mu``."""

    @staticmethod
    def sample(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return mu


def train_autoencoder(like: MedVAE, images: torch.Tensor, seconds: float, variational: bool) -> tuple[MedVAE, dict]:
    """A model of ``like``'s architecture trained on ``images`` for ``seconds`` (ELBO, or L1 alone)."""
    net = (MedVAE if variational else PlainAutoencoder)(**like.hparams)
    loader = DataLoader([{"image": x} for x in images], batch_size=32, shuffle=True, drop_last=True)
    b = train(VAETrainer, seconds, loader, net, torch.optim.AdamW(net.parameters(), lr=2e-3),
              ELBOLoss("l1", beta=1e-4 if variational else 0.0))
    return net.eval(), {"train_s": round(b.elapsed, 1), "images_seen": b.images}


@torch.no_grad()
def maps_for(net: MedVAE, method: str, x: torch.Tensor, reference: NormativeReference | None = None) -> torch.Tensor:
    inferer = AnomalyInferer(method, reference, smooth_sigma=SMOOTH)
    return torch.cat([inferer(c, net) for c in x.split(64)])


def zscore_maps(train_x: torch.Tensor, x: torch.Tensor, eps: float = 0.05) -> torch.Tensor:
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True)
    return GaussianFilter(x.ndim - 2, SMOOTH)((x - mean).abs() / (std + eps))


def score_maps(maps: torch.Tensor, masks: torch.Tensor, kinds: list[str]) -> dict:
    """Metrics over all images, and per anomaly kind (that kind's images plus every normal one)."""
    scores = image_score(maps)
    is_anomalous = torch.tensor([k != "normal" for k in kinds])

    def metrics(sel: torch.Tensor) -> dict:
        return {
            "pixel_auroc": round(auroc(masks[sel], maps[sel]), 4),
            "pixel_auprc": round(auprc(masks[sel], maps[sel]), 4),
            # undefined where every image is anomalous (LIDC: each cube holds a nodule)
            "image_auroc": round(float(compute_roc_auc(scores[sel], is_anomalous[sel].float())), 4)
            if 0 < int(is_anomalous[sel].sum()) < int(sel.sum()) else None,
        }

    out = {"all": metrics(torch.ones(len(kinds), dtype=torch.bool))}
    for kind in sorted(set(kinds) - {"normal"}):
        out[kind] = metrics(torch.tensor([k in (kind, "normal") for k in kinds]))
    return out


def load_mednist(root: Path, n_train: int, n_test: int) -> tuple[torch.Tensor, torch.Tensor]:
    def images(split: str, n: int) -> torch.Tensor:
        source = ImageSource(root / "MedNIST", 2, 1, max_items=n)
        items = CheckedCacheDataset(source.items(split), source.preprocessing())
        return torch.stack([d["image"].as_tensor().float() for d in items])

    return images("train", n_train), images("test", n_test)


def run_dataset(name: str, vae: MedVAE, vae_info: dict, reference: NormativeReference, train_x: torch.Tensor,
                x: torch.Tensor, masks: torch.Tensor, kinds: list[str], seconds: float) -> tuple[dict, dict]:
    """Every method on one dataset; returns the result entry and the maps (for the figure)."""
    ae, ae_info = train_autoencoder(vae, train_x, seconds, variational=False)
    ae_reference = NormativeReference.build(ae, train_x[:2000].split(64))
    makers = {
        "vae_reconstruction": lambda: maps_for(vae, "reconstruction", x),
        "vae_posterior": lambda: maps_for(vae, "posterior", x),
        "vae_elbo": lambda: maps_for(vae, "elbo", x),
        "vae_restoration": lambda: maps_for(vae, "restoration", x),
        "vae_normative": lambda: maps_for(vae, "normative", x, reference),
        "ae_reconstruction": lambda: maps_for(ae, "reconstruction", x),
        "ae_normative": lambda: maps_for(ae, "normative", x, ae_reference),
        "zscore": lambda: zscore_maps(train_x, x),
    }
    maps, ms_per_image = {}, {}
    for method, make in makers.items():
        t0 = time.perf_counter()
        maps[method] = make()
        ms_per_image[method] = round(1000 * (time.perf_counter() - t0) / len(x), 1)
    entry = {
        "n_test": len(kinds), "n_anomalous": sum(k != "normal" for k in kinds), "n_train": len(train_x),
        "n_reference": len(reference.latents), "vae": vae_info, "autoencoder": ae_info,
        "map_ms_per_image": ms_per_image, "methods": {m: score_maps(v, masks, kinds) for m, v in maps.items()},
    }
    print(name, json.dumps({m: v["all"] for m, v in entry["methods"].items()}), flush=True)
    return entry, maps


def figure(path: Path, x: torch.Tensor, recon: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor, n: int = 8) -> None:
    """Rows: inputs (anomaly outlined), reconstructions, normative maps; anomalous images first."""
    from PIL import Image

    idx = [i for i in range(len(x)) if masks[i].any()][: n // 2 + n % 2] + [i for i in range(len(x)) if not masks[i].any()][: n // 2]
    m = maps[idx] / maps[idx].amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    inputs = x[idx].clone()
    outline = (torch.nn.functional.max_pool2d(masks[idx].float(), 3, 1, 1) - masks[idx].float()) > 0
    rgb = inputs.repeat(1, 3, 1, 1)
    rgb[:, 0][outline[:, 0]] = 1.0
    rgb[:, 1][outline[:, 0]] = 0.0
    rgb[:, 2][outline[:, 0]] = 0.0
    rows = [rgb, recon[idx].clamp(0, 1).repeat(1, 3, 1, 1), m.repeat(1, 3, 1, 1)]
    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)  # (3, rows*H, n*W)
    img = (grid.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    scale = 3
    atomic_write(path, lambda f: Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST).save(f, format="PNG"))


def run_record(argv: list[str] | None, machine_note: str, t_start: float) -> dict:
    """How a benchmark was run: command, machine, load average at the end, wall time."""
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_note or f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}",
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "wall_s": round(time.perf_counter() - t_start, 1),
    }


def markdown(results: dict, title: str = "Anomaly maps: pixel AUROC / AUPRC and image AUROC") -> str:
    lines = [
        f"# {title}", "",
        f"Machine: {results['machine']}; load average {results['load_average']}. Command: `{results['command']}`. "
        f"Wall time {results['wall_s']} s. Maps smoothed with a Gaussian of {SMOOTH} px; image score = mean of the "
        "top 1% of the map.", "",
    ]
    for name, entry in results["datasets"].items():
        lines += [f"## {name}", "", entry["description"], "",
                  f"Test images {entry['n_test']} ({entry['n_anomalous']} anomalous); training images {entry['n_train']}; "
                  f"reference images {entry['n_reference']}. VAE: {entry['vae']}. Plain autoencoder: {entry['autoencoder']}.", "",
                  "| method | subset | pixel AUROC | pixel AUPRC | image AUROC | ms/image |", "|---|---|---|---|---|---|"]
        for method, per in entry["methods"].items():
            for subset, m in per.items():
                lines.append(f"| {method} | {subset} | {m['pixel_auroc']:.3f} | {m['pixel_auprc']:.3f} | "
                             f"{'–' if m['image_auroc'] is None else format(m['image_auroc'], '.3f')} | "
                             f"{entry['map_ms_per_image'][method]} |")
        lines.append("")
    if "targets" in results:
        lines += ["## Targets", ""] + [f"- {k}: {v}" for k, v in results["targets"].items()] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default="benchmarks/results/anomaly.json")
    p.add_argument("--minutes", type=float, default=1.0, help="training budget of each model trained here")
    p.add_argument("--n_test", type=int, default=300)
    p.add_argument("--n_train", type=int, default=2000)
    p.add_argument("--datasets", default="mednist,busi")
    p.add_argument("--machine_note", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    set_determinism(seed=0)
    root, seconds, t_start = Path(args.data), args.minutes * 60, time.perf_counter()
    out = Path(args.out)
    results: dict = {"datasets": {}}
    if "mednist" in args.datasets:
        vae, vae_info = pretrained_vae("bundle/models/model.pt")
        reference = NormativeReference.load(REPO / "bundle/models/anomaly_reference.pt", vae)
        train_x, test_x = load_mednist(root, args.n_train, args.n_test)
        x, masks, kinds = paste_anomalies(test_x, np.random.default_rng(0))
        entry, maps = run_dataset("mednist", vae, vae_info, reference, train_x, x, masks, kinds, seconds)
        entry["description"] = "MedNIST test split with MOOD-style synthetic anomalies in every other image (see the module docstring)."
        results["datasets"]["mednist"] = entry
        with torch.no_grad():
            recon = vae.decode(vae.encode(x)[0], spatial_size=list(x.shape[2:]))
        figure(out.with_suffix(".png"), x, recon, maps["vae_normative"], masks)
    if "busi" in args.datasets:
        spec = TASKS["busi_seg"]
        train_items, _ = load_split(spec, root, "train", None)
        test_items, _ = load_split(spec, root, "test", None)
        normal_train = torch.stack([d["image"] for d in train_items if not d["mask"].any()])
        x = torch.stack([d["image"] for d in test_items])
        masks = torch.stack([d["mask"] for d in test_items]) > 0
        kinds = ["lesion" if m.any() else "normal" for m in masks]
        vae, vae_info = train_autoencoder(MedVAE(2, 1, latent_channels=4), normal_train, seconds, variational=True)
        vae_info["source"] = "trained here on the training split's normal images"
        reference = NormativeReference.build(vae, normal_train.split(64))
        entry, _ = run_dataset("busi", vae, vae_info, reference, normal_train, x, masks, kinds, seconds)
        entry["description"] = ("BUSI test split at 96x96: benign and malignant lesions (masks) and normal images; models and "
                                "references from the training split's normal images.")
        results["datasets"]["busi"] = entry
    if "mednist" in results["datasets"]:
        patch = results["datasets"]["mednist"]["methods"]["vae_normative"]["foreign_patch"]
        results["targets"] = {
            "mednist_foreign_patch_pixel_auroc": patch["pixel_auroc"],
            "mednist_foreign_patch_pixel_auroc_at_least_0.85": patch["pixel_auroc"] >= TARGETS["mednist_foreign_patch_pixel_auroc"],
            "mednist_foreign_patch_image_auroc": patch["image_auroc"],
            "mednist_foreign_patch_image_auroc_at_least_0.80": patch["image_auroc"] >= TARGETS["mednist_foreign_patch_image_auroc"],
        }
    results.update(run_record(argv, args.machine_note, t_start))
    atomic_write_json(out, results)
    atomic_write(out.with_suffix(".md"), lambda f: f.write(markdown(results)), mode="w")
    print(markdown(results))


if __name__ == "__main__":
    main()
