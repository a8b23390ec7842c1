"""tools/install.py: which torch build each platform gets, and the commands (PyTorch's CPU index is not
reachable from the test machine, so the commands are checked as built, and the fallback with a stub)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("course_install_tool", ROOT / "tools" / "install.py")
install = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install)


@pytest.mark.parametrize(
    ("requested", "system", "machine", "nvidia", "build"),
    [
        ("auto", "Linux", "x86_64", False, "cpu"),  # no driver: no 5 GB CUDA build
        ("auto", "Linux", "x86_64", True, "pypi"),
        ("auto", "Linux", "aarch64", False, "pypi"),  # PyPI's arm64 build is the CPU one already
        ("auto", "Darwin", "arm64", False, "pypi"),
        ("auto", "Windows", "AMD64", False, "pypi"),  # PyPI's Windows build is the CPU one
        ("cpu", "Linux", "x86_64", True, "cpu"),
        ("cuda", "Linux", "x86_64", False, "pypi"),
    ],
)
def test_each_platform_gets_its_torch_build(requested: str, system: str, machine: str, nvidia: bool, build: str):
    assert install.torch_build(requested, system, machine, nvidia) == build


def test_the_cpu_build_comes_from_pytorchs_index_at_the_tested_versions() -> None:
    torch_step, package_step = install.commands("cpu", python="py")
    version = install.pinned("torch")
    assert torch_step[:3] == ["py", "-m", "pip"] and "--index-url" in torch_step
    assert torch_step[torch_step.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert f"torch=={version}+cpu" in torch_step and f"torchvision=={install.pinned('torchvision')}+cpu" in torch_step
    assert package_step[-2:] == ["--editable", f"{ROOT}[dev]"] and "--constraint" in package_step
    assert install.commands("pypi", python="py")[0][-2:] == ["torch", "torchvision"]


def test_an_unreachable_cpu_index_falls_back_to_pypi(capsys: pytest.CaptureFixture[str]) -> None:
    ran = []

    def run(command):  # the CPU index fails, as it does from a machine that reaches PyPI only
        ran.append(list(command))
        return 1 if "--index-url" in command else 0

    assert install.install("cpu", run, python="py") == 0
    assert ["--index-url" in command for command in ran] == [True, False, False]
    assert ran[1][-2:] == ["torch", "torchvision"] and ran[2][-1] == f"{ROOT}[dev]"  # PyPI's pair, then the course
    assert "could not be used" in capsys.readouterr().err


def test_unsupported_macs_are_refused_with_the_alternative() -> None:
    assert "Intel Macs" in install.unsupported("Darwin", "x86_64", "14.5") and "Colab" in install.ALTERNATIVES
    assert "macOS 14" in install.unsupported("Darwin", "arm64", "13.6")
    assert install.unsupported("Darwin", "arm64", "14.0") is None and install.unsupported("Linux", "x86_64", "") is None
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        install.torch_build("rocm", "Linux", "x86_64", False)


def test_dry_run_prints_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert install.main(["--torch", "cpu", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "download.pytorch.org/whl/cpu" in out and "--editable" in out
