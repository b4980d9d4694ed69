"""Running the bundle: configs written from layers (:mod:`.layers`), and where a config runs from and
writes to, with the checks on its command line (:mod:`.runtime`)."""

from __future__ import annotations

from .runtime import check_command, default_root, log_output_dir, root_of, run_ids, runs_dir

__all__ = ["check_command", "default_root", "log_output_dir", "root_of", "run_ids", "runs_dir"]
