"""Output containment: every file the package writes resolves under ``--output_dir`` and is never an input.

Outputs are named after their inputs (``Hand/003000.jpeg`` -> ``Hand/003000.png``). Datalists list
inputs by absolute path, by ``../`` paths or through symlinks, and a name copied from such a path
lands wherever the input is: decoding a store once replaced the input volumes. Every writer
therefore gets its path from :func:`output_path_for` (derived names) or :func:`contained_path`
(fixed names such as ``metrics.json``), which map the input to a safe relative name and refuse
with :class:`~medvae_monai.errors.InputError` any path that resolves outside ``output_dir`` or
onto an input file.

Naming rule (:func:`safe_relative_name`): a source inside its dataset root keeps its path relative
to that root (lexically: a symlink is named by its link, not its target); a source outside the
root (absolute elsewhere, or ``../`` relative) is named by its path relative to the folder it
shares with the root, i.e. the leading ``..`` parts are dropped (``lists/../vols/case0.nii.gz``
and ``/data/vols/case0.nii.gz`` with root ``/data/lists`` both give ``vols/case0.nii.gz``); with no
root an absolute source is named by its file name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from monai.data.folder_layout import FolderLayoutBase

from .data import IMAGE_SUFFIXES
from .errors import InputError

__all__ = [
    "ContainedFolderLayout",
    "OutputNames",
    "contained_path",
    "output_path_for",
    "output_stem",
    "refuse_shared_output_names",
    "safe_relative_name",
    "source_path",
    "strip_image_suffix",
]

# longest first, so ".nii.gz" wins over ".nii"
_IMAGE_SUFFIXES = sorted(IMAGE_SUFFIXES, key=len, reverse=True)


def _lexical(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """Absolute, normalised path without following symlinks (``os.path`` only, never the disk)."""
    p = os.fspath(path)
    if base is not None and not os.path.isabs(p):
        p = os.path.join(os.fspath(base), p)
    return os.path.normpath(os.path.abspath(p))


def source_path(source: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """The absolute, lexical path of an input, however it is listed.

    A relative ``source`` is first read as readers open it, against the working directory: a
    relative ``--dataset_dir ../data/MedNIST`` lists ``../data/MedNIST/Hand/0.jpeg``. It is taken
    as relative to ``root`` instead only when that reading neither lies inside ``root`` nor exists,
    as for a datalist's own ``Hand/0.jpeg`` entries. Without this rule, the same dataset named by a
    relative or an absolute path would give different output names.
    """
    here = _lexical(source)
    if root is None or os.path.isabs(os.fspath(source)):
        return here
    base = _lexical(root)
    if here == base or here.startswith(base.rstrip(os.sep) + os.sep) or os.path.lexists(here):
        return here
    return _lexical(source, base)


def safe_relative_name(source: str | os.PathLike, root: str | os.PathLike | None = None) -> PurePosixPath:
    """A relative, ``..``-free name for ``source`` (see the module docstring for the rule).

    Args:
        source: an input path: absolute, relative to the working directory (as sources list the
            files of a relative ``--dataset_dir``), or relative to ``root`` (see :func:`source_path`).
        root: the dataset's root folder (class-folder tree, the datalist's folder), or ``None``.

    Raises:
        InputError: the source has no file name (empty, ``.``, a root folder).
    """
    if root is None:
        src = os.path.normpath(os.fspath(source))
        rel = os.path.basename(src) if os.path.isabs(src) else src
    else:
        src, base = source_path(source, root), _lexical(root)
        try:
            rel = os.path.relpath(src, base)
        except ValueError:  # another drive (Windows): no relative path exists
            rel = os.path.splitdrive(src)[1].lstrip("\\/")
    # after normpath ".." can only lead: drop it (the source lies beside the root, not below it)
    parts = [p for p in PurePosixPath(Path(rel).as_posix()).parts if p not in ("..", ".", "/")]
    if not parts:
        raise InputError(f"{os.fspath(source)!r}: has no file name to name its output after; list image files, not folders.")
    return PurePosixPath(*parts)


def strip_image_suffix(name: str) -> str:
    """``name`` without its image suffix (``case0.nii.gz`` -> ``case0``); other names unchanged."""
    low = name.lower()
    for suffix in _IMAGE_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def contained_path(
    output_dir: str | os.PathLike,
    relative: str | os.PathLike,
    inputs: Iterable[str | os.PathLike] = (),
    input_root: str | os.PathLike | None = None,
) -> Path:
    """``output_dir / relative``, checked: the one gate every writer passes through.

    Symlinks are followed for the check (a symlinked sub-folder of ``output_dir`` pointing
    elsewhere is caught); the returned path is the lexical one, so ``atomic_write`` replaces a
    link rather than writing through it.

    Args:
        output_dir: the run's ``--output_dir``.
        relative: the file's path below it.
        inputs: input files this run reads; the output may not be any of them (nor a hard link to
            one). A ``set``/``frozenset`` is taken as already resolved paths and checked by membership
            only, for datasets too large to check file by file.
        input_root: the dataset's root folder; an output inside it is refused unless
            ``output_dir`` is itself a dedicated sub-folder of the root.

    Returns:
        The output path (not created).

    Raises:
        InputError: naming the file and the fix, when the path resolves outside ``output_dir``,
            onto an input file, or into the input folder.
    """
    out = Path(output_dir)
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise InputError(f"{os.fspath(relative)!r}: an output name must be relative and stay below --output_dir {str(out)!r}.")
    path = out / rel
    real_out, real = out.resolve(), path.resolve()
    if not _inside(real, real_out) or real == real_out:
        raise InputError(
            f"{path}: resolves to {real}, outside --output_dir {str(real_out)!r} (a symlink in the way?); "
            "remove the link or choose another --output_dir."
        )
    # a set holds resolved paths already (built once for a large dataset); other iterables are resolved here
    given_resolved = isinstance(inputs, (set, frozenset))
    resolved = inputs if given_resolved else {Path(src).resolve() for src in inputs}
    hard_link = not given_resolved and real.exists() and any(s.exists() and os.path.samefile(real, s) for s in resolved)
    if real in resolved or hard_link:
        raise InputError(
            f"{path}: is one of the input files; refusing to overwrite an input. Choose an --output_dir outside the "
            "input folders."
        )
    if input_root is not None:
        real_root = Path(input_root).resolve()
        dedicated = _inside(real_out, real_root) and real_out != real_root
        if _inside(real, real_root) and not dedicated:
            raise InputError(
                f"{path}: would be written into the input folder {str(real_root)!r}; choose an --output_dir outside it "
                "(or a new sub-folder of it)."
            )
    return path


def output_stem(source: str | os.PathLike, root: str | os.PathLike | None = None) -> PurePosixPath:
    """:func:`safe_relative_name` without the image suffix (``vols/case0.nii.gz`` -> ``vols/case0``):
    the part of an output name that comes from its input. Raises as that function does."""
    name = safe_relative_name(source, root)
    return name.with_name(strip_image_suffix(name.name) or name.name)  # a file named just '.png' keeps it


def output_path_for(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    root: str | os.PathLike | None = None,
    postfix: str = "",
    ext: str = "",
    inputs: Iterable[str | os.PathLike] | None = None,
) -> Path:
    """The contained output path of ``source``: ``output_dir/<safe name>[_postfix][ext]``.

    Args:
        source: the input path (absolute, or relative to ``root``).
        output_dir: the run's ``--output_dir``.
        root: the dataset root (see :func:`safe_relative_name`).
        postfix: appended to the name after ``_`` (``recon`` -> ``case0_recon``); ``""``: none.
        ext: replaces the image suffix (``.nii.gz``, ``.png``); ``""`` keeps the source's.
        inputs: input files the output may not be; default: ``source`` itself.

    Raises:
        InputError: see :func:`contained_path`.
    """
    name = output_stem(source, root) if ext else safe_relative_name(source, root)
    stem = f"{name.name}_{postfix}" if postfix else name.name
    src = source_path(source, root)
    return contained_path(output_dir, name.with_name(stem + ext), [src] if inputs is None else inputs, root)


class OutputNames:
    """The input each output path was given to, so that two inputs never share one output.

    Output names drop the image suffix, so ``x.nii`` and ``x.nii.gz`` (or ``a.png`` and ``a.jpeg``)
    in one folder map to one ``x_recon.nii.gz``: the second would silently replace the first. Every
    writer that names outputs after inputs claims each path here first.
    """

    def __init__(self) -> None:
        self._sources: dict[Path, str] = {}

    def claim(self, path: Path, source: str | os.PathLike) -> Path:
        """Record ``path`` as ``source``'s output and return it.

        Raises:
            InputError: ``path`` was already given to another input, naming both inputs and the fix.
        """
        first = self._sources.setdefault(Path(os.path.abspath(path)), str(source))
        if first != str(source):
            raise InputError(
                f"{path}: the inputs {first} and {source} both map to this output name (they differ only in their "
                "suffix); rename or move one of them, or list them in separate runs with separate --output_dir."
            )
        return path


def refuse_shared_output_names(items: Iterable[dict | str], root: str | os.PathLike | None = None) -> None:
    """Refuse, before anything is written, inputs that would share an output name (``x.png`` and
    ``x.jpeg``), as :class:`OutputNames` would at the second write.

    Args:
        items: data-source items (their ``source``) or source paths.
        root: the dataset root (``source.root``).

    Raises:
        InputError: naming both inputs and the fix.
    """
    names = OutputNames()
    for it in items:
        source = it["source"] if isinstance(it, dict) else it
        names.claim(output_stem(source, root), source)


class ContainedFolderLayout(FolderLayoutBase):
    """MONAI ``SaveImage(d)`` folder layout whose file names come from :func:`output_path_for`.

    Give it as ``folder_layout`` to ``SaveImaged``: MONAI's default layout joins the source's path
    relative to ``data_root_dir`` onto ``output_dir``, which leaves it for absolute and ``../``
    sources.

    Args:
        output_dir: destination folder.
        root: the folder input names are relative to, worked out by the data source
            (``@source.root``; ``None`` for in-memory items).
        postfix: file name postfix (``recon``, ``seg``, ``latent``).
        extension: output suffix (``.nii.gz``, ``.png``).
    """

    def __init__(self, output_dir: str | os.PathLike, root: str | os.PathLike | None = None, postfix: str = "", extension: str = "") -> None:
        self.output_dir = output_dir
        self.root = root
        self.postfix = postfix
        self.extension = extension if not extension or extension.startswith(".") else f".{extension}"
        self.names = OutputNames()

    def filename(self, subject: str | os.PathLike = "subject", idx=None, **kwargs) -> str:
        """The contained output path of ``subject`` (created folders included).

        Raises:
            InputError: see :func:`output_path_for` and :meth:`OutputNames.claim`.
        """
        postfix = "_".join(str(p) for p in (self.postfix, idx, *(f"{k}-{v}" for k, v in kwargs.items())) if p not in (None, ""))
        path = output_path_for(subject, self.output_dir, self.root, postfix, self.extension or ".nii.gz")
        self.names.claim(path, subject)
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)

