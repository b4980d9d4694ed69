"""ONNX exports of the bundle's networks match eager PyTorch in ONNX Runtime.

Tolerance: ``atol=1e-5, rtol=1e-4`` (other kernels; observed differences about 1e-7). The export
goes through ``monai.bundle onnx_export`` as a user would run it, and needs the ``onnx`` extra.
TorchScript (``ckpt_export``) matches eager within ``atol=1e-6``: tests/test_zoo.py checks it
with the zoo's export check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import onnx_export

from .test_zoo import META, NETWORKS, _repo_cwd, network_and_weights  # noqa: F401 (_repo_cwd: autouse fixture)

ONNX_ATOL, ONNX_RTOL = 1e-5, 1e-4


@pytest.mark.parametrize("config", NETWORKS)
def test_onnx_matches_eager(config: str, tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="the onnx extra is not installed: pip install -e '.[onnx]'")
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")
    net, ckpt = network_and_weights(config, tmp_path)
    onnx_path = tmp_path / "model.onnx"
    onnx_export(
        net_id="network_def", filepath=str(onnx_path), ckpt_file=str(ckpt), meta_file=META,
        config_file=f"bundle/configs/{config}", use_trace=True, input_shape=[1, 1, 64, 64],
        # the TorchScript-based exporter: the dynamo one takes ~20 s per network on 2 CPU cores
        converter_kwargs={
            "dynamo": False, "input_names": ["image"], "output_names": ["pred"],
            "dynamic_axes": {"image": {0: "batch"}, "pred": {0: "batch"}},
        },
    )  # fmt: skip
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    x = torch.rand(3, 1, 64, 64)  # another batch size than the export's
    (pred,) = session.run(["pred"], {"image": x.numpy()})
    with torch.no_grad():
        expected = net(x).numpy()
    assert pred.shape == expected.shape
    np.testing.assert_allclose(pred, expected, atol=ONNX_ATOL, rtol=ONNX_RTOL)
