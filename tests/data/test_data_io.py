"""Record / eval-format readers and writers: round trips, every bad-input case, the skip policy."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re

import pytest
from PIL import Image

from tests.data.helpers import mined_parquet_with_one_video_negative
from unime.data.images import ImageLoader
from unime.data.io import (CompositionalPair, MMEBRow, RetrievalEntry, SkipReport, check_images, detect_format,
                           read_compositional, read_mmeb, read_records, read_retrieval, read_unime_v2_json,
                           write_compositional, write_mmeb, write_records, write_retrieval, write_unime_v2_json)
from unime.data.items import Item, Record
from unime.errors import DataError


def _png_bytes(colour=(255, 0, 0), size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _records() -> list[Record]:
    return [
        Record(Item("<|image_1|>\nRepresent the given image for classification: what shape is shown?",
                    ("images/a.png",)), Item("circle"), [Item("square"), Item("", ("images/b.png",))],
               positive_score=0.9, negative_scores=[0.25, 0.5], dataset="shape_cls", id="r1"),
        Record(Item("a red circle"), Item("<|image_1|>\nRepresent the given image.", ("images/a.png",)),
               dataset="t2i", id="r2"),
        Record(Item("no scores"), Item("x"), [Item("y")], dataset="", id=""),
    ]


def _write_lines(path, objs):
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs), encoding="utf-8")
    return path


GOOD = {"id": "q1", "dataset": "d", "query": {"text": "a red circle"}, "positive": {"text": "", "images": ["a.png"]},
        "negatives": [{"text": "a blue star"}], "positive_score": 0.75, "negative_scores": [0.5]}


# --- round trips ------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["jsonl", "parquet", "json"])
def test_round_trip_each_format(tmp_path, ext):
    recs = _records()
    path = tmp_path / f"r.{ext}"
    assert write_records(recs, path) == 3
    assert read_records(path) == recs


def test_round_trip_chain_jsonl_parquet_v2(tmp_path):
    recs = _records()
    write_records(recs, tmp_path / "a.jsonl")
    write_records(read_records(tmp_path / "a.jsonl"), tmp_path / "b.parquet")
    write_unime_v2_json(read_records(tmp_path / "b.parquet"), tmp_path / "c.json")
    write_records(read_unime_v2_json(tmp_path / "c.json"), tmp_path / "d.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "d.jsonl").read_bytes()


def test_parquet_holds_inline_images_and_jsonl_refuses_them(tmp_path):
    png = _png_bytes()
    recs = [Record(Item("q", (png,)), Item("p", ("rel/x.png",)), id="i")]
    write_records(recs, tmp_path / "r.parquet")
    back = read_records(tmp_path / "r.parquet")
    assert back[0].query.images == (png,) and back[0].positive.images == ("rel/x.png",)
    assert back[0].query.key == recs[0].query.key
    with pytest.raises(DataError, match="^record i, field 'images': items with inline images"):
        write_records(recs, tmp_path / "r.jsonl")
    assert not (tmp_path / "r.jsonl").exists()  # atomic: nothing half-written
    skips = SkipReport()  # under the skip policy: left out, counted, named, and the others written
    both = [Record(Item("q0"), Item("p0"), id="ok"), *recs]
    assert write_records(both, tmp_path / "r.jsonl", on_error="skip", skips=skips) == 1
    assert [r.id for r in read_records(tmp_path / "r.jsonl")] == ["ok"]
    assert dict(skips.counts) == {"output_format": 1} and skips.examples[0].record == "i"


def test_pil_image_is_stored_as_png_in_parquet(tmp_path):
    img = Image.new("RGB", (5, 4), (1, 2, 3))
    write_records([Record(Item("q", (img,)), Item("p"))], tmp_path / "r.parquet")
    data = read_records(tmp_path / "r.parquet")[0].query.images[0]
    assert isinstance(data, bytes) and Image.open(io.BytesIO(data)).getpixel((0, 0)) == (1, 2, 3)


def test_unime_v2_json_layout_matches_the_release(tmp_path):
    recs = [Record(Item("<|image_1|>\nq", ("img/q.png",)), Item("pos"), [Item("n", ("img/n.png",))],
                   positive_score=0.8, negative_scores=[0.1])]
    write_unime_v2_json(recs, tmp_path / "v2.json")
    data = json.loads((tmp_path / "v2.json").read_text())
    assert data == [{"query_text": "<|image_1|>\nq", "query_image": "img/q.png", "pos_text": "pos", "pos_image": "",
                     "query_pos_scores": 0.8, "hard_negatives": [["n", "img/n.png"]],
                     "hard_negatives_scores": [0.1]}]


def test_unime_v2_json_without_negative_scores(tmp_path):
    p = tmp_path / "v2.json"
    p.write_text(json.dumps([{"query_text": "q", "query_image": "", "pos_text": "", "pos_image": "a.jpg",
                              "query_pos_scores": 1, "hard_negatives": [["n1", ""], ["", "b.jpg"]]}]))
    (rec,) = read_records(p)
    assert rec.positive == Item("", ("a.jpg",)) and rec.negatives == [Item("n1"), Item("", ("b.jpg",))]
    assert rec.negative_scores is None and rec.positive_score == 1.0


def test_unime_v2_writer_refuses_two_images(tmp_path):
    rec = Record(Item("q", ("a.png", "b.png")), Item("p"), id="two")
    with pytest.raises(DataError) as e:
        write_unime_v2_json([rec], tmp_path / "v2.json")
    assert "record two" in str(e.value) and "'query'" in str(e.value)


def test_format_detection_from_content(tmp_path):
    write_records(_records(), tmp_path / "r.jsonl")
    (tmp_path / "noext").write_bytes((tmp_path / "r.jsonl").read_bytes())
    assert detect_format(tmp_path / "noext") == "jsonl"
    write_records(_records(), tmp_path / "r.parquet")
    (tmp_path / "noext2").write_bytes((tmp_path / "r.parquet").read_bytes())
    assert read_records(tmp_path / "noext2") == _records()
    write_records(_records(), tmp_path / "r.json")
    (tmp_path / "noext3").write_bytes((tmp_path / "r.json").read_bytes())
    assert detect_format(tmp_path / "noext3") == "unime_v2_json"


# --- bad input: every message names the file, the record and the field ---------------------------------

BAD_JSONL_CASES = [
    # (line content, expected record label, expected field, message fragment, reason)
    ('{"query": {"text": "a"}, "positive": ', "line 2", None, "malformed JSON", "malformed_json"),
    ({"id": "q9", "query": {"text": "a"}}, "line 2 (id q9)", "positive", "missing", "schema"),
    ({**GOOD, "colour": "red"}, "line 2 (id q1)", "colour", "unknown key", "schema"),
    ({**GOOD, "query": {"text": "a", "pixels": 3}}, "line 2 (id q1)", "query", "unknown keys", "schema"),
    ({**GOOD, "query": {"text": 7}}, "line 2 (id q1)", "query.text", "string", "schema"),
    ({**GOOD, "positive": {"images": "a.png"}}, "line 2 (id q1)", "positive.images", "list", "schema"),
    ({**GOOD, "negatives": {"text": "x"}}, "line 2 (id q1)", "negatives", "list", "schema"),
    ({**GOOD, "positive": {"text": "  "}}, "line 2 (id q1)", "positive", "empty item", "empty_item"),
    ({**GOOD, "negatives": [{"text": "x"}, {}], "negative_scores": [0.1, 0.2]}, "line 2 (id q1)", "negatives[1]",
     "empty item", "empty_item"),
    ({**GOOD, "positive_score": "high"}, "line 2 (id q1)", "positive_score", "number", "schema"),
    ({**GOOD, "positive_score": True}, "line 2 (id q1)", "positive_score", "number", "schema"),
    ({**GOOD, "negative_scores": [0.5, 0.1]}, "line 2 (id q1)", "negative_scores", "2 scores for 1", "schema"),
    ({**GOOD, "id": [1]}, "line 2", "id", "string", "schema"),
    ({**GOOD, "query": {"text": "<|image_1|>\nRepresent the given image."}}, "line 2 (id q1)", "query.text",
     "placeholder", "placeholder"),
    ({**GOOD, "query": {"text": "<|image_2|> vs <|image_1|>", "images": ["a.png"]}}, "line 2 (id q1)", "query.text",
     "<|image_2|>", "placeholder"),
    ('[1, 2]', "line 2", None, "JSON object", "schema"),
    # both keys: "image" was put before "images", without a word (QA)
    ({**GOOD, "positive": {"image": "a.png", "images": ["b.png"]}}, "line 2 (id q1)", "positive.image",
     "both positive.image and positive.images are given", "schema"),
    ({**GOOD, "negatives": [{"text": "x"}, {"image": "a.png", "images": []}], "negative_scores": [0.1, 0.2]},
     "line 2 (id q1)", "negatives[1].image", "both negatives[1].image and negatives[1].images", "schema"),
]


@pytest.mark.parametrize("line,record,field,fragment,reason", BAD_JSONL_CASES)
def test_bad_jsonl_line_names_file_record_field(tmp_path, line, record, field, fragment, reason):
    path = _write_lines(tmp_path / "bad.jsonl", [GOOD, line, GOOD])
    with pytest.raises(DataError) as e:
        read_records(path)
    msg = str(e.value)
    assert str(path) in msg and f"record {record}" in msg and fragment in msg
    if field is not None:
        assert f"field '{field}'" in msg
    assert e.value.reason == reason
    skips = SkipReport()
    recs = read_records(path, on_error="skip", skips=skips)
    assert len(recs) == 2 and skips.counts == {reason: 1}
    assert skips.examples[0].record == e.value.record and skips.examples[0].field == e.value.field


@pytest.mark.parametrize("raw,field", [("NaN", "positive_score"), ("Infinity", "positive_score"),
                                       ("-Infinity", "positive_score")])
def test_non_finite_scores_are_rejected(tmp_path, raw, field):
    line = json.dumps(GOOD).replace('"positive_score": 0.75', f'"positive_score": {raw}')
    path = _write_lines(tmp_path / "nan.jsonl", [line])
    with pytest.raises(DataError, match="not a finite number") as e:
        read_records(path)
    assert e.value.field == field and e.value.reason == "bad_score" and e.value.record == "line 1 (id q1)"


def test_nan_in_negative_scores_names_the_index(tmp_path):
    line = json.dumps(GOOD).replace('"negative_scores": [0.5]', '"negative_scores": [NaN]')
    with pytest.raises(DataError) as e:
        read_records(_write_lines(tmp_path / "nan.jsonl", [line]))
    assert e.value.field == "negative_scores[0]"


def test_records_built_in_memory_get_the_readers_score_check():
    """Training validates the records it is given (`check_records` -> `Record.validate`) by the readers' own
    `parse_score`: the same refusals, naming the field; 0 and 1 themselves are scores."""
    ok = Record(Item("q"), Item("p"), negatives=[Item("a"), Item("b")], positive_score=1, negative_scores=[0.0, 1.0])
    assert ok.validate() is ok
    for change, field, fragment in ((dict(positive_score=1.0000001), "positive_score", "outside [0, 1]"),
                                    (dict(negative_scores=[0.5, -1e-9]), "negative_scores[1]", "outside [0, 1]"),
                                    (dict(negative_scores=[math.inf, 0.5]), "negative_scores[0]", "not a finite")):
        with pytest.raises(DataError) as e:
            dataclasses.replace(ok, **change).validate(source="mem")
        assert fragment in str(e.value) and e.value.field == field and e.value.reason == "bad_score"


def test_writer_refuses_nan(tmp_path):
    rec = Record(Item("q"), Item("p"), positive_score=math.nan)
    with pytest.raises(ValueError):
        write_records([rec], tmp_path / "r.jsonl")


V2_GOOD = {"query_text": "q", "query_image": "", "pos_text": "p", "pos_image": "", "query_pos_scores": 0.9,
           "hard_negatives": [["n", ""]], "hard_negatives_scores": [0.2]}


@pytest.mark.parametrize("row,field,fragment,reason", [
    ({k: v for k, v in V2_GOOD.items() if k != "pos_text"}, "pos_text", "missing", "schema"),
    ({**V2_GOOD, "neg_text": "x"}, "neg_text", "unknown", "schema"),
    ({**V2_GOOD, "hard_negatives": [["n"]]}, "hard_negatives[0]", "pair", "schema"),
    ({**V2_GOOD, "hard_negatives": [["n", 3]]}, "hard_negatives[0][1]", "image path", "schema"),
    ({**V2_GOOD, "pos_text": ""}, "pos", "empty item", "empty_item"),
    ({**V2_GOOD, "hard_negatives_scores": [0.1, 0.3]}, "hard_negatives_scores", "2 scores for 1", "schema"),
    ({**V2_GOOD, "query_pos_scores": float("nan")}, "query_pos_scores", "finite", "bad_score"),
    ({**V2_GOOD, "query_pos_scores": 2}, "query_pos_scores", "score 2 is outside [0, 1]", "bad_score"),
    ({**V2_GOOD, "hard_negatives_scores": [-0.5]}, "hard_negatives_scores[0]", "outside [0, 1]", "bad_score"),
    ({**V2_GOOD, "query_text": "<|image_1|>\nq"}, "query_text", "placeholder", "placeholder"),
])
def test_bad_unime_v2_rows(tmp_path, row, field, fragment, reason):
    path = tmp_path / "v2.json"
    path.write_text(json.dumps([V2_GOOD, row]))
    with pytest.raises(DataError) as e:
        read_records(path)
    msg = str(e.value)
    assert str(path) in msg and "record item 2" in msg and f"field '{field}'" in msg and fragment in msg
    assert e.value.reason == reason
    skips = SkipReport()
    assert len(read_records(path, on_error="skip", skips=skips)) == 1 and skips.counts == {reason: 1}


def test_unime_v2_malformed_document(tmp_path):
    path = tmp_path / "v2.json"
    path.write_text('[\n{"query_text": "q",\n')
    with pytest.raises(DataError, match="malformed JSON") as e:
        read_records(path)
    assert str(path) in str(e.value) and e.value.record.startswith("line ")


def test_parquet_bad_row_and_bad_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_records(_records(), tmp_path / "r.parquet")
    table = pq.read_table(tmp_path / "r.parquet")
    rows = table.to_pylist()
    rows[1]["positive_score"] = float("inf")
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), tmp_path / "inf.parquet")
    with pytest.raises(DataError) as e:
        read_records(tmp_path / "inf.parquet")
    assert "record row 2 (id r2)" in str(e.value) and e.value.field == "positive_score"
    pq.write_table(table.drop_columns(["positive"]), tmp_path / "nopos.parquet")
    with pytest.raises(DataError) as e:
        read_records(tmp_path / "nopos.parquet")
    assert "nopos.parquet" in str(e.value) and e.value.field == "positive"
    pq.write_table(table.append_column("extra", pa.array([1, 2, 3])), tmp_path / "extra.parquet")
    with pytest.raises(DataError) as e:
        read_records(tmp_path / "extra.parquet", on_error="skip")  # a column problem is never skippable
    assert e.value.field == "extra"


def test_parquet_with_plain_string_image_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    item = pa.struct([("text", pa.string()), ("images", pa.list_(pa.string()))])
    t = pa.Table.from_pylist([{"query": {"text": "q", "images": ["a.png"]}, "positive": {"text": "p", "images": []}}],
                             schema=pa.schema([("query", item), ("positive", item)]))
    pq.write_table(t, tmp_path / "plain.parquet")
    assert read_records(tmp_path / "plain.parquet") == [Record(Item("q", ("a.png",)), Item("p"))]


def test_skip_report_counts_and_summary(tmp_path):
    lines = [GOOD, "{oops", {**GOOD, "positive_score": float("nan")}, "{oops2", {"query": {"text": "q"}},
             {**GOOD, "id": "ok2"}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    skips = SkipReport(max_examples=2)
    recs = read_records(path, on_error="skip", skips=skips)
    assert [r.id for r in recs] == ["q1", "ok2"]
    assert skips.counts == {"malformed_json": 2, "bad_score": 1, "schema": 1} and skips.total == 4
    assert len(skips.examples) == 2 and skips.examples[0].record == "line 2"
    text = skips.summary()
    assert "skipped 4 record(s)" in text and "malformed_json: 2" in text and "and 2 more" in text
    assert str(path) in text


def test_skip_without_report_logs_a_warning(tmp_path, caplog):
    path = _write_lines(tmp_path / "x.jsonl", [GOOD, "{bad"])
    with caplog.at_level("WARNING"):
        assert len(read_records(path, on_error="skip")) == 1
    assert "skipped 1 record(s)" in caplog.text


def test_on_error_must_be_known(tmp_path):
    path = _write_lines(tmp_path / "x.jsonl", [GOOD])
    with pytest.raises(ValueError, match="on_error"):
        read_records(path, on_error="ignore")


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="format"):
        read_records(tmp_path / "x.txt")


# --- MMEB-eval, retrieval, compositional ------------------------------------------------------------------

MMEB_ROW = {"qry_text": "<|image_1|>\nRepresent the given image for classification: what shape is shown?",
            "qry_img_path": "images/s1.png", "tgt_text": ["circle", "square", "star"],
            "tgt_img_path": ["", "", ""]}


def test_mmeb_row_parsing_keeps_placeholders_and_positive_first(tmp_path):
    i2i = {"qry_text": "<|image_1|>\nFind the same scene with the circle blue.", "qry_img_path": "q.png",
           "tgt_text": ["<|image_1|>\nRepresent the given image.", "<|image_1|>\nRepresent the given image."],
           "tgt_img_path": ["t0.png", "t1.png"], "id": "x7"}
    path = _write_lines(tmp_path / "t.jsonl", [MMEB_ROW, i2i])
    rows = read_mmeb(path)
    assert rows[0].query == Item(MMEB_ROW["qry_text"], ("images/s1.png",))
    assert rows[0].candidates == [Item("circle"), Item("square"), Item("star")] and rows[0].positive == Item("circle")
    assert rows[1].id == "x7" and rows[1].candidates[1] == Item("<|image_1|>\nRepresent the given image.", ("t1.png",))
    write_mmeb(rows, tmp_path / "back.jsonl")
    assert read_mmeb(tmp_path / "back.jsonl") == rows
    assert json.loads((tmp_path / "back.jsonl").read_text().splitlines()[0]) == MMEB_ROW


def test_mmeb_parquet_like_the_hf_release(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([MMEB_ROW]), tmp_path / "test.parquet")
    assert read_mmeb(tmp_path / "test.parquet")[0].positive == Item("circle")


@pytest.mark.parametrize("row,field,fragment,reason", [
    ({**MMEB_ROW, "tgt_img_path": ["", ""]}, "tgt_img_path", "3 target texts but 2", "schema"),
    ({**MMEB_ROW, "tgt_text": "circle"}, "tgt_text", "list", "schema"),
    ({**MMEB_ROW, "tgt_text": [], "tgt_img_path": []}, "tgt_text", "empty candidate list", "schema"),
    ({**MMEB_ROW, "tgt_text": ["circle", "", "star"]}, "candidates[1]", "empty item", "empty_item"),
    ({**MMEB_ROW, "qry_img_path": ""}, "qry_text", "placeholder", "placeholder"),
    ({k: v for k, v in MMEB_ROW.items() if k != "qry_img_path"}, "qry_img_path", "missing", "schema"),
    ({**MMEB_ROW, "task": "x"}, "task", "unknown", "schema"),
])
def test_bad_mmeb_rows(tmp_path, row, field, fragment, reason):
    path = _write_lines(tmp_path / "m.jsonl", [MMEB_ROW, row])
    with pytest.raises(DataError) as e:
        read_mmeb(path)
    msg = str(e.value)
    assert str(path) in msg and "record line 2" in msg and f"field '{field}'" in msg and fragment in msg
    skips = SkipReport()
    assert len(read_mmeb(path, on_error="skip", skips=skips)) == 1 and skips.counts == {reason: 1}


def test_retrieval_and_compositional_round_trip_and_errors(tmp_path):
    entries = [RetrievalEntry("images/a.png", ["a red circle", "a circle"], id="a"),
               RetrievalEntry("images/b.png", ["a blue star"])]
    write_retrieval(entries, tmp_path / "r.jsonl")
    assert read_retrieval(tmp_path / "r.jsonl") == entries
    pairs = [CompositionalPair("images/a.png", "a red circle", "a blue circle", "replace", id="p0")]
    write_compositional(pairs, tmp_path / "c.jsonl")
    assert read_compositional(tmp_path / "c.jsonl") == pairs
    _write_lines(tmp_path / "bad_r.jsonl", [{"image": "a.png", "captions": ["ok", " "]}])
    with pytest.raises(DataError) as e:
        read_retrieval(tmp_path / "bad_r.jsonl")
    assert "bad_r.jsonl" in str(e.value) and e.value.record == "line 1" and e.value.field == "captions[1]"
    _write_lines(tmp_path / "bad_c.jsonl", [{"image": "a.png", "positive": "x", "category": "swap"}])
    with pytest.raises(DataError) as e:
        read_compositional(tmp_path / "bad_c.jsonl")
    assert e.value.field == "negative"


# --- check_images ---------------------------------------------------------------------------------------

def test_check_images_validates_every_reference(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "ok.png")
    (tmp_path / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.new("RGB", (100, 100)).save(tmp_path / "img" / "big.png")
    recs = [Record(Item("q", ("img/ok.png",)), Item("p", ("img/ok.png",)), id="good"),
            Record(Item("q"), Item("p"), [Item("n", ("img/missing.png",))], id="missing"),
            Record(Item("q", ("img/corrupt.png",)), Item("p"), id="corrupt"),
            Record(Item("q"), Item("", ("img/big.png",)), id="big"),
            Record(Item("q", ("../outside.png",)), Item("p"), id="escape"),
            Record(Item("q", (_png_bytes(),)), Item("p"), id="inline")]
    loader = ImageLoader(tmp_path, max_pixels=50 * 50)
    with pytest.raises(DataError) as e:
        check_images(recs, loader, source="train.jsonl")
    assert "train.jsonl" in str(e.value) and e.value.record == "missing" and e.value.field == "negatives[0].images[0]"
    skips = SkipReport()
    good = check_images(recs, loader, on_error="skip", skips=skips, source="train.jsonl")
    assert [r.id for r in good] == ["good", "inline"]
    assert skips.counts == {"image": 4}
    fields = {ex.record: (ex.field, ex.message) for ex in skips.examples}
    assert fields["corrupt"][0] == "query.images[0]" and "corrupt" in fields["corrupt"][1]
    assert fields["big"][0] == "positive.images[0]" and "over the limit" in fields["big"][1]
    assert "escapes the data root" in fields["escape"][1]
    rows = [MMEBRow(Item("q"), [Item("c0"), Item("", ("img/missing.png",))], id="m1")]
    with pytest.raises(DataError) as e:
        check_images(rows, loader)
    assert e.value.field == "candidates[1].images[0]" and e.value.record == "m1"


def test_a_jsonl_line_error_names_the_column_where_it_is_and_a_byte_order_mark_is_read_as_nothing(tmp_path):
    """QA: a truncated line was reported at column 1 (of the line break after it), a control character "at at
    column N", and a file starting with a UTF-8 byte-order mark (as Windows tools write) was refused."""
    from unime.data.jsonl import iter_jsonl

    good = '{"query": {"text": "q"}, "positive": {"text": "p"}}'
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + good.encode() + b"\n" + good.encode() + b"\n")
    assert [r.query.text for r in read_records(bom)] == ["q", "q"]
    cut = tmp_path / "cut.jsonl"
    cut.write_text(good + "\n" + '{"query": {"text": "q"}' + "\n")
    with pytest.raises(DataError, match=r"line 2: malformed JSON: Expecting ',' delimiter at column 24$"):
        list(iter_jsonl(cut))
    control = tmp_path / "control.jsonl"
    control.write_text('{"query": {"text": "a\tb"}}\n')
    with pytest.raises(DataError, match=r"line 1: malformed JSON: Invalid control character at column 22$"):
        list(iter_jsonl(control))
    late_bom = tmp_path / "late_bom.jsonl"  # a mark inside the file is not a byte-order mark: refused
    late_bom.write_bytes(good.encode() + b"\n\xef\xbb\xbf" + good.encode() + b"\n")
    with pytest.raises(DataError, match="line 2: malformed JSON"):
        list(iter_jsonl(late_bom))


@pytest.mark.parametrize("field", ["images", "video"])
def test_item_refuses_a_single_reference_instead_of_a_sequence(field):
    """Item(images="x.png") iterated the path's characters ("image file not found: 'x'"); a PIL image gave a raw
    TypeError. Now both are refused, naming the field; lists and tuples are still accepted (QA)."""
    for single in ("path.png", b"\x89PNG", Image.new("RGB", (4, 4)), {"image": "x.png"}, 3):
        with pytest.raises(DataError, match=rf"field '{field}'.*{field} must be a list or tuple.*got a single"):
            Item(**{field: single})
    assert getattr(Item(**{field: ["a.png", "b.png"]}), field) == ("a.png", "b.png")


def test_an_items_image_or_video_given_as_a_pathlib_path_is_its_path(tmp_path):
    """QA (Python API): `emb.encode([{"image": Path("img.png")}])` was refused with "expected an image path, bytes or a
    PIL image, got PosixPath" (a path is what it had been given), `Item(images=[Path(...)])` failed at its key
    ("unsupported image reference of type PosixPath"). A path (`os.PathLike`) is its string, wherever an image
    or a video is given: the same item, with the same key, as the string gives. What is not a path still names
    the type it got."""
    from pathlib import Path

    import numpy as np

    from unime.data.items import item_list
    from unime.data.video import VideoFileRef

    for given, as_str in (({"image": Path("imgs/a.png")}, {"image": "imgs/a.png"}),
                          ({"images": [Path("a.png"), "b.png"]}, {"images": ["a.png", "b.png"]}),
                          ({"text": "t", "video": Path("clips/c.mp4")}, {"text": "t", "video": "clips/c.mp4"}),
                          ({"video": (Path("f0.png"), Path("f1.png"))}, {"video": ["f0.png", "f1.png"]})):
        item = Item.from_dict(given)
        assert item == Item.from_dict(as_str) and item.key == Item.from_dict(as_str).key
        assert all(type(r) in (str, VideoFileRef) for r in item.images + item.video)
    assert type(Item.from_dict({"video": Path("clips/c.mp4")}).video[0]) is VideoFileRef
    direct = Item(text="t", images=[Path("a.png")], video=(Path("f0.png"),))
    assert direct == Item(text="t", images=("a.png",), video=("f0.png",)) and direct.key == Item(
        text="t", images=("a.png",), video=("f0.png",)).key
    assert Item(images=[Path("a.png")]).to_dict() == {"text": "", "images": ["a.png"]}
    array = np.zeros((2, 2, 3), dtype=np.uint8)  # not a path, bytes or a PIL image: named by its type
    for bad, field in (({"image": array}, "items[0].image"), ({"images": [array]}, "items[0].images")):
        with pytest.raises(DataError, match=rf"field '{re.escape(field)}': .*got ndarray$"):
            item_list([bad])


def test_an_image_given_alone_as_an_item_says_how_to_make_it_one():
    """QA (Python API): `emb.encode([Image.open("a.png")])` (or a `Path`, or the file's bytes) was refused with
    "expected an object, got PngImageFile": an image alone is the item {"image": ...}. What JSON can hold (a list, a
    number) keeps the readers' words."""
    from pathlib import Path

    from unime.data.items import item_list

    for image, kind in ((Image.new("RGB", (4, 4)), "Image"), (Path("a.png"), "PosixPath"), (b"\x89PNG", "bytes")):
        with pytest.raises(DataError) as refused:
            item_list(["a caption", image])
        assert str(refused.value) == f"field 'items[1]': expected an object, got {kind}: an image alone is the item " \
                                     "{'image': ...}"
    with pytest.raises(DataError) as refused:
        item_list([["a"]])
    assert str(refused.value) == "field 'items[0]': expected an object, got list"


def test_a_folder_given_as_the_records_file_is_named_as_a_folder(tmp_path):
    """QA (Python API): `EmbedderTrainingConfig(records="mydata/train")` (the folder `unime data import` wrote, not its
    records.jsonl) was refused as "record file not found": the folder is there. It is named as a folder, with the
    record files it holds."""
    from unime.data.io import read_records

    (tmp_path / "records.jsonl").write_text("")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(DataError) as refused:
        read_records(tmp_path)
    assert str(refused.value) == f"{tmp_path}: a folder, not a record file (it holds records.jsonl)"
    (tmp_path / "records.jsonl").unlink()
    with pytest.raises(DataError) as refused:
        read_records(tmp_path)
    assert str(refused.value) == f"{tmp_path}: a folder, not a record file"
    with pytest.raises(DataError) as refused:
        read_records(tmp_path / "none.jsonl")
    assert str(refused.value) == f"{tmp_path / 'none.jsonl'}: record file not found"


def test_convert_under_skip_leaves_out_the_records_the_json_cannot_hold_and_writes_the_rest(tmp_path):
    from unime.data.file_tools import ConvertConfig, convert_records

    src = mined_parquet_with_one_video_negative(tmp_path / "mined.parquet")
    n, skips = convert_records(ConvertConfig(input=src, output=str(tmp_path / "conv.json"), on_error="skip"))
    assert n == 2 and [r.id for r in read_unime_v2_json(tmp_path / "conv.json")] == ["m1", "m3"]
    assert skips.total == 1 and dict(skips.counts) == {"output_format": 1}
    # named with the file it was read from, as the reader's errors
    assert skips.examples[0].message == (f"{src}, record row 2 (id m2), field 'negatives[1]': the UniME-V2 JSON "
                                         "format holds no video")
    # the default policy still stops at the record, writing nothing
    with pytest.raises(DataError, match=rf"^{re.escape(src)}, record row 2 \(id m2\), field 'negatives\[1\]': the "
                       "UniME-V2 JSON format holds no "):
        convert_records(ConvertConfig(input=src, output=str(tmp_path / "raise.json")))
    assert not (tmp_path / "raise.json").exists()


def test_convert_refuses_when_every_record_is_skipped_and_writes_nothing(tmp_path, capsys):
    """Every record skipped under --on-error skip wrote an empty output file (exit 0). Now a one-line error names
    the count, the reasons and the first record's reason; the output is not written (QA)."""
    from unime.cli import main
    from unime.data.file_tools import ConvertConfig, convert_records

    src = tmp_path / "bad.jsonl"
    _write_lines(src, [{"query": {"text": "a"}}, {"query": {"text": "b"}, "positive": {"text": ""}}])
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError) as err:
        convert_records(ConvertConfig(input=str(src), output=str(out), on_error="skip"))
    assert str(err.value) == (f"{src}: every record was skipped, 2 (empty_item: 1, schema: 1), so {out} was not "
                              f"written; the first: {src}, record line 1, field 'positive': missing key(s) "
                              "['positive']")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]
    # records the output format cannot hold, all of them: refused the same way, through the command line
    video = tmp_path / "video.jsonl"
    _write_lines(video, [{"id": "v1", "query": {"text": "q", "video": "clips/a.mp4"}, "positive": {"text": "p"}}])
    assert main(["data", "convert", str(video), str(tmp_path / "out.json"), "--on-error", "skip"]) == 2
    assert ("every record was skipped, 1 (output_format: 1), so " in capsys.readouterr().err
            and not (tmp_path / "out.json").exists())
    # a valid input with no record at all is still converted to an empty file
    (tmp_path / "empty.jsonl").write_text("")
    assert convert_records(ConvertConfig(input=str(tmp_path / "empty.jsonl"), output=str(out)))[0] == 0
    assert out.read_text() == ""


def test_convert_names_an_id_less_record_the_output_cannot_hold_by_its_input_line(tmp_path):
    """A record without an id skipped for the output format was named by its position among the records written
    ("item 2": a malformed line before it was already left out); now by the line it was read from (QA)."""
    from unime.data.file_tools import ConvertConfig, convert_records

    src = tmp_path / "r.jsonl"
    _write_lines(src, [{"id": "r1", "query": {"text": "a"}, "positive": {"text": "b"}}, "not json",
                       {"query": {"text": "q", "video": "clips/x.mp4"}, "positive": {"text": "p"}},
                       {"query": {"text": "q", "images": ["a.png", "b.png"]}, "positive": {"text": "p"}}])
    n, skips = convert_records(ConvertConfig(input=str(src), output=str(tmp_path / "out.json"), on_error="skip"))
    assert n == 1 and [e.record for e in skips.examples] == ["line 2", "line 3", "line 4"]
    assert skips.examples[1].message == f"{src}, record line 3, field 'query': the UniME-V2 JSON format holds no video"
    # with --dataset too (it named them "item 1", "item 2": their positions among the records written)
    n, skips = convert_records(ConvertConfig(input=str(src), output=str(tmp_path / "out2.json"), on_error="skip",
                                             dataset="d"))
    assert n == 1 and [e.record for e in skips.examples] == ["line 2", "line 3", "line 4"]
    assert read_unime_v2_json(tmp_path / "out2.json")[0].dataset == "d"
    # a record not read from a file (inline images in JSONL: the item's own error): named by its index in the list
    rec = Record(Item("q", (_png_bytes(),)), Item("p"))
    with pytest.raises(DataError, match=r"^record records\[0\], field 'images"):
        write_records([rec], tmp_path / "inline.jsonl")


def test_convert_names_a_record_with_an_id_the_output_cannot_hold_by_its_input_line_and_id(tmp_path):
    """A record with an id skipped for the output format was named by its id alone ("record r3"), unlike the
    reader's skips ("record line 2 (id r2)"); now by its input file, line and id (QA)."""
    from unime.data.file_tools import ConvertConfig, convert_records

    src = _write_lines(tmp_path / "r.jsonl", [
        {"query": {"text": "a"}, "positive": {"text": "b"}}, {"id": "r2", "query": {"text": "q"}},
        {"id": "r3", "query": {"text": "q", "video": "clips/x.mp4"}, "positive": {"text": "p"}}])
    for extra in ({}, {"dataset": "d"}):  # --dataset copies the records
        n, skips = convert_records(ConvertConfig(input=str(src), output=str(tmp_path / "out.json"),
                                                 on_error="skip", **extra))
        assert n == 1 and [e.record for e in skips.examples] == ["line 2 (id r2)", "line 3 (id r3)"]
        assert skips.examples[1].message == (f"{src}, record line 3 (id r3), field 'query': the UniME-V2 JSON "
                                             "format holds no video")
    # the writer given no source names the record as every message does, by its line and id (review: by its id alone,
    # "record r3", where the reader, the trainers and the checks said "record line 3 (id r3)")
    rec = read_records(src, on_error="skip")[-1]
    with pytest.raises(DataError) as refused:
        write_records([rec], tmp_path / "direct.json")
    assert str(refused.value) == "record line 3 (id r3), field 'query': the UniME-V2 JSON format holds no video"
    # a record made in memory: its id, else its index in the list given
    made = Record(Item("q", video=("clips/x.mp4",)), Item("p"), id="m1")
    for records, name in (([made], "m1"), ([dataclasses.replace(made, id="")], "records[0]")):
        with pytest.raises(DataError) as refused:
            write_records(records, tmp_path / "made.json")
        assert str(refused.value) == f"record {name}, field 'query': the UniME-V2 JSON format holds no video"


def test_data_convert_command_reports_the_records_left_out(tmp_path, capsys):
    from unime.cli import main

    src = mined_parquet_with_one_video_negative(tmp_path / "mined.parquet")
    assert main(["data", "convert", src, str(tmp_path / "conv.json"), "--on-error", "skip"]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'conv.json'}: 2 records" in out
    assert "skipped 1 record(s) (output_format: 1)" in out
    assert f"  - {src}, record row 2 (id m2), field 'negatives[1]'" in out


def test_a_misspelt_key_is_named_beside_the_missing_one(tmp_path):
    """QA (own data): a record with `positve` for `positive` was refused as "field 'positive': missing key(s)
    ['positive']", silent about the key it does hold; the line now names the unknown key too and says to rename it."""
    path = _write_lines(tmp_path / "typo.jsonl", [{"id": "r1", "query": {"text": "a"}, "positve": {"text": "b"}}])
    with pytest.raises(DataError) as e:
        read_records(path)
    assert str(e.value) == (f"{path}, record line 1 (id r1), field 'positive': missing key(s) ['positive'] with "
                            "unknown key(s) ['positve'] given: rename them to the expected keys ['dataset', 'id', "
                            "'negative_scores', 'negatives', 'positive', 'positive_score', 'query']")
    assert e.value.reason == "schema"


def _damage_column(path, column: str, row_group: int = 0) -> None:
    """Overwrite 16 bytes in the middle of `column`'s pages in `row_group` with zeros (the footer stays intact)."""
    import pyarrow.parquet as pq

    group = pq.ParquetFile(path).metadata.row_group(row_group)
    col = next(group.column(i) for i in range(group.num_columns) if group.column(i).path_in_schema == column)
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    data = bytearray(path.read_bytes())
    middle = start + col.total_compressed_size // 2
    data[middle:middle + 16] = bytes(16)
    path.write_bytes(bytes(data))


def test_a_parquet_file_with_damaged_data_pages_is_a_data_error_naming_the_file_and_row_group(tmp_path, capsys):
    """QA: a records / eval Parquet file whose footer is intact but whose data pages are damaged (a disk error, a
    copy gone wrong) opened fine and then ended in pyarrow's traceback while its rows were read (OSError "Couldn't
    deserialize thrift ... Deserializing page header failed", "Corrupt snappy compressed data", ArrowInvalid, ...).
    It is a `DataError` naming the file and the row group, under on_error="skip" too (no row of it is readable)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from unime.cli import main

    path = tmp_path / "records.parquet"
    write_records(_records(), path)
    _damage_column(path, "positive.text")
    with pytest.raises(OSError):  # what pyarrow says of it
        pq.read_table(path)
    for on_error in ("raise", "skip"):
        with pytest.raises(DataError) as e:
            read_records(path, on_error=on_error)
        assert str(e.value).startswith(f"{path}: row group 1 of 1 (rows 1 to 3) could not be read: the file is "
                                       "damaged (Couldn't deserialize thrift")
        assert str(e.value).endswith("); write or copy it again") and "\n" not in str(e.value)
    assert main(["data", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"unime: error: {path}: row group 1 of 1 (rows 1 to 3) could not be read")
    assert err.count("\n") == 1

    rows = [{**MMEB_ROW, "qry_text": f"what shape is shown in picture {i}?"} for i in range(4)]
    mmeb = tmp_path / "test.parquet"  # eval rows, the HF release's layout, in two row groups: the second damaged
    pq.write_table(pa.Table.from_pylist(rows), mmeb, row_group_size=2)
    _damage_column(mmeb, "tgt_text.list.element", row_group=1)
    assert pq.ParquetFile(mmeb).read_row_group(0).num_rows == 2
    with pytest.raises(OSError):
        pq.ParquetFile(mmeb).read_row_group(1)
    with pytest.raises(DataError) as e:
        read_mmeb(mmeb)
    assert str(e.value) == (f"{mmeb}: row group 2 of 2 (rows 3 to 4) could not be read: the file is damaged "
                            "(Corrupt snappy compressed data.); write or copy it again")


def test_a_changed_byte_in_a_page_of_unime_s_parquet_is_a_data_error_not_a_changed_value(tmp_path):
    """QA: a data page damaged so that it still decodes read with changed values, silently (measured on a 500-record
    file written by write_records, 198 of 1,161 damaged copies, 9910ba6). Every Parquet file unime writes carries a
    CRC checksum of each page and its readers check them: a changed byte is the row group's `DataError`. A file
    without checksums (pyarrow's and pandas' default) still reads, unchecked."""
    import pyarrow.parquet as pq

    path = tmp_path / "records.parquet"
    write_records(_records(), path)
    plain = tmp_path / "plain.parquet"  # the same records, as a user's own file
    pq.write_table(pq.read_table(path), plain)
    for p in (path, plain):
        data = bytearray(p.read_bytes())
        assert data.count(b"a red circle") == 1  # in the page only: the middle query text is no min / max statistic
        data[data.find(b"a red circle") + 3] = ord("o")  # "a rod circle"
        p.write_bytes(bytes(data))
    with pytest.raises(DataError) as e:
        read_records(path)
    assert str(e.value) == (f"{path}: row group 1 of 1 (rows 1 to 3) could not be read: the file is damaged (could "
                            "not verify page integrity, CRC checksum verification failed for page_ordinal 0); write "
                            "or copy it again")
    assert [r.query.text for r in read_records(plain)][1:] == ["a rod circle", "no scores"]


def test_an_items_file_line_with_both_image_and_images_is_refused_naming_it_and_both_fields(tmp_path):
    """QA: an item with both "image" and "images" was read as the two lists joined ("image" first) without a word, in
    the items files `unime embed` / `index build` read as in records files. It is a DataError (skip reason schema)
    naming the line, the id and both fields; under on_error="skip" the line is left out and counted."""
    from unime.data.corpus import read_corpus

    path = _write_lines(tmp_path / "items.jsonl", [{"id": "a", "text": "x"},
                                                   {"id": "b", "image": "a.png", "images": ["b.png"]}])
    with pytest.raises(DataError) as e:
        read_corpus(path)
    assert str(e.value) == (f"{path}, record line 2 (id b), field 'item.image': both item.image and item.images are "
                            "given: give one, every image in item.images")
    skips = SkipReport()
    assert [x.id for x in read_corpus(path, on_error="skip", skips=skips)] == ["a"] and skips.counts == {"schema": 1}
    assert Item.from_dict({"image": "a.png"}).images == ("a.png",) == Item.from_dict({"images": ["a.png"]}).images
