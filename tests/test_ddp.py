"""Multi-process training: torchrun with two CPU processes (gloo) on multi_gpu_train.yaml."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from medvae_monai.networks import VAEReconstruction
from medvae_monai.utils import load_weights

from .conftest import REPO

CONFIGS = "['bundle/configs/train.yaml','bundle/configs/multi_gpu_train.yaml']"
RANK_LINE = re.compile(
    r"rank (\d) of (\d): trained (\d+) iterations in (\d+) epochs on (\d+) items; weight checksum (\S+)"
)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun), "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "training", "--config_file", CONFIGS,
        "--max_epochs", "1", "--max_items", "16", "--batch_size", "4", "--output_dir", str(out),
    ]  # fmt: skip
    # CUDA_VISIBLE_DEVICES="": the CPU/gloo path even on a machine with GPUs
    env = {
        **os.environ,
        "MEDVAE_QUIET": "1",
        "PYTHONWARNINGS": "ignore",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        cmd, check=False, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-4000:]

    # both ranks trained on their own half of the 16 training items, and DDP kept their weights equal
    ranks = {int(m[0]): m for m in RANK_LINE.findall(proc.stdout)}
    assert sorted(ranks) == [0, 1], proc.stdout[-3000:]
    for rank, world, iters, epochs, items, _ in ranks.values():
        assert (int(world), int(epochs), int(items)) == (2, 1, 8)
        assert int(iters) == 2  # 8 items / batch 4
    assert ranks[0][5] == ranks[1][5]

    # exactly one writer: one best-model save, one checkpoint set, one TensorBoard log, no leftovers
    assert proc.stdout.count("New best psnr") == 1
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert [f for f in files if not f.startswith("tensorboard/")] == [
        "checkpoints/best.pt", "checkpoints/last.pt", "model.pt", "reconstructions.png",
    ]  # fmt: skip
    assert len([f for f in files if f.startswith("tensorboard/")]) == 1

    # the result loads into the bundle's network (no DDP "module." prefix) and reconstructs
    net = load_weights(VAEReconstruction(spatial_dims=2, in_channels=1), out / "model.pt").eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert int(last["trainer"]["iteration"]) == 2  # rank 0's state after its 2 iterations
    assert not any(k.startswith("module.") for k in last["network"])


def test_rank0_only_handlers_are_the_logging_ones() -> None:
    """multi_gpu_train.yaml disables train.yaml's handlers by index on ranks > 0: keep those in step."""
    train = yaml.safe_load((REPO / "bundle/configs/train.yaml").read_text())
    multi = yaml.safe_load((REPO / "bundle/configs/multi_gpu_train.yaml").read_text())

    def target(handler) -> str:  # a handler given by reference ("@kl_warmup") is defined at the top level
        definition = train[handler[1:]] if isinstance(handler, str) else handler
        return definition["_target_"].rsplit(".", 1)[-1]

    disabled = {}
    for key in multi:
        if key.endswith("#_disabled_") and "#handlers#" in key:
            section, _, index, _ = key.split("#")
            disabled[key] = target(train[section]["handlers"][int(index)])
    assert sorted(disabled.values()) == sorted(
        [
            "StatsHandler",
            "TensorBoardStatsHandler",
            "ProgressBar",
            "StatsHandler",
            "TensorBoardStatsHandler",
            "ReconstructionGrid",
        ]
    )
    # every handler that writes files or logs is covered
    writers = {"StatsHandler", "TensorBoardStatsHandler", "ProgressBar", "ReconstructionGrid"}
    for section in ("train", "validate"):
        for i, handler in enumerate(train[section]["handlers"]):
            if target(handler) in writers:
                assert f"{section}#handlers#{i}#_disabled_" in multi
