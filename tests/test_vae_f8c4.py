"""The factor-8 MedNIST VAE overlay (bundle/configs/vae_f8c4.yaml) loads its committed weights and
beats the default checkpoint on the same MedNIST test images."""

from __future__ import annotations

import json

import pytest

from .conftest import data_path, run_bundle

pytestmark = pytest.mark.slow


def _psnr(tmp_path, name: str, configs: list[str]) -> dict:
    mednist = data_path("MedNIST")
    out = tmp_path / name
    run_bundle("evaluating", configs, "--dataset_dir", str(mednist), "--split", "test", "--max_items", "60",
               "--output_dir", str(out))
    return json.loads((out / "metrics.json").read_text())


def test_f8c4_overlay_beats_the_default_on_mednist_test(tmp_path):
    default = _psnr(tmp_path, "default", ["bundle/configs/evaluate.yaml"])
    f8c4 = _psnr(tmp_path, "f8c4", ["bundle/configs/evaluate.yaml", "bundle/configs/vae_f8c4.yaml"])
    assert f8c4["compression"] == default["compression"] == 16.0
    assert f8c4["n_images"] == default["n_images"] == 60
    assert f8c4["psnr"] > default["psnr"] + 0.5 and f8c4["psnr"] > 26.0
    assert f8c4["ssim"] > default["ssim"]
