"""BEIR folders, the form of a `qrels` eval task that `unime eval` ranks against one shared corpus, and that
`unime data check FOLDER` checks: ``corpus.jsonl`` (``_id``, ``text``, ``title``?, ``image``?), ``queries.jsonl``
(``_id``, ``text``, ``image``?) and ``qrels/<split>.tsv`` (``query-id  corpus-id  score``, a header line). Their
rows and judgements are parsed here, a bad one going through the reader's `ErrorPolicy` (named by file, line and
field); `unime.eval.tasks` builds the task from them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator

from unime.data.eval_formats import relevance_grade
from unime.data.items import Item
from unime.data.jsonl import read_text_file
from unime.data.skips import ErrorPolicy, data_error
from unime.data.validate import check_keys, check_str, make_item
from unime.errors import DataError

CORPUS_FILE, QUERIES_FILE, QRELS_FOLDER = "corpus.jsonl", "queries.jsonl", "qrels"


def is_beir_folder(path: str | os.PathLike) -> bool:
    """A folder holding a BEIR corpus (what `unime eval` reads as a BEIR qrels task)."""
    return Path(path).is_dir() and (Path(path) / CORPUS_FILE).is_file()


def looks_like_beir_folder(path: str | os.PathLike) -> bool:
    """A folder holding any of a BEIR folder's parts (corpus.jsonl, queries.jsonl, qrels/): what `unime data check`
    and `unime eval --tasks` read as a BEIR folder, a missing part then named (`beir_files`)."""
    p = Path(path)
    return p.is_dir() and any((p / n).exists() for n in (CORPUS_FILE, QUERIES_FILE, QRELS_FOLDER))


def beir_data_root(folder: str | os.PathLike, explicit: str | os.PathLike | None = None) -> Path:
    """The folder a BEIR folder's image paths are relative to: `explicit` if given, else the root recorded for its
    corpus (`unime.data.roots`), else the BEIR folder itself — for `unime data check` and `unime eval` alike."""
    from unime.data.roots import resolve_data_root

    return Path(resolve_data_root(Path(folder) / CORPUS_FILE, explicit)).resolve()


@dataclass
class BeirRow:
    """One line of a BEIR ``corpus.jsonl`` / ``queries.jsonl``."""

    id: str
    item: Item

    def item_fields(self):
        yield "image", self.item  # the row's one image, under the key it was read from


def beir_row_from_dict(row: Any, *, source, record, template: str = "{text}") -> BeirRow:
    """A corpus or query line; its text is ``title\\ntext`` (either alone when the other is missing) put into
    `template` at ``{text}``."""
    check_keys(row, {"_id"}, {"text", "title", "image", "metadata"}, source=source, record=record,
               what="BEIR row")
    rid = check_str(row["_id"], source=source, record=record, field="_id", allow_none=False)
    text = check_str(row.get("text"), source=source, record=record, field="text")
    title = check_str(row.get("title"), source=source, record=record, field="title")
    full = f"{title}\n{text}" if title and text else (title or text)
    item = make_item(template.replace("{text}", full) if full else "", row.get("image"), source=source,
                     record=record, field="text", image_key="image")
    return BeirRow(rid, item)


def first_of_each_id(rows: Iterable[tuple[str, BeirRow]], policy: ErrorPolicy, *,
                     source: str) -> Iterator[tuple[str, BeirRow]]:
    """The (line label, row) pairs of one file whose ``_id`` was not seen before in it; a repeated one is a
    `DataError` (reason schema) through `policy`."""
    seen: set[str] = set()
    for label, row in rows:
        if row.id in seen:
            policy.handle(data_error("schema", f"duplicate _id {row.id!r}", source=source, record=label,
                                     field="_id"))
            continue
        seen.add(row.id)
        yield label, row


def read_beir_qrels(path: str | os.PathLike, query_ids: Collection[str], corpus_ids: Collection[str],
                    policy: ErrorPolicy) -> Iterator[tuple[str, str, float]]:
    """(query id, corpus id, grade) of every judgement line of a qrels TSV file (the ``query-id  corpus-id``
    header and blank lines left out). A line that is not three tab-separated columns, names an id missing from
    `query_ids` / `corpus_ids`, or has a grade that is not a number >= 0 is a `DataError` naming the file, the
    line and the column, through `policy`."""
    src = str(path)
    for n, line in enumerate(read_text_file(Path(path)).splitlines(keepends=True), 1):
        parts = line.rstrip("\r\n").split("\t")
        if (n == 1 and parts[:2] == ["query-id", "corpus-id"]) or not line.strip():
            continue
        where = f"line {n}"
        try:
            if len(parts) != 3:
                raise data_error("schema", "expected 3 tab-separated columns", source=src, record=where)
            qid, did, score = parts
            if qid not in query_ids:
                raise data_error("schema", f"unknown query id {qid!r}", source=src, record=where, field="query-id")
            if did not in corpus_ids:
                raise data_error("schema", f"unknown corpus id {did!r}", source=src, record=where,
                                 field="corpus-id")
            try:
                g = float(score)
            except ValueError:
                raise data_error("bad_score", f"score {score!r} is not a number", source=src, record=where,
                                 field="score") from None
            grade = relevance_grade(g, source=src, record=where, field_name="score")
        except DataError as e:
            policy.handle(e)
            continue
        yield qid, did, grade


def beir_files(folder: str | os.PathLike) -> tuple[Path, Path, list[Path]]:
    """The corpus, queries and qrels files (every ``qrels/*.tsv``, sorted) of a BEIR folder; a missing one is a
    `DataError` naming the folder and what it lacks."""
    folder = Path(folder)
    for name in (CORPUS_FILE, QUERIES_FILE):
        if not (folder / name).is_file():
            raise DataError(f"BEIR folder without {name} (a BEIR folder holds {CORPUS_FILE}, {QUERIES_FILE} and "
                            f"{QRELS_FOLDER}/SPLIT.tsv)", source=str(folder))
    qrels = sorted(p for p in (folder / QRELS_FOLDER).glob("*.tsv") if p.is_file())
    if not qrels:
        raise DataError(f"BEIR folder without qrels: no {QRELS_FOLDER}/*.tsv file", source=str(folder))
    return folder / CORPUS_FILE, folder / QUERIES_FILE, qrels
