"""Atomic file writes: a reader (or a resumed job) sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from mixnas.errors import StorageError

_HINT = "the previous version, if any, is unchanged: free space or fix the permissions and run the command again"
# The temporaries ``atomic_write`` makes beside their target: ``.<name>.<random>.tmp`` (mkstemp's prefix and
# suffix below). A process killed mid-write leaves one; ``mixnas.lock`` removes them on the next start.
TEMPORARY_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def _cannot_write(path: Path, error: OSError) -> StorageError:
    return StorageError(f"{path}: cannot be written ({error.strerror or type(error).__name__}); {_HINT}")


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, then rename it into place."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    except OSError as e:
        raise _cannot_write(p, e) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared like any file
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, StorageError):
            raise
        raise _cannot_write(p, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
