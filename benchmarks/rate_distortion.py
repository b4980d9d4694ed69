"""Rate–distortion benchmark: the entropy-coded latent store against standard codecs, same images.

Usage (from the repository root)::

    python benchmarks/rate_distortion.py [--codec_path bundle/models/codec.pt] [--mednist 300] \
        [--busi 60] [--hippocampus 8] [--lidc 8] [--parts mednist,busi,hippocampus,lidc]

It writes ``benchmarks/results/rate_distortion.{json,md}`` and ``rate_distortion.png``.

- **Rate** is bytes per image: for the product, every byte of the store folder (``store.json``,
  range-coded shards, manifests; :meth:`~medvae_monai.latents.LatentStore.nbytes`) divided by the
  number of images; for the peers, the encoded file (WebP / JPEG files as Pillow writes them;
  JPEG 2000 as a raw ``.j2k`` codestream, its smallest form).
- **Distortion**: PSNR and SSIM (``monai.metrics``, data range 1) on intensities in [0, 1], mean
  over images. Pictures: the 8-bit file / 255, every codec's output rounded to 8 bits. Volumes:
  the store's intensity map (Hippocampus: 0.5–99.5 percentiles of each volume; LIDC: CT window
  [-1000, 400] HU, i.e. level -300, width 1400) clipped to [0, 1].
- **Data** (test splits, evenly spaced): MedNIST test (64x64, 8-bit JPEG sources), BUSI test
  resized to 256x256 (area), MSD Task04 Hippocampus (MRI) and LIDC-IDRI nodule VOIs (CT).
- **Peers**, one setting for all images per rate point: WebP (``method=6``), JPEG (``optimize``),
  JPEG 2000 (OpenJPEG through Pillow, 9/7 irreversible, one rate layer); 3D: JPEG 2000 slice by
  slice at 16 bits, and the gzipped NIfTI source file as the lossless reference. JPEG XL through
  ``imagecodecs`` (libjxl; ``distance`` is the Butteraugli target, ``effort=7``, libjxl's default).
- **BD-rate** (Bjøntegaard, log-rate vs PSNR, Akima interpolation) from the ``bjontegaard``
  package (FAU-LMS); the integration interval is 26–34 dB for MedNIST (the issue's span), and the
  PSNR range both curves cover elsewhere. Negative: the product needs fewer bytes for the same PSNR.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import bjontegaard as bd
import imagecodecs
import nibabel as nib
import numpy as np
import torch
from monai.metrics import SSIMMetric
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medvae_monai.data import ImageSource  # noqa: E402
from medvae_monai.latents import encode_dataset, load_codec  # noqa: E402
from medvae_monai.utils import atomic_write, atomic_write_json  # noqa: E402

DATA = Path(os.environ.get("MEDVAE_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"
WEBP_Q = (0, 5, 15, 30, 45, 60, 75, 90)
JPEG_Q = (3, 8, 15, 30, 50, 70, 85)
J2K_RATIO = (20, 14, 10, 8, 6, 4.5, 3.5)  # compression ratios against the 8-bit raw pixels
JXL_DISTANCE = (25.0, 16.0, 11.0, 7.0, 4.5, 3.0, 2.0, 1.2)  # libjxl Butteraugli distances (smaller: better)
J2K16_RATIO = (14, 10, 8, 6, 4.5, 3.5, 2.5)  # against the 16-bit raw voxels (OpenJPEG floors near 180 B a slice)
LIDC_WINDOW = (-300.0, 1400.0)  # level, width
SPAN = (26.0, 34.0)
PRODUCT = "entropy store"
RDOQ_ITERATIONS = inspect.signature(encode_dataset).parameters["codec_rdoq_iterations"].default  # the shipped default


def psnr(x: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((x.astype(np.float64) - ref.astype(np.float64)) ** 2))
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def ssim(xs: list[np.ndarray], refs: list[np.ndarray]) -> float:
    """Mean MONAI SSIM (data range 1) over pictures, or over the slices of volumes; one batched call per shape."""
    def slices(v: np.ndarray) -> np.ndarray:
        return np.moveaxis(v, -1, 0) if v.ndim == 3 else v[None]

    a = [slices(x) for x in xs]
    b = [slices(r) for r in refs]
    total, count = 0.0, 0
    for shape in {s.shape[1:] for s in a}:
        ta = torch.as_tensor(np.concatenate([s for s in a if s.shape[1:] == shape]), dtype=torch.float32)[:, None]
        tb = torch.as_tensor(np.concatenate([s for s in b if s.shape[1:] == shape]), dtype=torch.float32)[:, None]
        win = min(11, min(shape) // 2 * 2 - 1)
        vals = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=win)(ta, tb)
        total, count = total + float(vals.sum()), count + len(vals)
    return total / count


def point(name: str, setting, nbytes: list[int] | float, recons: list[np.ndarray], refs: list[np.ndarray]) -> dict:
    rate = float(np.mean(nbytes)) if isinstance(nbytes, list) else float(nbytes)
    return {
        "codec": name, "setting": setting, "bytes_per_image": round(rate, 1),
        "psnr": round(float(np.mean([psnr(a, b) for a, b in zip(recons, refs)])), 3),
        "ssim": round(ssim(recons, refs), 4),
    }


def pillow_round_trip(pic: Image.Image, fmt: str, **kw) -> tuple[int, np.ndarray]:
    buf = io.BytesIO()
    pic.save(buf, format=fmt, **kw)
    out = Image.open(io.BytesIO(buf.getvalue()))
    out = out.convert("L") if pic.mode == "L" else out  # Pillow's WebP decodes to RGB
    return len(buf.getvalue()), np.asarray(out)


def jxl_round_trip(pic: np.ndarray, distance: float) -> tuple[int, np.ndarray]:
    data = imagecodecs.jpegxl_encode(pic, distance=distance, effort=7)
    return len(data), imagecodecs.jpegxl_decode(data)


def peers_2d(pics: list[np.ndarray]) -> list[dict]:
    """WebP, JPEG, JPEG 2000 and JPEG XL curves for 8-bit pictures."""
    refs = [p / 255.0 for p in pics]
    settings = [("WebP", q, "WEBP", {"quality": q, "method": 6}) for q in WEBP_Q]
    settings += [("JPEG", q, "JPEG", {"quality": q, "optimize": True}) for q in JPEG_Q]
    settings += [
        ("JPEG 2000", r, "JPEG2000", {"quality_mode": "rates", "quality_layers": [r], "irreversible": True, "no_jp2": True})
        for r in J2K_RATIO
    ]
    out = []
    for name, setting, fmt, kw in settings:
        res = [pillow_round_trip(Image.fromarray(p), fmt, **kw) for p in pics]
        out.append(point(name, setting, [n for n, _ in res], [r / 255.0 for _, r in res], refs))
    for distance in JXL_DISTANCE:
        res = [jxl_round_trip(p, distance) for p in pics]
        out.append(point("JPEG XL", distance, [n for n, _ in res], [r / 255.0 for _, r in res], refs))
    return out


def product(dataset_dir, codec_path: Path, work: Path, split: str, n: int | None, spatial_dims: int, **kw):
    """For each rate point: (store bytes per image, decoded images in [0, 1], references in [0, 1])."""
    codec = load_codec(codec_path)
    results = []
    for level in range(codec.num_levels):
        t0 = time.perf_counter()
        store = encode_dataset(
            None, dataset_dir, work / f"store{level}", split=split, max_items=n, spatial_dims=spatial_dims,
            codec="entropy", codec_path=codec_path, codec_level=level, **kw,
        )
        seconds = time.perf_counter() - t0
        recons = []
        for i, rec in enumerate(store.records):
            x = store.decode(i, codec)[0].numpy()
            p = rec["intensity"]
            unit = (x - p["a_min"]) / max(p["a_max"] - p["a_min"], 1e-12) * (p["b_max"] - p["b_min"]) + p["b_min"]
            recons.append(np.rint(unit * 255) / 255 if spatial_dims == 2 else unit)
        results.append((level, store.nbytes() / len(store), recons, store, seconds))
    return results


def bd_rate(anchor: list[dict], test: list[dict], span: tuple[float, float] | None) -> dict:
    """BD-rate (%) of ``test`` against ``anchor`` over ``span`` dB (default: their common PSNR range)."""
    def curve(pts):
        pts = sorted(pts, key=lambda p: p["psnr"])
        return np.array([p["bytes_per_image"] for p in pts]), np.array([p["psnr"] for p in pts])

    ra, da = curve(anchor)
    rt, dt = curve(test)
    lo, hi = max(da.min(), dt.min()), min(da.max(), dt.max())
    note = None
    if span is not None:
        if lo > span[0] or hi < span[1]:  # report the common range instead, and say so
            note = f"the curves do not both cover {span[0]:g}-{span[1]:g} dB; taken over their common range"
        else:
            lo, hi = span
    if hi <= lo:
        return {"bd_rate_percent": None, "interval_db": [round(lo, 2), round(hi, 2)], "note": "no common PSNR range"}
    _, fa, ft = bd.bd_rate(ra, da, rt, dt, method="akima", require_matching_points=False, interpolators=True, min_overlap=0)
    delta = (ft.integrate(lo, hi) - fa.integrate(lo, hi)) / (hi - lo)
    out = {"bd_rate_percent": round(float((10**delta - 1) * 100), 2), "interval_db": [round(float(lo), 2), round(float(hi), 2)]}
    return out if note is None else {**out, "note": note}


def zarr_comparison(store, work: Path) -> dict:
    """Bytes of the coded store against the same integer latents in a Zarr v3 array (int16, Zarr's
    default Zstandard), plus the same manifests (Zarr would need the records too)."""
    try:
        import zarr
    except ImportError:
        return {"skipped": "zarr is not installed"}
    ys = np.stack([store.quantised(i) for i in range(len(store))]).astype(np.int16)
    path = work / "latents.zarr"
    arr = zarr.create_array(store=str(path), shape=ys.shape, chunks=ys.shape, dtype="int16", zarr_format=3)
    arr[:] = ys
    zarr_bytes = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    manifests = sum(p.stat().st_size for p in (store.path / "shards").glob("*.json.gz"))
    coded = sum(p.stat().st_size for p in (store.path / "shards").glob("*.bin"))
    n = len(store)
    return {
        "zarr_version": zarr.__version__, "codec_level": store.meta["codec_level"], "images": n,
        "zarr_int16_zstd_plus_manifests_bytes_per_image": round((zarr_bytes + manifests) / n, 1),
        "range_coded_store_bytes_per_image": round(store.nbytes() / n, 1),
        "of_which_range_coded_latents": round(coded / n, 1), "of_which_manifests": round(manifests / n, 1),
    }


def pictures_2d(name: str, folder: Path, split: str, n: int | None, codec_path: Path, work: Path, span) -> dict:
    """One 2D dataset: product and peers on the same 8-bit pictures."""
    items = ImageSource(folder, max_items=n).items(split)
    pics = [np.asarray(Image.open(it["image"]).convert("L")) for it in items]
    originals = float(np.mean([Path(it["image"]).stat().st_size for it in items]))
    points = peers_2d(pics)
    extra, default_level = {}, load_codec(codec_path).default_level
    # the product as shipped (RDOQ at encoding), and the same codec with rounding only (the ablation)
    for label, iterations in ((PRODUCT, RDOQ_ITERATIONS), (f"{PRODUCT}, rounding only", 0)):
        for level, rate, recons, store, seconds in product(
            folder, codec_path, work / f"{name}{iterations}", split, n, 2, codec_rdoq_iterations=iterations
        ):
            recons = [r.T for r in recons]  # MONAI's PIL reader is (x, y): back to the file's rows
            points.append(point(label, level, rate, recons, [p / 255.0 for p in pics]))
            points[-1]["encode_images_per_s"] = round(len(store) / seconds, 1)
            if level == default_level and name == "MedNIST" and iterations:
                extra["store_format"] = zarr_comparison(store, work)
    return {**finish(name, len(pics), originals, points, "WebP", span), **extra}


def finish(name: str, n: int, originals: float, points: list[dict], anchor: str, span) -> dict:
    curves: dict[str, list[dict]] = {}
    for p in points:
        if p["psnr"] is not None:  # the lossless reference has no curve
            curves.setdefault(p["codec"], []).append(p)
    bd_rates = {c: bd_rate(curves[anchor], pts, span) for c, pts in curves.items() if c != anchor}
    print(name, json.dumps(bd_rates), flush=True)
    return {"images": n, "source_file_bytes_per_image": round(originals, 1), "points": points,
            "anchor": anchor, "bd_rate_vs_anchor": bd_rates}


def busi_folder(work: Path, n: int) -> Path:
    """BUSI test pictures resized to 256x256 (area), written as PNG class folders."""
    items = ImageSource(DATA / "BUSI", max_items=n).items("test")
    root = work / "busi256"
    for it in items:
        pic = Image.open(it["image"]).convert("L").resize((256, 256), Image.Resampling.BOX)
        out = root / Path(it["image"]).parent.name / (Path(it["image"]).stem + ".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        pic.save(out)
    return root


def volumes_3d(name: str, datalist: Path, n: int, codec_path: Path, work: Path, **kw) -> dict:
    """One 3D dataset: the product (slice by slice) against JPEG 2000 16-bit slices and gzipped NIfTI."""
    runs = product(datalist, codec_path, work / name, "test", n, 3, **kw)
    store = runs[0][3]
    refs, originals = [], []
    for rec in store.records:
        src = Path(store.meta["source_root"]) / rec["source"]
        originals.append(src.stat().st_size)
        x = np.asarray(nib.load(src).dataobj, dtype=np.float64)
        p = rec["intensity"]
        refs.append(np.clip((x - p["a_min"]) / max(p["a_max"] - p["a_min"], 1e-12), 0, 1))
    points = [point(PRODUCT, lvl, rate, recons, refs) for lvl, rate, recons, _, _ in runs]
    for ratio in J2K16_RATIO:
        sizes, recons = [], []
        for ref in refs:
            q = np.rint(ref * 65535).astype(np.uint16)
            total, slices = 0, []
            for z in range(q.shape[-1]):
                kw16 = {"quality_mode": "rates", "quality_layers": [ratio], "irreversible": True, "no_jp2": True}
                nbytes, dec = pillow_round_trip(Image.fromarray(np.ascontiguousarray(q[..., z])), "JPEG2000", **kw16)
                total += nbytes
                slices.append(dec.astype(np.float64) / 65535)
            sizes.append(total)
            recons.append(np.stack(slices, -1))
        points.append(point("JPEG 2000 16-bit slices", ratio, sizes, recons, refs))
    points.append({"codec": "gzipped NIfTI (lossless)", "setting": "source file",
                   "bytes_per_image": round(float(np.mean(originals)), 1), "psnr": None, "ssim": 1.0})
    return finish(name, len(refs), float(np.mean(originals)), points, "JPEG 2000 16-bit slices", None)


def lidc_datalist(work: Path, n: int) -> Path:
    """An MSD-style datalist of the LIDC VOIs (their CSV lists them), so the store can read them."""
    import csv

    root = DATA / "LIDC-IDRI-NoduleVOIs"
    rows = list(csv.DictReader(open(root / "labels.csv")))
    entries = [{"image": str(root / r["image"])} for r in rows]
    path = work / "lidc.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"training": entries}))
    return path


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = list(results["datasets"])
    fig, axes = plt.subplots(1, len(parts), figsize=(5 * len(parts), 4), squeeze=False)
    for ax, part in zip(axes[0], parts):
        curves: dict[str, list] = {}
        for p in results["datasets"][part]["points"]:
            if p["psnr"] is not None:
                curves.setdefault(p["codec"], []).append((p["bytes_per_image"], p["psnr"]))
        for name, pts in curves.items():
            pts.sort()
            ax.plot(*zip(*pts), marker="o", ms=3, lw=2.5 if name == PRODUCT else 1.2, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("bytes per image (every file)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(part)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def markdown(results: dict) -> str:
    lines = ["# Rate–distortion: entropy-coded latent store vs standard codecs", "",
             f"Generated by `benchmarks/rate_distortion.py` with `{results['codec']['path']}`; "
             f"{results['machine']['cpu_threads']} CPU thread(s), load average {results['machine']['load_average_at_start']}.",
             "", "![rate-distortion](rate_distortion.png)", ""]
    for part, r in results["datasets"].items():
        lines += [f"## {part} ({r['images']} test images; source files {r['source_file_bytes_per_image']:.0f} B/image)", "",
                  f"BD-rate against {r['anchor']} (negative = fewer bytes at equal PSNR):", ""]
        for c, v in r["bd_rate_vs_anchor"].items():
            val = "n/a" if v["bd_rate_percent"] is None else f"{v['bd_rate_percent']:+.1f}%"
            lines.append(f"- {c}: **{val}** over {v['interval_db'][0]}–{v['interval_db'][1]} dB {v.get('note', '')}")
        lines += ["", "| codec | setting | bytes/image | PSNR (dB) | SSIM |", "|---|---|---:|---:|---:|"]
        for p in r["points"]:
            q = "lossless" if p["psnr"] is None else f"{p['psnr']:.2f}"
            lines.append(f"| {p['codec']} | {p['setting']} | {p['bytes_per_image']:.0f} | {q} | {p['ssim']:.3f} |")
        lines.append("")
    lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--codec_path", default=str(REPO / "bundle" / "models" / "codec.pt"))
    a.add_argument("--mednist", type=int, default=300)
    a.add_argument("--busi", type=int, default=60)
    a.add_argument("--hippocampus", type=int, default=8)
    a.add_argument("--lidc", type=int, default=8)
    a.add_argument("--parts", default="mednist,busi,hippocampus,lidc")
    a.add_argument("--out", default=str(RESULTS))
    a.add_argument("--merge", default=None, help="comma-separated result JSONs of runs of other --parts: combine "
                   "their datasets into one result (JSON, Markdown, plot) without computing anything")
    args = a.parse_args()
    out = Path(args.out)
    if args.merge:
        runs = [json.loads(Path(f).read_text()) for f in args.merge.split(",")]
        results = {**runs[0], "datasets": {k: v for r in runs for k, v in r["datasets"].items()},
                   "minutes": round(sum(r["minutes"] for r in runs), 1)}
        results["machine"]["load_average_at_end"] = runs[-1]["machine"]["load_average_at_end"]
        return write(results, out)
    torch.set_num_threads(1)
    codec_path = Path(args.codec_path)
    results = {
        "codec": {"path": os.path.relpath(codec_path, REPO), "train": torch.load(codec_path, weights_only=True).get("train")},
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                    "load_average_at_start": [round(v, 2) for v in os.getloadavg()]},
        "datasets": {}, "notes": [],
    }
    t0 = time.time()
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "mednist" in parts:
            results["datasets"]["MedNIST"] = pictures_2d("MedNIST", DATA / "MedNIST", "test", args.mednist, codec_path, work, SPAN)
        if "busi" in parts:
            folder = busi_folder(work, args.busi)
            results["datasets"]["BUSI 256x256"] = pictures_2d("BUSI", folder, "all", None, codec_path, work, None)
        if "hippocampus" in parts:
            hippo = DATA / "Task04_Hippocampus" / "dataset.json"
            results["datasets"]["Hippocampus"] = volumes_3d("Hippocampus", hippo, args.hippocampus, codec_path, work)
        if "lidc" in parts:
            lidc = lidc_datalist(work, args.lidc)
            results["datasets"]["LIDC"] = volumes_3d(
                "LIDC", lidc, args.lidc, codec_path, work, intensity="ct", ct_window=list(LIDC_WINDOW)
            )
    results["notes"] = [
        f"Product: encode_dataset(..., codec='entropy', codec_level=k) into a fresh store per rate point, with the default "
        f"RDOQ ({RDOQ_ITERATIONS} iterations, EntropyCodec.rdoq); 'rounding only' is the same codec and store with "
        "codec_rdoq_iterations=0 (2D only), and encode_images_per_s shows what the search costs; its bytes "
        "are every file of the store folder: store.json (about 1.3 KB once per store, so 4-5 B/image at 300 images), "
        "the range-coded shard and the gzipped manifest (sources, labels, splits, 16-bit checks).",
        f"Codec checkpoint: {results['codec']['path']}, trained {results['codec']['train']} "
        "(see bundle/docs/README.md for the command and wall time).",
        f"JPEG XL: imagecodecs {imagecodecs.__version__} (libjxl), effort 7, one Butteraugli distance per rate point.",
        "BD-rate uses the bjontegaard package's Akima interpolation of log10(bytes) over PSNR; where the curves "
        "do not both cover the requested span it is taken over their common PSNR range (stated per row).",
    ]
    results["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    results["minutes"] = round((time.time() - t0) / 60, 1)
    write(results, out)


def write(results: dict, out: Path) -> None:
    atomic_write_json(out / "rate_distortion.json", results)
    plot(results, out / "rate_distortion.png")
    atomic_write(out / "rate_distortion.md", lambda fh: fh.write(markdown(results)), mode="w")
    print(f"done in {results['minutes']} min -> {out}")


if __name__ == "__main__":
    main()
