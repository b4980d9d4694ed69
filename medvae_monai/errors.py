"""One exception type for every input the package refuses, so callers can catch it in one place."""

from __future__ import annotations

__all__ = ["InputError", "describe_source"]


class InputError(ValueError):
    """Bad user input: a file, folder, tensor or config value. The message names it and the fix."""


def describe_source(data: object) -> str:
    """Best-effort name of where a tensor came from (its ``filename_or_obj`` metadata)."""
    meta = getattr(data, "meta", None)
    if isinstance(meta, dict) and meta.get("filename_or_obj"):
        return str(meta["filename_or_obj"])
    return "<in-memory image>"
