"""Evaluation data formats.

- MMEB-eval rows (VLM2Vec's MMEB-eval): ``{qry_text, qry_img_path, tgt_text: [..], tgt_img_path: [..]}``
  with the positive at index 0, ``""`` = no image, plus an optional ``id`` (unime writes one).
  Texts keep their ``<|image_1|>`` placeholders: the model adapter maps them to the family's image
  token (`unime.models.adapters.item_segments`); they are never rewritten here.
- Retrieval lists (Flickr30K / COCO style): ``{"image": path, "captions": [..], "id"?}``.
- Compositional pairs (SugarCrepe style): ``{"image", "positive", "negative", "category", "id"?}``.
- Qrels rows (graded relevance): ``{"id"?, "query": {item}, "candidates": [{item}, ..], "relevance": [grade, ..]}``,
  grades finite and >= 0.

Each reader takes ``.jsonl`` (one row per line), ``.json`` (a list of rows) or ``.parquet``, with the
same `on_error` / `SkipReport` policy as the record readers (`unime.data.io`). Writers are atomic
and write JSONL.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from unime.data.atomic import atomic_open, atomic_path
from unime.data.items import Item
from unime.data.jsonl import read_json_file, require_file
from unime.data.skips import ErrorPolicy, SkipReport, check_on_error, data_error
from unime.data.validate import check_aligned_lists, check_keys, check_str, make_item, parse_item
from unime.errors import DataError

MMEB_KEYS = {"qry_text", "qry_img_path", "tgt_text", "tgt_img_path"}
RETRIEVAL_KEYS = {"image", "captions"}
COMPOSITIONAL_KEYS = {"image", "positive", "negative"}


@dataclass
class MMEBRow:
    """One MMEB-eval query with its own candidate list; `candidates[0]` is the positive."""

    query: Item
    candidates: list[Item]
    id: str = ""

    @property
    def positive(self) -> Item:
        return self.candidates[0]

    def item_fields(self):
        """(field, item) of every item of the row (`ImageChecker`)."""
        yield "query", self.query
        for i, c in enumerate(self.candidates):
            yield f"candidates[{i}]", c


@dataclass
class RetrievalEntry:
    """An image with the captions that describe it (each caption's positive is the image and vice versa)."""

    image: str
    captions: list[str]
    id: str = ""


@dataclass
class CompositionalPair:
    """An image, a true caption and a minimally changed false one (SugarCrepe: replace / swap / add)."""

    image: str
    positive: str
    negative: str
    category: str = ""
    id: str = ""


@dataclass
class QrelsRow:
    """A query with its candidates and their relevance grades (> 0 = relevant)."""

    query: Item
    candidates: list[Item]
    grades: list[float]
    id: str = ""

    def item_fields(self):
        """(field, item) of every item of the row (`ImageChecker`)."""
        yield "query", self.query
        for j, c in enumerate(self.candidates):
            yield f"candidates[{j}]", c


# ---------------------------------------------------------------------------------------------------
# generic row iteration

def iter_rows(path: str | os.PathLike, policy: ErrorPolicy) -> Iterator[tuple[str, Any]]:
    """(record label, row object) for each row of a .jsonl / .json list / .parquet file. Malformed
    JSON lines go through `policy`."""
    p = Path(path)
    src = str(p)
    require_file(p, "a .jsonl, .json or .parquet file")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        for n, row in enumerate(parquet_rows(open_parquet(p), src), start=1):  # 1-based, like lines
            yield row_label(f"row {n}", row), row
        return
    if suffix == ".json":
        data = read_json_file(p)
        if not isinstance(data, list):
            raise data_error("schema", f"expected a list of rows, got {type(data).__name__}", source=src)
        for i, obj in enumerate(data):
            yield row_label(f"item {i + 1}", obj), obj  # 1-based position in the list
        return
    from unime.data.jsonl import iter_jsonl

    for n, obj in iter_jsonl(p, on_malformed=policy.handle):
        yield row_label(f"line {n}", obj), obj


def write_parquet(table, path: str | os.PathLike) -> None:
    """The pyarrow Table `table` written to `path` atomically, as every Parquet file unime writes is: with a CRC
    checksum of each page, which unime's reads check (`open_parquet`, `read_parquet`), so that a page damaged on
    disk or in a copy is an error, never values changed silently (a damaged page may still decode)."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, write_page_checksum=True)


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None):
    """`pyarrow.parquet.read_table(path, columns=columns)`, the page checksums checked (`write_parquet`; a file
    without them reads unchecked): a page that fails its check raises pyarrow's OSError."""
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=columns, page_checksum_verification=True)


def open_parquet(path: str | os.PathLike):
    """`pyarrow.parquet.ParquetFile(path)`, its pages' checksums checked as they are read (`write_parquet`; a file
    without them, a user's own, reads unchecked); a file that is no Parquet file (or whose footer is cut off) is a
    `DataError` naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path, page_checksum_verification=True)
    except (pa.ArrowInvalid, OSError) as e:
        raise data_error("malformed_json", f"not a readable Parquet file: {e}", source=str(path)) from None


def parquet_rows(pf, source: str, batch_size: int = 256, columns: list[str] | None = None) -> Iterator[dict]:
    """The rows of the open Parquet file `pf` (`open_parquet`) as dicts (of `columns` only, when given: the caller
    checks that the file has them), row group by row group. A row group that cannot be read (its data pages damaged
    while the footer is intact: pyarrow raises OSError, among them a page failing its checksum, ArrowInvalid or, for a
    damaged string, UnicodeDecodeError) is a `DataError` naming the file `source` and the row group: no row of it can
    be trusted, so it is never skipped."""
    import pyarrow as pa

    n_groups = pf.metadata.num_row_groups
    first = 1
    for g in range(n_groups):
        n_rows = pf.metadata.row_group(g).num_rows
        batches = pf.iter_batches(batch_size=batch_size, row_groups=[g], columns=columns)
        while True:
            try:
                batch = next(batches, None)
                rows = None if batch is None else batch.to_pylist()
            except (pa.ArrowException, OSError, ValueError) as e:  # ArrowInvalid, UnicodeDecodeError: ValueErrors
                why = " ".join(str(e).split())[:240]
                raise data_error("malformed_json", f"row group {g + 1} of {n_groups} (rows {first} to "
                                 f"{first + n_rows - 1}) could not be read: the file is damaged ({why}); write or "
                                 "copy it again", source=source) from None
            if rows is None:
                break
            yield from rows
        first += n_rows


def row_label(where: str, obj: Any, keys: tuple[str, ...] = ("id",)) -> str:
    """`where` a row was read ("line 7") with the id the row gives ("line 7 (id q3)"): its first key of `keys`
    present, when that is a non-empty string or an integer; else `where` alone."""
    key = next((k for k in keys if k in obj), None) if isinstance(obj, dict) else None
    rid = obj[key] if key is not None else None
    return f"{where} (id {rid})" if isinstance(rid, (str, int)) and not isinstance(rid, bool) and rid != "" else where


def with_origin(obj: Any, label: str | None) -> Any:
    """Remember where a record (or item / row) was read ("line 7 (id q3)"), so a later check of its
    images names the line, not a position in a list."""
    if label is None:
        return obj
    try:
        object.__setattr__(obj, "_unime_origin", label)
    except (AttributeError, TypeError):  # a type without a __dict__
        pass
    return obj


def origin_of(obj: Any) -> str | None:
    return getattr(obj, "_unime_origin", None)


def read_parsed_rows(path, parse, on_error: str, skips: SkipReport | None) -> list:
    """`parse(obj, source=, record=)` of every row of `path` (`iter_rows`), each remembering the line (row, list
    item) it was read from (`with_origin`: a later check of its images names it); a bad one goes through
    `on_error`."""
    check_on_error(on_error)
    policy = ErrorPolicy(on_error, skips, str(path))
    out = []
    for label, obj in iter_rows(path, policy):
        try:
            out.append(with_origin(parse(obj, source=str(path), record=label), label))
        except DataError as e:
            policy.handle(e)
    policy.finish()
    return out


def _write_jsonl(rows: Iterable[dict], path) -> int:
    n = 0
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
            n += 1
    return n


# ---------------------------------------------------------------------------------------------------
# MMEB-eval

def mmeb_row_from_dict(obj: Any, *, source: str | None = None, record: str | int | None = None) -> MMEBRow:
    check_keys(obj, MMEB_KEYS, {"id"}, source=source, record=record, what="MMEB row")
    query = make_item(obj["qry_text"], obj["qry_img_path"], source=source, record=record, field="query",
                      text_key="qry_text", image_key="qry_img_path")
    texts, images = obj["tgt_text"], obj["tgt_img_path"]
    for key, val in (("tgt_text", texts), ("tgt_img_path", images)):
        if not isinstance(val, (list, tuple)):
            raise data_error("schema", f"expected a list, got {type(val).__name__}", source=source, record=record,
                             field=key)
    if len(texts) != len(images):
        raise data_error("schema", f"{len(texts)} target texts but {len(images)} target image paths", source=source,
                         record=record, field="tgt_img_path")
    if not texts:
        raise data_error("schema", "empty candidate list", source=source, record=record, field="tgt_text")
    cands = [make_item(t, im, source=source, record=record, field=f"candidates[{i}]", text_key=f"tgt_text[{i}]",
                       image_key=f"tgt_img_path[{i}]") for i, (t, im) in enumerate(zip(texts, images))]
    rid = check_str(obj.get("id"), source=source, record=record, field="id")
    return MMEBRow(query=query, candidates=cands, id=rid)


def _flat(item: Item, *, record, field) -> tuple[str, str]:
    if item.video or len(item.images) > 1 or any(not isinstance(r, str) for r in item.images):
        raise DataError("MMEB-eval rows hold at most one image path per item", record=record, field=field)
    return item.text, (item.images[0] if item.images else "")


def mmeb_row_to_dict(row: MMEBRow, index: int = 0) -> dict:
    label = row.id or f"item {index + 1}"
    qt, qi = _flat(row.query, record=label, field="query")
    tt, ti = zip(*[_flat(c, record=label, field=f"candidates[{i}]") for i, c in enumerate(row.candidates)]) \
        if row.candidates else ((), ())
    d = {"qry_text": qt, "qry_img_path": qi, "tgt_text": list(tt), "tgt_img_path": list(ti)}
    if row.id:
        d["id"] = row.id
    return d


def read_mmeb(path: str | os.PathLike, *, on_error: str = "raise", skips: SkipReport | None = None) -> list[MMEBRow]:
    """MMEB-eval rows (positive at index 0) from .jsonl / .json / .parquet."""
    return read_parsed_rows(path, mmeb_row_from_dict, on_error, skips)


def write_mmeb(rows: Iterable[MMEBRow], path: str | os.PathLike) -> int:
    return _write_jsonl((mmeb_row_to_dict(r, i) for i, r in enumerate(rows)), path)


# ---------------------------------------------------------------------------------------------------
# retrieval lists and compositional pairs

def _image_path(value: Any, *, source, record, field) -> str:
    if not isinstance(value, str) or not value:
        raise data_error("schema" if not isinstance(value, str) else "empty_item", "expected a non-empty image path",
                         source=source, record=record, field=field)
    return value


def _nonempty_text(value: Any, *, source, record, field) -> str:
    if not isinstance(value, str):
        raise data_error("schema", f"expected a string, got {type(value).__name__}", source=source, record=record,
                         field=field)
    if not value.strip():
        raise data_error("empty_item", "empty text", source=source, record=record, field=field)
    return value


def retrieval_entry_from_dict(obj: Any, *, source=None, record=None) -> RetrievalEntry:
    check_keys(obj, RETRIEVAL_KEYS, {"id"}, source=source, record=record, what="retrieval entry")
    image = _image_path(obj["image"], source=source, record=record, field="image")
    caps = obj["captions"]
    if not isinstance(caps, list) or not caps:
        raise data_error("schema", "expected a non-empty list of captions", source=source, record=record,
                         field="captions")
    captions = [_nonempty_text(c, source=source, record=record, field=f"captions[{i}]") for i, c in enumerate(caps)]
    return RetrievalEntry(image=image, captions=captions,
                          id=check_str(obj.get("id"), source=source, record=record, field="id"))


def read_retrieval(path: str | os.PathLike, *, on_error: str = "raise",
                   skips: SkipReport | None = None) -> list[RetrievalEntry]:
    return read_parsed_rows(path, retrieval_entry_from_dict, on_error, skips)


def write_retrieval(entries: Iterable[RetrievalEntry], path: str | os.PathLike) -> int:
    return _write_jsonl(({"id": e.id, "image": e.image, "captions": list(e.captions)} if e.id else
                         {"image": e.image, "captions": list(e.captions)} for e in entries), path)


def compositional_pair_from_dict(obj: Any, *, source=None, record=None) -> CompositionalPair:
    check_keys(obj, COMPOSITIONAL_KEYS, {"category", "id"}, source=source, record=record,
               what="compositional pair")
    return CompositionalPair(
        image=_image_path(obj["image"], source=source, record=record, field="image"),
        positive=_nonempty_text(obj["positive"], source=source, record=record, field="positive"),
        negative=_nonempty_text(obj["negative"], source=source, record=record, field="negative"),
        category=check_str(obj.get("category"), source=source, record=record, field="category"),
        id=check_str(obj.get("id"), source=source, record=record, field="id"))


def read_compositional(path: str | os.PathLike, *, on_error: str = "raise",
                       skips: SkipReport | None = None) -> list[CompositionalPair]:
    return read_parsed_rows(path, compositional_pair_from_dict, on_error, skips)


def write_compositional(pairs: Iterable[CompositionalPair], path: str | os.PathLike) -> int:
    def row(p: CompositionalPair) -> dict:
        d = {"image": p.image, "positive": p.positive, "negative": p.negative, "category": p.category}
        if p.id:
            d["id"] = p.id
        return d

    return _write_jsonl((row(p) for p in pairs), path)


# ---------------------------------------------------------------------------------------------------
# qrels (graded relevance)

QRELS_KEYS = {"query", "candidates", "relevance"}


def relevance_grade(v, *, source, record, field_name) -> float:
    """A relevance grade: a finite number >= 0 (a boolean is not one)."""
    try:
        finite = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite or v < 0:
        raise data_error("bad_score", f"relevance grade must be a finite number >= 0, got {v!r}", source=source,
                         record=record, field=field_name)
    return float(v)


def qrels_row_from_dict(obj: Any, *, source=None, record=None) -> QrelsRow:
    """``{"id"?, "query": {item}, "candidates": [{item}, ..], "relevance": [grade, ..]}``."""
    check_keys(obj, QRELS_KEYS, {"id"}, source=source, record=record, what="qrels row")
    query = parse_item(obj["query"], source=source, record=record, field="query")
    items, rel = obj["candidates"], obj["relevance"]
    check_aligned_lists(items, rel, source=source, record=record, first_key="candidates", second_key="relevance",
                        what="grades (one per candidate)")
    cands = [parse_item(d, source=source, record=record, field=f"candidates[{j}]") for j, d in enumerate(items)]
    grades = [relevance_grade(g, source=source, record=record, field_name=f"relevance[{j}]")
              for j, g in enumerate(rel)]
    return QrelsRow(query, cands, grades, check_str(obj.get("id"), source=source, record=record, field="id"))
