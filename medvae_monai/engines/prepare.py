"""``prepare_batch`` for the engines: which batch keys are the network's input and its target."""

from __future__ import annotations

from monai.engines.utils import PrepareBatch

from ..errors import InputError

__all__ = ["ImageTarget"]


class ImageTarget(PrepareBatch):
    """``prepare_batch`` returning ``(batch[image_key], batch[target_key])``, moved to ``device``.

    ``target_key="label"`` for classifiers, ``"mask"`` for segmentation, and the image key itself
    for autoencoders, whose target is their input.

    Raises:
        InputError: the batch has no ``target_key``, naming the keys it has and how to get targets.
    """

    def __init__(self, image_key: str = "image", target_key: str = "label") -> None:
        self.image_key = image_key
        self.target_key = target_key

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        if self.target_key not in batchdata:
            raise InputError(
                f"the batch has no '{self.target_key}' (keys: {sorted(batchdata)}). Use a dataset with labels "
                "(class folders, a MedMNIST .npz, or a datalist with masks) or set the target key."
            )
        x = batchdata[self.image_key].to(device=device, non_blocking=non_blocking, **kwargs)
        if self.target_key == self.image_key:
            return x, x
        return x, batchdata[self.target_key].to(device=device, non_blocking=non_blocking, **kwargs)
