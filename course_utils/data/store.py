"""The data cache: each generated dataset lives in its own folder, written completely or not at all.

A generator writes into a temporary folder beside its target; only when it returns is the folder
renamed into place. An interrupted generator leaves no half-written dataset behind: the next call
removes the leftover temporary folder and starts again. Each dataset records the size of every file it
was written with (``manifest.json``); a dataset with a file missing or of another size (a truncated copy,
an emptied catalog) is generated again when it is next asked for (:func:`dataset_damage`).

Writers of the cache (generators here, downloads in :mod:`course_utils.data.download`) hold a
:func:`target_lock` on their target, so parallel processes write it once; and they run inside
:func:`explain_cache_errors`, so a full disk or a read-only cache says what to do.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from course_utils.config import MODES, data_dir

CATALOG = "catalog.csv"
MANIFEST = "manifest.json"
_TMP_MARK = ".partial-"
LOCK_WAIT_S = 3600.0
"""How long a writer waits for another process writing the same target before it gives up."""


def _exit_with_parent(parent: int) -> None:
    """Pool-worker initializer: end this worker within a second of its parent's death (SIGKILL included)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


@contextmanager
def worker_pool(max_workers: int | None = None) -> Iterator[ProcessPoolExecutor]:
    """Worker processes for a generator (one per core, at most 8) that never outlive it.

    A killed parent's workers exit by themselves; an interrupted parent (Ctrl-C, SIGTERM) cancels the jobs
    not yet started and waits only for those running, so nothing writes into a folder after it is removed.
    """
    workers = max_workers or min(os.cpu_count() or 1, 8)
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_exit_with_parent, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        pool.shutdown(cancel_futures=True)
        raise
    pool.shutdown()


def dataset_dir(family: str, mode: str, seed: int) -> Path:
    """Where a generated dataset lives: ``<data cache>/<family>-<mode>-seed<seed>``."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    return data_dir() / f"{family}-{mode}-seed{seed}"


@contextmanager
def explain_cache_errors() -> Iterator[None]:
    """Re-raise a full disk or a read-only data cache as an error that says how to move the cache."""
    try:
        yield
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise OSError(
                error.errno,
                f"no space left on device in the data cache {data_dir()}: free some space there, or move the "
                "cache to a larger disk by setting COURSE_DATA_DIR to a folder on it",
                error.filename,
            ) from error
        if isinstance(error, PermissionError) or error.errno == errno.EROFS:
            raise PermissionError(
                error.errno,
                f"the data cache {data_dir()} is not writable: set COURSE_DATA_DIR to a folder you can write "
                "to (e.g. export COURSE_DATA_DIR=~/dl4rs-data)",
                error.filename,
            ) from error
        raise


def _holder(record: Path) -> str:
    """Who holds a lock, as its holder recorded it when it took the lock."""
    try:
        return record.read_text().strip()
    except OSError:
        return "an unknown process (it left no record)"


@contextmanager
def target_lock(target: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold an exclusive lock on ``target`` (``<its folder>/.locks/<name>.lock``) while it is written.

    Other processes and threads that lock the same target wait; the wait prints who holds the lock,
    recorded in ``<name>.lock.holder``. Processes forked while the lock is held (pool workers) do not
    hold it: it is released when its holder ends, even when killed.

    Raises:
        TimeoutError: after ``wait_s`` seconds, naming the holder and what to do.
    """
    lock_path = target.parent / ".locks" / f"{target.name}.lock"
    record = lock_path.with_name(f"{lock_path.name}.holder")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting up to {wait_s:.0f} s for {target.name}: {_holder(record)} is writing it.")
        try:
            lock.acquire(timeout=wait_s)
        except Timeout:
            raise TimeoutError(
                f"gave up after {wait_s:.0f} s waiting for {target}: the lock {lock_path} is held by "
                f"{_holder(record)}. Wait for that process or stop it; if no such process runs any more, "
                f"delete {lock_path} and run again."
            ) from None
    try:
        command = " ".join(sys.argv) or sys.executable
        record.write_text(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')} ({command})")
        yield
    finally:
        record.unlink(missing_ok=True)
        lock.release()


def dataset_damage(folder: Path) -> str | None:
    """What makes a generated dataset unusable, or ``None`` when every file it was written with is there at its size
    and its catalog reads.

    The sizes come from the folder's ``manifest.json``, written when the dataset was generated.
    """
    if not folder.is_dir():
        return "it is not generated"
    try:
        sizes = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"its list of files, {MANIFEST}, is missing or unreadable"
    if not isinstance(sizes, dict) or CATALOG not in sizes:
        return f"its list of files, {MANIFEST}, is not one"
    for name, size in sizes.items():
        try:
            actual = (folder / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} has {actual} bytes, not the {size} it was written with"
    try:
        pd.read_csv(folder / CATALOG)
    except (ValueError, UnicodeDecodeError) as error:  # pandas' EmptyDataError and ParserError are ValueErrors
        return f"{CATALOG} does not read as a table ({type(error).__name__})"
    return None


def _write_manifest(folder: Path) -> None:
    """Record the size of every file under ``folder`` in its ``manifest.json``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    (folder / MANIFEST).write_text(json.dumps({p.relative_to(folder).as_posix(): p.stat().st_size for p in files}))


def ensure_generated(
    family: str,
    mode: str,
    seed: int,
    generate: Callable[[Path, str, int], None],
    verbose: bool = True,
    wait_s: float = LOCK_WAIT_S,
) -> Path:
    """Return the dataset folder, generating it first if it is missing or damaged (:func:`dataset_damage`).

    Args:
        family: the data family's name, e.g. ``"fields"``.
        mode: ``smoke``, ``lite`` or ``full``; decides the dataset's size.
        seed: the generator's seed; the same seed gives the same files.
        generate: ``generate(folder, mode, seed)`` writes every file of the dataset into ``folder``,
            including ``catalog.csv``.
        verbose: print what was generated and how long it took.
        wait_s: how long to wait for another process generating the same dataset (see :func:`target_lock`).
    """
    target = dataset_dir(family, mode, seed)
    if dataset_damage(target) is None:
        return target
    with explain_cache_errors(), target_lock(target, wait_s):
        damage = dataset_damage(target)
        if damage is None:  # another process generated it while we waited
            return target
        for leftover in target.parent.glob(f"{_TMP_MARK}{target.name}-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # an earlier run was interrupted
        if target.exists():  # incomplete or damaged: never use it
            print(f"the cached {family} data in {target} is damaged ({damage}): generating it again")
            shutil.rmtree(target)
        tmp = target.parent / f"{_TMP_MARK}{target.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        started = time.perf_counter()
        try:
            generate(tmp, mode, seed)
            if not (tmp / CATALOG).is_file():
                raise RuntimeError(f"the {family} generator wrote no {CATALOG}; the dataset is incomplete.")
            _write_manifest(tmp)
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
        ValueError: when the catalog is empty or damaged (naming it and the command that generates it again), or
            the filter leaves nothing, naming the values that exist.
    """
    path = Path(folder) / CATALOG
    if not path.is_file():
        raise FileNotFoundError(
            f"no {CATALOG} in {folder}: the data is not generated. Call the family's load/ensure "
            "function, or run `make data`."
        )
    try:
        table = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as error:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise ValueError(
            f"the catalog {path} is empty or damaged ({type(error).__name__}: {str(error).strip()[:120]}): generate "
            "the data again with `make data` (same COURSE_MODE and COURSE_SEED) or by rerunning the notebook cell "
            "that loads it; a damaged dataset is generated anew."
        ) from error
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
