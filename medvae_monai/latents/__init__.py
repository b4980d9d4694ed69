"""Latent store (encode a dataset once, train and decode from compact latents) and tiled
encoding/decoding of large images in bounded memory."""

from .cache import cache_latents
from .dataset import LatentDataset
from .store import FORMAT, LatentStore, RecordIntensityd, encode_dataset, model_identity, weights_sha256
from .tiling import tile_starts, tiled_decode, tiled_encode

__all__ = [
    "FORMAT",
    "LatentDataset",
    "LatentStore",
    "cache_latents",
    "RecordIntensityd",
    "encode_dataset",
    "model_identity",
    "tile_starts",
    "tiled_decode",
    "tiled_encode",
    "weights_sha256",
]
