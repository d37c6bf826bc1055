"""One driver per run directory: ``drive(run_dir, command)`` holds ``RUN_DIR/.mixnas.lock`` while a command
(supernet training, search, the main job, a ranking check) works in the directory.

The lock is an exclusive ``flock`` on the file, which the kernel releases when its process ends in any way,
``kill -9`` included: a lock left by a killed process is stale by construction, and the next command
takes it over. While it is held, the file names the holder (PID, host, command, start time), and a
second command on the same directory is refused with one line naming them (``RunLockedError``) instead of
both writing the same checkpoints and trial tables. Holding is re-entrant within a process (``mixnas run``
trains and then searches under the one lock), and under torchrun only rank 0 takes it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

from mixnas.atomic import TEMPORARY_NAME
from mixnas.errors import RunLockedError
from mixnas.run_dir import RunDir

_HELD: dict[str, tuple[int, int]] = {}  # resolved run directory -> (file descriptor, depth)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        info = {}
    if not info:
        return "another process"
    return (f"pid {info.get('pid')} on {info.get('host')} ({info.get('command', '?')}, since "
            f"{info.get('started', '?')})")


def _acquire(path: Path) -> int:
    """Open and lock ``path``; the descriptor of a file that is still the one at ``path``."""
    while True:
        try:  # never through a symbolic link: on shared storage it could point at another user's file
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as e:
            kind = "a symbolic link" if path.is_symlink() else "not a regular file"
            raise RunLockedError(f"{path}: the run directory's lock file is {kind} ({e.strerror}); mixnas "
                                 f"neither follows nor replaces it: remove it and run the command again") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunLockedError(f"{path}: the run directory's lock file is not a regular file; remove it and "
                                 f"run the command again")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"{path.parent}: another mixnas process drives this run directory: {_holder(path)}; "
                f"wait for it to finish or stop it, then run the command again"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder released and removed the file between our open and our lock: retry


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporaries an atomic write left when its process was killed (``kill -9`` during export or
    page writing), anywhere under ``run_dir``; returns them. Called with the run directory's lock held, so
    no live mixnas process is writing them. Links are neither followed nor removed, and a folder inside
    that is a run directory of its own (a rank-check training, a nested run) is left to its own driver."""
    removed = []
    for folder, dirs, files in os.walk(run_dir, followlinks=False):
        dirs[:] = [d for d in dirs if not any((Path(folder) / d / own).exists()
                                              for own in (RunDir.LOCK, RunDir.TRAIN_CONFIG))]
        for name in files:
            path = Path(folder) / name
            if TEMPORARY_NAME.match(name) and path.is_file() and not path.is_symlink():
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
    return removed


@contextlib.contextmanager
def drive(run_dir: RunDir | str | Path, command: str, create: bool = True) -> Iterator[None]:
    """Hold the run directory's lock for the duration of ``command``.

    ``create``: make the directory if it is missing; otherwise a missing directory is not locked (the
    command will report it).

    Raises:
        RunLockedError: another live process holds it; the message names its PID, host and command.
    """
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 drives, the others follow it
        yield
        return
    run = RunDir.of(run_dir, kind=None)  # the lock is the same for either kind
    if not run.path.is_dir():
        if not create:
            yield
            return
        run.path.mkdir(parents=True, exist_ok=True)
    key = str(run.path.resolve())
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield
        finally:
            _HELD[key] = (fd, _HELD[key][1] - 1)
        return
    path = run.lock_file
    fd = _acquire(path)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "started": dt.datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(info) + "\n").encode())
    _HELD[key] = (fd, 1)
    remove_stale_temporaries(run.path)
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


__all__ = ["drive"]
