"""Generate the course data: ``python -m course_utils.data [--mode lite] [--seed 0]`` (what ``make data`` runs).

The mode and seed default to ``COURSE_MODE`` and ``COURSE_SEED``, as in the notebooks, so ``make data`` generates
the datasets that ``make course`` then reads.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from course_utils.config import MODES, ConfigError, course_seed, get_mode
from course_utils.data import FAMILIES
from course_utils.files import stop_cleanly_on_sigterm


def folder_size_mb(folder: Path) -> float:
    """Megabytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main(argv: list[str] | None = None) -> int:
    """Generate every family for the mode and seed asked (default: the environment's); returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=MODES, default=None, help="default: COURSE_MODE, else full with CUDA or lite")
    parser.add_argument("--seed", type=int, default=None, help="default: COURSE_SEED, else 0")
    args = parser.parse_args(argv)
    try:
        mode = args.mode or get_mode()
        seed = course_seed() if args.seed is None else args.seed
    except ConfigError as error:
        print(f"make data: {error}", file=sys.stderr)
        return 2
    name = ""
    try:
        for name, ensure in FAMILIES.items():
            started = time.perf_counter()
            folder = ensure(mode=mode, seed=seed)
            print(f"{name:10s} {mode:5s} seed {seed} {time.perf_counter() - started:6.1f} s "
                  f"{folder_size_mb(folder):8.1f} MB  {folder}")  # fmt: skip
    except KeyboardInterrupt:
        print(f"\nmake data: interrupted while generating {name} ({mode}, seed {seed}); nothing half-written is kept: "
              "run `make data` again to resume (families already generated are reused).", file=sys.stderr)  # fmt: skip
        return 130
    return 0


if __name__ == "__main__":
    stop_cleanly_on_sigterm()  # killed with SIGTERM: workers cancelled, temporary folders removed, as Ctrl-C
    sys.exit(main())
