"""Seals on the state files Ray Tune unpickles when a search is restored.

``Tuner.restore`` unpickles the experiment's ``tuner.pkl``, its newest ``experiment_state-*.json`` (cloudpickle
inside JSON), the searcher's ``searcher-state-*.pkl`` and any callback state: a file planted there runs code.
``check_private`` refuses an experiment that other users could write; a seal also refuses a file that this
user's mixnas did not write (copied in from elsewhere, or left by a tool that runs as you).

Every time Tune saves its state, the driver's ``TrialBudget.save_to_dir`` hashes the files it is about to
upload (``seal_folder``) and appends one line per file to ``SEAL_LOG`` in the experiment folder: the file's
name, its SHA-256 and an HMAC-SHA256 of both under a key only you can read (``key_file``: 32 random bytes in
``$XDG_CONFIG_HOME/mixnas/seal.key`` or ``~/.config/mixnas/seal.key``, mode 0600, created on first use). The
lines are written before Tune copies the files up, so a driver killed at any moment leaves only sealed
versions behind. Before a restore, ``verify`` checks every state file against the log and rewrites the log
with the current files' lines only.

The log's name does not end in ``.json`` or ``.pkl``: Tune copies only those between the experiment folder and
its staging folder, so it never overwrites the log with an older copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from mixnas.atomic import atomic_write_text
from mixnas.errors import ConfigError, StorageError

SEAL_LOG = "mixnas-seals.jsonl"
KEY_BYTES = 32
STATE_SUFFIXES = (".json", ".pkl")  # what Tune copies down from the experiment folder and reads on restore


def key_file() -> Path:
    """Where this user's sealing key lives: ``$XDG_CONFIG_HOME/mixnas/seal.key`` (``~/.config`` by default)."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):  # unset, empty or relative: ignored, as the XDG specification says
        base = str(Path.home() / ".config")
    return Path(base) / "mixnas" / "seal.key"


def load_key() -> bytes:
    """This user's sealing key, created (0600, in a 0700 folder) on first use.

    Raises:
        ConfigError: the key file is a link, not yours, readable by others or not 32 bytes.
        StorageError: it cannot be created.
    """
    path = key_file()
    if not path.exists() and not path.is_symlink():
        _create_key(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise ConfigError(f"{path}: cannot be opened as the sealing key ({e.strerror}); it must be a regular "
                          f"file, not a link") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise ConfigError(
                f"{path}: the sealing key must be a regular file of yours readable by no one else (mode "
                f"{stat.S_IMODE(info.st_mode):o}, uid {info.st_uid}); remove it and a new one is made (your "
                f"Ray experiments sealed with it can then no longer be restored)"
            )
        key = f.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{path}: the sealing key holds {len(key)} bytes, not {KEY_BYTES}; remove it and a new "
                          f"one is made (experiments sealed with the old one can then no longer be restored)")
    return key


def _create_key(path: Path) -> None:
    """Write a new key whole or not at all: a temporary file linked into place (never over another's key)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process made one first: theirs is the key
            os.link(tmp, path)
    except OSError as e:
        raise StorageError(f"{path}: cannot create the sealing key ({e.strerror})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _mac(key: bytes, name: str, digest: str) -> str:
    return hmac.new(key, f"{name}\0{digest}".encode(), hashlib.sha256).hexdigest()


def _entry(key: bytes, name: str, digest: str) -> str:
    """One line of the log: a file's name, its SHA-256 and their HMAC."""
    return json.dumps({"file": name, "sha256": digest, "mac": _mac(key, name, digest)})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_files(folder: Path) -> list[Path]:
    """The files of ``folder`` (not its subfolders) that Tune may read on a restore: names ending in
    ``.json`` or ``.pkl``, links included (so that they are refused), mixnas's own settings file excluded by
    the caller."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name.endswith(STATE_SUFFIXES) and (p.is_symlink() or not p.is_dir()))


def seal_folder(folder: Path, log: Path, skip: Iterable[str] = ()) -> None:
    """Append a seal for each state file of ``folder`` (``state_files``) to ``log``.

    Args:
        folder: where the files are now (Tune's staging folder, or the experiment folder itself).
        log: the experiment's ``SEAL_LOG``.
        skip: names not to seal (Tune's temporaries, mixnas's own settings).
    """
    key = load_key()
    skipped = set(skip)
    lines = []
    for path in state_files(folder):
        if path.name in skipped or path.name.startswith("tmp") or path.is_symlink() or not path.is_file():
            continue
        lines.append(_entry(key, path.name, _sha256(path)))
    if not lines:
        return
    data = ("\n".join(lines) + "\n").encode()
    try:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise StorageError(f"{log}: cannot record the seals of Ray Tune's state ({e.strerror})") from None


def _sealed(log: Path, key: bytes) -> set[tuple[str, str]]:
    """The (name, SHA-256) pairs of ``log`` whose HMAC is right; other lines (a torn last line, a forgery)
    seal nothing."""
    pairs: set[tuple[str, str]] = set()
    with open(log, "rb") as f:
        for raw in f:
            try:
                entry = json.loads(raw)
                name, digest, mac = str(entry["file"]), str(entry["sha256"]), str(entry["mac"])
            except (ValueError, KeyError, TypeError):
                continue
            if hmac.compare_digest(mac, _mac(key, name, digest)):
                pairs.add((name, digest))
    return pairs


def verify(experiment: Path, skip: Iterable[str] = ()) -> None:
    """Refuse to restore an experiment holding a state file that this user's mixnas did not seal, then keep
    only the current files' seals in its log.

    Args:
        experiment: the experiment folder (``RUN_DIR/search/ray``).
        skip: names that are not Tune's state (mixnas's settings file, read as plain JSON).

    Raises:
        ConfigError: naming the first file without a valid seal, or the missing log.
    """
    log = experiment / SEAL_LOG
    skipped = set(skip)
    files = [p for p in state_files(experiment) if p.name not in skipped]
    if not files:
        return
    advice = (f"restoring the Ray search would unpickle it (a pickle can run code); search in a new run "
              f"directory, or remove {experiment} and the run's search/journal.log to start this search again")
    if log.is_symlink() or not log.is_file():
        raise ConfigError(f"{log}: missing, so {experiment.name}/{files[0].name} carries no seal of your mixnas; "
                          f"{advice}")
    key = load_key()
    sealed = _sealed(log, key)
    current = []
    for path in files:
        if path.is_symlink() or not path.is_file():
            raise ConfigError(f"{path}: not a regular file; {advice}")
        digest = _sha256(path)
        if (path.name, digest) not in sealed:
            raise ConfigError(f"{path}: not sealed by your mixnas (changed or planted since it was written); "
                              f"{advice}")
        current.append(_entry(key, path.name, digest))
    atomic_write_text(log, "\n".join(current) + "\n")
