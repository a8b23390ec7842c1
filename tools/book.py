"""Build the course as a static website that works offline: ``build/book/``.

    python tools/book.py [--out DIR]    # or: make book

Pages come from the executed notebooks in build/executed/ (written by ``make course``, i.e. the ``lite`` run on
a laptop); a notebook that has no executed copy is rendered without outputs, with a note on its page saying so.
The index holds the agenda (README.md's "## Agenda" table), the results table with the claims held per
notebook (results/*.json), the Colab/Binder links and the student versions (notebooks/student/, rendered
without outputs: they are for running). Each page links to the previous and the next notebook.

Images are embedded in the pages as data URIs: outputs by nbconvert, image files a markdown cell shows
(``../figures/x.png``) by :func:`embed_images`. Math is rendered by a local copy of MathJax 3 in
build/book/mathjax/, and nothing else is fetched either: the site reads the same offline. The copy comes from
the npm registry once per checkout (``npm pack mathjax@3.2.2``, checked against its sha512, unpacked into
build/mathjax/), so Node's ``npm`` is needed at build time only (Debian: ``apt-get install npm``). Without npm,
set ``MATHJAX_DIR`` to the ``es5`` folder of an unpacked ``mathjax`` 3 package.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import importlib.util
import mimetypes
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from jinja2 import DictLoader

from course_utils.report import claims_held, load_results

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("course_notebooks_tool", ROOT / "tools" / "notebooks.py")
notebooks_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(notebooks_tool)  # tools/notebooks.py: the course's notebook list and Colab/Binder links
links = notebooks_tool.links

BOOK = ROOT / "build" / "book"
README = ROOT / "README.md"
MATHJAX_VERSION = "3.2.2"
MATHJAX_SHA512 = "Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="  # npm's
MATHJAX_CACHE = ROOT / "build" / "mathjax" / MATHJAX_VERSION
MATHJAX_SCRIPT = "tex-chtml-full.js"
MARKDOWN_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
NOTEBOOK_HREF = re.compile(r'href="(?:\./)?(\d\d_\w+)\.ipynb(#[^"]*)?"')
IMAGE_SRC = re.compile(r'(<img\b[^>]*?\bsrc=")([^"]+)(")')

# The lab template without anything it would fetch from the web (require.js, mermaid, MathJax from a CDN),
# with MathJax 3 from the local copy and a navigation bar above and below the notebook.
PAGE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
<script>
window.MathJax = {
  tex: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]], displayMath: [["$$", "$$"], ["\\\\[", "\\\\]"]],
        processEscapes: true, processEnvironments: true, tags: "ams"},
};
</script>
<script defer src="{{ resources.mathjax_url }}"></script>
<style>{{ resources.book_css }}</style>
{%- endblock html_head_js_mathjax -%}
{%- block body_header -%}
{{ super() }}
{{ resources.book_nav }}{{ resources.book_banner }}
{%- endblock body_header -%}
{%- block body_footer -%}
{{ resources.book_nav }}
{{ super() }}
{%- endblock body_footer -%}
"""

CSS = """
nav.book { display: flex; justify-content: space-between; gap: 1em; max-width: 1100px; margin: 0.8em auto;
  padding: 0.5em 1em; font: 15px system-ui, sans-serif; border: 1px solid #ddd; border-radius: 6px; }
nav.book a { color: #0645ad; text-decoration: none; } nav.book span { min-width: 12em; }
.book-note { max-width: 1100px; margin: 0.5em auto; padding: 0.6em 1em; font: 14px system-ui, sans-serif;
  background: #fff6d6; border: 1px solid #e8d48b; border-radius: 6px; }
"""

INDEX_CSS = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; width: 100%; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 0.35em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } code { background: #f4f4f4; padding: 0 0.2em; }
.holds { color: #176317; } .reversed { color: #a11; } .inconclusive { color: #8a6200; }
"""


@dataclass(frozen=True)
class Page:
    """One notebook of the site: where it comes from and where its page goes."""

    name: str  # "00_welcome"
    source: Path  # the notebook rendered: the executed copy when there is one
    folder: Path  # where the course notebook lies: its markdown's relative image paths start there
    executed: bool
    href: str  # the page, relative to the site's root: "00_welcome.html" or "student/00_welcome.html"
    title: str


def mathjax_dir() -> Path:
    """The ``es5`` folder of a local MathJax 3: ``MATHJAX_DIR``, else build/mathjax/, fetched with npm if missing."""
    if os.environ.get("MATHJAX_DIR"):
        folder = Path(os.environ["MATHJAX_DIR"])
        if not (folder / MATHJAX_SCRIPT).is_file():
            raise SystemExit(f"MATHJAX_DIR={folder} has no {MATHJAX_SCRIPT}: give the es5 folder of mathjax 3")
        return folder
    folder = MATHJAX_CACHE / "es5"
    if (folder / MATHJAX_SCRIPT).is_file():
        return folder
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("book: npm is needed once to fetch MathJax (Debian: apt-get install npm), "
                         "or set MATHJAX_DIR to the es5 folder of an unpacked mathjax 3 package")  # fmt: skip
    MATHJAX_CACHE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=MATHJAX_CACHE.parent) as tmp:
        fetch = [npm, "pack", "--silent", f"mathjax@{MATHJAX_VERSION}", "--pack-destination", tmp]
        if subprocess.run(fetch, stdout=subprocess.DEVNULL).returncode != 0:
            raise SystemExit(f"book: `npm pack mathjax@{MATHJAX_VERSION}` failed (is the npm registry reachable?); "
                             "or set MATHJAX_DIR to the es5 folder of an unpacked mathjax 3 package")  # fmt: skip
        unpacked, tgz = Path(tmp) / "unpacked", Path(tmp) / f"mathjax-{MATHJAX_VERSION}.tgz"
        if base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode() != MATHJAX_SHA512:
            raise SystemExit(f"book: {tgz.name} from npm does not match its recorded sha512: not used")
        with tarfile.open(tgz) as tar:
            for member in tar.getmembers():  # only the regular files of package/es5/ and the licence
                wanted = member.name.startswith("package/es5/") or member.name == "package/LICENSE"
                if member.isfile() and wanted and ".." not in member.name:
                    target = unpacked / member.name.removeprefix("package/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())
        shutil.rmtree(MATHJAX_CACHE, ignore_errors=True)
        unpacked.rename(MATHJAX_CACHE)
    print(f"book: MathJax {MATHJAX_VERSION} fetched with npm into {MATHJAX_CACHE}")
    return folder


def agenda(readme: Path) -> list[dict[str, str]]:
    """The rows of README's "## Agenda" table: ``{"slot", "notebook", "topics"}`` (notebook without backticks)."""
    section = readme.read_text(encoding="utf-8").split("\n## Agenda", 1)[-1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return [
        {"slot": slot.strip(), "notebook": notebook.strip().strip("`"), "topics": topics.strip()}
        for slot, notebook, topics, *_ in rows[2:]  # below the header and the --- line
    ]


def inline_markdown(text: str) -> str:
    """HTML for a line of markdown with only links and code spans, the rest escaped."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return MARKDOWN_LINK.sub(lambda m: f'<a href="{html.escape(m.group(2))}">{m.group(1)}</a>', out)


def title_of(nb: nbformat.NotebookNode, name: str) -> str:
    """The notebook's first ``# `` heading, or its name."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return name


def nav_bar(pages: Sequence[Page], i: int, home: str, extra: str = "") -> str:
    """Previous · index · next links for page ``i`` of ``pages`` (hrefs relative to that page's folder)."""
    here = Path(pages[i].href).parent

    def link(page: Page, text: str) -> str:
        href = os.path.relpath(page.href, here)
        return f'<a href="{href}">{text} {html.escape(page.title)}</a>'

    previous = link(pages[i - 1], "←") if i > 0 else ""
    following = link(pages[i + 1], "→") if i + 1 < len(pages) else ""
    return (f'<nav class="book"><span>{previous}</span><span><a href="{home}">Course index</a>{extra}</span>'
            f'<span style="text-align:right">{following}</span></nav>')  # fmt: skip


def embed_images(body: str, folder: Path, root: Path, page: str) -> str:
    """``body`` with each image file it references (``figures/x.png`` from markdown) as a data URI.

    Paths are relative to ``folder`` and must stay inside ``root``; an image not found is reported and left as is.
    """

    def embed(match: re.Match[str]) -> str:
        src = html.unescape(match.group(2))
        if re.match(r"[a-z][a-z0-9+.-]*:", src, re.I):  # data:, https:, attachment: ...
            return match.group(0)
        path = (folder / urllib.parse.unquote(src.split("#")[0].split("?")[0])).resolve()
        if not path.is_file() or not path.is_relative_to(root.resolve()):
            print(f"book: WARNING {page}: image {src!r} not found under {root}: left as a link", file=sys.stderr)
            return match.group(0)
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return f"{match.group(1)}data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}{match.group(3)}"

    return IMAGE_SRC.sub(embed, body)


def render_page(page: Page, nav: str, banner: str, mathjax_url: str, root: Path, hrefs: dict[str, str]) -> str:
    """The HTML of one notebook page: images embedded, links to other notebooks pointing at their pages.

    ``hrefs``: notebook name -> its page for this one (relative to the site's root), e.g. a student version's
    link to ``01_mlp_basics.ipynb`` goes to the student page when there is one, else to the course page.
    """
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        template_name="lab", extra_loaders=[DictLoader({"book.html.j2": PAGE_TEMPLATE})], template_file="book.html.j2",
        mathjax_url=mathjax_url,
    )  # fmt: skip
    resources: dict[str, Any] = {
        "metadata": {"name": page.name, "path": str(page.folder)},
        "book_nav": nav, "book_banner": banner, "book_css": CSS,
    }  # fmt: skip
    body, _ = exporter.from_notebook_node(nbformat.read(page.source, as_version=4), resources=resources)
    body = embed_images(body, page.folder, root, page.href)

    def link(match: re.Match[str]) -> str:
        if match.group(1) not in hrefs:
            return match.group(0)
        return f'href="{os.path.relpath(hrefs[match.group(1)], Path(page.href).parent)}{match.group(2) or ""}"'

    return NOTEBOOK_HREF.sub(link, body)


def results_section(records: list[dict[str, Any]]) -> str:
    """The results table (claims held per notebook) and each notebook's claims with their verdicts."""
    if not records:
        return "<p>No results yet: <code>make course</code> writes them to <code>results/</code>.</p>"
    rows, claims = [], []
    for r in records:
        held, total = claims_held(r.get("claims", []))
        cells = (r["notebook"], r["mode"], r["device"], r.get("seed", ""), f"{r['seconds'] / 60:.1f}",
                 r.get("peak_ram_mib", ""), f"{held}/{total}" if total else "none", r["headline"])  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
        for c in r.get("claims", []):
            low, high = c["ci"]
            claims.append(f'<li><b>{html.escape(r["notebook"])}</b>: <span class="{c["verdict"]}">[{c["verdict"]}]'
                          f'</span> {html.escape(c["statement"])} (effect {c["effect"]:+.3f}, 95 % interval '
                          f"[{low:+.3f}, {high:+.3f}])</li>")  # fmt: skip
    header = ("notebook", "mode", "device", "seed", "minutes", "peak RAM (MiB)", "claims held", "headline result")
    table = ("<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" + "".join(rows) + "</table>")
    return table + (f"<h3>Claims</h3><ul>{''.join(claims)}</ul>" if claims else "")


def index_page(title: str, rows: list[dict[str, str]], pages: dict[str, Page], students: dict[str, Page],
               records: list[dict[str, Any]], notes: list[str]) -> str:  # fmt: skip
    """The site's index: agenda with links, results table and claims."""
    body = []
    listed = [r["notebook"] for r in rows]
    for row in rows + [{"slot": "", "notebook": n, "topics": ""} for n in pages if n not in listed]:
        name = row["notebook"]
        page, student = pages.get(name), students.get(name)
        notebook = f'<a href="{page.href}">{html.escape(page.title)}</a>' if page else html.escape(name)
        run = inline_markdown(links(f"{name}.ipynb")) if page else ""
        stud = (f'<a href="{student.href}">read</a> · '
                + inline_markdown(links(f"{name}.ipynb", "notebooks/student"))) if student else ""  # fmt: skip
        body.append(f"<tr><td>{html.escape(row['slot'])}</td><td>{notebook}</td><td>{inline_markdown(row['topics'])}"
                    f"</td><td>{run}</td><td>{stud}</td></tr>")  # fmt: skip
    note = "".join(f'<p class="book-note">{n}</p>' for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{INDEX_CSS}{CSS}</style></head>
<body><h1>{html.escape(title)}</h1>{note}
<p>Each notebook below is shown with the outputs of a run of the course; open it in Colab or Binder to run it
yourself, or take its student version (the exercises without their solutions).</p>
<h2>Agenda</h2>
<table><tr><th>slot</th><th>notebook</th><th>what you learn</th><th>run it</th><th>student version</th></tr>
{"".join(body)}</table>
<h2>Results</h2>
<p>The headline numbers and the claims each notebook measured in the run shown here (<code>results/*.json</code>).
</p>
{results_section(records)}
</body></html>
"""


def banner(page: Page, run: dict[str, Any] | None) -> str:
    """The note at the top of a page: where its outputs come from, or that it has none."""
    if page.href.startswith("student/"):
        return ("<p class='book-note'>Student version: the exercises without their solutions, to run yourself "
                f"({inline_markdown(links(page.name + '.ipynb', 'notebooks/student'))}).</p>")  # fmt: skip
    if not page.executed:
        return ("<p class='book-note'>This notebook has not been executed yet: it is shown without outputs. "
                "Run <code>make course</code>, then <code>make book</code>.</p>")  # fmt: skip
    if run is None:
        return ""
    return (f"<p class='book-note'>Outputs from a <code>{html.escape(run['mode'])}</code> run on "
            f"{html.escape(run['device'])}, seed {run.get('seed', 0)}.</p>")  # fmt: skip


def build(
    out: Path = BOOK, notebooks: Sequence[Path] | None = None, executed: Path = notebooks_tool.EXECUTED,
    student: Path = notebooks_tool.STUDENT, readme: Path = README, results: Path | None = None,
) -> Path:  # fmt: skip
    """Write the site into ``out`` and return its index page.

    ``notebooks``: the course notebooks in order (default: notebooks/NN_*.ipynb); each is rendered from its copy
    in ``executed`` when there is one. ``student``: the folder of the student versions. ``readme``: holds the
    agenda. ``results``: the results folder (default: the course's).
    """
    notebooks = list(notebooks) if notebooks is not None else notebooks_tool.course_notebooks()
    pages, students = [], []
    for path in notebooks:
        copy, title = executed / path.name, title_of(nbformat.read(path, as_version=4), path.stem)
        source = copy if copy.is_file() else path
        pages.append(Page(path.stem, source, path.parent, copy.is_file(), f"{path.stem}.html", title))
        if (student / path.name).is_file():
            href = f"student/{path.stem}.html"  # a copy of the course notebook: its paths start in the same folder
            students.append(Page(path.stem, student / path.name, path.parent, False, href, title))
    notes = []
    missing = [p.name for p in pages if not p.executed]
    if missing:
        notes.append(f"Not executed yet, shown without outputs: {', '.join(missing)}. Run <code>make course</code> "
                     "(it writes the executed copies to build/executed/), then <code>make book</code>.")  # fmt: skip
        print(f"book: NOTE no executed copy in {executed} for {', '.join(missing)}: rendered without outputs; "
              "run `make course` first for pages with outputs", file=sys.stderr)  # fmt: skip

    mathjax = mathjax_dir()
    if out.is_dir() and any(out.iterdir()) and not (out / "mathjax").is_dir():
        raise SystemExit(f"book: {out} is not empty and holds no earlier site: not overwritten")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(mathjax, out / "mathjax")
    if (mathjax.parent / "LICENSE").is_file():  # MathJax is Apache-2.0: its licence goes with the copy
        shutil.copy(mathjax.parent / "LICENSE", out / "mathjax" / "LICENSE")
    records = load_results(results)
    runs = {r["notebook"]: r for r in records}
    has_student = {s.name for s in students}
    course_hrefs = {p.name: p.href for p in pages}
    for group in (pages, students):
        hrefs = course_hrefs | {p.name: p.href for p in group}
        for i, page in enumerate(group):
            up = "../" * page.href.count("/")
            if page.href.startswith("student/"):
                other = f" · <a href='../{page.name}.html'>course version</a>"
            else:
                other = f" · <a href='student/{page.name}.html'>student version</a>" if page.name in has_student else ""
            nav = nav_bar(group, i, f"{up}index.html", other)
            target = out / page.href
            target.parent.mkdir(parents=True, exist_ok=True)
            mathjax_url = f"{up}mathjax/{MATHJAX_SCRIPT}"
            text = render_page(page, nav, banner(page, runs.get(page.name)), mathjax_url, readme.parent, hrefs)
            target.write_text(text, encoding="utf-8")

    lines = readme.read_text(encoding="utf-8").splitlines()
    title = next((line[2:].strip() for line in lines if line.startswith("# ")), "Course")
    index = out / "index.html"
    index.write_text(index_page(title, agenda(readme), {p.name: p for p in pages}, {s.name: s for s in students},
                                records, notes), encoding="utf-8")  # fmt: skip
    print(f"book: {len(pages)} notebooks, {len(students)} student versions -> {index}")
    return index


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the course website (offline) into build/book/.")
    parser.add_argument("--out", type=Path, default=BOOK, help="output folder (default: build/book/)")
    build(parser.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
