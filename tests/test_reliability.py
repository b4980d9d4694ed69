"""Bad inputs: one test per row of docs/reliability.md. Each writes real files (PNG, NIfTI, DICOM,
JSON, checkpoints) and checks for one readable InputError that names the file or key and the fix,
or, where the user opted in, a skip with a warning and a count."""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from ignite.engine import Engine, Events
from monai.transforms import Compose, Identityd
from PIL import Image

from medvae_monai.config import check_device, parse_setting
from medvae_monai.data import CheckedCacheDataset, ImageSource, make_dataset
from medvae_monai.errors import InputError
from medvae_monai.handlers import StopOnDivergence
from medvae_monai.networks import MedVAE
from medvae_monai.utils import atomic_write_json, ensure_writable_dir, load_state_dict, load_weights

from .conftest import REPO, data_path, run_bundle

RNG = np.random.default_rng(0)


def write_png(path: Path, shape: tuple[int, ...] = (16, 16)) -> Path:
    Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def write_nifti(path: Path, data: np.ndarray | None = None, affine: np.ndarray | None = None) -> Path:
    data = RNG.random((12, 12, 12), dtype=np.float32) if data is None else data
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def write_dicom(path: Path) -> Path:
    itk.imwrite(itk.image_from_array(RNG.integers(0, 1000, (16, 16)).astype(np.int16)), str(path))
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def class_folder(root: Path, files: dict[str, object]) -> Path:
    """``root/a/<name>`` for each file; values are writers ``f(path)``."""
    (root / "a").mkdir(parents=True)
    for name, write in files.items():
        write(root / "a" / name)
    return root


def refused(match: str, *names: str):
    """``pytest.raises(InputError)`` whose message must contain ``match`` and every name."""

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(InputError, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self.ctx.__exit__(*exc)
            for n in names:
                assert n in str(self.info.value), f"{n!r} not named in: {self.info.value}"
            return suppressed

    return _Check()


WRITERS = {".png": (write_png, 2), ".nii.gz": (write_nifti, 3), ".nii": (write_nifti, 3), ".dcm": (write_dicom, 2)}


# row: a zero-byte file
@pytest.mark.parametrize("suffix", sorted(WRITERS))
def test_zero_byte_file(tmp_path: Path, suffix: str) -> None:
    root = class_folder(tmp_path, {f"x{suffix}": lambda p: p.write_bytes(b"")})
    with refused("empty \\(0 bytes\\)", f"x{suffix}"):
        make_dataset(root, "all", spatial_dims=WRITERS[suffix][1])


# row: a float picture (TIFF) whose values are not grey levels
@pytest.mark.parametrize("values", ["unit", "signed"])
def test_float_picture_with_fractional_values(tmp_path: Path, values: str) -> None:
    """Breaker round 4, finding 2: a float TIFF in [0, 1] was read as 8-bit grey levels (so nearly black)."""
    y, x = np.mgrid[:32, :32].astype(np.float32)
    a = (x + y) / 62.0 if values == "unit" else np.sin(x / 5) * 400 - 100
    root = class_folder(tmp_path, {"x.tif": lambda p: Image.fromarray(a.astype(np.float32)).save(p)})
    with refused("not whole numbers .* NIfTI", "x.tif"):
        make_dataset(root, "all", spatial_dims=2)
    whole = class_folder(tmp_path / "whole", {"x.tif": lambda p: Image.fromarray(x + y).save(p)})  # grey levels
    assert float(make_dataset(whole, "all", spatial_dims=2)[0]["image"].max()) == pytest.approx(62 / 255)


# row: a truncated or corrupt NIfTI, PNG or DICOM
@pytest.mark.parametrize("suffix", sorted(WRITERS))
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    write, sd = WRITERS[suffix]
    good = class_folder(tmp_path / "good", {f"x{suffix}": write})
    assert len(make_dataset(good, "all", spatial_dims=sd)) == 1  # the intact file loads
    bad = class_folder(tmp_path / "bad", {f"x{suffix}": lambda p: truncate(write(p))})
    with refused("cannot be read as an image.*corrupt, truncated", f"x{suffix}"):
        make_dataset(bad, "all", spatial_dims=sd)


@pytest.mark.parametrize("suffix", [".png", ".nii.gz", ".dcm"])
def test_corrupt_file_random_content(tmp_path: Path, suffix: str) -> None:
    noise = RNG.integers(0, 256, 2048, np.uint8).tobytes()
    root = class_folder(tmp_path, {f"x{suffix}": lambda p: p.write_bytes(noise)})
    with refused("cannot be read as an image", f"x{suffix}"):
        make_dataset(root, "all", spatial_dims=WRITERS[suffix][1])


# row: a non-image file in a class folder (error by default; opt-in skip with a warning and a count)
def test_non_image_file_in_class_folder(tmp_path: Path) -> None:
    root = class_folder(tmp_path, {"notes.txt": lambda p: p.write_text("scan notes"), "x.png": write_png})
    with refused("not an image file.*skip_unreadable", "notes.txt"):
        ImageSource(root).items("all")
    with pytest.warns(UserWarning, match="skipped 1 non-image file"):
        items = ImageSource(root, skip_unreadable=True).items("all")
    assert [Path(it["image"]).name for it in items] == ["x.png"]


def test_opt_in_skip_of_unreadable_images_warns_with_count(tmp_path: Path) -> None:
    files = {f"ok{i}.png": write_png for i in range(3)}
    files |= {"trunc.png": lambda p: truncate(write_png(p)), "empty.png": lambda p: p.write_bytes(b"")}
    root = class_folder(tmp_path, files)
    with refused("empty.png"):  # the default: the first bad file stops the run
        make_dataset(root, "all")
    with pytest.warns(UserWarning, match="skipped 2 of 5 item"):
        ds = make_dataset(root, "all", skip_unreadable=True)
    assert len(ds) == 3 and all(Path(ds[i]["image"].meta["filename_or_obj"]).stem.startswith("ok") for i in range(3))
    assert sorted(Path(item["image"]).name for item, _ in ds.skipped) == ["empty.png", "trunc.png"]


@pytest.mark.slow
def test_opt_in_skip_in_bundle_training(tmp_path: Path) -> None:
    files = {f"{i:02d}.png": write_png for i in range(10)} | {"05.png": lambda p: truncate(write_png(p))}
    root = class_folder(tmp_path / "data", files | {"notes.txt": lambda p: p.write_text("x")})
    args = ("--dataset_dir", str(root), "--max_epochs", "1", "--batch_size", "2", "--output_dir", str(tmp_path / "out"))
    proc = run_bundle("training", "bundle/configs/train.yaml", *args, check=False)
    assert proc.returncode != 0 and "InputError: " in proc.stdout and "notes.txt: not an image file" in proc.stdout
    proc = run_bundle("training", "bundle/configs/train.yaml", *args, "--skip_unreadable", "true")
    assert f"skipped: {root / 'a' / '05.png'}: cannot be read as an image" in proc.stdout
    assert (tmp_path / "out" / "model.pt").is_file()


def test_opt_in_skip_with_every_file_bad_is_an_error(tmp_path: Path) -> None:
    root = class_folder(tmp_path, {"a.png": lambda p: p.write_bytes(b""), "b.png": lambda p: p.write_bytes(b"")})
    with refused("all 2 item\\(s\\) were refused"):
        make_dataset(root, "all", skip_unreadable=True)


# row: NaN or Inf voxels
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_voxels(tmp_path: Path, bad: float) -> None:
    data = RNG.random((12, 12, 12), dtype=np.float32)
    data[3, 4, 5] = bad
    root = class_folder(tmp_path, {"x.nii.gz": lambda p: write_nifti(p, data)})
    with refused("1 NaN/Inf voxel", "x.nii.gz"):
        make_dataset(root, "all", spatial_dims=3)


# row: a 4D volume where 3D is expected
def test_4d_volume_for_3d_model(tmp_path: Path) -> None:
    root = class_folder(tmp_path, {"x.nii.gz": lambda p: write_nifti(p, RNG.random((12, 12, 12, 5), dtype=np.float32))})
    with refused("4D volume.*select one 3D volume", "x.nii.gz"):
        make_dataset(root, "all", spatial_dims=3)
    with refused("expected a 2D image.*4D", "x.nii.gz"):  # and given to a 2D model
        make_dataset(root, "all", spatial_dims=2, in_channels=5)


# row: an RGB image given to a 1-channel model, and the reverse
def test_rgb_to_grey_model_and_reverse(tmp_path: Path) -> None:
    rgb = class_folder(tmp_path / "rgb", {"x.png": lambda p: write_png(p, (16, 16, 3))})
    with refused("takes 1 channel.*has 3.*convert it to greyscale", "x.png"):
        make_dataset(rgb, "all", in_channels=1)
    assert make_dataset(rgb, "all", in_channels=3)[0]["image"].shape == (3, 16, 16)
    grey = class_folder(tmp_path / "grey", {"x.png": write_png})
    with refused("takes 3 channel.*has 1.*in_channels=1", "x.png"):
        make_dataset(grey, "all", in_channels=3)


# row: a size below the minimum, or not divisible by the downsampling factor
def test_size_below_minimum(tmp_path: Path) -> None:
    root = class_folder(tmp_path, {"x.png": lambda p: write_png(p, (3, 16))})
    with refused("below the minimum 4.*pad or resample", "x.png"):
        make_dataset(root, "all", min_size=4)


def test_size_not_divisible_is_padded_and_cropped_back(tmp_path: Path) -> None:
    root = class_folder(tmp_path, {"x.png": lambda p: write_png(p, (13, 22))})
    img = make_dataset(root, "all", min_size=4)[0]["image"]
    net = MedVAE(2, 1, channels=(8, 16), downsample_factor=4).eval()
    with torch.no_grad():
        recon, mu, _ = net(img[None].as_tensor())
    assert recon.shape == (1, 1, 22, 13) and mu.shape == (1, 1, 6, 4)  # ceil(22/4), ceil(13/4)


def test_mixed_sizes_go_one_at_a_time_in_inference_and_are_refused_in_training(tmp_path: Path, caplog) -> None:
    files = {"a.png": lambda p: write_png(p, (16, 16)), "b.png": lambda p: write_png(p, (16, 20))}
    root = class_folder(tmp_path, files)
    mixed = make_dataset(root, "all")
    with caplog.at_level("WARNING", logger="medvae_monai"):
        assert mixed.batch_size_for(32) == 1
    assert "2 different shapes" in caplog.text and "one at a time" in caplog.text
    largest = [max(d["image"].shape[i] for d in mixed.data) for i in (1, 2)]
    with refused(f'batches of 8 cannot be stacked.*--spatial_size "{re.escape(str(largest))}".*--batch_size 1', "a.png", "b.png"):
        mixed.batch_size_for(8, training=True)
    assert mixed.batch_size_for(1, training=True) == 1
    source = ImageSource(root)  # a config's Compose around the source's (infer_classifier.yaml) is cached too
    nested = CheckedCacheDataset(source.items("all"), Compose([source.preprocessing(), Identityd("image")]))
    assert isinstance(nested.data[0]["image"], torch.Tensor) and nested.batch_size_for(32) == 1
    fixed = make_dataset(root, "all", spatial_size=(16, 16))  # the fix the message gives
    assert fixed[1]["image"].shape == (1, 16, 16) and fixed.batch_size_for(8, training=True) == 8


# row: an empty dataset folder
def test_empty_dataset_folder(tmp_path: Path) -> None:
    with refused("no images", str(tmp_path)):
        ImageSource(tmp_path).items("all")
    (tmp_path / "benign").mkdir()
    with refused("class folders \\['benign'\\] hold\\(s\\) no images"):
        ImageSource(tmp_path).items("all")


def test_empty_split(tmp_path: Path) -> None:
    root = class_folder(tmp_path, {"x.png": write_png})  # one image: it lands in train, test is empty
    with refused("split 'test' is empty"):
        ImageSource(root).items("test")


# row: labels missing, or unknown class names
def test_unknown_class_folder(tmp_path: Path) -> None:
    for name in ("benign", "malignnat"):
        (tmp_path / name).mkdir()
        write_png(tmp_path / name / "x.png")
    with refused("unknown class 'malignnat' \\(did you mean 'malignant'\\?\\)", "malignnat"):
        ImageSource(tmp_path, class_names=["benign", "malignant", "normal"]).items("all")
    source = ImageSource(tmp_path)  # without a class list the folders define the classes
    assert source.class_names == ["benign", "malignnat"]


def test_class_names_fix_label_indices(tmp_path: Path) -> None:
    (tmp_path / "normal").mkdir()
    write_png(tmp_path / "normal" / "x.png")  # a test set holding only the last class
    source = ImageSource(tmp_path, class_names=["benign", "malignant", "normal"])
    assert [it["label"] for it in source.items("all")] == [2] and source.class_names == ["benign", "malignant", "normal"]


def test_labels_missing(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png")  # a flat folder: no class sub-folders, so no labels
    with refused("no class sub-folders.*no labels", str(tmp_path)):
        ImageSource(tmp_path, class_names=["benign", "malignant"]).items("all")


# row: image and mask shapes or affines that differ
def test_mask_shape_differs(tmp_path: Path) -> None:
    root = class_folder(tmp_path, {"x.png": write_png, "x_mask.png": lambda p: write_png(p, (16, 8))})
    with refused("spatial shapes differ", "x.png", "x_mask.png"):
        make_dataset(root, "all", with_mask=True)


def test_mask_affine_differs(tmp_path: Path) -> None:
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    write_nifti(tmp_path / "imagesTr" / "a.nii.gz")
    write_nifti(tmp_path / "labelsTr" / "a.nii.gz", np.ones((12, 12, 12), np.uint8), np.diag([1.0, 1.0, 2.0, 1.0]))
    entry = {"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [entry]}))
    with refused("affines differ.*Resample the mask", "imagesTr/a.nii.gz", "labelsTr/a.nii.gz"):
        make_dataset(tmp_path, "all", spatial_dims=3, with_mask=True)
    write_nifti(tmp_path / "labelsTr" / "a.nii.gz", np.ones((12, 12, 12), np.uint8))  # same grid: accepted
    assert make_dataset(tmp_path, "all", spatial_dims=3, with_mask=True)[0]["mask"].shape == (1, 12, 12, 12)


@pytest.mark.parametrize("folder, sd", [("Task04_Hippocampus", 3), ("BUSI", 2)])
def test_real_masks_pass_the_grid_check(folder: str, sd: int) -> None:
    ds = make_dataset(data_path(folder), "all", spatial_dims=sd, with_mask=True, max_items=6)
    assert len(ds) == 6 and all(ds[i]["mask"].shape == ds[i]["image"].shape for i in range(6))


# row: a datalist JSON with wrong keys
@pytest.mark.parametrize(
    "content, match",
    [
        ({"train": [{"image": "a.nii.gz"}]}, "no 'training' list \\(found keys \\['train'\\]\\)"),
        ({"training": [{"img": "a.nii.gz"}]}, "entry 0 of 'training' has no 'image' key"),
        ({"training": [{"image": ["a.nii.gz"]}]}, "'image' must be a file path"),
        ({"training": [{"image": "a.nii.gz", "label": {"x": 1}}]}, "'label' must be a file path or an integer"),
        ({"training": [{"image": "missing.nii.gz"}]}, "entry 0 of 'training': image .*missing.nii.gz does not exist"),
        ({"training": []}, "must be a non-empty list"),
    ],
)
def test_datalist_wrong_keys(tmp_path: Path, content: dict, match: str) -> None:
    write_nifti(tmp_path / "a.nii.gz")
    (tmp_path / "list.json").write_text(json.dumps(content))
    with refused(match, "list.json"):
        ImageSource(tmp_path / "list.json").items("all")


def test_datalist_not_json(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text('{"training": [')
    with refused("cannot be read as a datalist JSON", "list.json"):
        ImageSource(tmp_path / "list.json").items("all")


# row: unknown or misspelled config overrides
@pytest.mark.slow
def test_misspelled_override_is_one_readable_error() -> None:
    proc = run_bundle("training", "bundle/configs/train.yaml", "--max_epoch", "1", check=False)
    assert proc.returncode != 0
    assert "InputError: unknown config override --max_epoch" in proc.stdout
    assert "Did you mean --max_epochs" in proc.stdout
    assert "Traceback" not in proc.stdout  # one message, not MONAI's wrapped traceback chain


# row: a checkpoint from another architecture
def test_checkpoint_from_another_architecture(tmp_path: Path) -> None:
    torch.save(MedVAE(2, 1, channels=(8, 16)).state_dict(), tmp_path / "small.pt")
    with refused("does not fit this MedVAE.*size mismatch.*another architecture", "small.pt"):
        load_weights(MedVAE(2, 1, channels=(16, 32)), tmp_path / "small.pt")
    torch.save(MedVAE(3, 1, channels=(8, 16)).state_dict(), tmp_path / "3d.pt")
    with refused("a 3D network and the config builds a 2D MedVAE.*--spatial_dims 3", "3d.pt"):
        load_weights(MedVAE(2, 1, channels=(8, 16)), tmp_path / "3d.pt")
    load_weights(MedVAE(2, 1, channels=(8, 16)), tmp_path / "small.pt")  # the right architecture loads
    head = {f"vae.{k}": v for k, v in MedVAE(2, 1, channels=(8, 16)).state_dict().items()} | {"head.0.weight": torch.ones(1)}
    torch.save(head, tmp_path / "classifier.pt")  # a head wrapper's weights given as a VAE checkpoint
    with refused("is a classifier or segmenter.*builds a MedVAE.*infer_classifier.yaml", "classifier.pt"):
        load_weights(MedVAE(2, 1, channels=(8, 16)), tmp_path / "classifier.pt")


class _Payload:
    """Pickles to a call that creates a marker file: proof of code execution if ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# row: a model.pt that holds pickled objects rather than a state dict
def test_pickled_model_pt_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    torch.save({"encoder.0.weight": torch.zeros(1), "hook": _Payload(marker)}, tmp_path / "model.pt")
    with refused("refused, it holds pickled Python objects.*weights_only=True.*state_dict", "model.pt"):
        load_weights(MedVAE(2, 1), tmp_path / "model.pt")
    assert not marker.exists()
    torch.save(MedVAE(2, 1, channels=(8, 16)), tmp_path / "module.pt")  # a whole pickled nn.Module
    with refused("refused, it holds pickled Python objects", "module.pt"):
        load_state_dict(tmp_path / "module.pt")


def test_truncated_or_wrong_checkpoint(tmp_path: Path) -> None:
    torch.save(MedVAE(2, 1, channels=(8, 16)).state_dict(), tmp_path / "model.pt")
    truncate(tmp_path / "model.pt")
    with refused("cannot be read as a PyTorch checkpoint.*corrupt or truncated", "model.pt"):
        load_state_dict(tmp_path / "model.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with refused("holds a Tensor, not a state dict", "tensor.pt"):
        load_weights(MedVAE(2, 1), tmp_path / "tensor.pt")
    with refused("does not exist.*--ckpt_path", "nope.pt"):
        load_state_dict(tmp_path / "nope.pt")


# row: an unwritable output folder (CI runs as root, so permissions alone block nothing: use a
# path below a regular file, and one in /proc, which no user can create folders in)
def test_unwritable_output_folder(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    with refused("not writable.*choose another --output_dir", "a_file/out"):
        ensure_writable_dir(tmp_path / "a_file" / "out")
    if sys.platform.startswith("linux"):
        with refused("not writable", "/proc/medvae-out"):
            ensure_writable_dir("/proc/medvae-out")
    assert ensure_writable_dir(tmp_path / "new" / "out").is_dir()  # a writable one is created
    with refused("--output_dir is null"):
        ensure_writable_dir(None)
    with refused("--ckpt_path is null.*pass a checkpoint file"):
        load_state_dict(None)


def test_a_checkpoint_of_an_overlay_names_the_overlay() -> None:
    """The factor-8 weights given to the default VAE: the message gives the overlay that builds them."""
    with refused(r"the weights of the overlay .*vae_f8c4\.yaml: list that after the base config", "vae_f8c4.pt"):
        load_weights(MedVAE(2, 1), REPO / "bundle" / "models" / "vae_f8c4.pt")


def test_settings_that_cannot_run_here_are_refused_in_one_line(tmp_path: Path) -> None:
    with refused("--num_samples '1': out of range; give a number >= 2"):  # a spread needs two samples
        parse_setting("num_samples", "1", 32)
    with refused("--spatial_dims '4': give one of 2, 3"):
        parse_setting("spatial_dims", "4", 2)
    with refused(r"spatial_size \[32, 32, 32\]: give 2 positive sizes for spatial_dims 2"):
        ImageSource(tmp_path, spatial_size=[32, 32, 32])
    with refused("--device 'gpu7': not a device name"):
        check_device("gpu7")
    if not torch.cuda.is_available():
        with refused("--device 'cuda': PyTorch sees no CUDA GPU here; give --device cpu"):
            check_device("cuda")
    assert check_device("cpu") == torch.device("cpu")


def test_diverged_training_fails_before_anything_is_saved() -> None:
    """ignite's TerminateOnNan would still fire COMPLETED (where model.pt is written); this raises first."""
    losses = iter([1.0, float("nan"), 1.0])
    engine = Engine(lambda e, batch: {"loss": torch.tensor(next(losses)), "kl": torch.tensor(0.5)})
    StopOnDivergence().attach(engine)
    fired = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: fired.append("epoch"))
    engine.add_event_handler(Events.COMPLETED, lambda e: fired.append("completed"))
    with refused("training diverged: loss nan at epoch 1, iteration 2.*Lower --learning_rate"):
        engine.run([0, 1, 2], max_epochs=1)
    assert fired == []


@pytest.mark.slow
def test_unwritable_output_folder_in_bundle_run(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "out"
    args = ("--output_dir", str(out), "--max_items", "8")
    proc = run_bundle("training", "bundle/configs/train.yaml", *args, check=False)
    assert proc.returncode != 0
    assert f"InputError: output folder '{out}' is not writable" in proc.stdout and "Traceback" not in proc.stdout


def test_files_are_written_with_normal_permissions(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "m.json", {"a": 1})
    umask = os.umask(0o022)
    os.umask(umask)
    # not mkstemp's 0600: others can read model.pt
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~umask


# security: every weights load is weights_only, and the bundle's `$` expressions stay minimal
# (docs/security.md). These scan the repository, so a new unsafe load or expression fails CI.
REPO_ROOT = Path(__file__).resolve().parents[1]
PY_SOURCES = [
    p for d in ("medvae_monai", "bundle", "benchmarks", "tests", "scripts") for p in sorted((REPO_ROOT / d).rglob("*.py"))
]


def _kwarg(call: ast.Call, name: str) -> object:
    return next((k.value.value for k in call.keywords if k.arg == name and isinstance(k.value, ast.Constant)), None)


def test_every_torch_load_is_weights_only() -> None:
    unsafe = []
    for path in PY_SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"):
                continue
            owner = ast.unparse(node.func.value)
            if owner == "torch" and _kwarg(node, "weights_only") is not True:
                unsafe.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {ast.unparse(node)}")
            if owner in ("np", "numpy") and _kwarg(node, "allow_pickle") is not False:
                unsafe.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {ast.unparse(node)}")
    for path in sorted((REPO_ROOT / "bundle").rglob("*.yaml")) + sorted((REPO_ROOT / "bundle").rglob("*.json")):
        unsafe += [f"{path.relative_to(REPO_ROOT)}: {line.strip()}" for line in path.read_text().splitlines()
                   if "torch.load(" in line and "weights_only=True" not in line]
    assert not unsafe, "loads that could unpickle code:\n" + "\n".join(unsafe)


# what `$` expressions may use: references (@id), the config's imports, and harmless builtins
ALLOWED_NAMES = {
    "_ref", "medvae_monai", "monai", "torch", "numpy", "os", "dist", "Events",
    "len", "range", "min", "max", "int", "float", "str", "bool", "list", "tuple", "dict", "sorted", "isinstance",
}
ALLOWED_IMPORTS = ("os", "torch", "numpy", "monai", "medvae_monai", "ignite")
FORBIDDEN_ATTRS = {
    "system", "popen", "spawnl", "execv", "execl", "remove", "unlink", "rmtree", "rmdir", "load", "loads",
    "__import__", "__class__", "__globals__", "__subclasses__", "__builtins__",
}


def bundle_expressions() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []

    def walk(x: object, where: str) -> None:
        if isinstance(x, dict):
            for v in x.values():
                walk(v, where)
        elif isinstance(x, list):
            for v in x:
                walk(v, where)
        elif isinstance(x, str) and x.startswith("$"):
            found.append((where, x[1:]))

    for path in sorted((REPO_ROOT / "bundle" / "configs").glob("*.yaml")):
        walk(yaml.safe_load(path.read_text()), path.name)
    return found


def test_bundle_expressions_stay_minimal() -> None:
    exprs = bundle_expressions()
    assert exprs, "no bundle expressions found: the scan is broken"
    bad = []
    for where, expr in exprs:
        if expr.startswith(("import ", "from ")):
            module = expr.split()[1]
            if not module.startswith(ALLOWED_IMPORTS):
                bad.append(f"{where}: ${expr} (import of {module})")
            continue
        tree = ast.parse(re.sub(r"@[\w#]+", "_ref", expr), mode="eval")
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id not in ALLOWED_NAMES:
                bad.append(f"{where}: ${expr} (name {node.id})")
            if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRS:
                bad.append(f"{where}: ${expr} (attribute .{node.attr})")
            if isinstance(node, (ast.Lambda, ast.NamedExpr)):
                bad.append(f"{where}: ${expr} (code in config: put it in the package)")
    assert not bad, "bundle expressions beyond references and package calls:\n" + "\n".join(bad)


def test_output_folder_inside_the_dataset_folder_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "Hand").mkdir(parents=True)
    for out in (data, data / "runs", data / "Hand" / ".." / "runs" / "deep"):
        with refused("inside the dataset folder.*outside it", str(data)):
            ensure_writable_dir(out, data)
    assert not (data / "runs").exists()  # refused before anything is created
    assert ensure_writable_dir(tmp_path / "runs", data).is_dir()
    (data / "labels.csv").write_text("image,label\n")  # a datalist file is not scanned: beside it is fine
    assert ensure_writable_dir(data / "runs", data / "labels.csv").is_dir()


@pytest.mark.slow
def test_bundle_refuses_an_output_folder_inside_the_dataset(tmp_path: Path) -> None:
    data = tmp_path / "pics" / "Hand"
    data.mkdir(parents=True)
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(data / "a.png")
    proc = run_bundle("inferring", "bundle/configs/inference.yaml", "--dataset_dir", str(tmp_path / "pics"),
                      "--output_dir", str(tmp_path / "pics" / "runs"), check=False)  # fmt: skip
    assert proc.returncode != 0 and "inside the dataset folder" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == ["Hand"]


@pytest.mark.slow
@pytest.mark.parametrize("inside", ["models", "configs", "."])
def test_bundle_refuses_an_output_folder_inside_the_bundle(tmp_path: Path, inside: str) -> None:
    """Breaker round 4, finding 1: training with --output_dir bundle/models replaced the pretrained
    model.pt. The copy here holds the configs and an empty models/ folder, so a regression writes there."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "bundle" / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    before = sorted(p.relative_to(bundle) for p in bundle.rglob("*"))
    proc = run_bundle("training", str(bundle / "configs" / "train.yaml"), "--max_epochs", "1", "--max_items", "8",
                      "--output_dir", str(bundle / inside), check=False)  # fmt: skip
    assert proc.returncode != 0 and "is inside the bundle" in proc.stdout and "Traceback" not in proc.stdout
    assert sorted(p.relative_to(bundle) for p in bundle.rglob("*")) == before
