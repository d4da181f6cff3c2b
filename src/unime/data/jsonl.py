"""One JSONL line reader for every JSONL input of unime (records, pools, pairs, T-CoTs, items), and the
whole-file JSON / text readers that turn undecodable bytes, absurd nesting and syntax errors into
`DataError`s naming the file and the line."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator

from unime.data.skips import data_error
from unime.errors import DataError


UTF8_BOM = "\ufeff"  # the byte-order mark some Windows tools write first: read as nothing


def _parse_json(text: str, *, source: str, record: str | None) -> Any:
    """`json.loads` whose failures are `DataError`s (reason `malformed_json`). One line (`record` given) is
    parsed without its line break, so a truncated line's error names the column where it ends."""
    if record is not None:
        text = text.rstrip("\r\n")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = record or f"line {e.lineno}"
        at = f"column {e.colno}" if record else f"line {e.lineno} column {e.colno}"
        msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg  # "Invalid control character at"
        raise data_error("malformed_json", f"malformed JSON: {msg} at {at}", source=source, record=where) from None
    except RecursionError:
        raise data_error("malformed_json", "malformed JSON: nested too deeply", source=source,
                         record=record) from None


def _decode(raw: bytes, *, source: str, record: str | None) -> str:
    """UTF-8 text; bad bytes raise a `DataError` naming the line (of a whole file) and the 1-based column
    (in bytes) of the first one."""
    try:
        return raw.decode("utf-8").removeprefix(UTF8_BOM) if record in (None, "line 1") else raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        if record is None:  # a whole file: name the line of the first bad byte
            record = "line %d" % (raw.count(b"\n", 0, e.start) + 1)
        raise data_error("not_utf8", f"not UTF-8 text at column {e.start - line_start + 1} "
                         f"(byte {raw[e.start:e.start + 1]!r})", source=source, record=record) from None


def iter_jsonl(path: str | os.PathLike, *, on_malformed: Callable[[DataError], None] | None = None
               ) -> Iterator[tuple[int, Any]]:
    """Yield `(line number, parsed object)` for each non-blank line (a UTF-8 byte-order mark before the first
    is read as nothing).

    A malformed line (bad JSON, bytes that are not UTF-8, absurdly deep nesting) raises a `DataError`
    naming the file and the line (reason `malformed_json`, `not_utf8`), or, when `on_malformed` is given (a skip
    policy's `handle`), is passed to it and skipped.
    """
    src = str(path)
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                obj = _parse_json(_decode(raw, source=src, record=f"line {n}"), source=src, record=f"line {n}")
            except DataError as err:
                if on_malformed is None:
                    raise
                on_malformed(err)
                continue
            yield n, obj


def read_text_file(path: str | os.PathLike) -> str:
    """A whole UTF-8 text file; bytes that are not UTF-8 raise a `DataError` naming the line."""
    with open(path, "rb") as fh:
        raw = fh.read()
    return _decode(raw, source=str(path), record=None)


def read_json_file(path: str | os.PathLike) -> Any:
    """A whole JSON document; any failure is a `DataError` naming the file and the line (not skippable:
    the file is one record)."""
    return _parse_json(read_text_file(path), source=str(path), record=None)
