"""course_utils: the plumbing and reference implementations behind the DL4RS course notebooks."""

from course_utils.config import (
    by_mode,
    checkpoint_dir,
    course_seed,
    data_dir,
    get_device,
    get_mode,
    results_dir,
    seed_everything,
    setup_notebook,
)
from course_utils.report import compare, make_claim, save_results

__all__ = [
    "by_mode",
    "checkpoint_dir",
    "compare",
    "course_seed",
    "data_dir",
    "get_device",
    "get_mode",
    "make_claim",
    "results_dir",
    "save_results",
    "seed_everything",
    "setup_notebook",
]
__version__ = "0.1.0"
