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
# the data files a folder given for one is said to hold (`require_file`): the file meant may be among them
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def folder_problem(path: str | os.PathLike, expected: str, *, suffixes: tuple[str, ...] = DATA_SUFFIXES) -> str | None:
    """"a folder, not EXPECTED (it holds a.jsonl, b.jsonl)" when `path` is a folder (the first three files of
    `suffixes` it holds), else None: a reader given a folder said "file not found" or "Is a directory" (QA)."""
    if not os.path.isdir(path):
        return None
    held = sorted(f.name for f in os.scandir(path) if f.is_file() and os.path.splitext(f.name)[1] in suffixes)
    return f"a folder, not {expected}" + (f" (it holds {', '.join(held[:3])})" if held else "")


def refuse_folder(path: str | os.PathLike, expected: str) -> None:
    """A `DataError` when `path` is a folder (`folder_problem`)."""
    if (problem := folder_problem(path, expected)) is not None:
        raise DataError(problem, source=str(path))


def require_file(path: str | os.PathLike, expected: str, *, missing: str = "file not found") -> None:
    """A `DataError` unless `path` is a file: a folder is said to be one (`refuse_folder`), anything else `missing`."""
    refuse_folder(path, expected)
    if not os.path.isfile(path):
        raise DataError(missing, source=str(path))


def require_folder(path: str | os.PathLike, what: str, *, source: str | None = None) -> None:
    """A `DataError` (of `source`, default `path`) unless `path` is a folder: a file is said to be one, anything
    else is "not found"."""
    if os.path.isdir(path):
        return
    if source is None:
        raise DataError(f"a file, not a {what}" if os.path.exists(path) else f"{what} not found", source=str(path))
    raise DataError(f"{what} {str(path)!r} is a file, not a folder" if os.path.exists(path) else
                    f"{what} not found: {str(path)!r}", source=source)


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
    refuse_folder(path, "a JSON lines file")
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
    return read_text_and_bytes(path)[0]


def read_text_and_bytes(path: str | os.PathLike) -> tuple[str, bytes]:
    """`read_text_file`, and the bytes it decoded (read once: a digest of them names what was read, even when the
    file is changed afterwards)."""
    refuse_folder(path, "a text file")
    with open(path, "rb") as fh:
        raw = fh.read()
    return _decode(raw, source=str(path), record=None), raw


def read_json_file(path: str | os.PathLike) -> Any:
    """A whole JSON document; any failure is a `DataError` naming the file and the line (not skippable:
    the file is one record)."""
    refuse_folder(path, "a JSON file")
    return _parse_json(read_text_file(path), source=str(path), record=None)
