"""Lung-nodule malignancy on chest CT (LIDC-IDRI nodule VOIs) from 3D VAE latents, against a
full-resolution MONAI 3D ResNet and the ruler, in one run on the same patient-grouped split.

Every model reads the image alone: the 32 mm cube of :func:`medvae_monai.transforms.nodule_preprocessing`
(1 mm isotropic, HU -1000..+400 to [0, 1], centred on the nodule mask). Budgets are epochs, not
seconds (``--head_epochs``, ``--image_epochs``, ``--seg_epochs``; ``--max_minutes`` caps any one
model), and every model keeps its best epoch by validation score. The image models draw the 16
orientations of the cube at random (:func:`~medvae_monai.transforms.orient_cube`: flips of the three
axes, in-plane 90-degree turns); the latent classifiers average their logits over all 16 at test:

1. ``latent_frozen``: a :class:`~medvae_monai.networks.LatentClassifier` on the frozen 3D VAE's
   posterior (``--vae``, trained without labels on the training patients' VOIs), trained on
   posterior samples of the cached latents (of the cube as given; of all 16 orientations with
   ``--train_orientations 16``) with a one-cycle learning rate;
2. ``latent_frozen_ensemble``: ``--seeds`` such heads, logits averaged
   (:class:`~medvae_monai.networks.LatentClassifierEnsemble`);
3. ``latent_finetuned``: the first head and the encoder fine-tuned end to end for as many epochs
   as the baseline, the ELBO kept as a reconstruction term;
4. ``baseline``: MONAI's 3D ResNet (``--baseline``) on the full-resolution cube, scored on the cube
   as given (averaging 16 orientations of a full-resolution CNN would cost 16x its inference);
5. ``ruler``: the ``diameter_mm`` column alone (radiologists' measurement; never a model input);
6. segmentation: a :class:`~medvae_monai.networks.LatentSegmenter` on the frozen latent alone (no
   encoder skips) against a MONAI UNet on the cube, Dice and HD95 on the nodule masks.

Classification metrics on the test patients: AUROC with a 95% bootstrap CI (2,000 resamples of the
test nodules), accuracy at probability 0.5, sensitivity at 90% specificity; and for the latent
classifiers the posterior-sampling uncertainty (std of the malignancy probability over 32 samples
``z ~ q(z | x)``), with how well it flags the errors. Context only, for its other split and crops:
the published NoduleMNIST3D ResNet-18 (28) AUC 0.863 (Yang et al., Scientific Data 2023).
``--save_model`` writes the latent classifier with the best *validation* AUROC (VAE + head state
dict) for ``bundle/configs/evaluate_nodule.yaml``. Usage::

    python benchmarks/nodules.py --vae runs/nodule_vae/model.pt --save_model bundle/models/nodule.pt
"""

from __future__ import annotations

import argparse
import copy
import hashlib
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
import monai.networks.nets
from ignite.engine import Events
from monai.handlers import LrScheduleHandler
from monai.networks.nets import UNet
from monai.transforms import Compose, RandFlipd, RandRotate90d
from monai.utils import set_determinism
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from nodule_report import (  # noqa: E402
    CLASS_NAMES,
    PART_OF,
    PARTS,
    PUBLISHED,
    TARGETS,
    binary_metrics,
    figure,
    markdown,
    merge,
    select,
    uncertainty,
)
from harness import BestOnValidation, Budget, evaluate, n_params  # noqa: E402

import medvae_monai.data  # noqa: E402
from medvae_monai.engines import HeadTrainer, ImageTarget  # noqa: E402
from medvae_monai.losses import ClassificationLoss, SegmentationLoss  # noqa: E402
from medvae_monai.networks import (  # noqa: E402
    LatentClassifier,
    LatentClassifierEnsemble,
    LatentImageClassifier,
    LatentImageSegmenter,
    LatentSegmenter,
    MedVAE,
)
from medvae_monai.transforms import (  # noqa: E402
    NODULE_CUBE,
    NODULE_HU_WINDOW,
    NODULE_SPACING_MM,
    NUM_CUBE_ORIENTATIONS,
    nodule_preprocessing,
    orient_cube,
)
from medvae_monai.utils import atomic_torch_save, atomic_write, atomic_write_json, load_weights  # noqa: E402

# the committed nodule VAE's architecture (bundle/configs/nodule.yaml's vae_def)
VAE_ARGS = {"spatial_dims": 3, "in_channels": 1, "latent_channels": 4, "channels": (24, 48), "downsample_factor": 4,
            "num_res_blocks": 1, "decoder_res_blocks": 2}
HEAD_CHANNELS = (16, 32)
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


@torch.no_grad()
def probabilities(network, items: list[dict], batch_size: int = 64) -> np.ndarray:
    network.eval()
    x = torch.stack([d["image"] for d in items])
    return np.concatenate([torch.softmax(network(x[i : i + batch_size]), 1)[:, 1].numpy() for i in range(0, len(x), batch_size)])


def fit(trainer_cls, epochs: int, max_s: float, loader, network, optimizer, loss, score, spec=CLS, handlers=(),
        **kwargs) -> dict:
    """Train for ``epochs`` (stopped early only at ``max_s`` seconds of iterations), scoring on the
    validation split (``score``: network -> AUROC, or Dice for ``spec=SEG``) after every epoch and
    keeping the best state; returns what to record."""
    best = BestOnValidation(network, spec, [], [], score)
    budget = Budget(max_s)  # counts images and training seconds; stops the engine at the cap
    trainer = trainer_cls(device="cpu", max_epochs=epochs, train_data_loader=loader, network=network,
                          optimizer=optimizer, loss_function=loss, train_handlers=[budget, *handlers], **kwargs)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, best)
    trainer.add_event_handler(Events.TERMINATE, best)
    t_wall = time.perf_counter()
    trainer.run()
    return {**best.restore(), "epochs": trainer.state.epoch, "stopped_at_time_cap": budget.elapsed > max_s,
            "train_img_per_s": budget.images / budget.elapsed, "train_s": round(budget.elapsed, 1),
            "images_seen": budget.images, "wall_s": round(time.perf_counter() - t_wall, 1)}


@torch.no_grad()
def oriented_posteriors(vae: MedVAE, items: list[dict], orientations: int = NUM_CUBE_ORIENTATIONS,
                        batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, sigma)``, each ``(N, orientations, Cz, 8, 8, 8)``: the posterior of every cube in the
    first ``orientations`` of :func:`orient_cube`'s, so frozen heads train on them and are scored
    with test-time averaging without re-encoding."""
    x = torch.stack([d["image"] for d in items])
    mus, sigmas = [], []
    for o in range(orientations):
        parts = [vae.encode(orient_cube(x[i : i + batch_size], o)) for i in range(0, len(x), batch_size)]
        mus.append(torch.cat([m for m, _ in parts]))
        sigmas.append(torch.cat([s for _, s in parts]))
    return torch.stack(mus, 1), torch.stack(sigmas, 1)


class OrientedLatents(torch.utils.data.Dataset):
    """Cached posteriors of a frozen encoder; each item is its cube in one orientation drawn at random."""

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor, labels: list[int]) -> None:
        self.mu, self.sigma, self.labels = mu, sigma, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        o = int(torch.randint(self.mu.shape[1], ()))
        return {"mu": self.mu[i, o], "sigma": self.sigma[i, o], "label": self.labels[i]}


@torch.no_grad()
def head_probabilities(head: torch.nn.Module, mu: torch.Tensor, orientations: int = NUM_CUBE_ORIENTATIONS) -> np.ndarray:
    """P(malignant) from cached posterior means ``(N, 16, ...)``: the logits averaged over the first
    ``orientations`` views, as :class:`LatentImageClassifier` with ``orientations`` computes them."""
    head.eval()
    logits = torch.stack([head(mu[:, o]) for o in range(orientations)]).mean(0)
    return torch.softmax(logits, 1)[:, 1].numpy()


def auroc(p: np.ndarray, items: list[dict]) -> float:
    return float(compute_roc_auc(torch.as_tensor(p), torch.as_tensor([d["label"] for d in items])))


def classifier_entry(p: np.ndarray, test: list[dict], record: dict, infer_s: float, **extra) -> dict:
    y = np.array([d["label"] for d in test])
    return {**binary_metrics(p, y), "infer_img_per_s": len(test) / infer_s, **record, **extra}


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


HEAD_KW = {"spatial_dims": 3, "latent_channels": 4, "num_classes": 2, "task": "binary", "channels": HEAD_CHANNELS}


def build_classifier(name: str, seeds: int) -> LatentImageClassifier:
    """The network of a latent candidate, as ``evaluate_nodule.yaml`` builds it (16 orientations)."""
    head = LatentClassifierEnsemble(seeds, **HEAD_KW) if name == "latent_frozen_ensemble" else LatentClassifier(**HEAD_KW)
    return LatentImageClassifier(MedVAE(**VAE_ARGS), head, True, NUM_CUBE_ORIENTATIONS)


def run(args) -> tuple[dict, dict, list[dict]]:
    """The models of ``args.parts`` (all four in one process, or one part per process and
    ``--merge`` after); returns the record, the latent candidates' networks by name, the test items."""
    set_determinism(seed=0)
    source = medvae_monai.data.ImageSource(args.dataset_dir, spatial_dims=3, class_names=CLASS_NAMES)
    t0 = time.perf_counter()
    train_items, val, test = (load_split(source, s, args.cache_dir)[: args.limit] for s in ("train", "val", "test"))
    r: dict = {"dataset": str(args.dataset_dir), "split": "patient-grouped (medvae_monai.data.splits)",
               **{f"n_{s}": len(v) for s, v in (("train", train_items), ("val", val), ("test", test))},
               "n_test_patients": len({d["patient_id"] for d in test}), "load_s": round(time.perf_counter() - t0, 1),
               "preprocessing": {"spacing_mm": NODULE_SPACING_MM, "cube": NODULE_CUBE, "hu_window_level_width": NODULE_HU_WINDOW},
               "budgets": {"head_epochs": args.head_epochs, "image_epochs": args.image_epochs, "seg_epochs": args.seg_epochs,
                           "seeds": args.seeds, "max_minutes_per_model": args.max_minutes,
                           "frozen_head_train_orientations": args.train_orientations}, "parts": args.parts}
    assert not {d["patient_id"] for d in train_items} & {d["patient_id"] for d in test}, "a patient on both sides"
    y_test, cap = np.array([d["label"] for d in test]), args.max_minutes * 60

    # the ruler: diameter alone; accuracy at the threshold that is best on the training nodules
    d_train = np.array([d["diameter_mm"] for d in train_items])
    cut = max(np.unique(d_train), key=lambda c: ((d_train > c) == np.array([d["label"] for d in train_items])).mean())
    ruler = binary_metrics(np.array([d["diameter_mm"] for d in test]), y_test, threshold=float(cut))
    r["ruler"] = {**ruler, "val_auroc": auroc(np.array([d["diameter_mm"] for d in val]), val), "threshold_mm": float(cut),
                  "what": "diameter_mm column alone (not a model input)"}

    vae = load_weights(MedVAE(**VAE_ARGS), args.vae).eval()
    r["vae"] = {"checkpoint": str(args.vae), "architecture": VAE_ARGS, "params": n_params(vae),
                "trained": "without labels on the training patients' VOIs (bundle train.yaml, see bundle/docs)"}
    loss = ClassificationLoss("binary", medvae_monai.data.class_weights(train_items, 2, "binary"))
    # image models draw the same 16 orientations at random: flips of the three axes, in-plane 90-degree turns
    augment = Compose([*(RandFlipd(["image", "mask"], prob=0.5, spatial_axis=a) for a in (0, 1, 2)),
                       RandRotate90d(["image", "mask"], prob=0.75, max_k=3, spatial_axes=(0, 1))])
    image_loader = DataLoader(Dataset(train_items, augment), batch_size=args.batch_size, shuffle=True, drop_last=True)

    run_images(args, r, vae, loss, image_loader, val, test)

    # frozen heads: the encoder runs once per cube and orientation; the heads train on posterior samples
    networks = {}
    if not {"frozen", "finetuned"} & set(args.parts):
        return finish(r, networks, test)
    t0 = time.perf_counter()
    mu_tr, sg_tr = oriented_posteriors(vae, train_items, args.train_orientations)
    (mu_val, _), (mu_te, _) = (oriented_posteriors(vae, s) for s in (val, test))
    cache_s = time.perf_counter() - t0
    latents = DataLoader(OrientedLatents(mu_tr, sg_tr, [d["label"] for d in train_items]), batch_size=args.latent_batch_size,
                         shuffle=True)
    steps = args.head_epochs * len(latents)
    heads, records = [], []
    for seed in range(args.seeds):
        set_determinism(seed=seed)
        net = LatentImageClassifier(vae, LatentClassifier(**HEAD_KW), freeze_encoder=True)
        opt = torch.optim.AdamW(net.head.parameters(), args.head_lr, weight_decay=1e-2)
        sched = LrScheduleHandler(torch.optim.lr_scheduler.OneCycleLR(opt, args.head_lr, total_steps=steps), epoch_level=False)
        records.append(fit(HeadTrainer, args.head_epochs, cap, latents, net, opt, loss,
                           lambda n: auroc(head_probabilities(n.head, mu_val), val), handlers=[sched], target_key="label"))
        heads.append(net.head)
    ensemble = LatentClassifierEnsemble(len(heads), **HEAD_KW)
    for member, head in zip(ensemble.heads, heads):
        member.load_state_dict(head.state_dict())
    for name, head, rec in (("latent_frozen", heads[0], records[0]),
                            ("latent_frozen_ensemble", ensemble, {"members": records}))[: 2 * ("frozen" in args.parts)]:
        p, s = timed(head_probabilities, head, mu_te)
        net = LatentImageClassifier(copy.deepcopy(vae), copy.deepcopy(head), True, NUM_CUBE_ORIENTATIONS)
        r[name] = classifier_entry(p, test, {"val_auroc": round(auroc(head_probabilities(head, mu_val), val), 4), **rec},
                                   s + cache_s * len(test) / (len(train_items) + len(val) + len(test)),
                                   params=n_params(head), test_time_orientations=NUM_CUBE_ORIENTATIONS, cache_s=round(cache_s, 1),
                                   auroc_one_orientation=auroc(head_probabilities(head, mu_te, 1), test))
        r[name]["uncertainty"] = uncertainty(net, test) if name == "latent_frozen_ensemble" else None
        # every head's images over its training time plus the encoding of all 16 orientations once
        r[name]["train_img_per_s"] = sum(m["images_seen"] for m in records) / (sum(m["train_s"] for m in records) + cache_s)
        networks[name] = net

    # fine-tuned: the first frozen head and the encoder, end to end with the ELBO kept as a reconstruction term
    if "finetuned" not in args.parts:
        return finish(r, networks, test)
    tuned = LatentImageClassifier(copy.deepcopy(vae), copy.deepcopy(heads[0]), False, NUM_CUBE_ORIENTATIONS)
    rec = fit(HeadTrainer, args.image_epochs, cap, image_loader, tuned, torch.optim.AdamW(tuned.parameters(), 3e-4), loss,
              lambda n: auroc(probabilities(n, val), val), target_key="label", recon_weight=1.0)
    p, s = timed(probabilities, tuned, test)
    r["latent_finetuned"] = classifier_entry(p, test, rec, s, params=n_params(tuned), init="latent_frozen",
                                             test_time_orientations=NUM_CUBE_ORIENTATIONS, uncertainty=uncertainty(tuned, test))
    networks["latent_finetuned"] = tuned
    return finish(r, networks, test)


def run_images(args, r: dict, vae: MedVAE, loss, image_loader, val: list[dict], test: list[dict]) -> None:
    """The full-resolution baseline and the segmenters, as ``args.parts`` asks."""
    cap = args.max_minutes * 60
    if "baseline" in args.parts:
        base = getattr(monai.networks.nets, args.baseline)(spatial_dims=3, n_input_channels=1, num_classes=2)
        rec = fit(SupervisedTrainer, args.image_epochs, cap, image_loader, base, torch.optim.AdamW(base.parameters(), 1e-3),
                  loss, lambda n: auroc(probabilities(n, val), val), prepare_batch=ImageTarget(target_key="label"), decollate=False)
        p, s = timed(probabilities, base, test)
        r["baseline"] = classifier_entry(p, test, rec, s, params=n_params(base), test_time_orientations=1,
                                         architecture=f"MONAI {args.baseline}, 3D (7^3 stride-2 stem, max-pool) on the 32^3 cube")
    if "seg" not in args.parts:
        return
    # segmentation of the nodule: a head on the frozen latent alone vs a full-resolution UNet
    dice = lambda n: evaluate(n, SEG, val, SEG["labels"])["dice"]  # noqa: E731
    seg = LatentImageSegmenter(copy.deepcopy(vae), LatentSegmenter(3, 4, 2, 4, (32, 16), skip_channels=None), True)
    rec = fit(HeadTrainer, args.seg_epochs, cap, image_loader, seg, torch.optim.AdamW(seg.head.parameters(), 1e-3),
              SegmentationLoss(), dice, SEG, target_key="mask")
    r["seg_latent"] = {**evaluate(seg, SEG, test, SEG["labels"]), **rec, "params": n_params(seg.head),
                       "what": "LatentSegmenter on the frozen posterior mean only (no encoder skips)"}
    unet = UNet(3, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1)
    rec = fit(SupervisedTrainer, args.seg_epochs, cap, image_loader, unet, torch.optim.AdamW(unet.parameters(), 1e-3),
              SegmentationLoss(), dice, SEG, prepare_batch=ImageTarget(target_key="mask"), decollate=False)
    r["seg_unet"] = {**evaluate(unet, SEG, test, SEG["labels"]), **rec, "params": n_params(unet),
                     "what": "MONAI UNet (16, 32, 64, 128), strides 2, 1 residual unit, on the 32^3 cube"}


def finish(r: dict, networks: dict, test: list[dict]) -> tuple[dict, dict, list[dict]]:
    select(r)
    return r, networks, test


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset_dir", default=os.environ.get("MEDVAE_DATA", str(REPO.parent / "shared" / "data")) + "/LIDC-IDRI-NoduleVOIs")
    p.add_argument("--vae", help="the 3D nodule VAE's state dict (trained without labels)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}, for parallel processes")
    p.add_argument("--merge", nargs="+", default=None, help="the parts' JSON records: write the merged record (and with "
                   "--save_model/--figure the model with the best validation AUROC and its picture)")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/nodules.json"))
    p.add_argument("--head_epochs", type=int, default=40, help="epochs per frozen head (cached latents)")
    p.add_argument("--seeds", type=int, default=3, help="frozen heads in the ensemble, one seed each")
    p.add_argument("--train_orientations", type=int, default=1, choices=[1, NUM_CUBE_ORIENTATIONS],
                   help="cube orientations the frozen heads train on (1: as given; chosen by validation AUROC, see bundle/docs)")
    p.add_argument("--head_lr", type=float, default=1e-3, help="peak learning rate of the frozen heads' one-cycle schedule")
    p.add_argument("--image_epochs", type=int, default=2, help="epochs for the fine-tuned classifier and the baseline alike")
    p.add_argument("--seg_epochs", type=int, default=2, help="epochs per segmenter")
    p.add_argument("--max_minutes", type=float, default=15.0, help="cap on any one model's training time")
    p.add_argument("--baseline", default="resnet10", choices=["resnet10", "resnet18"], help="the MONAI 3D ResNet baseline")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--latent_batch_size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="first N nodules of each split only (a smoke run)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save_model", default=None, help="write the selected latent classifier (VAE + head) here")
    p.add_argument("--cache_dir", default=None, help="keep the preprocessed cubes here between runs")
    p.add_argument("--figure", default=None, help="write the docs picture (slices, reconstructions, probabilities) here")
    p.add_argument("--machine_note", default=f"{os.cpu_count()} CPU cores, no GPU")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.merge:
        res = merge(args.merge)
        r = res["result"]
        name = r["shipped"]["model"]
        model = build_classifier(name, r["budgets"]["seeds"])
        model.load_state_dict(torch.load(res["parts"][PART_OF[name]]["saved_model"][name], weights_only=True))
        source = medvae_monai.data.ImageSource(args.dataset_dir, spatial_dims=3, class_names=CLASS_NAMES)
        test = load_split(source, "test", args.cache_dir)
    else:
        args.parts = [x for x in args.parts.split(",") if x]
        if not args.vae or not set(args.parts) <= set(PARTS):
            p.error(f"--vae is required and --parts is a subset of {PARTS}")
        res = {"command": "python benchmarks/nodules.py " + shlex.join(sys.argv[1:] if argv is None else argv),
               "targets": TARGETS, "published": PUBLISHED,
               "machine": {"note": args.machine_note, "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                           "platform": platform.platform(), "torch": torch.__version__,
                           "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}}
        t0 = time.perf_counter()
        res["result"], networks, test = run(args)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        res["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
        model = networks.get(res["result"].get("shipped", {}).get("model"))
        if args.save_model and set(PARTS) <= set(args.parts):
            atomic_torch_save(model.state_dict(), args.save_model)
        elif args.save_model and networks:  # a part: every latent candidate, for --merge
            res["saved_model"] = {m: f"{args.save_model}.{m}.pt" for m in networks}
            for m, path in res["saved_model"].items():
                atomic_torch_save(networks[m].state_dict(), path)
    out = Path(args.out)
    atomic_write_json(out, res)
    atomic_write(out.with_suffix(".md"), lambda fh: fh.write(markdown(res)), mode="w")
    print(markdown(res))
    if args.merge and args.save_model:
        atomic_torch_save(model.state_dict(), args.save_model)
    if args.figure and model is not None:
        figure(model, test, args.figure)

if __name__ == "__main__":
    main()
