"""Files that must survive a crash or a full disk: one atomic write, and the state file's restore.

`atomic_write(path)` is the one definition of "write a temp file beside it, fsync, rename, fsync
the folder": a reader sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb"):
    """Yield a file open for writing; on a clean exit it replaces `path` atomically (temp file,
    flush, fsync, rename, fsync of the folder); on an error the temp file is removed, `path` untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def restore_state(fc, path: str) -> dict:
    """Restore the state file if it is this bundle's and return its meta ({} otherwise); a foreign
    one is ignored (it is overwritten at the next save), a corrupt one is moved aside as
    <path>.corrupt-<time> (left in place when the folder is read-only). Warns once either way."""
    if not path or not os.path.exists(path):
        return {}
    try:
        return fc.load_state(path)
    except ValueError as e:
        if "belongs to bundle" in str(e):
            print(f"warning: not restoring {path}: {e}; starting from a zero state", file=sys.stderr)
            return {}
        aside = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
        try:
            os.replace(path, aside)
        except OSError as moved:
            print(f"warning: {e}; could not move it aside ({moved.strerror}); started from a zero state",
                  file=sys.stderr)
            return {}
        print(f"warning: {e}; moved it to {aside} and started from a zero state", file=sys.stderr)
        return {}
