"""Atomic file writes and safe checkpoint loading."""

from __future__ import annotations

import atexit
import json
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from .errors import InputError, find_input_error

__all__ = [
    "atomic_write", "atomic_write_file", "atomic_write_json", "atomic_torch_save", "checkpoint_class_names", "classifier_class_names", "decode_class_names",
    "ensure_writable_dir", "file_mode", "load_state_dict", "load_weights",
]  # fmt: skip

_UMASK = os.umask(0o022)  # read the process umask (the only way is to set it) and put it back
os.umask(_UMASK)


# the bundle's own files: a run writing there would replace them (training's model.pt over the pretrained one)
BUNDLE_FOLDERS = ("models", "configs", "docs")


def ensure_writable_dir(
    path: str | os.PathLike, dataset_dir: str | os.PathLike | None = None, bundle_root: str | os.PathLike | None = None
) -> Path:
    """Create ``path`` if needed and check it can be written.

    Args:
        path: the output folder (``--output_dir``).
        dataset_dir: the run's input; when it is a folder, ``path`` may not be it or lie inside it,
            because the next run on that folder would read the outputs (checkpoints, stores,
            reconstructions) as data. A datalist or image file is not scanned, so it does not count.
        bundle_root: the bundle that runs; ``path`` may not be its root or lie in its
            :data:`BUNDLE_FOLDERS`, whose files (the pretrained weights among them) outputs would replace.

    Raises:
        InputError: no folder (null), or it cannot be created or written, or it lies inside the
            dataset folder or the bundle's own folders.
    """
    if path in (None, ""):
        raise InputError("--output_dir is null; give the folder to write into.")
    p = Path(path)
    out = p.resolve()
    if bundle_root not in (None, ""):
        root = Path(bundle_root).resolve()
        if out == root or any(_within(out, root / f) for f in BUNDLE_FOLDERS):
            raise InputError(
                f"--output_dir {str(p)!r} is inside the bundle {str(bundle_root)!r}, whose files (configs, the "
                "pretrained models) a run would replace; choose an --output_dir outside it, such as runs/<name>."
            )
    if dataset_dir not in (None, "") and Path(dataset_dir).is_dir():
        if _within(out, Path(dataset_dir).resolve()):
            raise InputError(
                f"--output_dir {str(p)!r} is inside the dataset folder {str(dataset_dir)!r}: the next run on that "
                "folder would read the outputs as data; choose an --output_dir outside it."
            )
    created = [d for d in (p.absolute(), *p.absolute().parents) if not d.exists()]
    try:
        p.mkdir(parents=True, exist_ok=True)
        if created:
            atexit.register(_remove_if_empty, created)
        fd, probe = tempfile.mkstemp(dir=p, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"output folder {str(p)!r} is not writable ({e.strerror}); choose another --output_dir.") from None
    return p


def _within(path: Path, folder: Path) -> bool:
    """Whether resolved ``path`` is ``folder`` or lies inside it."""
    return path == folder or folder in path.parents


def _remove_if_empty(folders: list[Path]) -> None:
    """At exit after a refusal, remove the folders (deepest first) that this process created and left empty.

    A run refused at start-up (a missing checkpoint, a bad setting) would otherwise leave an empty
    ``--output_dir`` behind, which looks like a run that wrote nothing. Only a process that dies of
    an :class:`InputError` (``sys.last_value``, set for an uncaught exception) removes anything:
    another process (a torchrun rank still saving) may be about to write into the folder.
    """
    if find_input_error(getattr(sys, "last_value", None)) is None:
        return
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # written into (or gone): keep it and its parents
            return


def file_mode() -> int:
    """The permissions ``open()`` gives a new file (``0666 & ~umask``), for files made by ``mkstemp`` (``0600``)."""
    return 0o666 & ~_UMASK


def atomic_write_file(path: str | os.PathLike, write_file: Callable[[str], None], suffix: str = ".tmp") -> Path:
    """Write ``path`` through ``write_file(temporary_path)``, sync it, then rename it in place.

    A reader sees either the old file or the complete new one, never a partial file, even if
    the process is killed mid-write. ``suffix`` ends the temporary name, for writers that pick the
    format by it (``.tmp.nii.gz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write_file(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Atomically write ``path`` through ``write(file_object)`` (see :func:`atomic_write_file`)."""

    def through_file_object(tmp: str) -> None:
        with open(tmp, mode) as f:
            write(f)

    return atomic_write_file(path, through_file_object)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n"), mode="w")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """Atomically ``torch.save`` (tensors and plain containers only, so ``weights_only`` loads it)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_state_dict(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", option: str = "--ckpt_path"
) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``; never unpickles arbitrary objects.

    Args:
        option: the command-line option that names this checkpoint, for the error message.

    Raises:
        InputError: no path (null), the file is missing or corrupt, or it holds pickled objects rather than tensors.
    """
    if path in (None, ""):
        raise InputError(f"{option} is null, and this config needs weights; pass a checkpoint file with {option}.")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint {str(p)!r} does not exist; pass an existing file with {option}.")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise InputError(
                f"{p}: refused, it holds pickled Python objects, not just tensors, and loading it could run code "
                "(torch.load weights_only=True). Re-save it as a state dict: torch.save(model.state_dict(), path)."
            ) from None
        raise InputError(f"{p}: cannot be read as a PyTorch checkpoint ({first[:200]}); it is corrupt or truncated.") from None


CLASS_NAMES_KEY = "class_names_utf8"


def decode_class_names(buffer: torch.Tensor) -> list[str]:
    """Class names from a ``class_names_utf8`` buffer (:class:`~medvae_monai.networks.LatentClassifier`):
    a uint8 tensor of the UTF-8 bytes of their JSON list."""
    return json.loads(bytes(buffer.tolist()).decode())


def checkpoint_class_names(path: str | os.PathLike | None) -> list[str] | None:
    """The class names a classifier checkpoint keeps (label order), or None: no path, no such file
    (loading it later says so), or a checkpoint saved without names.

    Raises:
        InputError: the file cannot be read as a checkpoint (see :func:`load_state_dict`).
    """
    if not path or not Path(path).is_file():
        return None
    state = load_state_dict(path)
    if isinstance(state, dict) and isinstance(state.get("network"), dict):
        state = state["network"]  # a full training checkpoint (last.pt)
    keys = [k for k in state if k == CLASS_NAMES_KEY or k.endswith("." + CLASS_NAMES_KEY)] if isinstance(state, dict) else []
    return decode_class_names(state[keys[0]]) if keys else None


def classifier_class_names(
    trained: list[str] | None, dataset: list[str] | None, ckpt_path: str | os.PathLike | None
) -> list[str]:
    """The classifier's class names: those ``ckpt_path`` keeps, else the dataset's class folders.

    Raises:
        InputError: fewer than two names, naming the cause: ``ckpt_path`` does not exist, or keeps no
            class names (not a classifier checkpoint), or the dataset has fewer than two class folders.
    """
    names = list(trained or dataset or [])
    if len(names) >= 2:
        return names
    if ckpt_path and not Path(ckpt_path).is_file():
        raise InputError(
            f"checkpoint {str(ckpt_path)!r} does not exist; pass a classifier's model.pt with --ckpt_path "
            "(train_classifier.yaml writes one)."
        )
    if ckpt_path:
        raise InputError(
            f"{ckpt_path}: keeps no class names (is it a classifier checkpoint?) and the dataset gives {names}; "
            "pass a classifier's model.pt with --ckpt_path, or the names with --class_names \"['a', 'b']\"."
        )
    raise InputError(f"the dataset gives {len(names)} class(es) {names}; a classifier needs at least 2 class folders, or --class_names.")


def _conv_dims(state: dict) -> int | None:
    """Spatial dims of a state dict's convolutions (weights ``(out, in, *kernel)``), if they agree."""
    dims = {v.ndim - 2 for k, v in state.items() if k.endswith("weight") and isinstance(v, torch.Tensor) and v.ndim in (4, 5)}
    return dims.pop() if len(dims) == 1 else None


def _is_head_state(state: Mapping[str, object]) -> bool:
    """A head wrapper's weights (``vae.*`` and ``head.*``), as opposed to a plain VAE's."""
    return any(k.startswith("head.") for k in state) and any(k.startswith("vae.") for k in state)


def _configs_for(path: str | os.PathLike) -> str:
    """How to run a bundle checkpoint (``<bundle>/models/x.pt``) with the configs that name it."""
    p = Path(path).resolve()
    configs = p.parent.parent / "configs"
    named = sorted(c for c in configs.glob("*.yaml") if f"/models/{p.name}" in c.read_text(errors="replace"))
    if p.parent.name != "models" or not named:
        return "use the config it was trained with (spatial_dims, in_channels, channels, ...)"
    overlays = [c for c in named if not {"initialize", "+initialize"} & set(yaml.safe_load(c.read_text()) or {})]
    if overlays:  # an overlay holds only the architecture and the weights, so it goes after a base config
        return (
            f"it is the weights of the overlay {overlays[0]}: list that after the base config, "
            f"--config_file \"['bundle/configs/<config>.yaml', 'bundle/configs/{overlays[0].name}']\""
        )
    return f"the bundle's configs that use it are {', '.join(c.name for c in named)}"


def load_weights(
    network: torch.nn.Module,
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    option: str = "--ckpt_path",
) -> torch.nn.Module:
    """Load a state dict from ``path`` into ``network`` (safely, see :func:`load_state_dict`).

    Args:
        option: the command-line option that names this checkpoint (``--ckpt_path``, ``--vae_ckpt``),
            for the error messages.

    Raises:
        InputError: the checkpoint is missing, or does not fit the network's architecture: a 2D
            checkpoint for a 3D network (or the reverse) says so, other mismatches list the first
            mismatching keys or shapes.
    """
    state = load_state_dict(path, map_location, option)
    if isinstance(state, dict) and "network" in state and isinstance(state["network"], dict):
        state = state["network"]  # a full training checkpoint (last.pt)
    if not isinstance(state, dict):
        raise InputError(
            f"{path}: holds a {type(state).__name__}, not a state dict; "
            "save it with torch.save(model.state_dict(), path)."
        )
    have_heads, want_heads = _is_head_state(state), _is_head_state(network.state_dict())
    if have_heads != want_heads:
        kind = "a classifier or segmenter (VAE encoder + head)" if have_heads else "a plain VAE"
        use = "infer_classifier.yaml, infer_segmentation.yaml or the nodule configs" if have_heads else "--vae_ckpt of a head config"
        raise InputError(
            f"{path}: this checkpoint is {kind}, and the config builds a {type(network).__name__}: "
            f"use it with {use}, or give a matching {option}."
        )
    have, want = _conv_dims(state), _conv_dims(network.state_dict())
    if None not in (have, want) and have != want:
        raise InputError(
            f"{path}: this checkpoint is a {have}D network and the config builds a {want}D {type(network).__name__} "
            f"(spatial_dims {want}): pass --spatial_dims {have} to use it, or a {want}D checkpoint with {option}."
        )
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:4])
        raise InputError(
            f"{path}: the checkpoint does not fit this {type(network).__name__} ({detail[:400]}). It was trained with "
            f"another architecture: {_configs_for(path)}, or give another {option}."
        ) from None
    return network
