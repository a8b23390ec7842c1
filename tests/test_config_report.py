"""course_utils.config and course_utils.report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from course_utils import config, report


def test_mode_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_MODE", " smoke ")
    assert config.get_mode() == "smoke"
    monkeypatch.setenv("COURSE_MODE", "turbo")
    with pytest.raises(ValueError, match="smoke, lite, full"):
        config.get_mode()


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("COURSE_MODE", "Lite", "Did you mean COURSE_MODE=lite"),  # wrongly cased
        ("COURSE_MODE", "lit", "Did you mean COURSE_MODE=lite"),  # a typo
        ("COURSE_SEED", "1e3", "a whole number from 0 to 99999"),
        ("COURSE_SEED", "4294967296", "a whole number from 0 to 99999"),  # beyond NumPy's seeds
        ("COURSE_SEED", "²", "a whole number from 0 to 99999"),  # a digit to str.isdigit, not to int()
        ("COURSE_DEVICE", "CUDA", "cpu, cuda, cuda:<index>, mps"),  # torch's own error named no variable
        ("COURSE_DEVICE", "gpu", "cpu, cuda, cuda:<index>, mps"),
    ],
)
def test_a_bad_setting_names_the_variable_the_value_and_the_accepted_values(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, accepted: str
) -> None:
    monkeypatch.setenv(variable, value)
    read = {"COURSE_MODE": config.get_mode, "COURSE_SEED": config.course_seed, "COURSE_DEVICE": config.get_device}
    with pytest.raises(config.ConfigError) as error:
        read[variable]()
    assert f"{variable}={value!r}" in str(error.value) and "accepted:" in str(error.value)
    assert accepted in str(error.value)


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_a_device_this_machine_lacks_fails_at_once(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setenv("COURSE_DEVICE", "cuda:0")
    assert config.get_device() == torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: device != "cuda")  # "cuda" is asked on a CPU machine
    monkeypatch.setenv("COURSE_DEVICE", device)
    with pytest.raises(config.ConfigError, match=f"COURSE_DEVICE='{device}' names a device this machine lacks"):
        config.get_device()


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
    with pytest.raises(config.ConfigError, match="accepted: on this machine cpu"):
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


@pytest.mark.parametrize("variable", ["COURSE_DATA_DIR", "COURSE_CHECKPOINT_DIR", "COURSE_RESULTS_DIR"])
def test_a_relative_folder_setting_starts_at_the_repository_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    root = Path(__file__).resolve().parent.parent
    folder = {"COURSE_DATA_DIR": config.data_dir, "COURSE_CHECKPOINT_DIR": config.checkpoint_dir,
              "COURSE_RESULTS_DIR": config.results_dir}[variable]  # fmt: skip
    monkeypatch.setenv(variable, "my cache/../my-cache")
    seen = []
    for cwd in (root, root / "notebooks", tmp_path):  # make (repo root), a notebook, anywhere else
        monkeypatch.chdir(cwd)
        seen.append(folder())
    assert seen == [root / "my-cache"] * 3
    monkeypatch.setattr(config, "PACKAGE_DIR", tmp_path / "site-packages" / "course_utils")  # installed elsewhere
    with pytest.raises(config.ConfigError, match=f"{variable}='my cache/../my-cache' is a relative path"):
        folder()


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


def test_load_results_skips_damaged_and_foreign_files_naming_each(
    results_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = config.NotebookRun(notebook="00_good", mode="smoke", device=torch.device("cpu"), seed=0)
    report.save_results(run, {"iou": 0.5}, headline="IoU 0.50 vs 0.20 baseline")
    good = json.loads((results_folder / "00_good.json").read_text())
    bad = {
        "01_truncated": json.dumps(good | {"notebook": "01_truncated"})[:60],
        "02_empty": "",
        "03_list": "[1, 2]",
        "04_copy": json.dumps(good),  # another notebook's record under this name
        "05_no_seconds": json.dumps({k: v for k, v in good.items() if k != "seconds"} | {"notebook": "05_no_seconds"}),
        "06_bad_claim": json.dumps(good | {"notebook": "06_bad_claim", "claims": [{"verdict": "holds"}]}),
    }
    for name, text in bad.items():
        (results_folder / f"{name}.json").write_text(text)
    (results_folder / "07_binary.json").write_bytes(b"\xff\xfe\x00garbage")
    records = report.load_results()
    assert [r["notebook"] for r in records] == ["00_good"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == len(bad) + 1
    for line, name in zip(err, [*bad, "07_binary"], strict=True):
        assert line.startswith(f"results: skipped {results_folder / name}.json: ") and "again" in line
    assert "IoU 0.50" in report.results_table(records)


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


def test_course_seed_from_the_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("COURSE_SEED", raising=False)
    assert config.course_seed() == 0
    monkeypatch.setenv("COURSE_SEED", " 2 ")
    assert config.course_seed() == 2 and config.setup_notebook("99_test", mode="smoke").seed == 2
    assert "seed=2" in capsys.readouterr().out
    monkeypatch.setenv("COURSE_SEED", "-1")
    with pytest.raises(ValueError, match="COURSE_SEED"):
        config.course_seed()


def test_a_clear_win_holds_and_its_reverse_is_reversed() -> None:
    rng = np.random.default_rng(0)
    other = rng.uniform(0.3, 0.5, 200)
    better = other + 0.05 + rng.normal(0, 0.02, 200)  # paired: the same units, a consistent gain
    claim = report.compare("gain", "A beats B", better, other, headline=True)
    assert claim.verdict == "holds" and claim.effect == pytest.approx(0.05, abs=0.01)
    assert 0 < claim.ci[0] < claim.effect < claim.ci[1] and claim.headline
    assert report.compare("gain", "B beats A", other, better).verdict == "reversed"
    assert report.compare("err", "A has the smaller error", other, better, lower_is_better=True).verdict == "holds"


def test_noise_is_inconclusive_and_pairing_matters() -> None:
    rng = np.random.default_rng(1)
    units = rng.uniform(0, 1, 60)  # units differ a lot; the two sides differ by a small consistent amount
    assert report.compare("tiny", "A beats B", units + rng.normal(0, 0.3, 60), units).verdict == "inconclusive"
    paired = report.compare("paired", "A beats B", units + 0.02, units)
    assert paired.verdict == "holds" and paired.ci[1] - paired.ci[0] < 1e-9  # a constant gain: no spread at all


def test_compare_pools_a_metric_and_resamples_seeds() -> None:
    per_chip = np.zeros((20, 2, 2))  # per-chip confusion matrices: the statistic pools them
    per_chip[:, 0, 0], per_chip[:, 1, 1], per_chip[:, 0, 1] = 10, 10, 1
    accuracy = lambda cms: float(np.trace(cms.sum(0)) / cms.sum())  # noqa: E731
    worse = per_chip.copy()
    worse[:, 0, 1] = 5
    claim = report.compare("pooled", "A is more accurate", per_chip, worse, statistic=accuracy)
    assert claim.verdict == "holds" and claim.effect == pytest.approx(21 / 21 * 20 / 21 - 20 / 25, abs=1e-9)
    seeds = [np.full(30, 0.6), np.full(30, 0.4)]  # two seeds disagree: +0.1 and -0.1 against 0.5
    across = report.compare("seeds", "A beats B", seeds, [np.full(30, 0.5)] * 2)
    assert across.verdict == "inconclusive" and across.ci == (pytest.approx(-0.1), pytest.approx(0.1))
    with pytest.raises(ValueError, match="same units"):
        report.compare("bad", "x", np.ones(5), np.ones(6))
    with pytest.raises(ValueError, match="cannot give an interval"):
        report.compare("one", "x", np.ones(1), np.ones(1))


def test_claims_are_saved_reported_and_counted(results_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = config.NotebookRun(notebook="99_test", mode="smoke", device=torch.device("cpu"), seed=4)
    held = report.make_claim("a", "A beats B", 0.1, (0.05, 0.15), headline=True)
    flat = report.make_claim("b", "C beats D", 0.0, (-0.02, 0.03), unconverged=True)
    text = flat.report(holds="C is better.", reversed="D is better.", inconclusive="No difference shows.")
    assert "[inconclusive]" in text and "No difference shows." in text and "C is better" not in text
    assert "still improving" in text
    record = json.loads(report.save_results(run, {"x": 1}, "h", claims=[held, flat]).read_text())
    assert record["seed"] == 4 and record["claims"][0] == {
        "id": "a", "statement": "A beats B", "effect": 0.1, "ci": [0.05, 0.15], "verdict": "holds",
        "headline": True, "unconverged": False,
    }  # fmt: skip
    table = report.results_table(report.load_results())
    assert "1/2" in table and "claims held" in table
    assert report.claims_not_held(report.load_results()) == [
        "99_test: [inconclusive] C beats D (effect +0.000, 95 % interval [-0.020, +0.030])"
    ]
    with pytest.raises(ValueError, match="unique"):
        report.save_results(run, {"x": 1}, "h", claims=[held, held])
    with pytest.raises(ValueError, match="finite"):
        report.make_claim("c", "x", float("nan"), (0, 1))


def test_setup_notebook_sets_the_course_torch_threads_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    monkeypatch.delenv("COURSE_TORCH_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a test run that shares the cores between notebooks
    threads = torch.get_num_threads()
    try:
        config.setup_notebook("99_test", mode="smoke")
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert config.default_torch_threads() == len(os.sched_getaffinity(0))  # alone: every usable core
        monkeypatch.setenv("COURSE_TORCH_THREADS", "2")
        config.setup_notebook("99_test", mode="smoke")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("COURSE_TORCH_THREADS", "0")
    with pytest.raises(ValueError, match="COURSE_TORCH_THREADS='0'"):
        config.default_torch_threads()
