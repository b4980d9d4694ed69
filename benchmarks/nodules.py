"""Lung-nodule malignancy on chest CT (LIDC-IDRI nodule VOIs) from 3D VAE latents, against a
full-resolution 3D ResNet-18 and the ruler, in one run on the same patient-grouped split.

Every model reads the image alone: the 32 mm cube of :func:`medvae_monai.transforms.nodule_preprocessing`
(1 mm isotropic, HU -1000..+400 to [0, 1], centred on the nodule mask). With the same training
budget each (``--minutes`` of training iterations, the best of 9 validation scores tested, the
harness of ``benchmarks/tasks.py``) and the same augmentation (in-plane flips):

1. ``latent_frozen``: a :class:`~medvae_monai.networks.LatentClassifier` on the frozen 3D VAE's
   posterior (``--vae``, trained without labels on the training patients' VOIs), cached in memory;
2. ``latent_finetuned``: that head and the encoder fine-tuned end to end, the ELBO kept as a
   reconstruction term;
3. ``baseline``: MONAI's 3D ResNet-18 on the full-resolution cube;
4. ``ruler``: the ``diameter_mm`` column alone (radiologists' measurement; never a model input);
5. segmentation: a :class:`~medvae_monai.networks.LatentSegmenter` on the frozen latent alone (no
   encoder skips) against a MONAI UNet on the cube, Dice and HD95 on the nodule masks.

Classification metrics on the test patients: AUROC with a 95% bootstrap CI (2,000 resamples of the
test nodules), accuracy at probability 0.5, sensitivity at 90% specificity; and for the latent
heads the posterior-sampling uncertainty (std of the malignancy probability over 32 samples
``z ~ q(z | x)``), with how well it flags the head's errors. Context only, for its other split
and crops: the published NoduleMNIST3D ResNet-18 (28) AUC 0.863 (Yang et al., Scientific Data
2023). ``--save_model`` writes the latent classifier with the better *validation* AUROC (VAE + head
state dict) for ``bundle/configs/evaluate_nodule.yaml``. Usage::

    python benchmarks/nodules.py --vae runs/nodule_vae/model.pt --minutes 3 --save_model bundle/models/nodule.pt
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, Dataset
from monai.engines import SupervisedTrainer
from monai.metrics import compute_roc_auc
from monai.networks.nets import UNet, resnet18
from monai.transforms import Compose, RandFlipd
from monai.utils import set_determinism
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from tasks import BestOnValidation, evaluate, n_params, train  # noqa: E402

import medvae_monai.data  # noqa: E402
from medvae_monai.engines import HeadTrainer, ImageTarget  # noqa: E402
from medvae_monai.inferers import PosteriorSamplingInferer  # noqa: E402
from medvae_monai.latents import cache_latents  # noqa: E402
from medvae_monai.losses import ClassificationLoss, SegmentationLoss  # noqa: E402
from medvae_monai.networks import (  # noqa: E402
    LatentClassifier,
    LatentImageClassifier,
    LatentImageSegmenter,
    LatentSegmenter,
    MedVAE,
)
from medvae_monai.transforms import NODULE_CUBE, NODULE_HU_WINDOW, NODULE_SPACING_MM, nodule_preprocessing  # noqa: E402
from medvae_monai.utils import atomic_torch_save, atomic_write, atomic_write_json, load_weights  # noqa: E402

CLASS_NAMES = ["benign", "malignant"]
# the committed nodule VAE's architecture (bundle/configs/nodule.yaml's vae_def)
VAE_ARGS = {"spatial_dims": 3, "in_channels": 1, "latent_channels": 4, "channels": (24, 48), "downsample_factor": 4,
            "num_res_blocks": 1, "decoder_res_blocks": 2}
HEAD_CHANNELS = (16, 32)
PUBLISHED = {"nodulemnist3d_resnet18_28_auroc": 0.863}
TARGETS = {"holdout_auroc": 0.92, "auroc_gap": 0.02, "train_speedup": 20.0}
# augmentation for every model: in-plane flips (the axial plane has no preferred side for a nodule);
# image models draw them at random, the frozen head reads the cached latents of all four
IN_PLANE_FLIPS = ((), (1,), (2,), (1, 2))
CLS = {"type": "cls"}
SEG = {"type": "seg", "labels": ["nodule"]}


def load_split(source, split: str, cache_dir: str | None = None) -> list[dict]:
    """Preprocessed cubes of one split: ``image`` (1, 32, 32, 32), ``mask``, ``label``, ``diameter_mm``.

    With ``cache_dir`` the cubes are kept there as plain tensors (read back with
    ``weights_only=True``; MONAI's ``PersistentDataset`` would pickle MetaTensors), keyed by the
    split's sources, so reruns skip the preprocessing.
    """
    items = source.items(split)
    key = hashlib.sha1("\n".join(str(it["source"]) for it in items).encode()).hexdigest()[:12]
    path = Path(cache_dir, f"nodules_{split}_{key}.pt") if cache_dir else None
    if path is not None and path.is_file():
        c = torch.load(path, weights_only=True)
    else:
        ds = list(CacheDataset(items, nodule_preprocessing(), progress=False))
        c = {"image": torch.stack([d["image"].as_tensor().float() for d in ds]),
             "mask": torch.stack([d["mask"].as_tensor().float() for d in ds]),
             "label": torch.tensor([int(d["label"]) for d in ds]),
             "diameter_mm": torch.tensor([float(d["diameter_mm"]) for d in ds], dtype=torch.float64)}
        if path is not None:
            atomic_torch_save(c, path)
    return [{"image": c["image"][i], "mask": c["mask"][i], "label": int(c["label"][i]),
             "diameter_mm": float(c["diameter_mm"][i]), "patient_id": it["patient_id"]} for i, it in enumerate(items)]


def binary_metrics(score: np.ndarray, y: np.ndarray, threshold: float = 0.5, n_boot: int = 2000) -> dict:
    """AUROC (MONAI ``compute_roc_auc``) with a percentile bootstrap 95% CI, accuracy at ``threshold``
    and sensitivity at 90% specificity (threshold: the 90th percentile of the negatives' scores)."""
    auroc = float(compute_roc_auc(torch.as_tensor(score), torch.as_tensor(y)))
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            boots.append(float(compute_roc_auc(torch.as_tensor(score[i]), torch.as_tensor(y[i]))))
    q = np.quantile(score[y == 0], 0.9, method="higher")
    return {"auroc": auroc, "auroc_ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "acc": float(((score > threshold) == (y == 1)).mean()), "sens_at_90_spec": float((score[y == 1] > q).mean()),
            "n": int(len(y)), "n_malignant": int(y.sum())}


@torch.no_grad()
def probabilities(network, items: list[dict], batch_size: int = 64) -> np.ndarray:
    network.eval()
    x = torch.stack([d["image"] for d in items])
    return np.concatenate([torch.softmax(network(x[i : i + batch_size]), 1)[:, 1].numpy() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def uncertainty(network: LatentImageClassifier, items: list[dict], num_samples: int = 32) -> dict:
    """Posterior-sampling spread of the malignancy probability, and whether it flags errors."""
    network.eval()
    x, y = torch.stack([d["image"] for d in items]), np.array([d["label"] for d in items])
    samples = PosteriorSamplingInferer(num_samples)(x, network)[..., 1]  # (B, samples): P(malignant)
    mean, std = samples.mean(1).numpy(), samples.std(1).numpy()
    wrong = (mean > 0.5) != (y == 1)
    keep = std <= np.quantile(std, 0.8)
    return {"num_samples": num_samples, "mean_std": float(std.mean()),
            "std_correct": float(std[~wrong].mean()), "std_wrong": float(std[wrong].mean()) if wrong.any() else None,
            "error_auroc_of_std": float(compute_roc_auc(torch.as_tensor(std), torch.as_tensor(wrong.astype(float))))
            if 0 < wrong.sum() < len(wrong) else None,
            "acc_most_certain_80pct": float((~wrong[keep]).mean()), "acc_all": float((~wrong).mean())}


def fit(trainer_cls, seconds, data, network, optimizer, loss, spec, val, names, **kwargs):
    """Train for ``seconds`` of iterations, keep the best validation state; returns (budget, record)."""
    selector = BestOnValidation(network, spec, val, names)
    t_wall = time.perf_counter()
    b = train(trainer_cls, seconds, data, network, optimizer, loss, selector=selector, **kwargs)
    return b, {**selector.restore(), "train_img_per_s": b.images / b.elapsed, "train_s": round(b.elapsed, 1),
               "images_seen": b.images, "wall_s": round(time.perf_counter() - t_wall, 1)}


def classifier_entry(network, test, record: dict, **extra) -> dict:
    y = np.array([d["label"] for d in test])
    t0 = time.perf_counter()
    p = probabilities(network, test)
    return {**binary_metrics(p, y), "infer_img_per_s": len(test) / (time.perf_counter() - t0), **record, **extra}


def run(args) -> tuple[dict, LatentImageClassifier, list[dict]]:
    set_determinism(seed=0)
    source = medvae_monai.data.ImageSource(args.dataset_dir, spatial_dims=3, class_names=CLASS_NAMES)
    t0 = time.perf_counter()
    train_items, val, test = (load_split(source, s, args.cache_dir) for s in ("train", "val", "test"))
    r: dict = {"dataset": str(args.dataset_dir), "split": "patient-grouped (medvae_monai.data.splits)",
               **{f"n_{s}": len(v) for s, v in (("train", train_items), ("val", val), ("test", test))},
               "n_test_patients": len({d["patient_id"] for d in test}), "load_s": round(time.perf_counter() - t0, 1),
               "preprocessing": {"spacing_mm": NODULE_SPACING_MM, "cube": NODULE_CUBE, "hu_window_level_width": NODULE_HU_WINDOW}}
    assert not {d["patient_id"] for d in train_items} & {d["patient_id"] for d in test}, "a patient on both sides"
    seconds, y_test = args.minutes * 60, np.array([d["label"] for d in test])

    # the ruler: diameter alone; accuracy at the threshold that is best on the training nodules
    d_train = np.array([d["diameter_mm"] for d in train_items])
    cut = max(np.unique(d_train), key=lambda c: ((d_train > c) == np.array([d["label"] for d in train_items])).mean())
    ruler = binary_metrics(np.array([d["diameter_mm"] for d in test]), y_test, threshold=float(cut))
    r["ruler"] = {**ruler, "threshold_mm": float(cut), "what": "diameter_mm column alone (not a model input)"}

    vae = load_weights(MedVAE(**VAE_ARGS), args.vae).eval()
    r["vae"] = {"checkpoint": str(args.vae), "architecture": VAE_ARGS, "params": n_params(vae),
                "trained": "without labels on the training patients' VOIs (bundle train.yaml, see bundle/docs)"}
    loss = ClassificationLoss("binary", medvae_monai.data.class_weights(train_items, 2, "binary"))
    flip = Compose([RandFlipd(["image", "mask"], prob=0.5, spatial_axis=a) for a in (0, 1)])
    image_loader = DataLoader(Dataset(train_items, flip), batch_size=args.batch_size, shuffle=True, drop_last=True)
    flipped = [{**d, "image": torch.flip(d["image"], dims) if dims else d["image"]} for d in train_items for dims in IN_PLANE_FLIPS]
    common = {"spec": CLS, "val": val, "names": CLASS_NAMES}

    frozen = LatentImageClassifier(copy.deepcopy(vae), LatentClassifier(3, 4, 2, "binary", HEAD_CHANNELS), freeze_encoder=True)
    t0 = time.perf_counter()
    latents = DataLoader(cache_latents(frozen, flipped), batch_size=args.latent_batch_size, shuffle=True)
    cache_s = time.perf_counter() - t0
    _, rec = fit(HeadTrainer, seconds, latents, frozen, torch.optim.AdamW(frozen.head.parameters(), 1e-3), loss,
                 target_key="label", **common)
    r["latent_frozen"] = classifier_entry(frozen, test, rec, cache_s=round(cache_s, 1), params=n_params(frozen.head),
                                          uncertainty=uncertainty(frozen, test))

    tuned = LatentImageClassifier(copy.deepcopy(vae), copy.deepcopy(frozen.head), freeze_encoder=False)
    _, rec = fit(HeadTrainer, seconds, image_loader, tuned, torch.optim.AdamW(tuned.parameters(), 3e-4), loss,
                 target_key="label", recon_weight=1.0, **common)
    r["latent_finetuned"] = classifier_entry(tuned, test, rec, params=n_params(tuned), init="latent_frozen",
                                             uncertainty=uncertainty(tuned, test))

    base = resnet18(spatial_dims=3, n_input_channels=1, num_classes=2)
    _, rec = fit(SupervisedTrainer, seconds, image_loader, base, torch.optim.AdamW(base.parameters(), 1e-3), loss,
                 prepare_batch=ImageTarget(target_key="label"), decollate=False, **common)
    r["baseline"] = classifier_entry(base, test, rec, params=n_params(base),
                                     architecture="MONAI ResNet-18, 3D (7^3 stride-2 stem, max-pool) on the 32^3 cube")

    # segmentation of the nodule: a head on the frozen latent alone vs a full-resolution UNet
    seg_common = {"spec": SEG, "val": val, "names": SEG["labels"]}
    seg = LatentImageSegmenter(copy.deepcopy(vae), LatentSegmenter(3, 4, 2, 4, (32, 16), skip_channels=None), True)
    _, rec = fit(HeadTrainer, seconds, image_loader, seg, torch.optim.AdamW(seg.head.parameters(), 1e-3),
                 SegmentationLoss(), target_key="mask", **seg_common)
    r["seg_latent"] = {**evaluate(seg, SEG, test, SEG["labels"]), **rec, "params": n_params(seg.head),
                       "what": "LatentSegmenter on the frozen posterior mean only (no encoder skips)"}
    unet = UNet(3, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1)
    _, rec = fit(SupervisedTrainer, seconds, image_loader, unet, torch.optim.AdamW(unet.parameters(), 1e-3),
                 SegmentationLoss(), prepare_batch=ImageTarget(target_key="mask"), decollate=False, **seg_common)
    r["seg_unet"] = {**evaluate(unet, SEG, test, SEG["labels"]), **rec, "params": n_params(unet),
                     "what": "MONAI UNet (16, 32, 64, 128), strides 2, 1 residual unit, on the 32^3 cube"}

    best = max(("latent_frozen", "latent_finetuned"), key=lambda m: r[m]["val_auroc"])
    r["shipped"] = {"model": best, "selected_by": "validation AUROC"}
    r["targets"] = check_targets(r)
    return r, {"latent_frozen": frozen, "latent_finetuned": tuned}[best], test


def check_targets(r: dict) -> dict:
    base, out = r["baseline"], {}
    for m in ("latent_frozen", "latent_finetuned"):
        out[f"{m}_auroc_within_{TARGETS['auroc_gap']}_of_baseline"] = r[m]["auroc"] >= base["auroc"] - TARGETS["auroc_gap"]
        out[f"{m}_auroc_at_least_ruler"] = r[m]["auroc"] >= r["ruler"]["auroc"]
        out[f"{m}_test_auroc_at_least_{TARGETS['holdout_auroc']}"] = r[m]["auroc"] >= TARGETS["holdout_auroc"]
    out["frozen_train_speedup"] = round(r["latent_frozen"]["train_img_per_s"] / base["train_img_per_s"], 1)
    out["frozen_train_speedup_at_least_20x"] = out["frozen_train_speedup"] >= TARGETS["train_speedup"]
    out["baseline_auroc_at_least_ruler"] = base["auroc"] >= r["ruler"]["auroc"]
    return out


def markdown(res: dict) -> str:
    r = res["result"]
    f = lambda v, d=3: "–" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = [
        "# Lung-nodule malignancy (LIDC-IDRI VOIs): 3D VAE latents vs. full-resolution 3D ResNet-18 vs. the ruler", "",
        f"Test split: {r['n_test']} nodules of {r['n_test_patients']} patients (train {r['n_train']}, val {r['n_val']}; "
        f"patient-grouped). Budget per model: {res['minutes']} min of training. Machine: {res['machine']['note']}, "
        f"load average {res['machine']['load_average_at_start']} at start. Command: `{res['command']}`.", "",
        "| model | AUROC [95% CI] | ACC | sens @ 90% spec | train img/s | params | val AUROC |", "|---|---|---|---|---|---|---|",
    ]
    for m in ("ruler", "latent_frozen", "latent_finetuned", "baseline"):
        e = r[m]
        ci = e["auroc_ci95"]
        lines.append(f"| {m} | {f(e['auroc'])} [{f(ci[0])}, {f(ci[1])}] | {f(e['acc'])} | {f(e['sens_at_90_spec'])} | "
                     f"{f(e.get('train_img_per_s'), 1)} | {e.get('params', '–'):,} | {f(e.get('val_auroc'))} |"
                     if m != "ruler" else
                     f"| ruler (diameter_mm alone) | {f(e['auroc'])} [{f(ci[0])}, {f(ci[1])}] | {f(e['acc'])} | "
                     f"{f(e['sens_at_90_spec'])} | – | – | – |")
    lines.append(f"| published NoduleMNIST3D ResNet-18 (28), other split and crops | {PUBLISHED['nodulemnist3d_resnet18_28_auroc']} | | | | | |")
    lines += ["", "| segmenter | Dice | HD95 (voxels = mm) | train img/s | params |", "|---|---|---|---|---|"]
    for m in ("seg_latent", "seg_unet"):
        e = r[m]
        lines.append(f"| {m}: {e['what']} | {f(e['dice'])} | {f(e['hd95'], 1)} | {f(e['train_img_per_s'], 1)} | {e['params']:,} |")
    u = r["latent_frozen"]["uncertainty"]
    lines += ["", f"Posterior-sampling uncertainty (latent_frozen, {u['num_samples']} samples): mean std {f(u['mean_std'])}; "
              f"std of correct {f(u['std_correct'])} vs wrong {f(u['std_wrong'])}; AUROC of std for flagging errors "
              f"{f(u['error_auroc_of_std'])}; accuracy on the 80% most certain {f(u['acc_most_certain_80pct'])} vs all "
              f"{f(u['acc_all'])}.", "", "Targets: " + ", ".join(f"{k}={v}" for k, v in r["targets"].items()) + ".",
              f"Shipped: {r['shipped']['model']} (by validation AUROC).", ""]
    return "\n".join(lines)


@torch.no_grad()
def figure(model: LatentImageClassifier, test: list[dict], path: str | Path, per_class: int = 4, zoom: int = 4) -> None:
    """A picture for the docs: for test nodules of each class, the middle axial slice of the cube
    (top), its reconstruction from the 8^3 x 4 latent (middle), and the malignancy probability
    +- posterior std with the label (caption). Written with PIL, as a PNG."""
    from PIL import Image, ImageDraw

    model.eval()
    picked = [d for c in (0, 1) for d in [d for d in test if d["label"] == c][:: max(1, sum(x["label"] == c for x in test) // per_class)][:per_class]]
    x = torch.stack([d["image"] for d in picked])
    samples = PosteriorSamplingInferer(32)(x, model)[..., 1]
    mean, std = samples.mean(1), samples.std(1)
    recon = model.vae.decode(model.vae.encode(x)[0]).clamp(0, 1)
    tile, gap, text_h = 32 * zoom, 4, 30
    canvas = Image.new("L", (len(picked) * (tile + gap), 2 * tile + gap + text_h), 255)
    draw = ImageDraw.Draw(canvas)
    for i, d in enumerate(picked):
        for row, vol in enumerate((x[i, 0], recon[i, 0])):
            img = (vol[:, :, vol.shape[2] // 2].T.numpy() * 255).astype(np.uint8)  # axial slice, picture order
            canvas.paste(Image.fromarray(img).resize((tile, tile), Image.NEAREST), (i * (tile + gap), row * (tile + gap)))
        caption = f"{CLASS_NAMES[d['label']][:6]} {d['diameter_mm']:.0f}mm\np={mean[i]:.2f}+-{std[i]:.2f}"
        draw.text((i * (tile + gap) + 2, 2 * tile + gap + 1), caption, fill=0)
    path = Path(path)
    atomic_write(path, lambda fh: canvas.save(fh, format="PNG"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset_dir", default=os.environ.get("MEDVAE_DATA", str(REPO.parent / "shared" / "data")) + "/LIDC-IDRI-NoduleVOIs")
    p.add_argument("--vae", required=True, help="the 3D nodule VAE's state dict (trained without labels)")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/nodules.json"))
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per model")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--latent_batch_size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save_model", default=None, help="write the selected latent classifier (VAE + head) here")
    p.add_argument("--cache_dir", default=None, help="keep the preprocessed cubes here between runs")
    p.add_argument("--figure", default=None, help="write the docs picture (slices, reconstructions, probabilities) here")
    p.add_argument("--machine_note", default=f"{os.cpu_count()} CPU cores, no GPU")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = {"command": "python benchmarks/nodules.py " + shlex.join(sys.argv[1:] if argv is None else argv),
           "minutes": args.minutes, "targets": TARGETS, "published": PUBLISHED,
           "machine": {"note": args.machine_note, "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                       "platform": platform.platform(), "torch": torch.__version__,
                       "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}}
    t0 = time.perf_counter()
    res["result"], model, test = run(args)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    out = Path(args.out)
    atomic_write_json(out, res)
    atomic_write(out.with_suffix(".md"), lambda fh: fh.write(markdown(res)), mode="w")
    if args.save_model:
        atomic_torch_save(model.state_dict(), args.save_model)
    if args.figure:
        figure(model, test, args.figure)
    print(markdown(res))


if __name__ == "__main__":
    main()
