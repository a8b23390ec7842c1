"""atomic_path: the whole file or nothing, ordinary permissions, and nothing left for long by a killed writer."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from course_utils import files
from course_utils.files import atomic_path


def test_success_renames_into_place_with_the_umask_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("done")
    assert target.read_text() == "done"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert list(target.parent.iterdir()) == [target]


def test_error_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


WRITER = """
import sys, time
from course_utils.files import atomic_path, stop_cleanly_on_sigterm
if sys.argv[2] == "sigterm":
    stop_cleanly_on_sigterm()
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half")
    print(tmp, flush=True)
    time.sleep(60)
"""


def killed_writer(target: Path, how: signal.Signals) -> Path:
    """Start a process writing ``target`` through atomic_path, kill it mid-write; return its temporary."""
    option = "sigterm" if how == signal.SIGTERM else "plain"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), option], stdout=subprocess.PIPE, text=True)
    temporary = Path(writer.stdout.readline().strip())
    assert temporary.is_file()
    writer.send_signal(how)
    writer.wait(timeout=30)
    return temporary


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "run.pt"
    temporary = killed_writer(target, signal.SIGKILL)
    assert temporary.is_file()  # SIGKILL runs no cleanup
    neighbour = tmp_path / ".run-x-123-abcdefgh.pt"  # another target's name: not ours to touch
    neighbour.write_text("other")
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert sorted(tmp_path.iterdir()) == sorted([target, neighbour])


def test_a_live_writers_temporary_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with atomic_path(target) as outer:  # this process is alive: its temporary is not stale
        with atomic_path(target) as inner:
            inner.write_text("inner")
        assert outer.is_file()
        outer.write_text("outer")
    assert target.read_text() == "outer" and list(tmp_path.iterdir()) == [target]


def test_sigterm_cleans_up_like_ctrl_c(tmp_path: Path) -> None:
    temporary = killed_writer(tmp_path / "scene.tif", signal.SIGTERM)
    assert not temporary.exists() and list(tmp_path.iterdir()) == []


def test_a_full_disk_is_called_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(OSError, match="no space left on device.*COURSE_DATA_DIR") as caught:
        with atomic_path(tmp_path / "model.pt") as tmp:
            tmp.write_bytes(b"x")
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")  # torch.save
    assert caught.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []


def test_sigterm_stops_a_writer_whose_parent_blocked_it(tmp_path: Path) -> None:
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the child inherits the mask
    try:
        temporary = killed_writer(tmp_path / "scene.tif", signal.SIGTERM)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    assert not temporary.exists() and list(tmp_path.iterdir()) == []
