"""The steps of a training iteration as MONAI's ``SupervisedTrainer._iteration`` takes them: forward and
loss under AMP when it is on, ``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED`` and
``MODEL_COMPLETED``, so the trainers with several outputs or losses keep MONAI's event protocol."""

from __future__ import annotations

import contextlib

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents

__all__ = ["autocast", "backward_step", "complete_iteration", "loss_terms", "LOSS_TERMS"]

LOSS_TERMS = ("loss", "recon_loss", "kl", "beta")


def autocast(engine: SupervisedTrainer) -> contextlib.AbstractContextManager:
    """Mixed precision on the engine's device type when ``engine.amp``, with its ``amp_kwargs``; else nothing.

    MONAI's trainer always autocasts on CUDA; here a CPU run autocasts to bfloat16 too."""
    if not engine.amp:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(engine.state.device).type, **engine.amp_kwargs)


def backward_step(engine: SupervisedTrainer, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """Back-propagate ``loss`` (scaled by the engine's ``GradScaler`` under AMP), fire
    ``BACKWARD_COMPLETED`` and step ``optimizer``. :func:`complete_iteration` updates the scaler."""
    scaler = engine.scaler if engine.amp else None
    (scaler.scale(loss) if scaler is not None else loss).backward()
    engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
    if scaler is not None:
        scaler.step(optimizer)
    else:
        optimizer.step()


def complete_iteration(engine: SupervisedTrainer, output: dict) -> dict | list[dict]:
    """End a custom ``_iteration`` as MONAI's does: update the AMP scaler, set the output and fire
    ``MODEL_COMPLETED``, where the engine decollates batch and output (``decollate=True``) and runs
    ``postprocessing``."""
    if engine.amp and engine.scaler is not None:
        engine.scaler.update()
    engine.state.output = output
    engine.fire_event(IterationEvents.MODEL_COMPLETED)
    return engine.state.output


def loss_terms(output: dict | list[dict]) -> dict[str, float]:
    """The scalar loss terms of a trainer's iteration output, for logging handlers.

    ``output`` is one dict per batch, or, decollated (the trainers' default, as in MONAI), one dict
    per image, each holding the same scalars.
    """
    first = output[0] if isinstance(output, list) else output
    return {k: float(first[k]) for k in LOSS_TERMS if k in first}
