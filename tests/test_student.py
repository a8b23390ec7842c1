"""Student notebooks: generated from the course notebooks by `tools/notebooks.py student`, and up to date."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_tool():
    """tools/notebooks.py as a module (tools/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("course_notebooks_tool", ROOT / "tools" / "notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = load_tool()


def exercise_notebook(solutions: list[str]) -> nbformat.NotebookNode:
    """A minimal notebook with an exercise list and the given solution cells."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# 99 · Test\n\n{tool.links('99_test.ipynb')}"),
        nbformat.v4.new_markdown_cell("## Exercises\n\n**Exercise 1 (sizes).** Do it.\n\n**Exercise 2 — edges.** Too."),
        nbformat.v4.new_markdown_cell("### Solutions"),
    ]
    for source in solutions:
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = ["solution"]
        nb.cells.append(cell)
    return nb


def test_committed_student_notebooks_are_up_to_date():
    course = tool.course_notebooks()
    assert course, "no course notebooks found"
    stale = []
    for path in course:
        expected = nbformat.writes(tool.student_version(nbformat.read(path, as_version=4), path.name)) + "\n"
        committed = tool.STUDENT / path.name
        if not committed.is_file() or committed.read_text(encoding="utf-8") != expected:
            stale.append(path.name)
    assert not stale, f"notebooks/student/ is stale for {stale}: run `make student` and commit the result"
    orphans = {p.name for p in tool.STUDENT.glob("*.ipynb")} - {p.name for p in course}
    assert not orphans, f"student notebooks without a course notebook: {sorted(orphans)}; delete them"


def test_student_notebooks_hold_no_solution_code():
    for path in tool.course_notebooks():
        if not (tool.STUDENT / path.name).is_file():
            continue  # reported by the up-to-date test above
        student = nbformat.read(tool.STUDENT / path.name, as_version=4)
        stubs = [c for c in student.cells if "raises-exception" in c.metadata.get("tags", [])]
        assert len(stubs) == len(tool.solution_cells(nbformat.read(path, as_version=4))) >= 3, path.name
        assert not tool.solution_cells(student), f"{path.name}: a solution cell survived"
        assert all("raise NotImplementedError(" in c.source for c in stubs)


def test_stub_raises_with_the_exercise_name_and_keeps_the_hint():
    nb = exercise_notebook([
        "# Exercise 1: the answer is 42.\nanswer = 6 * 7",
        "# Exercise 2: edges need context.\n# Hint: dilate the true edges by one pixel.\nsecret = 1",
    ])
    student = tool.student_version(nb, "99_test.ipynb")
    stubs = [c for c in student.cells if c.cell_type == "code"]
    assert [c.metadata["tags"] for c in stubs] == [["exercise", "raises-exception"]] * 2
    assert "42" not in stubs[0].source and "secret" not in stubs[1].source
    assert "# Hint: dilate the true edges by one pixel." in stubs[1].source
    assert stubs[1].source.startswith("# Exercise 2 (edges): your code here.")
    with pytest.raises(NotImplementedError, match="Exercise 2 is yours to solve"):
        exec(stubs[1].source, {})
    assert "notebooks/student/99_test.ipynb" in student.cells[0].source
    assert "### Your solutions" in student.cells[2].source
    assert nb.cells[3].source.endswith("answer = 6 * 7"), "the course notebook itself must not change"


def test_check_enforces_three_tagged_solutions_with_a_numbered_first_line():
    assert tool.exercise_problems(exercise_notebook(["# Exercise 1: a", "# Exercise 2: b", "# Exercise 3: c"])) == []
    too_few = tool.exercise_problems(exercise_notebook(["# Exercise 1: a", "# Exercise 2: b"]))
    assert any("at least 3 exercises" in p and "has 2" in p for p in too_few)
    unnumbered = tool.exercise_problems(exercise_notebook(["# Exercise 1: a", "# Exercise 2: b", "print('c')"]))
    assert any("must start with '# Exercise N: ...'" in p for p in unnumbered)


def test_write_if_changed_leaves_an_identical_file_alone(tmp_path):
    nb = exercise_notebook(["# Exercise 1: a"])
    target = tmp_path / "student" / "99_test.ipynb"
    assert tool.write_if_changed(nb, target) is True
    assert nbformat.read(target, as_version=4).cells[3].source == "# Exercise 1: a"
    assert tool.write_if_changed(nb, target) is False
    assert list(target.parent.iterdir()) == [target], "no temporary file may be left behind"


def test_check_catches_a_measured_number_typed_after_a_result_cell():
    def after_result(prose: str) -> list[str]:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell("print(score)"), nbformat.v4.new_markdown_cell(prose)]
        return tool.typed_results(nb)

    assert after_result("The U-Net reaches an edge F1 of 0.72, well above the forest.")
    assert after_result("So the mIoU improves\nto 0.61 with augmentation.")  # a sentence over two lines
    assert after_result("Accuracy is 0.91 here.")
    for fine in ("ben-ge reports 77.1 F1 for Sentinel-2 (Si-Mohamed et al., 2025).",  # cited
                 "A match needs IoU above 0.5.",  # a criterion, not a result
                 "Loss with label smoothing 0.1.",  # a setting
                 "The score is $0.5 \\cdot (a + b)$ and `f1 = 0.5` in code.",  # math and code
                 "Compare the two rows: which model has the higher F1?"):  # a question, no number
        assert after_result(fine) == [], fine
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Intro"), nbformat.v4.new_markdown_cell("F1 of 0.72 is typical.")]
    assert tool.typed_results(nb) == []  # not after a result cell
