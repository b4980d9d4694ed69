"""MONAI Label integration: the stock ``monaibundle`` app, as MONAI Label ships it (no code of ours in
the app), serves and trains the committed BUSI lesion segmenter from a small bundle written from this
bundle's layers (``python -m medvae_monai.bundle.monailabel``), on real BUSI studies.

MONAI Label 0.8.5 needs versions that differ from the test environment (numpy<2, pydicom<3, a
torchvision that imports, see ``constraints/label.txt``), so it lives in its own environment,
``.venv-label``, which README command 2 (and so CI) builds. The test runs the executable named by
``MEDVAE_MONAILABEL``, else ``.venv-label/bin/monailabel``, else ``monailabel`` on PATH (its
environment must have this package installed too), and skips with that reason if there is none.
The server's log goes to ``server.log`` in the test's folder; every failure message ends with it.
"""

from __future__ import annotations

import hashlib
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

import numpy as np
import pytest
from PIL import Image

from medvae_monai.bundle.monailabel import APP_BUNDLES, write_app_bundle

from .conftest import REPO, data_path

STARTUP_S = 300
MODEL = "medvae_busi_segmentation"
# real BUSI cases: four labelled studies to train on, one more to segment (it has a mask: Dice)
LABELLED = ["benign (1)", "benign (2)", "malignant (1)", "malignant (2)"]
QUERY = "benign (3)"


def _monailabel() -> Path:
    in_repo = REPO / ".venv-label" / "bin" / "monailabel"
    exe = os.environ.get("MEDVAE_MONAILABEL") or (str(in_repo) if in_repo.is_file() else shutil.which("monailabel"))
    if not exe or not Path(exe).is_file():
        pytest.skip(
            "MONAI Label is not installed: build .venv-label as in constraints/label.txt (README command 2 does), "
            "or set MEDVAE_MONAILABEL=<that venv>/bin/monailabel"
        )
    return Path(exe)


def _stock_app(exe: Path, dest: Path) -> Path:
    """The monaibundle app as ``monailabel apps --download --name monaibundle`` copies it: from the
    sample apps that the monailabel package installs beside its script (copied here directly, which
    skips the 10-25 s the command spends importing MONAI Label)."""
    sample = exe.parent.parent / "monailabel" / "sample-apps" / "monaibundle"
    if not (sample / "main.py").is_file():
        pytest.skip(f"no stock monaibundle app at {sample}: install monailabel==0.8.5 as constraints/label.txt says")
    return Path(shutil.copytree(sample, dest / "monaibundle", ignore=shutil.ignore_patterns("__pycache__")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, body: dict | None = None, timeout: float = 5.0) -> bytes:
    """GET ``url``, or POST ``body`` as JSON (training parameters); ``body={}`` posts nothing (inference)."""
    data = None if body is None else json.dumps(body).encode() if body else b""
    headers = {"Content-Type": "application/json"} if body else {}
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST", headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def _stem(name: str) -> str:
    return name.replace(" (", "_").replace(")", "")  # the monailabel script passes $* unquoted: no spaces


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.fixture
def app_and_studies(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The stock app with our small bundle in its model/ folder, and a BUSI studies folder in which
    four studies have a label (``labels/final/<same name>``, values 0/1, as MONAI Label saves them)."""
    exe = _monailabel()
    busi = data_path("BUSI")
    app = _stock_app(exe, tmp_path / "apps")
    (spec,) = [s for s in APP_BUNDLES if s.name == MODEL]
    write_app_bundle(spec, app / "model")
    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for name in [*LABELLED, QUERY]:
        shutil.copyfile(busi / name.split(" ")[0] / f"{name}.png", studies / f"{_stem(name)}.png")
    for name in LABELLED:
        mask = np.asarray(Image.open(busi / name.split(" ")[0] / f"{name}_mask.png")) > 0
        Image.fromarray(mask.astype(np.uint8)).save(studies / "labels" / "final" / f"{_stem(name)}.png")
    return exe, app, studies


def _bundle_cli_mask(tmp_path: Path, study: Path) -> np.ndarray:
    """The mask that the bundle's own ``infer_segmentation.yaml`` gives the study with the same weights."""
    from monai.bundle import run

    folder = tmp_path / "query"
    folder.mkdir()
    shutil.copyfile(study, folder / study.name)
    run(
        "inferring", config_file=str(REPO / "bundle" / "configs" / "infer_segmentation.yaml"),
        bundle_root=str(REPO / "bundle"), dataset_dir=str(folder), spatial_size=[128, 128],
        output_dir=str(tmp_path / "cli"),
    )  # fmt: skip  (its default weights: models/busi_segmenter.pt)
    return np.asarray(Image.open(tmp_path / "cli" / "masks" / f"{study.stem}_seg.png")) > 0


@pytest.mark.slow
def test_stock_app_serves_and_trains_the_segmenter(app_and_studies, tmp_path: Path) -> None:
    exe, app, studies = app_and_studies
    bundle = app / "model" / MODEL
    query = studies / f"{_stem(QUERY)}.png"
    expected = _bundle_cli_mask(tmp_path, query)
    served = _sha(bundle / "models" / "model.pt")

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [
        str(exe), "start_server", "--app", str(app), "--studies", str(studies), "--host", "127.0.0.1",
        "--port", str(port), "--conf", "models", MODEL, "--conf", "zoo_source", "github", "--conf", "sam2", "false",
    ]  # fmt: skip
    # the monailabel script runs `python -m monailabel.main`: its own environment first on PATH
    env = {**os.environ, "PATH": f"{exe.parent}{os.pathsep}{os.environ['PATH']}", "MEDVAE_QUIET": "1"}
    log_path = tmp_path / "server.log"

    def log_tail() -> str:
        return f"\n--- {log_path} (end) ---\n{log_path.read_text(errors='replace')[-4000:]}"

    with log_path.open("w") as log:
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} launched: {' '.join(cmd)}\n")  # the server's own lines follow
        log.flush()
        server = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_S
        info = None
        while info is None:
            assert server.poll() is None, f"server exited with {server.returncode}{log_tail()}"
            assert time.monotonic() < deadline, f"no /info/ in {STARTUP_S} s{log_tail()}"
            try:
                info = json.loads(_request(f"{base}/info/"))
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        model = info["models"][MODEL]
        assert (model["type"], model["labels"], model["dimension"]) == ("segmentation", {"lesion": 1}, 2), model
        assert MODEL in info["trainers"], f"{info['trainers']}{log_tail()}"

        def infer() -> np.ndarray:
            url = f"{base}/infer/{MODEL}?image={_stem(QUERY)}&output=image"
            try:
                returned = tmp_path / "returned.png"
                returned.write_bytes(_request(url, body={}, timeout=300))
            except urllib.error.HTTPError as e:
                raise AssertionError(f"{url}: HTTP {e.code} {e.read()[:300]!r}{log_tail()}") from None
            return np.asarray(Image.open(returned))

        mask = infer()
        image = np.asarray(Image.open(query))
        assert mask.shape == image.shape  # the study's own size, from a 128x128 network input
        assert set(np.unique(mask).tolist()) <= {0, 1}
        np.testing.assert_array_equal(mask > 0, expected)  # the same mask as the bundle run on its own
        truth = np.asarray(Image.open(data_path("BUSI", "benign", f"{QUERY}_mask.png"))) > 0
        assert _dice(mask > 0, truth) > 0.5, _dice(mask > 0, truth)  # a real lesion mask, not noise

        # one short training on the four labelled studies (BundleTrainTask, run id 'run'), in the server
        train = {"max_epochs": 1, "val_split": 0.25, "multi_gpu": False, "device": "cpu"}
        try:
            _request(f"{base}/train/{MODEL}?run_sync=true", body=train, timeout=600)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"train: HTTP {e.code} {e.read()[:300]!r}{log_tail()}") from None
        assert "Training Finished" in log_path.read_text(), log_tail()
        assert _sha(bundle / "models" / "model.pt") != served, f"training did not replace the served model{log_tail()}"
        assert (bundle / "train" / "checkpoints" / "last.pt").is_file()
        assert infer().shape == image.shape  # it serves the new weights
    finally:
        os.killpg(server.pid, signal.SIGINT)  # uvicorn shuts down cleanly on Ctrl-C
        try:
            rc = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            raise
    assert rc in (0, -signal.SIGINT), log_tail()
    assert "Application shutdown complete" in log_path.read_text(), log_tail()
    with pytest.raises(urllib.error.URLError):
        _request(f"{base}/info/", timeout=2)
    # nothing of ours in the studies folder: the images, MONAI Label's labels/, datastore file and lock
    assert {p.name for p in studies.iterdir() if p.suffix != ".png"} <= {"labels", "datastore_v2.json", ".lock"}
