"""The record of ``benchmarks/nodules.py`` (lung-nodule malignancy on LIDC-IDRI VOIs): AUROC with a
bootstrap CI, the posterior-sampling uncertainty and how well it flags errors, the issue's targets,
the choice of the model that ships, the merge of parts run in parallel, the results table and the
docs figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_roc_auc

from medvae_monai.inferers import PosteriorSamplingInferer
from medvae_monai.networks import LatentImageClassifier
from medvae_monai.utils import atomic_write

CLASS_NAMES = ["benign", "malignant"]
PUBLISHED = {"nodulemnist3d_resnet18_28_auroc": 0.863}
TARGETS = {"holdout_auroc": 0.92, "auroc_gap": 0.02, "train_speedup": 20.0}
PARTS = ("frozen", "finetuned", "baseline", "seg")
CANDIDATES = ("latent_frozen", "latent_frozen_ensemble", "latent_finetuned")  # what may ship, by validation AUROC
PART_OF = {"latent_frozen": "frozen", "latent_frozen_ensemble": "frozen", "latent_finetuned": "finetuned"}


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


def select(r: dict) -> None:
    """The latent candidate with the best validation AUROC ships; the targets that the models run can be checked."""
    present = {m: r[m]["val_auroc"] for m in CANDIDATES if m in r}
    if present:
        r["shipped"] = {"model": max(present, key=present.get), "selected_by": "validation AUROC", "candidates": present}
    r["targets"] = check_targets(r)


def merge(paths: list[str]) -> dict:
    """One record from the parts' records (run in parallel processes on the same split): the latent
    candidate with the best validation AUROC is the one shipped."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    res = {**parts[0], "command": " && ".join(p["command"] for p in parts), "parts": {p["result"]["parts"][0]: {
        "command": p["command"], "wall_s": p["wall_s"], "load_average_at_start": p["machine"]["load_average_at_start"],
        "load_average_at_end": p["machine"]["load_average_at_end"], "saved_model": p.get("saved_model")} for p in parts}}
    r = {k: v for p in reversed(parts) for k, v in p["result"].items()}
    assert all(p["result"]["n_test"] == r["n_test"] and p["result"]["ruler"] == r["ruler"] for p in parts), "parts differ in split"
    r["parts"] = [x for x in PARTS if any(x in p["result"]["parts"] for p in parts)]
    select(r)
    res["result"], res["wall_s"] = r, max(p["wall_s"] for p in parts)
    res["machine"]["load_average_at_end"] = max((p["machine"]["load_average_at_end"] for p in parts), key=lambda v: v[0])
    return res


def check_targets(r: dict) -> dict:
    """The issue's targets, for the models that ran (a part run checks only its own)."""
    out, base, latent = {}, r.get("baseline"), [m for m in CANDIDATES if m in r]
    for m in latent:
        out[f"{m}_auroc_at_least_ruler"] = r[m]["auroc"] >= r["ruler"]["auroc"]
        out[f"{m}_test_auroc_at_least_{TARGETS['holdout_auroc']}"] = r[m]["auroc"] >= TARGETS["holdout_auroc"]
        if base:
            out[f"{m}_auroc_within_{TARGETS['auroc_gap']}_of_baseline"] = r[m]["auroc"] >= base["auroc"] - TARGETS["auroc_gap"]
    if base and "latent_frozen_ensemble" in r:
        out["frozen_train_speedup"] = round(r["latent_frozen_ensemble"]["train_img_per_s"] / base["train_img_per_s"], 1)
        out["frozen_train_speedup_at_least_20x"] = out["frozen_train_speedup"] >= TARGETS["train_speedup"]
    if base:
        out["baseline_auroc_at_least_ruler"] = base["auroc"] >= r["ruler"]["auroc"]
    return out



def markdown(res: dict) -> str:
    r = res["result"]
    b = r["budgets"]
    f = lambda v, d=3: "–" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = [
        "# Lung-nodule malignancy (LIDC-IDRI VOIs): 3D VAE latents vs. a full-resolution 3D ResNet vs. the ruler", "",
        f"Test split: {r['n_test']} nodules of {r['n_test_patients']} patients (train {r['n_train']}, val {r['n_val']}; "
        f"patient-grouped). Parts run: {', '.join(r['parts'])}. Budgets: {b['head_epochs']} epochs per frozen head ({b['seeds']} seeds), {b['image_epochs']} "
        f"epochs for the fine-tuned classifier and the baseline alike, {b['seg_epochs']} per segmenter, at most "
        f"{b['max_minutes_per_model']} min each. Wall time {res['wall_s'] / 60:.1f} min. Machine: {res['machine']['note']}, "
        f"load average {res['machine']['load_average_at_start']} at start, {res['machine']['load_average_at_end']} at end. "
        f"Command: `{res['command']}`.", "",
        "| model | AUROC [95% CI] | ACC | sens @ 90% spec | train img/s | params | epochs | val AUROC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in [m for m in ("ruler", "latent_frozen", "latent_frozen_ensemble", "latent_finetuned", "baseline") if m in r]:
        e = r[m]
        ci = e["auroc_ci95"]
        lines.append(f"| {m} | {f(e['auroc'])} [{f(ci[0])}, {f(ci[1])}] | {f(e['acc'])} | {f(e['sens_at_90_spec'])} | "
                     f"{f(e.get('train_img_per_s'), 1)} | {e.get('params', '–'):,} | {e.get('epochs', b['head_epochs'])} | "
                     f"{f(e.get('val_auroc'))} |"
                     if m != "ruler" else
                     f"| ruler (diameter_mm alone) | {f(e['auroc'])} [{f(ci[0])}, {f(ci[1])}] | {f(e['acc'])} | "
                     f"{f(e['sens_at_90_spec'])} | – | – | – | {f(e['val_auroc'])} |")
    lines.append(f"| published NoduleMNIST3D ResNet-18 (28), other split and crops | {PUBLISHED['nodulemnist3d_resnet18_28_auroc']} | | | | | | |")
    frozen = [m for m in ("latent_frozen", "latent_frozen_ensemble") if m in r]
    if frozen:
        lines += ["", "Latent classifiers average their logits over the 16 orientations of the cube (flips, in-plane 90° "
                  "turns); with the cube as given, test AUROC " + ", ".join(f"{m} {f(r[m]['auroc_one_orientation'])}" for m in frozen) + "."]
    if "baseline" in r:
        lines += ["", f"The baseline is scored on the cube as given. {r['baseline']['architecture']}."]
    if "seg_latent" in r:
        lines += ["", "| segmenter | Dice | HD95 (voxels = mm) | train img/s | params |", "|---|---|---|---|---|"]
        for m in ("seg_latent", "seg_unet"):
            e = r[m]
            lines.append(f"| {m}: {e['what']} | {f(e['dice'])} | {f(e['hd95'], 1)} | {f(e['train_img_per_s'], 1)} | {e['params']:,} |")
    for m in [m for m in ("latent_frozen_ensemble", "latent_finetuned") if r.get(m, {}).get("uncertainty")]:
        u = r[m]["uncertainty"]
        lines += ["", f"Posterior-sampling uncertainty ({m}, {u['num_samples']} samples): mean std {f(u['mean_std'])}; "
                  f"std of correct {f(u['std_correct'])} vs wrong {f(u['std_wrong'])}; AUROC of std for flagging errors "
                  f"{f(u['error_auroc_of_std'])}; accuracy on the 80% most certain {f(u['acc_most_certain_80pct'])} vs all "
                  f"{f(u['acc_all'])}."]
    lines += ["", "Targets: " + ", ".join(f"{k}={v}" for k, v in r["targets"].items()) + "."]
    if "shipped" in r:
        lines.append(f"Shipped: {r['shipped']['model']} (by validation AUROC: {r['shipped']['candidates']}).")
    lines.append("")
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
