"""Which rate point `encoding --codec entropy` uses by default: each level's PSNR on many MedNIST
images, its standard error, and WebP at the same bytes, on the same images.

Usage (from the repository root)::

    python benchmarks/default_level.py --split val --n 1000 --levels 2,3   # chooses (validation)
    python benchmarks/default_level.py --split test --n 1000 --levels 2,3  # reports (test)

It writes ``benchmarks/results/default_level_<split>.{json,md}``.

- **Product**: ``encode_dataset(..., codec="entropy", codec_level=k)`` with the encoder's defaults
  (RDOQ), into a fresh store; bytes per image are every byte of the store
  (:meth:`~medvae_monai.latents.LatentStore.nbytes`) over the number of images; each image is
  decoded from the store, mapped back to 8 bits as ``benchmarks/rate_distortion.py`` does.
- **PSNR**: per image on [0, 1] (the 8-bit file / 255), then the mean and its standard error
  (sample std / sqrt(n)), the convention of the bundle's evaluators.
- **WebP at the same bytes**: Pillow WebP (``method=6``), one quality for all images per point,
  qualities 0, 3, ..., 57; mean PSNR linearly interpolated at the product's bytes per image.
- **Rule** (applied to the validation split, then written into the codec checkpoint): the lowest
  level whose mean PSNR is at least 30 dB by three standard errors and at least WebP's at the same
  bytes.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medvae_monai.data import ImageSource  # noqa: E402
from medvae_monai.latents import encode_dataset, load_codec  # noqa: E402
from medvae_monai.utils import atomic_write, atomic_write_json  # noqa: E402

DATA = Path(os.environ.get("MEDVAE_DATA", REPO.parent / "shared" / "data"))
TARGET_DB, MARGIN_SE = 30.0, 3.0
WEBP_QUALITIES = range(0, 60, 3)


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR (dB) of two images in [0, 1], data range 1."""
    return float(10 * np.log10(1 / np.mean((reference.astype(np.float64) - decoded) ** 2)))


def webp_curve(pics: list[np.ndarray]) -> np.ndarray:
    """``(quality, mean bytes, mean PSNR)`` rows for the WebP qualities, bytes ascending."""
    rows = []
    for q in WEBP_QUALITIES:
        sizes, scores = [], []
        for p in pics:
            buf = io.BytesIO()
            Image.fromarray(p).save(buf, "WEBP", quality=q, method=6)
            decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L")) / 255.0
            sizes.append(len(buf.getvalue()))
            scores.append(psnr(p / 255.0, decoded))
        rows.append((q, np.mean(sizes), np.mean(scores)))
    return np.array(sorted(rows, key=lambda r: r[1]))


def level_point(split: str, items: list[dict], pics: list[np.ndarray], codec_path: Path, level: int, work: Path) -> dict:
    """One rate point of the product on ``items``: bytes per image and per-image PSNR statistics."""
    codec = load_codec(codec_path)
    t0 = time.perf_counter()
    store = encode_dataset(None, DATA / "MedNIST", work / f"level{level}", split=split, max_items=len(items),
                           codec="entropy", codec_path=codec_path, codec_level=level)
    seconds = time.perf_counter() - t0
    assert [r["source"] for r in store.records] == [it["source"] for it in items], "the store holds other images"
    scores = []
    for i, rec in enumerate(store.records):
        x = store.decode(i, codec)[0].numpy().T  # MONAI's PIL reader is (x, y): back to the file's rows
        m = rec["intensity"]
        unit = (x - m["a_min"]) / max(m["a_max"] - m["a_min"], 1e-12) * (m["b_max"] - m["b_min"]) + m["b_min"]
        scores.append(psnr(pics[i] / 255.0, np.rint(unit * 255) / 255))
    s = np.array(scores)
    return {"level": level, "images": len(s), "bytes_per_image": round(store.nbytes() / len(s), 1),
            "psnr_mean": round(float(s.mean()), 3), "psnr_standard_error": round(float(s.std(ddof=1) / np.sqrt(len(s))), 3),
            "psnr_5th_percentile": round(float(np.percentile(s, 5)), 2), "encode_images_per_s": round(len(s) / seconds, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--n", type=int, default=1000, help="evenly spaced images of the split")
    p.add_argument("--levels", default="2,3")
    p.add_argument("--codec_path", default=str(REPO / "bundle/models/codec.pt"))
    p.add_argument("--out", default=None, help="default: benchmarks/results/default_level_<split>.json")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out or REPO / f"benchmarks/results/default_level_{a.split}.json")
    load_start = [round(v, 2) for v in os.getloadavg()]
    source = ImageSource(DATA / "MedNIST", max_items=a.n)
    items = source.items(a.split)
    pics = [np.asarray(Image.open(it["image"]).convert("L")) for it in items]
    webp = webp_curve(pics)
    points = []
    with tempfile.TemporaryDirectory() as work:
        for level in (int(v) for v in a.levels.split(",")):
            point = level_point(a.split, items, pics, Path(a.codec_path), level, Path(work))
            point["webp_psnr_at_same_bytes"] = round(float(np.interp(point["bytes_per_image"], webp[:, 1], webp[:, 2])), 3)
            point["meets_rule"] = bool(point["psnr_mean"] - MARGIN_SE * point["psnr_standard_error"] >= TARGET_DB
                                       and point["psnr_mean"] >= point["webp_psnr_at_same_bytes"])
            points.append(point)
    record = {
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]), "split": a.split, "images": len(items),
        "codec": a.codec_path, "codec_default_level": load_codec(a.codec_path).default_level,
        "rule": f"lowest level with mean PSNR >= {TARGET_DB} dB by {MARGIN_SE} standard errors and >= WebP at the same bytes",
        "chosen": next((pt["level"] for pt in points if pt["meets_rule"]), None), "points": points,
        "webp": [{"quality": int(q), "bytes_per_image": round(b, 1), "psnr": round(s, 3)} for q, b, s in webp],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": 1,
                    "load_average_at_start": load_start, "load_average_at_end": [round(v, 2) for v in os.getloadavg()]},
    }
    atomic_write_json(out, record)
    lines = [f"# Default rate point of `--codec entropy`: MedNIST {a.split}, {len(items)} images", "",
             f"Generated by `{record['command']}`; load average {load_start} at start. Rule: {record['rule']}.", "",
             "| level | bytes/image | PSNR mean (dB) | standard error | 5th percentile | WebP at the same bytes (dB) | meets rule |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {pt['level']} | {pt['bytes_per_image']} | {pt['psnr_mean']} | {pt['psnr_standard_error']} | "
              f"{pt['psnr_5th_percentile']} | {pt['webp_psnr_at_same_bytes']} | {'yes' if pt['meets_rule'] else 'no'} |"
              for pt in points]
    lines += ["", f"Chosen by the rule: level {record['chosen']}."]
    atomic_write(out.with_suffix(".md"), lambda f: f.write("\n".join(lines) + "\n"), mode="w")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
