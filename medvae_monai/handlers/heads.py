"""Metrics and prediction files for the diagnostic heads.

- :func:`classification_metrics`: AUROC, accuracy, sensitivity and specificity per class.
- :func:`segmentation_metrics`: Dice and HD95 per label (MONAI ``DiceMetric``/``HausdorffDistanceMetric``).
- :class:`HeadMetricsWriter`: an evaluator handler that writes either to ``metrics.json``.
- :class:`PredictionWriter`: per-image probabilities with their posterior spread, as CSV and JSON.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.metrics import DiceMetric, HausdorffDistanceMetric, compute_roc_auc
from monai.utils import CommonKeys as Keys

from ..errors import InputError
from ..outputs import contained_path
from ..utils import atomic_write, atomic_write_json
from .metrics import MetricsWriter

__all__ = ["HeadMetricsWriter", "PredictionWriter", "classification_metrics", "segmentation_metrics"]

logger = logging.getLogger("medvae_monai")


def _finite(value: float) -> float | None:
    """JSON has no NaN/inf: undefined metrics (e.g. AUROC of a class absent from the split) become null."""
    value = float(value)
    return value if math.isfinite(value) else None


def classification_metrics(
    probs: torch.Tensor, target: torch.Tensor, class_names: Sequence[str], multilabel: bool = False
) -> dict:
    """AUROC, accuracy, sensitivity and specificity, overall and per class (one vs. rest).

    A multi-class prediction is the most probable class; a multi-label one is every label with
    probability above 0.5. ``auroc`` is the mean of the per-class AUROCs (for a binary task both
    classes have the same AUROC, so it is the usual binary AUROC).

    Args:
        probs: ``(N, K)`` probabilities.
        target: ``(N, K)`` one-hot (multi-class) or multi-hot (multi-label) labels.
        class_names: ``K`` names.
        multilabel: labels are independent.

    Returns:
        ``{"auroc", "acc", "n_images", "per_class": {name: {"auroc", "sensitivity", "specificity", "n"}}}``.
    """
    probs, target = probs.float().cpu(), target.float().cpu()
    if probs.shape != target.shape or probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise ValueError(f"probs {tuple(probs.shape)} and targets {tuple(target.shape)} must both be (N, {len(class_names)}).")
    if multilabel:
        pred = (probs > 0.5).float()
        acc = (pred == target).float().mean()
    else:
        pred = torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).float()
        acc = (probs.argmax(1) == target.argmax(1)).float().mean()
    per_class = {}
    for k, name in enumerate(class_names):
        pos, neg = target[:, k] == 1, target[:, k] == 0
        both = bool(pos.any() and neg.any())
        per_class[str(name)] = {
            "auroc": _finite(compute_roc_auc(probs[:, k], target[:, k])) if both else None,
            "sensitivity": _finite(pred[pos, k].mean()) if pos.any() else None,
            "specificity": _finite(1 - pred[neg, k].mean()) if neg.any() else None,
            "n": int(pos.sum()),
        }
    aurocs = [c["auroc"] for c in per_class.values() if c["auroc"] is not None]
    return {
        "auroc": sum(aurocs) / len(aurocs) if aurocs else None,
        "acc": float(acc),
        "n_images": int(probs.shape[0]),
        "per_class": per_class,
    }


def segmentation_metrics(dice: DiceMetric, hd95: HausdorffDistanceMetric, label_names: Sequence[str]) -> dict:
    """Dice and HD95 (voxels) per foreground label from accumulated MONAI metrics.

    Images whose ground truth lacks a label do not count towards that label's Dice
    (``ignore_empty``); HD95 counts only images where both the prediction and the ground truth
    have the label. A label with no such image gets ``None`` (MONAI's own reduction would report
    0, which reads as a perfect distance).

    Returns:
        ``{"dice", "hd95", "per_label": {name: {"dice", "hd95"}}}``; ``dice``/``hd95`` average the labels.
    """

    def per_label(metric) -> list[float]:
        buf = metric.get_buffer().float()  # (images, labels), NaN/inf where undefined
        ok = torch.isfinite(buf)
        return [float(buf[ok[:, c], c].mean()) if ok[:, c].any() else math.nan for c in range(buf.shape[1])]

    d, h = per_label(dice), per_label(hd95)
    per_label = {str(n): {"dice": _finite(dv), "hd95": _finite(hv)} for n, dv, hv in zip(label_names, d, h)}
    ds = [v["dice"] for v in per_label.values() if v["dice"] is not None]
    hs = [v["hd95"] for v in per_label.values() if v["hd95"] is not None]
    return {
        "dice": sum(ds) / len(ds) if ds else None,
        "hd95": sum(hs) / len(hs) if hs else None,
        "per_label": per_label,
    }


def _batched(output, key: str) -> torch.Tensor:
    """``engine.state.output[key]`` as a batch, whether the evaluator decollated it or not."""
    if isinstance(output, list):
        return torch.stack([torch.as_tensor(r[key]) for r in output])
    return torch.as_tensor(output[key])


class HeadMetricsWriter(MetricsWriter):
    """Collect an evaluator's predictions and write the head's metrics to ``<output_dir>/metrics.json``.

    The evaluator's postprocessing must leave ``pred`` as probabilities ``(K,)`` and ``label``
    one-hot ``(K,)`` for classification, or ``pred`` and ``label`` one-hot ``(K, *S)`` with the
    background in channel 0 for segmentation.

    Args:
        output_dir: destination folder (written atomically).
        task: ``binary``, ``multiclass``, ``multilabel`` or ``segmentation``.
        class_names: class names (classification) or foreground label names (segmentation).
        extra: constant fields to add (split, dataset, checkpoint, ...).
        filename: file name.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        task: str,
        class_names: Sequence[str],
        extra: dict | None = None,
        filename: str = "metrics.json",
    ) -> None:
        super().__init__(output_dir, extra, filename)
        self.task = task
        self.class_names = [str(c) for c in class_names]
        self.metrics: dict = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        super().attach(engine)

    def _reset(self, engine: Engine) -> None:
        self._probs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._dice = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
        self._hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="mean_batch")

    def _collect(self, engine: Engine) -> None:
        pred, target = _batched(engine.state.output, Keys.PRED), _batched(engine.state.output, Keys.LABEL)
        if self.task == "segmentation":
            self._dice(pred, target)
            self._hd95(pred, target)
        else:
            self._probs.append(pred.detach().cpu())
            self._targets.append(target.detach().cpu())

    def metrics_of(self, engine: Engine) -> tuple[dict, dict]:
        if self.task == "segmentation":
            self.metrics = segmentation_metrics(self._dice, self._hd95, self.class_names)
        else:
            self.metrics = classification_metrics(
                torch.cat(self._probs), torch.cat(self._targets), self.class_names, self.task == "multilabel"
            )
        return self.metrics, {"task": self.task}


class PredictionWriter:
    """Per-image class probabilities with their posterior uncertainty, to ``predictions.csv``/``.json``.

    It observes an evaluator whose inferer is a
    :class:`~medvae_monai.inferers.PosteriorSamplingInferer`: each image's ``pred`` holds the class
    probabilities of ``S`` latents ``z ~ q(z | x)``, ``(S, K)``. It records, per class, their mean
    and standard deviation over the samples, beside the predicted class from the mean.

    Args:
        output_dir: destination folder (files written atomically).
        class_names: the ``K`` class names.

    Raises:
        InputError: the classifier predicts another number of classes than ``class_names`` has.
    """

    def __init__(self, output_dir: str | os.PathLike, class_names: Sequence[str]) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = [str(c) for c in class_names]
        self.num_samples = 0
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        samples = _batched(engine.state.output, Keys.PRED).float()  # (B, S, K)
        if samples.shape[-1] != len(self.class_names):
            raise InputError(
                f"the classifier predicts {samples.shape[-1]} classes but {len(self.class_names)} class names were given "
                f"({self.class_names}); pass the training classes with --class_names."
            )
        self.num_samples = int(samples.shape[1])
        mean, std = samples.mean(1), samples.std(1)
        batch = engine.state.batch  # decollated into a list of items by default
        rows = batch if isinstance(batch, list) else [dict(zip(batch, v)) for v in zip(*batch.values())]
        for row, m, s in zip(rows, mean.cpu().tolist(), std.cpu().tolist()):
            best = max(range(len(m)), key=m.__getitem__)
            self.rows.append(
                {
                    "source": row.get("source"),
                    "prediction": self.class_names[best],
                    "probability": dict(zip(self.class_names, m)),
                    "probability_std": dict(zip(self.class_names, s)),
                }
            )
    def _write(self, engine: Engine) -> None:
        atomic_write_json(contained_path(self.output_dir, "predictions.json"), {"num_samples": self.num_samples, "images": self.rows})
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["source", "prediction"] + [f"p_{c}" for c in self.class_names] + [f"std_{c}" for c in self.class_names])
        for r in self.rows:
            w.writerow([r["source"], r["prediction"]] + [f"{r['probability'][c]:.6f}" for c in self.class_names]
                       + [f"{r['probability_std'][c]:.6f}" for c in self.class_names])
        path = atomic_write(contained_path(self.output_dir, "predictions.csv"), lambda f: f.write(buf.getvalue()), mode="w")
        logger.info("Wrote %d predictions to %s", len(self.rows), path)
