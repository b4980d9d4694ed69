"""Do feature-extraction channels help the heads? A heads-only ablation on the frozen task VAE.

For each classification task, one task VAE is trained on the task's training images (as in
``benchmarks/tasks.py``, ``--vae_minutes``). Then the same latent classifier head is trained
(``--minutes`` each, best state on validation, as in ``tasks.py``) on:

- ``none``: the posterior alone (the tasks benchmark's ``latent_frozen``);
- ``sobel`` / ``gaussian`` / ``histeq`` / ``median``: the posterior plus one feature of the image
  (:class:`medvae_monai.transforms.FeatureExtract`), average-pooled to the latent grid, as an extra
  channel: the "apply only for the heads" use, where the VAE never sees the feature.

Tasks: ``breastmnist`` and ``busi_cls`` (``benchmarks/tasks.py``, a task VAE trained here) and
``nodules``: LIDC-IDRI malignancy on the 32 mm cubes of
:func:`medvae_monai.transforms.nodule_preprocessing` with the committed nodule VAE
(``bundle/models/nodule.pt``'s encoder, frozen) on ``benchmarks/nodules.py``'s patient-grouped
split, without its flip augmentation (every variant reads the same cached latents).

The ``replace`` and ``channels`` uses need one VAE per feature (a VAE trained on filtered images,
or with two input channels); they are not measured here (see the report). Usage::

    python benchmarks/features.py --tasks breastmnist,busi_cls,nodules --minutes 0.5 --vae_minutes 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from monai.utils import set_determinism
from torch.nn import functional as F
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from anomaly import run_record  # noqa: E402
from anomaly3d import committed_nodule_vae  # noqa: E402
from nodules import CLASS_NAMES as NODULE_CLASSES  # noqa: E402
from nodules import HEAD_CHANNELS as NODULE_HEAD  # noqa: E402
from nodules import load_split as load_nodules  # noqa: E402
from harness import BestOnValidation, evaluate, train  # noqa: E402
from tasks import MAX_VAL, TASKS, load_split, task_vae  # noqa: E402

from medvae_monai.data import ImageSource, class_weights  # noqa: E402
from medvae_monai.engines import HeadTrainer  # noqa: E402
from medvae_monai.losses import ClassificationLoss  # noqa: E402
from medvae_monai.latents import cache_latents  # noqa: E402
from medvae_monai.networks import LatentClassifier, LatentImageClassifier, MedVAE  # noqa: E402
from medvae_monai.transforms import FeatureExtract  # noqa: E402
from medvae_monai.utils import atomic_write, atomic_write_json  # noqa: E402

VARIANTS = ("none", "sobel", "gaussian", "histeq", "median")


class FeatureLatentVAE(torch.nn.Module):
    """A frozen VAE whose posterior gains one image feature, pooled to the latent grid, as a channel.

    The feature channel has zero posterior spread, so posterior sampling leaves it exact.
    """

    def __init__(self, vae: MedVAE, feature: str) -> None:
        super().__init__()
        self.vae = vae
        self.extract = FeatureExtract(feature, "replace")
        self.latent_channels = vae.latent_channels + vae.in_channels
        self.downsample_factor = vae.downsample_factor
        self.sample = vae.sample

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, sigma = self.vae.encode(x)
        feat = torch.stack([self.extract(xi).as_tensor() for xi in x])
        pool = F.avg_pool2d if x.ndim == 4 else F.avg_pool3d
        feat = pool(self.vae.pad_to_factor(feat), self.downsample_factor)
        return torch.cat([mu, feat], 1), torch.cat([sigma, torch.zeros_like(feat)], 1)


def nodule_task(root: Path, cache_dir: str | None) -> tuple[dict, list, list, list, list[str], MedVAE, dict]:
    """LIDC-IDRI malignancy: the spec, train/val/test cubes, class names and the committed nodule VAE."""
    spec = {"type": "cls", "dims": 3, "task": "binary", "head": NODULE_HEAD}
    source = ImageSource(root / "LIDC-IDRI-NoduleVOIs", spatial_dims=3, class_names=NODULE_CLASSES)
    train_items, val_items, test_items = (
        [{"image": d["image"], "label": d["label"]} for d in load_nodules(source, s, cache_dir)] for s in ("train", "val", "test")
    )
    return (spec, train_items, val_items, test_items, NODULE_CLASSES, *committed_nodule_vae())


def run_task(name: str, root: Path, minutes: float, vae_minutes: float, cache_dir: str | None = None) -> dict:
    set_determinism(seed=0)
    if name == "nodules":
        spec, train_items, val_items, test_items, names, vae, vae_info = nodule_task(root, cache_dir)
    else:
        spec = TASKS[name]
        train_items, names = load_split(spec, root, "train", spec.get("max_train"))
        val_items, _ = load_split(spec, root, "val", MAX_VAL)
        test_items, _ = load_split(spec, root, "test", spec.get("max_eval"))
        vae, vae_info = task_vae(spec, train_items, vae_minutes * 60)
    vae.eval()
    k = len(names)
    loss = ClassificationLoss(spec["task"], class_weights(train_items, k, spec["task"]))
    result: dict = {"n_train": len(train_items), "n_test": len(test_items), "vae": vae_info}
    for variant in VARIANTS:
        set_determinism(seed=0)
        enc = vae if variant == "none" else FeatureLatentVAE(vae, variant)
        head = LatentClassifier(spec["dims"], enc.latent_channels, k, spec["task"], spec.get("head", (64, 128)))
        model = LatentImageClassifier(enc, head, freeze_encoder=True)
        t0 = time.perf_counter()
        data = DataLoader(cache_latents(model, train_items), batch_size=256, shuffle=True)
        selector = BestOnValidation(model, spec, val_items, names)
        b = train(HeadTrainer, minutes * 60, data, model, torch.optim.AdamW(head.parameters(), 1e-3), loss,
                  selector=selector, target_key="label")
        selected = selector.restore()
        metrics = evaluate(model, spec, test_items, names)
        result[variant] = {"auroc": round(metrics["auroc"], 4), "acc": round(metrics["acc"], 4), "train_s": round(b.elapsed, 1),
                           "images_seen": b.images, "wall_s": round(time.perf_counter() - t0, 1), **selected}
        print(name, variant, result[variant], flush=True)
    return result


def markdown(results: dict) -> str:
    lines = ["# Feature channels for the heads (heads-only ablation)", "",
             f"Machine: {results['machine']}; load average {results['load_average']}. Command: `{results['command']}`. "
             f"Wall time {results['wall_s']} s.", "",
             "| task | " + " | ".join(VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS)]
    for task, r in results["tasks"].items():
        lines.append(f"| {task} test AUROC | " + " | ".join(f"{r[v]['auroc']:.3f}" for v in VARIANTS) + " |")
        lines.append(f"| {task} test ACC | " + " | ".join(f"{r[v]['acc']:.3f}" for v in VARIANTS) + " |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--tasks", default="breastmnist,busi_cls")
    p.add_argument("--minutes", type=float, default=0.5)
    p.add_argument("--vae_minutes", type=float, default=1.0)
    p.add_argument("--out", default="benchmarks/results/features.json")
    p.add_argument("--cache_dir", default=None, help="keep the preprocessed nodule cubes here (benchmarks/nodules.py's cache)")
    p.add_argument("--machine_note", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.perf_counter()
    results = {"tasks": {t: run_task(t, Path(args.data), args.minutes, args.vae_minutes, args.cache_dir) for t in args.tasks.split(",")}}
    results.update(run_record(argv, args.machine_note, t0))
    out = Path(args.out)
    atomic_write_json(out, results)
    atomic_write(out.with_suffix(".md"), lambda f: f.write(markdown(results)), mode="w")
    print(markdown(results))


if __name__ == "__main__":
    main()
