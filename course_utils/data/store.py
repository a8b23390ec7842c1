"""The data cache: each generated dataset lives in its own folder, written completely or not at all.

A generator writes into a temporary folder beside its target; only when it returns is the folder
renamed into place. An interrupted generator leaves no half-written dataset behind: the next call
removes the leftover temporary folder and starts again.
"""

from __future__ import annotations

import fcntl
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from course_utils.config import MODES, data_dir

CATALOG = "catalog.csv"
_TMP_MARK = ".partial-"


def dataset_dir(family: str, mode: str, seed: int) -> Path:
    """Where a generated dataset lives: ``<data cache>/<family>-<mode>-seed<seed>``."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    return data_dir() / f"{family}-{mode}-seed{seed}"


@contextmanager
def _generation_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock while ``target`` is generated, so parallel processes generate it once."""
    locks = target.parent / ".locks"
    locks.mkdir(exist_ok=True)
    with open(locks / f"{target.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_generated(
    family: str, mode: str, seed: int, generate: Callable[[Path, str, int], None], verbose: bool = True
) -> Path:
    """Return the dataset folder, generating it first if it is missing.

    Args:
        family: the data family's name, e.g. ``"fields"``.
        mode: ``smoke``, ``lite`` or ``full``; decides the dataset's size.
        seed: the generator's seed; the same seed gives the same files.
        generate: ``generate(folder, mode, seed)`` writes every file of the dataset into ``folder``,
            including ``catalog.csv``.
    """
    target = dataset_dir(family, mode, seed)
    if (target / CATALOG).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _generation_lock(target):
        if (target / CATALOG).is_file():  # another process generated it while we waited
            return target
        for leftover in target.parent.glob(f"{_TMP_MARK}{target.name}-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # an earlier run was interrupted
        if target.exists():  # a folder without its catalog is incomplete: never use it
            shutil.rmtree(target)
        tmp = target.parent / f"{_TMP_MARK}{target.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        started = time.perf_counter()
        try:
            generate(tmp, mode, seed)
            if not (tmp / CATALOG).is_file():
                raise RuntimeError(f"the {family} generator wrote no {CATALOG}; the dataset is incomplete.")
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if verbose:
        print(f"generated {family} ({mode}, seed {seed}) in {time.perf_counter() - started:.1f} s -> {target}")
    return target


def read_catalog(folder: Path, split: str | None = None, region: str | None = None) -> pd.DataFrame:
    """The dataset's catalog table, optionally filtered; paths in it are relative to ``folder``.

    Raises:
        FileNotFoundError: when ``folder`` holds no catalog (generate the data first).
        ValueError: when the filter leaves nothing, naming the values that exist.
    """
    path = Path(folder) / CATALOG
    if not path.is_file():
        raise FileNotFoundError(
            f"no {CATALOG} in {folder}: the data is not generated. Call the family's load/ensure "
            "function, or run `make data`."
        )
    table = pd.read_csv(path)
    for column, value in (("split", split), ("region", region)):
        if value is not None:
            if value not in set(table[column]):
                raise ValueError(f"{column}={value!r} is not in {path}; it has {sorted(set(table[column]))}.")
            table = table[table[column] == value]
    return table.reset_index(drop=True)


def band_statistics(images: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation over images shaped ``[C, H, W]`` (NaNs ignored).

    Compute them on the training split only and apply them to every split.
    """
    total = total_sq = count = None
    for image in images:
        flat = np.asarray(image, dtype=np.float64).reshape(image.shape[0], -1)
        valid = np.isfinite(flat)
        values = np.where(valid, flat, 0.0)
        if total is None:
            total, total_sq, count = values.sum(1), (values**2).sum(1), valid.sum(1)
        else:
            total += values.sum(1)
            total_sq += (values**2).sum(1)
            count += valid.sum(1)
    if total is None:
        raise ValueError("no images to compute band statistics from (is the training split empty?)")
    if np.any(count == 0):
        raise ValueError("a band has no valid pixel in the training split; check the data for nodata/NaN.")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)
