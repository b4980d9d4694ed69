"""Export benchmark: TorchScript and ONNX Runtime against eager PyTorch, for the VAE and both heads.

Usage (from the repository root, with the ``onnx`` extra)::

    python benchmarks/export.py [--batch 32] [--repeats 20] [--data ../shared/data/MedNIST]

For each bundle network (``network_def`` of ``inference.yaml``, ``infer_classifier.yaml``,
``infer_segmentation.yaml``) it exports with ``monai.bundle ckpt_export`` (TorchScript: scripted
VAE, traced heads) and ``onnx_export`` (TorchScript-based exporter, dynamic batch), then on one
batch of real 64x64 MedNIST images (random images when the data is absent) reports the largest
absolute difference to eager PyTorch, and the median time per batch over ``--repeats`` runs of
eager, TorchScript and ONNX Runtime (after 3 warm-up runs, one thread each, CPU).

Weights: the committed checkpoint of the config when it exists, else seeded random weights (the
parity and speed do not depend on training); the JSON says which. It writes
``benchmarks/results/export.json`` and ``benchmarks/results/export.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["inference.yaml", "infer_classifier.yaml", "infer_segmentation.yaml"]
META = "bundle/configs/metadata.json"


def _median_s(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _batch(data: Path, n: int) -> tuple[torch.Tensor, str]:
    if data.is_dir():
        from medvae_monai.data import ImageSource

        source = ImageSource(str(data), 2, 1, max_items=n)
        chain = source.preprocessing()
        return torch.stack([chain(it)["image"].as_tensor() for it in source.items("test")]), f"MedNIST test split ({data})"
    torch.manual_seed(1)
    return torch.rand(n, 1, 64, 64), "uniform random images (MedNIST not found)"


def bench(config: str, x: torch.Tensor, repeats: int, tmp: Path) -> dict:
    import onnxruntime as ort
    from monai.bundle import ckpt_export, onnx_export

    from medvae_monai.config import load_bundle_network

    torch.manual_seed(0)
    net, ckpt = load_bundle_network(f"bundle/configs/{config}")
    if ckpt is not None:
        weights = str(ckpt)
    else:
        ckpt = tmp / f"{Path(config).stem}.pt"
        torch.save(net.state_dict(), ckpt)
        weights = "seeded random (no committed checkpoint)"
    scripted = config == "inference.yaml"
    trace = {} if scripted else {"use_trace": True, "input_shape": [1, 1, 64, 64]}
    common = {
        "net_id": "network_def",
        "ckpt_file": str(ckpt),
        "meta_file": META,
        "config_file": f"bundle/configs/{config}",
    }
    t = time.perf_counter()
    ckpt_export(filepath=str(tmp / "m.ts"), **common, **trace)
    ts_export_s = time.perf_counter() - t
    t = time.perf_counter()
    onnx_export(
        filepath=str(tmp / "m.onnx"), use_trace=True, input_shape=[1, 1, 64, 64], **common,
        converter_kwargs={
            "dynamo": False, "input_names": ["image"], "output_names": ["pred"],
            "dynamic_axes": {"image": {0: "batch"}, "pred": {0: "batch"}},
        },
    )  # fmt: skip
    onnx_export_s = time.perf_counter() - t
    ts = torch.jit.load(str(tmp / "m.ts"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(tmp / "m.onnx"), options, providers=["CPUExecutionProvider"])
    feed = {"image": x.numpy()}
    with torch.no_grad():
        eager = net(x)
        ts_diff = float((ts(x) - eager).abs().max())
        onnx_diff = float(np.abs(session.run(["pred"], feed)[0] - eager.numpy()).max())
        eager_s = _median_s(lambda: net(x), repeats)
        ts_s = _median_s(lambda: ts(x), repeats)
    onnx_s = _median_s(lambda: session.run(["pred"], feed), repeats)
    return {
        "network": type(net).__name__,
        "weights": weights,
        "torchscript_mode": "script" if scripted else "trace (fixed 64x64)",
        "output_shape": list(eager.shape),
        "torchscript_max_abs_diff": ts_diff,
        "onnx_max_abs_diff": onnx_diff,
        "ckpt_export_s": round(ts_export_s, 2),
        "onnx_export_s": round(onnx_export_s, 2),
        "eager_ms_per_batch": round(eager_s * 1e3, 2),
        "torchscript_ms_per_batch": round(ts_s * 1e3, 2),
        "onnxruntime_ms_per_batch": round(onnx_s * 1e3, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "MedNIST"))
    args = ap.parse_args()
    os.chdir(REPO)  # relative output and config paths below
    sys.path.insert(0, str(REPO))
    torch.set_num_threads(1)
    import onnxruntime

    from medvae_monai.utils import atomic_write, atomic_write_json

    x, source = _batch(Path(args.data), args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        results = {c: bench(c, x, args.repeats, Path(tmp)) for c in CONFIGS}
    report = {
        "machine": f"2 shared CPU cores (other jobs running), {platform.processor() or platform.machine()}, one thread",
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "batch": list(x.shape),
        "images": source,
        "repeats": args.repeats,
        "tolerances": {"torchscript_atol": 1e-6, "onnx_atol": 1e-5, "onnx_rtol": 1e-4},
        "results": results,
    }
    out = REPO / "benchmarks" / "results"
    atomic_write_json(out / "export.json", report)
    lines = [
        f"# Export parity and speed (batch {tuple(x.shape)}, {source}; {report['machine']})",
        "",
        "| config | network | TorchScript | max abs diff TS | max abs diff ONNX | eager ms | TS ms | ORT ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, r in results.items():
        lines.append(
            f"| {c} | {r['network']} | {r['torchscript_mode']} | {r['torchscript_max_abs_diff']:.1e} | "
            f"{r['onnx_max_abs_diff']:.1e} | {r['eager_ms_per_batch']} | {r['torchscript_ms_per_batch']} | "
            f"{r['onnxruntime_ms_per_batch']} |"
        )
    lines += ["", "Tolerances asserted by the tests: TorchScript atol 1e-6; ONNX Runtime atol 1e-5, rtol 1e-4.", ""]
    atomic_write(out / "export.md", lambda f: f.write("\n".join(lines)), mode="w")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
