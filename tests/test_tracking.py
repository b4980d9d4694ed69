"""Experiment tracking: TensorBoard by default, MLflow (``mlflow`` extra) into a local SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import run_bundle

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install -e '.[mlflow]'")
pytest.importorskip("sqlalchemy", reason="the mlflow extra is not installed: pip install -e '.[mlflow]'")


@pytest.mark.slow
@pytest.mark.parametrize(
    "tracking,experiment,loss_metric,other_metrics",
    [
        # this bundle's settings: every loss term per iteration, validation metrics per epoch
        ("bundle/configs/tracking/mlflow.yaml", "medvae", "loss", {"recon_loss", "kl", "beta", "psnr", "ssim"}),
        # MONAI's own settings: its from_engine(['loss'], first=True) reads the trainers' decollated output
        ("mlflow", "monai_experiment", "train_loss", {"psnr", "ssim"}),
    ],
)
def test_mlflow_tracking_local_store(tmp_path: Path, tracking, experiment, loss_metric, other_metrics) -> None:
    out = tmp_path / "run"
    run_bundle(
        "training", "bundle/configs/train.yaml",
        "--max_epochs", "1", "--max_items", "16", "--batch_size", "8", "--output_dir", str(out), "--tracking", tracking,
    )  # fmt: skip
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    (run,) = client.search_runs([found.experiment_id])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, loss_metric)
    assert [m.step for m in history] == [1, 2]  # 16 items / batch 8
    assert all(m.value > 0 for m in history)
    assert other_metrics <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "psnr")] == [1]
    assert 0.0 < run.data.metrics["ssim"] <= 1.0
    # TensorBoard, the default, still logs beside it
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
