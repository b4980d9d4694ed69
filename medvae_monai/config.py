"""Checks on how a bundle config is run, and its network loaded from Python."""

from __future__ import annotations

import ast
import difflib
import logging
import os
import sys
from collections.abc import Sequence, Sized
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

from .errors import InputError, install_cli_excepthook
from .utils import load_weights

__all__ = [
    "check_cli_overrides",
    "check_device",
    "config_ids",
    "drop_last_for",
    "load_bundle_network",
    "parse_setting",
    "require_output",
]

logger = logging.getLogger("medvae_monai")

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


_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


# lower bounds of the numeric settings that have one: a count of 0 or a negative rate would fail
# deep inside a DataLoader or scheduler, or silently mean "all" (max_items 0)
_AT_LEAST = {
    "batch_size": 1, "max_epochs": 1, "val_interval": 1, "shard_size": 1, "max_items": 1, "num_samples": 2,
    "posterior_samples": 1, "tile_size": 1, "num_workers": 0, "tile_overlap": 0, "overlap": 0,
    "kl_warmup_steps": 0, "beta": 0, "free_bits": 0, "recon_weight": 0, "ssim_weight": 0, "tv_weight": 0,
    "codec_rdoq_iterations": 0,
}
_ABOVE = {"learning_rate": 0, "restoration_lr": 0}
_ONE_OF = {"spatial_dims": (2, 3)}


def parse_setting(key: str, raw: str, default: object) -> object:
    """Type a command-line value ``raw`` for config id ``key`` by the type of its ``default``.

    Booleans: ``true/True/1/yes`` and ``false/False/0/no`` (any case); integers: whole numbers;
    floats: finite numbers; ``null``/``None`` is ``None`` where the default is not a boolean or
    number (``None``, a string, a ``$`` expression or an ``@`` reference). Other defaults
    (strings, lists, expressions) are returned as MONAI's command line parsed them, except for the
    bounded settings (``_AT_LEAST``, ``_ABOVE``: counts, sizes, weights, learning rates), whose
    numbers are checked whatever the default.

    Raises:
        InputError: naming ``--key``, the value and what it accepts.
    """
    text = raw.strip()
    bounded = key in _AT_LEAST or key in _ABOVE
    if text in ("null", "None") and not isinstance(default, (bool, int, float)):
        return None  # MONAI's command line leaves "null" a string, which "$" expressions then misuse
    if isinstance(default, bool):
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise InputError(f"--{key} {raw!r}: a boolean setting; give true/false (also True/False, yes/no, 1/0).")
    if not isinstance(default, (int, float)) and not bounded:
        return _UNTYPED
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not np.isfinite(number):
        raise InputError(f"--{key} {raw!r}: a numeric setting; give a finite number (default {default!r}).")
    whole = isinstance(default, int) or (not isinstance(default, float) and key in _AT_LEAST and number.is_integer())
    if isinstance(default, int) and not number.is_integer():
        raise InputError(f"--{key} {raw!r}: an integer setting; give a whole number (default {default!r}).")
    if key in _ONE_OF and number not in _ONE_OF[key]:
        raise InputError(f"--{key} {raw!r}: give one of {', '.join(map(str, _ONE_OF[key]))}.")
    if key in _AT_LEAST and number < _AT_LEAST[key] or key in _ABOVE and number <= _ABOVE[key]:
        limit = f">= {_AT_LEAST[key]}" if key in _AT_LEAST else f"> {_ABOVE[key]}"
        raise InputError(f"--{key} {raw!r}: out of range; give a number {limit} (default {default!r}).")
    return int(number) if whole else number


_UNTYPED = object()  # parse_setting: leave MONAI's own parsing of the value


def _running_parser() -> ConfigParser | None:
    """The ``ConfigParser`` whose ``initialize`` is evaluating this call, found on the call stack.

    MONAI's command line (python-fire) passes ``--resume false`` as the string ``"false"`` (truthy)
    and has no hook to type values, so :func:`check_cli_overrides`, the first ``initialize`` step
    of every config, types them in the running parser before anything reads them.
    """
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, ConfigParser):
            return owner
        frame = frame.f_back
    return None


def _set_unresolved(parser: ConfigParser, cid: str, value: object) -> None:
    """Set config id ``cid`` in ``parser`` mid-resolution (``parser[cid] = v`` would reset the resolver)."""
    item = parser.ref_resolver.items.get(cid)
    if item is not None:
        item.update_config(value)
    *path, last = cid.split("#")
    holder = parser.get()
    for k in path:
        holder = holder[int(k)] if isinstance(holder, list) else holder[k]
    holder[int(last) if isinstance(holder, list) else last] = value


def check_overlay_keys(files: Sequence[str]) -> None:
    """Refuse a top-level key of an overlay (``--config_file "[base, overlay, ...]"``) that misspells a base id.

    MONAI merges an overlay's ``max_epoch: 2`` as a new, unused id, so the base's ``max_epochs``
    silently stays in force, as with a misspelled command-line override. Overlays may add ids of
    their own (``ddp_network``), so only a key that is not in the base and nearly equals a base id
    (difflib ratio >= 0.85: one or two letters off) is refused.

    Bounded settings (``batch_size: 0``) are checked as on the command line.

    Raises:
        InputError: naming the overlay file, the key and the base id it nearly matches, or a value
            out of its setting's range.
    """
    if len(files) < 2:
        return
    base = config_ids(ConfigParser.load_config_file(files[0]))
    for overlay in files[1:]:
        for key, value in ConfigParser.load_config_file(overlay).items():
            name = str(key).lstrip("+")
            if (name in _AT_LEAST or name in _ABOVE) and isinstance(value, (int, float)) and not isinstance(value, bool):
                try:  # the command line's bounds hold for overlay values too
                    parse_setting(name, str(value), value)
                except InputError as e:
                    raise InputError(f"{overlay}: {e}".replace(f"--{name} ", f"{name}: ", 1)) from None
            if name in base:
                continue
            close = difflib.get_close_matches(name, sorted(base), n=1, cutoff=0.85)
            if close:
                raise InputError(
                    f"{overlay}: key '{name}' is not an id of {files[0]}; did you mean '{close[0]}'? "
                    "As spelled it is merged as a new, unused id and the default stays in force: fix the spelling."
                )


def check_cli_overrides(argv: Sequence[str] | None = None) -> None:
    """Refuse unknown ``python -m monai.bundle run`` overrides and type the known ones.

    MONAI adds an unknown override as a new, unused id, so a typo such as ``--max_epoch 5``
    would silently train with the default. A value for a boolean or numeric id is typed by its
    default with :func:`parse_setting` (``--skip_unreadable false`` means false) and set in the
    running config. Bundle configs call this first in ``initialize``. It only looks at a command
    line of ``monai.bundle run``; elsewhere (e.g. MONAI Label loading the config in-process) it
    does nothing.

    Raises:
        InputError: naming the unknown override and the closest known ids, or a value that does
            not fit its id's type.
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv or "monai/bundle" not in argv[0].replace("\\", "/") or "run" not in argv[1:2]:
        return
    install_cli_excepthook()  # bad input then prints one readable message, not MONAI's traceback chain
    values: dict[str, str] = {}
    files: list[str] = []
    for i, tok in enumerate(argv):
        if not tok.startswith("--"):
            continue
        name, eq, value = tok[2:].partition("=")
        if not eq:  # "--key value"; a bare "--flag" means true, as python-fire reads it
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            value = nxt if nxt is not None and not nxt.startswith("--") else "true"
        if name == "config_file":
            files += _config_files(value)
        values[name.replace("::", "#")] = value
    if not files:
        return
    check_overlay_keys(files)
    defaults = ConfigParser(ConfigParser.load_config_files(files))
    defaults.resolve_macro_and_relative_ids()  # a user config's "%file::x" macros -> their defaults
    known = config_ids(defaults.get()) | _RUN_ARGS
    for name in values:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f" Did you mean {', '.join('--' + c for c in close)}?" if close else ""
            raise InputError(
                f"unknown config override --{name}: no id '{name}' in {', '.join(files)}.{hint} "
                "Check the spelling, or add the id to the config."
            )
    if "device" in values:
        check_device(values["device"])
    parser = _running_parser()
    for name, raw in values.items():
        if name in _RUN_ARGS:
            continue
        typed = parse_setting(name, raw, defaults.get(name))
        if typed is not _UNTYPED and parser is not None:
            _set_unresolved(parser, name, typed)


def check_device(name: str) -> torch.device:
    """The ``torch.device`` that ``--device name`` asks for, if PyTorch can use it here.

    Raises:
        InputError: not a device name, or a GPU that this machine does not have.
    """
    try:
        device = torch.device(str(name).strip())
    except RuntimeError:
        raise InputError(f"--device {name!r}: not a device name; give cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        have = f"{torch.cuda.device_count()} CUDA GPU(s)" if torch.cuda.is_available() else "no CUDA GPU"
        raise InputError(
            f"--device {name!r}: PyTorch sees {have} here; give --device cpu, or leave --device out "
            "(the default takes the GPU when there is one)."
        )
    return device


def load_bundle_network(
    config_file: str | Path, net_id: str = "network_def", ckpt_id: str = "ckpt_path"
) -> tuple[torch.nn.Module, Path | None]:
    """The network ``net_id`` of a bundle config, in eval mode, with the checkpoint ``ckpt_id`` names.

    ``bundle_root`` is the bundle that holds ``config_file``, so it works from any working directory.

    Returns:
        ``(network, checkpoint)``; ``checkpoint`` is ``None``, and the network keeps its initial
        weights, when the config names no existing file (e.g. heads, which ship no weights).
    """
    parser = ConfigParser()
    parser.read_config(str(config_file))
    from .bundle import root_of  # not at the top: medvae_monai.bundle imports this module

    parser["bundle_root"] = root_of(config_file)
    network = parser.get_parsed_content(net_id).eval()
    ckpt = parser.get_parsed_content(ckpt_id)
    if not ckpt or not Path(ckpt).is_file():
        return network, None
    return load_weights(network, ckpt), Path(ckpt)


def drop_last_for(dataset: Sized, batch_size: int) -> bool:
    """``DataLoader(drop_last=...)`` for training: drop a ragged last batch only if a full one exists.

    With fewer items than ``batch_size`` (two dozen annotated images, batch 32) dropping it left
    an empty loader: training "finished" with no step and no model. Then the one partial batch is
    kept, and a line says so.
    """
    n = len(dataset)
    if n < int(batch_size):
        logger.warning("training set: %d item(s), fewer than --batch_size %d; training on one partial batch.", n, batch_size)
        return False
    return True


def require_output(path: str | os.PathLike, what: str = "model") -> Path:
    """Raise unless the run wrote ``path`` (a training run must never exit 0 without its model).

    Raises:
        RuntimeError: naming the missing file.
    """
    p = Path(path)
    if not p.is_file():
        raise RuntimeError(f"{p}: the run finished without writing its {what}; see the log above for why.")
    return p
