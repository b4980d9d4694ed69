"""Diagnostic tasks from VAE latents against full-resolution baselines, on real data, in one harness.

For each task it trains, on the task's training split only, with the same time budget each:

1. the VAE whose latents the heads read: a task VAE trained here without labels on the task's
   training images (``--vae_minutes``; tasks on the same images share it), or, for MedNIST, the
   committed checkpoint ``bundle/models/model.pt`` (trained without labels on the MedNIST train split);
2. ``latent_frozen``: a head on the frozen VAE's posterior, cached in memory (one encoder pass per
   image), trained on posterior samples;
3. ``latent_finetuned``: the same head and encoder fine-tuned end to end from (2), with the VAE's
   ELBO as a reconstruction term;
4. ``baseline``: a full-resolution network: MONAI ResNet-18 (classification; the MedMNIST
   "ResNet-18 (28)" stem at 28x28) or MONAI UNet (segmentation).

The budget counts training iterations only. Eight times per budget, and at its end, every model
is scored on the validation split (AUROC or Dice), and the best state is the one tested; each
model thus gets the same early stopping. Heads on cached latents use ``--latent_batch_size``
(their steps are cheap, so a larger batch keeps the engine's per-step overhead from dominating).

Then it reports the test metric (AUROC and accuracy, or Dice and HD95), training and inference
images per second, parameters and wall time, and checks the issue's targets. Usage::

    python benchmarks/tasks.py --tasks breastmnist,pneumoniamnist --out benchmarks/results/tasks.json --minutes 1.5

Tasks: breastmnist, pneumoniamnist, busi_cls, busi_seg, mednist, hippocampus, and lungct_phantom
(3D CT phantoms, normal/cyst/tumour, as the stand-in for the lung-CT task).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from monai.engines import SupervisedTrainer
from monai.networks.nets import UNet, resnet18
from monai.utils import set_determinism
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medvae_monai.data import CheckedCacheDataset, ImageSource, class_weights  # noqa: E402
from medvae_monai.engines import HeadTrainer, ImageTarget, VAETrainer  # noqa: E402
from medvae_monai.latents import cache_latents  # noqa: E402
from medvae_monai.losses import ClassificationLoss, ELBOLoss, SegmentationLoss  # noqa: E402
from medvae_monai.networks import (  # noqa: E402
    LatentClassifier,
    LatentImageClassifier,
    LatentImageSegmenter,
    LatentSegmenter,
    MedVAE,
)
from medvae_monai.config import load_bundle_network  # noqa: E402
from harness import BestOnValidation, Budget, evaluate, n_params, train  # noqa: E402
from medvae_monai.utils import atomic_write, atomic_write_json  # noqa: E402

# published MedMNIST v2 ResNet-18 (28) test figures (Yang et al., Scientific Data 2023)
PUBLISHED = {"breastmnist": {"auroc": 0.901, "acc": 0.863}, "pneumoniamnist": {"auroc": 0.944, "acc": 0.854}}

# data: path under the data root (None: embedded phantoms); size: network input size (None: native);
# max_train: evenly spaced subset of the training split, to fit the CPU budget; vae: a committed
# checkpoint instead of a task VAE; head: the head's widths per level (classifier default (64, 128):
# larger latent grids get more, narrower levels, so its cost stays small next to the baseline's;
# segmenter default (64, 32): halved, as its full-resolution stages dominate its cost)
TASKS: dict[str, dict] = {
    "breastmnist": {"type": "cls", "data": "MedMNIST/breastmnist.npz", "dims": 2, "task": "binary", "names": ["malignant", "normal/benign"]},
    "pneumoniamnist": {"type": "cls", "data": "MedMNIST/pneumoniamnist.npz", "dims": 2, "task": "binary", "names": ["normal", "pneumonia"]},
    "busi_cls": {"type": "cls", "data": "BUSI", "dims": 2, "task": "multiclass", "size": [96, 96], "head": [16, 32, 64, 128]},
    "busi_seg": {"type": "seg", "data": "BUSI", "dims": 2, "size": [96, 96], "labels": ["lesion"], "head": [32, 16]},
    "mednist": {"type": "cls", "data": "MedNIST", "dims": 2, "task": "multiclass", "max_train": 3000, "max_eval": 1200,
                "vae": "bundle/models/model.pt", "head": [16, 32, 64]},
    "hippocampus": {"type": "seg", "data": "Task04_Hippocampus", "dims": 3, "size": [40, 56, 40], "labels": ["anterior", "posterior"],
                    "head": [32, 16]},
    "lungct_phantom": {"type": "cls", "data": None, "dims": 3, "task": "multiclass"},
}
# lungct_phantom only shows that the 3D CT path runs end to end; a 3D ResNet-18 baseline on 2 CPU
# cores takes minutes per batch, so it is not in the default set
DEFAULT_TASKS = [t for t in TASKS if t != "lungct_phantom"]
LATENT_CHANNELS = 4  # the task VAEs' latent: 16x fewer elements than pixels (factor 4 in 2D)
MAX_VAL = 300  # validation images per task (evenly spaced), scored at each selection point
TARGETS = {"auroc_gap": 0.01, "dice_gap": 0.03, "train_speedup": 20.0}


def load_split(spec: dict, root: Path, split: str, max_items: int | None) -> tuple[list[dict], list[str]]:
    """Preprocessed items of one split as plain tensors: ``image`` (1, *S) in [0, 1], ``label``/``mask``."""
    dataset_dir = None if spec["data"] is None else root / spec["data"]
    source = ImageSource(dataset_dir, spec["dims"], 1, spec.get("size"), max_items=max_items)
    seg = spec["type"] == "seg"
    xform = source.preprocessing(with_mask=seg, binary_mask=len(spec.get("labels", [])) < 2)
    out = []
    for d in CheckedCacheDataset(source.items(split), xform):
        item = {"image": d["image"].as_tensor().float()}
        if seg:
            item["mask"] = torch.as_tensor(d["mask"]).as_subclass(torch.Tensor).float()
        else:
            item["label"] = int(d["label"])
        out.append(item)
    return out, spec.get("names") or source.class_names


def train_vae(train_items: list[dict], dims: int, seconds: float) -> tuple[MedVAE, dict]:
    """A task VAE trained without labels on the training images only."""
    vae = MedVAE(dims, 1, latent_channels=LATENT_CHANNELS)
    loader = DataLoader([{"image": d["image"]} for d in train_items], batch_size=32, shuffle=True, drop_last=True)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    b = train(VAETrainer, seconds, loader, vae, opt, ELBOLoss("l1", beta=1e-4))
    return vae, {"source": "task VAE trained here without labels on the task's training images",
                 "latent_channels": LATENT_CHANNELS, "train_s": round(b.elapsed, 1), "images_seen": b.images}


def pretrained_vae(path: str) -> tuple[MedVAE, dict]:
    """The committed checkpoint, built from the bundle's own ``network_def`` (inference.yaml)."""
    vae, ckpt = load_bundle_network(REPO / "bundle/configs/inference.yaml")
    if ckpt is None or ckpt.resolve() != (REPO / path).resolve():  # the config's path is relative to the CWD
        raise SystemExit(f"{path} was not loaded: run the benchmark from the repository root")
    return vae, {"source": f"{path}: trained without labels on the MedNIST train split",
                 "latent_channels": vae.latent_channels}


_TASK_VAES: dict[tuple, tuple[MedVAE, dict]] = {}  # tasks on the same images (busi_cls, busi_seg) share one


def task_vae(spec: dict, train_items: list[dict], seconds: float) -> tuple[MedVAE, dict]:
    key = (spec["data"], str(spec.get("size")), spec.get("max_train"), spec.get("vae"))
    if key not in _TASK_VAES:
        _TASK_VAES[key] = pretrained_vae(spec["vae"]) if "vae" in spec else train_vae(train_items, spec["dims"], seconds)
    return copy.deepcopy(_TASK_VAES[key][0]), _TASK_VAES[key][1]


def run_task(name: str, root: Path, minutes: float, vae_minutes: float, batch_size: int, latent_batch_size: int) -> dict:
    spec = TASKS[name]
    seg = spec["type"] == "seg"
    set_determinism(seed=0)
    t_load = time.perf_counter()
    train_items, names = load_split(spec, root, "train", spec.get("max_train"))
    val_items, _ = load_split(spec, root, "val", MAX_VAL)
    test_items, _ = load_split(spec, root, "test", spec.get("max_eval"))
    load_s = time.perf_counter() - t_load
    dims, seconds = spec["dims"], minutes * 60
    result: dict = {"dataset": spec["data"] or "embedded 3D CT phantoms", "n_train": len(train_items),
                    "n_val": len(val_items), "n_test": len(test_items),
                    "input_size": list(train_items[0]["image"].shape[1:]),
                    "classes": spec.get("labels") if seg else names, "load_s": round(load_s, 1)}
    vae, result["vae"] = task_vae(spec, train_items, vae_minutes * 60)
    latent_channels = vae.latent_channels
    key = "mask" if seg else "label"
    if seg:
        k = len(spec["labels"]) + 1
        loss = SegmentationLoss()
        make_head = lambda: LatentSegmenter(  # noqa: E731
            dims, latent_channels, k, 4, spec.get("head", (64, 32)), skip_channels=vae.hparams["channels"]
        )
        model_cls = LatentImageSegmenter
    else:
        k = len(names)
        loss = ClassificationLoss(spec["task"], class_weights(train_items, k, spec["task"]))
        make_head = lambda: LatentClassifier(dims, latent_channels, k, spec["task"], spec.get("head", (64, 128)))  # noqa: E731
        model_cls = LatentImageClassifier
    image_loader = DataLoader(train_items, batch_size=batch_size, shuffle=True, drop_last=len(train_items) > batch_size)

    def fit(trainer_cls, data, network, optimizer, **kwargs) -> tuple[Budget, dict]:
        selector = BestOnValidation(network, spec, val_items, names)
        b = train(trainer_cls, seconds, data, network, optimizer, loss, selector=selector, **kwargs)
        return b, selector.restore()

    # latent head, frozen encoder; classifiers train on the posterior cached in memory
    t_wall = time.perf_counter()
    frozen = model_cls(vae, make_head(), freeze_encoder=True)
    t0 = time.perf_counter()
    if seg:  # the head reads the encoder's skip features too, so the encoder runs on every batch
        data = image_loader
    else:
        data = DataLoader(cache_latents(frozen, train_items), batch_size=latent_batch_size, shuffle=True)
    cache_s = time.perf_counter() - t0
    b, selected = fit(HeadTrainer, data, frozen, torch.optim.AdamW(frozen.head.parameters(), 1e-3), target_key=key)
    entry = evaluate(frozen, spec, test_items, names)
    entry.update(train_img_per_s=b.images / b.elapsed, params=n_params(frozen.head), params_inference=n_params(frozen),
                 train_s=round(b.elapsed, 1), cache_s=round(cache_s, 1), images_seen=b.images,
                 batch_size=batch_size if seg else latent_batch_size, **selected,
                 wall_s=round(time.perf_counter() - t_wall, 1))
    result["latent_frozen"] = entry

    # the same model fine-tuned end to end from the frozen head, keeping the ELBO as a reconstruction term
    t_wall = time.perf_counter()
    tuned = model_cls(vae, frozen.head, freeze_encoder=False)
    b, selected = fit(HeadTrainer, image_loader, tuned, torch.optim.AdamW(tuned.parameters(), 3e-4),
                      target_key=key, recon_weight=1.0)
    entry = evaluate(tuned, spec, test_items, names)
    entry.update(train_img_per_s=b.images / b.elapsed, params=n_params(tuned), params_inference=n_params(tuned.vae.encoder)
                 + n_params(tuned.vae.to_moments) + n_params(tuned.head), train_s=round(b.elapsed, 1),
                 images_seen=b.images, batch_size=batch_size, init="latent_frozen", recon_weight=1.0, **selected,
                 wall_s=round(time.perf_counter() - t_wall, 1))
    result["latent_finetuned"] = entry

    # full-resolution baseline in the same harness and budget
    t_wall = time.perf_counter()
    if seg:
        base = UNet(dims, 1, k, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1)
        arch = "MONAI UNet (16, 32, 64, 128), strides 2, 1 residual unit"
    else:
        small = min(result["input_size"]) <= 32  # MedMNIST ResNet-18 (28): 3x3 stem, no max-pool
        base = resnet18(spatial_dims=dims, n_input_channels=1, num_classes=k,
                        conv1_t_size=3 if small else 7, conv1_t_stride=1 if small else 2, no_max_pool=small)
        arch = "MONAI ResNet-18" + (" (28): 3x3 stem, no max-pool" if small else "")
    b, selected = fit(SupervisedTrainer, image_loader, base, torch.optim.AdamW(base.parameters(), 1e-3),
                      prepare_batch=ImageTarget(target_key=key), decollate=False)
    entry = evaluate(base, spec, test_items, names)
    entry.update(train_img_per_s=b.images / b.elapsed, params=n_params(base), train_s=round(b.elapsed, 1),
                 images_seen=b.images, batch_size=batch_size, architecture=arch, **selected,
                 wall_s=round(time.perf_counter() - t_wall, 1))
    result["baseline"] = entry
    result["targets"] = check_targets(name, result)
    return result


def check_targets(name: str, r: dict) -> dict:
    """The issue's targets for one task: latent heads within a gap of the baseline, published AUROC,
    and head training at least 20x the baseline's images per second."""
    base, out = r["baseline"], {}
    metric, gap = ("dice", TARGETS["dice_gap"]) if "dice" in base else ("auroc", TARGETS["auroc_gap"])
    for mode in ("latent_frozen", "latent_finetuned"):
        m, b = r[mode].get(metric), base.get(metric)
        out[f"{mode}_{metric}_within_{gap}_of_baseline"] = None if m is None or b is None else bool(m >= b - gap)
    out["frozen_train_speedup"] = round(r["latent_frozen"]["train_img_per_s"] / base["train_img_per_s"], 1)
    out["frozen_train_speedup_at_least_20x"] = out["frozen_train_speedup"] >= TARGETS["train_speedup"]
    if name in PUBLISHED:
        for mode in ("latent_frozen", "latent_finetuned", "baseline"):
            a = r[mode].get("auroc")
            out[f"{mode}_auroc_at_least_published"] = None if a is None else bool(a >= PUBLISHED[name]["auroc"])
    return out


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown(results: dict) -> str:
    """The results table: one row per task and model."""
    lines = [
        "# Diagnostic heads on VAE latents vs. full-resolution baselines",
        "",
        f"Machine: {results['machine']['note']}. Budget per model: {results['minutes']} min "
        f"(task VAE: {results['vae_minutes']} min). Command: `{results['command']}`.",
        "",
        "| task | model | AUROC | ACC | Dice | HD95 | train img/s | infer img/s | params | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["tasks"].items():
        if "error" in r:
            lines.append(f"| {name} | – | {r['error']} | | | | | | | |")
            continue
        for mode in ("latent_frozen", "latent_finetuned", "baseline"):
            e = r[mode]
            lines.append(
                f"| {name} | {mode} | {_fmt(e.get('auroc'))} | {_fmt(e.get('acc'))} | {_fmt(e.get('dice'))} | "
                f"{_fmt(e.get('hd95'), 1)} | {_fmt(e['train_img_per_s'], 1)} | {_fmt(e['infer_img_per_s'], 1)} | "
                f"{e['params']:,} | {_fmt(e['wall_s'], 0)} |"
            )
        if name in PUBLISHED:
            p = PUBLISHED[name]
            lines.append(f"| {name} | published ResNet-18 (28) | {p['auroc']} | {p['acc']} | | | | | | |")
    lines += ["", "Targets per task (from `targets` in the JSON):", ""]
    for name, r in results["tasks"].items():
        if "targets" in r:
            t = ", ".join(f"{k}={v}" for k, v in r["targets"].items())
            lines.append(f"- **{name}**: {t}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/tasks.json"))
    p.add_argument("--minutes", type=float, default=1.0, help="training budget per model")
    p.add_argument("--vae_minutes", type=float, default=1.0, help="training budget of each task VAE")
    p.add_argument("--batch_size", type=int, default=32, help="batch size of every model that reads images")
    p.add_argument("--latent_batch_size", type=int, default=128, help="batch size of frozen heads on cached latents")
    p.add_argument("--data", default=os.environ.get("MEDVAE_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--machine_note", default=f"{os.cpu_count()} CPU cores, no GPU",
                   help="what the results table says of the machine (e.g. whether it was shared)")
    p.add_argument("--merge", action="store_true", help="keep the other tasks already in --out, replace these")
    args = p.parse_args(argv)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        p.error(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = {
        "command": "python benchmarks/tasks.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "minutes": args.minutes,
        "vae_minutes": args.vae_minutes,
        "published_resnet18_28": PUBLISHED,
        "targets": TARGETS,
        "machine": {
            "note": args.machine_note,
            "cpu_count": os.cpu_count(), "torch_threads": args.threads, "platform": platform.platform(),
            "torch": torch.__version__, "load_average_at_start": list(os.getloadavg()),
        },
        "tasks": {},
    }
    if args.merge and out.is_file():
        previous = json.loads(out.read_text())
        results["tasks"] = previous["tasks"]
        results["earlier_runs"] = previous.get("earlier_runs", []) + [
            {k: previous[k] for k in ("command", "minutes", "vae_minutes", "machine") if k in previous}
            | {"tasks": [t for t in previous["tasks"] if t not in names]}
        ]
    for name in names:
        t0 = time.perf_counter()
        print(f"[tasks] {name} ...", flush=True)
        spec = TASKS[name]
        if spec["data"] is not None and not (Path(args.data) / spec["data"]).exists():
            results["tasks"][name] = {"error": f"data not found at {Path(args.data) / spec['data']}"}
            continue
        results["tasks"][name] = run_task(
            name, Path(args.data), args.minutes, args.vae_minutes, args.batch_size, args.latent_batch_size
        )
        results["tasks"][name]["task_wall_s"] = round(time.perf_counter() - t0, 1)
        results["tasks"][name]["command"] = results["command"]
        print(json.dumps({name: {m: {k: v for k, v in e.items() if k in ("auroc", "acc", "dice")}
                                 for m, e in results["tasks"][name].items() if isinstance(e, dict) and m != "vae"}}), flush=True)
        atomic_write_json(out, results)  # partial results survive an interrupted run
        atomic_write(out.with_suffix(".md"), lambda f: f.write(markdown(results)), mode="w")
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    atomic_write_json(out, results)
    print(f"[tasks] wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
