"""Collect the wheels the course needs on an offline GPU machine that already has torch.

    python tools/collect_wheels.py [--dest wheels] [--python-version 3.12]      (make wheels)

Downloads, as binary wheels for CPython 3.12 on Linux x86_64 (glibc 2.17 to 2.28: ``manylinux2014`` and
``manylinux_2_28`` tags), every package pinned in ``constraints.txt`` except torch, torchvision and what torch
brings with it (``nvidia-*``, ``triton``, ``cuda-*`` and torch's other dependencies, found from this environment's
package metadata): the GPU machine has those already, in the versions its torch was built with. The course
package itself is built into the same folder. On the target machine (no internet needed)::

    pip install --no-index --find-links wheels "dl4rs-course[dev]"

Without ``--constraint``: the target's torch and its dependencies stay as they are.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")


def dependency_closure(package: str) -> set[str]:
    """``package`` and everything it requires (extras left out), by installed metadata, as canonical names."""
    found: set[str] = set()
    todo = [package]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        found.add(name)
        try:
            requirements = requires(name) or []
        except PackageNotFoundError:
            continue  # needed on another platform only (e.g. a Windows-only package): nothing below it here
        for line in requirements:
            requirement = Requirement(line)
            if requirement.marker is None or "extra" not in str(requirement.marker):
                todo.append(requirement.name)
    return found


def pinned_requirements(constraints: Path, leave_out: set[str]) -> list[str]:
    """The ``name==version`` lines of ``constraints`` whose package is not in ``leave_out``."""
    lines = [line.strip() for line in constraints.read_text().splitlines()]
    pins = [line for line in lines if line and not line.startswith(("#", "-"))]
    return [pin for pin in pins if canonicalize_name(Requirement(pin).name) not in leave_out]


def main(argv: list[str] | None = None) -> int:
    """Download the wheels and build the course's; print what was collected."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dest", type=Path, default=ROOT / "wheels", help="folder for the wheels")
    parser.add_argument("--python-version", default="3.12", help="the target's Python, e.g. 3.12")
    args = parser.parse_args(argv)
    every_pin = pinned_requirements(ROOT / "constraints.txt", set())
    provided = dependency_closure("torch") | {"torch", "torchvision"}
    provided |= {canonicalize_name(Requirement(pin).name) for pin in every_pin if pin.startswith(("nvidia", "cuda"))}
    pins = pinned_requirements(ROOT / "constraints.txt", provided)
    args.dest.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    abi = "cp" + args.python_version.replace(".", "")
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as requirements:
        requirements.write("\n".join(pins) + "\n")
        requirements.flush()
        download = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--python-version", args.python_version, "--implementation", "cp", "--abi", abi,
                    *(f"--platform={platform}" for platform in PLATFORMS),
                    "--dest", str(args.dest), "-r", requirements.name]  # fmt: skip
        subprocess.run(download, check=True)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(args.dest), str(ROOT)]
    subprocess.run(build, check=True)
    wheels = sorted(args.dest.glob("*.whl"))
    size = sum(wheel.stat().st_size for wheel in wheels) / 2**20
    print(f"{len(wheels)} wheels ({size:.0f} MiB) in {args.dest} after {time.perf_counter() - started:.0f} s; "
          f"left out as provided by torch: {', '.join(sorted(provided))}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
