"""Where a bundle config runs from, where it writes by default, and the checks on its command line.

The configs call these from their ``bundle_root`` id and the first step of ``initialize``, so that a
bundle runs the Model Zoo way (``cd bundle && python -m monai.bundle run training --config_file
configs/train.yaml``), from any working directory (with ``--bundle_root`` or a ``--config_file``
path into the bundle), and copied or renamed into another folder.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from monai.bundle import ConfigParser

from ..config import _config_files
from ..errors import InputError, install_cli_excepthook

__all__ = ["check_command", "default_root", "log_output_dir", "root_of", "run_ids", "runs_dir"]

logger = logging.getLogger(__name__)
# top-level ids that are not run ids although they hold expression lists
_NOT_RUN_IDS = {"initialize", "finalize", "imports"}


def _bundle_cli(argv: Sequence[str]) -> bool:
    return len(argv) > 1 and "monai/bundle" in argv[0].replace("\\", "/") and argv[1] == "run"


def _cli_config_files(argv: Sequence[str]) -> list[str]:
    for i, tok in enumerate(argv):
        name, _, value = tok.partition("=")
        if name == "--config_file":
            return _config_files(value or (argv[i + 1] if i + 1 < len(argv) else ""))
    return []


def default_root(argv: Sequence[str] | None = None) -> str:
    """The bundle folder: the parent of the ``configs/`` folder that holds the first ``--config_file``
    of a ``python -m monai.bundle run`` command line (MONAI's own rule for the config root), else the
    working directory (the Zoo's ``bundle_root: "."``). ``--bundle_root`` overrides it.

    Returns:
        an absolute path, so that it does not depend on a later change of the working directory.
    """
    argv = list(sys.argv if argv is None else argv)
    files = _cli_config_files(argv) if _bundle_cli(argv) else []
    return root_of(files[0]) if files else os.getcwd()


def root_of(config_file: str | os.PathLike) -> str:
    """The bundle folder of a config file: the parent of its ``configs/`` folder (absolute)."""
    folder = Path(config_file).resolve().parent
    return str(folder.parent if folder.name == "configs" else folder)


def runs_dir(bundle_root: str | os.PathLike) -> str:
    """Default parent of a config's ``output_dir``: ``runs/`` in the working directory, or beside the
    bundle folder when the working directory is inside it, so a run never writes into the bundle
    unless ``--output_dir`` says so. From this repository's root and from ``bundle/`` alike it is
    ``<repo>/runs``."""
    root, cwd = Path(bundle_root).resolve(), Path.cwd().resolve()
    base = root.parent if cwd == root or root in cwd.parents else cwd
    return str(base / "runs")


def run_ids(config: dict) -> list[str]:
    """The run ids of a config: top-level lists of ``$`` expressions, and aliases (``"@training"``) of them."""
    ids = [
        k for k, v in config.items()
        if k not in _NOT_RUN_IDS and isinstance(v, list) and v and all(isinstance(e, str) and e.startswith("$") for e in v)
    ]  # fmt: skip
    return ids + [k for k, v in config.items() if isinstance(v, str) and v.startswith("@") and v[1:] in ids]


def _arguments(config: dict) -> list[str]:
    """``--id default`` lines for the top-level ids a user sets: values and expressions, not components or steps."""
    steps = set(run_ids(config)) | _NOT_RUN_IDS
    return [
        f"  --{key} {value if isinstance(value, str) else repr(value)}"
        for key, value in config.items()
        if key not in steps and not key.startswith("_") and not isinstance(value, dict)
    ]


def check_command(bundle_root: str | os.PathLike, argv: Sequence[str] | None = None) -> None:
    """First step of every config's ``initialize``: refuse a command line that cannot do what the user meant.

    Only acts on a ``python -m monai.bundle run`` command line (MONAI Label loads configs in-process).
    ``--help`` prints the config's run ids and arguments and exits 0. Before anything is written it
    refuses, in one line naming the fix: a run id the config lacks (MONAI would run any top-level id,
    e.g. ``run train`` builds the ``train`` section and exits 0 having done nothing), and a
    ``bundle_root`` that is not a bundle folder.

    Raises:
        InputError: the unknown run id with the valid ones, or the bad ``bundle_root``.
        SystemExit: after ``--help``.
    """
    argv = list(sys.argv if argv is None else argv)
    if not _bundle_cli(argv):
        return
    install_cli_excepthook()
    files = _cli_config_files(argv)
    config = ConfigParser.load_config_files(files)
    ids = run_ids(config)
    listing = ", ".join(ids)
    if "--help" in argv or "-h" in argv:
        print(f"{', '.join(files)}\nrun ids: {listing}\narguments (--id value; defaults shown):")
        print("\n".join(_arguments(config)))
        raise SystemExit(0)
    run_id = argv[2] if len(argv) > 2 and not argv[2].startswith("-") else "run"
    if "--run_id" in argv[:-1]:
        run_id = argv[argv.index("--run_id") + 1]
    if run_id not in ids:
        raise InputError(
            f"unknown run id '{run_id}' for {', '.join(files)}; its run ids are: {listing}. "
            f"Use e.g. python -m monai.bundle run {ids[0] if ids else 'run'} --config_file {files[0]}"
        )
    root = Path(bundle_root)
    if not (root / "configs").is_dir():
        raise InputError(
            f"bundle_root {str(root)!r} is not a bundle folder (it has no configs/): run the config from its bundle's "
            "configs/ folder, or pass --bundle_root <the bundle folder>."
        )


def log_output_dir(output_dir: str | os.PathLike) -> str:
    """Log where this run writes (an absolute path) and return it."""
    path = str(Path(output_dir).resolve())
    logger.info(f"outputs: {path}")
    return path
