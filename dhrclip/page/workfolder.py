"""The inspection page's work folder: a temporary folder that holds the uploads and results of one
running server, removed when the server stops, and by the next server to start when it was
killed before it could remove it (``kill -9``, a power cut).

A server holds an exclusive lock on a file in its folder for as long as it runs; the system drops
the lock when the process ends, however it ends. A folder whose lock can be taken is abandoned.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO

try:
    import fcntl
except ImportError:  # not POSIX: folders are still removed on a normal stop, but not found abandoned
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

PREFIX = "dhrclip-app-"
LOCK = ".owner.lock"


def _locked(handle: IO[bytes]) -> bool:
    """Take the exclusive lock of an open file without waiting; False when another process holds it."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def remove_abandoned(parent: Path) -> int:
    """Remove the work folders under ``parent`` whose server is gone; returns how many. A folder
    without a lock file (being made, or of an older release) is left alone."""
    removed = 0
    for folder in parent.glob(f"{PREFIX}*"):
        try:
            with open(folder / LOCK, "rb") as handle:
                if not _locked(handle):
                    continue
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        except OSError:  # no lock file, or not ours to read
            continue
    return removed


class WorkFolder:
    """A context manager: a new locked work folder under the system's temporary folder, after
    removing abandoned ones; on exit the lock is released and the folder removed."""

    def __init__(self, parent: Path | None = None) -> None:
        self.parent = Path(parent or tempfile.gettempdir())
        self.path = Path()
        self._lock: IO[bytes] | None = None

    def __enter__(self) -> Path:
        if removed := remove_abandoned(self.parent):
            log.info("removed %d work folder(s) that stopped servers left in %s", removed, self.parent)
        self.path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=self.parent))
        # locked under a temporary name, then renamed: a folder with the lock file is always locked
        pending = self.path / f"{LOCK}.new"
        self._lock = open(pending, "wb")
        _locked(self._lock)
        pending.rename(self.path / LOCK)
        return self.path

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 trace: TracebackType | None) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.close()
