"""Readers and writers of training-record files.

Formats (chosen from the extension, or sniffed from the content when the extension says nothing):
- ``.jsonl``   unime JSONL, one record per line:
  ``{"id", "dataset", "query": {"text", "images": [..]}, "positive": {...}, "negatives": [{...}],
  "positive_score": float|null, "negative_scores": [float]|null}`` (only query and positive required; a score
  is a judge probability, in [0, 1]).
  Image references are paths relative to a data root; inline bytes cannot be written to JSONL.
- ``.parquet`` the same columns; an item is a struct ``{text, images: [{path, bytes}], video: [{path, bytes,
  file}]}`` so an image may be held inline (bytes) or by path; ``file`` true marks a lone video path without a
  video extension as one video file (JSONL's ``"video": "clips/x.dat"``), not a frame. Plain strings are also
  accepted on read.
- ``.json``    the released UniME-V2 training JSON (SPEC 1.4): a list of ``{query_text, query_image,
  pos_text, pos_image, query_pos_scores, hard_negatives: [[text, image_path], ...],
  hard_negatives_scores}``; ``""`` = no image; ``hard_negatives_scores`` may be absent. unime adds
  the optional keys ``id`` and ``dataset`` when the records have them (extra keys are harmless to the
  released training code and keep the round trip lossless).

Bad input raises `DataError` naming the file, the record (``line N``, ``row N`` or ``index N``, plus
its id when known) and the field; with ``on_error="skip"`` the record is left out and counted in a
`SkipReport`. Image files are not opened here: `check_images` validates them up front, and
`unime.data.images.ImageLoader` does at load time.

MMEB-eval rows, retrieval lists and compositional pairs live in `unime.data.eval_formats` and are
re-exported here.
"""

from __future__ import annotations

import io as _io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from unime.data.atomic import atomic_open
from unime.data.eval_formats import (CompositionalPair, MMEBRow, QrelsRow, RetrievalEntry, open_parquet, origin_of,
                                     parquet_rows, qrels_row_from_dict, read_compositional, read_mmeb,
                                     read_parsed_rows, read_retrieval, row_label, with_origin, write_compositional,
                                     write_mmeb, write_parquet, write_retrieval)
from unime.data.items import Item, Record
from unime.data.jsonl import iter_jsonl, read_json_file, require_file
from unime.data.mmeb_v2 import V2Row, v2_row_from_dict
from unime.data.skips import ErrorPolicy, SkipReport, check_on_error, data_error, reason_of
from unime.data.scores import parse_score, parse_scores
from unime.data.validate import (RECORD_KEYS_OPTIONAL, RECORD_KEYS_REQUIRED, check_keys, check_str, make_item,
                                 parse_item)
from unime.data.video import (MIXED_VIDEO_REFS, VideoSampling, is_one_video_file, is_video_file_ref, probe_video_file,
                              video_file_path)
from unime.errors import DataError

__all__ = [
    "FORMATS", "detect_format", "read_records", "iter_records", "write_records", "record_from_dict",
    "record_to_dict", "read_unime_v2_json", "write_unime_v2_json", "check_images", "SkipReport",
    "MMEBRow", "read_mmeb", "write_mmeb", "RetrievalEntry", "read_retrieval", "write_retrieval",
    "CompositionalPair", "read_compositional", "write_compositional", "QrelsRow", "read_qrels",
]

FORMATS = ("jsonl", "parquet", "unime_v2_json")
_EXT = {".jsonl": "jsonl", ".parquet": "parquet", ".json": "unime_v2_json"}

V2_KEYS_REQUIRED = {"query_text", "query_image", "pos_text", "pos_image", "query_pos_scores", "hard_negatives"}
V2_KEYS_OPTIONAL = {"hard_negatives_scores", "id", "dataset"}


def detect_format(path: str | os.PathLike, format: str | None = None) -> str:
    """The record format of `path`: `format` if given, else from the extension, else from the content."""
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"unknown record format {format!r}; choose one of {', '.join(FORMATS)}")
        return format
    p = Path(path)
    if p.suffix.lower() in _EXT:
        return _EXT[p.suffix.lower()]
    if p.is_file():
        with open(p, "rb") as fh:
            head = fh.read(4096)
        if head.startswith(b"PAR1"):
            return "parquet"
        stripped = head.lstrip()
        if stripped.startswith(b"["):
            return "unime_v2_json"
        if stripped.startswith(b"{"):
            return "jsonl"
    raise DataError(f"cannot tell the record format of {p.name!r}; use .jsonl, .parquet or .json "
                    f"(UniME-V2 JSON list), or pass format=", source=str(path))


# ---------------------------------------------------------------------------------------------------
# unime record dicts (JSONL lines, Parquet rows)

def read_mmeb_v2(path: str | os.PathLike, *, corpus: bool = False, on_error: str = "raise",
                 skips: SkipReport | None = None) -> list[V2Row]:
    """MMEB-V2 rows (`unime.data.mmeb_v2`; with `corpus`, a task's corpus rows: candidates only) of one file, each
    remembering the line it was read from (`with_origin`)."""
    def parse(obj, *, source, record):
        return v2_row_from_dict(obj, source=source, record=record, corpus=corpus)

    return read_parsed_rows(path, parse, on_error, skips)


def read_qrels(path: str | os.PathLike, *, on_error: str = "raise", skips: SkipReport | None = None) -> list[QrelsRow]:
    """Qrels rows (`unime.data.eval_formats.qrels_row_from_dict`) of one file, each remembering the line it was read
    from (`with_origin`)."""
    return read_parsed_rows(path, qrels_row_from_dict, on_error, skips)


def record_from_dict(obj: Any, *, source: str | None = None, record: str | int | None = None) -> Record:
    """A validated `Record` from a unime JSONL object / Parquet row."""
    check_keys(obj, RECORD_KEYS_REQUIRED, RECORD_KEYS_OPTIONAL, source=source, record=record)
    rid = check_str(obj.get("id"), source=source, record=record, field="id")
    dataset = check_str(obj.get("dataset"), source=source, record=record, field="dataset")
    query = parse_item(obj["query"], source=source, record=record, field="query")
    positive = parse_item(obj["positive"], source=source, record=record, field="positive")
    negs = obj.get("negatives")
    if negs is None:
        negs = []
    if not isinstance(negs, (list, tuple)):
        raise data_error("schema", f"expected a list, got {type(negs).__name__}", source=source, record=record,
                         field="negatives")
    negatives = [parse_item(n, source=source, record=record, field=f"negatives[{i}]") for i, n in enumerate(negs)]
    pos_score = parse_score(obj.get("positive_score"), source=source, record=record, field="positive_score")
    neg_scores = parse_scores(obj.get("negative_scores"), len(negatives), source=source, record=record,
                              field="negative_scores")
    rec = Record(query=query, positive=positive, negatives=negatives, positive_score=pos_score,
                 negative_scores=neg_scores, dataset=dataset, id=rid)
    return rec.validate(source=source)


def record_to_dict(rec: Record) -> dict:
    """The unime JSONL object of a record (image references must be paths)."""
    d: dict[str, Any] = {"id": rec.id, "dataset": rec.dataset, "query": rec.query.to_dict(),
                         "positive": rec.positive.to_dict(), "negatives": [n.to_dict() for n in rec.negatives],
                         "positive_score": rec.positive_score, "negative_scores": rec.negative_scores}
    return d


def _iter_jsonl(path: Path, policy: ErrorPolicy) -> Iterator[Record]:
    src = str(path)
    for n, obj in iter_jsonl(path, on_malformed=policy.handle):
        try:
            label = row_label(f"line {n}", obj)
            yield with_origin(record_from_dict(obj, source=src, record=label), label)
        except DataError as e:
            policy.handle(e)


# ---------------------------------------------------------------------------------------------------
# Parquet

def _arrow_schema():
    import pyarrow as pa

    image = pa.struct([("path", pa.string()), ("bytes", pa.binary())])
    video = pa.struct([("path", pa.string()), ("bytes", pa.binary()), ("file", pa.bool_())])
    item = pa.struct([("text", pa.string()), ("images", pa.list_(image)), ("video", pa.list_(video))])
    return pa.schema([("id", pa.string()), ("dataset", pa.string()), ("query", item), ("positive", item),
                      ("negatives", pa.list_(item)), ("positive_score", pa.float64()),
                      ("negative_scores", pa.list_(pa.float64()))])


def _ref_to_arrow(ref: Any) -> dict:
    if isinstance(ref, str):
        return {"path": ref, "bytes": None}
    if isinstance(ref, (bytes, bytearray)):
        return {"path": None, "bytes": bytes(ref)}
    if hasattr(ref, "save"):  # PIL image: store losslessly as PNG
        buf = _io.BytesIO()
        ref.save(buf, format="PNG")
        return {"path": None, "bytes": buf.getvalue()}
    raise DataError(f"unsupported image reference of type {type(ref).__name__}", field="images")


def _item_to_arrow(item: Item) -> dict:
    lone = item.lone_video_file  # one video file, not a frame (`file`; JSONL: the path alone)
    return {"text": item.text, "images": [_ref_to_arrow(r) for r in item.images],
            "video": [{**_ref_to_arrow(r), "file": lone is not None} for r in item.video]}


def _item_from_arrow(obj: Any, *, source, record, field) -> Item:
    """Parquet item struct → Item; images may be {path, bytes} structs or plain strings/bytes."""
    if not isinstance(obj, dict):
        return parse_item(obj, source=source, record=record, field=field)
    d = dict(obj)
    for key in ("images", "video"):
        refs = d.get(key)
        if refs is None:
            continue
        if not isinstance(refs, (list, tuple)):
            raise data_error("schema", f"expected a list, got {type(refs).__name__}", source=source, record=record,
                             field=f"{field}.{key}")
        out = []
        for i, r in enumerate(refs):
            if isinstance(r, dict):
                if r.get("bytes") is not None:
                    r = r["bytes"]
                elif r.get("path"):
                    r = r["path"]
                else:
                    raise data_error("schema", "image has neither path nor bytes", source=source, record=record,
                                     field=f"{field}.{key}[{i}]")
            out.append(r)
        lone_file = key == "video" and len(refs) == 1 and isinstance(refs[0], dict) and refs[0].get("file")
        d[key] = out[0] if lone_file and isinstance(out[0], str) else out  # the path alone: one video file
    return parse_item(d, source=source, record=record, field=field)


def _row_to_record(row: dict, *, source: str, record: str) -> Record:
    check_keys(row, RECORD_KEYS_REQUIRED, RECORD_KEYS_OPTIONAL, source=source, record=record)
    conv = dict(row)
    for key in ("query", "positive"):
        conv[key] = _item_from_arrow(row[key], source=source, record=record, field=key)
    negs = row.get("negatives")
    if isinstance(negs, (list, tuple)):
        conv["negatives"] = [_item_from_arrow(n, source=source, record=record, field=f"negatives[{i}]")
                             for i, n in enumerate(negs)]
    return record_from_dict(conv, source=source, record=record)


def _iter_parquet(path: Path, policy: ErrorPolicy, batch_size: int = 256) -> Iterator[Record]:
    src = str(path)
    pf = open_parquet(path)
    names = set(pf.schema_arrow.names)
    missing = RECORD_KEYS_REQUIRED - names
    extra = names - RECORD_KEYS_REQUIRED - RECORD_KEYS_OPTIONAL
    if missing or extra:  # a column problem concerns every row: never skippable
        bad = sorted(missing) or sorted(extra)
        raise data_error("schema", f"Parquet columns {sorted(names)}: missing {sorted(missing)}, unknown "
                         f"{sorted(extra)}", source=src, field=bad[0])
    row_no = 1  # 1-based, like lines
    for row in parquet_rows(pf, src, batch_size):
        label = row_label(f"row {row_no}", row)
        row_no += 1
        try:
            yield with_origin(_row_to_record(row, source=src, record=label), label)
        except DataError as e:
            policy.handle(e)


def _write_parquet(records: Iterable[Record], path: Path) -> int:
    import pyarrow as pa

    rows = [{"id": r.id, "dataset": r.dataset, "query": _item_to_arrow(r.query),
             "positive": _item_to_arrow(r.positive), "negatives": [_item_to_arrow(n) for n in r.negatives],
             "positive_score": r.positive_score, "negative_scores": r.negative_scores} for r in records]
    write_parquet(pa.Table.from_pylist(rows, schema=_arrow_schema()), path)
    return len(rows)


# ---------------------------------------------------------------------------------------------------
# UniME-V2 released JSON

def _v2_to_record(obj: Any, *, source: str, record: str) -> Record:
    check_keys(obj, V2_KEYS_REQUIRED, V2_KEYS_OPTIONAL, source=source, record=record)
    query = make_item(obj["query_text"], obj["query_image"], source=source, record=record, field="query",
                      text_key="query_text", image_key="query_image")
    positive = make_item(obj["pos_text"], obj["pos_image"], source=source, record=record, field="pos",
                         text_key="pos_text", image_key="pos_image")
    hns = obj["hard_negatives"]
    if not isinstance(hns, list):
        raise data_error("schema", f"expected a list of [text, image_path] pairs, got {type(hns).__name__}",
                         source=source, record=record, field="hard_negatives")
    negatives = []
    for i, pair in enumerate(hns):
        f = f"hard_negatives[{i}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise data_error("schema", "expected a [text, image_path] pair", source=source, record=record, field=f)
        negatives.append(make_item(pair[0], pair[1], source=source, record=record, field=f,
                                   text_key=f"{f}[0]", image_key=f"{f}[1]"))
    pos_score = parse_score(obj["query_pos_scores"], source=source, record=record, field="query_pos_scores")
    neg_scores = parse_scores(obj.get("hard_negatives_scores"), len(negatives), source=source, record=record,
                              field="hard_negatives_scores")
    rec = Record(query=query, positive=positive, negatives=negatives, positive_score=pos_score,
                 negative_scores=neg_scores,
                 dataset=check_str(obj.get("dataset"), source=source, record=record, field="dataset"),
                 id=check_str(obj.get("id"), source=source, record=record, field="id"))
    return rec.validate(source=source)


def _single_image(item: Item, *, record: str, field: str) -> str:
    if item.video:
        raise DataError("the UniME-V2 JSON format holds no video", record=record, field=field)
    if len(item.images) > 1:
        raise DataError(f"the UniME-V2 JSON format holds one image per item, this one has {len(item.images)}",
                        record=record, field=field)
    if item.images and not isinstance(item.images[0], str):
        raise DataError("the UniME-V2 JSON format holds image paths, not inline images (write Parquet)",
                        record=record, field=field)
    return item.images[0] if item.images else ""


def in_memory_name(index: int) -> str:
    """How a message names a record (or item) given in memory, not read from a file: by its index in the list
    given, as Python indexes it (`records[0]` is the first; a file's records are named by their line instead)."""
    return f"records[{index}]"


def is_in_memory_name(label: Any) -> bool:
    """Whether `label` (a record's `origin_of`) is an `in_memory_name`, not the line of a file."""
    return isinstance(label, str) and label.startswith("records[")


def record_label(rec: Any, index: int) -> str:
    """How every message names a record (the trainers', the checks', the writers'), as its reader did: where it was
    read, with its id (`origin_of`: "line 7 (id q3)", its real line in the file, blank lines counted; given in memory,
    "records[1] (id q3)"), else its id, else its index in the list given (`in_memory_name`, as Python indexes it)."""
    return origin_of(rec) or getattr(rec, "id", "") or in_memory_name(index)


def record_to_unime_v2(rec: Record, index: int = 0) -> dict:
    label = record_label(rec, index)
    d: dict[str, Any] = {
        "query_text": rec.query.text, "query_image": _single_image(rec.query, record=label, field="query"),
        "pos_text": rec.positive.text, "pos_image": _single_image(rec.positive, record=label, field="positive"),
        "query_pos_scores": rec.positive_score,
        "hard_negatives": [[n.text, _single_image(n, record=label, field=f"negatives[{i}]")]
                           for i, n in enumerate(rec.negatives)],
    }
    if rec.negative_scores is not None:
        d["hard_negatives_scores"] = list(rec.negative_scores)
    if rec.id:
        d["id"] = rec.id
    if rec.dataset:
        d["dataset"] = rec.dataset
    return d


def _iter_unime_v2(path: Path, policy: ErrorPolicy) -> Iterator[Record]:
    src = str(path)
    data = read_json_file(path)  # the whole file is one document: not skippable
    if not isinstance(data, list):
        raise data_error("schema", f"a UniME-V2 JSON file must hold a list of records, got {type(data).__name__}",
                         source=src)
    for i, obj in enumerate(data):
        try:
            label = row_label(f"item {i + 1}", obj)  # 1-based position in the list
            yield with_origin(_v2_to_record(obj, source=src, record=label), label)
        except DataError as e:
            policy.handle(e)


def read_unime_v2_json(path: str | os.PathLike, *, on_error: str = "raise",
                       skips: SkipReport | None = None) -> list[Record]:
    return read_records(path, on_error=on_error, skips=skips, format="unime_v2_json")


def write_unime_v2_json(records: Iterable[Record], path: str | os.PathLike) -> int:
    """Write the released UniME-V2 training JSON (atomic). Returns the number of records."""
    return write_records(records, path, format="unime_v2_json")


# ---------------------------------------------------------------------------------------------------
# public entry points

def iter_records(path: str | os.PathLike, *, on_error: str = "raise", skips: SkipReport | None = None,
                 format: str | None = None) -> Iterator[Record]:
    """Stream the records of a file (JSONL and Parquet are read incrementally)."""
    check_on_error(on_error)
    p = Path(path)
    # `mydata/train` for its records.jsonl was "record file not found" (QA)
    require_file(p, "a record file", missing="record file not found")
    fmt = detect_format(p, format)
    policy = ErrorPolicy(on_error, skips, str(p))
    reader = {"jsonl": _iter_jsonl, "parquet": _iter_parquet, "unime_v2_json": _iter_unime_v2}[fmt]
    yield from reader(p, policy)
    policy.finish()


def read_records(path: str | os.PathLike, *, on_error: str = "raise", skips: SkipReport | None = None,
                 format: str | None = None) -> list[Record]:
    """All records of a unime JSONL / Parquet / UniME-V2 JSON file (see the module doc)."""
    return list(iter_records(path, on_error=on_error, skips=skips, format=format))


def output_format(path: str | os.PathLike, format: str | None = None) -> str:
    """The record format `write_records` writes to `path`: `format` if given, else told by the extension."""
    fmt = format or _EXT.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the format from {Path(path).name!r}; use .jsonl, .parquet, .json or pass "
                         "format=")
    return detect_format(path, fmt)  # validates the name


def write_records(records: Iterable[Record], path: str | os.PathLike, *, format: str | None = None,
                  on_error: str = "raise", skips: SkipReport | None = None, source: str | None = None) -> int:
    """Write records atomically in the format of `path`'s extension (or `format`). Returns the count written. A
    record the format cannot hold (a video or several images per item in UniME-V2 JSON, an inline image in either
    JSON format) is a `DataError` naming it and the field (and `source`, the file the records were read from, if
    given); under ``on_error="skip"`` it is left out and counted in `skips` under the reason ``output_format``
    (Parquet holds every record)."""
    p = Path(path)
    fmt = output_format(p, format)
    if fmt == "parquet":
        return _write_parquet(records, p)
    policy = ErrorPolicy(on_error, skips, f"{p.name}: records the {fmt} format cannot hold")
    n = 0
    if fmt == "jsonl":
        with atomic_open(p) as fh:
            for row in _rows_held(records, lambda rec, i: record_to_dict(rec), policy, source):
                fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
                n += 1
        return n
    rows = list(_rows_held(records, record_to_unime_v2, policy, source))
    with atomic_open(p) as fh:  # a JSON list, one record per line
        fh.write("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False, allow_nan=False) for r in rows) + "\n]\n")
    return len(rows)


def _rows_held(records: Iterable[Record], to_row, policy: ErrorPolicy, source: str | None = None) -> Iterator[dict]:
    """`to_row(record, index)` of each record, a record the target format cannot hold going to `policy`, named
    with `source` (the file the records were read from) when the error names no file, and then by the line (or
    row) of `source` it was read from, with its id (`with_origin`), as the reader names a bad record."""
    for i, rec in enumerate(records):
        try:
            yield to_row(rec, i)
        except DataError as e:
            # an item's own error (inline images) names no record; the format's errors name no file, and name the
            # record as every message does (`record_label`)
            line = origin_of(rec) if source is not None and e.source is None else None
            if line or e.record is None or (e.source is None and source is not None):
                e = DataError(raw_message(e), source=e.source or source,
                              record=line or e.record or record_label(rec, i), field=e.field)
            e.reason = "output_format"  # type: ignore[attr-defined]
            policy.handle(e)
    policy.finish()


# ---------------------------------------------------------------------------------------------------
# image validation up front

def _item_fields(obj: Any) -> Iterator[tuple[str, Item]]:
    if isinstance(obj, Record):
        yield "query", obj.query
        yield "positive", obj.positive
        for i, n in enumerate(obj.negatives):
            yield f"negatives[{i}]", n
    elif isinstance(obj, Item):
        yield "item", obj
    elif isinstance(obj, (RetrievalEntry, CompositionalPair)):  # one image path per row
        yield "image", Item(images=(obj.image,))
    elif hasattr(obj, "item_fields"):  # other rows name their own items (MMEB, MMEB-V2 and qrels rows)
        yield from obj.item_fields()
    else:
        raise TypeError(f"check_images takes Records, MMEBRows, Items or eval rows, not {type(obj).__name__}")


def raw_message(err: DataError) -> str:
    """The message of a `DataError` without its "file, record, field: " prefix."""
    prefix = str(DataError("", source=err.source, record=err.record, field=err.field))
    text = str(err)
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def named_where_read(err: DataError, items: Sequence[Item], where: Sequence[tuple[str, Any, str] | None]) -> DataError:
    """`err`, raised when one of `items` was encoded (the embedder tags it with the item, `Embedder.build_inputs`: a
    video decoded only then, a layout the item format refuses), again naming the file, record and field that item
    was read from (`where`, per item: (file, record, field); the field within the item after it, "query.images"):
    that error, or `err` itself when it names no item of `items` with a place."""
    item = getattr(err, "item", None)
    place = next((w for it, w in zip(items, where) if w is not None and it == item), None) \
        if item is not None else None
    if place is None:
        return err
    source, record, field = place
    within = getattr(err, "item_field", err.field)  # `Embedder.encode` names the item's position in its list
    return data_error(reason_of(err), raw_message(err), source=source, record=record,
                      field=f"{field}.{within}" if within else field)


class ImageChecker:
    """Opens and decodes every image (and video file) an object references (`ImageLoader`: path escapes,
    missing and corrupt files, the pixel limit), each distinct reference once across all the objects it
    checks. With ``decode_video=False`` a video is checked from its headers only, no frame decoded (a video
    file: `unime.data.video.probe_video_file`; a frame-list's frames: `ImageLoader.check_header`) — for a
    reader whose videos are decoded anyway later (eval), so that a video is not decoded twice."""

    def __init__(self, loader, *, decode_video: bool = True):
        self.loader = loader
        self.decode_video = decode_video
        self.verdict: dict[Any, DataError | None] = {}
        self.media: set[str] = set()  # the kinds of media it was given: "images", "video"

    def check(self, obj: Any, *, source: str | None, record: Any, files_only: bool = False) -> None:
        """Raise a `DataError` (reason `image`) naming `source`, `record` and the field of the first bad
        image of `obj` (a Record, MMEBRow, Item, an eval row with one `image`, or a row with an
        `item_fields()` method yielding (field, Item) pairs). `files_only`: `check_files`."""
        for fname, item in _item_fields(obj):
            self.check_item(fname, item, source=source, record=record, files_only=files_only)

    def check_files(self, obj: Any, *, source: str | None, record: Any) -> None:
        """The cheap part of `check`, no file opened: each image, video file and frame path of `obj` stays inside
        the data root and names an existing file (a stat; a video file within the sampling's byte limit, a video is
        one file or a list of frames). Raises the `DataError` `check` raises for the same file, naming `source`,
        `record` and the field; a whole corpus is checked so before its first item is encoded (`unime index
        build`), its images decoded later, as they are read."""
        self.check(obj, source=source, record=record, files_only=True)

    def check_item(self, fname: str, item: Item, *, source: str | None, record: Any, files_only: bool = False) -> None:
        """`check` for one item of a record, named `fname` (e.g. ``candidates[3]``) in the error."""
        if len(item.video) > 1 and any(is_video_file_ref(r) for r in item.video):
            raise data_error("video", MIXED_VIDEO_REFS, source=source, record=record, field=f"{fname}.video")
        for kind in ("images", "video"):
            header_only = kind == "video" and not self.decode_video
            # one video file, checked as a video; `files_only` opens no file: by its name alone
            video_file = kind == "video" and len(item.video) == 1 and (
                is_video_file_ref(item.video[0]) if files_only else is_one_video_file(self.loader, item.video))
            if getattr(item, kind):
                self.media.add(kind)
            for j, ref in enumerate(getattr(item, kind)):
                if files_only and not isinstance(ref, str):  # inline bytes, an in-memory image: nothing on disk
                    continue
                # (how it is checked, the reference): a path read as an image and as a video file, two verdicts
                key = (("file" if files_only else header_only, video_file),
                       ref if isinstance(ref, (str, bytes)) else id(ref))
                field = fname if fname == "image" else f"{fname}.{kind}[{j}]"
                if key not in self.verdict:
                    try:
                        where = {"source": source, "record": record, "field": field}
                        if files_only and video_file:
                            video_file_path(self.loader, ref, self.loader.video_sampling or VideoSampling(), **where)
                        elif files_only:  # an image, or a frame of a frame list
                            self.loader.file_path(ref, **where)
                        elif header_only and video_file:
                            probe_video_file(self.loader, ref, self.loader.video_sampling, **where)
                        elif header_only:  # a frame of a frame list
                            self.loader.check_header(ref, **where)
                        elif video_file:  # decoded, sampled, checked
                            self.loader.load_video([ref], **where)
                        else:
                            self.loader.load(ref, **where)
                        self.verdict[key] = None
                    except DataError as e:
                        self.verdict[key] = e
                err = self.verdict[key]
                if err is not None:
                    raise data_error("video" if kind == "video" else "image", raw_message(err), source=source,
                                     record=record, field=field)


def check_images(objs: Sequence[Any], loader, *, on_error: str = "raise", skips: SkipReport | None = None,
                 source: str | None = None) -> list[Any]:
    """Open and decode every image (and video file) that `objs` (Records, MMEBRows or Items) reference, with `loader`
    (an `ImageLoader`: path escapes, missing and corrupt files, the pixel limit; or an `ImageChecker`, whose
    verdicts the caller reads afterwards). Returns the objects
    whose images are all good: all of them under on_error="raise", which stops at the first bad one.
    Each distinct image reference is loaded once. A bad one is named by the line (or row) the object
    was read from when the reader recorded it, else by its id, else by its index in `objs` (`in_memory_name`)."""
    policy = ErrorPolicy(on_error, skips, source or "check_images")
    checker = loader if isinstance(loader, ImageChecker) else ImageChecker(loader)
    good = []
    for idx, obj in enumerate(objs):
        rid = record_label(obj, idx)
        try:
            checker.check(obj, source=source, record=rid)
            good.append(obj)
        except DataError as e:
            policy.handle(e)
    policy.finish()
    return good
