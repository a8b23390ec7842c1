"""course_utils.config and course_utils.report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from course_utils import config, report


def test_mode_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_MODE", " Smoke ")
    assert config.get_mode() == "smoke"
    monkeypatch.setenv("COURSE_MODE", "turbo")
    with pytest.raises(ValueError, match="smoke, lite, full"):
        config.get_mode()


def test_default_mode_follows_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COURSE_MODE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.get_mode() == "lite"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config.get_mode() == "full"


def test_by_mode_picks_the_mode_value() -> None:
    assert config.by_mode("lite", smoke=1, lite=2, full=3) == 2
    with pytest.raises(ValueError):
        config.by_mode("huge", smoke=1, lite=2, full=3)


def test_device_override_and_missing_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert config.get_device().type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("COURSE_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        config.get_device()


def test_seed_everything_repeats_all_generators() -> None:
    def draw() -> tuple[float, float, float]:
        import random

        return random.random(), float(np.random.rand())  # noqa: NPY002 - the legacy global RNG is what is seeded, float(torch.rand(1))

    config.seed_everything(7)
    first = draw()
    config.seed_everything(7)
    assert draw() == first
    config.seed_everything(8)
    assert draw() != first


def test_paths_come_from_the_package_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COURSE_DATA_DIR", raising=False)
    monkeypatch.delenv("COURSE_RESULTS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    root = Path(__file__).resolve().parent.parent
    assert config.repo_root() == root
    assert config.data_dir() == root / "data" / "cache"
    assert config.results_dir() == root / "results"
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "elsewhere"))
    assert config.data_dir() == tmp_path / "elsewhere"


def test_installed_package_uses_the_home_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("COURSE_DATA_DIR", raising=False)
    monkeypatch.setattr(config, "PACKAGE_DIR", tmp_path / "site-packages" / "course_utils")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config.repo_root() is None
    assert config.data_dir() == tmp_path / ".cache" / "dl4rs-course" / "data"


def test_setup_notebook_prints_mode_device_versions(capsys: pytest.CaptureFixture[str]) -> None:
    run = config.setup_notebook("99_test", seed=3, mode="smoke")
    out = capsys.readouterr().out
    assert "mode=smoke" in out and "device=" in out and f"torch {torch.__version__}" in out
    assert run.notebook == "99_test" and run.seed == 3 and run.elapsed() >= 0


def test_save_results_writes_the_record(results_folder: Path) -> None:
    run = config.NotebookRun(notebook="99_test", mode="smoke", device=torch.device("cpu"), seed=0)
    path = report.save_results(run, {"iou": np.float32(0.5), "epochs": 2}, headline="IoU 0.50 vs 0.20 baseline")
    record = json.loads(path.read_text())
    assert path == results_folder / "99_test.json"
    assert record["mode"] == "smoke" and record["device"].startswith("cpu")
    assert record["metrics"] == {"iou": 0.5, "epochs": 2.0}
    assert record["seconds"] >= 0
    assert list(results_folder.iterdir()) == [path]  # no temporary file left behind
    table = report.results_table(report.load_results())
    assert "99_test" in table and "IoU 0.50 vs 0.20 baseline" in table


def test_save_results_rejects_bad_numbers(results_folder: Path) -> None:
    run = config.NotebookRun(notebook="99_test", mode="smoke", device=torch.device("cpu"), seed=0)
    with pytest.raises(ValueError, match="finite"):
        report.save_results(run, {"loss": float("nan")}, headline="x")
    with pytest.raises(ValueError, match="headline"):
        report.save_results(run, {"loss": 1.0}, headline="  ")
    assert not results_folder.exists() or not list(results_folder.iterdir())


def test_peak_ram_counts_a_large_allocation() -> None:
    before = report.peak_ram_mib()
    block = np.ones(300 * 2**20 // 8)  # 300 MiB of float64, touched so it is resident
    assert block.sum() > 0
    after = report.peak_ram_mib()
    assert after >= 300, f"peak {after} MiB after holding 300 MiB"
    assert after >= before
