"""tools/run_course.py: a notebook's results file gets the wall and CPU time make course measured of it."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("course_run_tool", ROOT / "tools" / "run_course.py")
run_course = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_course)


def test_usage_goes_into_this_runs_results_file_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path))
    since = time.time()
    (tmp_path / "00_welcome.json").write_text(json.dumps({"notebook": "00_welcome", "seconds": 50.0}))
    old = tmp_path / "01_mlp_basics.json"
    old.write_text(json.dumps({"notebook": "01_mlp_basics", "seconds": 70.0}))
    os.utime(old, (since - 3600, since - 3600))  # written by an earlier run: this run's notebook failed

    added = run_course.record_usage("00_welcome", since, wall_s=60.0, cpu_s=103.2)
    assert added == {"wall_seconds": 60.0, "cpu_seconds": 103.2, "cores_used": 1.72}
    assert json.loads((tmp_path / "00_welcome.json").read_text()) == {"notebook": "00_welcome", "seconds": 50.0,
                                                                       **added}  # fmt: skip
    assert run_course.record_usage("01_mlp_basics", since, wall_s=60.0, cpu_s=60.0) is None
    assert "cores_used" not in json.loads(old.read_text())
    assert run_course.record_usage("02_cnn_unet_fields", since, wall_s=1.0, cpu_s=1.0) is None


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
