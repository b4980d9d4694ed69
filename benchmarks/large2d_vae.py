"""Is a VAE trained on 64 x 64 MedNIST the right tool for large 2D images? Fine-tune it on
native-resolution tiles and measure both, on held-out real and synthetic large images.

Starting point: ``--init`` (a MedNIST checkpoint of the architecture in ``--arch``, a bundle
overlay such as ``runs/vae28_arch.yaml``). Training data, 128 x 128 crops at native resolution,
half from each source:

- BUSI ultrasound, the project's deterministic ``train`` split (256 x 256, real);
- synthetic full-field mammograms (:mod:`medvae_monai.data.mammograms`, seeds 100+, 2048 x 1280,
  0.5-99.5 percentile window), since no open mammography set can be had offline.

Loss: the project's ``ELBOLoss`` (L1 + 1e-4 KL), AdamW 2e-4, batch 8, for ``--minutes`` of wall
time on one thread. Evaluated before and after, PSNR in [0, 1]: BUSI ``test`` split at native
256 x 256 (real, never seen), and a 1536 x 1024 film of seed 0 (unseen seed of the same synthetic
model: in-distribution, so read it as an upper bound), tiled as the bundle does; with JPEG 2000
(OpenJPEG) at the latent's float16 byte size as the codec a user would pick instead.

    python benchmarks/large2d_vae.py --init runs/vae28/checkpoints/best.pt --arch runs/vae28_arch.yaml \
        --minutes 20 --save runs/large2d_vae.pt --out benchmarks/results/large2d_vae.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medvae_monai.data import ImageSource  # noqa: E402
from medvae_monai.data.mammograms import mammogram_phantom  # noqa: E402
from medvae_monai.losses import ELBOLoss  # noqa: E402
from medvae_monai.networks import MedVAE  # noqa: E402
from medvae_monai.utils import atomic_write, atomic_write_json, load_weights  # noqa: E402

CROP, BATCH = 128, 8


def build(arch: str, init: str) -> MedVAE:
    spec = yaml.safe_load(Path(arch).read_text())["network_def"]
    kw = {k: v for k, v in spec.items() if not k.startswith("_") and not str(v).startswith("@")}
    return load_weights(MedVAE(spatial_dims=2, in_channels=1, **kw), init)


def window(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a, [0.5, 99.5])
    return np.clip((a.astype(np.float32) - lo) / (hi - lo), 0, 1).astype(np.float32)


def busi(split: str) -> list[np.ndarray]:
    from PIL import Image

    root = REPO.parent / "shared" / "data" / "BUSI"
    return [np.asarray(Image.open(it["image"]), dtype=np.float32) / 255 for it in ImageSource(root).items(split)]


def crops(images: list[np.ndarray], rng: np.random.Generator, n: int) -> np.ndarray:
    out = []
    for _ in range(n):
        a = images[rng.integers(len(images))]
        y, x = rng.integers(0, a.shape[0] - CROP + 1), rng.integers(0, a.shape[1] - CROP + 1)
        out.append(a[y : y + CROP, x : x + CROP])
    return np.stack(out)[:, None]


@torch.no_grad()
def evaluate(net: MedVAE, busi_test: list[np.ndarray], film: np.ndarray, film_stored: np.ndarray) -> dict:
    from openjpeg import decode, encode

    net.eval().enable_tiling(512, 64)
    psnr = lambda a, b: float(10 * np.log10(1 / np.mean((a - b) ** 2)))  # noqa: E731
    busi_psnr = []
    for a in busi_test:
        x = torch.from_numpy(a)[None, None]
        busi_psnr.append(psnr(a, net(x)[0][0, 0].clamp(0, 1).numpy()))
    x = torch.from_numpy(film)[None, None]
    t0 = time.perf_counter()
    mu = net.encode(x)[0]
    y = net.decode(mu, spatial_size=list(film.shape))[0, 0].clamp(0, 1).numpy()
    seconds = time.perf_counter() - t0
    code = encode(film_stored, bits_stored=14, compression_ratios=[film.size * 2 / (mu.numel() * 2)])
    j2k = window_like(decode(code).astype(np.float32), film_stored)
    return {"busi_test_psnr_db": float(np.mean(busi_psnr)), "busi_test_images": len(busi_test),
            "film_psnr_db": psnr(film, y), "film_seconds": seconds, "film_jpeg2000_same_bytes_psnr_db": psnr(film, j2k)}


def window_like(a: np.ndarray, reference: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(reference, [0.5, 99.5])
    return np.clip((a - lo) / (hi - lo), 0, 1).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", required=True)
    ap.add_argument("--arch", required=True)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--save", default="runs/large2d_vae.pt")
    ap.add_argument("--out", default="benchmarks/results/large2d_vae.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_start = list(os.getloadavg())
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    busi_train, busi_test = busi("train"), busi("test")[::4]
    films = [window(mammogram_phantom((2048, 1280), seed=100 + i)) for i in range(8)]
    film_stored = mammogram_phantom((1536, 1024), seed=0)
    film = window(film_stored)
    net = build(args.arch, args.init)
    before = evaluate(net, busi_test, film, film_stored)
    print("before", before, flush=True)
    net.train()
    loss_fn = ELBOLoss("l1", beta=1e-4)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=1e-4)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.minutes * 60:
        batch = np.concatenate([crops(busi_train, rng, BATCH // 2), crops(films, rng, BATCH // 2)])
        x = torch.from_numpy(batch)
        recon, mu, sigma = net(x)
        loss = loss_fn(recon, x, mu, sigma)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if steps % 50 == 0:
            print(f"step {steps} loss {float(loss):.4f} {time.perf_counter() - t0:.0f}s", flush=True)
    train_s = time.perf_counter() - t0
    after = evaluate(net, busi_test, film, film_stored)
    print("after", after, flush=True)
    half = {k: v.half() for k, v in net.state_dict().items()}  # float16 keeps the file under 5 MB
    Path(args.save).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.save, lambda fh: torch.save(half, fh))
    res = {
        "command": "python benchmarks/large2d_vae.py " + " ".join(sys.argv[1:]),
        "init": args.init, "arch": yaml.safe_load(Path(args.arch).read_text())["network_def"],
        "train": {"steps": steps, "seconds": train_s, "batch": BATCH, "crop": CROP,
                  "data": "BUSI train split + synthetic films seeds 100-107, half each"},
        "before": before, "after": after, "saved": args.save,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": 1,
                    "load_average_at_start": load_start, "load_average_at_end": list(os.getloadavg()),
                    "note": "2 CPU cores shared with other jobs"},
    }
    atomic_write_json(args.out, res)
    md = [f"# Large-image 2D VAE: MedNIST checkpoint before / after {train_s / 60:.0f} min ({steps} steps) on "
          "native-resolution tiles", "", f"Load average {load_start[0]:.1f} at start. PSNR in [0, 1].", "",
          "| | BUSI test, native 256 (real) | synthetic film 1536 x 1024 (unseen seed) | JPEG 2000, same bytes (film) |",
          "|---|---|---|---|"]
    for name, r in (("MedNIST VAE (init)", before), ("fine-tuned on tiles", after)):
        md.append(f"| {name} | {r['busi_test_psnr_db']:.2f} | {r['film_psnr_db']:.2f} | "
                  f"{r['film_jpeg2000_same_bytes_psnr_db']:.2f} |")
    atomic_write(Path(args.out).with_suffix(".md"), lambda fh: fh.write(("\n".join(md) + "\n").encode()))


if __name__ == "__main__":
    main()
