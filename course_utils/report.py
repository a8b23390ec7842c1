"""Record a notebook's headline numbers in ``results/<notebook>.json`` and read them back as a table."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from course_utils.config import NotebookRun, device_name, results_dir
from course_utils.files import atomic_path


def peak_ram_mib() -> int | None:
    """Peak resident memory of this process so far, in MiB (the notebook's kernel when called from one).

    ``None`` on Windows, which has no ``resource`` module.
    """
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / 2**20 if sys.platform == "darwin" else peak / 2**10)  # bytes on macOS, KiB on Linux


def save_results(run: NotebookRun, metrics: dict[str, float], headline: str) -> Path:
    """Write the notebook's results file and return its path.

    Args:
        run: the object returned by :func:`course_utils.config.setup_notebook`.
        metrics: the measured numbers, by name (finite floats or ints).
        headline: one line for the course table, e.g. ``"U-Net IoU 0.71 vs NDVI threshold 0.42"``;
            it must compare the result with the notebook's own baseline.

    The file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    clean: dict[str, float] = {}
    for name, value in metrics.items():
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"metric {name!r} is {number}; record only finite numbers.")
        clean[name] = number
    if not headline.strip():
        raise ValueError("headline is empty; say what was measured and against which baseline.")
    record: dict[str, Any] = {
        "notebook": run.notebook,
        "mode": run.mode,
        "device": device_name(run.device),
        "seed": run.seed,
        "seconds": round(run.elapsed(), 1),
        "headline": headline.strip(),
        "metrics": clean,
        "peak_ram_mib": peak_ram_mib(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        record["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{run.notebook}.json"
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    print(f"results -> {target}")
    return target


def load_results(folder: Path | None = None) -> list[dict[str, Any]]:
    """All results files in ``folder`` (default: the results folder), sorted by notebook name."""
    folder = folder or results_dir()
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def results_table(records: list[dict[str, Any]]) -> str:
    """A plain-text table: notebook, mode, device, minutes, headline result."""
    header = ("notebook", "mode", "device", "minutes", "headline result")
    rows = [
        (r["notebook"], r["mode"], r["device"], f"{r['seconds'] / 60:.1f}", r["headline"]) for r in records
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
