"""Run every course notebook headless in the current mode and print the results table.

    python tools/run_course.py [NOTEBOOK ...]    # default: all notebooks in notebooks/

Executed copies go to build/executed/ (git-ignored); each notebook runs with that folder as its
working directory, which also shows that no notebook depends on where it is started from.
Each notebook records its headline numbers and claims in results/<notebook>.json; the table (with claims held
per notebook) and every claim that did not hold are printed from there. COURSE_SEED (default 0) sets the seed.
Only results this run wrote are shown (their files carry its run id, :data:`RUN_ID_VARIABLE`): a notebook that
failed is shown as FAILED, and a results file an earlier run left is named below the table, not shown as new.
Ctrl-C or SIGTERM stops the run with one line saying what was interrupted; rerunning resumes.
Each notebook's results file also gets what this run measured of it (:func:`record_usage`): wall seconds, CPU
seconds of its kernel and every process the kernel waited for (workers), and their ratio, the cores it used.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

from course_utils.config import ConfigError, course_seed, device_name, get_device, get_mode, repo_root, results_dir
from course_utils.files import atomic_path, stop_cleanly_on_sigterm
from course_utils.report import RUN_ID_VARIABLE, claims_not_held, load_results, results_table

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EXECUTED = Path(__file__).resolve().parent.parent / "build" / "executed"
STOPPED: list[str] = []
"""The stop signals (SIGINT from Ctrl-C, SIGTERM) received while a notebook ran."""


def _stop_kernel_on_signals(client: NotebookClient) -> None:
    """nbclient hook (``on_notebook_start``): a stop signal interrupts the kernel, a second one (or SIGTERM) ends it.

    It replaces nbclient's own handlers, which shut the kernel down mid-cell so that the run ends in
    ``DeadKernelError`` and ``AssertionError`` tracebacks; :func:`run_notebook` then reports the stop.
    """
    loop, tasks = asyncio.get_running_loop(), []

    def on_signal(stop: signal.Signals) -> None:
        STOPPED.append(stop.name)
        gently = stop == signal.SIGINT and len(STOPPED) == 1
        tasks.append(loop.create_task(client.km.interrupt_kernel() if gently else client.km.shutdown_kernel(now=True)))

    for stop in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(stop, on_signal, stop)


def run_notebook(path: Path) -> tuple[bool, float]:
    """Execute one notebook into EXECUTED; returns (succeeded, seconds). A failing copy is kept for reading.

    Raises:
        KeyboardInterrupt: when Ctrl-C or SIGTERM stopped it (:data:`STOPPED`); no copy is written then.
    """
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(EXECUTED)}})
    client.on_notebook_start = lambda notebook: _stop_kernel_on_signals(client)
    stop_cleanly_on_sigterm()  # before and after nbclient's handlers: SIGTERM stops the run as Ctrl-C does
    started = time.perf_counter()
    try:
        client.execute()
        ok = True
    except (CellExecutionError, DeadKernelError) as error:
        if STOPPED:
            raise KeyboardInterrupt(f"stopped by {STOPPED[0]}") from None
        print(f"FAILED {path.name}: {str(error).strip().splitlines()[-1]}", file=sys.stderr)
        ok = False
    nbformat.write(nb, EXECUTED / path.name)
    return ok, time.perf_counter() - started


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children (a notebook's kernel and its workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def record_usage(notebook: str, run_id: str, wall_s: float, cpu_s: float) -> dict[str, float] | None:
    """Add a run's wall and CPU seconds and ``cores_used`` (their ratio) to ``results/<notebook>.json``.

    Only a file that run ``run_id`` wrote is changed (the ``run_id`` that :func:`course_utils.report.save_results`
    records, as :func:`print_results` tells this run's rows). Returns what was added.
    """
    path = results_dir() / f"{notebook}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # none, or not readable: print_results names it
        return None
    if not isinstance(record, dict) or record.get("run_id") != run_id:
        return None
    usage = {"wall_seconds": round(wall_s, 1), "cpu_seconds": round(cpu_s, 1), "cores_used": round(cpu_s / wall_s, 2)}
    record |= usage
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return usage


def print_results(notebooks: list[str], failed: list[str], run_id: str) -> None:
    """Print the table of what run ``run_id`` recorded for ``notebooks``, and what did not hold.

    A failed notebook is shown as FAILED and one that wrote no results in this run as such; a results file that
    another run left for one of them is named below the table, never shown as this run's.
    """
    records = {r["notebook"]: r for r in load_results() if r["notebook"] in notebooks}
    current = [r for name, r in records.items() if r.get("run_id") == run_id and name not in failed]
    shown = {r["notebook"] for r in current}
    missing = {name: "FAILED" if name in failed else "no results recorded in this run" for name in notebooks
               if name not in shown}  # fmt: skip
    print()
    print(results_table(current, missing))
    older = [records[name] for name in missing if name in records]
    if older:
        print(f"\nleft out, from another run ({results_dir()}):\n  " + "\n  ".join(
            f"{r['notebook']}: {r['mode']}, seed {r.get('seed', '?')}, finished {r.get('finished', 'earlier')}"
            for r in older))  # fmt: skip
    not_held = claims_not_held(current)
    if not_held:
        print("\nclaims that did not hold:\n  " + "\n  ".join(not_held))


def main(names: list[str]) -> int:
    paths = [NOTEBOOKS / n for n in names] if names else sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    missing = [p for p in paths if not p.is_file()]
    if missing:
        print(f"no such notebook: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    EXECUTED.mkdir(parents=True, exist_ok=True)
    try:
        print(f"mode={get_mode()} seed={course_seed()} device={device_name(get_device())} repo={repo_root()}")
    except ConfigError as error:
        print(f"make course: {error}", file=sys.stderr)
        return 2
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    os.environ[RUN_ID_VARIABLE] = run_id  # the kernels inherit it, and save_results records it
    failed = []
    for done, path in enumerate(paths):
        print(f"running {path.name} ...", flush=True)
        cpu_before = children_cpu_seconds()
        try:
            ok, seconds = run_notebook(path)
        except KeyboardInterrupt:
            print(f"\nmake course: interrupted while running {path.name} ({done} of {len(paths)} notebooks done); "
                  "run `make course` again to resume: the data and trained checkpoints already made are reused.",
                  file=sys.stderr)  # fmt: skip
            return 130
        usage = record_usage(path.stem, run_id, seconds, children_cpu_seconds() - cpu_before)
        cores = f", {usage['cores_used']:.2f} cores used" if usage else ""
        print(f"  {'done' if ok else 'FAILED'} in {seconds / 60:.1f} min{cores} -> {EXECUTED / path.name}")
        if not ok:
            failed.append(path.name)
    print_results([p.stem for p in paths], [Path(name).stem for name in failed], run_id)
    if failed:
        print(f"\nFAILED: {', '.join(failed)} (read the executed copies in {EXECUTED})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
