"""Latent store (encode a dataset once, train and decode from compact latents), its entropy codec,
and tiled encoding/decoding of large images in bounded memory."""

from .cache import cache_latents
from .codec import EntropyCodec, load_codec, save_codec
from .dataset import LatentDataset
from .format import FORMAT, model_identity, weights_sha256
from .reader import LatentStore
from .tiling import tile_starts, tiled_decode, tiled_encode
from .writer import RecordIntensityd, encode_dataset

__all__ = [
    "FORMAT",
    "EntropyCodec",
    "LatentDataset",
    "LatentStore",
    "cache_latents",
    "RecordIntensityd",
    "encode_dataset",
    "load_codec",
    "model_identity",
    "save_codec",
    "tile_starts",
    "tiled_decode",
    "tiled_encode",
    "weights_sha256",
]
