"""Keep the course notebooks clean and consistent.

    python tools/notebooks.py strip [NOTEBOOK ...]  # remove outputs, execution counts and run metadata
    python tools/notebooks.py sync [NOTEBOOK ...]   # write the repository URL and ref (course_utils.config
                                                    # REPOSITORY_URL, COURSE_REF) into the links and install line
    python tools/notebooks.py check [NOTEBOOK ...]  # fail if a notebook has outputs or breaks a convention
    python tools/notebooks.py student [NOTEBOOK ...]  # write the student versions into notebooks/student/
    python tools/notebooks.py html [NOTEBOOK ...]     # render the notebooks to HTML in build/html/

Without names, every course notebook in notebooks/ is processed.

Exercises: each solution is one code cell tagged ``solution`` whose first line is ``# Exercise N: ...``,
below a "## Exercises" and a "### Solutions" markdown cell. The student version replaces each solution
by a stub that raises ``NotImplementedError`` (tagged ``raises-exception`` so nbval expects it); a line
``# Hint: ...`` in the solution is kept in the stub.

The conventions are written down in notebooks/README.md.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import nbformat

from course_utils.config import COURSE_REF, REPOSITORY_URL
from course_utils.files import atomic_path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
STUDENT = NOTEBOOKS / "student"
EXECUTED = ROOT / "build" / "executed"
HTML = ROOT / "build" / "html"
RUN_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")
SOLUTION_TAG = "solution"
MIN_EXERCISES = 3
SOLUTION_LINE = re.compile(r"#\s*Exercise\s+(\d+)\s*:")
EXERCISE_TITLE = re.compile(r"\*\*Exercise\s+(\d+)\b([^*]*)\*\*")
# A measured number typed into prose: a decimal in a sentence that names a metric and cites nothing, unless
# the words just before it make it a setting ("IoU above 0.5", "label smoothing 0.1", "try 0.01").
DECIMAL = re.compile(r"(?<![\w.:])\d+\.\d+(?![\w.])")
METRIC = re.compile(r"\b(accuracy|m?IoU|F1|RMSE|MSE|MAE|R\^?2|AUC|kappa|loss|score[sd]?|error)\b", re.I)
CITATION = re.compile(r"et al\.|\b(19|20)\d\d[a-z]?\b")
SETTING_BEFORE = re.compile(
    r"\b(above|below|threshold|criterion|at least|at most|set|try|smoothing|rate|ratio|momentum|decay|dropout"
    r")s?(\s+(of|to|at|is|=))?(\W*\d+(\.\d+)?,?(\s+and|\s+or)?)*\W*$",  # also the rest of a list of settings
    re.I,
)


def course_notebooks() -> list[Path]:
    """The course notebooks, in order (``NN_name.ipynb`` in notebooks/)."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def links(name: str, folder: str = "notebooks") -> str:
    """The markdown line of Colab and Binder links for notebook ``name`` in ``folder`` at :data:`COURSE_REF`."""
    owner_repo = REPOSITORY_URL.removeprefix("https://github.com/")
    colab = f"https://colab.research.google.com/github/{owner_repo}/blob/{COURSE_REF}/{folder}/{name}"
    binder = f"https://mybinder.org/v2/gh/{owner_repo}/{COURSE_REF}?labpath={folder.replace('/', '%2F')}%2F{name}"
    return f"[Open in Colab]({colab}) · [Launch on Binder]({binder})"


#: The Colab setup cell's install line: the package from the same ref as the notebook.
INSTALL_LINE = '    %pip install --quiet "dl4rs-course @ git+{REPOSITORY_URL}@{COURSE_REF}"'


def tags(cell: nbformat.NotebookNode) -> list[str]:
    """The cell's tags (empty when it has none)."""
    return list(cell.metadata.get("tags", []))


def solution_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """The notebook's solution cells (code cells tagged ``solution``), in order."""
    return [c for c in nb.cells if c.cell_type == "code" and SOLUTION_TAG in tags(c)]


def exercise_titles(nb: nbformat.NotebookNode) -> dict[int, str]:
    """Exercise number -> short title, from the "**Exercise N (title).**" lines of the markdown cells."""
    titles = {}
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for match in EXERCISE_TITLE.finditer(cell.source):
                titles[int(match.group(1))] = match.group(2).strip(" .:—–-()")
    return titles


def student_stub(solution: str, titles: dict[int, str]) -> str:
    """The code a student sees instead of ``solution``: the exercise's name, its hint if any, and a ``raise``."""
    number = int(SOLUTION_LINE.match(solution).group(1))
    name = f"Exercise {number}" + (f" ({titles[number]})" if titles.get(number) else "")
    hints = [line.strip() for line in solution.splitlines() if line.strip().startswith("# Hint:")]
    return "\n".join([
        f"# {name}: your code here.",
        *hints,
        "# Delete the `raise` line when you start.",
        f'raise NotImplementedError("Exercise {number} is yours to solve: replace this line with your code.")',
    ])


def student_version(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """A copy of the notebook with every solution replaced by a stub; outputs stripped, links to the copy."""
    student = copy.deepcopy(nb)
    strip(student)
    titles = exercise_titles(student)
    for cell in student.cells:
        if SOLUTION_TAG in tags(cell) and cell.cell_type == "code":
            cell.source = student_stub(cell.source, titles)
            cell.metadata["tags"] = [t for t in tags(cell) if t != SOLUTION_TAG] + ["exercise", "raises-exception"]
        elif cell.cell_type == "markdown" and cell.source.strip() == "### Solutions":
            cell.source = (
                "### Your solutions\n\nOne cell per exercise: replace its `raise` line with your code. "
                f"The worked solutions are in the course version of this notebook, `notebooks/{name}`."
            )
        elif cell.cell_type == "markdown":
            cell.source = cell.source.replace(
                links(name), links(name, "notebooks/student") + " · *student version: exercises without solutions*"
            )
    return student


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
    """Point the notebook's links and install line at REPOSITORY_URL and COURSE_REF, in place."""
    for cell in nb.cells:
        lines = cell.source.split("\n")
        for i, line in enumerate(lines):
            if cell.cell_type == "markdown" and line.startswith("[Open in Colab]"):
                lines[i] = links(name)
            elif cell.cell_type == "code" and line.startswith("REPOSITORY_URL = "):
                lines[i] = f'REPOSITORY_URL = "{REPOSITORY_URL}"'
                if i + 1 >= len(lines) or not lines[i + 1].startswith("COURSE_REF = "):
                    lines.insert(i + 1, "")
                lines[i + 1] = f'COURSE_REF = "{COURSE_REF}"'
            elif cell.cell_type == "code" and line.lstrip().startswith("%pip install") and "git+{REPOSITORY_" in line:
                lines[i] = INSTALL_LINE
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
    if f'REPOSITORY_URL = "{REPOSITORY_URL}"\nCOURSE_REF = "{COURSE_REF}"' not in text or INSTALL_LINE not in text:
        found.append("the setup cell's REPOSITORY_URL, COURSE_REF or install line is missing or stale: "
                     "run `python tools/notebooks.py sync`")  # fmt: skip
    if not any(re.search(r'setup_notebook\(\s*"' + re.escape(Path(name).stem) + '"', c.source) for c in nb.cells):
        found.append(f'no setup_notebook("{Path(name).stem}") call')
    return found + exercise_problems(nb) + typed_results(nb)


def typed_results(nb: nbformat.NotebookNode) -> list[str]:
    """Measured numbers typed into a markdown cell right after a result (code) cell, without a citation.

    Such numbers go wrong at another seed, mode or dataset; print them from the results instead, or
    phrase the question ("does the U-Net beat the forest?") and let the claim's verdict answer it.
    Math (``$...$``), inline code and link targets are not prose and are skipped.
    """
    found = []
    for index, cell in enumerate(nb.cells[1:], 1):
        if cell.cell_type != "markdown" or nb.cells[index - 1].cell_type != "code":
            continue
        prose = re.sub(r"\$\$.*?\$\$|\$[^$\n]*\$|`[^`\n]*`|\]\([^)]*\)", " ", cell.source, flags=re.S)
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", prose.replace("\n", " ")):
            measured = [m for m in DECIMAL.finditer(sentence) if not SETTING_BEFORE.search(sentence[: m.start()])]
            if measured and METRIC.search(sentence) and not CITATION.search(sentence):
                found.append(f"markdown cell {index} types a measured number after a result cell: "
                             f"{sentence.strip()[:100]!r}; print it from the results, or cite its source")  # fmt: skip
    return found


def exercise_problems(nb: nbformat.NotebookNode) -> list[str]:
    """What breaks the exercise convention: too few solution cells, a bad first line, missing headings."""
    found = []
    solutions = solution_cells(nb)
    if len(solutions) < MIN_EXERCISES:
        found.append(
            f"needs at least {MIN_EXERCISES} exercises with a solution cell tagged '{SOLUTION_TAG}', "
            f"has {len(solutions)}"
        )
    for cell in solutions:
        if not SOLUTION_LINE.match(cell.source):
            first = cell.source.splitlines()[0] if cell.source else ""
            found.append(f"a solution cell must start with '# Exercise N: ...', this one starts with {first!r}")
    headings = {c.source.splitlines()[0].strip() for c in nb.cells if c.cell_type == "markdown" and c.source}
    if solutions and not {"## Exercises", "### Solutions"} <= headings:
        found.append("the solutions must follow a '## Exercises' and a '### Solutions' markdown cell")
    return found


def write_if_changed(nb: nbformat.NotebookNode, path: Path) -> bool:
    """Write ``nb`` to ``path`` atomically unless the file already holds exactly that; True if written."""
    text = nbformat.writes(nb) + "\n"  # as nbformat.write ends the file
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return True


def render_html(path: Path) -> Path:
    """Render one notebook to build/html/, from its executed copy in build/executed/ when there is one."""
    from nbconvert import HTMLExporter

    executed = EXECUTED / path.name
    source = executed if executed.is_file() and path.parent == NOTEBOOKS else path
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(source, as_version=4))
    target = HTML / path.relative_to(NOTEBOOKS).with_suffix(".html")
    with atomic_path(target) as tmp:
        tmp.write_text(body, encoding="utf-8")
    print(f"html: {target.relative_to(ROOT)} (from {source.relative_to(ROOT)})")
    return target


def main(command: str, names: list[str]) -> int:
    paths = [NOTEBOOKS / Path(name).name for name in names] if names else course_notebooks()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    failures = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if command == "student":
            if write_if_changed(student_version(nb, path.name), STUDENT / path.name):
                print(f"student: {(STUDENT / path.name).relative_to(ROOT)}")
        elif command == "html":
            render_html(path)
            if (STUDENT / path.name).is_file():
                render_html(STUDENT / path.name)
        elif command in ("strip", "sync"):
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
    if len(sys.argv) < 2 or sys.argv[1] not in ("strip", "sync", "check", "student", "html"):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
