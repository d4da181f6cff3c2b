"""Errors that name the record and field at fault."""

from __future__ import annotations


class UnimeError(Exception):
    """Base class of unime's own errors."""


class DataError(UnimeError, ValueError):
    """Bad input data. The message names the source file, the record (line or id) and the field."""

    def __init__(self, message: str, *, source: str | None = None, record: str | int | None = None,
                 field: str | None = None):
        self.source, self.record, self.field = source, record, field
        where = []
        if source is not None:
            where.append(str(source))
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")


class ModelError(UnimeError):
    """A checkpoint that cannot be used for the requested role (e.g. a judge whose Yes/No are not
    single tokens)."""


class DemoStopped(UnimeError):
    """The demo stopped on purpose between stages: what it found would make the next stages meaningless.
    The message names the numbers and what to do (including how to continue anyway)."""
