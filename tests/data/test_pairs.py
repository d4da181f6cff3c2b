"""`unime.data.pairs.read_pairs`: a bad pair is named by its line and, when it gives one, its id (README: "a bad
row is named by its file and line (and id when it has one)")."""

from __future__ import annotations

import json

import pytest

from unime.data.images import ImageLoader
from unime.data.io import ImageChecker
from unime.data.pairs import read_pairs
from unime.data.skips import SkipReport
from unime.errors import DataError


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_a_pair_with_a_missing_video_is_named_by_its_line_and_id(tmp_path):
    """QA (video): `unime judge --pairs` of a pair {"id": "p2", ...} whose candidate video is missing said
    "record line 2, field 'candidate.video[0]'", without the id; a pair without an id is named by its line alone."""
    path = _write(tmp_path / "pairs.jsonl", [
        {"id": "p1", "query": {"text": "a"}, "candidate": {"text": "b"}},
        {"id": "p2", "query": {"text": "a"}, "candidate": {"video": "clips/nope.mp4"}},
        {"query": {"text": "a"}, "candidate": {"video": "clips/gone.mp4"}},
        {"id": 7, "query": {"video": "clips/lost.mp4"}, "candidate": {"text": "b"}},
    ])
    checker = ImageChecker(ImageLoader(str(tmp_path)))
    with pytest.raises(DataError) as refused:
        read_pairs(path, images=checker)
    assert str(refused.value) == (f"{path}, record line 2 (id p2), field 'candidate.video[0]': video file not found: "
                                  f"'clips/nope.mp4' (looked in {str(tmp_path)!r})")
    skips = SkipReport()
    pairs = read_pairs(path, images=checker, on_error="skip", skips=skips)
    assert [p[0] for p in pairs] == ["p1"]
    assert [(e.record, e.field) for e in skips.examples] == [
        ("line 2 (id p2)", "candidate.video[0]"), ("line 3", "candidate.video[0]"), ("line 4 (id 7)", "query.video[0]")]
