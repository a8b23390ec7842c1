"""Generate the course data: ``python -m course_utils.data [--mode lite] [--seed 0]``."""

from __future__ import annotations

import argparse
import time

from course_utils.config import MODES, get_mode
from course_utils.data import FAMILIES
from course_utils.files import stop_cleanly_on_sigterm


def folder_size_mb(folder) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=MODES, default=None, help="default: COURSE_MODE, else full with CUDA or lite")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    mode = args.mode or get_mode()
    for name, ensure in FAMILIES.items():
        started = time.perf_counter()
        folder = ensure(mode=mode, seed=args.seed)
        print(f"{name:10s} {mode:5s} {time.perf_counter() - started:6.1f} s {folder_size_mb(folder):8.1f} MB  {folder}")


if __name__ == "__main__":
    stop_cleanly_on_sigterm()  # killed with SIGTERM: workers cancelled, temporary folders removed, as Ctrl-C
    main()
