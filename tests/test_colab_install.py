"""A Colab-like start: a fresh environment installs the course package from git and runs a setup cell.

Colab has torch, numpy, pandas, matplotlib, ... preinstalled; its notebook's setup cell must install the
course package and nothing else. Here a fresh virtual environment sees this environment's packages
(through a ``.pth`` file, the way Colab's are simply there) except the course package itself, and the
setup cell of notebook 00 runs in it, from another folder, with ``google.colab`` present, installing
the package from a ``git+file://`` repository built from the working tree. No network is used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import nbformat
import pytest

from course_utils.config import COURSE_REF

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE")  # what `pip install` of the package reads
COURSE_DIST = ("course_utils", "dl4rs_course", "__editable__", "_dl4rs_course", "dl4rs-course")

# Runs inside the fresh environment: a stand-in for Colab's IPython that executes `%pip` with pip,
# offline (--no-index: dependencies must already be there, as on Colab).
DRIVER = textwrap.dedent("""
    import json, shlex, subprocess, sys, types
    from IPython.core.inputtransformer2 import TransformerManager

    cell, url = json.loads(sys.argv[1])
    sys.modules["google.colab"] = types.ModuleType("google.colab")
    namespace = {}

    class Colab:
        @staticmethod
        def run_line_magic(magic, line):
            assert magic == "pip", magic
            for name in ("REPOSITORY_URL", "COURSE_REF"):  # IPython expands {name} in a magic's line
                line = line.replace("{" + name + "}", namespace[name])
            args = shlex.split(line)
            subprocess.check_call([sys.executable, "-m", "pip", *args, "--no-index", "--no-build-isolation"])

    namespace["get_ipython"] = lambda: Colab
    source = cell.replace('REPOSITORY_URL = "https://github.com/', 'REPOSITORY_URL = "' + url + '"  # "')
    exec(TransformerManager().transform_cell(source), namespace)
    import course_utils
    print("COURSE_UTILS_FILE", course_utils.__file__)
    print("RUN", namespace["run"].notebook, namespace["run"].mode)
""")


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def git_repository(folder: Path) -> str:
    """A one-commit git repository of the package's files as they are in the working tree; its URL."""
    for name in PACKAGE_FILES:
        shutil.copy2(ROOT / name, folder / name)
    shutil.copytree(ROOT / "course_utils", folder / "course_utils", ignore=shutil.ignore_patterns("__pycache__"))
    identity = ["-c", "user.name=course test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]
    init = ["init", "--quiet", f"--initial-branch={COURSE_REF}"]  # the ref the setup cell installs
    for command in (init, ["add", "."], [*identity, "commit", "--quiet", "-m", "package"]):
        result = run(["git", *command], cwd=folder)
        assert result.returncode == 0, result.stderr
    return f"file://localhost{folder}"  # with a host: older pip rejects `name @ git+file:///path` (no netloc)


def colab_like_environment(folder: Path) -> Path:
    """A venv that sees this environment's packages except the course package; returns its python."""
    result = run([sys.executable, "-m", "venv", "--without-pip", str(folder)])
    if result.returncode != 0:
        pytest.skip(f"cannot create a virtual environment here: {result.stderr.strip()[-200:]}")
    preinstalled = folder / "preinstalled"
    preinstalled.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(COURSE_DIST) and entry.suffix != ".pth":
            (preinstalled / entry.name).symlink_to(entry)
    python = folder / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(site, "preinstalled.pth").write_text(f"{preinstalled}\n")
    return python


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed: cannot build a git+file:// source")
def test_setup_cell_installs_only_the_course_package_from_git(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    url = git_repository(repo)
    python = colab_like_environment(tmp_path / "venv")
    nb = nbformat.read(ROOT / "notebooks" / "00_welcome.ipynb", as_version=4)
    setup_cell = next(c.source for c in nb.cells if c.cell_type == "code" and "setup_notebook(" in c.source)
    workdir, home = tmp_path / "elsewhere", tmp_path / "home"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSE_", "PYTHON", "VIRTUAL_ENV", "PIP_"))}
    env.update(HOME=str(home), COURSE_MODE="smoke", OMP_NUM_THREADS="1")
    result = run([str(python), "-c", DRIVER, json.dumps([setup_cell, url])], cwd=workdir, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    assert f"COURSE_UTILS_FILE {site / 'course_utils' / '__init__.py'}" in result.stdout
    assert "RUN 00_welcome smoke" in result.stdout
    assert f"data cache: {home / '.cache' / 'dl4rs-course' / 'data'}" in result.stdout, "installed: cache in HOME"
    installed = sorted(p.name for p in site.iterdir() if p.name not in ("preinstalled.pth", "__pycache__"))
    assert [n for n in installed if not n.startswith(("course_utils", "dl4rs_course"))] == [], (
        f"the setup cell installed more than the course package: {installed}"
    )
    direct_url = json.loads(next(site.glob("dl4rs_course-*.dist-info")).joinpath("direct_url.json").read_text())
    assert direct_url["url"] == url and "vcs_info" in direct_url, direct_url
