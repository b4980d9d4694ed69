"""Faults: training killed with SIGKILL resumes exactly; checkpoints are never half-written; same seed,
same data -> bit-identical training on the CPU. Real subprocesses, real signals."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from .conftest import REPO, run_bundle

from medvae_monai.utils import load_state_dict

pytestmark = pytest.mark.slow

CONFIG = "bundle/configs/train.yaml"
MAX_EPOCHS = 6
ITERS_PER_EPOCH = 4  # 32 phantoms, batch 8, drop_last
# a tiny but real training run on the embedded phantoms: 4 iterations and a validation per epoch
OVERRIDES = ("--max_items", "32", "--batch_size", "8", "--kl_warmup_steps", "4", "--max_epochs", str(MAX_EPOCHS))


def _state(out: Path) -> dict:
    return load_state_dict(out / "checkpoints" / "last.pt")


def _assert_same_tensors(a: object, b: object, where: str = "") -> None:
    """Bit-for-bit equality of two nested state dicts."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"differs at {where}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"keys differ at {where}"
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"lengths differ at {where}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}/{i}")
    else:
        assert a == b, f"{a!r} != {b!r} at {where}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    run_bundle("training", CONFIG, *OVERRIDES, "--output_dir", str(out))
    return out


def test_same_seed_same_data_is_bit_identical(uninterrupted: Path, tmp_path: Path) -> None:
    run_bundle("training", CONFIG, *OVERRIDES, "--output_dir", str(tmp_path))
    a, b = _state(uninterrupted), _state(tmp_path)
    assert int(a["trainer"]["iteration"]) == MAX_EPOCHS * ITERS_PER_EPOCH
    _assert_same_tensors(a, b)  # weights, optimiser moments, scheduler, best PSNR, random state
    _assert_same_tensors(load_state_dict(uninterrupted / "model.pt"), load_state_dict(tmp_path / "model.pt"))


def test_sigkill_mid_training_resumes_from_last_complete_checkpoint(uninterrupted: Path, tmp_path: Path) -> None:
    rnd = random.Random()
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", CONFIG, *OVERRIDES,
           "--output_dir", str(tmp_path)]
    env = {**os.environ, "MEDVAE_QUIET": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = tmp_path / "checkpoints"
    last = ckpt_dir / "last.pt"
    # kill on an event, not a timer: after `saves` complete checkpoints, either at once (early in the
    # next epoch) or as soon as the next save has begun writing its temporary file (mid-save)
    saves, mid_save = rnd.randint(2, MAX_EPOCHS - 2), rnd.random() < 0.5
    try:
        deadline = time.monotonic() + 300
        seen, inode = 0, None
        while seen < saves:
            assert proc.poll() is None, f"training exited ({proc.returncode}) after {seen} checkpoints"
            assert time.monotonic() < deadline, f"{seen} checkpoints after 300 s"
            current = last.stat().st_ino if last.exists() else None
            if current is not None and current != inode:  # each save replaces last.pt with a new file
                seen, inode = seen + 1, current
            time.sleep(0.001)
        while mid_save and not list(ckpt_dir.glob("tmp*")):
            assert proc.poll() is None, f"training exited ({proc.returncode}) before save {saves + 1}"
            if last.stat().st_ino != inode:  # the save was too quick to catch: kill after it instead
                break
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # whatever was on disk at the kill is complete and loads (weights_only): never a partial file
    for f in (tmp_path / "checkpoints").glob("*.pt"):
        load_state_dict(f)
    killed = _state(tmp_path)
    iteration = int(killed["trainer"]["iteration"])  # ignite keeps the iteration and the epoch length
    epoch = iteration // int(killed["trainer"]["epoch_length"])
    assert saves <= epoch <= saves + 1 < MAX_EPOCHS and iteration == epoch * ITERS_PER_EPOCH, (epoch, saves, mid_save)

    proc = run_bundle("training", CONFIG, *OVERRIDES, "--output_dir", str(tmp_path))
    assert f"at epoch {epoch}, iteration {iteration}" in proc.stdout  # the resume message of ResumableCheckpoint
    resumed = _state(tmp_path)
    assert int(resumed["trainer"]["iteration"]) == MAX_EPOCHS * ITERS_PER_EPOCH
    # optimiser and scheduler continued rather than restarting: Adam's step count and the cosine
    # schedule's epoch cover the whole run, not only the epochs after the resume
    steps = {float(s["step"]) for s in resumed["optimizer"]["state"].values()}
    assert steps == {float(MAX_EPOCHS * ITERS_PER_EPOCH)}
    assert int(resumed["lr_scheduler"]["last_epoch"]) == MAX_EPOCHS
    assert not list(ckpt_dir.glob("tmp*"))  # DiskSaver's temporaries of a killed save are cleaned up
    # and the whole state is bit-identical to a run that was never killed
    _assert_same_tensors(resumed, _state(uninterrupted))


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from medvae_monai.utils import atomic_torch_save
    path = sys.argv[1]
    for version in range(1, 10**6):
        print("start", version, flush=True)
        atomic_torch_save({"version": torch.tensor(version), "w": torch.full((16_000_000,), float(version))}, path)
        print("done", version, flush=True)
    """
)


def test_sigkill_during_checkpoint_write_never_leaves_a_partial_file(tmp_path: Path) -> None:
    """Kill a process while it rewrites a 64 MB checkpoint: the file holds the old or the new version, whole."""
    path = tmp_path / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline().split() for _ in range(3)]
        assert lines == [["start", "1"], ["done", "1"], ["start", "2"]], lines
        while not list(tmp_path.glob(".last.pt.*.tmp")):  # the second write has begun
            assert proc.poll() is None
            time.sleep(0.001)
        time.sleep(random.uniform(0.0, 0.01))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    partial = list(tmp_path.glob(".last.pt.*.tmp"))
    state = load_state_dict(path)
    version = int(state["version"])
    assert torch.equal(state["w"], torch.full((16_000_000,), float(version)))
    # killed mid-write: the half-written temporary is left aside and last.pt is still version 1, whole
    assert (partial and version == 1) or (not partial and version == 2), (partial, version)
