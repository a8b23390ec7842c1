"""tools/run_course.py (``make course``): a notebook's results file gets the wall and CPU time measured of it; the table
shows this run's results only; a stop ends in one line."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("course_run_tool", ROOT / "tools" / "run_course.py")
run_course = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_course)


def test_usage_goes_into_this_runs_results_file_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path))
    this_run = "20260101T000000-1"
    (tmp_path / "00_welcome.json").write_text(json.dumps({"notebook": "00_welcome", "seconds": 50.0,
                                                          "run_id": this_run}))  # fmt: skip
    old = tmp_path / "01_mlp_basics.json"  # written by an earlier run: this run's notebook failed
    old.write_text(json.dumps({"notebook": "01_mlp_basics", "seconds": 70.0, "run_id": "20240101T000000-1"}))

    added = run_course.record_usage("00_welcome", this_run, wall_s=60.0, cpu_s=103.2)
    assert added == {"wall_seconds": 60.0, "cpu_seconds": 103.2, "cores_used": 1.72}
    assert json.loads((tmp_path / "00_welcome.json").read_text()) == {"notebook": "00_welcome", "seconds": 50.0,
                                                                       "run_id": this_run, **added}  # fmt: skip
    assert run_course.record_usage("01_mlp_basics", this_run, wall_s=60.0, cpu_s=60.0) is None
    assert "cores_used" not in json.loads(old.read_text())
    assert run_course.record_usage("02_cnn_unet_fields", this_run, wall_s=1.0, cpu_s=1.0) is None


def test_children_cpu_seconds_counts_a_finished_child() -> None:
    before = run_course.children_cpu_seconds()
    pid = os.fork()
    if pid == 0:
        deadline = time.process_time() + 0.2
        while time.process_time() < deadline:
            pass
        os._exit(0)
    os.waitpid(pid, 0)
    assert run_course.children_cpu_seconds() - before >= 0.15


SAVE = """from course_utils.config import setup_notebook
from course_utils.report import save_results
save_results(setup_notebook({name!r}, mode="smoke"), {{"score": 1.0}}, headline="NEW {name}")"""


def write_notebook(path: Path, *cells: str) -> None:
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(new_notebook(cells=[new_code_cell(c) for c in cells], metadata={"kernelspec": kernel}), path)


def earlier_record(notebook: str) -> dict[str, object]:
    """A results file an earlier run left: another run id, another seed."""
    return {"notebook": notebook, "mode": "lite", "device": "cpu (2 threads)", "seed": 1, "seconds": 60.0,
            "headline": f"OLD {notebook}", "metrics": {}, "claims": [], "run_id": "20240101T000000-1",
            "finished": "2024-01-01T00:00:00+00:00"}  # fmt: skip


@pytest.fixture
def signal_handlers() -> Iterator[None]:
    """Restore this process's SIGINT and SIGTERM handlers, which running notebooks changes."""
    saved = {stop: signal.getsignal(stop) for stop in (signal.SIGINT, signal.SIGTERM)}
    yield
    for stop, handler in saved.items():
        signal.signal(stop, handler)


def test_the_table_marks_a_failed_notebook_and_leaves_out_an_earlier_runs_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], signal_handlers: None
) -> None:
    notebooks, results = tmp_path / "notebooks", tmp_path / "results"
    notebooks.mkdir()
    results.mkdir()
    monkeypatch.setattr(run_course, "NOTEBOOKS", notebooks)
    monkeypatch.setattr(run_course, "EXECUTED", tmp_path / "executed")
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(results))
    monkeypatch.setenv(run_course.RUN_ID_VARIABLE, "")  # main sets it; monkeypatch restores it afterwards
    write_notebook(notebooks / "00_ok.ipynb", SAVE.format(name="00_ok"))
    write_notebook(notebooks / "01_fails.ipynb", "raise ValueError('broken on purpose')")
    write_notebook(notebooks / "02_silent.ipynb", "x = 1")
    for name in ("00_ok", "01_fails", "02_silent"):
        (results / f"{name}.json").write_text(json.dumps(earlier_record(name)))
    assert run_course.main([]) == 1
    out = capsys.readouterr().out
    table = out.split("\n\n")[1]
    rows = {line.split()[0]: line for line in table.splitlines()[2:]}
    assert "NEW 00_ok" in rows["00_ok"] and "smoke" in rows["00_ok"]
    assert rows["01_fails"].endswith("FAILED")
    assert rows["02_silent"].endswith("no results recorded in this run")
    assert "OLD" not in table
    left_out = out.split("left out, from another run")[1]
    assert "01_fails: lite, seed 1, finished 2024-01-01" in left_out and "02_silent: lite, seed 1" in left_out
    assert "00_ok" not in left_out


@pytest.mark.parametrize("stop", ["Ctrl-C", "SIGTERM"])
def test_an_interrupted_course_ends_in_one_line_that_says_a_rerun_resumes(tmp_path: Path, stop: str) -> None:
    (tmp_path / "tools").mkdir()
    (tmp_path / "notebooks").mkdir()
    shutil.copy(ROOT / "tools" / "run_course.py", tmp_path / "tools")  # its notebooks and build/ are tmp_path's
    started = tmp_path / "started"
    write_notebook(tmp_path / "notebooks" / "00_slow.ipynb",
                   f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\ntime.sleep(120)")  # fmt: skip
    env = os.environ | {"COURSE_RESULTS_DIR": str(tmp_path / "results"), "COURSE_MODE": "smoke"}
    command = [sys.executable, str(tmp_path / "tools" / "run_course.py")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started.exists(), "the notebook's cell did not start"
        if stop == "Ctrl-C":
            os.killpg(process.pid, signal.SIGINT)  # the terminal signals the whole foreground group
        else:
            process.terminate()
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert "Traceback" not in err and "Error" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("make course:")]
    assert lines == [
        "make course: interrupted while running 00_slow.ipynb (0 of 1 notebooks done); run `make course` again to "
        "resume: the data and trained checkpoints already made are reused."
    ]
    assert not (tmp_path / "build" / "executed" / "00_slow.ipynb").exists()  # no half-run copy for the book
