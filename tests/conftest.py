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
    """Run ``python -m monai.bundle run RUN_ID --config_file ...``, from the repo root unless ``cwd``
    says otherwise (this checkout stays first on the import path either way).

    The run is a process of its own, forked from a server that has imported ``medvae_monai`` once
    (:func:`_bundle_main`), which spares each run the 7-15 s of importing MONAI; with
    ``MEDVAE_TEST_SUBPROCESS=1`` it is a fresh interpreter instead.

    Returns a ``CompletedProcess`` (stdout and stderr merged into ``stdout``).
    """
    configs = [config] if isinstance(config, str) else config
    files = configs[0] if len(configs) == 1 else repr(configs)
    args = ["run", run_id, "--config_file", files, *overrides]
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "MEDVAE_QUIET": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": path}
    if os.environ.get("MEDVAE_TEST_SUBPROCESS", "") not in ("", "0"):
        proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    else:
        proc = _run_forked(cmd, args, cwd, env, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc


_FORK_SERVER = None  # started by the first forked run, one per pytest process


def _run_forked(cmd: list[str], args: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    import multiprocessing as mp
    import tempfile

    global _FORK_SERVER
    if _FORK_SERVER is None:  # the standard library's fork server, with MONAI and this package imported
        _FORK_SERVER = mp.get_context("forkserver")
        _FORK_SERVER.set_forkserver_preload(["medvae_monai", "monai.bundle", "runpy", "tests.conftest"])
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "output.txt"
        child = _FORK_SERVER.Process(target=_bundle_main, args=(args, str(cwd), env, str(log)))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(cmd, timeout, output=log.read_text(errors="replace"))
        return subprocess.CompletedProcess(cmd, child.exitcode, log.read_text(errors="replace"))


def _bundle_main(args: list[str], cwd: str, env: dict, log: str) -> None:
    """In a process forked from the server: what ``python -m monai.bundle ARGS`` does in ``cwd``
    with ``env``, its output (fds 1 and 2) in ``log``, and its exit status the interpreter's: the
    ``SystemExit`` code, or 1 after ``sys.excepthook`` reports an uncaught exception; then the
    ``atexit`` handlers run (the fork server's children otherwise skip them)."""
    import atexit
    import warnings

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1), os.dup2(fd, 2), os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.path.insert(0, cwd)  # as `python -m` puts the working directory first
    warnings.simplefilter("ignore")  # PYTHONWARNINGS=ignore, read only at interpreter start
    if "OMP_NUM_THREADS" in env:
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    sys.argv = ["monai.bundle", *args]
    try:
        runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException as e:  # noqa: BLE001  what the interpreter does with an uncaught exception
        sys.last_type, sys.last_value, sys.last_traceback = type(e), e, e.__traceback__
        sys.excepthook(type(e), e, e.__traceback__)
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(code)


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
