"""Schedules of engine-state parameters (ignite ``StateParamScheduler``): the KL weight's warm-up."""

from __future__ import annotations

from ignite.engine import Engine, Events
from ignite.handlers import PiecewiseLinearStateScheduler

__all__ = ["KLWarmup"]


class KLWarmup(PiecewiseLinearStateScheduler):
    """Linear warm-up of the KL weight ``engine.state.kl_weight = beta * min(1, iteration / warmup_steps)``.

    ignite's piecewise-linear state scheduler, set at each ``ITERATION_STARTED`` so that iteration
    ``i`` (1-based) trains with the weight of step ``i``; :class:`~medvae_monai.engines.VAETrainer`
    passes it to its :class:`~medvae_monai.losses.ELBOLoss`. Its position is in ``state_dict``, so
    put it in the checkpoint for a resumed run to continue the ramp.

    Args:
        beta: final KL weight (>= 0).
        warmup_steps: iterations to reach ``beta`` (>= 0); 0 means no warm-up.
        param_name: the engine-state attribute to set.

    Raises:
        ValueError: a negative ``beta`` or ``warmup_steps``.
    """

    def __init__(self, beta: float, warmup_steps: int = 0, param_name: str = "kl_weight") -> None:
        if beta < 0 or warmup_steps < 0:
            raise ValueError(f"KLWarmup: beta and warmup_steps must be >= 0, got {beta}, {warmup_steps}.")
        # ignite needs two increasing milestones: without warm-up both hold beta
        start = 0.0 if warmup_steps > 0 else float(beta)
        milestones = [(0, start), (max(int(warmup_steps), 1), float(beta))]
        super().__init__(milestones_values=milestones, param_name=param_name)

    def attach(self, engine: Engine, event=Events.ITERATION_STARTED) -> None:  # type: ignore[override]
        super().attach(engine, event)
