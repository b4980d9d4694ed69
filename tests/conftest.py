"""Shared test fixtures: where the real data lives, and how to run a bundle config."""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if "PYTEST_XDIST_WORKER" in os.environ:  # pytest -n N: N workers share the cores, one torch thread each
    os.environ["OMP_NUM_THREADS"] = "1"  # and each bundle, torchrun or server they start
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
# real data: ../shared/data beside the checkout (as in CI), or MEDVAE_DATA
DATA = Path(os.environ.get("MEDVAE_DATA", REPO.parent / "shared" / "data"))


def data_path(*parts: str) -> Path:
    """Path under the shared data folder; skips the test (with the reason) when it is absent."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found at {p} (set MEDVAE_DATA or place ../shared/data beside the repo)")
    return p


CASES = Path(os.environ.get("MEDVAE_CASES", REPO.parent / "shared" / "cases"))


def make_case(name: str, dest: Path) -> Path:
    """Run ``<cases>/<name>/make.py`` with ``dest`` as its folder; returns ``dest / "data"``.

    The bug-report cases (``../shared/cases``) write their inputs beside their ``make.py``; a copy
    of it runs in ``dest`` (a ``tmp_path``), so no generated data lands in the cases or the repo.
    Skips the test when the cases are absent.
    """
    make = CASES / name / "make.py"
    if not make.is_file():
        pytest.skip(f"bug-report case {name!r} not found at {make} (set MEDVAE_CASES or place ../shared/cases)")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "make.py").write_text(make.read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        runpy.run_path(str(dest / "make.py"), run_name="__main__")
    return dest / "data"


def run_bundle(
    run_id: str, config: str | list[str], *overrides: str, timeout: int = 600, check: bool = True, cwd: Path = REPO
):
    """Run ``python -m monai.bundle run RUN_ID --config_file ...`` in a subprocess, from the repo root
    unless ``cwd`` says otherwise (this checkout stays first on the import path either way).

    Returns the ``CompletedProcess`` (stdout and stderr merged into ``stdout``).
    """
    configs = [config] if isinstance(config, str) else config
    files = configs[0] if len(configs) == 1 else repr(configs)
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", files, *overrides]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "MEDVAE_QUIET": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": path}
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc


def kill_when_exists(proc, path: Path, timeout: float = 600.0) -> None:
    """SIGKILL ``proc`` as soon as ``path`` exists (an event, not a timer, so a loaded machine only
    makes the test slower). Fails with the child's stderr if it exits first, or after ``timeout`` s."""
    import signal
    import time

    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, f"{path} did not appear within {timeout:.0f} s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
