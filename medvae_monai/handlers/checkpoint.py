"""Checkpoints that resume, on ignite's ``Checkpoint`` and ``DiskSaver(atomic=True)``: ``last.pt`` every
epoch, the best network on every improvement."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from ignite.handlers.checkpoint import CheckpointEvents

from ..errors import InputError
from ..utils import atomic_torch_save, ensure_writable_dir, load_state_dict

__all__ = ["ResumableCheckpoint", "ReplacingDiskSaver", "RunIdentity", "TorchRNGState"]

logger = logging.getLogger("medvae_monai")


class ReplacingDiskSaver(DiskSaver):
    """ignite's ``DiskSaver(atomic=True)`` that deletes superseded files only once the new one is in place.

    ignite's ``Checkpoint`` removes the file it supersedes before it writes the new one. With a fixed
    name (``last.pt``) that leaves a moment with no checkpoint on disk, and a kill then would lose
    it; here the atomic ``os.replace`` swaps the file in one step, and other superseded files go
    after the save succeeded.
    """

    def __init__(self, dirname: str | os.PathLike) -> None:
        super().__init__(dirname, atomic=True, create_dir=True, require_empty=False)
        self._superseded: list[str] = []

    def remove(self, filename: str) -> None:
        self._superseded.append(filename)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, filename, metadata)
        for old in self._superseded:
            if old != filename:
                (self.dirname / old).unlink(missing_ok=True)
        self._superseded.clear()


class TorchRNGState:
    """The CPU torch generator (DataLoader shuffles, latent samples) as a checkpointable object."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"torch": torch.get_rng_state()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["torch"])


class RunIdentity:
    """What a run trains on (the dataset folder, its number of training items, the batch size), kept in ``last.pt``.

    Resuming in an output folder written for other data would silently mix two trainings (and pick
    ``best.pt`` by comparing metrics across datasets), and with another batch size ignite would keep
    the saved iterations per epoch (a fraction of the data each epoch), so a different identity raises.
    Stored as UTF-8 JSON bytes in a tensor, which ``weights_only=True`` loads.

    Raises:
        InputError: at load, naming both identities and the way out.
    """

    def __init__(self, identity: Mapping[str, object]) -> None:
        self.identity = dict(identity)

    def _text(self) -> str:
        return json.dumps(self.identity, sort_keys=True, default=str)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"identity_utf8": torch.tensor(list(self._text().encode()), dtype=torch.uint8)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        saved = bytes(state["identity_utf8"].tolist()).decode()
        if saved != self._text():
            raise InputError(
                f"the checkpoint to resume was written for other data or settings ({saved}), and this run has "
                f"{self._text()}: "
                "use a new --output_dir, or --resume false to start over in this one."
            )


class ResumableCheckpoint:
    """Save training state atomically each epoch, keep the best network, and resume on restart.

    Files under ``save_dir``, written by ignite's ``Checkpoint`` through a :class:`ReplacingDiskSaver`
    (temporary file, then rename: a kill at any moment leaves the previous complete file):

    - ``last.pt``: every object in ``save_dict`` (network, optimiser, scheduler, the trainer's
      epoch and iteration counters, a KL schedule), the best-model tracker (best metric so far) and
      the torch random state, at the end of each epoch, after validation. On the next run with the
      same ``save_dir`` training resumes from it, unless ``resume`` is False; with the random state
      restored, the resumed epochs draw the same shuffles and latent samples as an uninterrupted run.
    - ``best.pt``: the state dict of ``network`` whenever ``metric_name`` improves (higher is
      better), at the evaluator's completion.

    Loads use ``weights_only=True``.

    Args:
        save_dir: checkpoint folder.
        save_dict: objects with ``state_dict``/``load_state_dict`` to save; must include the
            trainer under ``"trainer"`` for resuming.
        network: the network whose weights go into ``best.pt``.
        metric_name: evaluator metric that selects ``best.pt``; ``None`` saves none.
        resume: resume from ``last.pt`` when it exists.
        final_filename: also copy the best (or, without validation, the last) network here when
            training completes, e.g. ``<output_dir>/model.pt``.
        run_identity: what the run trains on (:class:`RunIdentity`); resuming with another is refused.
            ``last.pt`` files written without one still resume.

    Raises:
        ValueError: ``save_dict`` has no ``"trainer"``.
        InputError: ``last.pt`` was written by another model or configuration, or for other data
            (at resume).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, object],
        network: torch.nn.Module,
        metric_name: str | None = None,
        resume: bool = True,
        final_filename: str | os.PathLike | None = None,
        run_identity: Mapping[str, object] | None = None,
    ) -> None:
        if "trainer" not in save_dict:
            raise ValueError("ResumableCheckpoint: save_dict needs the trainer under 'trainer' to resume.")
        self.save_dir = ensure_writable_dir(save_dir)
        self.network = network
        self.metric_name = metric_name
        self.resume = resume
        self.final_filename = Path(final_filename) if final_filename else None
        saver = ReplacingDiskSaver(self.save_dir)
        self.best = Checkpoint(
            {"network": network},
            saver,
            filename_prefix="best",
            filename_pattern="{filename_prefix}.{ext}",
            score_function=(lambda e: float(e.state.metrics[metric_name])) if metric_name else None,
            n_saved=1,
        )
        self.to_save = {**save_dict, "best_checkpoint": self.best, "rng_state": TorchRNGState()}
        if run_identity is not None:
            self.to_save["run_identity"] = RunIdentity(run_identity)
        self.last = Checkpoint(
            self.to_save, saver, filename_prefix="last", filename_pattern="{filename_prefix}.{ext}", n_saved=1
        )

    @property
    def last_path(self) -> Path:
        return self.save_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.save_dir / "best.pt"

    def attach(self, engine: Engine, evaluator: Engine | None = None) -> None:
        """Attach to the trainer (and optionally to an evaluator for ``best.pt``)."""
        engine.add_event_handler(Events.STARTED, self.load_last)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.last)
        engine.add_event_handler(Events.COMPLETED, self.save_final)
        if evaluator is not None:
            self.attach_evaluator(evaluator)

    def attach_evaluator(self, evaluator: Engine) -> None:
        if self.metric_name is None:
            return
        evaluator.add_event_handler(Events.COMPLETED, self.best)
        if not evaluator.has_registered_events(CheckpointEvents.SAVED_CHECKPOINT):
            evaluator.register_events(*CheckpointEvents)
        evaluator.add_event_handler(CheckpointEvents.SAVED_CHECKPOINT, self._log_best)

    def _log_best(self, evaluator: Engine) -> None:
        value = float(evaluator.state.metrics[self.metric_name])
        # the evaluator's epoch is the trainer's (MONAI's ValidationHandler sets it)
        logger.info("New best %s = %.4f at epoch %d -> %s", self.metric_name, value, evaluator.state.epoch, self.best_path)

    def load_last(self, engine: Engine) -> None:
        for stale in self.save_dir.glob("tmp*"):  # DiskSaver's temporaries, left by a run killed mid-save
            stale.unlink(missing_ok=True)
        if not (self.resume and self.last_path.exists()):
            return
        ckpt = load_state_dict(self.last_path)
        max_epochs = engine.state.max_epochs
        to_load = {k: v for k, v in self.to_save.items() if k != "run_identity" or k in ckpt}
        if "run_identity" in to_load:  # first, so that other data is named as such, not as a shape mismatch
            to_load.pop("run_identity").load_state_dict(ckpt["run_identity"])
        try:
            Checkpoint.load_objects(to_load, ckpt)
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise InputError(
                f"{self.last_path}: cannot resume from it ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                "It was written by a different model or configuration; use a new --output_dir or delete the file."
            ) from None
        engine.state.max_epochs = max_epochs
        logger.info("Resumed from %s at epoch %d, iteration %d.", self.last_path, engine.state.epoch, engine.state.iteration)
        if engine.state.epoch >= max_epochs:
            logger.info("Training already reached max_epochs=%d; nothing to do.", max_epochs)
            engine.terminate()

    def save_final(self, engine: Engine) -> None:
        if self.final_filename is None:
            return
        state = load_state_dict(self.best_path) if self.best_path.exists() else self.network.state_dict()
        atomic_torch_save(state, self.final_filename)
