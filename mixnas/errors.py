"""mixnas's errors: one base class, one subclass per kind of bad input.

Every error here carries a one-line message meant for the user as it is: ``<file or option>: <field>:
<what is wrong>; <what is allowed>``. The ``mixnas`` command prints it after ``mixnas: error:`` and exits
with status 2; anything else that escapes is a bug and keeps its traceback.

The subclasses also derive from ValueError (all but ``UsageError`` and ``RunLockedError``), so code that
caught ValueError before keeps working.
"""

from __future__ import annotations


class MixnasError(Exception):
    """Base of every error whose message is for the user."""


class ConfigError(MixnasError, ValueError):
    """A config value is malformed or impossible (an architecture, a space, an option, a device)."""


class DataError(MixnasError, ValueError):
    """A dataset spec, folder or file cannot be read; the message names the path."""


class CheckpointError(MixnasError, ValueError):
    """A checkpoint, weights file or run directory is corrupt, unreadable or belongs to something else."""


class ResultsError(MixnasError, ValueError):
    """A run directory or trial table that cannot be read as results; the message names the path."""


class LUTError(MixnasError, ValueError):
    """A latency table is missing, corrupt, from another version, or lacks a component an architecture uses."""


class DeployError(MixnasError, ValueError):
    """A deployment export that cannot be done: a missing optional package (the message names the extra),
    an unknown format, a failed conversion (the message names the file)."""


class StorageError(MixnasError, OSError):
    """A result, checkpoint or page could not be written (a read-only or full disk, no permission); the
    message names the file and the reason, and the file is left as it was (writes are atomic)."""


class UsageError(MixnasError):
    """A command was asked for something that does not make sense (conflicting or missing options)."""


class RunLockedError(MixnasError):
    """Another live process drives this run directory; the message names its PID and host."""


def where(source: str | None, path: str) -> str:
    """Prefix a field path with the file it came from, when known."""
    return f"{source}: {path}" if source else path


__all__ = [
    "CheckpointError", "ConfigError", "DataError", "DeployError", "LUTError", "MixnasError", "ResultsError",
    "RunLockedError", "StorageError", "UsageError", "where",
]
