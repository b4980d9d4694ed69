"""Packaging: the CPU constraints pin, the design card's dependencies, and the README's two commands."""

from __future__ import annotations

import re
import tomllib

import torch

from .conftest import REPO


def _pinned_torch() -> str:
    lines = (REPO / "constraints/cpu.txt").read_text().splitlines()
    pins = [ln.split("==")[1].strip() for ln in lines if ln.startswith("torch==")]
    assert len(pins) == 1, "constraints/cpu.txt must pin torch exactly once"
    return pins[0]


def test_cpu_pin_is_installed_and_admitted_by_the_open_range():
    pinned = _pinned_torch()
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_dep = next(d for d in deps if d.startswith("torch"))
    lower = re.search(r">=\s*([\d.]+)", torch_dep).group(1)
    as_tuple = lambda v: tuple(int(p) for p in v.split("+")[0].split(".")[:3])  # noqa: E731
    assert "==" not in torch_dep, "pyproject must not pin torch: GPU users need their CUDA build"
    assert as_tuple(pinned) >= as_tuple(lower)
    # the environment the tests run in was installed with the constraints file (README command 2)
    assert as_tuple(torch.__version__) == as_tuple(pinned), (torch.__version__, pinned)


def test_design_card_dependencies_are_declared():
    deps = " ".join(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    for name in ("torch", "monai", "pytorch-ignite", "nibabel", "itk", "pyyaml"):
        assert name in deps, name
    assert re.search(r"monai\[[^\]]*fire[^\]]*jsonschema", deps), "the bundle runner needs fire and jsonschema"


def test_readme_commands_and_ci_agree():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    commands = [ln for ln in blocks[0].splitlines() if ln and not ln.startswith("#")]
    assert len(commands) == 2
    assert "monai.bundle run training" in commands[0] and "pytest" in commands[1]
    ci = (REPO / ".ci/run").read_text()
    assert commands[1] in ci.splitlines(), ".ci/run must run the README's second command exactly"
