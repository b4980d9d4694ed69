"""Fail a training run whose loss stops being finite, before anything of it is saved."""

from __future__ import annotations

import math

from ignite.engine import Engine, Events

from ..engines.iteration import loss_terms
from ..errors import InputError

__all__ = ["StopOnDivergence"]


class StopOnDivergence:
    """Raise at the first iteration whose loss is NaN or infinite (a learning rate too high, or NaN in the data).

    ignite's ``TerminateOnNan`` ends the run as if it had completed, so ``COMPLETED`` handlers would
    still write ``model.pt`` and the command would exit 0. This raises instead, at
    ``ITERATION_COMPLETED``: the epoch's checkpoints (``EPOCH_COMPLETED``) and the final model are not
    written from diverged weights, ``last.pt`` keeps the last good epoch, and the command fails with
    one line.

    Raises:
        InputError: naming the loss, the epoch, the iteration and the learning rate, and the fix.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        terms = loss_terms(engine.state.output)
        bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
        if not bad:
            return
        optimizer = getattr(engine, "optimizer", None)
        lr = f", learning rate {optimizer.param_groups[0]['lr']:g}" if optimizer is not None else ""
        raise InputError(
            f"training diverged: {', '.join(f'{k} {v}' for k, v in bad.items())} at epoch {engine.state.epoch}, "
            f"iteration {engine.state.iteration}{lr}; nothing of this epoch was saved. Lower --learning_rate "
            "(or check the images for NaN), and start over with --resume false or a new --output_dir."
        )
