"""Training of diagnostic heads on VAE latents, frozen or fine-tuned.

Two modes share one trainer, :class:`HeadTrainer`:

- frozen: the VAE is fixed and only the head learns. Batches may carry the posterior moments
  cached in memory (``mu``/``sigma`` keys, see :func:`~medvae_monai.latents.cache_latents`), so the encoder runs once
  per image, not once per epoch.
- fine-tuned: the encoder learns with the head, optionally keeping an ELBO reconstruction term
  so that the latent stays a faithful code of the image.
"""

from __future__ import annotations


import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import nn

from ..errors import InputError
from ..losses import ELBOLoss
from ..networks.heads import LatentImageClassifier, LatentImageSegmenter
from .iteration import autocast, backward_step, complete_iteration
from .prepare import ImageTarget

__all__ = ["HeadTrainer"]


class HeadTrainer(SupervisedTrainer):
    """Trains a :class:`~medvae_monai.networks.LatentImageClassifier` or
    :class:`~medvae_monai.networks.LatentImageSegmenter`, frozen or fine-tuned.

    The mode is the network's ``freeze_encoder``. A frozen VAE stays in eval mode. A classifier
    reads a posterior sample ``z ~ q(z | x)`` in training (``sample_latent``), which acts as
    augmentation and teaches the head the posterior's spread that
    :class:`~medvae_monai.inferers.PosteriorSamplingInferer` measures. Batches with ``mu``/``sigma`` (cached latents, frozen
    classifiers only) skip the encoder.

    Each iteration's output holds ``pred`` (logits), ``label`` (the target) and the floats
    ``loss``, ``task_loss`` and, with a reconstruction term, ``recon_loss``; handlers see it
    decollated (one dict per image), as in MONAI's ``SupervisedTrainer``.

    Args:
        device: training device.
        max_epochs: epochs to run.
        train_data_loader: yields dicts with ``image`` (or ``mu``/``sigma``) and the target.
        network: the image-to-prediction network.
        optimizer: optimiser over the trainable parameters (``network.head`` when frozen).
        loss_function: :class:`~medvae_monai.losses.ClassificationLoss` or :class:`~medvae_monai.losses.SegmentationLoss`.
        target_key: the target's key: ``label``, ``labels`` (multi-label) or ``mask``.
        recon_weight: weight of the VAE's negative ELBO (fine-tuning only; 0 disables it).
        elbo: the ELBO for ``recon_weight``; defaults to L1 with ``beta=1e-4``.
        sample_latent: train classifiers on posterior samples rather than the mean.
        kwargs: passed to :class:`monai.engines.SupervisedTrainer`.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader,
        network: LatentImageClassifier | LatentImageSegmenter,
        optimizer: torch.optim.Optimizer,
        loss_function: nn.Module,
        target_key: str = "label",
        recon_weight: float = 0.0,
        elbo: ELBOLoss | None = None,
        sample_latent: bool = True,
        **kwargs,
    ) -> None:
        if recon_weight > 0 and network.freeze_encoder:
            raise InputError("recon_weight > 0 needs a fine-tuned encoder (freeze_encoder=False); a frozen VAE does not change.")
        kwargs.setdefault("prepare_batch", ImageTarget(target_key=target_key))
        super().__init__(device, max_epochs, train_data_loader, network, optimizer, loss_function, **kwargs)
        self.target_key = target_key
        self.recon_weight = float(recon_weight)
        self.elbo = elbo if elbo is not None else ELBOLoss("l1", beta=1e-4)
        self.sample_latent = sample_latent

    def _iteration(self, engine: HeadTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        net = engine.network
        net.train()
        if net.freeze_encoder:
            net.vae.eval()
        dev = engine.state.device
        if "mu" in batchdata:  # cached posterior of a frozen encoder
            if not (net.freeze_encoder and isinstance(net, LatentImageClassifier)):
                raise InputError("cached latents (mu/sigma) only train a frozen classifier; pass images to fine-tune.")
            x, y = None, batchdata[engine.target_key].to(dev)
            mu, sigma = batchdata["mu"].to(dev), batchdata["sigma"].to(dev)
        else:
            x, y = engine.prepare_batch(batchdata, dev, engine.non_blocking, **engine.to_kwargs)
            x = x.as_tensor() if hasattr(x, "as_tensor") else x
            y = y.as_tensor() if hasattr(y, "as_tensor") else y
        engine.state.output = {Keys.LABEL: y}
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast(engine):
            if isinstance(net, LatentImageSegmenter):
                logits, mu, sigma = net.segment(x)
            else:
                if x is not None:
                    mu, sigma = net.encode(x)
                logits = net.head(net.vae.sample(mu, sigma) if engine.sample_latent else mu)
            engine.state.output[Keys.PRED] = logits
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            task_loss = engine.loss_function(logits, y)
            loss = task_loss
            if engine.recon_weight > 0:
                recon = net.vae.decode(net.vae.sample(mu, sigma), spatial_size=list(x.shape[2:]))
                elbo = engine.elbo(recon, x, mu, sigma)
                loss = loss + engine.recon_weight * elbo["loss"]
            engine.state.output[Keys.LOSS] = loss
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        backward_step(engine, loss, engine.optimizer)
        out: dict = {Keys.PRED: logits.detach(), Keys.LABEL: y, "task_loss": task_loss.item(), "loss": loss.item()}
        if engine.recon_weight > 0:
            out["recon_loss"] = elbo["recon_loss"].item()
        return complete_iteration(engine, out)
