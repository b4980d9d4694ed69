"""Entropy coding of integer latents with ``constriction``'s range coder and integer tables.

:class:`TableCoder` codes the integer latents of many items into ONE range-coded stream (a shard),
each symbol with the fixed categorical model of its channel, built from the integer frequency
tables of :meth:`~medvae_monai.latents.codec.EntropyCodec.integer_tables` (frequencies summing
to ``2**24``, exactly representable as float64, so ``constriction``'s 24-bit quantisation reproduces
them and a stream decodes bit-exactly in any process). One stream per shard, rather than one per
item, because ``constriction`` emits 32-bit words: per-item streams would pay up to 8 bytes each,
5% of a 150-byte MedNIST image.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import constriction
import numpy as np
import torch

__all__ = ["TableCoder", "check16", "table_bounds"]


def check16(y: np.ndarray) -> int:
    """16-bit check of an integer latent (the low half of its CRC-32), to name a damaged item."""
    return zlib.crc32(np.ascontiguousarray(y, dtype=np.int32).tobytes()) & 0xFFFF


def table_bounds(tables: dict[str, torch.Tensor], level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)``, each ``(M,)`` int64: the first and last symbol of each channel's table at
    ``level``; coded latents are clamped into them (by :meth:`TableCoder.clamp` and RDOQ alike)."""
    lo = tables["lo"][level]
    return lo, lo + tables["length"][level] - 1


class TableCoder:
    """Code integer latents ``(M, *L)`` of one rate point with its integer tables.

    Args:
        tables: ``{"lo", "length", "offset": (K, M), "freq": (total,)}`` int64 tensors.
        level: the rate point ``k``.

    Symbols outside a channel's table are clamped to its ends (the tables leave out at most
    1e-9 of probability on each side), so callers should code :meth:`clamp`'s output.
    """

    precision = 24

    def __init__(self, tables: dict[str, torch.Tensor], level: int) -> None:
        t = {k: v.numpy().astype(np.int64) for k, v in tables.items()}
        self.lo, self.length = t["lo"][level], t["length"][level]
        self.hi = table_bounds(tables, level)[1].numpy()
        self.freqs = [t["freq"][o : o + n] for o, n in zip(t["offset"][level], self.length)]
        self.log2p = [np.log2(f / 2.0**self.precision) for f in self.freqs]
        # perfect=False: a deterministic, fast quantisation that keeps frequencies that are
        # already integers summing to 2**24 unchanged
        self.models = [
            constriction.stream.model.Categorical(f.astype(np.float64) / 2.0**self.precision, perfect=False)
            for f in self.freqs
        ]

    def clamp(self, y: np.ndarray) -> np.ndarray:
        """``y`` ``(M, *L)`` rounded values clamped into each channel's table, int32."""
        shape = (-1,) + (1,) * (y.ndim - 1)
        return np.clip(y, self.lo.reshape(shape), self.hi.reshape(shape)).astype(np.int32)

    def bits(self, y: np.ndarray) -> float:
        """Information content of a clamped latent under the tables, in bits (the rate estimate)."""
        return float(sum(self.log2p[c][(y[c] - self.lo[c]).ravel()].sum() for c in range(len(self.lo)))) * -1.0

    def encode(self, latents: Sequence[np.ndarray]) -> bytes:
        """One stream holding every latent in order (clamped latents, int32 ``(M, *L)``)."""
        enc = constriction.stream.queue.RangeEncoder()
        for y in latents:
            for c, model in enumerate(self.models):
                enc.encode((y[c].ravel() - self.lo[c]).astype(np.int32), model)
        return enc.get_compressed().astype("<u4").tobytes()

    def decode(self, data: bytes, shapes: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """The latents of a stream, given their shapes; items decode in order.

        Raises:
            ValueError: the stream's length is not whole 32-bit words.
        """
        dec = self.decoder(data)
        return [self.decode_next(dec, s) for s in shapes]

    @staticmethod
    def decoder(data: bytes) -> constriction.stream.queue.RangeDecoder:
        """A range decoder over a stream written by :meth:`encode`.

        Raises:
            ValueError: the stream's length is not whole 32-bit words.
        """
        if len(data) % 4:
            raise ValueError(f"stream of {len(data)} bytes is not a whole number of 32-bit words")
        return constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))

    def decode_next(self, dec, shape: Sequence[int]) -> np.ndarray:
        """Decode one latent of ``shape`` from an open ``RangeDecoder``."""
        n = int(np.prod(shape[1:]))
        return np.stack([dec.decode(m, n) + lo for m, lo in zip(self.models, self.lo)]).reshape(shape).astype(np.int32)
