"""Train the entropy codec (:class:`~medvae_monai.latents.codec.EntropyCodec`) on a picture dataset.

Usage (from the repository root; the recorded run is in ``bundle/docs/README.md``)::

    python -m medvae_monai.latents.train_codec --dataset_dir ../shared/data/MedNIST \
        --output bundle/models/codec.pt --minutes 40

Only the ``train`` split of ``dataset_dir`` is used (the project's deterministic split). Each
step draws one rate point uniformly and minimises ``bits per pixel + lambda * 255^2 * MSE`` with
Adam (10x the learning rate for the densities and gains), on random square crops (one position per batch), randomly flipped and transposed. The checkpoint (weights, hyper-parameters and
the integer tables the coder uses) is rewritten atomically every ``--save_every`` steps, so the
newest one is always usable and an interrupted run loses little.
"""

from __future__ import annotations

import argparse
import logging
import math
import time

import numpy as np
import torch
from PIL import Image

from ..data import ImageSource
from .codec import EntropyCodec, load_codec, save_codec

logger = logging.getLogger("medvae_monai")

LAMBDAS = (0.0012, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08)


def load_pictures(dataset_dir: str, split: str = "train") -> torch.Tensor:
    """Grayscale pictures of ``split`` as a uint8 tensor ``(N, 1, H, W)`` (all of one size)."""
    items = ImageSource(dataset_dir).items(split)
    return torch.from_numpy(np.stack([np.asarray(Image.open(it["image"]).convert("L")) for it in items]))[:, None]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset_dir", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--minutes", type=float, default=40.0, help="wall-clock training budget")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--crop", type=int, default=48, help="random square crops of this size (a multiple of 8)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--latent_channels", type=int, default=32)
    p.add_argument("--save_every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, help="continue from this codec checkpoint's weights (a new schedule)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(a.seed)
    gen = np.random.default_rng(a.seed)
    images = load_pictures(a.dataset_dir)
    logger.info("codec training: %d train images %s", len(images), tuple(images.shape[1:]))
    codec = EntropyCodec(a.channels, a.latent_channels, LAMBDAS) if a.init is None else load_codec(a.init).train()
    done = 0 if a.init is None else int(torch.load(a.init, weights_only=True).get("train", {}).get("steps", 0))
    # the densities and gains get 10x the transforms' rate: with a short CPU budget they would
    # otherwise still be near their (wide) initial values when training stops
    fast = [p for n, p in codec.named_parameters() if n.startswith(("densities", "log_"))]
    slow = [p for n, p in codec.named_parameters() if not n.startswith(("densities", "log_"))]
    opt = torch.optim.Adam([{"params": slow, "scale": 1.0}, {"params": fast, "scale": 10.0}], lr=a.lr)
    budget, start, step = a.minutes * 60, time.monotonic(), 0
    stats = np.zeros((len(LAMBDAS), 3))
    while (elapsed := time.monotonic() - start) < budget:
        for g in opt.param_groups:  # cosine decay over the time budget
            g["lr"] = g["scale"] * a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget))))
        level = int(gen.integers(len(LAMBDAS)))
        i, j = (int(v) for v in gen.integers(images.shape[-1] - a.crop + 1, size=2))
        x = images[gen.integers(len(images), size=a.batch_size), :, i : i + a.crop, j : j + a.crop].float() / 255
        if gen.random() < 0.5:
            x = x.transpose(2, 3)
        if gen.random() < 0.5:
            x = x.flip(3)
        x_hat, bits = codec(x, level)
        mse = torch.mean((x_hat - x) ** 2)
        bpp = bits.mean() / x[0].numel()
        loss = bpp + LAMBDAS[level] * 255**2 * mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
        opt.step()
        step += 1
        stats[level] += (1, bpp.item(), -10 * math.log10(max(mse.item(), 1e-10)))
        if step % a.save_every == 0:
            save_codec(codec, a.output, {"train": {"steps": done + step, "lambdas": list(LAMBDAS)}})
            n = np.maximum(stats[:, :1], 1)
            logger.info("step %d %.0fs bpp/psnr per level: %s", step, elapsed,
                        " ".join(f"{b:.3f}/{q:.1f}" for b, q in (stats[:, 1:] / n)))
            stats[:] = 0
    save_codec(codec, a.output, {"train": {"steps": done + step, "lambdas": list(LAMBDAS)}})
    logger.info("done: %d steps in %.0f s -> %s", step, time.monotonic() - start, a.output)


if __name__ == "__main__":
    main()
