"""Writing files so that a reader never sees half of one, and a killed writer leaves nothing behind for long."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

#: Below this much free space, a failed write is reported as a full disk whatever the library called it
#: (``torch.save`` says ``enforce fail at inline_container.cc``, GDAL ``Write error``).
FULL_DISK_BYTES = 1 << 20


def _temporary_pattern(path: Path) -> re.Pattern[str]:
    """Names :func:`atomic_path` gives the temporaries of ``path``: ``.<stem>-<pid>-<random><suffix>``."""
    return re.compile(rf"\.{re.escape(path.stem)}-(\d+)-[a-z0-9_]+{re.escape(path.suffix or '.tmp')}")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of ``path`` whose writing process is gone (killed by SIGKILL, a crash, a reboot).

    Temporaries of processes still running are kept: they may be writing ``path`` right now.

    Returns:
        The files removed.
    """
    path = Path(path)
    pattern, removed = _temporary_pattern(path), []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        match = pattern.fullmatch(candidate.name)
        if match and not psutil.pid_exists(int(match.group(1))):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _disk_is_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        return False


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``: write there; it is renamed to ``path`` on success, removed on error.

    ``with atomic_path("out.tif") as tmp: write(tmp)`` leaves either the complete new file or nothing
    (the old file, if any, stays until the rename replaces it). A process killed mid-write cannot remove its
    temporary; the next write of the same ``path`` does (:func:`remove_stale_temporaries`).

    Raises:
        OSError: ``ENOSPC`` naming the folder when the write failed on a full disk.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-{os.getpid()}-", suffix=path.suffix or ".tmp")
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private (0600); give it an ordinary file's mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        full = isinstance(error, Exception) and (
            getattr(error, "errno", None) == errno.ENOSPC or _disk_is_full(path.parent)
        )
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise OSError(
                errno.ENOSPC, f"no space left on device while writing {path}; free some space in {path.parent} "
                "or point COURSE_DATA_DIR / COURSE_CHECKPOINT_DIR / COURSE_RESULTS_DIR at a larger disk"
            ) from error  # fmt: skip
        raise


def raise_keyboard_interrupt(signum: int, frame: object) -> None:
    """A signal handler that stops the process as Ctrl-C does (``finally`` blocks run)."""
    raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")


def stop_cleanly_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a closed terminal's session manager, a job scheduler) stop this process as Ctrl-C
    does, so ``finally`` blocks and :func:`atomic_path` clean up. Call it from a command-line entry point.

    SIGTERM is also unblocked: a process inherits its parent's blocked signals, and a parent that was spawning a
    helper at the time (loky's resource tracker blocks SIGINT and SIGTERM while it does) would leave it pending."""
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
