"""Run every course notebook headless in the current mode and print the results table.

    python tools/run_course.py [NOTEBOOK ...]    # default: all notebooks in notebooks/

Executed copies go to build/executed/ (git-ignored); each notebook runs with that folder as its
working directory, which also shows that no notebook depends on where it is started from.
Each notebook records its headline numbers and claims in results/<notebook>.json; the table (with claims held
per notebook) and every claim that did not hold are printed from there. COURSE_SEED (default 0) sets the seed.
Each notebook's results file also gets what this run measured of it (:func:`record_usage`): wall seconds, CPU
seconds of its kernel and every process the kernel waited for (workers), and their ratio, the cores it used.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from course_utils.config import course_seed, device_name, get_device, get_mode, repo_root, results_dir
from course_utils.files import atomic_path
from course_utils.report import claims_not_held, load_results, results_table

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EXECUTED = Path(__file__).resolve().parent.parent / "build" / "executed"


def run_notebook(path: Path) -> tuple[bool, float]:
    """Execute one notebook into EXECUTED; returns (succeeded, seconds). A failing copy is kept for reading."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(EXECUTED)}})
    started = time.perf_counter()
    try:
        client.execute()
        ok = True
    except CellExecutionError as error:
        print(f"FAILED {path.name}: {str(error).strip().splitlines()[-1]}", file=sys.stderr)
        ok = False
    nbformat.write(nb, EXECUTED / path.name)
    return ok, time.perf_counter() - started


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children (a notebook's kernel and its workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def record_usage(notebook: str, since: float, wall_s: float, cpu_s: float) -> dict[str, float] | None:
    """Add a run's wall and CPU seconds and ``cores_used`` (their ratio) to ``results/<notebook>.json``.

    Only a file written since ``since`` (a ``time.time()``) is changed: it is this run's. Returns what was added.
    """
    path = results_dir() / f"{notebook}.json"
    if not path.is_file() or path.stat().st_mtime < since:
        return None
    usage = {"wall_seconds": round(wall_s, 1), "cpu_seconds": round(cpu_s, 1), "cores_used": round(cpu_s / wall_s, 2)}
    record = json.loads(path.read_text()) | usage
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return usage


def main(names: list[str]) -> int:
    paths = [NOTEBOOKS / n for n in names] if names else sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    missing = [p for p in paths if not p.is_file()]
    if missing:
        print(f"no such notebook: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    EXECUTED.mkdir(parents=True, exist_ok=True)
    print(f"mode={get_mode()} seed={course_seed()} device={device_name(get_device())} repo={repo_root()}")
    failed = []
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        since, cpu_before = time.time(), children_cpu_seconds()
        ok, seconds = run_notebook(path)
        usage = record_usage(path.stem, since, seconds, children_cpu_seconds() - cpu_before)
        cores = f", {usage['cores_used']:.2f} cores used" if usage else ""
        print(f"  {'done' if ok else 'FAILED'} in {seconds / 60:.1f} min{cores} -> {EXECUTED / path.name}")
        if not ok:
            failed.append(path.name)
    ran = {p.stem for p in paths}
    records = [r for r in load_results() if r["notebook"] in ran]
    print()
    print(results_table(records) if records else f"no results recorded in {results_dir()}")
    not_held = claims_not_held(records)
    if not_held:
        print("\nclaims that did not hold:\n  " + "\n  ".join(not_held))
    silent = sorted(ran - {r["notebook"] for r in records})
    if silent:
        print(f"\nno results file from: {', '.join(silent)}")
    if failed:
        print(f"\nFAILED: {', '.join(failed)} (read the executed copies in {EXECUTED})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
