"""Full-field mammograms through the default 2D bundle configs: peak memory, time and fidelity.

No labelled, openly licensed mammography set can be had offline, so the film is synthetic
(:mod:`medvae_monai.data.mammograms`: power-law breast texture, a mass, microcalcifications),
written as a scanner would send it: 16-bit (14 stored) MONOCHROME1, JPEG 2000 lossless,
ImagerPixelSpacing 0.07 mm, in a class folder. Each default config runs unchanged (no extra flag)
in its own subprocess, whose peak RSS is its VmHWM (``/proc/self/status``) at exit:

- ``inferring`` (inference.yaml): reconstruction + latent of every image;
- ``encoding`` (encode.yaml) then ``decoding`` (decode.yaml): the latent store round trip.

Fidelity of each output against the input, in the input's units and on its 0.5-99.5 percentile
window: Pearson r, PSNR over the window (data range = the window), PSNR inside the breast. In the
same process and on the same film, what a user would pick instead at the same size: the image
area-downsampled to as many values as the latent and upsampled bicubically, and lossy JPEG 2000
(OpenJPEG) at the byte size of the float16 latent. Real-image context: the default VAE on BUSI
ultrasound at its native 256 x 256 against the same bicubic baseline.

    python benchmarks/mammography.py --out benchmarks/results/mammography.json
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medvae_monai.data.mammograms import mammogram_phantom, write_mammogram_dicom  # noqa: E402
from medvae_monai.transforms import LoadImageCheckedd  # noqa: E402
from medvae_monai.utils import atomic_write, atomic_write_json  # noqa: E402

BITS = 14
LOAD = LoadImageCheckedd("image", image_only=True, ensure_channel_first=True, spatial_dims=2)


# Runs monai.bundle and, at exit, writes its own VmHWM (peak RSS of the process image after exec).
# Not ru_maxrss from wait4: Linux carries the parent's high-water mark across fork and exec, so a
# child of this (large) process would report at least the parent's RSS.
_PEAK_RSS_WRAPPER = (
    "import atexit, runpy, sys; out = sys.argv.pop(1); "
    "atexit.register(lambda: open(out, 'w').write(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')))); "
    "sys.argv = ['monai.bundle'] + sys.argv[1:]; runpy.run_module('monai.bundle', run_name='__main__', alter_sys=True)"
)


def run_config(run_id: str, config: str, *args: str) -> dict:
    """Run one bundle config in a subprocess; its wall time and its own peak RSS (MB, VmHWM)."""
    cmd = ["-m", "monai.bundle", "run", run_id, "--config_file", config, *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEDVAE_QUIET": "1", "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "vmhwm"
        proc = subprocess.run([sys.executable, "-c", _PEAK_RSS_WRAPPER, str(rss_file), *cmd[2:]], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode:
            raise SystemExit(f"python {' '.join(cmd)} failed:\n{proc.stdout[-3000:]}")
        peak_kb = int(rss_file.read_text().split()[1])
    return {"command": "python " + " ".join(cmd), "wall_s": time.perf_counter() - t0, "peak_rss_mb": peak_kb / 1024}


def fidelity(x: np.ndarray, y: np.ndarray, lo: float, hi: float, breast: np.ndarray) -> dict:
    """Pearson r and PSNR (window ``[lo, hi]`` as the data range) of ``y`` against ``x``."""
    xw, yw = (np.clip((a - lo) / (hi - lo), 0, 1) for a in (x, y))
    mse, mse_b = float(np.mean((xw - yw) ** 2)), float(np.mean((xw[breast] - yw[breast]) ** 2))
    return {
        "pearson_r": float(np.corrcoef(x.ravel(), y.ravel())[0, 1]),
        "psnr_db": 10 * np.log10(1 / max(mse, 1e-12)),
        "psnr_breast_db": 10 * np.log10(1 / max(mse_b, 1e-12)),
    }


def figure(x: np.ndarray, y: np.ndarray, lo: float, hi: float, path: Path, crop: int = 192) -> None:
    """Input, reconstruction and absolute error x10 (window ``[lo, hi]``): the whole film, shrunk 8x
    for display, above a full-resolution crop around the brightest speck (a microcalcification)."""
    from PIL import Image, ImageDraw

    def grey(a: np.ndarray) -> np.ndarray:
        return (np.clip((a - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8).T  # x-first -> rows, columns

    err = lo + np.abs(y - x) * 10
    panels = [grey(a) for a in (x, y, err)]
    cx, cy = np.unravel_index(int(np.argmax(x)), x.shape)
    sx, sy = (int(np.clip(c - crop // 2, 0, s - crop)) for c, s in zip((cx, cy), x.shape))
    small = [Image.fromarray(p).reduce(8) for p in panels]
    crops = [Image.fromarray(p[sy : sy + crop, sx : sx + crop]).resize((small[0].width,) * 2, Image.NEAREST)
             for p in panels]
    w, h = small[0].width, small[0].height
    canvas = Image.new("L", (3 * w + 20, h + crops[0].height + 50), 255)
    draw = ImageDraw.Draw(canvas)
    for i, (title, a, c) in enumerate(zip(("input", "reconstruction", "|error| x10"), small, crops)):
        canvas.paste(a, (i * (w + 10), 20))
        canvas.paste(c, (i * (w + 10), h + 45))
        draw.text((i * (w + 10) + 4, 4), title, fill=0)
        draw.text((i * (w + 10) + 4, h + 28), f"{crop} px crop, full resolution", fill=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def baselines(
    stored: np.ndarray, mirror: float, modality: np.ndarray, values_ratio: float, lo: float, hi: float, breast
) -> dict:
    """Bicubic and JPEG 2000 at the latent's size, in the same units as ``modality`` (x-first layout)."""
    from openjpeg import decode, encode

    out = {}
    t = torch.from_numpy(np.ascontiguousarray(modality, dtype=np.float32))[None, None]
    scale = 1 / np.sqrt(values_ratio)
    small = F.interpolate(t, scale_factor=scale, mode="area")
    up = F.interpolate(small, size=t.shape[2:], mode="bicubic")[0, 0].numpy()
    out["bicubic_same_values"] = fidelity(modality, up, lo, hi, breast) | {"stored_values": int(small.numel())}
    budget = modality.size * 2 / values_ratio  # bytes of the float16 latent
    t0 = time.perf_counter()
    code = encode(np.ascontiguousarray(stored), bits_stored=BITS, compression_ratios=[modality.size * 2 / budget])
    decoded = mirror - decode(code).astype(np.float32).T  # MONOCHROME1 stored (rows, cols) -> the reader's units
    out["jpeg2000_same_bytes"] = fidelity(modality, decoded, lo, hi, breast) | {
        "bytes": len(code), "encode_s": time.perf_counter() - t0}
    return out


def busi_context(ckpt: str, n: int) -> dict:
    """The default VAE on ``n`` evenly spaced BUSI images at native 256 x 256 against bicubic, PSNR in [0, 1]."""
    from PIL import Image

    from medvae_monai.config import load_bundle_network
    from medvae_monai.utils import load_weights

    files = sorted(f for f in glob.glob(str(REPO.parent / "shared/data/BUSI/*/*.png")) if "_mask" not in f)
    if not files:
        return {"skipped": "../shared/data/BUSI not found"}
    net = load_weights(load_bundle_network("bundle/configs/inference.yaml")[0], ckpt).eval()
    files = files[:: max(1, len(files) // n)][:n]
    psnr = {"vae": [], "bicubic_same_values": []}
    ratio = net.compression
    with torch.no_grad():
        for f in files:
            x = torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32) / 255)[None, None]
            y = net.decode(net.encode(x)[0], spatial_size=list(x.shape[2:])).clamp(0, 1)
            b = F.interpolate(F.interpolate(x, scale_factor=1 / np.sqrt(ratio), mode="area"), size=x.shape[2:],
                              mode="bicubic").clamp(0, 1)
            for k, r in (("vae", y), ("bicubic_same_values", b)):
                psnr[k].append(float(10 * torch.log10(1 / ((x - r) ** 2).mean())))
    return {"images": len(files), "size": [256, 256], **{k: float(np.mean(v)) for k, v in psnr.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=2, default=[4600, 2800], help="film rows, columns")
    ap.add_argument("--ckpt", default="bundle/models/model.pt", help="the VAE checkpoint (default: the bundle's)")
    ap.add_argument("--busi", type=int, default=40, help="BUSI images for the real-image context")
    ap.add_argument("--out", default="benchmarks/results/mammography.json")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--figure", default="docs/figures/mammogram_reconstruction.png", help="'' for none")
    args = ap.parse_args()
    load_start = list(os.getloadavg())
    os.chdir(REPO)  # the configs' macros resolve from the repository root
    work = Path(args.work or tempfile.mkdtemp(prefix="mammo-bench-"))
    film = mammogram_phantom(args.shape, seed=0, bits_stored=BITS)
    stored = (2**BITS - 1 - film).astype(np.uint16)  # MONOCHROME1: dense is dark in the stored values
    path = write_mammogram_dicom(work / "films" / "CC" / "film.dcm", stored, "MONOCHROME1", "jpeg2000", BITS)
    x = LOAD({"image": str(path)})["image"]
    modality, affine = x[0].numpy(), x.affine.numpy()
    lo, hi = (float(v) for v in np.percentile(modality, [0.5, 99.5]))
    breast = modality > lo + 0.1 * (hi - lo)

    common = ["--dataset_dir", str(work / "films"), "--ckpt_path", args.ckpt]
    runs = {
        "inferring": run_config("inferring", "bundle/configs/inference.yaml", *common, "--output_dir", str(work / "inf")),
        "encoding": run_config("encoding", "bundle/configs/encode.yaml", *common, "--output_dir", str(work / "store")),
        "decoding": run_config("decoding", "bundle/configs/decode.yaml", "--dataset_dir", str(work / "store"),
                               "--output_dir", str(work / "dec")),
    }
    outputs = {"inferring": work / "inf/reconstructions/CC/film_recon.nii.gz", "decoding": work / "dec/CC/film.nii.gz"}
    for name, out in outputs.items():
        img = nib.load(out)
        y = np.asarray(img.dataobj, dtype=np.float32).reshape(modality.shape)
        runs[name] |= {
            "output": out.name,
            "shape_equal": list(img.shape[:2]) == list(modality.shape),
            "affine_max_abs_diff_mm": float(np.abs(img.affine - affine).max()),
            "output_range": [float(y.min()), float(y.max())],
            "units_equal": abs(float(np.median(y[breast])) - float(np.median(modality[breast]))) < 0.1 * (hi - lo),
        }
        if not runs[name]["units_equal"]:  # written in the [0, 1] window: compare after mapping it back
            y = lo + y * (hi - lo)
        runs[name] |= fidelity(modality, y, lo, hi, breast)
        if name == "inferring" and args.figure:
            figure(modality, y, lo, hi, Path(args.figure))
    store = json.loads((work / "store" / "store.json").read_text())
    model = store["model"]
    latent_values = int(np.prod([model["hparams"]["latent_channels"]] + [-(-s // store["downsample_factor"]) for s in
                                                                          modality.shape]))
    ratio = modality.size / latent_values
    results = {
        "command": "python benchmarks/mammography.py " + " ".join(sys.argv[1:]),
        "film": {"shape_rows_cols": list(args.shape), "photometric": "MONOCHROME1", "transfer_syntax": "JPEG 2000 "
                 "lossless", "bits_stored": BITS, "imager_pixel_spacing_mm": [0.07, 0.07], "dicom_bytes": path.stat().st_size,
                 "window": [lo, hi]},
        "vae": {"ckpt": args.ckpt, "hparams": model["hparams"], "latent_values": latent_values,
                "values_ratio": ratio, "tile_size": store.get("tile_size"), "overlap": store.get("overlap")},
        "configs": runs,
        "baselines": baselines(stored, x.meta["monochrome1_mirror"], modality, ratio, lo, hi, breast),
        "busi_native_256": busi_context(args.ckpt, args.busi),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_at_start": load_start,
                    "load_average_at_end": list(os.getloadavg()), "note": "2 CPU cores shared with other jobs"},
    }
    out = Path(args.out)
    atomic_write_json(out, results)
    atomic_write(out.with_suffix(".md"), lambda fh: fh.write(markdown(results).encode()))
    print(markdown(results))


def markdown(r: dict) -> str:
    f, v = r["film"], r["vae"]
    lines = [
        f"# Full-field mammogram through the default configs ({f['shape_rows_cols'][0]} x {f['shape_rows_cols'][1]}, "
        f"{f['photometric']}, {f['transfer_syntax']})",
        "",
        f"VAE {v['ckpt']}: factor {v['hparams']['downsample_factor']}, {v['hparams']['latent_channels']} latent "
        f"channel(s), {v['values_ratio']:.0f}x fewer values than pixels; tiles of {v['tile_size']} px, overlap "
        f"{v['overlap']}. Machine: {r['machine']['note']}, load average {r['machine']['load_average_at_start'][0]:.1f} "
        f"at start, {r['machine']['load_average_at_end'][0]:.1f} at end, OMP_NUM_THREADS="
        f"{r['machine']['omp_num_threads']}.",
        "",
        "| run | peak RSS (MB) | wall (s) | shape kept | affine diff (mm) | units kept | Pearson r | PSNR (dB) | "
        "PSNR breast (dB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in r["configs"].items():
        q = [f"{c['pearson_r']:.4f}", f"{c['psnr_db']:.2f}", f"{c['psnr_breast_db']:.2f}"] if "pearson_r" in c else [""] * 3
        kept = [str(c.get("shape_equal", "")), f"{c['affine_max_abs_diff_mm']:.1e}" if "affine_max_abs_diff_mm" in c
                else "", str(c.get("units_equal", ""))]
        lines.append(f"| {name} | {c['peak_rss_mb']:.0f} | {c['wall_s']:.0f} | " + " | ".join(kept + q) + " |")
    for name, b in r["baselines"].items():
        lines.append(f"| baseline: {name} | | | | | | {b['pearson_r']:.4f} | {b['psnr_db']:.2f} | "
                     f"{b['psnr_breast_db']:.2f} |")
    busi = r["busi_native_256"]
    if "vae" in busi:
        lines += ["", f"Real images (BUSI ultrasound, {busi['images']} images at native 256 x 256, PSNR in [0, 1]): "
                  f"VAE {busi['vae']:.2f} dB, bicubic at the same number of values {busi['bicubic_same_values']:.2f} dB."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
