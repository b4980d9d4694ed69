"""Checks on how a bundle config is run, and its network loaded from Python."""

from __future__ import annotations

import ast
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from .errors import InputError, install_cli_excepthook
from .utils import load_weights

__all__ = ["check_cli_overrides", "config_ids", "load_bundle_network"]

# arguments of `python -m monai.bundle run` itself, not config ids
_RUN_ARGS = {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"}


def config_ids(config: object, prefix: str = "") -> set[str]:
    """Every id in a config, nested ones as ``a#b#c``."""
    ids: set[str] = set()
    if isinstance(config, dict):
        items = config.items()
    elif isinstance(config, list):
        items = ((str(i), v) for i, v in enumerate(config))
    else:
        return ids
    for key, value in items:
        cid = f"{prefix}#{key}" if prefix else str(key)
        ids.add(cid)
        ids |= config_ids(value, cid)
    return ids


def _config_files(value: str) -> list[str]:
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value.split(",") if "," in value else value
    return [str(p) for p in ([parsed] if isinstance(parsed, str) else parsed)]


def check_cli_overrides(argv: Sequence[str] | None = None) -> None:
    """Refuse ``python -m monai.bundle run`` overrides that match no id of the config.

    MONAI adds an unknown override as a new, unused id, so a typo such as ``--max_epoch 5``
    would silently train with the default. Bundle configs call this in ``initialize``. It only
    looks at a command line of ``monai.bundle run``; elsewhere (e.g. MONAI Label loading the
    config in-process) it does nothing.

    Raises:
        InputError: naming the unknown override and the closest known ids.
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv or "monai/bundle" not in argv[0].replace("\\", "/") or "run" not in argv[1:2]:
        return
    install_cli_excepthook()  # bad input then prints one readable message, not MONAI's traceback chain
    names: list[str] = []
    files: list[str] = []
    for i, tok in enumerate(argv):
        if not tok.startswith("--"):
            continue
        name, _, value = tok[2:].partition("=")
        if name == "config_file":
            files += _config_files(value or (argv[i + 1] if i + 1 < len(argv) else ""))
        names.append(name.replace("::", "#"))
    if not files:
        return
    known = config_ids(ConfigParser.load_config_files(files)) | _RUN_ARGS
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f" Did you mean {', '.join('--' + c for c in close)}?" if close else ""
            raise InputError(
                f"unknown config override --{name}: no id '{name}' in {', '.join(files)}.{hint} "
                "Check the spelling, or add the id to the config."
            )


def load_bundle_network(
    config_file: str | Path, net_id: str = "network_def", ckpt_id: str = "ckpt_path"
) -> tuple[torch.nn.Module, Path | None]:
    """The network ``net_id`` of a bundle config, in eval mode, with the checkpoint ``ckpt_id`` names.

    Run it from the repository root, where the configs' ``%bundle/configs/...`` macros resolve.

    Returns:
        ``(network, checkpoint)``; ``checkpoint`` is ``None``, and the network keeps its initial
        weights, when the config names no existing file (e.g. heads, which ship no weights).
    """
    parser = ConfigParser()
    parser.read_config(str(config_file))
    network = parser.get_parsed_content(net_id).eval()
    ckpt = parser.get_parsed_content(ckpt_id)
    if not ckpt or not Path(ckpt).is_file():
        return network, None
    return load_weights(network, ckpt), Path(ckpt)
