"""The checks of a T-CoT file shared by `reason materialize`, `reason split` and the reasoner SFT
(`unime.reasoning.reasoner.parse_tcot_row`): what one refuses, the others refuse, naming the T-CoT file's line,
record id and side; evidence merely too small to crop is counted, not refused."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from unime.data.io import write_records
from unime.data.items import Item, Record
from unime.reasoning.reasoner import TCoTRow, write_tcot_rows
from unime.reasoning.tcot import TCoTError

OK_TEXT = '<thinking>{"text_keywords": ["red"]}</thinking><rethink>Red.</rethink><answer>red</answer>'


def _tcot(thinking: str) -> str:
    return f"<thinking>{thinking}</thinking><rethink>A square.</rethink><answer>square</answer>"


def _files(tmp_path, target_tcot: str):
    """r.jsonl: one record (a text query, an image positive of 100x100 px); t.jsonl: its two T-CoTs, the target's
    (line 2) `target_tcot`."""
    Image.new("RGB", (100, 100), (200, 0, 0)).save(tmp_path / "a.png")
    rec = Record(query=Item(text="find red"), positive=Item(text="<|image_1|>\nRepresent the image.",
                                                           images=("a.png",)), id="x", dataset="d")
    write_records([rec], tmp_path / "r.jsonl")
    write_tcot_rows([TCoTRow("x", "query", rec.query, OK_TEXT), TCoTRow("x", "target", rec.positive, target_tcot)],
                    tmp_path / "t.jsonl")
    return str(tmp_path / "r.jsonl"), str(tmp_path / "t.jsonl")


def _materialize(tmp_path, records, tcots, **kw):
    from unime.embed_rl.tcot_embedder import MaterializeConfig, materialize_records_file

    return materialize_records_file(MaterializeConfig(records=records, tcots=tcots, out=str(tmp_path / "o.parquet")),
                                    **kw)


def _split(tmp_path, records, tcots):
    from unime.embed_rl.tcot_embedder import SplitConfig, split_records_file

    # the T-CoTs are checked first: no judge is loaded (there is none here)
    return split_records_file(SplitConfig(records=records, tcots=tcots, judge=str(tmp_path / "no-judge"),
                                          out_dir=str(tmp_path / "split")))


BAD = [
    # before: materialize dropped these crops without a word (and SFT trained on them)
    ('{"bbox_2d": [[1200, 1200, 1900, 1900]]}', "thinking.bbox_2d[0]",
     "box [1200, 1200, 1900, 1900] lies wholly outside the image (coordinates are normalised to 0-1000)"),
    ('{"bbox_2d": [[0, 0, 500, 500], [900, 900, 100, 100]]}', "thinking.bbox_2d[1]",
     "box [900, 900, 100, 100] is inverted (x1 > x2)"),
    ('{"bbox_2d": [[100, 600, 900, 500]]}', "thinking.bbox_2d[0]", "box [100, 600, 900, 500] is inverted (y1 > y2)"),
    # before: materialize named the records file's line and said "invalid JSON ... char 10"; split accepted it
    ("just prose, no json", "thinking", "no JSON evidence object in <thinking>"),
    # before: split accepted it
    ('{"bbox_2d": [[NaN, 100, 900, 900]]}', "thinking.bbox_2d[0][0]", "is nan"),
]


@pytest.mark.parametrize("run", [_materialize, _split], ids=["materialize", "split"])
@pytest.mark.parametrize("thinking,field,message", BAD, ids=["outside", "inverted-x", "inverted-y", "prose", "nan"])
def test_a_bad_tcot_is_refused_naming_the_tcot_files_line_and_side(tmp_path, run, thinking, field, message):
    records, tcots = _files(tmp_path, _tcot(thinking))
    with pytest.raises(TCoTError) as e:
        run(tmp_path, records, tcots)
    assert (e.value.source, e.value.record, e.value.field) == (tcots, "line 2 (id x, side target)", field)
    assert message in str(e.value)
    assert not (tmp_path / "o.parquet").exists() and not (tmp_path / "split" / "contrastive.jsonl").exists()


def test_a_box_partly_outside_is_clamped_and_kept(tmp_path):
    """[900, 900, 1100, 1100] on a 100x100 image: clamped to pixels 90..100, a 10x10 crop (kept, nothing left out)."""
    from unime.data.io import read_records

    records, tcots = _files(tmp_path, _tcot('{"bbox_2d": [[900, 900, 1100, 1100]]}'))
    left_out: list[str] = []
    assert _materialize(tmp_path, records, tcots, left_out=left_out) == 1 and left_out == []
    (out,) = read_records(tmp_path / "o.parquet")
    assert len(out.positive.images) == 2 and Image.open(io.BytesIO(out.positive.images[1])).size == (10, 10)


def test_a_box_too_thin_to_crop_is_counted_and_reported(tmp_path, capsys):
    """[100, 100, 102, 900] on a 100x100 image is 0x80 px (x: round(10.0) .. round(10.2)): no crop. It stays a
    documented drop, but the command says how many were left out (before: nothing)."""
    from unime.cli import main

    records, tcots = _files(tmp_path, _tcot('{"bbox_2d": [[100, 100, 102, 900]]}'))
    left_out: list[str] = []
    assert _materialize(tmp_path, records, tcots, left_out=left_out) == 1
    assert left_out == ["record line 1 (id x), positive: bbox_2d[0] too small or too elongated to crop (0x80 px)"]
    capsys.readouterr()
    assert main(["reason", "materialize", "--records", records, "--tcots", tcots, "--out",
                 str(tmp_path / "o2.parquet")]) == 0
    assert capsys.readouterr().out.strip() == (f"{tmp_path / 'o2.parquet'}: 1 reasoned records; 1 piece(s) of "
                                               "evidence left out (too small or too elongated to crop, or no image "
                                               "to crop)")


def test_materialize_without_tcots_says_so(tmp_path, capsys):
    from unime.cli import main

    records, _ = _files(tmp_path, OK_TEXT)
    assert main(["reason", "materialize", "--records", records, "--no-tcots", "--out", str(tmp_path / "o.parquet")]) \
        == 0
    assert capsys.readouterr().out.strip() == f"{tmp_path / 'o.parquet'}: 1 records (no T-CoTs)"


def test_a_good_tcot_file_passes_the_check_of_split(tmp_path):
    """The split's check refuses nothing good: with good T-CoTs it goes on to the judge (missing here)."""
    from unime.errors import ModelError

    records, tcots = _files(tmp_path, _tcot('{"bbox_2d": [[100, 100, 900, 900]]}'))
    with pytest.raises(ModelError, match="no-judge': no such folder"):
        _split(tmp_path, records, tcots)


def test_materialize_refuses_a_tcot_of_another_image_naming_the_tcot_files_line(tmp_path):
    """Before, a T-CoT file of other records (here: its target row written for b.png) was joined to the record by id
    alone, and its box cropped a.png. The refusal names the T-CoT file beside its line (before: "the T-CoT line 2"
    of no file, only the records file named)."""
    import re

    from unime.errors import DataError

    records, tcots = _files(tmp_path, _tcot('{"bbox_2d": [[100, 100, 900, 900]]}'))
    Image.new("RGB", (100, 100), (0, 0, 200)).save(tmp_path / "b.png")
    rec = Record(query=Item(text="find red"), positive=Item(text="<|image_1|>\nRepresent the image.",
                                                           images=("b.png",)), id="x")
    write_tcot_rows([TCoTRow("x", "query", rec.query, OK_TEXT),
                     TCoTRow("x", "target", rec.positive, _tcot('{"bbox_2d": [[100, 100, 900, 900]]}'))], tcots)
    with pytest.raises(DataError, match=r"r\.jsonl, record x, field 'positive': the T-CoT line 2 \(id x, side "
                                        rf"target\) of {re.escape(tcots)} was written for another item "
                                        r"\(.*images \['b\.png'\]\) than the record's \(.*images \['a\.png'\]\)"):
        _materialize(tmp_path, records, tcots)


def test_materialize_of_no_records_warns_naming_both_inputs(tmp_path, caplog):
    """QA: a records file without records (a split that sent every pair to RL leaves contrastive.jsonl empty) was
    materialized into "0 reasoned records" without a word; the empty file failed a command later."""
    _, tcots = _files(tmp_path, OK_TEXT)
    (tmp_path / "empty.jsonl").write_text("")
    empty = str(tmp_path / "empty.jsonl")
    with caplog.at_level("WARNING", logger="unime.embed_rl.tcot_embedder"):
        assert _materialize(tmp_path, empty, tcots) == 0
    (message,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert message.startswith(f"{empty} holds no records (2 T-CoT rows in {tcots}): {tmp_path / 'o.parquet'} is "
                              "written with 0 records, nothing for `unime train embedder` to train on")
    caplog.clear()
    records, _ = _files(tmp_path, OK_TEXT)
    with caplog.at_level("WARNING", logger="unime.embed_rl.tcot_embedder"):
        assert _materialize(tmp_path, records, tcots) == 1
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_materialize_refuses_two_tcots_of_one_side_naming_the_tcot_files_lines(tmp_path):
    """Before: "record x, field 'side': two T-CoTs for record 'x' side 'target'", no file and no line."""
    from unime.errors import DataError

    records, tcots = _files(tmp_path, OK_TEXT)
    with open(tcots, "a", encoding="utf-8") as fh:  # line 3: the target's row again
        fh.write(open(tcots, encoding="utf-8").read().splitlines()[1] + "\n")
    with pytest.raises(DataError) as e:
        _materialize(tmp_path, records, tcots)
    assert (e.value.source, e.value.record, e.value.field) == (tcots, "line 3 (id x, side target)", "side")
    assert "two T-CoTs for record 'x' side 'target' (the other: line 2 (id x, side target))" in str(e.value)


def test_a_records_file_given_as_tcots_and_a_tcot_file_given_as_records_are_named_as_such(tmp_path):
    """QA (new user): `--tcots records.jsonl` was refused as "missing key 'record_id'", and `--records tcots.jsonl` as
    "... rename them to the expected keys ...": keys that are exactly the other file's are named as that file."""
    from unime.data.io import read_records
    from unime.errors import DataError
    from unime.reasoning.reasoner import read_tcot_rows

    write_records([Record(query=Item(text="q"), positive=Item(text="p"), id="x")], tmp_path / "r.jsonl")
    write_tcot_rows([TCoTRow(record_id="x", side="query", item=Item(text="q"), tcot=OK_TEXT)], tmp_path / "t.jsonl")
    with pytest.raises(DataError) as e:
        read_tcot_rows(tmp_path / "r.jsonl")
    assert str(e.value) == (f"{tmp_path / 'r.jsonl'}, record line 1, field 'record_id': missing key 'record_id': this "
                            "looks like a records file (keys dataset, id, negative_scores, negatives, positive, "
                            "positive_score, query); --tcots takes the T-CoT file written by `unime reason teacher` / "
                            "`reason generate`")
    with pytest.raises(DataError) as e:
        read_records(tmp_path / "t.jsonl")
    assert str(e.value) == (f"{tmp_path / 't.jsonl'}, record line 1, field 'positive': missing key(s) ['positive', "
                            "'query']: this looks like a T-CoT file (keys item, record_id, side, source, tcot); "
                            "--records takes a records file (keys id, query, positive, negatives, ...)")
    assert e.value.reason == "schema"


def test_keys_of_neither_file_keep_the_rename_hint(tmp_path):
    """Only exactly the other file's keys are named as that file: a T-CoT key beside a key of neither is not."""
    from unime.data.validate import RECORD_KEYS_REQUIRED, TCOT_KEYS_REQUIRED, swapped_file_hint

    assert swapped_file_hint({"record_id", "side", "item", "tcot", "extra"}, RECORD_KEYS_REQUIRED) == ""
    assert swapped_file_hint({"record_id", "side", "item"}, RECORD_KEYS_REQUIRED) == ""
    assert swapped_file_hint({"query", "positive"}, TCOT_KEYS_REQUIRED).startswith(": this looks like a records file")
    assert swapped_file_hint({"query", "positive"}, {"_id"}) == ""
