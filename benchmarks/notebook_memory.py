"""Peak memory of each notebook: host RAM (peak RSS of its kernel) and, on a GPU machine, GPU memory.

    python benchmarks/notebook_memory.py [NOTEBOOK ...] [--mode lite]      # default: every notebook

Each notebook runs headless (``tools/run_course.py``'s ``run_notebook``) inside a fresh Python process; when its
kernel has exited, that process reads ``getrusage(RUSAGE_CHILDREN).ru_maxrss``: the peak resident memory of the
largest process it waited for, the kernel (DataLoader workers are separate, mostly shared, processes and are not
added). A fresh process per notebook keeps one notebook's peak out of the next one's number.

GPU memory is polled from outside with ``nvidia-smi`` every half second (the peak of ``memory.used`` minus its
value before the notebook started): it includes the CUDA context and PyTorch's cached blocks, so it is what the
card must have free, a little above ``torch.cuda.max_memory_allocated``. Results go to
``benchmarks/results/notebook_memory_<mode>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

# Runs in the child process: one notebook, then the kernel's peak RSS (KiB on Linux) as a JSON line.
CHILD = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from run_course import EXECUTED, run_notebook
EXECUTED.mkdir(parents=True, exist_ok=True)
ok, seconds = run_notebook(Path(sys.argv[2]))
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"ok": ok, "seconds": round(seconds, 1), "peak_rss_mib": round(peak / 1024)}))
"""


def gpu_memory_used_mib() -> int | None:
    """``memory.used`` of GPU 0 in MiB from nvidia-smi, or ``None`` without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id=0"]
    output = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
    return int(output) if output.isdigit() else None


class GpuPeak:
    """Polls :func:`gpu_memory_used_mib` in a thread while a ``with`` block runs; ``peak_mib`` is the rise."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak_mib = interval, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        baseline = gpu_memory_used_mib()
        if baseline is None:
            return
        self.peak_mib = 0
        while not self._stop.wait(self.interval):
            used = gpu_memory_used_mib() or baseline
            self.peak_mib = max(self.peak_mib, used - baseline)

    def __enter__(self) -> GpuPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(notebook: Path, mode: str) -> dict[str, object]:
    """Run one notebook in a fresh process in ``mode``; its success, seconds, peak RSS and GPU memory rise."""
    environment = os.environ | {"COURSE_MODE": mode}
    with GpuPeak() as gpu:
        child = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "tools"), str(notebook)],
                               capture_output=True, text=True, env=environment, check=False)  # fmt: skip
    lines = child.stdout.strip().splitlines()
    if child.returncode != 0 or not lines:
        raise RuntimeError(f"measuring {notebook.name} failed:\n{child.stderr[-2000:]}")
    return {"notebook": notebook.stem, **json.loads(lines[-1]), "gpu_peak_mib": gpu.peak_mib}


def main(argv: list[str] | None = None) -> int:
    """Measure the notebooks named (default all) and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", help="file names under notebooks/ (default: all)")
    parser.add_argument("--mode", default="lite", choices=("smoke", "lite", "full"))
    args = parser.parse_args(argv)
    folder = ROOT / "notebooks"
    paths = [folder / name for name in args.notebooks] or sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    sys.path.insert(0, str(ROOT))
    from course_utils.config import device_name, get_device

    rows = []
    for path in paths:
        row = measure(path, args.mode)
        rows.append(row)
        gpu = "" if row["gpu_peak_mib"] is None else f", GPU +{row['gpu_peak_mib']} MiB"
        print(f"{row['notebook']}: {'ok' if row['ok'] else 'FAILED'} in {row['seconds']} s, "
              f"peak RAM {row['peak_rss_mib']} MiB{gpu}", flush=True)  # fmt: skip
    record = {"mode": args.mode, "device": device_name(get_device()), "cpus": os.cpu_count(),
              "measured": time.strftime("%Y-%m-%d %H:%M"), "notebooks": rows}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"notebook_memory_{args.mode}.json"
    out.write_text(json.dumps(record, indent=1))
    print(f"-> {out}")
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
