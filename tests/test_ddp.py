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
    """Every handler of train.yaml that logs or writes is disabled by the is_main flag, which
    multi_gpu_train.yaml sets to rank 0 (by flag, not by list index: MONAI Label inserts handlers)."""
    train = yaml.safe_load((REPO / "bundle/configs/train.yaml").read_text())
    multi = yaml.safe_load((REPO / "bundle/configs/multi_gpu_train.yaml").read_text())
    assert train["is_main"] is True and "get_rank() == 0" in multi["is_main"]
    assert not any("#handlers#" in key for key in multi), "disable handlers by flag, not by list index"

    def definition(handler) -> dict:  # a handler given by reference ("@kl_warmup") is defined at the top level
        return train[handler[1:]] if isinstance(handler, str) else handler

    writers = {"StatsHandler", "TensorBoardStatsHandler", "ProgressBar", "ReconstructionGrid"}
    gated = []
    for section in ("train", "validate"):
        for handler in map(definition, train[section]["handlers"]):
            name = handler["_target_"].rsplit(".", 1)[-1]
            assert (handler.get("_disabled_") == "$not @is_main") == (name in writers), (section, name)
            gated += [name] if name in writers else []
    assert len(gated) == 6  # 3 training loggers + 3 validation loggers and figures
    assert train["summary_writer"]["_disabled_"] == "$not @is_main"
