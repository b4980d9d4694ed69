"""The latent store's on-disk format, shared by its writer and reader.

A store is a folder; every file is written atomically (temp file, then rename):

- ``store.json``: the store's identity, written before any shard: format version, the model
  (class, hyper-parameters and the SHA-256 of its weights), the checkpoint path, the encoded
  ``dataset_dir``, split, intensity settings, ``codec`` (``none``: float latents of the VAE;
  ``entropy``: range-coded integer latents of :class:`~medvae_monai.latents.codec.EntropyCodec`,
  with that codec's checkpoint hash and rate point), ``dtype``, the planned items (count and a
  hash of their sources), the class names and the shard size.
- ``shards/NNNNN.npy`` (``codec: none``): the float latents of up to ``shard_size`` consecutive
  items, concatenated into one flat array (float32 or float16). Plain ``.npy`` loads with
  ``allow_pickle=False``, can be memory-mapped, and the flat layout holds items of different
  shapes (MSD volumes differ in size).
- ``shards/NNNNN.bin`` (``codec: entropy``): one range-coded stream of the shard's integer
  latents (:class:`~medvae_monai.latents.coding.TableCoder`).
- ``shards/NNNNN.json.gz``: the shard's manifest, written after its data file: the data file's
  SHA-256 and one record per item: ``source`` (path relative to ``dataset_dir``), ``label`` /
  ``class_name`` / ``mask`` where the source has them, ``split``, the original ``shape``,
  ``affine`` and ``spacing``, the ``intensity`` scaling (``a_min, a_max -> b_min, b_max``, so
  decoding restores the original units), ``latent_shape``, and either the float latent's
  ``offset`` and ``sha256`` or the coded latent's 16-bit ``check``. Records are stored by column,
  with fields equal across the shard stored once, and gzipped with a fixed timestamp (byte-
  identical across runs): at 64x64 a coded image is ~200 bytes, so per-item JSON would dominate.
  ``records_sha256`` hashes the records themselves, so an edited source or label is refused
  (manifests written before it have none and are read as they are).

A shard counts as done when its manifest exists and its data file matches the manifest's hash.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError

__all__ = [
    "CODECS", "DTYPES", "FORMAT", "SHARD_DIR", "STORE_FILE", "model_identity", "read_manifest", "sha256_file",
    "pack_manifest", "shard_paths", "weights_sha256",
]

FORMAT = "medvae-latent-store/2"
READABLE_FORMATS = ("medvae-latent-store/1", FORMAT)
STORE_FILE = "store.json"
SHARD_DIR = "shards"
DTYPES = ("float32", "float16")
CODECS = ("none", "entropy")


def weights_sha256(network: torch.nn.Module) -> str:
    """SHA-256 of a network's state dict (names and float32 values, in sorted order)."""
    h = hashlib.sha256()
    for name, value in sorted(network.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def model_identity(network: torch.nn.Module) -> dict[str, Any]:
    """What a store records about a model: class, hyper-parameters and the hash of its weights."""
    hparams = {k: list(v) if isinstance(v, tuple) else v for k, v in network.hparams.items()}
    return {"class": type(network).__name__, "hparams": hparams, "weights_sha256": weights_sha256(network)}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_paths(store: Path, k: int, codec: str) -> tuple[Path, Path]:
    """``(data file, manifest)`` of shard ``k``."""
    stem = store / SHARD_DIR / f"{k:05d}"
    return stem.with_suffix(".bin" if codec == "entropy" else ".npy"), stem.with_suffix(".json.gz")


def pack_manifest(shard: str, sha256: str, records: list[dict]) -> bytes:
    """The gzipped manifest of a shard (records by column; fields equal in every record stored once)."""
    keys = sorted({k for r in records for k in r})
    common = {k: records[0][k] for k in keys if all(k in r and r[k] == records[0][k] for r in records)}
    columns = {k: [r.get(k) for r in records] for k in keys if k not in common}
    body = {"shard": shard, "sha256": sha256, "num_items": len(records), "common": common, "columns": columns}
    body["records_sha256"] = _records_sha256(body)
    return gzip.compress(json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), mtime=0)


def _records_sha256(manifest: dict) -> str:
    """Checksum of a manifest's records (sources, labels, geometry): the shard's own ``sha256``
    covers only its latents, so an edited record would otherwise pass as the item's."""
    records = {k: manifest[k] for k in ("num_items", "common", "columns")}
    return hashlib.sha256(json.dumps(records, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_manifest(path: Path) -> dict:
    """A shard manifest with its ``items`` (one dict per record), from either manifest layout."""
    try:
        m = json.loads(gzip.decompress(path.read_bytes()))
        edited = "records_sha256" in m and m["records_sha256"] != _records_sha256(m)  # stores before it have none
        if "items" not in m:  # column layout
            n, common, columns = m["num_items"], m["common"], m["columns"]
            m["items"] = [
                {**common, **{k: v[i] for k, v in columns.items() if v[i] is not None}} for i in range(n)
            ]
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError) as e:
        raise InputError(
            f"{path}: shard manifest is corrupt ({type(e).__name__}); delete it and run the encoding again with "
            "the same --output_dir to re-create that shard."
        ) from None
    if edited:
        raise InputError(
            f"{path}: the shard manifest's records do not match their checksum (edited or corrupt); delete it "
            "and run the encoding again with the same --output_dir to re-create that shard."
        )
    return m
