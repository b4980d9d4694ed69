"""Entropy-coded latent store: exact round trip, rate estimate vs bytes, size accounting, SIGKILL
resume, damaged bitstreams named by item, torchrun ranks byte-identical to one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medvae_monai.errors import InputError
from medvae_monai.latents import EntropyCodec, LatentDataset, LatentStore, encode_dataset, load_codec, save_codec
from medvae_monai.latents.coding import TableCoder
from medvae_monai.networks import MedVAE

from .conftest import REPO, data_path, kill_when_exists
from .test_latent_store import _tree, picture_folder  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def codec_file(tmp_path_factory) -> Path:
    """A small untrained codec (its tables are still exact integer tables) saved to a checkpoint."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("codec") / "codec.pt"
    save_codec(EntropyCodec(8, 4, (0.005, 0.02)), path)
    return path


def _encode(folder, out, codec_file, **kw) -> LatentStore:
    return encode_dataset(MedVAE(2, 1), folder, out, codec="entropy", codec_path=codec_file, **kw)


def test_coded_round_trip_is_exact_and_decodes(picture_folder, codec_file, tmp_path):  # noqa: F811
    store = _encode(picture_folder, tmp_path / "store", codec_file, shard_size=5, batch_size=4, codec_level=1)
    assert store.complete and len(store) == 12 and store.meta["codec"] == "entropy" and store.verify() == 12
    codec = load_codec(codec_file)
    coder = TableCoder(codec.tables, 1)
    for i, rec in enumerate(store.records):
        pic = np.asarray(Image.open(picture_folder / rec["source"]), dtype=np.float32).T / 255.0
        # one picture alone gives the latent it got in a batch of 4 (RDOQ searches image by image)
        want = coder.clamp(codec.quantise(torch.from_numpy(pic)[None, None], 1, store.meta["codec_rdoq_iterations"])[0].numpy())
        np.testing.assert_array_equal(store.quantised(i), want)  # bit-exact, in a fresh reader too
        np.testing.assert_array_equal(LatentStore(tmp_path / "store").quantised(i), want)
    assert rec["latent_shape"] == [4, 3, 5]  # 24 x 40 pictures, padded to multiples of 8
    latent = LatentDataset(store, "train")[0]["latent"]  # heads get the dequantised latent
    torch.testing.assert_close(latent, codec.dequantise(torch.from_numpy(store.quantised(0)).float()[None], 1)[0])
    written = store.decode_to(tmp_path / "decoded", store.load_network())
    assert [np.asarray(Image.open(p)).shape for p in written] == [(40, 24)] * 12


def test_rdoq_lowers_the_rd_cost_of_real_images_with_the_committed_codec():
    """RDOQ on 16 MedNIST validation images at the default level: the rate-distortion Lagrangian
    never rises for any image and falls on average; the decoder reads the result unchanged."""
    from medvae_monai.data import ImageSource

    items = ImageSource(data_path("MedNIST"), max_items=16).items("val")
    x = torch.from_numpy(np.stack([np.asarray(Image.open(it["image"]).convert("L")) for it in items]))[:, None] / 255.0
    codec = load_codec(REPO / "bundle/models/codec.pt")
    level = codec.default_level
    lam = codec.hparams["lambdas"][level] * 255**2

    def lagrangian(y: torch.Tensor) -> torch.Tensor:
        coder = TableCoder(codec.tables, level)
        bits = torch.tensor([coder.bits(coder.clamp(v)) for v in y.numpy()])
        mse = (codec.reconstruct(y, level, (64, 64)) - x).square().flatten(1).mean(1)
        return bits / 4096 + lam * mse

    rounded, optimised = codec.quantise(x, level), codec.quantise(x, level, rdoq_iterations=4)
    before, after = lagrangian(rounded), lagrangian(optimised)
    assert (optimised != rounded).any() and optimised.dtype == torch.int32
    assert (after <= before + 1e-6).all(), (before, after)
    assert after.mean() < 0.99 * before.mean(), (before.mean(), after.mean())


def test_rate_estimate_matches_bytes_and_size_counts_every_file(codec_file, tmp_path):
    store = _encode(None, tmp_path / "store", codec_file, max_items=40, shard_size=16)  # 2D CT phantoms
    codec = load_codec(codec_file)
    coder = TableCoder(codec.tables, store.meta["codec_level"])
    estimate = sum(coder.bits(store.quantised(i)) for i in range(len(store))) / 8
    coded = sum(p.stat().st_size for p in (tmp_path / "store" / "shards").glob("*.bin"))
    assert abs(coded - estimate) <= 0.02 * estimate, (coded, estimate)
    every = [Path(d) / f for d, _, fs in os.walk(tmp_path / "store") for f in fs]
    assert len(every) == 1 + 2 * 3 and store.nbytes() == sum(p.stat().st_size for p in every)


def test_resume_with_other_rdoq_setting_is_refused_by_name(codec_file, tmp_path):
    """RDOQ changes the bytes, so a store is only resumed with the setting it was written with."""
    _encode(None, tmp_path / "store", codec_file, max_items=4, codec_rdoq_iterations=0)
    with pytest.raises(InputError, match="codec_rdoq_iterations"):
        _encode(None, tmp_path / "store", codec_file, max_items=4)
    with pytest.raises(InputError, match="codec_rdoq_iterations must be 0 or more"):
        _encode(None, tmp_path / "other", codec_file, max_items=4, codec_rdoq_iterations=-1)


def test_moved_store_finds_its_codec_by_name_and_hash(codec_file, tmp_path):
    """A store copied to another machine records a codec path that is gone there: decoding takes
    the file of that name from the search folders (decode.yaml: the bundle's models/) only if its
    weights and tables hash to the recorded ones."""
    encoding_machine = tmp_path / "encoding_machine"
    encoding_machine.mkdir()
    moved = encoding_machine / "codec.pt"
    moved.write_bytes(codec_file.read_bytes())
    _encode(None, tmp_path / "store", moved, max_items=4, codec_rdoq_iterations=0)
    moved.unlink()
    with pytest.raises(InputError, match="codec.pt"):
        LatentStore(tmp_path / "store").load_network()
    here = tmp_path / "bundle_models"
    here.mkdir()
    (here / "codec.pt").write_bytes(codec_file.read_bytes())
    found = LatentStore(tmp_path / "store")
    decoded = found.decode(0, found.load_network(search_dirs=[tmp_path / "empty", here]))
    given = LatentStore(tmp_path / "store", codec_path=codec_file)
    torch.testing.assert_close(decoded, given.decode(0, given.load_network()))
    torch.manual_seed(1)
    save_codec(EntropyCodec(8, 4, (0.005, 0.02)), here / "codec.pt")  # same name, other weights
    with pytest.raises(InputError, match="not the one"):
        LatentStore(tmp_path / "store").load_network(search_dirs=[here])


def test_damaged_bitstream_names_the_item(picture_folder, codec_file, tmp_path):  # noqa: F811
    _encode(picture_folder, tmp_path / "store", codec_file, shard_size=6)
    before = _tree(tmp_path / "store")
    shard = tmp_path / "store" / "shards" / "00001.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated
    store = LatentStore(tmp_path / "store")
    store.quantised(0)  # shard 0 is intact
    with pytest.raises(InputError, match=r"00001\.bin: item 'normal/00\d\.png' \(item \d+ of the store\)"):
        store.quantised(6)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x5A  # corrupted in the middle: an item is named, not a wrong latent returned
    shard.write_bytes(bytes(flipped))
    with pytest.raises(InputError, match=r"00001\.bin: item 'normal/00\d\.png'"):
        LatentStore(tmp_path / "store").verify()
    shard.write_bytes(data + bytes(16))  # bytes appended: every item decodes, the file is still refused
    with pytest.raises(InputError, match=r"00001\.bin: its 6 items decode, but the file does not match"):
        LatentStore(tmp_path / "store").verify()
    _encode(picture_folder, tmp_path / "store", codec_file, shard_size=6)  # re-encodes the damaged shard
    assert _tree(tmp_path / "store") == before


_CHILD = """
import sys, time, torch
from medvae_monai.latents import encode_dataset, load_codec
from medvae_monai.networks import MedVAE
if sys.argv[3] == "slow":  # slow each batch down so that the kill lands mid-run
    import medvae_monai.latents.writer as w
    load = w.load_codec
    def slow(path):
        c = load(path)
        c.g_a.register_forward_hook(lambda *a: time.sleep(0.25))
        return c
    w.load_codec = slow
# one RDOQ iteration: the search is resumed too, at an eighth of the default's cost
encode_dataset(MedVAE(2, 1), None, sys.argv[1], max_items=48, shard_size=8, batch_size=4, codec="entropy",
               codec_path=sys.argv[2], codec_rdoq_iterations=1)
"""


@pytest.mark.slow
def test_sigkill_during_coded_encoding_then_resume_is_identical(codec_file, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEDVAE_QUIET": "1", "PYTHONWARNINGS": "ignore"}

    def child(store: Path, mode: str) -> subprocess.Popen:
        cmd = [sys.executable, "-c", _CHILD, str(store), str(codec_file), mode]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    killed, reference = tmp_path / "killed", tmp_path / "reference"
    proc = child(killed, "slow")
    kill_when_exists(proc, killed / "shards" / "00001.json.gz")
    partial = LatentStore(killed)
    assert not partial.complete and 8 <= len(partial) < 48 and partial.verify() == len(partial)
    for p in (child(killed, "fast"), child(reference, "fast")):
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    assert LatentStore(killed).complete and _tree(killed) == _tree(reference)


@pytest.mark.slow
def test_torchrun_two_ranks_write_the_same_store_as_one_process(codec_file, tmp_path):
    single = _encode(None, tmp_path / "single", codec_file, max_items=24, shard_size=5)
    script = tmp_path / "encode.py"
    script.write_text(
        "import sys\nfrom medvae_monai.latents import encode_dataset\nfrom medvae_monai.networks import MedVAE\n"
        "encode_dataset(MedVAE(2, 1), None, sys.argv[1], max_items=24, shard_size=5, codec='entropy', "
        "codec_path=sys.argv[2])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEDVAE_QUIET": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(script), str(tmp_path / "ranks"), str(codec_file)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert len(single) == 24 and _tree(tmp_path / "ranks") == _tree(tmp_path / "single")


@pytest.mark.slow
def test_bundle_encoding_with_codec_entropy_and_decoding(codec_file, tmp_path):
    from .conftest import data_path, run_bundle

    mednist = data_path("MedNIST")
    store_dir = tmp_path / "store"
    run_bundle("encoding", "bundle/configs/encode.yaml", "--dataset_dir", str(mednist), "--output_dir", str(store_dir),
               "--max_items", "6", "--codec", "entropy", "--codec_path", str(codec_file), "--codec_level", "0")
    store = LatentStore(store_dir)
    assert store.meta["codec"] == "entropy" and store.meta["codec_level"] == 0 and store.verify() == 6
    run_bundle("decoding", "bundle/configs/decode.yaml", "--dataset_dir", str(store_dir), "--output_dir",
               str(tmp_path / "decoded"))
    assert sorted(p.suffix for p in (tmp_path / "decoded").rglob("*.png")) == [".png"] * 6
