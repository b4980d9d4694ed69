"""Encode a dataset into a latent store (format: :mod:`~medvae_monai.latents.format`), resumably.

An encoding run killed at any moment leaves a store that opens (with the finished shards); running
it again skips the finished shards and produces the same bytes as an uninterrupted run. Under
``torchrun`` (``RANK`` / ``WORLD_SIZE`` set, or a ``torch.distributed`` group initialised) rank
``r`` of ``n`` writes the shards ``k`` with ``k % n == r``: the ranks write disjoint files of one
store, byte-identical to a single-process run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from monai.data import MetaTensor
from monai.utils import convert_to_tensor

from ..data import ImageSource, RecordIntensityd
from ..errors import InputError
from ..image_writers import nifti_header_fields
from ..networks import MedVAE
from ..outputs import contained_path, refuse_shared_output_names
from ..utils import atomic_write, atomic_write_json, ensure_writable_dir
from .codec import EntropyCodec, load_codec
from .coding import TableCoder, check16
from .format import (
    CODECS, DTYPES, FORMAT, SHARD_DIR, STORE_FILE, model_identity, pack_manifest, read_manifest, sha256_file,
    shard_paths,
)
from .reader import LatentStore
from .tiling import tiled_encode

__all__ = ["RecordIntensityd", "encode_dataset"]

logger = logging.getLogger("medvae_monai")


def _relative(path: str | None, root: Path | None) -> str | None:
    if path is None:
        return None
    return Path(os.path.relpath(path, root)).as_posix() if root is not None else str(path)


def _batches(
    items: Sequence[dict], transforms: list, batch_size: int, skip_unreadable: bool = False
) -> Iterator[list[tuple[dict, dict]]]:
    """Preprocessed ``(item, data)`` pairs, grouped into runs of equal shape (so they stack). An item
    that fails to load raises its :class:`InputError`; under ``skip_unreadable``, saying why it is not skipped."""
    batch: list[tuple[dict, dict]] = []
    for item in items:
        d = dict(item)
        try:
            for t in transforms:  # called directly, so our InputError is not wrapped by Compose
                d = t(d)
        except InputError as e:
            if not skip_unreadable:
                raise
            raise InputError(f"{e} (A latent store holds every item it lists: --skip_unreadable skips only "
                             "non-image files here; remove or re-export this one.)") from None
        if batch and (len(batch) == batch_size or batch[0][1]["image"].shape != d["image"].shape):
            yield batch
            batch = []
        batch.append((item, d))
    if batch:
        yield batch


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks (torchrun's environment, or an initialised group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _record(item: dict, d: dict, source: ImageSource) -> dict:
    img = d["image"]
    affine = img.affine if isinstance(img, MetaTensor) else torch.eye(4, dtype=torch.float64)
    affine = torch.as_tensor(affine, dtype=torch.float64)
    sd = img.ndim - 1
    rec = {
        "source": item["source"],
        "split": source.split_of(item),
        "shape": [int(s) for s in img.shape[1:]],
        "channels": int(img.shape[0]),
        "affine": affine.tolist(),
        "spacing": [float(v) for v in torch.linalg.norm(affine[:sd, :sd], dim=0)],
        "intensity": d["intensity"],
        "output_ext": source.output_suffix,
    }
    if isinstance(img, MetaTensor) and (header := nifti_header_fields(img.meta)):
        rec["nifti"] = header  # units and affine space for the decoded NIfTI
    for key in ("label", "class_name"):
        if key in item:
            rec[key] = int(item[key]) if key == "label" else str(item[key])
    if isinstance(item.get("mask"), (str, os.PathLike)):
        rec["mask"] = _relative(str(item["mask"]), source.root)
    return rec


class _FloatShard:
    """Collects float latents of one shard into a flat ``.npy``."""

    def __init__(self, dtype: str) -> None:
        self.dtype, self.arrays, self.offset = np.dtype(dtype), [], 0

    def add(self, z: np.ndarray, rec: dict) -> None:
        z = np.ascontiguousarray(z.astype(self.dtype))
        rec.update(offset=self.offset, latent_shape=list(z.shape), sha256=hashlib.sha256(z.tobytes()).hexdigest())
        self.arrays.append(z.reshape(-1))
        self.offset += z.size

    def write(self, path: Path) -> None:
        data = np.concatenate(self.arrays)
        atomic_write(path, lambda fh: np.save(fh, data, allow_pickle=False))


class _CodedShard:
    """Collects integer latents of one shard into one range-coded stream."""

    def __init__(self, coder: TableCoder) -> None:
        self.coder, self.latents = coder, []

    def add(self, y: np.ndarray, rec: dict) -> None:
        y = self.coder.clamp(y)
        rec.update(latent_shape=list(y.shape), check=check16(y))
        self.latents.append(y)

    def write(self, path: Path) -> None:
        data = self.coder.encode(self.latents)
        atomic_write(path, lambda fh: fh.write(data))


def encode_dataset(
    network: MedVAE | None,
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
    codec: str = "none",
    codec_path: str | os.PathLike | None = None,
    codec_level: int | None = None,
    codec_rdoq_iterations: int = 8,
    skip_unreadable: bool = False,
) -> LatentStore:
    """Encode ``split`` of ``dataset_dir`` into a latent store at ``output_dir`` (resumable).

    Args:
        network: the VAE (any :class:`~medvae_monai.networks.MedVAE` subclass); its posterior mean
            is stored (``codec="none"``). Not used, and may be ``None``, with ``codec="entropy"``.
        dataset_dir: class-folder tree, MedMNIST ``.npz``, MSD datalist, or ``None`` (phantoms), as
            for :class:`~medvae_monai.data.ImageSource`.
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
        codec: ``none`` (float latents of ``network``) or ``entropy`` (range-coded integer latents
            of the entropy codec at ``codec_path``; ``network`` is then not used).
        codec_path: the :class:`~medvae_monai.latents.codec.EntropyCodec` checkpoint.
        codec_level: the codec's rate point, 0 (fewest bytes) to ``num_levels - 1``; default: the
            checkpoint's ``default_level``.
        codec_rdoq_iterations: rate-distortion optimised quantisation of each coded latent
            (:meth:`~medvae_monai.latents.codec.EntropyCodec.rdoq`); 0 rounds only. Same decoder
            and format; each iteration costs one gradient and five trial decodes per image.
        skip_unreadable: skip non-image files in the dataset folder, with one warning and a count.
            An image file that fails to load still stops the run, naming the file: a store holds
            every item it lists, so that its shards and a resumed run agree.

    Returns:
        The finished :class:`LatentStore` (under torchrun: once every rank has finished).

    Raises:
        InputError: bad settings, unreadable items, two sources that decoding would write to one output
            name (``x.png`` and ``x.jpeg``), or another store at ``output_dir``.
    """
    if codec not in CODECS:
        raise InputError(f"codec must be one of {CODECS}, got {codec!r}.")
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    if shard_size < 1 or batch_size < 1:
        raise InputError(f"shard_size and batch_size must be positive, got {shard_size}, {batch_size}.")
    coder_net: EntropyCodec | None = None
    if codec == "entropy":
        if codec_path is None:
            raise InputError("codec 'entropy' needs --codec_path, the entropy codec checkpoint.")
        coder_net = load_codec(codec_path)
        codec_level = coder_net.default_level if codec_level is None else int(codec_level)
        if not 0 <= codec_level < coder_net.num_levels:
            raise InputError(f"codec_level must be in 0..{coder_net.num_levels - 1}, got {codec_level}.")
        if int(codec_rdoq_iterations) < 0:
            raise InputError(f"codec_rdoq_iterations must be 0 or more, got {codec_rdoq_iterations}.")
    elif network is None:
        raise InputError("codec 'none' stores the VAE's latents: pass the network.")
    if network is not None:
        network.eval()
    spatial_dims = spatial_dims or (network.spatial_dims if network is not None else 2)
    in_channels = network.in_channels if network is not None else 1
    f = int(network.downsample_factor) if coder_net is None else coder_net.factor
    if device is None:
        device = next(network.parameters()).device if network is not None else "cpu"
    device = torch.device(device)
    out = ensure_writable_dir(output_dir, dataset_dir)
    source = ImageSource(dataset_dir, spatial_dims, in_channels, None, intensity, ct_window, max_items, skip_unreadable)
    items = source.items(split)
    kind, root = source.kind, source.root
    sources = [it["source"] for it in items]
    sources_abs = frozenset(Path(it["image"]).resolve() for it in items if isinstance(it.get("image"), (str, os.PathLike)))
    refuse_shared_output_names(sources, root)  # decoding names outputs after sources: refuse now what it would
    meta = {
        "format": FORMAT,
        "model": model_identity(network if coder_net is None else coder_net),
        "ckpt_path": None if ckpt_path is None else str(Path(ckpt_path).resolve()),
        "codec": codec,
        "dataset_dir": None if dataset_dir in (None, "") else str(Path(dataset_dir).resolve()),
        "source_root": None if root is None else str(root.resolve()),
        "source_kind": kind,
        "class_names": source.class_names,
        "split": split,
        "spatial_dims": spatial_dims,
        "intensity": intensity,
        "ct_window": ct_window if isinstance(ct_window, str) else [float(v) for v in ct_window],
        "dtype": dtype if coder_net is None else None,
        "downsample_factor": f,
        "num_items": len(items),
        "items_sha256": hashlib.sha256("\n".join(sources).encode()).hexdigest(),
        "shard_size": shard_size,
        "num_shards": -(-len(items) // shard_size),
        "tile_size": tile_size if coder_net is None else None,
        "overlap": overlap if coder_net is None else None,
    }
    if coder_net is not None:
        meta.update(ckpt_path=str(Path(codec_path).resolve()), codec_level=codec_level, tables_sha256=coder_net.tables_sha256)
        if codec_rdoq_iterations:  # stores written before RDOQ existed have no such key (0)
            meta["codec_rdoq_iterations"] = int(codec_rdoq_iterations)
        coder_net.to(device)
    store_file = contained_path(out, STORE_FILE, input_root=root)
    if store_file.exists():
        old = LatentStore(out).meta
        changed = sorted(k for k in meta.keys() | old.keys() if old.get(k) != meta.get(k) and k != "ckpt_path")
        if changed:
            raise InputError(
                f"{out}: already holds a latent store with different {', '.join(changed)} (e.g. {changed[0]}: "
                f"{old.get(changed[0])!r} there, {meta.get(changed[0])!r} now). Choose another --output_dir, or delete "
                "that folder to re-encode."
            )
    else:  # every rank writes the same bytes, atomically: no rank has to wait for another
        atomic_write_json(store_file, meta)
    contained_path(out, SHARD_DIR, input_root=root).mkdir(exist_ok=True)

    transforms = list(source.preprocessing(min_size=f if coder_net is None else 1, record_intensity=True).transforms)
    rank, world = _rank_and_world()
    own_group = world > 1 and dist.is_available() and not dist.is_initialized()
    if own_group:  # plain torchrun: a CPU group, only for the final barrier
        dist.init_process_group("gloo")
    for k in range(rank, meta["num_shards"], world):
        data_file, manifest = (contained_path(out, p.relative_to(out), sources_abs, root) for p in shard_paths(out, k, codec))
        for stale in data_file.parent.glob(f".{k:05d}.*.tmp"):  # temp files of a killed run (this shard only)
            stale.unlink(missing_ok=True)
        if manifest.exists() and data_file.exists() and read_manifest(manifest)["sha256"] == sha256_file(data_file):
            continue
        if manifest.exists():
            logger.warning("%s: does not match its manifest; encoding shard %d again.", data_file, k)
        shard = _FloatShard(dtype) if coder_net is None else _CodedShard(TableCoder(coder_net.tables, codec_level))
        records = []
        for batch in _batches(items[k * shard_size : (k + 1) * shard_size], transforms, batch_size, skip_unreadable):
            images = torch.stack(
                [convert_to_tensor(d["image"], dtype=torch.float32, track_meta=False) for _, d in batch]
            )
            if coder_net is not None:
                latents = coder_net.quantise(images.to(device), codec_level, int(codec_rdoq_iterations)).cpu().numpy()
            elif tile_size is not None and max(images.shape[2:]) > tile_size:
                latents = tiled_encode(network, images, tile_size, overlap, device).numpy()
            else:
                with torch.no_grad():
                    latents = network.encode(images.to(device))[0].float().cpu().numpy()
            for (item, d), z in zip(batch, latents):
                records.append(_record(item, d, source))
                shard.add(z, records[-1])
        shard.write(data_file)
        body = pack_manifest(data_file.name, sha256_file(data_file), records)
        atomic_write(manifest, lambda fh: fh.write(body))
        logger.info("latent store %s: shard %d/%d written (%d items)", out, k + 1, meta["num_shards"], len(records))
    if world > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()
    if own_group:
        dist.destroy_process_group()
    return LatentStore(out)
