"""course_utils.parallel.run_side_by_side: same results one at a time or side by side, memory, interrupts."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from torch import nn

from course_utils.parallel import run_side_by_side
from course_utils.train import load_checkpoint, load_or_train


def train_tiny(seed: int, hidden: int) -> dict:
    """A few Adam steps of a tiny MLP on data drawn from the global RNG (which the helper seeds per job)."""
    inputs, targets = torch.randn(64, 5), torch.randn(64, 1)
    model = nn.Sequential(nn.Linear(5, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(20):
        loss = nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"job seed={seed} hidden={hidden} done")
    return {"state": model.state_dict(), "loss": loss.item(), "pid": os.getpid(), "threads": torch.get_num_threads()}


JOBS = [{"seed": seed, "hidden": hidden} for seed in (0, 1) for hidden in (4, 8)]


def test_one_worker_and_two_give_identical_results(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    here = run_side_by_side(train_tiny, JOBS, workers=1)
    after_here = torch.rand(1)  # the caller's RNG continues as if no job had run here
    torch.manual_seed(123)
    side_by_side = run_side_by_side(train_tiny, JOBS, workers=2)
    assert torch.equal(after_here, torch.rand(1))
    assert torch.get_num_threads() == threads
    assert {r["pid"] for r in here} == {os.getpid()}
    assert len({r["pid"] for r in side_by_side} - {os.getpid()}) == 1, "one worker process beside this one"
    assert all(r["threads"] == 1 for r in here + side_by_side)
    for one, two in zip(here, side_by_side, strict=True):
        assert one["loss"] == two["loss"]
        assert all(torch.equal(one["state"][k], two["state"][k]) for k in one["state"])
    assert here[0]["loss"] != here[2]["loss"], "different seeds must give different runs"
    printed = capsys.readouterr().out
    assert "4 jobs, 2 at a time: here and in 1 worker process" in printed
    done = [line for line in printed.splitlines() if line.startswith("job ")]
    assert done == [f"job seed={j['seed']} hidden={j['hidden']} done" for j in JOBS] * 2, "printed in job order"


def draw(seed: int) -> tuple[float, float, int]:
    """The first draw of each RNG: Python's, NumPy's global one and PyTorch's."""
    return random.random(), float(np.random.rand()), int(torch.randint(1000, (1,)))  # noqa: NPY002


def test_jobs_are_seeded_by_their_seed_entry() -> None:
    random.seed(99)
    first, again, other = run_side_by_side(draw, [{"seed": 5}, {"seed": 5}, {"seed": 6}], workers=1)
    assert first == again != other
    assert run_side_by_side(draw, [{"seed": 6}, {"seed": 5}], workers=2) == [other, first]


def test_a_function_defined_in_a_notebook_cell_runs_in_workers() -> None:
    cell = textwrap.dedent("""
        import torch
        OFFSET = 10

        def job(seed, size):
            return OFFSET + float(torch.rand(size).sum()) * 0 + seed, torch.rand(1).item()
    """)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(cell, "<cell>", "exec"), namespace)  # noqa: S102 - what a notebook kernel does with a cell
    jobs = [{"seed": seed, "size": 3} for seed in range(3)]
    side_by_side = run_side_by_side(namespace["job"], jobs, workers=2)
    assert [first for first, _ in side_by_side] == [10, 11, 12]
    assert side_by_side == run_side_by_side(namespace["job"], jobs, workers=1)


def test_one_job_or_short_memory_runs_here_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_side_by_side(train_tiny, JOBS[:1])[0]["pid"] == os.getpid()
    assert capsys.readouterr().out.count("job ") == 1
    results = run_side_by_side(train_tiny, JOBS, workers=2, memory_per_job_mb=300, memory_budget_mb=400)
    assert {r["pid"] for r in results} == {os.getpid()}
    assert "1 at a time" in capsys.readouterr().out
    assert run_side_by_side(train_tiny, []) == []


def train_keyed(seed: int, path: str) -> dict:
    """Train a tiny model under a keyed checkpoint (both jobs use the same key), slowly enough to overlap."""
    model = nn.Linear(3, 2)

    def train(model: nn.Module) -> None:
        time.sleep(1.0)
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))

    loaded = load_or_train(model, path, train, recipe={"seed": seed})
    return {"loaded": loaded, "state": model.state_dict()}


def test_two_jobs_training_the_same_key_both_finish(tmp_path: Path) -> None:
    path = str(tmp_path / "tiny.pt")
    first, second = run_side_by_side(train_keyed, [{"seed": 0, "path": path}] * 2, workers=2)
    assert not first["loaded"] and not second["loaded"], "both trained: neither found the other's file"
    files = list(tmp_path.iterdir())
    assert len(files) == 1, f"one checkpoint, no temporaries left: {files}"
    saved = load_checkpoint(files[0])["state_dict"]
    assert all(torch.equal(saved[k], first["state"][k]) and torch.equal(saved[k], second["state"][k]) for k in saved)


STUCK = """
import os, sys, time
from pathlib import Path
from course_utils.parallel import run_side_by_side

def job(seed, folder):
    Path(folder, str(os.getpid())).touch()
    time.sleep(60)

run_side_by_side(job, [{"seed": s, "folder": sys.argv[1]} for s in range(3)], workers=2)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stopped_run_leaves_no_worker_alive(tmp_path: Path, signum: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-c", STUCK, str(tmp_path)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 2:
        assert parent.poll() is None, parent.stderr.read() if parent.stderr else ""
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.1)
    workers = [int(p.name) for p in tmp_path.iterdir() if int(p.name) != parent.pid]
    assert len(workers) == 1, "a worker process beside the parent, which runs a job too"
    parent.send_signal(signum)
    assert parent.wait(timeout=30) != 0
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in workers if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        time.sleep(0.1)
    assert not alive, f"workers {alive} outlived their parent"
