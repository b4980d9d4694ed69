"""Ablation of the MedNIST VAE changes behind the 28 dB checkpoint (issue 10, part 3).

Each variant trains from the same seed for the same number of optimiser steps (not wall time, so
that a loaded machine does not bias the comparison), batch 32, AdamW lr 1e-3 with a cosine decay
over the steps, L1 + 1e-4 * per-element KL with a 500-step warm-up, on MedNIST files
000000-002499 of each class, and is tested on files 002500-002999 (the test split). All variants
keep 16x element compression (64x64x1 -> 256 latent values):

- ``f4c1``: the previous default, factor 4, one latent channel (16x16x1), channels (32, 64);
- ``f8c4``: factor 8, four latent channels (8x8x4), channels (32, 64, 128);
- ``f8c4_ssim``: ``f8c4`` plus 0.2 x MONAI's SSIMLoss in the reconstruction term.

Every variant is also tested with an exponential moving average of its weights (decay 0.999,
``torch.optim.swa_utils.AveragedModel``), updated after each step of the same run, so the EMA
column costs no extra training.

    python benchmarks/vae_ablation.py --steps 800 --out benchmarks/results/vae_ablation.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from reconstruction import BATCH, load_mednist  # noqa: E402

from medvae_monai.losses import ELBOLoss  # noqa: E402
from medvae_monai.networks import MedVAE  # noqa: E402
from medvae_monai.utils import atomic_write, atomic_write_json  # noqa: E402

VARIANTS = {
    "f4c1": dict(arch=dict(latent_channels=1, channels=(32, 64), downsample_factor=4), ssim_weight=0.0),
    "f8c4": dict(arch=dict(latent_channels=4, channels=(32, 64, 128), downsample_factor=8), ssim_weight=0.0),
    "f8c4_ssim": dict(arch=dict(latent_channels=4, channels=(32, 64, 128), downsample_factor=8), ssim_weight=0.2),
}


def evaluate(net: torch.nn.Module, xte: torch.Tensor) -> tuple[float, float]:
    """Test PSNR and SSIM (MONAI metrics, intensities in [0, 1], data_range 1) from the posterior mean."""
    from monai.metrics import PSNRMetric, SSIMMetric

    psnr, ssim = PSNRMetric(max_val=1.0), SSIMMetric(spatial_dims=2, data_range=1.0)
    net.eval()
    with torch.no_grad():
        for i in range(0, len(xte), 250):
            x = xte[i : i + 250].float() / 255.0
            r = net.decode(net.encode(x)[0], spatial_size=list(x.shape[2:])).clamp(0, 1)
            psnr(r, x)
            ssim(r, x)
    return float(psnr.aggregate().item()), float(ssim.aggregate().item())


def run_variant(name: str, steps: int, data: tuple[torch.Tensor, torch.Tensor], seed: int) -> dict:
    spec = VARIANTS[name]
    torch.manual_seed(seed)
    xtr, xte = data
    net = MedVAE(2, 1, num_res_blocks=1, decoder_res_blocks=2, **spec["arch"])
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.999))
    loss_fn = ELBOLoss("l1", beta=1e-4, ssim_weight=spec["ssim_weight"])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    t0 = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + np.cos(np.pi * step / steps))
        loss_fn.beta = 1e-4 * min(1.0, step / 500)
        x = xtr[torch.randint(0, len(xtr), (BATCH,), generator=gen)].float() / 255.0
        recon, mu, sigma = net(x)
        loss = loss_fn(recon, x, mu, sigma)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update_parameters(net)
    train_s = time.perf_counter() - t0
    psnr, ssim = evaluate(net, xte)
    ema_psnr, ema_ssim = evaluate(ema.module, xte)
    return {
        "test_psnr": psnr,
        "test_ssim": ssim,
        "test_psnr_ema": ema_psnr,
        "test_ssim_ema": ema_ssim,
        "steps": steps,
        "train_seconds": train_s,
        "train_img_per_s": steps * BATCH / train_s,
        "params": sum(p.numel() for p in net.parameters()),
        "latent_shape": list(net.latent_shape((64, 64))),
        **{k: v for k, v in spec.items() if k != "arch"},
        "arch": {k: list(v) if isinstance(v, tuple) else v for k, v in spec["arch"].items()},
    }


def markdown(result: dict) -> str:
    rows = [
        "| variant | latent | SSIM term | test PSNR (dB) | test SSIM | with EMA: PSNR / SSIM | train img/s | params |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in result["variants"].items():
        latent = "x".join(str(s) for s in m["latent_shape"][1:]) + f"x{m['latent_shape'][0]}"
        rows.append(
            f"| {name} | {latent} | {m['ssim_weight']} | {m['test_psnr']:.2f} | {m['test_ssim']:.3f} "
            f"| {m['test_psnr_ema']:.2f} / {m['test_ssim_ema']:.3f} "
            f"| {m['train_img_per_s']:.0f} | {m['params']:,} |"
        )
    return (
        f"MedNIST test split (files 002500-002999), {result['steps']} steps of batch {BATCH} per variant, "
        f"{result['threads']} thread(s); load average at start {result['loadavg_start']}, at end "
        f"{result['loadavg_end']}. {result['note']}\n\n" + "\n".join(rows) + "\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/vae_ablation.json"))
    ap.add_argument("--data", default=os.environ.get("MEDVAE_DATA", str(REPO.parent / "shared/data")) + "/MedNIST")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_mednist(Path(args.data))
    result = {
        "steps": args.steps,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "note": args.note,
        "variants": {},
    }
    for name in args.variants.split(","):
        m = run_variant(name, args.steps, data, args.seed)
        result["variants"][name] = m
        print(name, json.dumps(m), flush=True)
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    out = Path(args.out)
    atomic_write_json(out, result)
    atomic_write(out.with_suffix(".md"), lambda f: f.write(markdown(result)), mode="w")
    print(markdown(result))


if __name__ == "__main__":
    main()
