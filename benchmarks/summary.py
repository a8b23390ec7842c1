"""Print the measured benchmarks in ``benchmarks/results/`` as Markdown for the README.

python benchmarks/summary.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def training_lines(record: dict) -> list[str]:
    """The throughput comparison of one ``training_*.json``."""
    lines = [f"**Training throughput**, field U-Net ({record['mode']} recipe), {record['device']}, "
             f"OMP_NUM_THREADS={record['omp_num_threads']}, {record.get('torch_threads', '?')} torch threads, "
             f"torch {record['torch']}, measured {record['measured']}:",
             "", "| loop | samples/s | waiting for data | CPU s |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
    for loop in record["loops"]:
        lines.append(f"| {loop['loop']} | {loop['samples_per_second']:.1f} | {loop['data_wait_share']:.0%} "
                     f"| {loop['cpu_seconds']} |")  # fmt: skip
    if "speedup" in record:
        lines += ["", f"The course loop trains {record['speedup']:.2f}x as many samples per second."]
    return [*lines, ""]


def memory_lines(record: dict) -> list[str]:
    """The per-notebook peaks of one ``notebook_memory_*.json``."""
    title = f"**Peak memory per notebook**, {record['mode']} mode, {record['device']}, measured {record['measured']}:"
    lines = [title, "", "| notebook | minutes | peak RAM (MiB) | GPU memory (MiB) |", "| --- | ---: | ---: | ---: |"]
    for row in record["notebooks"]:
        gpu = "-" if row["gpu_peak_mib"] is None else row["gpu_peak_mib"]
        lines.append(f"| {row['notebook']} | {row['seconds'] / 60:.1f} | {row['peak_rss_mib']} | {gpu} |")
    return [*lines, ""]


def main() -> int:
    """Print every results file's table; say so when there are none."""
    files = sorted(RESULTS.glob("*.json"))
    if not files:
        print(f"no results in {RESULTS}: run `make bench` first", file=sys.stderr)
        return 1
    for file in files:
        record = json.loads(file.read_text())
        print("\n".join(training_lines(record) if "loops" in record else memory_lines(record)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
