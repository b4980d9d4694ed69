"""Small bundles for MONAI Label's stock ``monaibundle`` app, written from this bundle's layers.

The stock app (``monailabel apps --download --name monaibundle``) serves one bundle per model from
its ``model/<name>/`` folder: it builds ``network_def`` of ``configs/inference.yaml``, loads
``models/model.pt`` into it, runs ``preprocessing`` and ``postprocessing``, trains with
``configs/train.yaml`` (``BundleTrainTask``, run id ``run``), takes the task type from the folder
name (``...segmentation``, ``...classification``) and the labels from ``metadata.json``'s
``network_data_format``. This bundle holds several models (the VAE and its heads), so each served
model gets a small bundle of its own: its configs are rendered from the layers (:func:`.layers.render`,
no definition copied by hand), its ``metadata.json`` is this bundle's with that model's data format
as ``network_data_format``, and its weights are a committed checkpoint.

Command line (the app as MONAI Label ships it, then the small bundles into its ``model/`` folder)::

    monailabel apps --download --name monaibundle --output apps
    python -m medvae_monai.bundle.monailabel apps/monaibundle/model
    monailabel start_server --app apps/monaibundle --studies STUDIES \\
        --conf models medvae_busi_segmentation --conf zoo_source github --conf sam2 false
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, install_cli_excepthook
from ..utils import atomic_write, atomic_write_json
from .layers import render

__all__ = ["APP_BUNDLES", "AppBundle", "write_app_bundle"]

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"


@dataclass(frozen=True)
class AppBundle:
    """One model served by the stock app.

    Attributes:
        name: the small bundle's folder name; MONAI Label reads the task type from it.
        infer_layer: layer (under ``configs/layers``) rendered as ``configs/inference.yaml``.
        train_layer: layer rendered as ``configs/train.yaml``, or None: not trainable in MONAI Label.
        weights: committed checkpoint under ``models/``, served as ``models/model.pt``.
        data_format: key of this bundle's ``metadata.json`` that describes the model's input and
            output; it becomes the small bundle's ``network_data_format``.
        description: the small bundle's ``metadata.json`` description.
    """

    name: str
    infer_layer: str
    train_layer: str | None
    weights: str
    data_format: str
    description: str


APP_BUNDLES = (
    AppBundle(
        name="medvae_busi_segmentation",
        infer_layer="_monailabel_segmentation_infer.yaml",
        train_layer="_monailabel_segmentation_train.yaml",
        weights="busi_segmenter.pt",
        data_format="segmentation_data_format",
        description="Breast ultrasound lesion mask (BUSI) from a segmentation head on MedVAE latents, at 128x128",
    ),
)


def write_app_bundle(spec: AppBundle, model_dir: str | Path, bundle_dir: str | Path = BUNDLE) -> Path:
    """Write the small bundle ``model_dir/<spec.name>`` and return its path.

    Files: ``configs/inference.yaml`` (and ``train.yaml``), ``configs/metadata.json``,
    ``configs/logging.conf``, ``models/model.pt``, ``LICENSE``, ``docs/README.md``. Each is written
    atomically; rewriting an existing small bundle replaces these files (a trained ``model.pt``
    too) and leaves anything else in it.

    Raises:
        InputError: the committed weights ``bundle_dir/models/<spec.weights>`` are missing, or
            ``bundle_dir`` is not a bundle with layers.
    """
    bundle_dir, out = Path(bundle_dir), Path(model_dir) / spec.name
    layers = bundle_dir / "configs" / "layers"
    if not layers.is_dir():
        raise InputError(f"{bundle_dir} has no configs/layers: pass --bundle_dir <this repository's bundle/ folder>.")
    weights = bundle_dir / "models" / spec.weights
    if not weights.is_file():
        raise InputError(f"{weights} does not exist: {spec.name} serves it; train it as {bundle_dir}/docs/README.md says.")
    targets = {"inference.yaml": spec.infer_layer, "train.yaml": spec.train_layer}
    for target, layer in targets.items():
        if layer is not None:
            text = render(layers / layer)
            atomic_write(out / "configs" / target, lambda f, text=text: f.write(text), mode="w")
    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    fmt = meta[spec.data_format]
    meta = {k: v for k, v in meta.items() if not k.endswith("_data_format")}
    meta.update(
        name=f"{meta['name']}: {spec.name}",
        description=spec.description,
        network_data_format={"inputs": fmt["inputs"], "outputs": fmt["outputs"]},
    )
    atomic_write_json(out / "configs" / "metadata.json", meta)
    for rel in ("configs/logging.conf", "LICENSE", "docs/README.md"):
        atomic_write(out / rel, lambda f, src=bundle_dir / rel: f.write(src.read_bytes()))
    atomic_write(out / "models" / "model.pt", lambda f: shutil.copyfileobj(weights.open("rb"), f))
    return out


def main(argv: list[str] | None = None) -> int:
    install_cli_excepthook()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="the stock app's model/ folder (monaibundle: <app>/model)")
    parser.add_argument("--bundle_dir", default=str(BUNDLE), help="the bundle whose layers and weights to use")
    args = parser.parse_args(argv)
    for spec in APP_BUNDLES:
        print(f"wrote {write_app_bundle(spec, args.model_dir, args.bundle_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
