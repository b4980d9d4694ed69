"""MONAI Label integration: the real ``monailabel start_server`` with ``apps/monailabel`` serves the
segmentation head, and ``/infer`` returns the same mask as the bundle's own inference config.

MONAI Label 0.8.5 needs versions that differ from the test environment (numpy<2, pydicom<3, a
torchvision that imports, see ``constraints/label.txt``), so it lives in its own environment,
``.venv-label``, which README command 2 (and so CI) builds. The test runs the executable named by
``MEDVAE_MONAILABEL``, else ``.venv-label/bin/monailabel``, else ``monailabel`` on PATH (its
environment must have this package installed too), and skips with that reason if there is none.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from .conftest import REPO, run_bundle

STARTUP_S = 240


def _monailabel() -> Path:
    in_repo = REPO / ".venv-label" / "bin" / "monailabel"
    exe = os.environ.get("MEDVAE_MONAILABEL") or (str(in_repo) if in_repo.is_file() else shutil.which("monailabel"))
    if not exe or not Path(exe).is_file():
        pytest.skip(
            "MONAI Label is not installed: build .venv-label as in constraints/label.txt (README command 2 does), "
            "or set MEDVAE_MONAILABEL=<that venv>/bin/monailabel"
        )
    return Path(exe)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture
def studies_and_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Three 64x64 CT phantoms as 2D NIfTI studies, and seeded weights for the segmentation head."""
    from monai.bundle import ConfigParser

    from medvae_monai.data import ImageSource

    monkeypatch.chdir(REPO)
    studies = tmp_path / "studies"
    studies.mkdir()
    items = ImageSource(None, 2, max_items=12).items("test")
    for item in items[::4]:  # one normal, one cyst, one tumour
        name = item["source"].replace("/", "_")
        nib.save(nib.Nifti1Image(item["image"][0].numpy().astype(np.float32), np.eye(4)), studies / f"{name}.nii.gz")
    parser = ConfigParser()
    parser.read_config("bundle/configs/infer_segmentation.yaml")
    torch.manual_seed(0)
    ckpt = tmp_path / "segmentation.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    return studies, ckpt


@pytest.mark.slow
def test_monailabel_server_segments_a_study(studies_and_checkpoint: tuple[Path, Path], tmp_path: Path) -> None:
    exe = _monailabel()
    studies, ckpt = studies_and_checkpoint
    study = "phantom2d_tumour_00602"
    # what the bundle's own inference config predicts for the study (before MONAI Label adds its
    # labels/ folder to the studies)
    out = tmp_path / "cli"
    run_bundle(
        "inferring", "bundle/configs/infer_segmentation.yaml", "--dataset_dir", str(studies),
        "--ckpt_path", str(ckpt), "--intensity", "ct", "--output_dir", str(out),
    )  # fmt: skip
    expected = np.asarray(nib.load(out / "masks" / f"{study}_seg.nii.gz").dataobj)

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [
        str(exe), "start_server", "--app", "apps/monailabel", "--studies", str(studies),
        "--host", "127.0.0.1", "--port", str(port),
        "--conf", "segmentation_ckpt", str(ckpt), "--conf", "intensity", "ct",
    ]  # fmt: skip
    # the monailabel script runs `python -m monailabel.main`: its own environment first on PATH;
    # the repo root as working directory, where the configs' macros resolve
    env = {**os.environ, "PATH": f"{exe.parent}{os.pathsep}{os.environ['PATH']}", "MEDVAE_QUIET": "1"}
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_S
        info = None
        while info is None:
            assert server.poll() is None, f"server exited: {(tmp_path / 'server.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"no /info/ in {STARTUP_S} s: {(tmp_path / 'server.log').read_text()[-3000:]}"
            )
            try:
                info = _get(f"{base}/info/")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        model = info["models"]["medvae_segmentation"]
        assert model["type"] == "segmentation"
        assert model["labels"] == {"lesion": 1}

        request = urllib.request.Request(
            f"{base}/infer/medvae_segmentation?image={study}&output=image", data=b"", method="POST"
        )
        with urllib.request.urlopen(request, timeout=120) as r:
            returned = tmp_path / "returned.nii.gz"
            returned.write_bytes(r.read())
        mask = np.asarray(nib.load(returned).dataobj)
        image = np.asarray(nib.load(studies / f"{study}.nii.gz").dataobj)
        assert mask.shape == image.shape  # a 2D mask for a 2D study
        assert set(np.unique(mask).tolist()) <= {0, 1}
        assert mask.any()  # the seeded weights mark lesion pixels in this phantom
    finally:
        os.killpg(server.pid, signal.SIGINT)  # uvicorn shuts down cleanly on Ctrl-C
        try:
            rc = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            raise
        finally:
            log.close()
    assert rc in (0, -signal.SIGINT), (tmp_path / "server.log").read_text()[-2000:]
    with pytest.raises(urllib.error.URLError):
        _get(f"{base}/info/", timeout=2)
    np.testing.assert_array_equal(mask, expected)
