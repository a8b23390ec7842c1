"""Run mode, device, seeding and the course's folders.

Every notebook starts with :func:`setup_notebook`, which reads ``COURSE_MODE``,
picks the device, seeds every random generator and prints what it chose.

Folders are found from this package's location, never from the working
directory, so a notebook runs the same from any folder:

* in a clone of the repository (``pip install -e .``), the data cache is
  ``<repo>/data/cache`` and results go to ``<repo>/results``;
* when the package is installed elsewhere (Colab, ``pip install git+...``),
  both live under ``~/.cache/dl4rs-course``;
* checkpoints (trained weights later notebooks reuse) go to ``<repo>/checkpoints`` likewise;
* ``COURSE_DATA_DIR``, ``COURSE_RESULTS_DIR`` and ``COURSE_CHECKPOINT_DIR`` override them. A relative
  path there starts at the repository's root (where ``make`` runs), whatever the working directory, so
  ``make data`` and a notebook run from ``notebooks/`` use the same folder; outside a clone, give an
  absolute path.

The settings ``COURSE_MODE``, ``COURSE_SEED`` and ``COURSE_DEVICE`` are checked where they are read
(:func:`get_mode`, :func:`course_seed`, :func:`get_device`): a value the course cannot use raises a
:class:`ConfigError` naming the variable, the value given and the values accepted.
"""

from __future__ import annotations

import difflib
import importlib
import os
import platform
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

#: The course's public repository. Notebooks' Colab install line and badges use
#: this URL; ``python tools/notebooks.py sync`` writes it into them.
REPOSITORY_URL = "https://github.com/dl4rs-course/dl4rs-course"
#: The git ref (branch or tag) the notebooks' Colab/Binder links open and their Colab setup cell installs,
#: so a notebook and the package it installs come from the same ref. A release sets its tag here and runs
#: ``python tools/notebooks.py sync``.
COURSE_REF = "main"

MODES = ("smoke", "lite", "full")
"""``smoke``: CI, tiny data. ``lite``: a laptop CPU or Binder. ``full``: one GPU."""

DATA_VERSIONS: dict[str, int] = {"fields": 3, "landscape": 3, "parcels": 2}
"""The version of each generated data family. Bump a family's number whenever its generator changes: its cache
folder (:func:`data_family`) and every checkpoint key (:func:`course_utils.train.recipe_key`) change with it, so
neither old data nor a model trained on it is reused."""

MAX_SEED = 99_999
"""The largest ``COURSE_SEED``: notebooks derive training seeds from it (``100 * seed + i``), which must stay
within NumPy's legacy seed range (below 2**32)."""

PACKAGE_DIR = Path(__file__).resolve().parent
T = TypeVar("T")


class ConfigError(ValueError):
    """A course setting (an environment variable) whose value the course cannot use; the message says the fix."""


def _setting_error(
    variable: str, value: str, problem: str, accepted: str, choices: tuple[str, ...] = ()
) -> ConfigError:
    """The error for ``variable=value``: what is wrong, the values accepted and, for a near miss, the likely one."""
    close = difflib.get_close_matches(value.lower(), choices, n=1, cutoff=0.6)
    hint = f" Did you mean {variable}={close[0]}?" if close else ""
    return ConfigError(f"{variable}={value!r} {problem}; accepted: {accepted}.{hint}")


def repo_root() -> Path | None:
    """The repository checkout this package sits in, or ``None`` when installed elsewhere."""
    candidate = PACKAGE_DIR.parent
    if (candidate / "pyproject.toml").is_file() and (candidate / "notebooks").is_dir():
        return candidate
    return None


def data_family(name: str) -> str:
    """A generated family's versioned name, the prefix of its cache folders: ``"fields"`` -> ``"fields-v2"``."""
    return f"{name}-v{DATA_VERSIONS[name]}"


def _course_dir(env_var: str, in_repo: str, name: str) -> Path:
    """The folder ``env_var`` names, else ``<repo>/<in_repo>``, else ``~/.cache/dl4rs-course/<name>``.

    A relative ``env_var`` starts at the repository's root, never at the working directory.

    Raises:
        ConfigError: for a relative ``env_var`` when the package is not in a clone of the repository.
        NotADirectoryError: when that path is an existing file, saying how to choose another folder.
    """
    override = os.environ.get(env_var, "").strip()
    root = repo_root()
    if override:
        folder = Path(override).expanduser()
        if not folder.is_absolute():
            if root is None:
                raise ConfigError(
                    f"{env_var}={override!r} is a relative path, and relative paths start at the course's "
                    f"repository, which this installed package is not in: give an absolute path, "
                    f"e.g. {env_var}={Path.cwd() / folder}."
                )
            folder = root / folder
        folder = folder.resolve()
    elif root is not None:
        folder = root / in_repo
    else:
        folder = Path.home() / ".cache" / "dl4rs-course" / name
    if folder.exists() and not folder.is_dir():
        origin = f"{env_var}={override}" if override else "the default location"
        raise NotADirectoryError(
            f"{folder} ({origin}) is a file, not a folder: set {env_var} to a folder (it is created if missing)."
        )
    return folder


def data_dir() -> Path:
    """Folder of the generated (and downloaded) data cache; created on demand by the writers."""
    return _course_dir("COURSE_DATA_DIR", "data/cache", "data")


def results_dir() -> Path:
    """Folder where notebooks record their headline numbers (``results/<notebook>.json``)."""
    return _course_dir("COURSE_RESULTS_DIR", "results", "results")


def checkpoint_dir() -> Path:
    """Folder of trained model weights that later notebooks reuse (``COURSE_CHECKPOINT_DIR`` overrides)."""
    return _course_dir("COURSE_CHECKPOINT_DIR", "checkpoints", "checkpoints")


def get_mode() -> str:
    """The run mode from ``COURSE_MODE``; default ``full`` when CUDA is available, else ``lite``.

    Raises:
        ConfigError: if ``COURSE_MODE`` is set to something other than smoke, lite or full (lower case).
    """
    value = os.environ.get("COURSE_MODE", "").strip()
    if not value:
        return "full" if torch.cuda.is_available() else "lite"
    if value not in MODES:
        raise _setting_error("COURSE_MODE", value, "is not a mode", f"{', '.join(MODES)} (lower case)", MODES)
    return value


def course_seed() -> int:
    """The seed of a course run from ``COURSE_SEED`` (default 0): it sets every notebook's data and training seeds.

    Raises:
        ConfigError: if ``COURSE_SEED`` is not a whole number from 0 to :data:`MAX_SEED`.
    """
    value = os.environ.get("COURSE_SEED", "").strip() or "0"
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_SEED:
        raise _setting_error("COURSE_SEED", value, "is not a seed", f"a whole number from 0 to {MAX_SEED}, e.g. 1")
    return int(value)


def by_mode(mode: str, *, smoke: T, lite: T, full: T) -> T:
    """Pick the value for ``mode``: the parameters cell's one way to scale a notebook."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    return {"smoke": smoke, "lite": lite, "full": full}[mode]


def available_devices() -> tuple[str, ...]:
    """The device names this machine can compute on: ``cpu``, then ``cuda:0`` ... and ``cuda``, then ``mps``."""
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    return ("cpu", *(("cuda",) if cuda else ()), *(f"cuda:{i}" for i in range(cuda)), *(("mps",) if mps else ()))


def get_device(prefer: str | None = None) -> torch.device:
    """The device to compute on: ``prefer`` or ``COURSE_DEVICE`` if given, else CUDA, Apple MPS, CPU.

    Raises:
        ConfigError: for a name that is not a device (``cpu``, ``cuda``, ``cuda:<index>``, ``mps``, lower case)
            or a device this machine lacks, naming the setting, the value and the devices available here.
    """
    variable, name = ("device", prefer) if prefer else ("COURSE_DEVICE", os.environ.get("COURSE_DEVICE", ""))
    name = name.strip()
    if name:
        available = available_devices()
        here = f"on this machine {', '.join(available)}"
        if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
            raise _setting_error(variable, name, "is not a device", f"cpu, cuda, cuda:<index>, mps; {here}", available)
        if name not in available:
            raise _setting_error(variable, name, "names a device this machine lacks (or this torch cannot use)",
                                 f"{here} (or leave it unset to get the best one)", available)  # fmt: skip
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_torch_threads() -> int:
    """PyTorch threads :func:`setup_notebook` sets on a CPU: ``COURSE_TORCH_THREADS``, else ``OMP_NUM_THREADS``,
    else every core this process may use.

    Measured with ``benchmarks/bench_training.py --threads`` (lite field U-Net, 2-core machine): alone, two threads
    trained 1.3 times as fast as one (18.5 against 14.5 samples/s); beside another busy process, one thread was
    about four times as fast as two, which then wait on each other. So a notebook running alone uses every core,
    a test run that shares the cores between notebooks sets ``OMP_NUM_THREADS=1``, and trainings run side by side
    (:func:`course_utils.parallel.run_side_by_side`) get one thread each.

    Raises:
        ValueError: if the variable that sets it is not a whole number >= 1.
    """
    for name in ("COURSE_TORCH_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{name}={value!r} is not a thread count; use a whole number >= 1.")
            return int(value)
    return available_cpus()


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and schedulers restrict)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and PyTorch (all devices).

    With ``deterministic=True`` PyTorch also avoids non-deterministic kernels;
    this is slower on a GPU and only needed when bit-identical runs matter.
    """
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds the legacy global RNG that learners' code may use
    torch.manual_seed(seed)  # also seeds every CUDA device
    os.environ["PYTHONHASHSEED"] = str(seed)
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def package_versions(
    modules: tuple[str, ...] = ("torch", "torchvision", "numpy", "rasterio", "geopandas"),
) -> dict[str, str]:
    """Versions of the given modules as they report them (``"missing"`` for those not installed).

    A module's own ``__version__`` tells more than the package metadata: ``2.14.1+cu130`` says
    which CUDA build of torch is installed.
    """
    versions = {"python": platform.python_version()}
    for name in modules:
        try:
            versions[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
        except ImportError:
            versions[name] = "missing"
    return versions


def device_name(device: torch.device) -> str:
    """A readable device label, e.g. ``cuda (NVIDIA H100 80GB HBM3)`` or ``cpu (2 threads)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


@dataclass
class NotebookRun:
    """What a notebook run decided at its start; pass it to :func:`course_utils.report.save_results`."""

    notebook: str
    mode: str
    device: torch.device
    seed: int
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        """Seconds since the notebook's setup cell ran."""
        return time.perf_counter() - self.started


def setup_notebook(notebook: str, seed: int | None = None, mode: str | None = None) -> NotebookRun:
    """Start a notebook: read the mode, choose the device, seed everything, print the set-up.

    On a CPU it also sets PyTorch's threads to :func:`default_torch_threads`.

    Args:
        notebook: the notebook's file stem, e.g. ``"00_welcome"``; names its results file.
        seed: the seed for Python, NumPy and PyTorch; default :func:`course_seed` (``COURSE_SEED``). Derive
            the notebook's data and training seeds from ``run.seed``.
        mode: overrides ``COURSE_MODE`` (mostly for tests).
    """
    seed = course_seed() if seed is None else seed
    run = NotebookRun(notebook=notebook, mode=mode or get_mode(), device=get_device(), seed=seed)
    if run.device.type == "cpu":
        torch.set_num_threads(default_torch_threads())
    seed_everything(seed)
    versions = ", ".join(f"{k} {v}" for k, v in package_versions().items())
    print(f"{notebook}: mode={run.mode} device={device_name(run.device)} seed={seed}")
    print(f"versions: {versions}")
    print(f"data cache: {data_dir()}")
    if "google.colab" in sys.modules and run.device.type == "cpu":
        print("Tip: Runtime > Change runtime type > GPU makes the full mode practical on Colab.")
    return run
