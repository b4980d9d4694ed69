"""Atomic checkpoints that resume: ``last.pt`` every epoch, the best network on every improvement."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from ..errors import InputError
from ..utils import atomic_torch_save, ensure_writable_dir, load_state_dict

__all__ = ["ResumableCheckpoint"]

logger = logging.getLogger("medvae_monai")


class ResumableCheckpoint:
    """Save training state atomically each epoch, keep the best network, and resume on restart.

    Files under ``save_dir``:

    - ``last.pt``: every object in ``save_dict`` (network, optimiser, scheduler, the trainer's
      epoch and iteration counters), the best metric so far and the torch random state, written
      at the end of each epoch, after validation. On the next run with the same ``save_dir``
      training resumes from it, unless ``resume`` is False; with the random state restored, the
      resumed epochs draw the same shuffles and latent samples as an uninterrupted run.
    - ``best.pt``: the state dict of ``network`` whenever ``metric_name`` improves (higher is
      better), written by the evaluator's completion.

    Every file is written to a temporary name and renamed, so a kill at any moment leaves the
    previous complete file. Loads use ``weights_only=True``.

    Args:
        save_dir: checkpoint folder.
        save_dict: objects with ``state_dict``/``load_state_dict`` to save; must include the
            trainer under ``"trainer"`` for resuming.
        network: the network whose weights go into ``best.pt``.
        metric_name: evaluator metric that selects ``best.pt``; ``None`` saves none.
        resume: resume from ``last.pt`` when it exists.
        final_filename: also copy the best (or, without validation, the last) network here when
            training completes, e.g. ``<output_dir>/model.pt``.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, object],
        network: torch.nn.Module,
        metric_name: str | None = None,
        resume: bool = True,
        final_filename: str | os.PathLike | None = None,
    ) -> None:
        if "trainer" not in save_dict:
            raise ValueError("ResumableCheckpoint: save_dict needs the trainer under 'trainer' to resume.")
        self.save_dir = ensure_writable_dir(save_dir)
        self.save_dict = dict(save_dict)
        self.network = network
        self.metric_name = metric_name
        self.resume = resume
        self.final_filename = Path(final_filename) if final_filename else None
        self.best_metric = -float("inf")
        self.best_epoch = -1

    @property
    def last_path(self) -> Path:
        return self.save_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.save_dir / "best.pt"

    def attach(self, engine: Engine, evaluator: Engine | None = None) -> None:
        """Attach to the trainer (and optionally to an evaluator for ``best.pt``)."""
        engine.add_event_handler(Events.STARTED, self.load_last)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save_last)
        engine.add_event_handler(Events.COMPLETED, self.save_final)
        if evaluator is not None:
            self.attach_evaluator(evaluator)

    def attach_evaluator(self, evaluator: Engine) -> None:
        evaluator.add_event_handler(Events.COMPLETED, self.save_best)

    def load_last(self, engine: Engine) -> None:
        for stale in self.save_dir.glob(".*.pt.*.tmp"):  # left by a run killed mid-save (see atomic_write)
            stale.unlink(missing_ok=True)
        if not (self.resume and self.last_path.exists()):
            return
        ckpt = load_state_dict(self.last_path)
        max_epochs = engine.state.max_epochs
        try:
            for key, obj in self.save_dict.items():
                obj.load_state_dict(ckpt[key])
        except (KeyError, RuntimeError) as e:
            raise InputError(
                f"{self.last_path}: cannot resume from it ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                "It was written by a different model or configuration; use a new --output_dir or delete the file."
            ) from None
        engine.state.max_epochs = max_epochs
        if "rng_state" in ckpt:
            torch.set_rng_state(ckpt["rng_state"])
        self.best_metric = float(ckpt.get("best_metric", self.best_metric))
        self.best_epoch = int(ckpt.get("best_epoch", self.best_epoch))
        logger.info("Resumed from %s at epoch %d, iteration %d.", self.last_path, engine.state.epoch, engine.state.iteration)
        if engine.state.epoch >= max_epochs:
            logger.info("Training already reached max_epochs=%d; nothing to do.", max_epochs)
            engine.terminate()

    def save_last(self, engine: Engine) -> None:
        state = {key: obj.state_dict() for key, obj in self.save_dict.items()}
        state["best_metric"] = torch.tensor(self.best_metric)
        state["best_epoch"] = torch.tensor(self.best_epoch)
        state["rng_state"] = torch.get_rng_state()  # CPU generator: DataLoader shuffles and z samples
        atomic_torch_save(state, self.last_path)

    def save_best(self, evaluator: Engine) -> None:
        if self.metric_name is None:
            return
        value = float(evaluator.state.metrics[self.metric_name])
        if value > self.best_metric:
            self.best_metric = value
            self.best_epoch = int(evaluator.state.epoch)  # MONAI's ValidationHandler sets it to the trainer's
            atomic_torch_save(self.network.state_dict(), self.best_path)
            logger.info("New best %s = %.4f at epoch %d -> %s", self.metric_name, value, self.best_epoch, self.best_path)

    def save_final(self, engine: Engine) -> None:
        if self.final_filename is None:
            return
        if self.best_path.exists():
            state = load_state_dict(self.best_path)
        else:
            state = self.network.state_dict()
        atomic_torch_save(state, self.final_filename)
