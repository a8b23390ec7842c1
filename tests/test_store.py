"""course_utils.data.store: complete-or-nothing datasets, generated once, catalog filters, band statistics."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from course_utils.data.store import band_statistics, dataset_dir, ensure_generated, read_catalog


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
