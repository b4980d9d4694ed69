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
from hypothesis import given
from hypothesis import strategies as st

from medvae_monai.config import parse_setting, require_output
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


# --- bool-override: command-line values are typed by the id's default, or refused by key ----------------------


@pytest.mark.parametrize(
    "raw, default, value",
    [
        *[(t, False, False) for t in ("false", "False", "FALSE", "0", "no", "No")],
        *[(t, False, True) for t in ("true", "True", "1", "yes", "YES")],
        ("32", 32, 32), ("8.0", 32, 8), ("1e-3", 0.002, 0.001), ("2", 0.5, 2.0),
        ("null", None, None), ("None", None, None),
    ],
)
def test_typed_settings(raw: str, default: object, value: object) -> None:
    typed = parse_setting("key", raw, default)
    assert typed == value and type(typed) is type(value)


@pytest.mark.parametrize(
    "raw, default", [("maybe", False), ("flase", True), ("", False), ("3.5", 32), ("abc", 32), ("nan", 0.1), ("inf", 1.0)]
)
def test_untyped_settings_are_refused_naming_the_key(raw: str, default: object) -> None:
    with pytest.raises(InputError, match="--batch_size"):
        parse_setting("batch_size", raw, default)


@given(word=st.sampled_from(["true", "false", "yes", "no", "1", "0"]), flips=st.lists(st.booleans(), min_size=5, max_size=5))
def test_any_spelling_of_a_boolean_parses(word: str, flips: list[bool]) -> None:
    spelled = "".join(c.upper() if f else c for c, f in zip(word, flips + [False] * len(word)))
    assert parse_setting("resume", spelled, True) is (word in ("true", "yes", "1"))


@pytest.mark.slow
@pytest.mark.parametrize("spelling", ["false", "no"])
def test_bool_override_skip_unreadable_false_stops_on_the_broken_file(tmp_path: Path, spelling: str) -> None:
    data = make_case("bool-override", tmp_path / "case")
    proc = run_bundle(
        "training", "bundle/configs/train.yaml", "--dataset_dir", str(data), "--output_dir", str(tmp_path / "run"),
        "--skip_unreadable", spelling, "--max_epochs", "1", check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "broken.png" in proc.stdout and "InputError" in proc.stdout
    assert not (tmp_path / "run" / "model.pt").exists()


# --- few-images-train: a set smaller than one batch trains, and a run never exits 0 without its model ---------


@pytest.mark.slow
def test_few_images_train_writes_the_model_and_resume_false_retrains(tmp_path: Path) -> None:
    data = make_case("few-images-train", tmp_path / "case")
    run = ["--dataset_dir", str(data), "--output_dir", str(tmp_path / "run"), "--max_epochs", "1"]
    proc = run_bundle("training", "bundle/configs/train.yaml", *run)  # default --batch_size 32 > 18 training images
    assert "fewer than --batch_size 32" in proc.stdout
    assert (tmp_path / "run" / "model.pt").is_file()
    again = run_bundle("training", "bundle/configs/train.yaml", *run, "--resume", "false")
    assert "Resumed" not in again.stdout and "nothing to do" not in again.stdout  # trained again from scratch
    resumed = run_bundle("training", "bundle/configs/train.yaml", *run, "--resume", "True")
    assert "nothing to do" in resumed.stdout


def test_require_output_refuses_a_missing_model(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="model.pt"):
        require_output(tmp_path / "model.pt")
