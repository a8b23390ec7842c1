"""The README and the instructor guide give one agenda: the same slot for every notebook."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLOT = r"(\d\d:\d\d–\d\d:\d\d)"


def readme_agenda() -> dict[tuple[int, str], str]:
    """``(day, notebook number) -> slot`` from the README's agenda table."""
    rows = re.findall(rf"^\| Day (\d), {SLOT} \| `(\d\d)_\w+` \|", (ROOT / "README.md").read_text(), re.M)
    return {(int(day), number): slot for day, slot, number in rows}


def instructor_agenda() -> dict[tuple[int, str], str]:
    """``(day, notebook number) -> slot`` from docs/instructor.md's day tables."""
    agenda, day = {}, 0
    for line in (ROOT / "docs" / "instructor.md").read_text().splitlines():
        heading = re.match(r"### Day (\d)", line)
        day = int(heading.group(1)) if heading else day
        row = re.match(rf"\| {SLOT} \| (\d\d) ", line)
        if row:
            agenda[day, row.group(2)] = row.group(1)
    return agenda


def test_one_agenda_for_every_notebook() -> None:
    notebooks = {path.name[:2] for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    readme = readme_agenda()
    assert {number for _, number in readme} == notebooks, "every notebook has a slot in the README"
    assert readme == instructor_agenda()
