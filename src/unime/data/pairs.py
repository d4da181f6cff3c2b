"""Judge pairs files (what `unime judge --pairs` scores; `unime data import` writes eval/judge_pairs.jsonl): JSONL
of `{"id"?, "query": item, "candidate": item}`, optionally with a relevance label under a column of the caller's
choice (`read_pairs`)."""

from __future__ import annotations

import math
from typing import Collection

from unime.data.eval_formats import row_label
from unime.data.io import raw_message
from unime.data.items import Item
from unime.data.jsonl import iter_jsonl
from unime.data.skips import ErrorPolicy, data_error, reason_of
from unime.errors import DataError

PAIR_KEYS = ("query", "candidate")


def check_pair_images(images, pair: tuple[str, Item, Item], *, source: str, record: str,
                      files_only: bool = False) -> None:
    """`images.check` (an `ImageChecker`) of a pair's query then candidate, the error naming the pair's field
    (`query.images[0]`), not the checker's "item"; `files_only`: `ImageChecker.check_files`, no file opened."""
    for key, it in zip(PAIR_KEYS, pair[1:]):
        _check_images(images, key, it, source=source, record=record, files_only=files_only)


def _check_images(images, key: str, it: Item, *, source: str, record: str, files_only: bool) -> None:
    try:
        images.check(it, source=source, record=record, files_only=files_only)
    except DataError as e:  # name the pair's field, not the checker's "item"
        raise data_error(reason_of(e), raw_message(e), source=source, record=record,
                         field=f"{key}.{e.field.split('.', 1)[-1]}") from None


def pair_record(line: int, pair_id) -> str:
    """How a message names the pair read from `line` whose id is `pair_id` (`read_pairs`: the line number when the
    pair gives none): "line 7 (id p3)", or "line 7"."""
    return f"line {line}" if pair_id == line else f"line {line} (id {pair_id})"


def read_pairs(path: str, *, on_error: str = "raise", skips=None, images=None, label_column: str | None = None,
               files_only: Collection[int] = (), lines: list[int] | None = None) \
        -> list[tuple[str, Item, Item]] | tuple[list[tuple[str, Item, Item]], list[float]]:
    """JSONL of `{"id"?, "query": item, "candidate": item}`; the id defaults to the (1-based) line number. A bad
    line (or, with `images` = an `ImageChecker`, a bad image) raises a `DataError` naming the file, the
    line and the field, or under `on_error="skip"` is counted in `skips` and left out.
    With `label_column`, each line also carries a relevance label under that key (a number >= 0 or a
    boolean; > 0 = relevant), any other key is ignored, and `(pairs, labels)` is returned (aligned: a skipped line
    drops both): any number of extra keys reads. Without it, a key beside id, query and candidate is an error
    naming the line and the keys, one extra key or several alike (`unime data check`, which takes a first row's one
    extra key as the label column, refuses several in one line: `unime.data.file_tools`). The images of the lines
    `files_only` are only looked up (`ImageChecker.check_files`), not opened; `lines`, when given, is filled with the
    line of each pair returned."""
    policy = ErrorPolicy(on_error, skips, path)
    pairs, labels = [], []
    for n, obj in iter_jsonl(path, on_malformed=policy.handle):
        where = f"line {n}"
        try:
            if not isinstance(obj, dict):
                raise data_error("schema", "expected an object", source=path, record=where)
            where = row_label(where, obj)  # "line 7 (id p3)": the id a pair gives, as the other readers name a row
            rid = obj.get("id", n)
            for key in PAIR_KEYS + ((label_column,) if label_column else ()):
                if key not in obj:
                    raise data_error("schema", "missing", source=path, record=where, field=key)
            unknown = set(obj) - {"id", *PAIR_KEYS}
            if unknown and not label_column:
                raise data_error("schema", f"unknown keys {sorted(unknown)} (a label column? pass --label-column "
                                 "NAME; the other keys are then ignored)", source=path, record=where)
            q = Item.from_dict(obj["query"], source=path, record=where, field_name="query")
            c = Item.from_dict(obj["candidate"], source=path, record=where, field_name="candidate")
            label = None
            if label_column:
                v = obj[label_column]
                if isinstance(v, bool):
                    v = float(v)
                if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                    raise data_error("schema", f"expected a label >= 0 (or true/false), got {v!r}", source=path,
                                     record=where, field=label_column)
                label = float(v)
            for key, it in (("query", q), ("candidate", c)):
                if it.is_empty:
                    raise data_error("empty_item", "empty item", source=path, record=where, field=key)
                if images is not None:
                    _check_images(images, key, it, source=path, record=where, files_only=n in files_only)
            pairs.append((str(rid) if not isinstance(rid, (int, str)) else rid, q, c))
            if lines is not None:
                lines.append(n)
            if label is not None:
                labels.append(label)
        except DataError as e:
            policy.handle(e)
    policy.finish()
    if label_column:
        return pairs, labels
    return pairs
