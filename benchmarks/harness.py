"""The benchmarks' training harness: a time budget per model, selection on the validation split, test metrics.

Shared by ``tasks.py``, ``features.py``, ``anomaly.py`` and ``nodules.py``, so that every model of
every benchmark is trained, selected and scored the same way.
"""

from __future__ import annotations

import copy
import time

import torch
from ignite.engine import Events
from monai.metrics import DiceMetric, HausdorffDistanceMetric

from medvae_monai.handlers import classification_metrics, segmentation_metrics

__all__ = ["SELECTION_POINTS", "BestOnValidation", "Budget", "evaluate", "n_params", "train"]

SELECTION_POINTS = 8  # validations per training budget (plus one at its end)


class Budget:
    """Stops an ignite engine after ``seconds`` of training iterations; counts images and time.

    Time spent outside iterations (validation) is not counted. ``select`` is called ``points``
    times at even steps of the budget and once at its end.
    """

    def __init__(self, seconds: float, select=None, points: int = SELECTION_POINTS) -> None:
        self.seconds = seconds
        self.images = 0
        self.elapsed = 0.0
        self.select = select
        self.next_select = seconds / points

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._step)
        if self.select is not None:
            engine.add_event_handler(Events.COMPLETED, lambda _: self.select())

    def _start(self, engine) -> None:
        self._t0 = time.perf_counter()

    def _step(self, engine) -> None:
        self.elapsed += time.perf_counter() - self._t0
        batch = engine.state.batch  # a list of items once the trainer decollated it
        self.images += len(batch) if isinstance(batch, list) else len(next(iter(batch.values())))
        if self.elapsed > self.seconds:
            engine.terminate()
        elif self.select is not None and self.elapsed >= self.next_select:
            self.select()
            self.next_select += self.seconds / SELECTION_POINTS


class BestOnValidation:
    """Scores a network on the validation split and keeps a copy of its best state.

    ``score`` (network -> float) replaces :func:`evaluate` on ``val``, e.g. for a head scored on
    cached latents."""

    def __init__(self, network: torch.nn.Module, spec: dict, val: list[dict], names: list[str], score=None) -> None:
        self.network, self.spec, self.val, self.names = network, spec, val, names
        self.metric = "dice" if spec["type"] == "seg" else "auroc"
        self.score = score or (lambda net: evaluate(net, spec, val, names)[self.metric])
        self.best, self.state, self.history = -1.0, None, []

    def __call__(self, _engine=None) -> None:
        score = self.score(self.network) or 0.0
        self.history.append(round(score, 4))
        if score > self.best:
            self.best, self.state = score, copy.deepcopy(self.network.state_dict())
        self.network.train()

    def restore(self) -> dict:
        """Load the best state; returns what to record about the selection."""
        self.network.load_state_dict(self.state)
        return {f"val_{self.metric}": round(self.best, 4), f"val_{self.metric}_history": self.history}


def train(trainer_cls, seconds: float, loader, network, optimizer, loss, selector=None, **kwargs) -> Budget:
    budget = Budget(seconds, selector)
    trainer = trainer_cls(
        device="cpu", max_epochs=10_000, train_data_loader=loader, network=network, optimizer=optimizer,
        loss_function=loss, train_handlers=[budget], **kwargs,
    )
    trainer.run()
    return budget


def n_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def evaluate(network, spec: dict, test: list[dict], names: list[str], batch_size: int = 64) -> dict:
    """Test metrics and inference images per second (from images, encoder included)."""
    network.eval()
    seg = spec["type"] == "seg"
    probs, targets = [], []
    k = len(spec["labels"]) + 1 if seg else len(names)
    dice = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="mean_batch")
    t_net = 0.0
    for start in range(0, len(test), batch_size):
        chunk = test[start : start + batch_size]
        x = torch.stack([d["image"] for d in chunk])
        t0 = time.perf_counter()
        out = network(x)
        t_net += time.perf_counter() - t0
        if seg:
            y = torch.stack([d["mask"] for d in chunk]).long()
            pred = torch.nn.functional.one_hot(out.argmax(1), k).movedim(-1, 1).float()
            onehot = torch.nn.functional.one_hot(y[:, 0], k).movedim(-1, 1).float()
            dice(pred, onehot)
            hd95(pred, onehot)
        else:
            probs.append(torch.softmax(out, 1))
            targets.append(torch.nn.functional.one_hot(torch.tensor([d["label"] for d in chunk]), k).float())
    if seg:
        metrics = segmentation_metrics(dice, hd95, spec["labels"])
    else:
        metrics = classification_metrics(torch.cat(probs), torch.cat(targets), names)
    metrics["infer_img_per_s"] = len(test) / t_net
    return metrics
