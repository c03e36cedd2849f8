"""A fresh machine next year must still install MSaaS: every pinned dependency has a binary wheel for each Python users run."""

import re
import subprocess
import sys
import tomllib

import pytest

from conftest import ROOT

PYTHONS = ["3.11", "3.12", "3.13", "3.14"]
# Linux x86_64 wheels: every manylinux tag pip accepts there (pip does not widen a `--platform` on its own).
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(5, 41)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]


def name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_dependency_is_pinned_in_the_constraints():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {name(r) for r in project["dependencies"]}
    for requirements in project["optional-dependencies"].values():
        wanted |= {name(r) for r in requirements if not r.startswith("msaas")}
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pinned = {name(line) for line in lines if line and not line.startswith("#")}
    assert wanted <= pinned, f"not in constraints.txt: {wanted - pinned}"
    assert "torch==2.13.0" in lines  # the exact pin; a local version (+cpu) would not resolve on a user's machine


@pytest.mark.slow
@pytest.mark.parametrize("python", PYTHONS)
def test_every_pinned_dependency_has_a_binary_wheel_for(python):
    """pip resolves constraints.txt from PyPI with binary wheels only, as for that Python on Linux x86_64."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--no-deps"]
    command += ["--only-binary=:all:", "--python-version", python, *platforms, "-r", str(ROOT / "constraints.txt")]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    problems = [line for line in out.stderr.splitlines() if line.startswith("ERROR")]
    assert out.returncode == 0 and not problems, "\n".join(problems)
