"""The install is reproducible: README's commands are what CI runs, and the lock pins every
package we depend on at a version inside the range we claim to support."""
from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement

from tests.conftest import ROOT


def commands(lines: list[str]) -> list[str]:
    """Shell lines without comments, blank lines, `set` and `cd`."""
    out = [line.split("#")[0].strip() for line in lines]
    return [c for c in out if c and not c.startswith(("set ", "cd "))]


def test_ci_runs_exactly_the_readmes_install_and_test_commands():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).splitlines()
    install, main_job, test = commands(block)
    assert install == "bash install.sh" and main_job == "accelerate launch train.py"
    assert commands((ROOT / ".ci" / "run").read_text().splitlines()[1:]) == [install, test]


def requirements() -> list[Requirement]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    return [Requirement(c) for c in commands(lines)] + [Requirement(d) for d in dev]


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_lock_pins_every_requirement_inside_its_range():
    pins = {}
    for line in commands((ROOT / "constraints.txt").read_text().splitlines()):
        name, version = line.split("==")
        pins[normal(name)] = version
    reqs = requirements()
    assert len(reqs) > 15
    for req in reqs:
        assert normal(req.name) in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[normal(req.name)]), \
            f"constraints.txt pins {req.name}=={pins[normal(req.name)]}, outside {req}"


def test_pyproject_reads_its_dependencies_from_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["dynamic"] == ["dependencies"]
    assert project["tool"]["setuptools"]["dynamic"]["dependencies"]["file"] == ["requirements.txt"]
