"""A sharded on-disk store of VAE latents: encode a dataset once, train and decode from it.

Format (a folder; every file is written atomically, temp file then rename):

- ``store.json``: the store's identity, written before any shard: format version, the model
  (class, hyper-parameters and the SHA-256 of its weights), the checkpoint path, the encoded
  ``dataset_dir``, split, intensity settings, ``dtype``, the planned items (count and a hash of
  their sources), the class names and the shard size.
- ``shards/NNNNN.npy``: the latents of up to ``shard_size`` consecutive items, concatenated into
  one flat array (float32 or float16). Plain ``.npy`` loads with ``allow_pickle=False``, can be
  memory-mapped, needs no extra dependency, and the flat layout holds items of different shapes
  (MSD volumes differ in size).
- ``shards/NNNNN.json.gz``: the shard's manifest, written after its ``.npy``: the ``.npy``'s
  SHA-256 and one record per item: ``source`` (path relative to ``dataset_dir``), ``label`` /
  ``class_name`` / ``mask`` (a path relative to ``dataset_dir``) where the source has them,
  ``split``, the original ``shape``, ``affine`` and ``spacing``, the ``intensity`` scaling
  (``a_min, a_max -> b_min, b_max``, so decoding restores the original units), the latent's
  ``offset``, ``latent_shape`` and ``sha256``. It is gzipped (with a fixed timestamp, so it is
  byte-identical across runs) because per-item JSON would otherwise outweigh a 2D latent.

A shard counts as done when its manifest exists and its ``.npy`` matches the manifest's hash. An
encoding run killed at any moment leaves a store that opens (with the finished shards); running it
again skips the finished shards and produces the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform, ScaleIntensityRanged, ScaleIntensityRangePercentilesd
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import convert_to_tensor
from PIL import Image

from ..data import DatasetInfo, list_items, preprocessing, split_items
from ..data.sources import PICTURE_SUFFIXES, VOLUME_SUFFIXES
from ..errors import InputError
from ..networks import MedVAE
from ..outputs import contained_path, output_path_for
from ..transforms import LoadImageCheckedd
from ..utils import atomic_write, atomic_write_json, ensure_writable_dir, load_weights
from .tiling import tiled_decode, tiled_encode

__all__ = ["FORMAT", "LatentStore", "RecordIntensityd", "encode_dataset", "model_identity", "weights_sha256"]

logger = logging.getLogger("medvae_monai")

FORMAT = "medvae-latent-store/1"
STORE_FILE = "store.json"
SHARD_DIR = "shards"
DTYPES = ("float32", "float16")


def weights_sha256(network: torch.nn.Module) -> str:
    """SHA-256 of a network's state dict (names and float32 values, in sorted order)."""
    h = hashlib.sha256()
    for name, value in sorted(network.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def model_identity(network: MedVAE) -> dict[str, Any]:
    """What a store records about the model: hyper-parameters and the hash of its weights."""
    hparams = {k: list(v) if isinstance(v, tuple) else v for k, v in network.hparams.items()}
    return {"class": "MedVAE", "hparams": hparams, "weights_sha256": weights_sha256(network)}


class RecordIntensityd(MapTransform):
    """Record, under ``intensity``, the linear map the next intensity transform applies to ``image``.

    Inserted just before MONAI's ``ScaleIntensityRanged`` (and :class:`~medvae_monai.transforms.CTWindowd`)
    or ``ScaleIntensityRangePercentilesd``, it stores ``{a_min, a_max, b_min, b_max, clip}``, with the
    percentiles evaluated on this image, so a decoder can map ``[b_min, b_max]`` back to the
    original units. With no such transform the map is the identity.

    Args:
        scaler: the intensity transform that follows, or ``None``.
        key: image key.
    """

    def __init__(self, scaler: MapTransform | None, key: str = "image") -> None:
        super().__init__(key)
        self.scaler = None if scaler is None else scaler.scaler

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        s = self.scaler
        if s is None:
            d["intensity"] = {"a_min": 0.0, "a_max": 1.0, "b_min": 0.0, "b_max": 1.0, "clip": False}
            return d
        if hasattr(s, "lower"):  # percentiles, computed exactly as ScaleIntensityRangePercentiles does
            img = d[self.first_key(d)]
            a_min, a_max = float(percentile(img, s.lower)), float(percentile(img, s.upper))
        else:
            a_min, a_max = float(s.a_min), float(s.a_max)
        d["intensity"] = {
            "a_min": a_min,
            "a_max": a_max,
            "b_min": float(s.b_min),
            "b_max": float(s.b_max),
            "clip": bool(s.clip),
        }
        return d


def _recording_chain(chain: Compose) -> list:
    """The transforms of ``chain`` with a :class:`RecordIntensityd` before its intensity scaling."""
    xs = list(chain.transforms)
    for i, t in enumerate(xs):
        if isinstance(t, (ScaleIntensityRanged, ScaleIntensityRangePercentilesd)):
            return xs[:i] + [RecordIntensityd(t)] + xs[i:]
    return xs + [RecordIntensityd(None)]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _output_ext(source: str, kind: str) -> str:
    """``.png`` for picture and MedMNIST sources, ``.nii.gz`` for volumes and phantoms."""
    if kind == "medmnist" or source.lower().endswith(PICTURE_SUFFIXES):
        return ".png"
    return ".nii.gz"


def _relative(path: str | None, root: Path | None) -> str | None:
    if path is None:
        return None
    return Path(os.path.relpath(path, root)).as_posix() if root is not None else str(path)


def _plan(
    dataset_dir: str | os.PathLike | None, split: str, spatial_dims: int, max_items: int | None
) -> tuple[list[dict], DatasetInfo, dict[str, str]]:
    """The items to encode, the source's description and, per source, its train/val/test split."""
    items, info = list_items(dataset_dir, split, spatial_dims, max_items=max_items)
    splits: dict[str, str] = {}
    if info["kind"] == "medmnist":  # official splits, one array set each
        for s in ("train", "val", "test"):
            splits.update({it["source"]: s for it in list_items(dataset_dir, s)[0]})
    else:
        everything = items if split == "all" and max_items is None else list_items(dataset_dir, "all", spatial_dims)[0]
        for s in ("train", "val", "test"):
            splits.update({it["source"]: s for it in split_items(everything, s)})
    return items, info, splits


def _batches(items: Sequence[dict], transforms: list, batch_size: int) -> Iterator[list[tuple[dict, dict]]]:
    """Preprocessed ``(item, data)`` pairs, grouped into runs of equal shape (so they stack)."""
    batch: list[tuple[dict, dict]] = []
    for item in items:
        d = dict(item)
        for t in transforms:  # called directly, so our InputError is not wrapped by Compose
            d = t(d)
        if batch and (len(batch) == batch_size or batch[0][1]["image"].shape != d["image"].shape):
            yield batch
            batch = []
        batch.append((item, d))
    if batch:
        yield batch


@torch.no_grad()
def _encode_batch(
    network: MedVAE, images: torch.Tensor, device: torch.device, tile_size: int | None, overlap: int
) -> np.ndarray:
    if tile_size is not None and max(images.shape[2:]) > tile_size:
        return tiled_encode(network, images, tile_size, overlap, device).numpy()
    return network.encode(images.to(device))[0].float().cpu().numpy()


def encode_dataset(
    network: MedVAE,
    dataset_dir: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    split: str = "all",
    spatial_dims: int | None = None,
    intensity: str = "auto",
    ct_window: str | Sequence[float] = "full",
    dtype: str = "float32",
    shard_size: int = 1024,
    batch_size: int = 32,
    max_items: int | None = None,
    tile_size: int | None = None,
    overlap: int = 32,
    device: str | torch.device | None = None,
    ckpt_path: str | os.PathLike | None = None,
) -> LatentStore:
    """Encode ``split`` of ``dataset_dir`` into a latent store at ``output_dir`` (resumable).

    Args:
        network: the VAE (any :class:`~medvae_monai.networks.MedVAE` subclass); its posterior mean
            is stored.
        dataset_dir: class-folder tree, MedMNIST ``.npz``, MSD datalist, or ``None`` (phantoms), as
            for :func:`~medvae_monai.data.list_items`.
        output_dir: the store folder. If it holds a store of the same model and settings, finished
            shards are kept and the rest encoded; a different store there is refused.
        split: which items to encode; each record also keeps the train/val/test split of its item.
        spatial_dims: 2 or 3; defaults to the network's.
        intensity: intensity mode of :func:`~medvae_monai.data.preprocessing`.
        ct_window: CT window for ``intensity="ct"`` and phantoms.
        dtype: ``float32`` or ``float16`` (half the bytes; rounding is below the VAE's error).
        shard_size: items per shard; a killed run loses at most one shard of work.
        batch_size: items encoded together (consecutive items of equal shape).
        max_items: an evenly spaced subset, for quick runs.
        tile_size: encode images larger than this (image voxels) through overlapping tiles
            (:func:`~medvae_monai.latents.tiling.tiled_encode`), bounding memory; ``None``: never.
        overlap: tile overlap in image voxels.
        device: where the network runs; defaults to the network's device.
        ckpt_path: the checkpoint the network's weights came from, recorded for decoding.

    Returns:
        The finished :class:`LatentStore`.
    """
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    if shard_size < 1 or batch_size < 1:
        raise InputError(f"shard_size and batch_size must be positive, got {shard_size}, {batch_size}.")
    spatial_dims = spatial_dims or network.spatial_dims
    f = int(network.downsample_factor)
    device = torch.device(device) if device is not None else next(network.parameters()).device
    network.eval()
    out = ensure_writable_dir(output_dir)
    items, info, splits = _plan(dataset_dir, split, spatial_dims, max_items)
    kind = info["kind"]
    root = None if kind in ("phantom", "medmnist") else Path(dataset_dir)
    if root is not None and root.is_file():  # a datalist .json: paths are relative to its folder
        root = root.parent
    sources = [it["source"] for it in items]
    sources_abs = frozenset(Path(it["image"]).resolve() for it in items if isinstance(it.get("image"), (str, os.PathLike)))
    meta = {
        "format": FORMAT,
        "model": model_identity(network),
        "ckpt_path": None if ckpt_path is None else str(Path(ckpt_path).resolve()),
        "dataset_dir": None if dataset_dir in (None, "") else str(Path(dataset_dir).resolve()),
        "source_root": None if root is None else str(root.resolve()),
        "source_kind": kind,
        "class_names": list(info.get("class_names") or []),
        "split": split,
        "spatial_dims": spatial_dims,
        "intensity": intensity,
        "ct_window": ct_window if isinstance(ct_window, str) else [float(v) for v in ct_window],
        "dtype": dtype,
        "downsample_factor": f,
        "num_items": len(items),
        "items_sha256": hashlib.sha256("\n".join(sources).encode()).hexdigest(),
        "shard_size": shard_size,
        "num_shards": -(-len(items) // shard_size),
        "tile_size": tile_size,
        "overlap": overlap,
    }
    store_file = contained_path(out, STORE_FILE, input_root=root)
    if store_file.exists():
        old = LatentStore(out).meta
        changed = sorted(k for k in meta if old.get(k) != meta[k] and k != "ckpt_path")
        if changed:
            raise InputError(
                f"{out}: already holds a latent store with different {', '.join(changed)} (e.g. {changed[0]}: "
                f"{old.get(changed[0])!r} there, {meta[changed[0]]!r} now). Choose another --output_dir, or delete "
                "that folder to re-encode."
            )
    else:
        atomic_write_json(store_file, meta)
    shard_dir = contained_path(out, SHARD_DIR, input_root=root)
    shard_dir.mkdir(exist_ok=True)
    for stale in shard_dir.glob(".*.tmp"):  # temp files of a killed run
        stale.unlink(missing_ok=True)

    transforms = _recording_chain(
        preprocessing(kind, items, spatial_dims, network.in_channels, None, intensity, ct_window, min_size=f)
    )
    np_dtype = np.dtype(dtype)
    for k in range(meta["num_shards"]):
        npy, manifest = (contained_path(out, f"{SHARD_DIR}/{k:05d}{ext}", sources_abs, root) for ext in (".npy", ".json.gz"))
        if manifest.exists() and npy.exists() and _read_manifest(manifest)["sha256"] == _sha256_file(npy):
            continue
        if manifest.exists():
            logger.warning("%s: does not match its manifest; encoding shard %d again.", npy, k)
        chunk = items[k * shard_size : (k + 1) * shard_size]
        records, arrays, offset = [], [], 0
        for batch in _batches(chunk, transforms, batch_size):
            images = torch.stack(
                [convert_to_tensor(d["image"], dtype=torch.float32, track_meta=False) for _, d in batch]
            )
            latents = _encode_batch(network, images, device, tile_size, overlap).astype(np_dtype)
            for (item, d), z in zip(batch, latents):
                z = np.ascontiguousarray(z)
                records.append(_record(item, d, z, offset, kind, root, splits))
                arrays.append(z.reshape(-1))
                offset += z.size
        data = np.concatenate(arrays)
        atomic_write(npy, lambda fh: np.save(fh, data, allow_pickle=False))
        shard_meta = {"shard": npy.name, "sha256": _sha256_file(npy), "items": records}
        atomic_write(
            manifest, lambda fh: fh.write(gzip.compress(json.dumps(shard_meta, sort_keys=True).encode(), mtime=0))
        )
        logger.info("latent store %s: shard %d/%d written (%d items)", out, k + 1, meta["num_shards"], len(records))
    return LatentStore(out)


def _record(item: dict, d: dict, z: np.ndarray, offset: int, kind: str, root: Path | None, splits: dict) -> dict:
    img = d["image"]
    affine = img.affine if isinstance(img, MetaTensor) else torch.eye(4, dtype=torch.float64)
    affine = torch.as_tensor(affine, dtype=torch.float64)
    sd = img.ndim - 1
    rec = {
        "source": item["source"],
        "split": splits.get(item["source"]),
        "shape": [int(s) for s in img.shape[1:]],
        "channels": int(img.shape[0]),
        "affine": affine.tolist(),
        "spacing": [float(v) for v in torch.linalg.norm(affine[:sd, :sd], dim=0)],
        "intensity": d["intensity"],
        "output_ext": _output_ext(item["source"], kind),
        "offset": int(offset),
        "latent_shape": list(z.shape),
        "sha256": hashlib.sha256(z.tobytes()).hexdigest(),
    }
    for key in ("label", "class_name"):
        if key in item:
            rec[key] = int(item[key]) if key == "label" else str(item[key])
    if isinstance(item.get("mask"), (str, os.PathLike)):
        rec["mask"] = _relative(str(item["mask"]), root)
    return rec


def _read_manifest(path: Path) -> dict:
    try:
        return json.loads(gzip.decompress(path.read_bytes()))
    except (OSError, EOFError, ValueError) as e:
        raise InputError(
            f"{path}: shard manifest is corrupt ({type(e).__name__}); delete it and run the encoding again with "
            "the same --output_dir to re-create that shard."
        ) from None


def _invert_intensity(x: torch.Tensor, p: dict) -> torch.Tensor:
    """Map ``[b_min, b_max]`` back to ``[a_min, a_max]`` (the inverse of ScaleIntensityRange)."""
    if p["a_max"] == p["a_min"]:
        return x - p["b_min"] + p["a_min"]
    return (x - p["b_min"]) * ((p["a_max"] - p["a_min"]) / (p["b_max"] - p["b_min"])) + p["a_min"]


class LatentStore:
    """Read access to a store written by :func:`encode_dataset`.

    Shards load lazily (and are then cached); each shard's SHA-256 is checked when it is first
    loaded and each item's when it is read, so corruption raises :class:`InputError` naming the
    shard instead of returning wrong latents.

    Args:
        path: the store folder.

    Attributes:
        meta: the contents of ``store.json``.
        records: one dict per finished item, in encoding order (see the module docstring).
        complete: whether every planned shard is present.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        store_file = self.path / STORE_FILE
        if not store_file.is_file():
            raise InputError(
                f"{self.path}: not a latent store (no {STORE_FILE}); create one with encode_dataset or the "
                "bundle's 'encoding' run, and pass its folder."
            )
        try:
            self.meta = json.loads(store_file.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{store_file}: cannot be read ({e}); the store is damaged, encode it again.") from None
        if self.meta.get("format") != FORMAT:
            raise InputError(f"{store_file}: format {self.meta.get('format')!r} is not {FORMAT!r}; encode it again.")
        self.records: list[dict] = []
        self._shard_of: list[tuple[int, Path]] = []
        self._shard_sha: dict[Path, str] = {}
        self.num_shards_done = 0
        for k in range(self.meta["num_shards"]):
            manifest = self.path / SHARD_DIR / f"{k:05d}.json.gz"
            if not manifest.exists():
                continue
            sm = _read_manifest(manifest)
            npy = self.path / SHARD_DIR / sm["shard"]
            self._shard_sha[npy] = sm["sha256"]
            self.records += sm["items"]
            self._shard_of += [(k, npy)] * len(sm["items"])
            self.num_shards_done += 1
        self.complete = self.num_shards_done == self.meta["num_shards"]
        self._cache: dict[Path, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{self.num_shards_done}/{self.meta['num_shards']} shards"
        return f"LatentStore({str(self.path)!r}, {len(self)} items, {self.meta['dtype']}, {state})"

    def _shard(self, npy: Path) -> np.ndarray:
        if npy not in self._cache:
            if not npy.is_file() or _sha256_file(npy) != self._shard_sha[npy]:
                raise InputError(
                    f"{npy}: latent shard is missing or corrupt (its SHA-256 does not match the manifest). Run the "
                    "encoding again with the same --output_dir: it re-encodes shards that fail their checksum."
                )
            self._cache[npy] = np.load(npy, allow_pickle=False)
        return self._cache[npy]

    def latent(self, index: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Latent of item ``index``, ``(latent_channels, *L)``, checked against its SHA-256."""
        rec = self.records[index]
        npy = self._shard_of[index][1]
        n = int(np.prod(rec["latent_shape"]))
        z = self._shard(npy)[rec["offset"] : rec["offset"] + n]
        if hashlib.sha256(z.tobytes()).hexdigest() != rec["sha256"]:
            raise InputError(f"{npy}: item {rec['source']!r} fails its checksum; run the encoding again to repair it.")
        return torch.from_numpy(z.reshape(rec["latent_shape"]).astype(np.float32)).to(dtype)

    def verify(self) -> int:
        """Check every shard and item checksum; return the number of items checked."""
        for i in range(len(self)):
            self.latent(i)
        return len(self)

    def load_network(self, ckpt_path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> MedVAE:
        """The VAE that encoded this store, with weights from ``ckpt_path`` (default: the recorded one).

        Raises:
            InputError: the checkpoint's weights are not the ones the store was encoded with.
        """
        ckpt = ckpt_path or self.meta.get("ckpt_path")
        if not ckpt:
            raise InputError(
                f"{self.path}: the store records no checkpoint; pass the encoding weights with --ckpt_path."
            )
        network = load_weights(MedVAE(**self.meta["model"]["hparams"]), ckpt).to(device).eval()
        want = self.meta["model"]["weights_sha256"]
        if weights_sha256(network) != want:
            raise InputError(
                f"{ckpt}: these weights are not the ones {self.path} was encoded with (weights SHA-256 "
                f"{want[:12]}...); pass the encoding checkpoint with --ckpt_path."
            )
        return network

    @torch.no_grad()
    def decode(self, index: int, network: MedVAE, device: str | torch.device | None = None) -> MetaTensor:
        """Decode item ``index`` to ``(C, *shape)`` in its original intensity units, with its affine."""
        rec = self.records[index]
        z = self.latent(index)[None]
        device = torch.device(device) if device is not None else next(network.parameters()).device
        tile, overlap, f = self.meta["tile_size"], self.meta["overlap"], self.meta["downsample_factor"]
        if tile is not None and max(rec["shape"]) > tile:
            x = tiled_decode(network, z, tile // f, overlap // f, rec["shape"], device)[0]
        else:
            x = network.decode(z.to(device), spatial_size=rec["shape"])[0].float().cpu()
        x = _invert_intensity(x, rec["intensity"])
        return MetaTensor(
            x, affine=torch.tensor(rec["affine"], dtype=torch.float64), meta={"filename_or_obj": rec["source"]}
        )

    @functools.cached_property
    def _sources(self) -> frozenset[Path]:
        """Where the items' source files are (resolved), which decoding must not overwrite; none for phantoms/MedMNIST."""
        root = self.meta.get("source_root")
        return frozenset(Path(root, r["source"]).resolve() for r in self.records) if root else frozenset()

    def output_path(self, index: int, output_dir: str | os.PathLike = ".") -> Path:
        """Item ``index``'s decoded file under ``output_dir``: its source's safe relative name with
        ``.png`` or ``.nii.gz`` (see :func:`~medvae_monai.outputs.output_path_for`).

        Raises:
            InputError: the path would resolve outside ``output_dir`` or onto an encoded source.
        """
        rec = self.records[index]
        return output_path_for(rec["source"], output_dir, self.meta.get("source_root"), ext=rec["output_ext"], inputs=self._sources)

    def write_decoded(self, index: int, image: MetaTensor, output_dir: str | os.PathLike) -> Path:
        """Atomically write a decoded item as PNG (uint8) or NIfTI (float32, original affine).

        Raises:
            InputError: the output path is not contained (see :meth:`output_path`).
        """
        rec = self.records[index]
        path = self.output_path(index, output_dir)
        arr = image.detach().cpu().numpy()
        if rec["output_ext"] == ".png":
            pic = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
            if self.meta["source_kind"] == "folder":  # MONAI's PIL reader puts x (width) first
                pic = np.swapaxes(pic, 1, 2)
            pic = pic[0] if pic.shape[0] == 1 else np.moveaxis(pic, 0, -1)
            buf = io.BytesIO()
            Image.fromarray(pic).save(buf, format="PNG")
            return atomic_write(path, lambda fh: fh.write(buf.getvalue()))
        vol = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
        nii = nib.Nifti1Image(vol.astype(np.float32), np.asarray(rec["affine"], dtype=np.float64))
        nii.header.set_xyzt_units("mm")
        return atomic_write(path, lambda fh: fh.write(gzip.compress(nii.to_bytes(), mtime=0)))

    def decode_to(
        self,
        output_dir: str | os.PathLike,
        network: MedVAE,
        indices: Sequence[int] | None = None,
        device: str | torch.device | None = None,
    ) -> list[Path]:
        """Decode items (default: all) into ``output_dir``, each named after its source (see :meth:`output_path`).

        Every output path is checked before the first is written, so a refused store writes nothing.
        """
        ensure_writable_dir(output_dir)
        network.eval()
        idx = range(len(self)) if indices is None else indices
        paths = [self.output_path(i, output_dir) for i in idx]
        seen: set[Path] = set()
        for dup in paths:
            if dup in seen:
                raise InputError(
                    f"{dup}: two sources of {self.path} map to this one output name; decode them into separate --output_dir."
                )
            seen.add(dup)
        return [self.write_decoded(i, self.decode(i, network, device), output_dir) for i in idx]

    def mask(self, index: int) -> MetaTensor:
        """The mask of item ``index`` at image resolution, ``(1, *shape)``, loaded from its reference."""
        rec = self.records[index]
        if "mask" not in rec or self.meta.get("source_root") is None:
            raise InputError(f"{self.path}: item {rec['source']!r} has no mask reference; its source has no masks.")
        path = Path(self.meta["source_root"]) / rec["mask"]
        return LoadImageCheckedd("mask", image_only=True, ensure_channel_first=True)({"mask": str(path)})["mask"]
