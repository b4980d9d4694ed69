"""Read a latent store (format: :mod:`~medvae_monai.latents.format`): latents, checks, decoding."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from ..errors import InputError
from ..networks import MedVAE
from ..transforms import LoadImageCheckedd, RestoreUnits
from ..utils import load_weights
from .codec import EntropyCodec, load_codec
from .coding import TableCoder, check16
from . import export
from .format import READABLE_FORMATS, STORE_FILE, read_manifest, sha256_file, shard_paths, weights_sha256
from .tiling import tiled_decode

__all__ = ["LatentStore"]


class LatentStore:
    """Read access to a store written by :func:`~medvae_monai.latents.encode_dataset`.

    Shards load lazily (and are then cached); each shard's SHA-256 is checked when it is first
    loaded, and each item's checksum (float) or 16-bit check (coded) when it is read, so
    corruption raises :class:`InputError` naming the shard and the item instead of returning
    wrong latents. A coded store (``codec: entropy``) needs its codec checkpoint (the recorded
    one, or ``codec_path``) for the integer tables.

    Args:
        path: the store folder.
        codec_path: the entropy codec checkpoint, if not the one recorded in the store.

    Attributes:
        meta: the contents of ``store.json``.
        records: one dict per finished item, in encoding order (see the format).
        complete: whether every planned shard is present.
    """

    def __init__(self, path: str | os.PathLike, codec_path: str | os.PathLike | None = None) -> None:
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
        if self.meta.get("format") not in READABLE_FORMATS:
            raise InputError(f"{store_file}: format {self.meta.get('format')!r} is not {READABLE_FORMATS[-1]!r}; encode it again.")
        self.codec = self.meta.get("codec", "none")
        self._codec_path = codec_path
        self._codec_net: EntropyCodec | None = None
        self.records: list[dict] = []
        self._shard_of: list[tuple[int, Path]] = []
        self._shard_sha: dict[Path, str] = {}
        self._first: dict[Path, int] = {}
        self.num_shards_done = 0
        for k in range(self.meta["num_shards"]):
            _, manifest = shard_paths(self.path, k, self.codec)
            if not manifest.exists():
                continue
            sm = read_manifest(manifest)
            data_file = manifest.parent / sm["shard"]
            self._shard_sha[data_file] = sm["sha256"]
            self._first[data_file] = len(self.records)
            self.records += sm["items"]
            self._shard_of += [(k, data_file)] * len(sm["items"])
            self.num_shards_done += 1
        self.complete = self.num_shards_done == self.meta["num_shards"]
        self._cache: dict[Path, np.ndarray | list[np.ndarray]] = {}

    def require_complete(self) -> LatentStore:
        """This store, if every planned shard is present.

        Raises:
            InputError: shards lack their manifest (an interrupted or damaged encoding), naming them.
        """
        if not self.complete:
            missing = [shard_paths(self.path, k, self.codec)[1].name for k in range(self.meta["num_shards"])
                       if not shard_paths(self.path, k, self.codec)[1].exists()]
            raise InputError(
                f"{self.path}: holds {len(self)} of {self.meta['num_items']} items; shard manifest(s) {', '.join(missing[:5])}"
                f"{' ...' if len(missing) > 5 else ''} missing (an interrupted or damaged encoding). Run the same encoding "
                "again with this folder as --output_dir: it finishes or repairs the store."
            )
        return self

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{self.num_shards_done}/{self.meta['num_shards']} shards"
        form = self.meta["dtype"] if self.codec == "none" else f"entropy-coded, level {self.meta['codec_level']}"
        return f"LatentStore({str(self.path)!r}, {len(self)} items, {form}, {state})"

    def files(self) -> list[Path]:
        """Every file of the store (``store.json``, data files and manifests), for size accounting."""
        return sorted(p for p in self.path.rglob("*") if p.is_file() and not p.name.startswith("."))

    def nbytes(self) -> int:
        """Bytes of every file of the store."""
        return sum(p.stat().st_size for p in self.files())

    def codec_network(self) -> EntropyCodec:
        """The entropy codec of a coded store (loaded once), checked against the recorded hashes."""
        if self._codec_net is None:
            codec = load_codec(self._codec_path or self.meta["ckpt_path"])
            if weights_sha256(codec) != self.meta["model"]["weights_sha256"] or codec.tables_sha256 != self.meta["tables_sha256"]:
                raise InputError(
                    f"{self._codec_path or self.meta['ckpt_path']}: this codec is not the one {self.path} was encoded "
                    "with; pass the encoding codec with --codec_path."
                )
            self._codec_net = codec
        return self._codec_net

    def _check_shard(self, data_file: Path) -> bool:
        return data_file.is_file() and sha256_file(data_file) == self._shard_sha[data_file]

    def _shard(self, data_file: Path) -> np.ndarray | list[np.ndarray]:
        if data_file in self._cache:
            return self._cache[data_file]
        intact = self._check_shard(data_file)
        if self.codec == "entropy":
            self._cache[data_file] = self._decode_stream(data_file, intact)
        elif not intact:
            raise InputError(
                f"{data_file}: latent shard is missing or corrupt (its SHA-256 does not match the manifest). Run the "
                "encoding again with the same --output_dir: it re-encodes shards that fail their checksum."
            )
        else:
            self._cache[data_file] = np.load(data_file, allow_pickle=False)
        return self._cache[data_file]

    def _decode_stream(self, data_file: Path, intact: bool) -> list[np.ndarray]:
        """Decode a coded shard item by item; a damaged stream raises naming its first bad item."""
        first = self._first[data_file]
        recs = [r for r, (_, f) in zip(self.records, self._shard_of) if f == data_file]
        coder = TableCoder(self.codec_network().tables, self.meta["codec_level"])
        out: list[np.ndarray] = []
        try:
            stream = coder.decoder(data_file.read_bytes())
            for rec in recs:
                y = coder.decode_next(stream, rec["latent_shape"])
                if check16(y) != rec["check"]:
                    break
                out.append(y)
        except Exception:  # a missing file, or constriction refusing a stream that ends early
            pass
        if len(out) == len(recs) and intact:
            return out
        repair = "Run the encoding again with the same --output_dir: it re-encodes shards that fail their checksum."
        if len(out) == len(recs):  # every item decodes, yet the file is not the one the manifest hashed
            raise InputError(f"{data_file}: its {len(recs)} items decode, but the file does not match its manifest's "
                             f"SHA-256 (bytes added or changed after the last item). {repair}")
        raise InputError(
            f"{data_file}: item {recs[len(out)]['source']!r} (item {first + len(out)} of the store) fails its check: "
            f"the bitstream is missing, truncated or corrupt. {repair}"
        )

    def latent(self, index: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Latent of item ``index``, ``(latent_channels, *L)``, checked.

        Float stores give the stored posterior mean; coded stores give the decoded, quantised
        latent times the rate point's inverse gain (the codec's synthesis input).
        """
        if self.codec == "entropy":
            y = torch.from_numpy(self.quantised(index)).float()
            flat = y.reshape(1, y.shape[0], y.shape[1], -1)
            return self.codec_network().dequantise(flat, self.meta["codec_level"]).reshape(y.shape).detach().to(dtype)
        rec = self.records[index]
        npy = self._shard_of[index][1]
        n = int(np.prod(rec["latent_shape"]))
        z = self._shard(npy)[rec["offset"] : rec["offset"] + n]
        if hashlib.sha256(z.tobytes()).hexdigest() != rec["sha256"]:
            raise InputError(f"{npy}: item {rec['source']!r} fails its checksum; run the encoding again to repair it.")
        return torch.from_numpy(z.reshape(rec["latent_shape"]).astype(np.float32)).to(dtype)

    def quantised(self, index: int) -> np.ndarray:
        """The integer latent of item ``index`` of a coded store, int32 ``(M, *L)``, exactly as encoded."""
        if self.codec != "entropy":
            raise InputError(f"{self.path}: holds float latents (codec 'none'); only coded stores have integer latents.")
        data_file = self._shard_of[index][1]
        return self._shard(data_file)[index - self._first[data_file]]

    def verify(self) -> int:
        """Check every shard and item; return the number of items checked."""
        for i in range(len(self)):
            self.latent(i) if self.codec == "none" else self.quantised(i)
        return len(self)

    def load_network(
        self,
        ckpt_path: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        search_dirs: Sequence[str | os.PathLike] = (),
    ) -> torch.nn.Module:
        """The network that decodes this store: the VAE (float) or the entropy codec (coded),
        with weights from ``ckpt_path`` (default: the recorded checkpoint).

        Args:
            search_dirs: where to look for a file of the recorded checkpoint's name when the
                recorded path does not exist (a store copied to another machine records the
                encoding machine's absolute path); ``decode.yaml`` passes the bundle's ``models/``.
                The weights must still hash to the recorded ones.

        Raises:
            InputError: the checkpoint is missing, or its weights are not the ones the store was
                encoded with.
        """
        if self.codec == "entropy":
            chosen = ckpt_path or self._codec_path or self._recorded_checkpoint(search_dirs)
            if chosen != (self._codec_path or self.meta["ckpt_path"]):
                self._codec_path, self._codec_net = chosen, None
            return self.codec_network().to(device)
        ckpt = ckpt_path or self._recorded_checkpoint(search_dirs)
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

    def _recorded_checkpoint(self, search_dirs: Sequence[str | os.PathLike]) -> str | None:
        """The recorded checkpoint, or the first file of its name in ``search_dirs`` if it has moved."""
        recorded = self.meta.get("ckpt_path")
        if not recorded or Path(recorded).is_file():
            return recorded
        found = next((c for c in (Path(d) / Path(recorded).name for d in search_dirs) if c.is_file()), None)
        return str(found) if found is not None else recorded  # missing: the loader names it

    @torch.no_grad()
    def decode(self, index: int, network: torch.nn.Module, device: str | torch.device | None = None) -> MetaTensor:
        """Decode item ``index`` to ``(C, *shape)`` in its original intensity units, with its affine
        (and, for a NIfTI source, its header's units and form codes in the metadata)."""
        rec = self.records[index]
        device = torch.device(device) if device is not None else next(network.parameters()).device
        if self.codec == "entropy":
            y = torch.from_numpy(self.quantised(index))[None].to(device)
            x = network.reconstruct(y, self.meta["codec_level"], tuple(rec["shape"]))[0].float().cpu()
        else:
            z = self.latent(index)[None]
            tile, overlap, f = self.meta["tile_size"], self.meta["overlap"], self.meta["downsample_factor"]
            if tile is not None and max(rec["shape"]) > tile:
                x = tiled_decode(network, z, tile // f, overlap // f, rec["shape"], device)[0]
            else:
                x = network.decode(z.to(device), spatial_size=rec["shape"])[0].float().cpu()
        x = RestoreUnits(picture_dtype=False)(x, rec["intensity"])  # the same inverse as inference.yaml's
        return MetaTensor(
            x, affine=torch.tensor(rec["affine"], dtype=torch.float64),
            meta={"filename_or_obj": rec["source"], **rec.get("nifti", {})},
        )

    def decode_to(
        self,
        output_dir: str | os.PathLike,
        network: torch.nn.Module,
        indices: Sequence[int] | None = None,
        device: str | torch.device | None = None,
    ) -> list[Path]:
        """Decode items (default: all) into ``output_dir`` (see :func:`~medvae_monai.latents.export.decode_to`)."""
        return export.decode_to(self, output_dir, network, indices, device)

    def output_path(self, index: int, output_dir: str | os.PathLike = ".") -> Path:
        """Item ``index``'s decoded file (see :func:`~medvae_monai.latents.export.output_path`)."""
        return export.output_path(self, index, output_dir)

    def write_decoded(self, index: int, image: MetaTensor, output_dir: str | os.PathLike) -> Path:
        """Write a decoded item (see :func:`~medvae_monai.latents.export.write_decoded`)."""
        return export.write_decoded(self, index, image, output_dir)

    @functools.cached_property
    def sources(self) -> frozenset[Path]:
        """Where the items' source files are (resolved), which decoding must not overwrite; none for phantoms/MedMNIST."""
        root = self.meta.get("source_root")
        return frozenset(Path(root, r["source"]).resolve() for r in self.records) if root else frozenset()

    def mask(self, index: int) -> MetaTensor:
        """The mask of item ``index`` at image resolution, ``(1, *shape)``, loaded from its reference."""
        rec = self.records[index]
        if "mask" not in rec or self.meta.get("source_root") is None:
            raise InputError(f"{self.path}: item {rec['source']!r} has no mask reference; its source has no masks.")
        path = Path(self.meta["source_root"]) / rec["mask"]
        return LoadImageCheckedd("mask", image_only=True, ensure_channel_first=True)({"mask": str(path)})["mask"]
