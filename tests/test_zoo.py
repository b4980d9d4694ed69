"""The MONAI Model Zoo's CI checks, replayed on ``bundle/``: files, version, metadata, net in/out, export.

The zoo runs ``verify_metadata``, ``verify_net_in_out`` and ``ckpt_export`` from ``monai.bundle``;
here they run in-process (one MONAI import). ``verify_metadata`` uses the schema kept in the repo,
so nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out

from medvae_monai.bundle import layers, run_ids
from medvae_monai.config import load_bundle_network

from .conftest import REPO

BUNDLE = REPO / "bundle"
META = "bundle/configs/metadata.json"
SCHEMA = "bundle/configs/meta_schema.json"
# each network the bundle ships: the VAE (network_def of inference.yaml) and the heads' wrappers
NETWORKS = ["inference.yaml", "infer_classifier.yaml", "infer_segmentation.yaml"]
TS_ATOL = 1e-6


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("MEDVAE_QUIET", "1")


def network_and_weights(config: str, tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    """``network_def`` of ``config`` and its checkpoint (the committed one, else fresh weights)."""
    torch.manual_seed(0)
    net, ckpt = load_bundle_network(f"bundle/configs/{config}")
    if ckpt is None:
        ckpt = tmp_path / f"{Path(config).stem}.pt"
        torch.save(net.state_dict(), ckpt)
    return net, ckpt


def head_data_format(net: torch.nn.Module, meta: dict) -> dict:
    """The VAE's ``network_data_format`` with the output channels of ``net`` (a head wrapper)."""
    fmt = copy.deepcopy(meta["network_data_format"])
    image = fmt["inputs"]["image"]
    with torch.no_grad():
        out = net(torch.rand(1, image["num_channels"], *image["spatial_shape"]))
    fmt["outputs"]["pred"]["num_channels"] = int(out.shape[1])
    return fmt


def test_necessary_files() -> None:
    for rel in ["configs/metadata.json", "configs/inference.yaml", "docs/README.md", "LICENSE"]:
        assert (BUNDLE / rel).is_file(), f"bundle/{rel} is missing"
    # weights: committed, or listed in large_files.yml for download
    if not (BUNDLE / "models" / "model.pt").is_file():
        assert (BUNDLE / "large_files.yml").is_file(), (
            "commit bundle/models/model.pt or list it in bundle/large_files.yml"
        )
        large = yaml.safe_load((BUNDLE / "large_files.yml").read_text())
        assert "models/model.pt" in [f["path"] for f in large["large_files"]]
    readme = (BUNDLE / "docs" / "README.md").read_text()
    sections = ["### **Authors**", "### **Tags**", "## **Model Description**", "## **Data**", "## **Performance**"]
    sections += [
        "## **System Configuration**",
        "## **Limitations**",
        "## MONAI Bundle Commands",
        "## Pretrained checkpoint",
    ]
    for section in sections:
        assert section in readme, f"docs/README.md lacks the zoo section {section!r}"


def test_version_listed_in_changelog() -> None:
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    # the zoo lists the newest version first
    assert next(iter(meta["changelog"])) == meta["version"]


def test_verify_metadata_offline(tmp_path: Path) -> None:
    verify_metadata(meta_file=META, filepath=SCHEMA)  # an existing filepath is not downloaded again
    # the schema is not a rubber stamp: a missing mandatory key and a malformed tensor spec fail
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    for broken in (
        {k: v for k, v in meta.items() if k != "network_data_format"},
        {**meta, "network_data_format": {"inputs": {"image": {"type": "image"}}, "outputs": {}}},
        {**meta, "version": "one"},
    ):
        bad = tmp_path / "metadata.json"
        bad.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match="Failed validating"):
            verify_metadata(meta_file=str(bad), filepath=SCHEMA)


@pytest.mark.parametrize("config", NETWORKS)
def test_verify_net_in_out(config: str, tmp_path: Path) -> None:
    overrides = {}
    if config != "inference.yaml":  # a head: the VAE's input, the head's output channels
        net, _ = network_and_weights(config, tmp_path)
        overrides["_meta_#network_data_format"] = head_data_format(net, json.loads(Path(META).read_text()))
    verify_net_in_out(
        net_id="network_def", meta_file=META, config_file=f"bundle/configs/{config}", device="cpu", **overrides
    )


@pytest.mark.parametrize("config", NETWORKS)
def test_ckpt_export_torchscript(config: str, tmp_path: Path) -> None:
    """``ckpt_export`` with no flags (every network scripts, heads too) writes a TorchScript bundle that
    carries the metadata and config and matches eager PyTorch within ``TS_ATOL`` (same kernels; the
    observed difference is 0) at any input size."""
    net, ckpt = network_and_weights(config, tmp_path)
    ts_path = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts_path),
        ckpt_file=str(ckpt),
        meta_file=META,
        config_file=f"bundle/configs/{config}",
    )
    extra = {"metadata.json": "", Path(config).stem + ".json": ""}
    ts = torch.jit.load(str(ts_path), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == json.loads(Path(META).read_text())["version"]
    assert "network_def" in json.loads(extra[Path(config).stem + ".json"])
    torch.manual_seed(1)
    # a scripted network keeps the padding logic, so any size works (a traced one would be fixed at one)
    for shape in [(3, 1, 64, 64), (1, 1, 61, 70)]:
        x = torch.rand(shape)
        with torch.no_grad():
            torch.testing.assert_close(ts(x), net(x), atol=TS_ATOL, rtol=0)


def test_configs_are_written_from_their_layers(tmp_path: Path) -> None:
    """Each runnable config equals its layers merged as MONAI merges a config list; an edited layer
    makes it stale until `python -m medvae_monai.bundle.layers` rewrites it."""
    assert layers.stale_configs(BUNDLE) == [], "run: python -m medvae_monai.bundle.layers"
    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", copy / "configs")
    base = copy / "configs" / "layers" / "_vae.yaml"
    base.write_text(base.read_text().replace("latent_channels: 1", "latent_channels: 4"))
    stale = {p.name for p in layers.stale_configs(copy)}
    assert {"inference.yaml", "train.yaml", "infer_segmentation.yaml", "encode.yaml"} <= stale
    assert "decode.yaml" not in stale  # it does not use the VAE's definition
    layers.build(copy)
    flat = yaml.safe_load((copy / "configs" / "infer_segmentation.yaml").read_text())
    assert flat["vae_def"]["latent_channels"] == 4 and "_base_" not in flat
    assert "%" not in (copy / "configs" / "train.yaml").read_text().replace("% ", "")  # no macros


def test_run_ids_of_each_config() -> None:
    expected = {
        "train.yaml": ["training", "run"], "evaluate.yaml": ["evaluating"], "inference.yaml": ["inferring"],
        "encode.yaml": ["encoding"], "decode.yaml": ["decoding"], "train_segmentation.yaml": ["training", "run"],
        "infer_classifier.yaml": ["inferring"], "evaluate_segmentation.yaml": ["evaluating"],
    }  # fmt: skip
    for name, ids in expected.items():
        assert run_ids(yaml.safe_load((BUNDLE / "configs" / name).read_text())) == ids, name


def test_monailabel_app_bundles_are_valid_bundles(tmp_path: Path) -> None:
    """Each small bundle for the stock MONAI Label app passes the zoo's metadata check, its
    network_def takes the served weights strictly, and its transforms build without a dataset."""
    from monai.bundle import ConfigParser

    from medvae_monai.bundle.monailabel import APP_BUNDLES, write_app_bundle
    from medvae_monai.utils import load_weights

    for spec in APP_BUNDLES:
        small = write_app_bundle(spec, tmp_path / "model")
        verify_metadata(meta_file=str(small / "configs" / "metadata.json"), filepath=SCHEMA)
        meta = json.loads((small / "configs" / "metadata.json").read_text())
        assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["1"] == "lesion"
        parser = ConfigParser()
        parser.read_config(str(small / "configs" / "inference.yaml"))
        parser["bundle_root"] = str(small)  # what MONAI Label sets
        load_weights(parser.get_parsed_content("network_def"), small / "models" / "model.pt")
        for key in ("preprocessing", "postprocessing"):
            assert parser.get_parsed_content(key).transforms, key
        if spec.train_layer:
            train = ConfigParser()
            train.read_config(str(small / "configs" / "train.yaml"))
            assert train["run"] == "@training"  # BundleTrainTask's default run id
            assert {"train", "validate"} <= set(train.config) and "data" in train["train"]["dataset"]


def test_monailabel_app_bundle_without_weights_says_so(tmp_path: Path) -> None:
    from medvae_monai.bundle.monailabel import APP_BUNDLES, write_app_bundle
    from medvae_monai.errors import InputError

    copy_of = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", copy_of / "configs")
    with pytest.raises(InputError, match=r"busi_segmenter\.pt does not exist: .*train it as .*README"):
        write_app_bundle(APP_BUNDLES[0], tmp_path / "model", copy_of)


def test_a_checkpoint_of_the_other_dimensionality_says_so(tmp_path: Path) -> None:
    from medvae_monai.errors import InputError
    from medvae_monai.networks import MedVAE
    from medvae_monai.utils import load_weights

    with pytest.raises(InputError, match=r"is a 2D network and the config builds a 3D MedVAE .*--spatial_dims 2 .*--vae_ckpt"):
        load_weights(MedVAE(spatial_dims=3, in_channels=1), BUNDLE / "models" / "model.pt", option="--vae_ckpt")
    with pytest.raises(InputError, match=r"'.*nope\.pt' does not exist; pass an existing file with --vae_ckpt"):
        load_weights(MedVAE(spatial_dims=2, in_channels=1), tmp_path / "nope.pt", option="--vae_ckpt")
