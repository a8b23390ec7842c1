"""course_utils.data.store: complete-or-nothing datasets, generated once, catalog filters, band statistics."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from course_utils.data.store import band_statistics, dataset_dir, ensure_generated, read_catalog

# Run in a fresh process (argv[1]: "worker" to fork a pool worker first, like the fields generator, "hold" to
# stay generating for a while, "now" to generate at once); prints the pool worker's pid, or "ready".
GENERATE = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
import pandas as pd
from course_utils.data.store import ensure_generated

def generate(folder, mode, seed):
    if sys.argv[1] == "worker":
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
        print(pool.submit(os.getpid).result(), flush=True)
    if sys.argv[1] != "now":
        print("ready", flush=True)
        time.sleep(300)
    pd.DataFrame({"id": ["a"], "split": ["train"], "region": ["x"]}).to_csv(folder / "catalog.csv", index=False)

ensure_generated("toy", "smoke", 7, generate)
"""


def write_catalog(folder: Path, mode: str, seed: int) -> None:
    pd.DataFrame({"id": ["a", "b"], "split": ["train", "test"], "region": ["x", "x"]}).to_csv(
        folder / "catalog.csv", index=False
    )


def test_generated_once_even_by_parallel_callers(course_data_dir: Path) -> None:
    calls = []

    def slow_generate(folder: Path, mode: str, seed: int) -> None:
        calls.append(folder)
        time.sleep(0.3)
        write_catalog(folder, mode, seed)

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_generated("toy", "smoke", 1, slow_generate)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and results[0] == results[1] == dataset_dir("toy", "smoke", 1)
    assert ensure_generated("toy", "smoke", 1, slow_generate) == results[0] and len(calls) == 1


def test_interrupted_generation_leaves_nothing(course_data_dir: Path) -> None:
    def crash(folder: Path, mode: str, seed: int) -> None:
        (folder / "half.tif").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_generated("crashy", "smoke", 0, crash)
    assert not dataset_dir("crashy", "smoke", 0).exists()
    assert not list(course_data_dir.glob(".partial-*"))

    def no_catalog(folder: Path, mode: str, seed: int) -> None:
        (folder / "data.tif").write_bytes(b"x")

    with pytest.raises(RuntimeError, match="no catalog.csv"):
        ensure_generated("crashy", "smoke", 0, no_catalog)
    assert not dataset_dir("crashy", "smoke", 0).exists()


def generator_process(how: str) -> subprocess.Popen:
    """A process running :data:`GENERATE` in the current ``COURSE_DATA_DIR``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", GENERATE, how], stdout=subprocess.PIPE, text=True, env=env)


def test_killed_generator_does_not_block_the_next_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    killed = generator_process("worker")
    worker = None
    try:
        worker = int(killed.stdout.readline())  # the pool worker, forked while the lock is held
        assert killed.stdout.readline() == "ready\n"
        killed.kill()  # SIGKILL: the worker outlives it, as a crashed kernel's would
        killed.wait()
        after = generator_process("now")  # before the fix it waited forever for the lock the worker kept
        try:
            after.wait(timeout=120)
        finally:
            after.kill()
        assert after.returncode == 0
        assert (dataset_dir("toy", "smoke", 7) / "catalog.csv").is_file()
    finally:
        killed.kill()
        if worker is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)


def test_waiting_for_a_live_holder_names_it_and_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    holder = generator_process("hold")
    try:
        assert holder.stdout.readline() == "ready\n"
        with pytest.raises(TimeoutError, match=rf"held by pid {holder.pid} on .*delete .*toy-smoke-seed7.lock"):
            ensure_generated("toy", "smoke", 7, write_catalog, wait_s=0.5)
        assert f"pid {holder.pid}" in capsys.readouterr().out  # the wait said whom it waited for
    finally:
        holder.kill()
        holder.wait()
    assert ensure_generated("toy", "smoke", 7, write_catalog, wait_s=30) == dataset_dir("toy", "smoke", 7)


def test_read_only_cache_names_course_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "cache"))

    def refuse(self: Path, *args: object, **kwargs: object) -> None:  # as root a chmod would not stop writes
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(PermissionError, match=r"data cache .*cache is not writable: set COURSE_DATA_DIR"):
        ensure_generated("toy", "smoke", 0, write_catalog)


def test_course_data_dir_pointing_at_a_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "cache"))
    with pytest.raises(NotADirectoryError, match=r"\(COURSE_DATA_DIR=.*cache\) is a file, not a folder"):
        dataset_dir("toy", "smoke", 0)


def test_the_data_modules_import_and_lock_without_fcntl(tmp_path: Path) -> None:
    """Native Windows has no ``fcntl``: importing the data package and generating must not need it."""
    code = "import sys; sys.modules['fcntl'] = None\nimport course_utils.data, course_utils.data.download\n" + GENERATE
    env = {**os.environ, "COURSE_DATA_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, "now"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "toy-smoke-seed7" / "catalog.csv").is_file()


def test_a_damaged_dataset_is_generated_again(course_data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls = []

    def generate(folder: Path, mode: str, seed: int) -> None:
        calls.append(folder)
        write_catalog(folder, mode, seed)
        (folder / "images").mkdir()
        (folder / "images" / "a.tif").write_bytes(b"x" * 1000)

    folder = ensure_generated("damaged", "smoke", 0, generate)
    damages = {
        "images/a.tif has 10 bytes, not the 1000": lambda: (folder / "images" / "a.tif").write_bytes(b"x" * 10),
        "images/a.tif is missing": lambda: (folder / "images" / "a.tif").unlink(),
        "catalog.csv has 0 bytes": lambda: (folder / "catalog.csv").write_text(""),
        "catalog.csv does not read as a table": lambda: (folder / "catalog.csv").write_bytes(
            b'"' + b"\x00" * ((folder / "catalog.csv").stat().st_size - 1)),
    }  # fmt: skip
    for count, (why, damage) in enumerate(damages.items(), start=2):
        damage()
        assert ensure_generated("damaged", "smoke", 0, generate) == folder
        assert len(calls) == count, why
        assert f"the cached damaged data in {folder} is damaged ({why}" in capsys.readouterr().out
        assert (folder / "images" / "a.tif").stat().st_size == 1000 and len(read_catalog(folder)) == 2
    assert ensure_generated("damaged", "smoke", 0, generate) == folder and len(calls) == len(damages) + 1


@pytest.mark.parametrize("text", ["", 'id,split\n"a,train\n', "\x00\xff\xfe"])
def test_an_empty_or_garbled_catalog_is_named_with_the_command_that_repairs_it(tmp_path: Path, text: str) -> None:
    (tmp_path / "catalog.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=rf"the catalog {re.escape(str(tmp_path / 'catalog.csv'))} is empty or "
                                         r"damaged .*`make data`"):  # fmt: skip
        read_catalog(tmp_path)


def test_read_catalog_filters_and_explains(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not generated"):
        read_catalog(tmp_path)
    write_catalog(tmp_path, "smoke", 0)
    assert read_catalog(tmp_path, split="test")["id"].tolist() == ["b"]
    with pytest.raises(ValueError, match=r"it has \['test', 'train'\]"):
        read_catalog(tmp_path, split="val")


def test_band_statistics_match_numpy_and_skip_nan() -> None:
    rng = np.random.default_rng(0)
    images = [rng.normal(loc=[[[1.0]], [[5.0]]], scale=[[[2.0]], [[0.5]]], size=(2, 8, 8)) for _ in range(3)]
    mean, std = band_statistics(images)
    stacked = np.concatenate([im.reshape(2, -1) for im in images], axis=1)
    np.testing.assert_allclose(mean, stacked.mean(1), rtol=1e-5)
    np.testing.assert_allclose(std, stacked.std(1), rtol=1e-4)
    images[0][0, 0, 0] = np.nan
    assert np.isfinite(band_statistics(images)[0]).all()
    with pytest.raises(ValueError, match="training split empty"):
        band_statistics([])


POOL = """
import os, time
from course_utils.data.store import worker_pool
with worker_pool(1) as pool:
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 60)
    time.sleep(60)
"""


def test_pool_workers_do_not_outlive_a_killed_generator() -> None:
    parent = subprocess.Popen([sys.executable, "-c", POOL], stdout=subprocess.PIPE, text=True)
    worker = psutil.Process(int(parent.stdout.readline()))
    parent.kill()  # SIGKILL: no cleanup runs in the parent
    parent.wait()
    try:
        gone, alive = psutil.wait_procs([worker], timeout=15)
        assert not alive, "the pool worker outlived its killed parent"
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()


def test_sigterm_during_generation_leaves_no_partial_folder_and_no_worker(tmp_path: Path) -> None:
    env = {**os.environ, "COURSE_DATA_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "course_utils.data", "--mode", "smoke", "--seed", "5"]
    generator = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".partial-*")) and time.monotonic() < deadline and generator.poll() is None:
        time.sleep(0.05)
    assert list(tmp_path.glob(".partial-*")), "the generator never started writing"
    while not psutil.Process(generator.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # past the forks: a signal during os.fork's callbacks is "ignored" by Python, Ctrl-C as well
    children = psutil.Process(generator.pid).children(recursive=True)
    generator.terminate()  # SIGTERM, as a closed laptop's session or a job scheduler sends
    assert generator.wait(timeout=60) == 130
    err = generator.stderr.read()
    assert "make data: interrupted while generating" in err and "Traceback" not in err, err
    assert not list(tmp_path.glob(".partial-*"))
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive
