"""The bug-report cases of ``../shared/cases``, each turned into the right value it must give.

Every case's ``make.py`` writes its inputs into ``tmp_path`` (see ``conftest.make_case``); the tests
run the product the way the report did and assert the behaviour that the cases' README names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medvae_monai.errors import InputError
from medvae_monai.latents import encode_dataset
from medvae_monai.networks import MedVAE

from .conftest import REPO, make_case, run_bundle


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _network(spatial_dims: int) -> MedVAE:
    torch.manual_seed(0)
    return MedVAE(spatial_dims, 1).eval()


# --- datalist-abs-paths: no output ever lands on an input, every output stays under output_dir ----------------


def _symlinked_datalist(data: Path, sub: str, suffix: str) -> Path:
    """``lists/datalist_links.json`` listing symlinks (``links/*``) to the case's inputs."""
    (data / "links").mkdir(exist_ok=True)
    entries = []
    for src in sorted((data / sub).glob(f"*{suffix}")):
        (data / "links" / src.name).symlink_to(src)
        entries.append({"image": f"../links/{src.name}"})
    path = data / "lists" / f"datalist_links{suffix.replace('.', '_')}.json"
    path.write_text(json.dumps({"training": entries}))
    return path


@pytest.mark.parametrize(
    "datalist, spatial_dims, outputs",
    [
        ("datalist.json", 3, {"vols/case0.nii.gz", "vols/case1.nii.gz"}),  # absolute paths
        ("datalist_rel.json", 3, {"vols/case0.nii.gz", "vols/case1.nii.gz"}),  # ../ paths
        ("datalist2d.json", 2, {"pics/pic0.png", "pics/pic1.png"}),  # absolute paths, pictures
        ("links3d", 3, {"links/case0.nii.gz", "links/case1.nii.gz"}),  # symlinked sources
        ("links2d", 2, {"links/pic0.png", "links/pic1.png"}),
    ],
)
def test_datalist_abs_paths_store_decode_stays_contained(
    tmp_path: Path, datalist: str, spatial_dims: int, outputs: set[str]
) -> None:
    data = make_case("datalist-abs-paths", tmp_path / "case")
    if datalist.startswith("links"):
        sub, suffix = ("vols", ".nii.gz") if spatial_dims == 3 else ("pics", ".png")
        dl = _symlinked_datalist(data, sub, suffix)
    else:
        dl = data / "lists" / datalist
    before = _tree(data)
    store = encode_dataset(_network(spatial_dims), dl, tmp_path / "store", spatial_dims=spatial_dims)
    out = tmp_path / "decoded"
    written = store.decode_to(out, _network(spatial_dims))
    assert _tree(data) == before  # no input file written
    assert {p.relative_to(out).as_posix() for p in written} == outputs
    assert all(out.resolve() in p.resolve().parents for p in written)


def test_datalist_abs_paths_decode_into_the_input_folder_is_refused(tmp_path: Path) -> None:
    data = make_case("datalist-abs-paths", tmp_path / "case")
    before = _tree(data)
    store = encode_dataset(_network(3), data / "lists" / "datalist.json", tmp_path / "store", spatial_dims=3)
    with pytest.raises(InputError, match="input"):  # --output_dir = the folder the images came from
        store.decode_to(data, _network(3))
    assert _tree(data) == before


@pytest.mark.slow
@pytest.mark.parametrize("datalist, spatial_dims", [("datalist.json", 3), ("datalist_rel.json", 3), ("datalist2d.json", 2)])
def test_datalist_abs_paths_bundle_inference_stays_contained(tmp_path: Path, datalist: str, spatial_dims: int) -> None:
    data = make_case("datalist-abs-paths", tmp_path / "case")
    before = _tree(data)
    out = tmp_path / "out"
    args = ["--dataset_dir", str(data / "lists" / datalist), "--output_dir", str(out), "--spatial_dims", str(spatial_dims)]
    if spatial_dims == 3:  # the committed model is 2D: a 3D network of the same config, untrained
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(REPO / "bundle" / "configs" / "inference.yaml"))
        parser["spatial_dims"] = 3
        torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "net3d.pt")
        args += ["--ckpt_path", str(tmp_path / "net3d.pt")]
    run_bundle("inferring", "bundle/configs/inference.yaml", *args)
    assert _tree(data) == before
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    stem = "vols/case" if spatial_dims == 3 else "pics/pic"
    ext = ".nii.gz" if spatial_dims == 3 else ".png"
    assert written == sorted(
        [f"latents/{stem}{i}_latent.nii.gz" for i in range(2)] + [f"reconstructions/{stem}{i}_recon{ext}" for i in range(2)]
    )
    assert np.all([out.resolve() in p.resolve().parents for p in out.rglob("*")])
