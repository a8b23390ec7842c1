"""``python -m course_utils.data`` (``make data``): the mode and seed the notebooks use, one line on a stop."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from course_utils import data
from course_utils.data import __main__ as command


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, str, int]]:
    """Each family's ``ensure`` replaced by one that records ``(family, mode, seed)``."""
    calls: list[tuple[str, str, int]] = []

    def fake(name: str):
        def ensure(mode: str | None = None, seed: int = 0) -> Path:
            calls.append((name, mode, seed))
            return tmp_path

        return ensure

    families = {name: fake(name) for name in data.FAMILIES}
    monkeypatch.setattr(command, "FAMILIES", families)
    monkeypatch.setattr(data, "FAMILIES", families)
    return calls


def test_make_data_generates_the_seed_and_mode_of_the_environment(
    asked: list[tuple[str, str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COURSE_SEED", "3")
    monkeypatch.setenv("COURSE_MODE", "smoke")
    assert command.main([]) == 0
    assert asked == [(name, "smoke", 3) for name in data.FAMILIES]
    asked.clear()
    assert command.main(["--seed", "1", "--mode", "lite"]) == 0  # the command line wins
    assert asked == [(name, "lite", 1) for name in data.FAMILIES]
    asked.clear()
    data.ensure_all(mode="smoke")
    assert asked == [(name, "smoke", 3) for name in data.FAMILIES]


def test_make_data_refuses_a_bad_setting_in_one_line(
    asked: list[tuple[str, str, int]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COURSE_SEED", "one")
    assert command.main([]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "make data: COURSE_SEED='one' is not a seed; accepted: a whole number from 0 to 99999, e.g. 1."
    ]
    assert asked == []


def test_interrupted_make_data_says_what_and_that_a_rerun_resumes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(mode: str | None = None, seed: int = 0) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "FAMILIES", {"fields": interrupted})
    assert command.main(["--mode", "smoke", "--seed", "0"]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("make data: interrupted while generating fields (smoke, seed 0)") and "again" in err


@pytest.mark.parametrize("family", ["fields", "landscape", "parcels"])
def test_each_family_generates_the_seed_of_the_environment(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module(f"course_utils.data.{family}")
    generated: list[int] = []
    monkeypatch.setattr(module, "ensure_generated", lambda name, mode, seed, generate: generated.append(seed))
    monkeypatch.setenv("COURSE_SEED", "4")
    ensure = data.FAMILIES[family]
    ensure("smoke")
    ensure("smoke", seed=2)  # an explicit seed wins
    assert generated == [4, 2]
