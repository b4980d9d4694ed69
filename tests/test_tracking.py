"""Experiment tracking: TensorBoard by default, MLflow (``mlflow`` extra) into a local SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import run_bundle

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install -e '.[mlflow]'")
pytest.importorskip("sqlalchemy", reason="the mlflow extra is not installed: pip install -e '.[mlflow]'")


@pytest.mark.slow
def test_mlflow_tracking_local_store(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_bundle(
        "training", "bundle/configs/train.yaml",
        "--max_epochs", "1", "--max_items", "16", "--batch_size", "8", "--output_dir", str(out),
        "--tracking", "bundle/configs/tracking/mlflow.yaml",
    )  # fmt: skip
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("medvae")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    # every loss term per iteration (16 items / batch 8 = 2), validation metrics per epoch
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2]
    assert all(m.value > 0 for m in history)
    assert {"recon_loss", "kl", "beta", "psnr", "ssim"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "psnr")] == [1]
    assert 0.0 < run.data.metrics["ssim"] <= 1.0
    # TensorBoard, the default, still logs beside it
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1


@pytest.mark.slow
def test_monai_builtin_mlflow_tracking(tmp_path: Path) -> None:
    """MONAI's own ``--tracking mlflow`` settings: the trainers' decollated output is what its
    ``from_engine(['loss'], first=True)`` reads."""
    out = tmp_path / "run"
    run_bundle(
        "training", "bundle/configs/train.yaml",
        "--max_epochs", "1", "--max_items", "16", "--batch_size", "8", "--output_dir", str(out),
        "--tracking", "mlflow",
    )  # fmt: skip
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("monai_experiment")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2]
    assert all(m.value > 0 for m in history)
    assert {"psnr", "ssim"} <= set(run.data.metrics)
