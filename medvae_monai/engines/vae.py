"""Ignite engine for VAE training."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from ..losses import AdversarialTerm, ELBOLoss
from .iteration import autocast, backward_step, complete_iteration
from .prepare import ImageTarget

__all__ = ["VAETrainer"]


class VAETrainer(SupervisedTrainer):
    """Trains a :class:`~medvae_monai.networks.MedVAE` on the negative ELBO, optionally with a
    patch-adversarial term.

    Each iteration runs the network's ``forward`` (in training mode it samples ``z ~ q(z | x)``
    and returns ``(reconstruction, mu, sigma)``), so a ``DistributedDataParallel`` around the
    MedVAE synchronises the gradients. It fires MONAI's ``FORWARD_COMPLETED``, ``LOSS_COMPLETED``,
    ``BACKWARD_COMPLETED`` and ``MODEL_COMPLETED`` and runs forward and loss under AMP when
    ``amp=True``, as ``SupervisedTrainer`` does.

    The KL weight is ``engine.state.kl_weight``: a :class:`~medvae_monai.handlers.KLWarmup`
    handler schedules it, otherwise it stays the loss's ``beta``.

    Each iteration's ``engine.state.output`` holds ``image``, ``pred`` (the reconstruction) and the
    floats ``loss``, ``recon_loss``, ``kl`` and ``beta`` (the KL weight used), plus
    ``adv_g``/``adv_d`` with the adversarial term. As in MONAI's ``SupervisedTrainer``
    (``decollate=True``), handlers then see it decollated: a list with one dict per image, the
    scalars repeated in each, which MONAI's stock handlers (``--tracking mlflow``) expect.

    Args:
        device: training device.
        max_epochs: epochs to run.
        train_data_loader: yields dicts with ``image`` ``(B, C, *S)``.
        network: a :class:`~medvae_monai.networks.MedVAE` whose ``forward`` returns
            ``(reconstruction, mu, sigma)``, or a ``DistributedDataParallel`` around one.
        optimizer: the VAE's optimiser.
        loss_function: an :class:`~medvae_monai.losses.ELBOLoss`.
        adversarial: optional :class:`~medvae_monai.losses.AdversarialTerm`.
        disc_optimizer: optimiser of ``adversarial.discriminator``; required with ``adversarial``.
        adversarial_start_iteration: iterations of pure ELBO training before the adversarial term.
        kwargs: passed to :class:`monai.engines.SupervisedTrainer` (handlers, epoch_length, amp, ...).
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
        kwargs.setdefault("prepare_batch", ImageTarget(target_key="image"))
        self.adversarial = adversarial.to(device) if adversarial is not None else None
        self.disc_optimizer = disc_optimizer
        self.adversarial_start_iteration = adversarial_start_iteration
        # handlers attach below, once the engine state has the KL weight
        super().__init__(device, max_epochs, train_data_loader, network, optimizer, loss_function, **kwargs)
        self.state.kl_weight = loss_function.beta  # a KLWarmup handler then schedules it
        for handler in train_handlers or ():
            handler.attach(self)

    def _iteration(self, engine: VAETrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        x, _ = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        beta = float(engine.state.kl_weight)
        use_adv = engine.adversarial is not None and engine.state.iteration > engine.adversarial_start_iteration
        engine.state.output = {Keys.IMAGE: x}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast(engine):
            recon, mu, sigma = engine.network(x)
            engine.state.output[Keys.PRED] = recon
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            terms = engine.loss_function(recon, x, mu, sigma, beta=beta)
            loss = terms["loss"]
            if use_adv:
                adv_g = engine.adversarial.generator_loss(recon)
                loss = loss + adv_g
            engine.state.output[Keys.LOSS] = loss
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        backward_step(engine, loss, engine.optimizer)
        out: dict = {Keys.IMAGE: x, Keys.PRED: recon.detach()}
        if use_adv:
            engine.disc_optimizer.zero_grad(set_to_none=True)
            with autocast(engine):
                adv_d = engine.adversarial.discriminator_loss(recon, x)
            backward_step(engine, adv_d, engine.disc_optimizer)
            out.update(adv_g=adv_g.item(), adv_d=adv_d.item())
        out.update(loss=loss.item(), recon_loss=terms["recon_loss"].item(), kl=terms["kl"].item(), beta=beta)
        return complete_iteration(engine, out)
