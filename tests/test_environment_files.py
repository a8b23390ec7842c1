"""environment.yml and binder/ cannot be resolved here; check they agree with pyproject and constraints."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement(line: str) -> tuple[str, str]:
    """(normalised name, version) of a pinned requirement line like ``torch==2.14.1+cpu``."""
    name, _, version = line.partition("==")
    return normalise(name.strip()), version.strip().split("+")[0]


def project_packages() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {normalise(re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0]) for r in requirements}


def constraints() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(requirement(line) for line in lines if line and not line.startswith("#"))


def check_pins(pins: list[tuple[str, str]], where: str) -> None:
    assert {name for name, _ in pins} == project_packages(), f"{where} names other packages than pyproject.toml"
    tested = constraints()
    wrong = {name: version for name, version in pins if tested.get(name) != version}
    assert not wrong, f"{where} pins versions that differ from constraints.txt: {wrong}"


def test_every_project_package_is_pinned_in_constraints() -> None:
    assert project_packages() <= set(constraints())


def test_environment_yml_matches_pyproject() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_section
    check_pins([requirement(line) for line in pip_section if "==" in line], "environment.yml")


#: Packages only the CUDA build of torch pulls in; Binder installs the CPU build without them.
CUDA_ONLY = re.compile(r"^(nvidia-|cuda-|triton$)")


def test_binder_pins_everything_it_installs_as_tested_and_fails_loudly() -> None:
    lines = (ROOT / "binder" / "requirements.txt").read_text().splitlines()
    pins = dict(requirement(line) for line in lines if "==" in line)
    expected = {name: version for name, version in constraints().items() if not CUDA_ONLY.match(name)}
    assert project_packages() <= set(pins), "binder/requirements.txt misses a package of pyproject.toml"
    differ = {name: (pins.get(name), expected.get(name)) for name in set(pins) | set(expected)
              if pins.get(name) != expected.get(name)}  # fmt: skip
    assert not differ, f"binder/requirements.txt vs constraints.txt (binder, tested): {differ}"
    assert all(line.endswith("+cpu") for line in lines if line.startswith(("torch==", "torchvision=="))), "CPU build"
    post_build = (ROOT / "binder" / "postBuild").read_text()
    assert "set -euo pipefail" in post_build and "pip install --no-deps --editable ." in post_build


def test_the_makefiles_python_minimum_is_what_every_pin_accepts() -> None:
    """Python 3.11.0-3.11.4 pass a bare ``>= 3.11`` check, then pip cannot resolve the pins: check what they need."""
    minimum = Version(re.search(r"^MIN_PYTHON := ([\d.]+)$", (ROOT / "Makefile").read_text(), re.M).group(1))
    tested = constraints()
    refusing = {
        dist.metadata["Name"]: dist.metadata["Requires-Python"]
        for dist in metadata.distributions()
        if normalise(dist.metadata["Name"]) in tested and dist.metadata.get("Requires-Python")
        and minimum not in SpecifierSet(dist.metadata["Requires-Python"])
    }  # fmt: skip
    assert not refusing, f"pins that refuse Python {minimum}: {refusing}; raise MIN_PYTHON in the Makefile"
    assert minimum in SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])


def test_citation_and_ci_workflow_agree_with_the_project() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["version"] == project["version"]
    assert citation["license"] == project["license"] and citation["authors"] and citation["title"]
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    steps = [step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]]
    assert "bash .ci/run" in steps, "forks must run the same check as a landing"
