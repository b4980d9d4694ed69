"""Targets and label statistics (medvae_monai.data.labels): the task rule, missing or out-of-range
labels, and class weights for imbalanced data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvae_monai.data import class_weights, classification_postprocessing, label_counts, require_targets, target_key
from medvae_monai.errors import InputError


def test_task_rule():
    assert [target_key(t) for t in ("binary", "multiclass", "multilabel", "segmentation")] == [
        "label", "label", "labels", "mask"]
    with pytest.raises(InputError, match="task must be one of"):
        target_key("regression")
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    out = classification_postprocessing("multiclass", 3)({"pred": logits[0], "label": torch.tensor([1])})
    torch.testing.assert_close(out["pred"], torch.softmax(logits[0], 0))
    assert out["label"].tolist() == [0.0, 1.0, 0.0]
    out = classification_postprocessing("multilabel", 3)({"pred": logits[0], "label": torch.tensor([1, 0, 1])})
    torch.testing.assert_close(out["pred"], torch.sigmoid(logits[0]))
    assert out["label"].tolist() == [1, 0, 1]


def test_missing_labels_and_class_count_errors():
    items = [{"image": "a.png", "label": 0, "source": "a.png"}, {"image": "b.png", "source": "b.png"}]
    with pytest.raises(InputError, match=r"1 of 2 images have no 'label', e.g. b.png"):
        label_counts(items, 2)
    with pytest.raises(InputError, match="no 'mask'.*_mask.png"):
        require_targets(items, "mask")
    items = [{"image": f"{i}.png", "label": i % 3} for i in range(9)]
    with pytest.raises(InputError, match="outside 0..1.*--num_classes 3"):
        label_counts(items, 2)
    with pytest.raises(InputError, match="3 classes.*num_classes=4"):
        label_counts(items, 4, class_names=["a", "b", "c"])


def test_class_weights_balance_imbalanced_classes():
    items = [{"label": 0}] * 30 + [{"label": 1}] * 10
    w = class_weights(items, 2)
    torch.testing.assert_close(w, torch.tensor([40 / 60, 40 / 20]))
    # weighted, each class contributes equally to the loss
    assert w[0] * 30 == pytest.approx(w[1] * 10)
    rows = [{"labels": np.array([1, 0])}] * 3 + [{"labels": np.array([1, 1])}]
    torch.testing.assert_close(class_weights(rows, 2, "multilabel"), torch.tensor([0.0, 3.0]))
