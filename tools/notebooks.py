"""Keep the course notebooks clean and consistent.

    python tools/notebooks.py strip [NOTEBOOK ...]  # remove outputs, execution counts and run metadata
    python tools/notebooks.py sync [NOTEBOOK ...]   # write the repository URL (course_utils.config.REPOSITORY_URL)
                                                    # into the notebooks' Colab/Binder links and install line
    python tools/notebooks.py check [NOTEBOOK ...]  # fail if a notebook has outputs or breaks a convention

Without names, every course notebook in notebooks/ is processed.

The conventions are written down in notebooks/README.md.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

from course_utils.config import REPOSITORY_URL

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
RUN_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")


def course_notebooks() -> list[Path]:
    """The course notebooks, in order (``NN_name.ipynb`` in notebooks/)."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def links(name: str) -> str:
    """The markdown line of Colab and Binder links for notebook ``name`` (text links: no hot-linked images)."""
    owner_repo = REPOSITORY_URL.removeprefix("https://github.com/")
    colab = f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{name}"
    binder = f"https://mybinder.org/v2/gh/{owner_repo}/HEAD?labpath=notebooks%2F{name}"
    return f"[Open in Colab]({colab}) · [Launch on Binder]({binder})"


def strip(nb: nbformat.NotebookNode) -> None:
    """Remove outputs, execution counts and per-run metadata in place."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for key in RUN_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None


def sync(nb: nbformat.NotebookNode, name: str) -> None:
    """Point the notebook's links and install line at REPOSITORY_URL, in place."""
    for cell in nb.cells:
        lines = cell.source.split("\n")
        for i, line in enumerate(lines):
            if cell.cell_type == "markdown" and line.startswith("[Open in Colab]"):
                lines[i] = links(name)
            elif cell.cell_type == "code" and line.startswith("REPOSITORY_URL = "):
                lines[i] = f'REPOSITORY_URL = "{REPOSITORY_URL}"'
        cell.source = "\n".join(lines)


def problems(nb: nbformat.NotebookNode, name: str) -> list[str]:
    """What in the notebook breaks the course conventions (empty when all is well)."""
    found = []
    if any(c.get("outputs") or c.get("execution_count") for c in nb.cells if c.cell_type == "code"):
        found.append("has outputs or execution counts: run `make strip`")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        found.append(f"needs exactly one cell tagged 'parameters', has {len(tagged)}")
    elif "by_mode(" not in tagged[0].source:
        found.append("the parameters cell does not derive its values from the mode with by_mode(...)")
    text = "\n".join(c.source for c in nb.cells)
    if links(name) not in text:
        found.append("Colab/Binder links are missing or stale: run `python tools/notebooks.py sync`")
    if f'REPOSITORY_URL = "{REPOSITORY_URL}"' not in text:
        found.append("the setup cell's REPOSITORY_URL is missing or stale: run `python tools/notebooks.py sync`")
    if not any(re.search(r'setup_notebook\(\s*"' + re.escape(Path(name).stem) + '"', c.source) for c in nb.cells):
        found.append(f'no setup_notebook("{Path(name).stem}") call')
    return found


def main(command: str, names: list[str]) -> int:
    paths = [NOTEBOOKS / Path(name).name for name in names] if names else course_notebooks()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    failures = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if command in ("strip", "sync"):
            before = nbformat.writes(nb)
            strip(nb) if command == "strip" else sync(nb, path.name)
            if nbformat.writes(nb) != before:
                nbformat.write(nb, path)
                print(f"{command}: {path.name}")
        else:
            for problem in problems(nb, path.name):
                print(f"{path.relative_to(NOTEBOOKS.parent)}: {problem}", file=sys.stderr)
                failures += 1
    if command == "check" and not failures:
        print(f"notebooks ok: {len(paths)} checked")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("strip", "sync", "check"):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
