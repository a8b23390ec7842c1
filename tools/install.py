"""Install the course into the running Python environment: torch for this machine, then the course package.

    python tools/install.py [--torch auto|cpu|cuda] [--dry-run]

`make setup` runs it inside `.venv`; without `make` (native Windows, say) create the environment and run it
yourself: `py -3.12 -m venv .venv` then `.venv\\Scripts\\python tools\\install.py`.

torch comes in two builds on Linux x86-64. PyPI's includes CUDA (about 5 GB, and it needs an NVIDIA driver
>= 580 to see a GPU); PyTorch's CPU index has a CPU-only build of a tenth the size. ``--torch auto`` (the
default) takes the CPU build when this machine has no NVIDIA driver, and PyPI's otherwise; ``cpu`` and
``cuda`` force one. When PyTorch's CPU index cannot be reached, PyPI's build is installed instead, with a
note. On macOS and Windows PyPI's build is the only one (MPS on Apple silicon, CPU on Windows).
Versions are the tested ones of constraints.txt.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MIN_MACOS = (14, 0)  # torch 2.14's macOS wheels are for arm64 on macOS 14 and newer only
ALTERNATIVES = "Use Google Colab or Binder (links at the top of every notebook), or a Linux machine or VM."


def pinned(name: str, constraints: Path = CONSTRAINTS) -> str:
    """The tested version of ``name`` in constraints.txt."""
    for line in constraints.read_text().splitlines():
        package, _, version = line.partition("==")
        if package.strip().lower() == name:
            return version.strip()
    raise KeyError(f"{name} is not pinned in {constraints}")


def has_nvidia_driver() -> bool:
    """Whether an NVIDIA driver is installed (its tool on PATH, or the Linux kernel module loaded)."""
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").exists()


def unsupported(system: str, machine: str, mac_version: str) -> str | None:
    """Why torch cannot be installed on this platform, with the alternative; ``None`` when it can."""
    if system == "Darwin":
        if machine != "arm64":
            return f"torch {pinned('torch')} has no wheels for Intel Macs. {ALTERNATIVES}"
        if tuple(int(part) for part in (mac_version or "0").split(".")[:2]) < MIN_MACOS:
            return f"torch {pinned('torch')} needs macOS 14 or newer (this is {mac_version}). {ALTERNATIVES}"
    return None


def torch_build(requested: str, system: str, machine: str, nvidia: bool) -> str:
    """``"cpu"`` (PyTorch's CPU index) or ``"pypi"`` (PyPI's build) for ``--torch requested``."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--torch {requested!r}: choose auto, cpu or cuda")
    cpu_index_has_it = system == "Linux" or system == "Windows"
    if requested == "cpu" and cpu_index_has_it:
        return "cpu"
    if requested == "auto" and system == "Linux" and machine in ("x86_64", "AMD64") and not nvidia:
        return "cpu"
    return "pypi"


def commands(build: str, python: str = sys.executable) -> list[list[str]]:
    """The pip commands, in order: torch and torchvision of ``build``, then the course package with its tools."""
    pip = [python, "-m", "pip", "install", "--quiet", "--constraint", str(CONSTRAINTS)]
    torch = ["torch", "torchvision"]
    if build == "cpu":  # local version labels: 2.14.1+cpu satisfies the constraint torch==2.14.1
        torch_step = [python, "-m", "pip", "install", "--quiet", "--retries", "0", "--timeout", "20",
                      "--index-url", CPU_INDEX, *(f"{name}=={pinned(name)}+cpu" for name in torch)]  # fmt: skip
    else:
        torch_step = [*pip, *torch]
    return [torch_step, [*pip, "--editable", f"{ROOT}[dev]"]]


def install(build: str, run: Callable[[Sequence[str]], int], python: str = sys.executable) -> int:
    """Run the commands; a CPU build that cannot be fetched falls back to PyPI's. Returns pip's exit code."""
    torch_step, package_step = commands(build, python)
    if run(torch_step) != 0:
        if build != "cpu":
            return 1
        print(f"PyTorch's CPU index ({CPU_INDEX}) could not be used; installing PyPI's torch instead "
              "(it includes CUDA: several GB).", file=sys.stderr)  # fmt: skip
        if run(commands("pypi", python)[0]) != 0:
            return 1
    return run(package_step)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch", default="auto", choices=("auto", "cpu", "cuda"), help="torch build (auto)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    system, machine = platform.system(), platform.machine()
    reason = unsupported(system, machine, platform.mac_ver()[0])
    if reason:
        print(reason, file=sys.stderr)
        return 2
    build = torch_build(args.torch, system, machine, has_nvidia_driver())
    print(f"torch {pinned('torch')}: {'CPU build from ' + CPU_INDEX if build == 'cpu' else 'the build on PyPI'}")
    if args.dry_run:
        for command in commands(build):
            print(" ".join(command))
        return 0
    return install(build, lambda command: subprocess.call(list(command)))


if __name__ == "__main__":
    sys.exit(main())
