"""The download registry without internet: files are served by an HTTP server on 127.0.0.1 inside the test."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from course_utils.data import download as dl


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files[name]``; honours ``Range: bytes=N-``; drops the connection after ``server.cut`` bytes.

    With ``server.delay`` set, the body goes out in 256 KiB pieces, ``delay`` seconds apart.
    """

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        data = self.server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        start = 0
        if self.server.ranges and (header := self.headers.get("Range")):
            start = int(header.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_error(416)
                return
        self.server.requests.append((self.path, start))
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut is not None:
            self.wfile.write(body[: self.server.cut])
            self.server.cut = None  # only the first transfer breaks off
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.server.delay:
            for offset in range(0, len(body), 1 << 18):
                self.wfile.write(body[offset : offset + (1 << 18)])
                self.wfile.flush()
                time.sleep(self.server.delay)
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    """A local file server (``server.files``: name -> bytes) on a free port."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.files, httpd.requests, httpd.cut, httpd.ranges, httpd.delay = {}, [], None, True, 0.0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def registry(
    server: http.server.ThreadingHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, dl.RemoteFile]:
    """An empty test registry, with the mirror pointing at the local server and a fresh data cache."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(dl.MIRROR_ENV, f"http://127.0.0.1:{server.server_port}/")
    entries: dict[str, dl.RemoteFile] = {}
    monkeypatch.setattr(dl, "REGISTRY", entries)
    return entries


def register(registry: dict, server, name: str, data: bytes, filename: str, md5: str | None = None) -> None:
    """Serve ``data`` as ``filename`` and register it (with its true MD5 unless ``md5`` is given)."""
    server.files[filename] = data
    registry[name] = dl.RemoteFile(
        filename=filename,
        url=f"https://example.invalid/{filename}",
        md5=md5 or hashlib.md5(data).hexdigest(),
        size=len(data),
        licence="test",
        citation="test",
        source="test",
    )


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


def listing(folder: Path) -> list[str]:
    """The names in ``folder``, less the ``.locks`` folder that every download leaves."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".locks")


def test_download_verifies_caches_and_shows_progress(registry, server, capsys) -> None:
    register(registry, server, "blob", PAYLOAD, "blob.bin")
    path = dl.download("blob")
    assert path == dl.downloads_dir() / "blob.bin"
    assert path.read_bytes() == PAYLOAD
    assert "blob.bin" in capsys.readouterr().err  # tqdm writes its bar to stderr
    assert not list(path.parent.glob("*.part"))
    dl.download("blob")  # cached: no second request
    assert len(server.requests) == 1


def test_broken_download_keeps_the_part_and_resumes_with_range(registry, server) -> None:
    register(registry, server, "blob", PAYLOAD, "blob.bin")
    server.cut = 300_000
    with pytest.raises(ConnectionError, match="run it again to resume"):
        dl.download("blob", progress=False)
    part = dl.downloads_dir() / "blob.bin.part"
    assert part.stat().st_size == 300_000
    assert not (dl.downloads_dir() / "blob.bin").exists()
    path = dl.download("blob", progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/blob.bin", 300_000)  # the second request asked only for the rest
    assert not part.exists()


def test_server_without_range_support_restarts_the_download(registry, server) -> None:
    register(registry, server, "blob", PAYLOAD, "blob.bin")
    server.ranges = False
    (dl.downloads_dir()).mkdir(parents=True)
    (dl.downloads_dir() / "blob.bin.part").write_bytes(b"stale bytes from another file")
    assert dl.download("blob", progress=False).read_bytes() == PAYLOAD


def test_complete_part_file_is_verified_without_downloading_again(registry, server) -> None:
    register(registry, server, "blob", PAYLOAD, "blob.bin")
    dl.downloads_dir().mkdir(parents=True)
    (dl.downloads_dir() / "blob.bin.part").write_bytes(PAYLOAD)
    assert dl.download("blob", progress=False).read_bytes() == PAYLOAD  # the server answered 416


def test_checksum_mismatch_deletes_the_file(registry, server) -> None:
    register(registry, server, "blob", PAYLOAD, "blob.bin", md5="0" * 32)
    with pytest.raises(ValueError, match="damaged and was deleted.*MD5"):
        dl.download("blob", progress=False)
    assert listing(dl.downloads_dir()) == []


def test_offline_error_names_the_generated_alternative(registry, monkeypatch) -> None:
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(dl.MIRROR_ENV, f"http://127.0.0.1:{port}")
    registry["blob"] = dl.RemoteFile("blob.bin", "https://example.invalid/blob.bin", "0" * 32, None, "", "", "")
    with pytest.raises(ConnectionError, match='DATASET = "generated"'):
        dl.download("blob", progress=False)
    assert listing(dl.downloads_dir()) == []


def test_two_downloads_of_one_file_share_it(registry, server) -> None:
    data = PAYLOAD * 3
    register(registry, server, "blob", data, "blob.bin")
    registry["blob"] = dataclasses.replace(registry["blob"], md5=None, size=None)  # unchecked, like BreizhCrops
    server.delay = 0.05
    part = dl.downloads_dir() / "blob.bin.part"
    results, errors = [], []

    def fetch_blob() -> None:
        try:
            results.append(dl.download("blob", progress=False))
        except Exception as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=fetch_blob) for _ in range(2)]
    threads[0].start()
    deadline = time.monotonic() + 30
    while not (part.is_file() and part.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.01)  # the second starts while the first is half way
    threads[1].start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and results == [dl.downloads_dir() / "blob.bin"] * 2
    assert results[0].read_bytes() == data
    assert len(server.requests) == 1  # the second waited and reused the first one's file


def test_full_disk_says_so_and_names_course_data_dir(registry, server, monkeypatch) -> None:
    register(registry, server, "blob", PAYLOAD, "blob.bin")

    class FullDisk:
        """A file whose every write fails as on a full disk."""

        def __init__(self, path: Path, mode: str) -> None:
            self.handle = open(path, mode)  # closed by __exit__

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, block: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dl, "open", FullDisk, raising=False)
    with pytest.raises(OSError, match=r"no space left on device in the data cache .*COURSE_DATA_DIR") as caught:
        dl.download("blob", progress=False)
    assert not isinstance(caught.value, ConnectionError) and str(dl.downloads_dir().parent) in str(caught.value)


def test_unknown_name_lists_the_registry(registry) -> None:
    registry["ftw-austria"] = dl.RemoteFile("a.zip", "https://example.invalid/a.zip", "0" * 32, None, "", "", "")
    with pytest.raises(ValueError, match="ftw-austria"):
        dl.download("ftw-nowhere")


def test_fetch_extracts_zip_and_tar_once(registry, server) -> None:
    register(registry, server, "zipped", zip_bytes({"a/one.txt": b"1", "two.txt": b"22"}), "zipped.zip")
    folder = dl.fetch("zipped", progress=False)
    assert (folder / "a" / "one.txt").read_bytes() == b"1" and (folder / "two.txt").read_bytes() == b"22"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("x/three.txt")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"333"))
    register(registry, server, "tarred", buffer.getvalue(), "tarred.tar.gz")
    assert (dl.fetch("tarred", progress=False) / "x" / "three.txt").read_bytes() == b"333"
    assert dl.fetch("zipped", progress=False) == folder and len(server.requests) == 2


def test_path_traversal_is_refused_and_nothing_is_extracted(registry, server, tmp_path) -> None:
    register(registry, server, "evil", zip_bytes({"ok.txt": b"1", "../escaped.txt": b"2"}), "evil.zip")
    with pytest.raises(ValueError, match="outside its folder"):
        dl.fetch("evil", progress=False)
    assert not (dl.downloads_dir().parent / "escaped.txt").exists()
    assert listing(dl.downloads_dir()) == ["evil.zip"]


def test_truncated_archive_gives_a_clear_error_and_no_folder(registry, server) -> None:
    archive = zip_bytes({f"file{i}.txt": bytes(1000) for i in range(5)})
    register(registry, server, "cut", archive[: len(archive) // 2], "cut.zip")  # published broken: MD5 matches
    with pytest.raises(ValueError, match="cut.zip is damaged.*download it again"):
        dl.fetch("cut", progress=False)
    assert listing(dl.downloads_dir()) == ["cut.zip"]


def test_registry_entries_are_pinned_and_cited() -> None:
    assert {"ftw-austria", "eurosat100", "eurosat100-train"} <= set(dl.REGISTRY)
    for name, item in dl.REGISTRY.items():
        assert item.url.startswith("https://"), name
        if item.md5 is None:  # BreizhCrops publishes no checksum: its loader checks the published size and layout
            assert name.startswith("breizhcrops-"), name
        else:
            assert len(item.md5) == 32 and int(item.md5, 16) >= 0, name
        assert item.licence and item.citation and item.source, name
    assert "06fd1b090bceecc0ce724cd21578ba7a6664fe8d" in dl.REGISTRY["eurosat100"].url  # a commit, not "main"


def test_mirror_replaces_the_origin(monkeypatch) -> None:
    item = dl.REGISTRY["ftw-austria"]
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)
    assert dl.source_url(item) == item.url
    monkeypatch.setenv(dl.MIRROR_ENV, "https://mirror.example.org/dl4rs/")
    assert dl.source_url(item) == "https://mirror.example.org/dl4rs/ftw-austria.zip"
