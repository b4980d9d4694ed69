"""MONAI Label app serving this repository's segmentation head through its bundle config.

Start it from the repository root, so that the default checkpoint paths below resolve::

    monailabel start_server --app apps/monailabel --studies STUDIES --host 127.0.0.1 --port 8000 \\
        --conf segmentation_ckpt runs/train_segmentation/model.pt --conf intensity ct

The model ``medvae_segmentation`` (listed by ``/info/`` when its checkpoint exists; default
``bundle/models/segmentation.pt``) runs ``bundle/configs/infer_segmentation.yaml`` and returns a
label mask with the study's shape; its name tells MONAI Label the task type.
``--conf <id> <value>`` sets any top-level id of the config (``intensity``, ``spatial_size``,
``ct_window``, ``label_names``, ...). The configs choose the loader and the intensity scaling from
``dataset_dir``; it defaults to a one-entry datalist of the first study (the studies folder itself
also holds MONAI Label's ``labels/`` sub-folder, which would read as a class folder).
"""

from __future__ import annotations

import ast
import logging
import os
import tempfile
from pathlib import Path

from monai.transforms import SqueezeDimd
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask

from medvae_monai.data import IMAGE_SUFFIXES
from medvae_monai.outputs import contained_path
from medvae_monai.utils import atomic_write_json

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


class _Constants(BundleConstants):
    """Reads one of the bundle's inference configs and a checkpoint from anywhere."""

    def __init__(self, config: str, checkpoint: str) -> None:
        self.config, self.checkpoint = config, checkpoint

    def configs(self) -> list[str]:
        return [self.config]

    def model_pytorch(self) -> str:
        return self.checkpoint  # absolute: os.path.join(bundle, "models", abs) is abs


class MedVAEBundleTask(BundleInferTask):
    """A :class:`BundleInferTask` on ``bundle/configs/<config>`` with config overrides from ``--conf``.

    Args:
        config: inference config file name under ``bundle/configs``.
        checkpoint: weights of the config's ``network_def``.
        conf: the server's ``--conf`` values; those naming a top-level config id override it.
        type: the MONAI Label task type.
        studies: the studies folder; a datalist of its first study is the default ``dataset_dir``.
    """

    def __init__(self, config: str, checkpoint: str, conf: dict, type: str, studies: str) -> None:
        self._overrides = {"dataset_dir": study_datalist(studies), **conf}
        super().__init__(str(REPO / "bundle"), conf, const=_Constants(config, checkpoint), type=type)
        if self.is_valid():  # label values 1, 2, ... as in the masks; metadata.json describes the VAE
            self.labels = {name: i + 1 for i, name in enumerate(self.bundle_config.get_parsed_content("label_names"))}
            self.description = f"Segmentation head on MedVAE latents ({config})"

    def post_transforms(self, data=None) -> list:
        post = list(super().post_transforms(data))
        if self.dimension == 2:  # MONAI Label's Restored drops the channel of 3D masks only
            post.append(SqueezeDimd(keys=self.key_pred, dim=0))
        return post

    def _load_bundle_config(self, path, config):
        parser = super()._load_bundle_config(path, config)
        for key, value in self._overrides.items():
            if key in parser.config:
                try:
                    value = ast.literal_eval(value) if isinstance(value, str) else value
                except (ValueError, SyntaxError):
                    pass  # a plain string such as "ct"
                parser.config[key] = value
        return parser


def study_datalist(studies: str, output_dir: str | None = None) -> str | None:
    """Write an MSD datalist of the first study (by absolute path) and return its path.

    It goes to ``output_dir`` (default: a new temporary folder), never into the studies folder:
    that holds the user's images and MONAI Label's labels. Returns None when the folder holds no
    image yet.
    """
    images = sorted(f for f in os.listdir(studies) if f.lower().endswith(IMAGE_SUFFIXES))
    if not images:
        return None
    output_dir = output_dir or tempfile.mkdtemp(prefix="medvae-label-")
    path = contained_path(output_dir, "datalist.json", input_root=studies)
    atomic_write_json(path, {"training": [{"image": os.path.abspath(os.path.join(studies, images[0]))}]})
    return str(path)


class MedVAEApp(MONAILabelApp):
    """Serves the bundle's segmentation head."""

    def __init__(self, app_dir: str, studies: str, conf: dict) -> None:
        self.studies = studies
        super().__init__(
            app_dir=app_dir, studies=studies, conf=conf, name="medvae-monai",
            description="Segmentation head on MedVAE latents", version="0.2.0",
        )  # fmt: skip

    def init_infers(self) -> dict[str, InferTask]:
        conf = dict(self.conf)
        ckpt = os.path.abspath(conf.pop("segmentation_ckpt", str(REPO / "bundle" / "models" / "segmentation.pt")))
        if not os.path.isfile(ckpt):
            logger.warning(f"--- medvae_segmentation: no checkpoint at {ckpt}; pass --conf segmentation_ckpt PATH")
            return {}
        task = MedVAEBundleTask("infer_segmentation.yaml", ckpt, conf, InferType.SEGMENTATION, self.studies)
        return {"medvae_segmentation": task} if task.is_valid() else {}
