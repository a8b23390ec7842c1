"""tools/timings.py: the expected-timings table is generated from results files into both documents."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("course_timings_tool", ROOT / "tools" / "timings.py")
timings = importlib.util.module_from_spec(spec)
spec.loader.exec_module(timings)


def record(notebook: str, seconds: float, device: str, **extra: object) -> dict[str, object]:
    return {"notebook": notebook, "mode": "lite", "seconds": seconds, "device": device, "seed": 1, "headline": "x",
            **extra}  # fmt: skip


def test_the_table_shows_what_was_measured_and_says_what_was_not() -> None:
    runs = {"lite": [record("00_welcome", 90, "cpu (2 threads)", peak_ram_mib=1536)],
            "full": [record("00_welcome", 30, "cuda (H200)", gpu_peak_mib=2048)]}  # fmt: skip
    table = timings.timings_table(runs, ["00_welcome", "01_mlp_basics"])
    rows = table.splitlines()
    assert rows[2].startswith("| `00_welcome` | not measured | 1.5 min (cpu (2 threads), seed 1) | not measured |")
    assert rows[2].endswith("| 1.50 GB | 2.00 GB |")
    assert rows[3].count("not measured") == 6


def test_the_block_is_replaced_in_place_and_check_reports_staleness(tmp_path: Path) -> None:
    text = "intro\n<!-- timings -->\nold\n<!-- /timings -->\nrest\n"
    replaced = timings.with_table(text, "| new |\n", tmp_path)
    assert replaced == "intro\n<!-- timings -->\n| new |\n<!-- /timings -->\nrest\n"
    with pytest.raises(ValueError, match="no '<!-- timings -->'"):
        timings.with_table("no block", "x", tmp_path / "doc.md")
    for document in timings.DOCUMENTS:
        assert timings.BLOCK.search(document.read_text()), f"{document} lost its timings block"


def test_check_passes_when_the_documents_hold_the_table_of_the_given_runs(tmp_path: Path) -> None:
    folder = tmp_path / "lite"
    folder.mkdir()
    (folder / "00_welcome.json").write_text(json.dumps(record("00_welcome", 60, "cpu (2 threads)")))
    expected = timings.timings_table({"lite": timings.load_results(folder)}, [
        p.stem for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))])  # fmt: skip
    current = all(expected in document.read_text() for document in timings.DOCUMENTS)
    assert (timings.main(["--lite", str(folder), "--check"]) == 0) is current


def test_the_cores_a_run_used_stand_beside_its_minutes() -> None:
    runs = {"lite": [record("00_welcome", 90, "cpu (2 threads)", cores_used=1.73)]}
    row = timings.timings_table(runs, ["00_welcome"]).splitlines()[2]
    assert "| 1.5 min, 1.7 cores (cpu (2 threads), seed 1) |" in row


def test_a_truncated_or_foreign_results_file_is_skipped_with_a_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "lite"
    folder.mkdir()
    (folder / "00_welcome.json").write_text(json.dumps(record("00_welcome", 60, "cpu (2 threads)")))
    (folder / "01_mlp_basics.json").write_text(json.dumps(record("01_mlp_basics", 60, "cpu"))[:40])  # truncated
    (folder / "notes.json").write_text(json.dumps(["not", "a", "record"]))  # foreign
    timings.main(["--lite", str(folder), "--check"])
    err = capsys.readouterr().err
    assert f"skipped {folder / '01_mlp_basics.json'}: unreadable or truncated" in err
    assert f"skipped {folder / 'notes.json'}: not a results file" in err
    assert [r["notebook"] for r in timings.load_results(folder)] == ["00_welcome"]
