"""Writing anomaly maps and the per-image ``scores.csv``.

- :class:`AnomalyMapd` (postprocessing): the map gets the input's geometry and its per-image score.
- :class:`SaveAnomalyMapd` (postprocessing): one float map per input, named after it, atomically:
  NIfTI with the input's affine for volumes, ``.npy`` in the file's own (row, column) order for
  pictures (MONAI's picture readers transpose to (x, y); the map is transposed back, so
  ``np.load(map)[r, c]`` scores ``PIL.Image.open(input)`` pixel ``[r, c]``).
- :class:`AnomalyScoreWriter` (evaluator handler, observes only): ``scores.csv`` with ``image``,
  ``score``, ``map`` and ``method`` columns, written atomically when the run completes. MONAI's ``CSVSaver``
  writes no header, so the columns could not be named.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Hashable, Mapping

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..errors import describe_source
from ..outputs import OutputNames, contained_path, output_path_for
from ..utils import atomic_write
from .inferer import image_score

__all__ = ["AnomalyMapd", "AnomalyScoreWriter", "SaveAnomalyMapd"]

SCORE_KEY = "anomaly_score"
PATH_KEY = "anomaly_map_path"


class AnomalyMapd(MapTransform):
    """Give each map ``(1, *S)`` the metadata (affine, source) of its image and compute its score.

    Args:
        keys: map keys (an evaluator's ``pred``).
        image_key: the image the map was computed from.
        top_fraction: see :func:`~medvae_monai.anomaly.image_score`.
    """

    def __init__(self, keys, image_key: str = "image", top_fraction: float = 0.01, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.top_fraction = float(top_fraction)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        img = d[self.image_key]
        meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
        for key in self.key_iterator(d):
            m = torch.as_tensor(d[key]).detach().float().cpu()
            if m.shape[1:] != img.shape[1:]:
                raise ValueError(f"anomaly map {tuple(m.shape)} does not match its image {tuple(img.shape)}.")
            d[key] = MetaTensor(m, meta=meta)
            d[f"{key}_{SCORE_KEY}"] = float(image_score(m[None], self.top_fraction))
        return d


class SaveAnomalyMapd(MapTransform):
    """Save each map under ``output_dir``, named after its input (see the module docstring).

    Args:
        keys: map keys, as left by :class:`AnomalyMapd`.
        output_dir: the run's ``--output_dir``.
        root: the folder input names are relative to (``@source.root``); output names keep each
            input's path relative to it.
        picture_files: the inputs are picture files read by MONAI (transpose back to row order);
            ``False`` for volumes and in-memory arrays (MedMNIST), written as stored.
        volume: write NIfTI (``.nii.gz``); else ``.npy``.

    Raises:
        InputError: a map path would leave ``output_dir``, overwrite an input (see
            :func:`~medvae_monai.outputs.output_path_for`) or another input's map.
    """

    def __init__(self, keys, output_dir: str, root: str | os.PathLike | None, picture_files: bool, volume: bool,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = output_dir
        self.root = root
        self.picture_files = bool(picture_files)
        self.volume = bool(volume)
        self.names = OutputNames()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            m = d[key]
            source = describe_source(m)
            path = output_path_for(source, self.output_dir, self.root, ext=".nii.gz" if self.volume else ".npy")
            self.names.claim(path, source)
            arr = m.as_tensor()[0].numpy().astype(np.float32) if isinstance(m, MetaTensor) else np.asarray(m)[0]
            if self.volume:
                affine = np.asarray(m.affine, dtype=np.float64) if isinstance(m, MetaTensor) else np.eye(4)
                payload = gzip.compress(nib.Nifti1Image(arr, affine).to_bytes(), compresslevel=6)
                atomic_write(path, lambda f: f.write(payload))
            else:
                if self.picture_files:
                    arr = arr.T
                buf = io.BytesIO()
                np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
                atomic_write(path, lambda f: f.write(buf.getvalue()))
            d[f"{key}_{PATH_KEY}"] = str(path)
        return d


class AnomalyScoreWriter:
    """Collect ``(image, score, map)`` per image and write ``<output_dir>/scores.csv`` at the end.

    Args:
        output_dir: the run's ``--output_dir``.
        method: the anomaly method, recorded in a ``method`` column.
        key: the map key whose score and path :class:`AnomalyMapd`/:class:`SaveAnomalyMapd` left.
        filename: the CSV's name under ``output_dir``.
    """

    def __init__(self, output_dir: str, method: str = "", key: str = "pred", filename: str = "scores.csv") -> None:
        self.output_dir = output_dir
        self.method = method
        self.key = key
        self.filename = filename
        self.rows: list[tuple[str, float, str]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        for item in out if isinstance(out, list) else [out]:
            m = item[self.key]
            self.rows.append((describe_source(m), item[f"{self.key}_{SCORE_KEY}"], item.get(f"{self.key}_{PATH_KEY}", "")))

    def _write(self, engine: Engine) -> None:
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\n")
        w.writerow(["image", "score", "map", "method"])
        for image, score, path in self.rows:
            w.writerow([image, f"{score:.6g}", os.path.relpath(path, self.output_dir) if path else "", self.method])
        path = contained_path(self.output_dir, self.filename)
        atomic_write(path, lambda f: f.write(text.getvalue()), mode="w")
