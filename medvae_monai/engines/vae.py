"""Ignite engines for VAE training and reconstruction evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, PrepareBatch
from monai.utils import CommonKeys as Keys
from torch.nn.parallel import DistributedDataParallel

from ..losses import AdversarialTerm, ELBOLoss

__all__ = ["VAETrainer", "ImageAsTarget", "LOSS_TERMS", "loss_terms"]

LOSS_TERMS = ("loss", "recon_loss", "kl", "beta")


class ImageAsTarget(PrepareBatch):
    """``prepare_batch`` for autoencoders: the target is the image itself."""

    def __init__(self, image_key: str = "image") -> None:
        self.image_key = image_key

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        x = batchdata[self.image_key].to(device=device, non_blocking=non_blocking, **kwargs)
        return x, x


def loss_terms(output: dict | list[dict]) -> dict[str, float]:
    """The scalar loss terms of a trainer's iteration output, for logging handlers.

    ``output`` is one dict per batch, or, decollated (the trainers' default, as in MONAI), one dict
    per image, each holding the same scalars.
    """
    first = output[0] if isinstance(output, list) else output
    return {k: float(first[k]) for k in LOSS_TERMS if k in first}


def complete_iteration(engine: SupervisedTrainer, output: dict) -> dict | list[dict]:
    """End a custom ``_iteration`` as MONAI's does: set the output and fire ``MODEL_COMPLETED``,
    where the engine decollates batch and output (``decollate=True``) and runs ``postprocessing``."""
    engine.state.output = output
    engine.fire_event(IterationEvents.MODEL_COMPLETED)
    return engine.state.output


class VAETrainer(SupervisedTrainer):
    """Trains a :class:`~medvae_monai.networks.MedVAE` on the negative ELBO, optionally with a
    patch-adversarial term.

    Each iteration's ``engine.state.output`` holds ``image``, ``pred`` (the reconstruction) and the
    floats ``loss``, ``recon_loss``, ``kl`` and ``beta`` (plus ``adv_g``/``adv_d`` with the
    adversarial term), so handlers log the terms separately. As in MONAI's ``SupervisedTrainer``
    (``decollate=True``), handlers then see it decollated: a list with one dict per image, the
    scalars repeated in each, which MONAI's stock handlers (``--tracking mlflow``) expect.

    Args:
        device: training device.
        max_epochs: epochs to run.
        train_data_loader: yields dicts with ``image`` ``(B, C, *S)``.
        network: a :class:`~medvae_monai.networks.MedVAE` or subclass; training goes through its
            ``encode``/``sample``/``decode``, not ``forward``.
        optimizer: the VAE's optimiser.
        loss_function: an :class:`~medvae_monai.losses.ELBOLoss`.
        adversarial: optional :class:`~medvae_monai.losses.AdversarialTerm`.
        disc_optimizer: optimiser of ``adversarial.discriminator``; required with ``adversarial``.
        adversarial_start_iteration: iterations of pure ELBO training before the adversarial term.
        kwargs: passed to :class:`monai.engines.SupervisedTrainer` (handlers, epoch_length, ...).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: ELBOLoss,
        adversarial: AdversarialTerm | None = None,
        disc_optimizer: torch.optim.Optimizer | None = None,
        adversarial_start_iteration: int = 0,
        train_handlers: Sequence | None = None,
        **kwargs,
    ) -> None:
        if adversarial is not None and disc_optimizer is None:
            raise ValueError("VAETrainer: `disc_optimizer` is required when `adversarial` is given.")
        kwargs.setdefault("prepare_batch", ImageAsTarget())
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            train_handlers=train_handlers,
            **kwargs,
        )
        self.adversarial = adversarial.to(device) if adversarial is not None else None
        self.disc_optimizer = disc_optimizer
        self.adversarial_start_iteration = adversarial_start_iteration

    def _iteration(self, engine: VAETrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        x, _ = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        engine.network.train()
        vae = engine.network  # any MedVAE, including its single-output export variants
        if isinstance(vae, DistributedDataParallel):
            # DDP syncs gradients only through its forward: it wraps a VAETrainingForward
            recon, mu, sigma = vae(x)
        else:
            mu, sigma = vae.encode(x)
            recon = vae.decode(vae.sample(mu, sigma), spatial_size=list(x.shape[2:]))
        terms = engine.loss_function(recon, x, mu, sigma)
        loss = terms["loss"]
        out: dict = {Keys.IMAGE: x, Keys.PRED: recon.detach()}
        use_adv = engine.adversarial is not None and engine.state.iteration > engine.adversarial_start_iteration
        if use_adv:
            adv_g = engine.adversarial.generator_loss(recon)
            loss = loss + adv_g
            out["adv_g"] = adv_g.item()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        loss.backward()
        engine.optimizer.step()
        if use_adv:
            engine.disc_optimizer.zero_grad(set_to_none=True)
            adv_d = engine.adversarial.discriminator_loss(recon, x)
            adv_d.backward()
            engine.disc_optimizer.step()
            out["adv_d"] = adv_d.item()
        out.update(
            loss=loss.item(), recon_loss=terms["recon_loss"].item(), kl=terms["kl"].item(), beta=engine.loss_function.beta
        )
        return complete_iteration(engine, out)
