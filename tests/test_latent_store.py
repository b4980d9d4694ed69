"""Latent store: round trip with geometry, checksums, resume after SIGKILL, corruption, dataset, bundle."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medvae_monai.errors import InputError
from medvae_monai.latents import LatentDataset, LatentStore, encode_dataset, tiled_decode, weights_sha256
from medvae_monai.networks import MedVAE

from .conftest import REPO, data_path, kill_when_exists, run_bundle


def _network(spatial_dims: int = 2, seed: int = 0) -> MedVAE:
    torch.manual_seed(seed)
    return MedVAE(spatial_dims, 1).eval()


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def picture_folder(tmp_path_factory) -> Path:
    """Two classes of non-square (40 x 24) greyscale PNGs, one with a ``_mask`` file (BUSI layout)."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for cls in ("benign", "normal"):
        (root / cls).mkdir()
        for i in range(6):
            yy, xx = np.mgrid[:40, :24]
            img = (xx * 6 + yy * 2 + rng.integers(0, 30, (40, 24))).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{i:03d}.png")
            Image.fromarray(((xx > 12) * 255).astype(np.uint8)).save(root / cls / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def volume_datalist(tmp_path_factory) -> Path:
    """An MSD-style datalist of three NIfTI volumes with anisotropic spacing, an oblique affine and masks."""
    root = tmp_path_factory.mktemp("volumes")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array([[0.8 * c, -1.2 * s, 0, -40.0], [0.8 * s, 1.2 * c, 0, 12.5], [0, 0, 2.0, 7.0], [0, 0, 0, 1]])
    entries = []
    for i, shape in enumerate([(20, 24, 12), (22, 18, 13), (20, 24, 12)]):
        vol = rng.normal(300.0, 80.0, shape).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, affine), root / "imagesTr" / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image((vol > 300).astype(np.uint8), affine), root / "labelsTr" / f"case{i}.nii.gz")
        entries.append({"image": f"./imagesTr/case{i}.nii.gz", "label": f"./labelsTr/case{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"training": entries}))
    return root


def test_picture_round_trip_keeps_paths_shapes_and_checksums(picture_folder, tmp_path):
    net = _network()
    store = encode_dataset(net, picture_folder, tmp_path / "store", shard_size=5, batch_size=4)
    assert store.complete and len(store) == 12 and store.meta["num_shards"] == 3
    assert store.meta["model"]["weights_sha256"] == weights_sha256(net)
    assert store.verify() == 12
    rec = store.records[0]
    assert rec["source"] == "benign/000.png" and rec["label"] == 0 and rec["mask"] == "benign/000_mask.png"
    assert rec["latent_shape"] == [1, 6, 10] and rec["intensity"]["a_max"] == 255.0
    z = store.latent(0)
    assert hashlib.sha256(z.numpy().astype(np.float32).tobytes()).hexdigest() == rec["sha256"]
    with torch.no_grad():
        image = torch.from_numpy(np.asarray(Image.open(picture_folder / rec["source"]), dtype=np.float32).T / 255.0)
        torch.testing.assert_close(z, net.encode(image[None, None])[0][0], rtol=0, atol=1e-6)
    # weights saved beside the store: decode rebuilds the network from the store's record
    torch.save(net.state_dict(), tmp_path / "w.pt")
    written = store.decode_to(tmp_path / "decoded", store.load_network(tmp_path / "w.pt"))
    assert [p.relative_to(tmp_path / "decoded").as_posix() for p in written[:2]] == ["benign/000.png", "benign/001.png"]
    for p in written:
        src = np.asarray(Image.open(picture_folder / p.relative_to(tmp_path / "decoded")))
        out = np.asarray(Image.open(p))
        assert out.shape == src.shape == (40, 24) and out.dtype == np.uint8
    assert store.mask(0).shape == (1, 24, 40)  # MONAI's (x, y) order, as the image was encoded


def test_volume_round_trip_keeps_affine_spacing_and_units(volume_datalist, tmp_path):
    net = _network(3)
    torch.save(net.state_dict(), tmp_path / "w3.pt")
    store = encode_dataset(
        net, volume_datalist, tmp_path / "store", dtype="float16", ckpt_path=tmp_path / "w3.pt", tile_size=16, overlap=8
    )  # some volumes go through tiles
    assert store.meta["dtype"] == "float16" and store.verify() == 3
    decoded = store.decode_to(tmp_path / "decoded", store.load_network())  # the recorded checkpoint
    for rec, path in zip(store.records, decoded):
        src = nib.load(volume_datalist / rec["source"])
        out = nib.load(path)
        assert path.relative_to(tmp_path / "decoded").as_posix() == rec["source"].lstrip("./")
        assert out.shape == src.shape and rec["shape"] == list(src.shape)
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
        np.testing.assert_allclose(rec["spacing"], [0.8, 1.2, 2.0], atol=1e-5)
        lo, hi = np.percentile(src.get_fdata(), [0.5, 99.5])
        np.testing.assert_allclose([rec["intensity"]["a_min"], rec["intensity"]["a_max"]], [lo, hi], rtol=1e-4)
        # decoded voxels are mapped back from [0, 1] to the source's units
        z = store.latent(store.records.index(rec))[None]
        unit = tiled_decode(net, z, tile_size=4, overlap=2, spatial_size=rec["shape"])[0, 0].numpy()
        np.testing.assert_allclose(out.get_fdata(), lo + unit * (hi - lo), rtol=1e-4, atol=1e-3 * (hi - lo))
    assert store.mask(1).shape == (1, 22, 18, 13)
    # float16 storage changes latents only by float16 rounding
    ref = encode_dataset(net, volume_datalist, tmp_path / "store32", tile_size=16, overlap=8)
    for i in range(3):
        torch.testing.assert_close(store.latent(i), ref.latent(i).half().float(), rtol=0, atol=0)


def test_wrong_weights_store_and_settings_are_refused(picture_folder, tmp_path):
    store = encode_dataset(_network(), picture_folder, tmp_path / "store", max_items=4)
    torch.save(_network(seed=1).state_dict(), tmp_path / "other.pt")
    with pytest.raises(InputError, match="not the ones"):
        store.load_network(tmp_path / "other.pt")
    with pytest.raises(InputError, match="different dtype"):
        encode_dataset(_network(), picture_folder, tmp_path / "store", max_items=4, dtype="float16")
    with pytest.raises(InputError, match="not a latent store"):
        LatentStore(tmp_path)


def test_sources_that_decoding_would_write_to_one_name_are_refused_at_encoding(tmp_path):
    """x.png and x.jpeg both decode to x.png; encoding refuses them, naming both, before it writes a store."""
    (tmp_path / "data" / "k").mkdir(parents=True)
    pic = Image.fromarray(np.arange(32 * 32, dtype=np.uint8).reshape(32, 32))
    pic.save(tmp_path / "data" / "k" / "x.png")
    pic.save(tmp_path / "data" / "k" / "x.jpeg")
    with pytest.raises(InputError, match=r"the inputs k/x\.jpeg and k/x\.png both map to this output name"):
        encode_dataset(_network(), tmp_path / "data", tmp_path / "store", split="all")
    assert not list((tmp_path / "store").rglob("*"))


def test_skip_unreadable_skips_non_image_files_and_names_a_broken_image(tmp_path):
    """Breaker round 4, finding 4: encoding ignored --skip_unreadable and stopped at notes.txt."""
    (tmp_path / "data" / "k").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(tmp_path / "data" / "k" / f"{i}.png")
    (tmp_path / "data" / "k" / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="notes.txt: not an image file"):
        encode_dataset(_network(), tmp_path / "data", tmp_path / "refused", split="all")
    with pytest.warns(UserWarning, match="skipped 1 non-image"):
        store = encode_dataset(_network(), tmp_path / "data", tmp_path / "store", split="all", skip_unreadable=True)
    assert sorted(r["source"] for r in store.records) == ["k/0.png", "k/1.png", "k/2.png"]
    good = (tmp_path / "data" / "k" / "0.png").read_bytes()
    (tmp_path / "data" / "k" / "3.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match=r"3\.png: cannot be read.*holds every item it lists"):
        encode_dataset(_network(), tmp_path / "data", tmp_path / "store2", split="all", skip_unreadable=True)


def test_a_store_given_as_images_is_named(picture_folder, tmp_path):
    """Breaker round 4: a store as --dataset_dir of train_classifier gave 'shards/00000.json.gz: not an image file'."""
    from medvae_monai.data import ImageSource

    encode_dataset(_network(), picture_folder, tmp_path / "store", max_items=2)
    with pytest.raises(InputError, match="is a latent store .*decode.yaml"):
        ImageSource(tmp_path / "store")


def test_corrupted_shard_is_named_and_repaired(picture_folder, tmp_path):
    net = _network()
    encode_dataset(net, picture_folder, tmp_path / "store", shard_size=4)
    before = _tree(tmp_path / "store")
    shard = tmp_path / "store" / "shards" / "00001.npy"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    store = LatentStore(tmp_path / "store")
    store.latent(0)  # shard 0 is intact
    with pytest.raises(InputError, match=r"shards/00001\.npy.*corrupt"):
        store.latent(5)
    with pytest.raises(InputError, match="00001.npy"):
        store.verify()
    encode_dataset(net, picture_folder, tmp_path / "store", shard_size=4)  # re-encodes only the bad shard
    assert _tree(tmp_path / "store") == before


def test_an_edited_manifest_record_is_refused_by_name(picture_folder, tmp_path):
    """Breaker round 4, finding 9: a source or class name rewritten in a manifest passed as the item's."""
    import gzip

    encode_dataset(_network(), picture_folder, tmp_path / "store", max_items=4)
    manifest = tmp_path / "store" / "shards" / "00000.json.gz"
    body = json.loads(gzip.decompress(manifest.read_bytes()))
    name = body["columns"]["source"][0]
    body["columns"]["source"][0] = "../../ESCAPED/x.png"
    manifest.write_bytes(gzip.compress(json.dumps(body).encode()))
    with pytest.raises(InputError, match=r"00000\.json\.gz: the shard manifest's records do not match"):
        LatentStore(tmp_path / "store").latent(0)
    del body["records_sha256"]  # a manifest written before the checksum existed is read as it is
    body["columns"]["source"][0] = name
    manifest.write_bytes(gzip.compress(json.dumps(body).encode()))
    assert LatentStore(tmp_path / "store").records[0]["source"] == name


def test_store_missing_a_manifest_is_refused_by_name_and_repaired(picture_folder, tmp_path):
    """A deleted manifest drops its shard from the reader: decoding and training heads must refuse
    the store by name instead of writing fewer images; encoding again repairs it byte for byte."""
    net = _network()
    encode_dataset(net, picture_folder, tmp_path / "store", shard_size=4)
    before = _tree(tmp_path / "store")
    (tmp_path / "store" / "shards" / "00001.json.gz").unlink()
    store = LatentStore(tmp_path / "store")
    assert not store.complete and len(store) == 8
    with pytest.raises(InputError, match=r"holds 8 of 12 items; shard manifest\(s\) 00001\.json\.gz missing"):
        store.decode_to(tmp_path / "decoded", net)
    assert not (tmp_path / "decoded").exists()
    with pytest.raises(InputError, match="00001.json.gz"):
        LatentDataset(tmp_path / "store")
    encode_dataset(net, picture_folder, tmp_path / "store", shard_size=4)
    assert _tree(tmp_path / "store") == before


_CHILD = """
import sys, time, torch
from medvae_monai.latents import encode_dataset
from medvae_monai.networks import MedVAE
torch.manual_seed(0)
net = MedVAE(2, 1).eval()
if sys.argv[2] == "slow":  # slow each batch down so that the kill lands mid-run
    net.encoder.register_forward_hook(lambda *a: time.sleep(0.25))
encode_dataset(net, None, sys.argv[1], max_items=48, shard_size=8, batch_size=4)
"""


def _child(store: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEDVAE_QUIET": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(store), mode], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_store(tmp_path):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    proc = _child(killed, "slow")
    kill_when_exists(proc, killed / "shards" / "00001.json.gz")
    assert proc.returncode == -signal.SIGKILL
    partial = LatentStore(killed)  # a killed run leaves a store that opens
    assert not partial.complete and 8 <= len(partial) < 48
    partial.verify()
    for p in (_child(killed, "fast"), _child(reference, "fast")):  # resume, and an uninterrupted run
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    assert LatentStore(killed).complete
    assert _tree(killed) == _tree(reference)


def test_latent_dataset_splits_labels_and_masks(picture_folder, tmp_path):
    store = encode_dataset(_network(), picture_folder, tmp_path / "store")
    train, test = LatentDataset(store, "train"), LatentDataset(tmp_path / "store", "test")
    assert len(train) == 8 and len(test) == 2  # 6 per class: 4 train, 1 val (a group of 3+ keeps one), 1 test
    assert {store.records[i]["source"] for i in test.indices} == {"benign/005.png", "normal/005.png"}
    assert {store.records[i]["source"] for i in LatentDataset(store, "val").indices} == {"benign/004.png", "normal/004.png"}
    item = LatentDataset(store, "train", with_mask=True)[0]
    assert item["latent"].shape == (1, 6, 10) and item["label"] == 0 and item["mask"].shape == (1, 24, 40)
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=4)))
    assert batch["latent"].shape == (4, 1, 6, 10) and batch["label"].tolist() == [0, 0, 0, 0]
    train_only = encode_dataset(_network(), picture_folder, tmp_path / "train_only", split="train")
    with pytest.raises(InputError, match="no items of split 'val'"):
        LatentDataset(train_only, "val")


def test_medmnist_store_keeps_official_splits(tmp_path):
    npz = data_path("MedMNIST", "breastmnist.npz")
    store = encode_dataset(_network(), npz, tmp_path / "store", max_items=30, dtype="float16")
    assert {r["split"] for r in store.records} == {"train", "val", "test"}
    assert all(r["source"].split("/")[1] == r["split"] for r in store.records)
    assert store.output_path(0).as_posix() == "breastmnist/train/00000.png"


@pytest.mark.slow
def test_bundle_encoding_and_decoding(tmp_path):
    mednist = data_path("MedNIST")
    torch.save(_network().state_dict(), tmp_path / "w.pt")
    run_bundle(
        "encoding",
        "bundle/configs/encode.yaml",
        "--dataset_dir",
        str(mednist),
        "--output_dir",
        str(tmp_path / "store"),
        "--ckpt_path",
        str(tmp_path / "w.pt"),
        "--max_items",
        "12",
        "--shard_size",
        "5",
        "--dtype",
        "float16",
    )
    store = LatentStore(tmp_path / "store")
    assert store.complete and len(store) == 12 and store.verify() == 12
    assert store.meta["model"]["hparams"]["channels"] == [32, 64] and store.meta["dtype"] == "float16"
    run_bundle(
        "decoding",
        "bundle/configs/decode.yaml",
        "--dataset_dir",
        str(tmp_path / "store"),
        "--output_dir",
        str(tmp_path / "decoded"),
    )
    for rec in store.records:
        out = tmp_path / "decoded" / Path(rec["source"]).with_suffix(".png")
        assert np.asarray(Image.open(out)).shape == (64, 64)
    assert (tmp_path / "decoded" / "Hand").is_dir()
