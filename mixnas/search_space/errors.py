"""The one error type for bad configs: a single line that names the field and what is allowed."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value is malformed or impossible.

    The message is one line: ``<source>: <field path>: <what is wrong>; <what is allowed>``.
    The CLI prints it as it is and exits non-zero.
    """


def where(source: str | None, path: str) -> str:
    """Prefix a field path with the file it came from, when known."""
    return f"{source}: {path}" if source else path
