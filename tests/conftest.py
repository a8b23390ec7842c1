"""Shared fixtures: tests never touch the user's data cache or results folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "real"


@pytest.fixture(scope="session")
def course_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A session-wide data cache in a temporary folder (``COURSE_DATA_DIR`` points at it)."""
    folder = tmp_path_factory.mktemp("course-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COURSE_DATA_DIR", str(folder))
        yield folder


@pytest.fixture
def results_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A per-test results folder (``COURSE_RESULTS_DIR`` points at it)."""
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path / "results"


@pytest.fixture(scope="session")
def real_samples() -> Path:
    """The real sample files beside the repository (../shared/samples/real); skips when absent."""
    if not SAMPLES.is_dir():
        pytest.skip("real samples not found at ../shared/samples/real (they are optional)")
    return SAMPLES
