"""Write the expected-timings table of README.md and docs/instructor.md from results files, not by hand.

    python tools/timings.py --lite results-lite/ [--smoke DIR] [--binder DIR] [--full DIR] [--check]

Each folder holds the ``results/<notebook>.json`` files of one run of every notebook (``make course`` writes
them to ``results/``; copy the folder away between modes). Columns: minutes in ``smoke``, in ``lite`` on a
2-core CPU and on Binder's one core, in ``full`` on a GPU, and peak memory. Beside the minutes, the cores a
notebook used on average (its kernel's and workers' CPU time over its wall time, as ``make course`` records
it). A run not given is "not measured". The table goes between the ``<!-- timings -->`` and
``<!-- /timings -->`` lines of both files; ``--check`` only reports whether they are current.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from course_utils.report import load_results

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = (ROOT / "README.md", ROOT / "docs" / "instructor.md")
BLOCK = re.compile(r"(<!-- timings -->\n).*?(<!-- /timings -->)", re.S)
COLUMNS = ("smoke", "lite", "binder", "full")
HEADER = ("notebook", "smoke (2-core CPU)", "lite (2-core CPU)", "lite (Binder, 1 core)", "full (GPU)",
          "peak RAM, lite", "peak GPU memory, full")  # fmt: skip


def _minutes(record: dict[str, Any] | None) -> str:
    """Minutes, and the cores used (CPU over wall time) where ``make course`` recorded them."""
    if record is None:
        return "not measured"
    cores = f", {record['cores_used']:.1f} cores" if "cores_used" in record else ""
    return f"{record['seconds'] / 60:.1f} min{cores} ({record['device']}, seed {record.get('seed', 0)})"


def _memory(record: dict[str, Any] | None, key: str) -> str:
    value = (record or {}).get(key)
    return "not measured" if value is None else f"{value / 1024:.2f} GB"


def timings_table(runs: dict[str, list[dict[str, Any]]], notebooks: list[str]) -> str:
    """A markdown table, one row per notebook; ``runs`` maps a column of :data:`COLUMNS` to its records."""
    by_run = {column: {r["notebook"]: r for r in runs.get(column, [])} for column in COLUMNS}
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    for notebook in notebooks:
        cells = [_minutes(by_run[column].get(notebook)) for column in COLUMNS]
        cells += [_memory(by_run["lite"].get(notebook), "peak_ram_mib"),
                  _memory(by_run["full"].get(notebook), "gpu_peak_mib")]  # fmt: skip
        lines.append(f"| `{notebook}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def with_table(text: str, table: str, where: Path) -> str:
    """``text`` with its timings block replaced by ``table``."""
    if not BLOCK.search(text):
        raise ValueError(f"{where} has no '<!-- timings -->' ... '<!-- /timings -->' block for the table")
    return BLOCK.sub(lambda match: match.group(1) + table + match.group(2), text)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for column in COLUMNS:
        parser.add_argument(f"--{column}", type=Path, help=f"folder of the {column} run's results files")
    parser.add_argument("--check", action="store_true", help="fail if a document's table is not this one")
    args = parser.parse_args(argv)
    runs = {column: load_results(folder) for column in COLUMNS if (folder := getattr(args, column)) is not None}
    notebooks = sorted(path.stem for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    table = timings_table(runs, notebooks)
    stale = []
    for document in DOCUMENTS:
        text = document.read_text()
        updated = with_table(text, table, document)
        if updated != text:
            stale.append(document)
            if not args.check:
                document.write_text(updated)
    if args.check and stale:
        print(f"timings table out of date in {', '.join(map(str, stale))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
