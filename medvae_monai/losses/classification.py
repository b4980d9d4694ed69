"""Task losses of the diagnostic heads: classification and segmentation."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from torch import nn
from torch.nn import functional as F

__all__ = ["ClassificationLoss", "SegmentationLoss"]


class ClassificationLoss(nn.Module):
    """Cross-entropy for binary/multi-class heads, BCE for multi-label, with optional class weights.

    Args:
        task: ``binary``, ``multiclass`` or ``multilabel``.
        weight: per-class weights (``pos_weight`` for multi-label), e.g. from
            :func:`~medvae_monai.data.class_weights`.

    Shapes:
        ``logits``: ``(B, K)``; ``target``: ``(B,)`` or ``(B, 1)`` class indices, ``(B, K)`` for multi-label.
    """

    def __init__(self, task: str = "multiclass", weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.task = task
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, target.float(), pos_weight=self.weight)
        return F.cross_entropy(logits, target.reshape(-1).long(), weight=self.weight)


class SegmentationLoss(DiceCELoss):
    """Dice + cross-entropy on logits ``(B, K, *S)`` against a label map ``(B, 1, *S)`` (MONAI ``DiceCELoss``).

    The Dice term leaves out the background: small lesions would otherwise be outweighed by the
    background's near-perfect Dice, and an all-background prediction is a stable early optimum.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("to_onehot_y", True)
        kwargs.setdefault("softmax", True)
        kwargs.setdefault("include_background", False)
        super().__init__(**kwargs)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits, target.round().long())
