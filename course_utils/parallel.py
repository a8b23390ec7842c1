"""Run independent trainings side by side: one worker process per core, one torch thread each.

A notebook often trains a list of small independent models (seeds x settings) one after another. On a CPU a
small model does not keep several cores busy, so :func:`run_side_by_side` runs the list in worker processes
(joblib's ``loky`` backend: fresh interpreters, functions sent with cloudpickle, so a function defined in a
notebook cell works) and returns the results in the order of the jobs::

    def train_one(row, seed):
        ...  # build, train (load_or_train), return something small: numbers, a log, a state dict
    results = run_side_by_side(train_one, [{"row": r, "seed": s} for r in ROWS for s in SEEDS],
                               memory_per_job_mb=350)

Every job starts from the same state wherever it runs: one torch thread, and Python, NumPy and PyTorch seeded
with the job's ``seed`` entry (0 when it has none), so a list gives identical results one job at a time in the
notebook's own process (``workers=1``) or side by side. What a job prints is shown in the notebook, job by
job, in order. An interrupted run (Ctrl-C, the kernel's stop button, ``SIGTERM``) stops its workers before
the exception reaches the caller: no worker outlives it.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import psutil
import torch
from joblib import Parallel, delayed, parallel_config

from course_utils.config import seed_everything
from course_utils.train import available_cpus

T = TypeVar("T")

LITE_MEMORY_BUDGET_MB = 1536.0
"""Peak memory a ``lite`` notebook may use, its workers included (the course guide's 1.5 GB, for Binder)."""
IDLE_WORKER_S = 5
"""Seconds an idle worker waits for more jobs before it exits (a following call in the same cell reuses it)."""


@contextlib.contextmanager
def _job_state(seed: int) -> Iterator[None]:
    """Run a job on one torch thread from RNGs seeded with ``seed``; restore the caller's threads and RNGs after."""
    threads = torch.get_num_threads()
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002 - the legacy global RNG
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.set_num_threads(1)
        seed_everything(seed)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            random.setstate(python_state)
            np.random.set_state(numpy_state)  # noqa: NPY002


def _run_job(function: Callable[..., T], job: Mapping[str, Any], capture: bool) -> tuple[T, str]:
    """``function(**job)`` in :func:`_job_state`; with ``capture``, what it printed is returned instead of shown."""
    out = io.StringIO()
    with _job_state(int(job.get("seed", 0))), contextlib.redirect_stdout(out) if capture else contextlib.nullcontext():
        result = function(**job)
    return result, out.getvalue()


def _worker_count(
    jobs: int, workers: int | None, memory_per_job_mb: float | None, memory_budget_mb: float | None
) -> int:
    """Workers to start: the cores (or ``workers``), no more than the jobs, and as many as the memory allows."""
    wanted = max(1, min(jobs, workers or (1 if torch.cuda.is_available() else available_cpus())))
    if memory_per_job_mb is None or wanted == 1:
        return wanted
    budget = LITE_MEMORY_BUDGET_MB if memory_budget_mb is None else memory_budget_mb
    own_mb = psutil.Process().memory_info().rss / 2**20
    free_mb = min(budget - own_mb, psutil.virtual_memory().available / 2**20)
    fitting = max(1, math.floor(free_mb / memory_per_job_mb))
    if fitting < wanted:
        print(f"memory: {wanted} workers x {memory_per_job_mb:.0f} MB would not fit beside this process "
              f"({own_mb:.0f} MB) in {min(budget, own_mb + free_mb):.0f} MB; using {fitting}")  # fmt: skip
    return min(wanted, fitting)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn a ``SIGTERM`` into a ``KeyboardInterrupt`` while the block runs, so that the pool stops its workers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_side_by_side(
    function: Callable[..., T],
    jobs: Sequence[Mapping[str, Any]],
    *,
    workers: int | None = None,
    memory_per_job_mb: float | None = None,
    memory_budget_mb: float | None = None,
) -> list[T]:
    """``[function(**job) for job in jobs]``, run in worker processes side by side; results in job order.

    Each job runs on one torch thread, seeded with its ``seed`` entry (0 when it has none): the results are the
    same whether the jobs run one at a time or side by side. With one worker or one job they run here, in this
    process, without a pool. Jobs that train the same keyed checkpoint may run at once: both finish, and
    :func:`course_utils.train.load_or_train` writes the file atomically.

    Args:
        function: called as ``function(**job)``; importable, or defined in a notebook cell (sent with
            cloudpickle, together with the globals it reads: keep those small, or read big data inside it).
            Return something small (numbers, arrays, a log, a state dict), not a model on the GPU.
        jobs: the keyword arguments of each call.
        workers: worker processes; default one per usable core (:func:`course_utils.train.available_cpus`),
            or 1 on a CUDA machine (one GPU trains one model at a time best), never more than the jobs.
        memory_per_job_mb: peak resident memory of one worker running one job (torch itself is about 300 MB);
            with it, fewer workers are started when they would not fit in ``memory_budget_mb`` beside this
            process, or in the machine's available memory, and it is printed.
        memory_budget_mb: memory this process and its workers may use together; default 1536 (lite's 1.5 GB).

    Raises:
        KeyboardInterrupt: on Ctrl-C or ``SIGTERM``, after the workers are stopped.
    """
    if not jobs:
        return []
    count = _worker_count(len(jobs), workers, memory_per_job_mb, memory_budget_mb)
    if count == 1:
        return [_run_job(function, job, capture=False)[0] for job in jobs]
    print(f"{len(jobs)} jobs side by side in {count} worker processes, one torch thread each")
    results = []
    with (
        _sigterm_interrupts(),
        parallel_config(backend="loky", inner_max_num_threads=1, idle_worker_timeout=IDLE_WORKER_S),
    ):
        for result, printed in Parallel(n_jobs=count, return_as="generator")(
            delayed(_run_job)(function, job, capture=True) for job in jobs
        ):
            sys.stdout.write(printed)
            results.append(result)
    return results
