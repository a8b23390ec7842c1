"""Run independent trainings side by side: one worker process per core, one torch thread each.

A notebook often trains a list of small independent models (seeds x settings) one after another. On a CPU a
small model does not keep several cores busy, so :func:`run_side_by_side` runs the list side by side and returns
the results in the order of the jobs. The calling process (the notebook's kernel) takes jobs too, beside
``workers - 1`` worker processes (loky, the process pool of joblib: fresh interpreters, functions sent with
cloudpickle, so a function defined in a notebook cell works); whoever is free takes the next job. So two cores
cost one extra process, which matters under lite's memory budget::

    def train_one(row, seed):
        ...  # build, train (load_or_train), return something small: numbers, a log, a state dict
    results = run_side_by_side(train_one, [{"row": r, "seed": s} for r in ROWS for s in SEEDS],
                               memory_per_job_mb=350)

Every job starts from the same state wherever it runs: one torch thread, and Python, NumPy and PyTorch seeded
with the job's ``seed`` entry (0 when it has none), so a list gives identical results one job at a time in the
notebook's own process (``workers=1``) or side by side. What the jobs print is shown in the notebook when they
have all finished, job by job, in order. An interrupted run (Ctrl-C, the kernel's stop button, ``SIGTERM``)
stops its workers before the exception reaches the caller: no worker outlives it.
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
from concurrent.futures import Future
from typing import Any, TypeVar

import numpy as np
import psutil
import torch
from joblib.externals.loky import get_reusable_executor

from course_utils.config import available_cpus, seed_everything
from course_utils.files import raise_keyboard_interrupt

T = TypeVar("T")

LITE_MEMORY_BUDGET_MB = 1536.0
"""Peak memory a ``lite`` notebook may use, its workers included (the course guide's 1.5 GB, for Binder)."""
IDLE_WORKER_S = 5
"""Seconds an idle worker waits for more jobs before it exits (a following call in the same cell reuses it)."""
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
"""The environment of every worker: one thread for each numerical library, so jobs do not compete for cores."""


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
    fitting = 1 + max(0, math.floor(free_mb / memory_per_job_mb))  # this process runs jobs too
    if fitting < wanted:
        print(f"memory: {wanted - 1} more processes x {memory_per_job_mb:.0f} MB would not fit beside this one "
              f"({own_mb:.0f} MB) in {min(budget, own_mb + free_mb):.0f} MB; {fitting} at a time")  # fmt: skip
    return min(wanted, fitting)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn a ``SIGTERM`` into a ``KeyboardInterrupt`` while the block runs, so that the pool stops its workers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    previous = signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _JobQueue:
    """The jobs with their positions, handed out one at a time to whoever asks first (thread-safe)."""

    def __init__(self, jobs: Sequence[Mapping[str, Any]]) -> None:
        self.jobs, self.taken, self.lock = jobs, 0, threading.RLock()

    def take(self) -> int | None:
        """The position of the next job, or ``None`` when every job is taken."""
        with self.lock:
            if self.taken == len(self.jobs):
                return None
            self.taken += 1
            return self.taken - 1


def run_side_by_side(
    function: Callable[..., T],
    jobs: Sequence[Mapping[str, Any]],
    *,
    workers: int | None = None,
    memory_per_job_mb: float | None = None,
    memory_budget_mb: float | None = None,
) -> list[T]:
    """``[function(**job) for job in jobs]``, run side by side; results in job order.

    This process runs jobs too, beside ``workers - 1`` worker processes; each takes the next job when it is free.
    Each job runs on one torch thread, seeded with its ``seed`` entry (0 when it has none): the results are the
    same whether the jobs run one at a time or side by side. With one worker or one job they all run here,
    without a pool. Jobs that train the same keyed checkpoint may run at once: both finish, and
    :func:`course_utils.train.load_or_train` writes the file atomically.

    Args:
        function: called as ``function(**job)``; importable, or defined in a notebook cell (sent with
            cloudpickle, together with the globals it reads: keep those small, or read big data inside it).
            Return something small (numbers, arrays, a log, a state dict), not a model on the GPU.
        jobs: the keyword arguments of each call.
        workers: jobs at a time, this process included; default one per usable core
            (:func:`course_utils.config.available_cpus`), or 1 on a CUDA machine (one GPU trains one model at a
            time best), never more than the jobs.
        memory_per_job_mb: memory a worker process adds while it runs a job: its own, not the libraries it
            shares with this process (about 450 MB with torch and the course's models imported, plus the job's
            data and activations). With it, fewer run side by side when the workers would not fit in
            ``memory_budget_mb`` beside this process, or in the machine's available memory, and it is printed.
        memory_budget_mb: memory this process and its workers may use together; default 1536 (lite's 1.5 GB).

    Raises:
        KeyboardInterrupt: on Ctrl-C or ``SIGTERM``, after the workers are stopped.
    """
    count = _worker_count(len(jobs), workers, memory_per_job_mb, memory_budget_mb) if jobs else 1
    if count == 1:
        return [_run_job(function, job, capture=False)[0] for job in jobs]
    print(f"{len(jobs)} jobs, {count} at a time: here and in {count - 1} worker process(es), one torch thread each")
    queue = _JobQueue(jobs)
    outcomes: dict[int, tuple[T, str] | Future] = {}
    pool = get_reusable_executor(max_workers=count - 1, timeout=IDLE_WORKER_S, env=ONE_THREAD)
    stopped = threading.Event()

    def feed(_: object = None) -> None:
        """Give the next job to the worker that is free (called again when its job is done)."""
        with queue.lock:
            index = None if stopped.is_set() else queue.take()
            if index is None:
                return
            future = outcomes[index] = pool.submit(_run_job, function, jobs[index], True)
        future.add_done_callback(feed)

    try:
        with _sigterm_interrupts():
            for _ in range(count - 1):
                feed()
            while (index := queue.take()) is not None:
                outcomes[index] = _run_job(function, jobs[index], capture=True)
            done = [outcomes[i].result() if isinstance(outcomes[i], Future) else outcomes[i] for i in range(len(jobs))]
    except BaseException:
        stopped.set()
        pool.shutdown(wait=True, kill_workers=True)
        raise
    for _, printed in done:
        sys.stdout.write(printed)
    return [result for result, _ in done]
