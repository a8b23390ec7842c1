"""A notebook's lessons as measured claims, and its headline numbers in ``results/<notebook>.json``.

A lesson is a claim the notebook measures, never one it asserts ("the U-Net beats the random forest on edge
F1"). :func:`compare` measures it on the test units both sides were scored on (chips, patches, parcels,
pixel blocks; and seeds, where there are several): the effect, a 95 % paired-bootstrap interval and a
verdict, *holds* (the interval lies above zero), *reversed* (below zero) or *inconclusive* (it contains
zero). The sentence that interprets a result is printed from the verdict (:meth:`Claim.report`), so the
notebook never says more than its numbers. :func:`save_results` writes the claims with the metrics.

:func:`load_results` is the one reader of results files (``make course``, ``tools/timings.py``, ``make book``):
a file that is truncated, damaged or not a results file is skipped with a line naming it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
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


VERDICTS = ("holds", "reversed", "inconclusive")
RUN_ID_VARIABLE = "COURSE_RUN_ID"
"""Set by ``make course`` (tools/run_course.py) for the kernels it starts; :func:`save_results` records it as
``run_id``, so the course table tells this run's results from a file an earlier run left."""


@dataclass(frozen=True)
class Claim:
    """A lesson measured: ``effect`` (claimed-better side minus the other) with its 95 % interval ``ci``.

    ``unconverged`` marks a claim built on a run still improving at its last epoch (:attr:`History.converged`).
    """

    id: str
    statement: str
    effect: float
    ci: tuple[float, float]
    verdict: str
    headline: bool = False
    unconverged: bool = False

    def report(self, holds: str, reversed: str, inconclusive: str) -> str:
        """Print and return the claim's line and the interpretation its verdict calls for.

        ``holds``/``reversed``/``inconclusive``: what to conclude in each case; only the one that applies is shown.
        """
        low, high = self.ci
        note = " (built on a run still improving at its last epoch)" if self.unconverged else ""
        conclusion = {"holds": holds, "reversed": reversed, "inconclusive": inconclusive}[self.verdict]
        text = (f"[{self.verdict}] {self.statement}: effect {self.effect:+.3f}, "
                f"95 % interval [{low:+.3f}, {high:+.3f}]{note}\n  -> {conclusion}")  # fmt: skip
        print(text)
        return text


def verdict(ci: tuple[float, float]) -> str:
    """``holds`` when the interval lies above zero, ``reversed`` below zero, ``inconclusive`` otherwise."""
    low, high = ci
    return "holds" if low > 0 else "reversed" if high < 0 else "inconclusive"


def make_claim(
    id: str, statement: str, effect: float, ci: tuple[float, float], *, headline: bool = False,
    unconverged: bool = False,
) -> Claim:  # fmt: skip
    """A claim from an effect and an interval computed elsewhere (e.g. over seeds only)."""
    low, high = float(ci[0]), float(ci[1])
    if not all(math.isfinite(v) for v in (effect, low, high)) or low > high:
        raise ValueError(f"claim {id!r}: effect {effect} and interval [{low}, {high}] must be finite, low <= high")
    return Claim(id, statement, float(effect), (low, high), verdict((low, high)), headline, unconverged)


def compare(
    id: str,
    statement: str,
    better: Sequence[Any] | np.ndarray,
    other: Sequence[Any] | np.ndarray,
    *,
    statistic: Callable[[np.ndarray], float] | None = None,
    lower_is_better: bool = False,
    headline: bool = False,
    unconverged: bool = False,
    resamples: int = 2000,
    seed: int = 0,
) -> Claim:
    """Measure "``better`` beats ``other``" on the same test units with a paired bootstrap.

    Args:
        id, statement: a short name and the lesson in words, e.g. ``"unet_vs_forest"``, ``"the U-Net beats
            the random forest on edge F1"``.
        better, other: per-unit results of the two sides, the same units in the same order: ``[units, ...]``
            (e.g. per-chip scores, or per-chip confusion matrices), or ``[seeds, units, ...]`` for several
            training seeds evaluated on the same units (pass a 3-D array, or a list of per-seed arrays).
        statistic: the metric of a set of units (default: the mean over axis 0); e.g.
            ``lambda cms: mean_iou(cms.sum(0))`` for a pooled IoU of per-chip confusion matrices.
        lower_is_better: the metric is an error (a loss, an RMSE): the effect is ``other - better``.
        headline: one of the notebook's main lessons.
        unconverged: a side was still improving at its last epoch.
        resamples, seed: the bootstrap's draws and random seed.

    Each draw resamples the units (the same units for both sides: paired) and, with several seeds, the seeds;
    the effect of a draw is the mean over its seeds of ``statistic(better) - statistic(other)``.
    """
    a, b = _by_seed(better), _by_seed(other)
    if a.shape != b.shape:
        raise ValueError(f"claim {id!r}: both sides must be scored on the same units, got {a.shape} and {b.shape}")
    if a.shape[1] < 2:
        raise ValueError(f"claim {id!r}: {a.shape[1]} test unit(s) cannot give an interval; score more units.")
    metric = statistic or (lambda values: float(np.mean(values, axis=0)))
    sign = -1.0 if lower_is_better else 1.0

    def effect(seeds: np.ndarray, units: np.ndarray) -> float:
        return sign * float(np.mean([metric(a[s][units]) - metric(b[s][units]) for s in seeds]))

    seeds_all, units_all = np.arange(a.shape[0]), np.arange(a.shape[1])
    rng = np.random.default_rng(seed)
    draws = [
        effect(rng.choice(seeds_all, len(seeds_all)) if len(seeds_all) > 1 else seeds_all,
               rng.choice(units_all, len(units_all)))
        for _ in range(resamples)
    ]  # fmt: skip
    low, high = np.percentile(draws, [2.5, 97.5])
    return make_claim(id, statement, effect(seeds_all, units_all), (low, high), headline=headline,
                      unconverged=unconverged)  # fmt: skip


def _by_seed(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """``[seeds, units, ...]`` from per-unit results of one run or a list of runs."""
    array = np.asarray(values, dtype=np.float64)
    if isinstance(values, list | tuple) and len(values) and np.ndim(values[0]) >= 1 and array.ndim >= 2:
        return array  # a list of per-seed arrays
    return array[None]


def claims_held(claims: Sequence[dict[str, Any]], headline_only: bool = False) -> tuple[int, int]:
    """``(held, total)`` over recorded claims (``"verdict" == "holds"``)."""
    chosen = [c for c in claims if c.get("headline") or not headline_only]
    return sum(c["verdict"] == "holds" for c in chosen), len(chosen)



def save_results(
    run: NotebookRun, metrics: dict[str, float], headline: str, claims: Sequence[Claim] = ()
) -> Path:
    """Write the notebook's results file and return its path.

    Args:
        run: the object returned by :func:`course_utils.config.setup_notebook`.
        metrics: the measured numbers, by name (finite floats or ints).
        headline: one line for the course table, e.g. ``"U-Net IoU 0.71 vs NDVI threshold 0.42"``;
            it must compare the result with the notebook's own baseline.
        claims: the notebook's lessons as measured claims (:func:`compare`); ids must be unique.

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
    ids = [claim.id for claim in claims]
    if len(set(ids)) != len(ids):
        raise ValueError(f"claim ids must be unique, got {ids}")
    record: dict[str, Any] = {
        "notebook": run.notebook,
        "mode": run.mode,
        "device": device_name(run.device),
        "seed": run.seed,
        "seconds": round(run.elapsed(), 1),
        "headline": headline.strip(),
        "metrics": clean,
        "claims": [asdict(claim) | {"ci": list(claim.ci)} for claim in claims],
        "peak_ram_mib": peak_ram_mib(),
        "run_id": os.environ.get(RUN_ID_VARIABLE),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
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


#: Fields every results record has (every version of :func:`save_results` wrote them), with their types.
_RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "notebook": str, "mode": str, "device": str, "seconds": (int, float), "headline": str,
}  # fmt: skip
#: Fields a record may have (older ones lack some); when present they have these types (``None`` allowed).
_OPTIONAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "metrics": dict, "claims": list, "seed": int, "peak_ram_mib": (int, float), "gpu_peak_mib": (int, float),
    "cores_used": (int, float), "run_id": str, "finished": str,
}  # fmt: skip


def _record_problem(record: Any, notebook: str) -> str | None:
    """What makes ``record`` (read from ``<notebook>.json``) not a results record, or ``None`` when it is one."""
    if not isinstance(record, dict):
        return f"it holds a JSON {type(record).__name__}, not a record"
    for name, kind in _RECORD_FIELDS.items():
        if not isinstance(record.get(name), kind):
            return f"its {name!r} is missing or not a {getattr(kind, '__name__', 'number')}"
    for name, kind in _OPTIONAL_FIELDS.items():
        if record.get(name) is not None and not isinstance(record[name], kind):
            return f"its {name!r} is not a {getattr(kind, '__name__', 'number')}"
    if record["notebook"] != notebook:
        return f"it records notebook {record['notebook']!r}, not {notebook!r}"
    for claim in record.get("claims") or []:
        ci = claim.get("ci") if isinstance(claim, dict) else None
        if not (isinstance(ci, list) and len(ci) == 2 and all(isinstance(v, int | float) for v in ci)
                and isinstance(claim.get("effect"), int | float) and isinstance(claim.get("statement"), str)
                and claim.get("verdict") in VERDICTS):  # fmt: skip
            return f"a claim is not {{statement, effect, ci: [low, high], verdict}}: {str(claim)[:80]}"
    return None


def read_results_file(path: Path) -> dict[str, Any]:
    """One ``results/<notebook>.json``, checked to be a whole results record.

    Raises:
        ValueError: for a file that cannot be read, is not JSON (truncated, damaged) or is not a results record,
            saying what is wrong and what to do.
    """
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"unreadable or truncated ({error}): run notebook {path.stem} again to rewrite it, "
                         "or delete the file") from error  # fmt: skip
    problem = _record_problem(record, path.stem)
    if problem is not None:
        raise ValueError(f"not a results file of this course ({problem}): move it out of {path.parent}, "
                         f"or run notebook {path.stem} again to rewrite it")  # fmt: skip
    return record


def load_results(folder: Path | None = None) -> list[dict[str, Any]]:
    """The results records in ``folder`` (default: the results folder), sorted by notebook name.

    A file that is not a whole results record (:func:`read_results_file`) is skipped, with a line on stderr
    that names it and says why; the other records are kept.
    """
    folder = folder or results_dir()
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            records.append(read_results_file(path))
        except ValueError as error:
            print(f"results: skipped {path}: {error}", file=sys.stderr)
    return records


def results_table(records: list[dict[str, Any]], missing: Mapping[str, str] | None = None) -> str:
    """A plain-text table: notebook, mode, device, seed, minutes, claims held, headline result.

    ``missing``: notebooks without a record to show, each with what to say instead (``"FAILED"``); they get a
    row with that in the headline column and no numbers. Rows are sorted by notebook.
    """
    header = ("notebook", "mode", "device", "seed", "minutes", "claims held", "headline result")
    rows = [(name, "-", "-", "-", "-", "-", text) for name, text in (missing or {}).items()]
    for r in records:
        held, total = claims_held(r.get("claims", []))
        rows.append((r["notebook"], r["mode"], r["device"], str(r.get("seed", "")), f"{r['seconds'] / 60:.1f}",
                     f"{held}/{total}" if total else "none", r["headline"]))  # fmt: skip
    rows.sort(key=lambda row: row[0])
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def claims_not_held(records: list[dict[str, Any]]) -> list[str]:
    """One line per recorded claim whose verdict is not *holds*: notebook, verdict, statement, interval."""
    return [
        f"{r['notebook']}: [{c['verdict']}]{' (headline)' if c.get('headline') else ''} {c['statement']} "
        f"(effect {c['effect']:+.3f}, 95 % interval [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}])"
        for r in records
        for c in r.get("claims", [])
        if c["verdict"] != "holds"
    ]
