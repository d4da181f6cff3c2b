"""Item files (a corpus): one item per JSONL line, read by `unime embed` and `unime index build` alike.

A line is ``{"id"?, "metadata"?, "text"?, "image"?, "images"?, "video"?}`` (the id defaults to the item's
content key), or a line of a generated world's ``items.jsonl``: ``{"key", "item": {...}, "meta": {...}}``
(`unime data synth`). Image and video references are paths relative to the data root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from unime.data.eval_formats import row_label
from unime.data.items import Item
from unime.data.jsonl import iter_jsonl
from unime.data.skips import ErrorPolicy, SkipReport, data_error
from unime.errors import DataError

ITEM_KEYS = ("text", "image", "images", "video")
WORLD_KEYS = {"key", "id", "item", "meta", "metadata"}  # a generated world's items.jsonl line


@dataclass
class CorpusEntry:
    id: str
    item: Item
    metadata: dict = field(default_factory=dict)
    line: int = 0  # 1-based line of the corpus file (for messages)
    record: str = ""  # where it was read, as messages name it: "line 7 (id q3)" (`corpus_entry`)


def corpus_entry(obj: Any, *, source: str, line: int) -> CorpusEntry:
    """One parsed line of an item file (see the module doc); a bad one is a `DataError` naming the line, the id the
    line gives (``id``, a generated world's ``key``; not the content key it defaults to) and the field, as a
    record's line is named (an empty item: reason `empty_item`). The entry's `record` names it so."""
    label = row_label(f"line {line}", obj, ("id", "key") if isinstance(obj, dict) and "item" in obj else ("id",))
    where = dict(source=source, record=label)
    if not isinstance(obj, dict):
        raise DataError(f"expected an object, got {type(obj).__name__}", **where)
    if "item" in obj:  # a generated world's items.jsonl: {"key", "item": {...}, "meta": {...}}
        if set(obj) - WORLD_KEYS or not isinstance(obj["item"], dict):
            raise DataError(f"unknown keys {sorted(set(obj) - WORLD_KEYS)} next to 'item'", **where)
        obj = {**obj["item"], "id": obj.get("id", obj.get("key")),
               "metadata": obj.get("metadata", obj.get("meta")) or {}}
        obj = {k: v for k, v in obj.items() if v is not None}
    unknown = set(obj) - {"id", "metadata", *ITEM_KEYS}
    if unknown:
        raise DataError(f"unknown keys {sorted(unknown)} (allowed: id, metadata, {', '.join(ITEM_KEYS)})", **where)
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise DataError("metadata must be an object", field="metadata", **where)
    item = Item.from_dict({k: obj[k] for k in ITEM_KEYS if k in obj}, **where)
    if item.is_empty:
        raise data_error("empty_item", "empty item (no text, image or video)", **where)
    if any(not isinstance(r, str) for r in (*item.images, *item.video)):
        raise DataError("image references in a corpus file must be paths", field="images", **where)
    rid = obj.get("id", item.key)
    if not isinstance(rid, (str, int)) or isinstance(rid, bool) or rid == "":
        raise DataError("id must be a non-empty string or an integer", field="id", **where)
    return CorpusEntry(str(rid), item, meta, line, label)


def read_corpus(path: str | os.PathLike, *, on_error: str = "raise", skips: SkipReport | None = None,
                repeats: list | None = None) -> list[CorpusEntry]:
    """Entries of an item file (see the module doc); duplicate ids are an error naming both lines. Under
    `on_error="skip"` a bad line (a repeated id: the later line) is left out and counted in `skips`
    (`unime.data.skips.ErrorPolicy`). With a list `repeats`, a repeated id is kept and (entry, its first line)
    appended there instead (`unime data check`: `unime embed` reads such a line, `unime index build` refuses it)."""
    policy = ErrorPolicy(on_error, skips, str(path))
    entries, seen = [], {}
    for n, obj in iter_jsonl(path, on_malformed=policy.handle):
        try:
            entry = corpus_entry(obj, source=str(path), line=n)
            if entry.id in seen and repeats is not None:
                repeats.append((entry, seen[entry.id]))
            elif entry.id in seen:
                raise DataError(f"duplicate id {entry.id!r} (first on line {seen[entry.id]})", field="id",
                                source=str(path), record=entry.record)
        except DataError as e:
            policy.handle(e)
            continue
        seen.setdefault(entry.id, n)
        entries.append(entry)
    policy.finish()
    return entries
