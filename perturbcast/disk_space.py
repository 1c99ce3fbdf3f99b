"""A full disk is a clear stop: free space checked before each step, the run stopped at the first step that
met "no space left", and files replaced atomically (a failure leaves the previous version, no temporary).

The engine (perturbcast.engine_run) holds one DiskSpace for a run; `benchmark` prints its `problem`.
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from .engine_guard import format_bytes

# Free space a step needs beyond its inputs' size (its log, record and the small files of its stage).
SPACE_MARGIN = 64 * 2**20
NO_SPACE = "No space left on device"   # strerror of ENOSPC, in a step's log or an exception's text


@contextlib.contextmanager
def replaced_atomically(path: Path):
    """Yield a temporary path beside `path`; once the block ends without error it replaces `path` (an error,
    a full disk included, leaves the previous version and no temporary file)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        try:
            temporary.unlink()
        except FileNotFoundError:
            pass


class DiskSpace:
    """The engine's free-space guard: `problem` is set (one sentence) when a step would not fit on the disk of
    the results folder or a step failed for want of space; no step starts after that."""

    def __init__(self):
        self.problem: str | None = None
        self.lock = threading.Lock()

    def reset(self):
        self.problem = None

    def _stop(self, text: str):
        with self.lock:
            self.problem = self.problem or text

    def check(self, folder: Path, needed: int, what: str) -> bool:
        """Whether `needed` bytes are free where `folder` is (its nearest existing ancestor); else stop."""
        where = Path(folder)
        while not where.exists() and where != where.parent:
            where = where.parent
        try:
            free = shutil_disk_free(where)
        except OSError:
            return True  # cannot tell: the step itself will say
        if free >= needed:
            return True
        self._stop(f"no space left for {what}: {format_bytes(free)} free in '{where}', about {format_bytes(needed)} "
                   "needed; free some space and rerun (finished steps stay cached)")
        return False

    def notice(self, record, folder: Path) -> bool:
        """Stop the run when `record` failed because the disk is full."""
        if NO_SPACE not in (record.reason or "") and "[Errno 28]" not in (record.reason or ""):
            return False
        try:
            free = format_bytes(shutil_disk_free(folder))
        except OSError:
            free = "unknown"
        self._stop(f"no space left on the device of '{folder}' ({free} free) while {record.id} ran; at least "
                   f"{format_bytes(SPACE_MARGIN)} more is needed to go on: free some space and rerun (finished "
                   "steps stay cached)")
        return True


def shutil_disk_free(folder: Path) -> int:
    import shutil

    return shutil.disk_usage(folder).free


def space_needed(step) -> int:
    """What a step may write: about the size of its inputs (no stage makes much more than it reads) and a margin."""
    total = SPACE_MARGIN
    for path in step.inputs.values():
        try:
            total += os.stat(path).st_size
        except (OSError, TypeError):
            pass
    return total
