"""One JSONL line reader for every JSONL input of unime (records, pools, pairs, T-CoTs, items)."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator

from unime.data.skips import data_error
from unime.errors import DataError


def iter_jsonl(path: str | os.PathLike, *, on_malformed: Callable[[DataError], None] | None = None
               ) -> Iterator[tuple[int, Any]]:
    """Yield `(line number, parsed object)` for each non-blank line.

    A malformed line raises a `DataError` naming the file and the line (reason `malformed_json`), or,
    when `on_malformed` is given (a skip policy's `handle`), is passed to it and skipped.
    """
    src = str(path)
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                err = data_error("malformed_json", f"malformed JSON: {e.msg} at column {e.colno}", source=src,
                                 record=f"line {n}")
                if on_malformed is None:
                    raise err from None
                on_malformed(err)
                continue
            yield n, obj
