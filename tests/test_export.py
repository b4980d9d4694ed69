"""TorchScript and ONNX exports of the bundle's networks match eager PyTorch.

Tolerances: TorchScript ``atol=1e-6`` (same kernels, observed difference 0); ONNX Runtime
``atol=1e-5, rtol=1e-4`` (other kernels; observed differences about 1e-7). The exports go
through ``monai.bundle ckpt_export`` / ``onnx_export`` as a user would run them. ONNX needs the
``onnx`` extra.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ckpt_export, onnx_export

from .test_zoo import META, NETWORKS, network_and_weights

TS_ATOL = 1e-6
ONNX_ATOL, ONNX_RTOL = 1e-5, 1e-4


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("MEDVAE_QUIET", "1")


@pytest.mark.parametrize("config", NETWORKS)
def test_torchscript_matches_eager(config: str, tmp_path: Path) -> None:
    net, ckpt, scriptable = network_and_weights(config, tmp_path)
    trace = {} if scriptable else {"use_trace": True, "input_shape": [1, 1, 64, 64]}
    ts_path = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts_path), ckpt_file=str(ckpt), meta_file=META, config_file=f"bundle/configs/{config}", **trace)
    ts = torch.jit.load(str(ts_path))
    torch.manual_seed(1)
    # a scripted network keeps the padding logic: any size works; a traced one is fixed at 64x64
    shapes = [(3, 1, 64, 64), (1, 1, 61, 70)] if scriptable else [(3, 1, 64, 64)]
    for shape in shapes:
        x = torch.rand(shape)
        with torch.no_grad():
            torch.testing.assert_close(ts(x), net(x), atol=TS_ATOL, rtol=0)


@pytest.mark.parametrize("config", NETWORKS)
def test_onnx_matches_eager(config: str, tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="the onnx extra is not installed: pip install -e '.[onnx]'")
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")
    net, ckpt, _ = network_and_weights(config, tmp_path)
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
