"""Reconstruction benchmark on MedNIST: this project's VAE against MONAI's AutoencoderKL and
VarAutoEncoder at the same 16x compression and the same wall-clock training budget.

Data: MedNIST files 000000-002499 of each class train (15,000 images), 002500-002999 test (3,000).
Each model trains for ``--minutes`` with the same loss (L1 + 1e-4 * per-element KL, linear KL
warm-up), optimiser (AdamW, lr 1e-3, cosine over the budget) and batch size, in its own
subprocess so that its peak RSS is its own. Reported: test PSNR/SSIM (monai.metrics, [0, 1],
data_range 1), train and encode img/s, parameters, peak RSS, and achieved GFLOP/s (FLOPs of one
training step counted by torch's FlopCounterMode, times the measured step rate) against a
measured 2048^2 float32 matmul ceiling.

    python benchmarks/reconstruction.py --minutes 10 --out benchmarks/results/reconstruction.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medvae_monai.losses import ELBOLoss  # noqa: E402
from medvae_monai.utils import atomic_write, atomic_write_json  # noqa: E402

MODELS = ("medvae_monai", "monai_autoencoderkl", "monai_varautoencoder")
BATCH = 32


def load_mednist(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) uint8 tensors ``(N, 1, 64, 64)`` split by file number at 2500."""
    from PIL import Image

    train, test = [], []
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise SystemExit(f"{root}: no MedNIST class folders; pass --data DIR")
    for c in classes:
        for f in sorted(c.glob("*.jpeg")):
            n = int(f.stem)
            if n < 3000:
                (train if n < 2500 else test).append(np.asarray(Image.open(f).convert("L")))
    return torch.from_numpy(np.stack(train))[:, None], torch.from_numpy(np.stack(test))[:, None]


def build(name: str) -> torch.nn.Module:
    if name == "medvae_monai":
        from medvae_monai.networks import MedVAE

        return MedVAE(2, 1, 1, (32, 64), 4, num_res_blocks=1, decoder_res_blocks=2)
    if name == "monai_autoencoderkl":
        from monai.networks.nets import AutoencoderKL

        return AutoencoderKL(
            spatial_dims=2, in_channels=1, out_channels=1, channels=(32, 64, 64), latent_channels=1,
            num_res_blocks=1, attention_levels=(False, False, False),
            with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
        )
    from monai.networks.nets import VarAutoEncoder

    return VarAutoEncoder(spatial_dims=2, in_shape=(1, 64, 64), out_channels=1, latent_size=256,
                          channels=(16, 32, 64), strides=(2, 2, 2))


def step_outputs(name: str, net: torch.nn.Module, x: torch.Tensor):
    """``(recon, mu, sigma)`` for any of the three models (training mode samples z)."""
    if name == "medvae_monai":
        return net(x)
    if name == "monai_autoencoderkl":
        recon, mu, sigma = net(x)
        return recon, mu, sigma
    recon, mu, logvar, _ = net(x)
    return recon, mu, torch.exp(0.5 * logvar)


def encode_mean(name: str, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if name == "medvae_monai":
        return net.encode(x)[0]
    if name == "monai_autoencoderkl":
        return net.encode(x)[0]
    return net.encode_forward(x)[0]


def reconstruct(name: str, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if name == "medvae_monai":
        return net.decode(net.encode(x)[0], spatial_size=list(x.shape[2:]))
    if name == "monai_autoencoderkl":
        return net.decode(net.encode(x)[0])
    mu, _ = net.encode_forward(x)
    return net.decode_forward(mu, net.use_sigmoid)  # as in its forward (sigmoid output by default)


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def train_and_measure(name: str, minutes: float, data: tuple[torch.Tensor, torch.Tensor], seed: int) -> dict:
    from monai.metrics import PSNRMetric, SSIMMetric
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(seed)
    xtr, xte = data
    net = build(name)
    params = sum(p.numel() for p in net.parameters())
    loss_fn = ELBOLoss("l1", beta=1e-4)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)

    def batch() -> torch.Tensor:
        return xtr[torch.randint(0, len(xtr), (BATCH,), generator=gen)].float() / 255.0

    def train_step(x: torch.Tensor, step: int) -> float:
        loss_fn.beta = 1e-4 * min(1.0, step / 500)
        recon, mu, sigma = step_outputs(name, net, x)
        loss = loss_fn(recon, x, mu, sigma)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    net.train()
    with FlopCounterMode(display=False) as counter:
        train_step(batch(), 0)
    flops_per_image = counter.get_total_flops() / BATCH

    budget = minutes * 60.0
    steps, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < budget:
        for g in opt.param_groups:
            g["lr"] = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + np.cos(np.pi * elapsed / budget))
        train_step(batch(), steps)
        steps += 1
    train_s = time.perf_counter() - t0
    train_ips = steps * BATCH / train_s

    net.eval()
    psnr, ssim = PSNRMetric(max_val=1.0), SSIMMetric(spatial_dims=2, data_range=1.0)
    with torch.no_grad():
        for i in range(0, len(xte), 250):
            x = xte[i : i + 250].float() / 255.0
            r = reconstruct(name, net, x).clamp(0, 1)
            psnr(r, x)
            ssim(r, x)
        t = time.perf_counter()
        n_enc = 0
        for i in range(0, len(xte), 64):
            x = xte[i : i + 64].float() / 255.0
            encode_mean(name, net, x)
            n_enc += len(x)
        encode_ips = n_enc / (time.perf_counter() - t)
        latent = encode_mean(name, net, xte[:1].float() / 255.0)
    return {
        "psnr": float(psnr.aggregate().item()),
        "ssim": float(ssim.aggregate().item()),
        "train_img_per_s": train_ips,
        "encode_img_per_s": encode_ips,
        "compression": 64 * 64 / latent[0].numel(),
        "latent_shape": list(latent.shape[1:]),
        "params": params,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_steps": steps,
        "train_seconds": train_s,
        "train_gflop_per_image": flops_per_image / 1e9,
        "achieved_gflops": flops_per_image * train_ips / 1e9,
    }


def _child(name: str, minutes: float, data: tuple[torch.Tensor, torch.Tensor], seed: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    try:
        queue.put(("ok", train_and_measure(name, minutes, data, seed)))
    except Exception as e:  # report, do not hang the parent
        queue.put(("error", f"{type(e).__name__}: {e}"))


def markdown(result: dict) -> str:
    ceiling = result["matmul_gflops"]
    rows = [
        "| model | PSNR (dB) | SSIM | train img/s | encode img/s | compression | params | peak RSS (MB) | GFLOP/s (% of matmul) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in result["models"].items():
        rows.append(
            f"| {name} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['train_img_per_s']:.0f} | {m['encode_img_per_s']:.0f} | "
            f"{m['compression']:.0f}x | {m['params']:,} | {m['peak_rss_mb']:.0f} | "
            f"{m['achieved_gflops']:.1f} ({100 * m['achieved_gflops'] / ceiling:.0f}%) |"
        )
    return (
        f"MedNIST test split (files 002500-002999, 3,000 images), {result['minutes']} min of training each, "
        f"{result['threads']} threads; matmul ceiling {ceiling:.0f} GFLOP/s. {result['note']}\n\n" + "\n".join(rows) + "\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget per model")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/reconstruction.json"))
    ap.add_argument("--data", default=os.environ.get("MEDVAE_DATA", str(REPO.parent / "shared/data")) + "/MedNIST")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    ap.add_argument("--merge", action="store_true", help="update these models in an existing --out, keep the others")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    result = {
        "minutes": args.minutes,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "matmul_gflops": matmul_gflops(),
        "data": "MedNIST train 000000-002499 / test 002500-002999 per class",
        "note": args.note,
        "models": {},
    }
    out = Path(args.out)
    if args.merge and out.exists():
        previous = json.loads(out.read_text())
        result["models"] = previous["models"]
        result["note"] = f"{previous['note']} | rerun of {args.models}: {args.note}".strip(" |")
        result["matmul_gflops"] = previous["matmul_gflops"]  # keep the ceiling the table was measured against
    data = load_mednist(Path(args.data))  # loaded once; shared with each model's process
    ctx = mp.get_context("spawn")
    for name in args.models.split(","):
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(name, args.minutes, data, args.seed, args.threads, queue))
        proc.start()
        status, payload = queue.get()
        proc.join()
        if status != "ok":
            raise SystemExit(f"{name}: {payload}")
        result["models"][name] = payload
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in payload.items()}, flush=True)
    atomic_write_json(out, result)
    atomic_write(out.with_suffix(".md"), lambda f: f.write(markdown(result)), mode="w")
    print(markdown(result))


if __name__ == "__main__":
    main()
