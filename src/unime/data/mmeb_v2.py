"""VLM2Vec's MMEB-V2 row format (video and visual-document tasks), parsed one row at a time.

A V2 row, as VLM2Vec's dataset parsers write it (`src/data/eval_dataset/*`)::

    {"query_text": [str], "query_image": [null | visual],
     "cand_text": [str, ...], "cand_image": [null | visual, ...],
     "dataset_infos": {"cand_names": [str, ...], "label_name": str | [str, ...], "rel_scores"?: [num, ...]}}

`visual` is VLM2Vec's ``ImageVideoInstance`` dict ``{"paths": [..], "bytes"?: [..], "resolutions"?: [..]}``
(or, for convenience, a bare path string). Several paths = the frames of a video; one path = an image, or a
video file when it has a video extension (``.mp4`` …). A text holding the family's video token marks a
one-frame visual as video too. Paths are relative to the task's data root.

The texts carry the backbone's vision tokens (Qwen2-VL: ``<|vision_start|><|image_pad|><|vision_end|>``,
Phi-3-V: ``<|image_1|>``); they are mapped to unime's placeholders: an image token → ``<|image_1|>`` (the
adapter puts the image there), a video token → removed (the video segment leads the item).

``cand_names`` identify candidates across rows (global tasks rank one pool built from all rows' candidates,
deduplicated by name, plus an optional corpus file of rows without queries); ``label_name`` names the
positive(s); ``rel_scores`` (ViDoRe / VisRAG qrels) are the graded relevance of the labels (one per
``label_name``, VLM2Vec's alignment) or of the row's candidates (one per ``cand_names``).

Other keys (VLM2Vec's parsers keep source columns and add ``global_dataset_name``) are ignored, logged once per
file.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from unime.data.items import Item
from unime.data.skips import data_error
from unime.data.validate import check_aligned_lists, check_keys
from unime.data.video import is_video_file_ref

V2_KEYS = {"query_text", "query_image", "cand_text", "cand_image", "dataset_infos"}
CORPUS_KEYS = {"cand_text", "cand_image", "dataset_infos"}

log = logging.getLogger(__name__)
_IGNORED_LOGGED: set[tuple[str, tuple[str, ...]]] = set()  # (file, keys) already logged

_IMAGE_TOKENS = re.compile(r"<\|vision_start\|>\s*<\|image_pad\|>\s*<\|vision_end\|>|<\|image_pad\|>")
_VIDEO_TOKENS = re.compile(r"<\|vision_start\|>\s*<\|video_pad\|>\s*<\|vision_end\|>|<\|video_pad\|>|<\|video_\d+\|>"
                           r"|<video>")


@dataclass
class V2Candidate:
    name: str
    item: Item


@dataclass
class V2Row:
    query: Item | None                 # None for corpus rows
    candidates: list[V2Candidate]
    labels: list[str]                  # names of the positive candidates
    rel_scores: dict[str, float] = field(default_factory=dict)  # graded relevance by candidate name
    id: str = ""

    def item_fields(self):
        """(field, item) of every item of the row, named as the parser names them (`ImageChecker`)."""
        if self.query is not None:
            yield "query", self.query
        for j, c in enumerate(self.candidates):
            yield f"cand[{j}]", c.item


def _one(value: Any, *, source, record, field_name: str) -> Any:
    """VLM2Vec wraps single values in one-element lists; accept both."""
    if isinstance(value, list):
        if len(value) != 1:
            raise data_error("schema", f"expected one value, got a list of {len(value)}", source=source,
                             record=record, field=field_name)
        return value[0]
    return value


def v2_item(text: Any, visual: Any, *, source=None, record=None, field_name: str = "item") -> Item:
    """One side of a V2 row (text + visual) → `Item`."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise data_error("schema", f"expected a string, got {type(text).__name__}", source=source, record=record,
                         field=f"{field_name}.text")
    is_video_text = bool(_VIDEO_TOKENS.search(text))
    clean = _VIDEO_TOKENS.sub("", _IMAGE_TOKENS.sub("<|image_1|>", text)).strip()
    paths: list[Any] = []
    if isinstance(visual, str):
        paths = [visual] if visual else []
    elif isinstance(visual, dict):
        raw = visual.get("paths")
        blobs = visual.get("bytes") or []
        if raw is None and not blobs:
            raise data_error("schema", "a visual needs 'paths' (or 'bytes')", source=source, record=record,
                             field=f"{field_name}.paths")
        raw = raw or [None] * len(blobs)
        if not isinstance(raw, list):
            raise data_error("schema", "'paths' must be a list", source=source, record=record,
                             field=f"{field_name}.paths")
        for j, p in enumerate(raw):
            blob = blobs[j] if j < len(blobs) else None
            ref = blob if isinstance(blob, (bytes, bytearray)) and blob else p
            if not (isinstance(ref, (str, bytes, bytearray)) and ref):
                raise data_error("schema", "a visual path must be a non-empty string", source=source, record=record,
                                 field=f"{field_name}.paths[{j}]")
            paths.append(bytes(ref) if isinstance(ref, bytearray) else ref)
    elif visual is not None:
        raise data_error("schema", f"expected null, a path or a {{paths: [...]}} object, got "
                         f"{type(visual).__name__}", source=source, record=record, field=f"{field_name}.image")
    if not paths:
        if "<|image_1|>" in clean:
            raise data_error("placeholder", "text has an image token but the row has no image", source=source,
                             record=record, field=f"{field_name}.text")
        item = Item(text=clean)
    elif len(paths) > 1 or is_video_text or is_video_file_ref(paths[0]):
        item = Item(text=clean.replace("<|image_1|>", ""), video=tuple(paths))
    else:
        item = Item(text=clean, images=(paths[0],))
    if item.is_empty:
        raise data_error("empty_item", "empty item (no text, image or video)", source=source, record=record,
                         field=field_name)
    return item


def _names(value: Any, n: int | None, *, source, record, field_name: str) -> list[str]:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                                           for v in value):
        raise data_error("schema", "expected a name or a non-empty list of names", source=source, record=record,
                         field=field_name)
    out = [str(v) for v in value]
    if n is not None and len(out) != n:
        raise data_error("schema", f"{len(out)} names for {n} candidates", source=source, record=record,
                         field=field_name)
    return out


def v2_row_from_dict(obj: Any, *, source=None, record=None, corpus: bool = False) -> V2Row:
    """Parse one V2 row (or, with `corpus=True`, one corpus row: candidates only). Keys beyond the format's are
    ignored (VLM2Vec's rows carry extras by design), logged once per file."""
    keys = CORPUS_KEYS if corpus else V2_KEYS
    if isinstance(obj, dict) and obj.keys() - keys - {"id"}:
        extra = tuple(sorted(map(str, obj.keys() - keys - {"id"})))
        if (str(source), extra) not in _IGNORED_LOGGED:
            _IGNORED_LOGGED.add((str(source), extra))
            log.warning("%s: MMEB-V2 rows: ignoring the key(s) %s (not part of the format)", source, list(extra))
        obj = {k: v for k, v in obj.items() if k in keys or k == "id"}
    check_keys(obj, keys, {"id"}, source=source, record=record, what="MMEB-V2 row")
    infos = obj["dataset_infos"]
    if not isinstance(infos, dict):
        raise data_error("schema", "dataset_infos must be an object", source=source, record=record,
                         field="dataset_infos")
    texts, visuals = obj["cand_text"], obj["cand_image"]
    check_aligned_lists(texts, visuals, source=source, record=record, first_key="cand_text", second_key="cand_image",
                        what="visuals (null for none)")
    if "cand_names" not in infos:
        raise data_error("schema", "missing cand_names", source=source, record=record,
                         field="dataset_infos.cand_names")
    names = _names(infos["cand_names"], len(texts), source=source, record=record, field_name="dataset_infos.cand_names")
    cands = [V2Candidate(names[j], v2_item(t, v, source=source, record=record, field_name=f"cand[{j}]"))
             for j, (t, v) in enumerate(zip(texts, visuals))]
    rid = obj.get("id")
    rid = str(rid) if rid is not None else ""
    if corpus:
        return V2Row(query=None, candidates=cands, labels=[], id=rid)
    qtext = _one(obj["query_text"], source=source, record=record, field_name="query_text")
    qvis = _one(obj["query_image"], source=source, record=record, field_name="query_image")
    query = v2_item(qtext, qvis, source=source, record=record, field_name="query")
    if "label_name" not in infos:
        raise data_error("schema", "missing label_name", source=source, record=record,
                         field="dataset_infos.label_name")
    labels = _names(infos["label_name"], None, source=source, record=record, field_name="dataset_infos.label_name")
    rel: dict[str, float] = {}
    if infos.get("rel_scores") is not None:
        scores = infos["rel_scores"]
        graded = _graded_names(scores, names, labels, source=source, record=record)
        for j, s in enumerate(scores):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or s != s or s < 0:
                raise data_error("bad_score", f"relevance must be a number >= 0, got {s!r}", source=source,
                                 record=record, field=f"dataset_infos.rel_scores[{j}]")
            rel[graded[j]] = float(s)
    return V2Row(query=query, candidates=cands, labels=labels, rel_scores=rel, id=rid)


def _graded_names(scores: Any, names: list[str], labels: list[str], *, source, record) -> list[str]:
    """The names `rel_scores` grade, one per score: the labels (VLM2Vec's alignment: eval.py pairs
    ``label_name`` with ``rel_scores``) or the candidates (``cand_names``; grades for candidates that are not
    labels). Both lengths equal means both readings, and they must agree (VLM2Vec's visdoc rows list the same
    names in both)."""
    n = len(scores) if isinstance(scores, list) else -1
    if n == len(labels) and n == len(names) and labels != names:
        raise data_error("schema", f"{n} rel_scores for {n} labels and {n} candidates, which are not the same names "
                         "in the same order: which ones they grade is ambiguous (list label_name in cand_names' "
                         "order)", source=source, record=record, field="dataset_infos.rel_scores")
    if n == len(labels):
        return labels
    if n == len(names):
        return names
    raise data_error("schema", f"expected a list of {len(labels)} rel_scores (one per label_name, VLM2Vec's) or "
                     f"{len(names)} (one per candidate), got {n if n >= 0 else type(scores).__name__}",
                     source=source, record=record, field="dataset_infos.rel_scores")
