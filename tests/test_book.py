"""The course website (tools/book.py): built from a small executed course, then read in headless Chromium.

The browser check drives Chromium through its DevTools protocol (websocket-client, already installed with
Jupyter) and skips, saying why, where Chromium is absent (Debian: ``apt-get install chromium``) or where no
MathJax copy can be had (npm absent and no ``MATHJAX_DIR``). ``BOOK_SHOTS=DIR`` keeps its screenshots there.
"""

from __future__ import annotations

import base64
import functools
import http.server
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parent.parent
EXTERNAL_HOSTS = {"colab.research.google.com", "mybinder.org", "github.com"}  # links to click, never loaded
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def load_book():
    """tools/book.py as a module."""
    spec = importlib.util.spec_from_file_location("course_book_tool", ROOT / "tools" / "book.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


book = load_book()


def png_output() -> nbformat.NotebookNode:
    """A display_data output holding a small matplotlib figure as PNG, as a kernel would record it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2), dpi=60)
    ax.plot([0, 1, 2], [0, 1, 4])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return new_output("display_data", data={"image/png": base64.b64encode(buffer.getvalue()).decode(),
                                            "text/plain": "<Figure size 180x120 with 1 Axes>"})  # fmt: skip


def tiny_course(root: Path) -> dict[str, Any]:
    """Two notebooks (the first executed, the second not), a student version, README agenda, results, a figure."""
    for folder in ("notebooks/student", "executed", "results", "figures"):
        (root / folder).mkdir(parents=True)
    (root / "figures" / "diagram.png").write_bytes(base64.b64decode(png_output().data["image/png"]))
    first = new_notebook(cells=[
        new_markdown_cell("# 00 · Demo: energy\n\n" + book.links("00_demo.ipynb")),
        new_markdown_cell("Einstein's relation\n\n$$E = mc^2$$\n\nholds for every inline $x$ too.\n\n"
                          "![a diagram](../figures/diagram.png)"),  # fmt: skip
        new_code_cell("import matplotlib.pyplot as plt\nplt.plot([0, 1, 2], [0, 1, 4]);"),
        new_markdown_cell("Next: [the second notebook](01_next.ipynb)."),
    ])  # fmt: skip
    second = new_notebook(cells=[new_markdown_cell("# 01 · Next steps\n\nA sum: $\\sum_i x_i^2$."),
                                 new_code_cell("print(1 + 1)")])  # fmt: skip
    nbformat.write(first, root / "notebooks" / "00_demo.ipynb")
    nbformat.write(second, root / "notebooks" / "01_next.ipynb")
    nbformat.write(first, root / "notebooks" / "student" / "00_demo.ipynb")
    executed = nbformat.from_dict(json.loads(nbformat.writes(first)))
    executed.cells[2].outputs = [png_output()]
    executed.cells[2].execution_count = 1
    nbformat.write(executed, root / "executed" / "00_demo.ipynb")
    (root / "README.md").write_text(
        "# Demo course\n\nIntro.\n\n## Agenda\n\n| slot | notebook | what you learn |\n| --- | --- | --- |\n"
        "| Day 1, 09:00–09:45 | `00_demo` | energy, `mc^2` |\n| Day 1, 10:00–11:00 | `01_next` | sums |\n\n"
        "## Modes\n\nsmoke, lite, full\n",
        encoding="utf-8",
    )
    claim = {"id": "a_vs_b", "statement": "A beats B", "effect": 0.1, "ci": [0.05, 0.15], "verdict": "holds",
             "headline": True, "unconverged": False}  # fmt: skip
    record = {"notebook": "00_demo", "mode": "lite", "device": "cpu (2 threads)", "seed": 0, "seconds": 90.0,
              "headline": "A 0.9 vs B 0.8", "metrics": {}, "claims": [claim], "peak_ram_mib": 900}  # fmt: skip
    (root / "results" / "00_demo.json").write_text(json.dumps(record), encoding="utf-8")
    return dict(notebooks=[root / "notebooks" / "00_demo.ipynb", root / "notebooks" / "01_next.ipynb"],
                executed=root / "executed", student=root / "notebooks" / "student", readme=root / "README.md",
                results=root / "results")  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny course built into a site; its folder."""
    root = tmp_path_factory.mktemp("course")
    try:
        book.mathjax_dir()
    except SystemExit as error:
        pytest.skip(f"no local MathJax copy to build the site with: {error}")
    out = root / "book"
    book.build(out, **tiny_course(root))
    return out


def test_agenda_is_read_from_the_readme() -> None:
    rows = book.agenda(ROOT / "README.md")
    assert [r["notebook"] for r in rows] == [p.stem for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
    assert all(r["slot"].startswith("Day ") and r["topics"] for r in rows)


def test_site_layout(site: Path) -> None:
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html") if "mathjax" not in p.parts}
    assert pages == {"index.html", "00_demo.html", "01_next.html", "student/00_demo.html"}
    assert (site / "mathjax" / book.MATHJAX_SCRIPT).is_file()
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "1/1" in index and "A beats B" in index and "Day 1, 09:00–09:45" in index  # results, claims, agenda
    assert "colab.research.google.com" in index and "mybinder.org" in index and 'href="student/00_demo.html"' in index
    assert "Not executed yet" in index and "01_next" in index  # the fallback is said, not hidden
    assert "has not been executed yet" in (site / "01_next.html").read_text(encoding="utf-8")
    first = (site / "00_demo.html").read_text(encoding="utf-8")
    assert 'href="01_next.html"' in first and "01_next.ipynb" not in first
    assert "Outputs from a <code>lite</code> run" in first
    for page in pages:
        text = (site / page).read_text(encoding="utf-8")
        assert "cdnjs" not in text and "cdn.jsdelivr" not in text and "unpkg.com" not in text, page


# --- the browser check -------------------------------------------------------------------------------------


class DevTools:
    """A minimal client of Chromium's DevTools protocol for one page: commands, and the events seen meanwhile."""

    def __init__(self, url: str) -> None:
        import websocket

        self.socket = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run a command and return its result."""
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60) -> dict[str, Any]:
        """Wait for the next event ``method`` not seen yet."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self.socket.recv())
            self.events.append(message)
            if message.get("method") == method:
                return message
        raise TimeoutError(method)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (a promise is awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[str]:
    """The site served on localhost; its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            if not isinstance(sys.exc_info()[1], ConnectionError):  # a browser drops connections it no longer needs
                super().handle_error(request, client_address)

    httpd = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    """Headless Chromium with a fresh profile and background networking off, driven over DevTools."""
    pytest.importorskip("websocket", reason="websocket-client (installed with Jupyter) drives Chromium")
    executable = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if executable is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the site's browser check skipped")
    profile = tmp_path_factory.mktemp("chromium-profile")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "--window-size=1280,1000", "about:blank"]  # fmt: skip
    process = subprocess.Popen([executable, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()) and time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"{executable} exited at start with code {process.returncode}")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            target = next(t for t in json.load(response) if t["type"] == "page")
        tools = DevTools(target["webSocketDebuggerUrl"])
        tools.send("Network.enable")
        tools.send("Page.enable")
        yield tools
        tools.socket.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


# After load: wait for MathJax's typesetting, the images and the fonts, then report what the reader sees.
REPORT = """(async () => {
  if (window.MathJax && MathJax.startup) { await MathJax.startup.promise; }
  await Promise.all([...document.images].map(i => i.decode().catch(() => null)));
  await document.fonts.ready;
  return {
    math: document.querySelectorAll("mjx-container").length,
    displayMath: document.querySelectorAll('mjx-container[display="true"]').length,
    mathErrors: document.querySelectorAll("mjx-merror").length,
    text: document.body.innerText,
    images: [...document.images].map(i => ({src: i.src.slice(0, 60), width: i.naturalWidth})),
    links: [...document.querySelectorAll("a[href]")].map(a => a.href),
    ids: [...document.querySelectorAll("[id]")].map(e => e.id),
    resources: performance.getEntriesByType("resource").map(e => e.name),
    height: document.documentElement.scrollHeight,
  };
})()"""


def visit(browser: DevTools, url: str) -> dict[str, Any]:
    """Load ``url``, wait until it is rendered, and return the page's report."""
    browser.events.clear()
    browser.send("Page.navigate", url=url)
    browser.wait_for("Page.loadEventFired")
    return browser.evaluate(REPORT)


def screenshot(browser: DevTools, path: Path) -> None:
    """A PNG of the page as shown (1280 pixels wide, the window's height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"]))


def test_site_in_headless_chromium(site: Path, server: str, browser: DevTools, tmp_path: Path) -> None:
    shots = Path(os.environ.get("BOOK_SHOTS", tmp_path / "shots"))
    pages = ["index.html", "00_demo.html", "01_next.html", "student/00_demo.html"]
    for page in pages:
        report = visit(browser, server + page)
        requests = [e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"]
        failed = [e["params"] for e in browser.events if e.get("method") == "Network.loadingFailed"]
        assert requests and requests[0] == server + page, requests
        for url in requests + report["resources"]:  # every request the page made, also those that failed
            assert url.startswith((server, "data:", "file:")), f"{page} requested {url}: not local"
        assert not failed, f"{page}: requests failed: {failed}"

        assert "$$" not in report["text"] and "$x$" not in report["text"], f"{page}: raw LaTeX left on the page"
        assert report["mathErrors"] == 0, page
        if page != "index.html":
            assert report["math"] >= 1, f"{page}: MathJax rendered no equation"
        if page in ("00_demo.html", "student/00_demo.html"):
            assert report["displayMath"] == 1 and report["math"] >= 2, report["math"]
        assert all(image["width"] > 0 for image in report["images"]), f"{page}: an image did not load: {report}"
        if page == "00_demo.html":  # the code cell's plot and the markdown's figure, both embedded
            assert len(report["images"]) == 2 and all(i["src"].startswith("data:") for i in report["images"])
            screenshot(browser, shots / "notebook.png")
        if page == "index.html":
            screenshot(browser, shots / "index.png")

        for href in report["links"]:
            parts = urllib.parse.urlsplit(href)
            if href.startswith(server):
                with urllib.request.urlopen(href.split("#")[0], timeout=10) as response:
                    assert response.status == 200, href
                if parts.fragment and href.split("#")[0] == server + page:
                    ids = {parts.fragment, urllib.parse.unquote(parts.fragment)}  # a browser tries both
                    assert ids & set(report["ids"]), f"{page}: no anchor for {href}"
            else:
                assert parts.scheme == "https" and parts.hostname in EXTERNAL_HOSTS, f"{page} links to {href}"
        if page in ("00_demo.html", "01_next.html"):  # previous/next navigation
            assert server + ("01_next.html" if page == "00_demo.html" else "00_demo.html") in report["links"]


def test_a_truncated_results_file_is_skipped_with_a_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mathjax = tmp_path / "es5"
    mathjax.mkdir()
    (mathjax / book.MATHJAX_SCRIPT).write_text("// a stand-in: this test reads the index, not the math")
    monkeypatch.setenv("MATHJAX_DIR", str(mathjax))
    course = tiny_course(tmp_path / "course")
    (course["results"] / "01_next.json").write_text('{"notebook": "01_next", "mode": "li')  # an interrupted copy
    index = book.build(tmp_path / "book", **course).read_text(encoding="utf-8")
    assert "A 0.9 vs B 0.8" in index  # the good record is kept
    assert f"skipped {course['results'] / '01_next.json'}: unreadable or truncated" in capsys.readouterr().err
