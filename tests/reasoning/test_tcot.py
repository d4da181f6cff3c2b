"""T-CoT parsing, format regex, validation and rendering (SPEC §2.2–2.3)."""

from __future__ import annotations

import json
import re

import pytest

from unime.errors import DataError
from unime.reasoning.tcot import (
    FORMAT_REGEX,
    Evidence,
    TCoTError,
    count_sentences,
    format_ok,
    parse_tcot,
    render_tcot,
    validate_tcot,
)

GOOD = ('<thinking>{"text_keywords": ["red", "circle"], "bbox_2d": [[10, 20, 300, 400]], "key_frames": [1, 2, 3]}'
        '</thinking><rethink>The query asks for a shape.</rethink><answer>circle</answer>')


# ------------------------------------------------------------------------------------------------
# format_ok (the format reward's regex)


def test_format_regex_is_the_spec_one():
    assert FORMAT_REGEX == r"<thinking>.*</thinking>.*<rethink>.*</rethink>.*<answer>.*</answer>"


@pytest.mark.parametrize("text", [
    GOOD,
    "<thinking>{}</thinking><rethink></rethink><answer></answer>",
    "<thinking>\n{}\n</thinking>\n<rethink>a\nb</rethink>\n\n<answer>x\ny</answer>",  # DOTALL: newlines inside
    "<thinking>not json at all</thinking> filler <rethink>r</rethink> filler <answer>a</answer>",
    GOOD + " trailing text",  # re.match semantics: trailing text allowed
])
def test_format_ok_positive(text):
    assert format_ok(text)


@pytest.mark.parametrize("text", [
    "",
    "<thinking>{}</thinking><answer>a</answer><rethink>r</rethink>",  # answer before rethink
    "<rethink>r</rethink><thinking>{}</thinking><answer>a</answer>",  # rethink first
    "<thinking>{}</thinking><rethink>r</rethink><answer>a",  # unclosed answer
    "<thinking>{}<rethink>r</rethink><answer>a</answer>",  # thinking never closed
    "<think>{}</think><rethink>r</rethink><answer>a</answer>",  # wrong tag name
    "Sure! " + GOOD,  # preamble: the default mode anchors at the start
    "<THINKING>{}</THINKING><rethink>r</rethink><answer>a</answer>",  # case matters
])
def test_format_ok_negative(text):
    assert not format_ok(text)


def test_format_ok_modes():
    assert format_ok("Sure! " + GOOD, mode="search")
    assert not format_ok(GOOD + " trailing", mode="fullmatch")
    assert format_ok(GOOD, mode="fullmatch")
    assert not format_ok(None)  # not a string
    with pytest.raises(ValueError):
        format_ok(GOOD, mode="loose")


def test_format_ok_agrees_with_plain_re():
    # independent check against Python's own re on a handful of mixed strings
    samples = [GOOD, "Sure! " + GOOD, GOOD[::-1], GOOD.replace("<rethink>", ""), GOOD + GOOD]
    for s in samples:
        assert format_ok(s) == (re.match(FORMAT_REGEX, s, re.DOTALL) is not None)


# ------------------------------------------------------------------------------------------------
# parse_tcot


def test_parse_good():
    t = parse_tcot(GOOD)
    assert t.evidence.text_keywords == ["red", "circle"]
    assert t.evidence.bboxes == [(10, 20, 300, 400)]
    assert t.evidence.key_frames == [1, 2, 3]
    assert t.rethink == "The query asks for a shape."
    assert t.answer == "circle"
    assert json.loads(t.thinking_json)["key_frames"] == [1, 2, 3]
    # spans: the thinking element starts at 0 and ends right after "</thinking>"
    end = GOOD.index("</thinking>") + len("</thinking>")
    assert t.thinking_span == (0, end)
    assert t.evidence_position == end
    head, tail = t.split_for_evidence()
    assert head.endswith("</thinking>") and tail.startswith("<rethink>") and head + tail == GOOD
    assert GOOD[slice(*t.rethink_span)] == "<rethink>The query asks for a shape.</rethink>"
    assert GOOD[slice(*t.answer_span)] == "<answer>circle</answer>"


def test_parse_single_box_and_float_coordinates():
    t = parse_tcot('<thinking>{"bbox_2d": [10, 20.5, 300.4, 400.0]}</thinking><rethink>r.</rethink><answer>a</answer>')
    # floats rounded half-up: 20.5 → 21, 300.4 → 300, 400.0 → 400
    assert t.evidence.bboxes == [(10, 21, 300, 400)]
    t = parse_tcot('<thinking>{"bbox_2d": [[1, 2, 3, 4], [5, 6, 7, 8]]}</thinking>'
                   '<rethink></rethink><answer>a</answer>')
    assert t.evidence.bboxes == [(1, 2, 3, 4), (5, 6, 7, 8)]


def test_parse_whitespace_and_code_fence():
    text = ('\n<thinking>\n```json\n{"text_keywords": ["a"]}\n```\n</thinking>\n<rethink> r. </rethink>\n'
            '<answer> yes </answer>\n')
    t = parse_tcot(text)
    assert t.evidence.text_keywords == ["a"] and t.rethink == "r." and t.answer == "yes"


PROSE_JSON = ('<thinking>The bear stands in a clearing at [220, 150, 380, 320]. It is the subject. '
              '{"bbox_2d": [220, 150, 380, 320]} That box frames it.</thinking>\n'
              "<rethink>The box confirms the bear.</rethink>\n<answer>A brown bear.</answer>")


def test_parse_prose_around_the_json_takes_the_first_json_object():
    # the release's prompts have the model write prose, then the JSON, inside <thinking> (QA: refused as invalid JSON)
    t = parse_tcot(PROSE_JSON)
    assert t.evidence.bboxes == [(220, 150, 380, 320)]
    assert t.thinking_json == '{"bbox_2d": [220, 150, 380, 320]}'
    assert t.text == PROSE_JSON and "clearing" in t.split_for_evidence()[0]  # the prose stays in the text
    assert t.rethink == "The box confirms the bear." and t.answer == "A brown bear."
    # a "{" that opens no JSON object before the real one is skipped; JSON first, prose after works too
    t = parse_tcot('<thinking>set {a, b}; {"text_keywords": ["a"]}</thinking><rethink>r</rethink><answer>a</answer>')
    assert t.evidence.text_keywords == ["a"]
    t = parse_tcot('<thinking>{"key_frames": [2]} frame 2 shows it</thinking><rethink>r</rethink><answer>a</answer>')
    assert t.evidence.key_frames == [2] and t.thinking_json == '{"key_frames": [2]}'


def test_parse_prose_without_a_json_object_is_refused():
    with pytest.raises(TCoTError) as e:
        parse_tcot("<thinking>The bear is at [1, 2, 3, 4].</thinking><rethink>r</rethink><answer>a</answer>",
                   record=7)
    # QA: "invalid JSON ... char 10" for a <thinking> with no JSON at all; now said as it is
    assert "no JSON evidence object in <thinking>" in str(e.value) and e.value.field == "thinking" \
        and "record 7" in str(e.value)
    # a "{" that opens no object keeps the JSON error
    with pytest.raises(TCoTError, match=r"invalid JSON in <thinking>: .* \(char 11 of the text\)"):
        parse_tcot("<thinking>{bbox at 1, 2</thinking><rethink>r</rethink><answer>a</answer>")


def test_check_boxes_refuses_inverted_and_wholly_outside_boxes_only():
    from unime.reasoning.tcot import Evidence, check_boxes

    # partly outside (clamped), zero-sized or thin (left to the crop rules): not refused
    check_boxes(Evidence(bboxes=[(900, 900, 1100, 1100), (-50, -50, 10, 10), (500, 500, 500, 500), (0, 0, 1000, 1)]))
    for box, why in [((1000, 0, 1200, 500), "wholly outside"), ((0, 1000, 10, 1200), "wholly outside"),
                     ((-20, 0, 0, 500), "wholly outside"), ((0, -20, 10, 0), "wholly outside"),
                     ((11, 0, 10, 500), "inverted (x1 > x2)"), ((0, 11, 10, 10), "inverted (y1 > y2)")]:
        with pytest.raises(TCoTError, match=re.escape(why)) as e:
            check_boxes(Evidence(bboxes=[(0, 0, 500, 500), box]), source="t.jsonl", record="line 3")
        assert (e.value.source, e.value.record, e.value.field) == ("t.jsonl", "line 3", "thinking.bbox_2d[1]")


@pytest.mark.parametrize("text,expected", [
    ("<thinking>{}</thinking><answer>a</answer>", "missing tag '<rethink>'"),
    ("<thinking>{}</thinking><rethink>r</rethink><answer>a", "missing tag '</answer>'"),
    ("{}</thinking><rethink>r</rethink><answer>a</answer>", "missing tag '<thinking>'"),
    ("<thinking>{}</thinking><rethink>r</rethink><answer>a</answer><answer>b</answer>",
     "tag '<answer>' appears 2 times"),
    # "<thinking>{}</thinking>" is 23 chars, so <answer> is at 23; "<answer>a</answer>" is 18 more,
    # so <rethink> is at 41 and </rethink> at 41 + len("<rethink>r") = 51
    ("<thinking>{}</thinking><answer>a</answer><rethink>r</rethink>",
     "'<answer>' (char 23) comes before '</rethink>' (char 51)"),
    ("</thinking>{}<thinking><rethink>r</rethink><answer>a</answer>",
     "'</thinking>' (char 0) comes before '<thinking>'"),
])
def test_parse_tag_errors(text, expected):
    with pytest.raises(TCoTError) as e:
        parse_tcot(text, source="rollouts.jsonl", record=5)
    assert expected in str(e.value)
    assert "rollouts.jsonl" in str(e.value) and "record 5" in str(e.value)
    assert isinstance(e.value, DataError)


def test_parse_json_error_reports_position():
    text = '<thinking>{"text_keywords": ["a",]}</thinking><rethink>r</rethink><answer>a</answer>'
    with pytest.raises(TCoTError) as e:
        parse_tcot(text)
    # payload '{"text_keywords": ["a",]}': '{' 0, the quoted key 1..15, ':' 16, ' ' 17, '[' 18,
    # '"a"' 19..21, ',' 22, ']' 23 → json expects a value at offset 23 (column 24);
    # the payload starts at char 10 of the text → char 33
    assert text[33] == "]"
    msg = str(e.value)
    assert "invalid JSON in <thinking>" in msg and "line 1 column 24" in msg and "char 33 of the text" in msg
    assert e.value.field == "thinking"


def test_parse_json_error_position_with_leading_whitespace():
    text = '<thinking>\n  {"a" 1}</thinking><rethink>r</rethink><answer>a</answer>'
    with pytest.raises(TCoTError) as e:
        parse_tcot(text)
    # payload '{"a" 1}' starts at char 13; the missing ':' is reported at payload offset 5 → char 18
    assert text[18] == "1"
    assert "char 18 of the text" in str(e.value)


@pytest.mark.parametrize("payload,field,fragment", [
    ("[1, 2]", "thinking", "must hold a JSON object, got list"),
    ('{"text_keywords": "red"}', "thinking.text_keywords", "must be a list of strings"),
    ('{"text_keywords": ["red", 3]}', "thinking.text_keywords[1]", "must be a string, got int"),
    ('{"bbox_2d": [1, 2, 3]}', "thinking.bbox_2d[0]", "must be [x1, y1, x2, y2]"),
    ('{"bbox_2d": [[1, 2, 3, 4], [1, "2", 3, 4]]}', "thinking.bbox_2d[1][1]", "must be a number, got str"),
    ('{"bbox_2d": [[1, 2, 3, true]]}', "thinking.bbox_2d[0][3]", "must be a number, got bool"),
    ('{"bbox_2d": "0,0,1,1"}', "thinking.bbox_2d", "must be a box"),
    ('{"key_frames": [1, 2.5]}', "thinking.key_frames[1]", "must be an integer"),
    ('{"key_frames": 3}', "thinking.key_frames", "must be a list"),
    ('{"bbox": [1, 2, 3, 4]}', "thinking", "unknown key(s) ['bbox']"),
    ("", "thinking", "empty <thinking>"),
])
def test_parse_type_errors(payload, field, fragment):
    with pytest.raises(TCoTError) as e:
        parse_tcot(f"<thinking>{payload}</thinking><rethink>r</rethink><answer>a</answer>")
    assert e.value.field == field
    assert fragment in str(e.value)


def test_parse_unknown_keys_can_be_ignored():
    t = parse_tcot('<thinking>{"bbox": [1,2,3,4], "key_frames": [2]}</thinking><rethink>r</rethink><answer>a</answer>',
                   unknown_keys="ignore")
    assert t.evidence.key_frames == [2] and t.evidence.bboxes == []


def test_parse_outside_text_policy():
    text = "Sure! " + GOOD
    assert parse_tcot(text).answer == "circle"
    with pytest.raises(TCoTError, match="unexpected text 'Sure!' at char 0"):
        parse_tcot(text, allow_outside_text=False)
    # whitespace between elements is always fine
    parse_tcot(GOOD.replace("</thinking><rethink>", "</thinking>\n<rethink>"), allow_outside_text=False)


def test_integral_float_key_frame_accepted():
    t = parse_tcot('<thinking>{"key_frames": [3.0]}</thinking><rethink>r</rethink><answer>a</answer>')
    assert t.evidence.key_frames == [3]


# ------------------------------------------------------------------------------------------------
# validate_tcot


def _tcot(evidence: dict, rethink="One sentence.", answer="a"):
    return parse_tcot(render_tcot(evidence, rethink, answer))


def test_validate_clean_cases():
    assert validate_tcot(_tcot({"bbox_2d": [[100, 100, 500, 600]]}), modality="image") == []
    assert validate_tcot(_tcot({"key_frames": [1, 8]}), modality="video", num_frames=8) == []
    assert validate_tcot(_tcot({"text_keywords": ["x"]}, rethink="First. Second!"), modality="text") == []


def test_validate_boxes():
    problems = validate_tcot(_tcot({"bbox_2d": [[500, 10, 400, 20], [0, 50, 10, 40], [-5, 0, 10, 1200]]}),
                             modality="image")
    assert any("bbox_2d[0]" in p and "x1 >= x2" in p for p in problems)
    assert any("bbox_2d[1]" in p and "y1 >= y2" in p for p in problems)
    assert any("bbox_2d[2]" in p and "outside 0..1000" in p for p in problems)
    assert len(problems) == 3


def test_validate_whole_image_box():
    # [0, 0, 1000, 980] covers 98 % ≥ 95 % → flagged; [0, 0, 1000, 900] covers 90 % → fine
    p = validate_tcot(_tcot({"bbox_2d": [[0, 0, 1000, 980]]}), modality="image")
    assert p == ["bbox_2d[0] = [0, 0, 1000, 980] covers 98% of the image (limit 95%)"]
    assert validate_tcot(_tcot({"bbox_2d": [[0, 0, 1000, 900]]}), modality="image") == []
    assert validate_tcot(_tcot({"bbox_2d": [[0, 0, 1000, 900]]}), modality="image", max_box_fraction=0.9) != []


def test_validate_key_frames():
    p = validate_tcot(_tcot({"key_frames": [0, 3, 9, 3]}), modality="video", num_frames=8)
    assert "key_frames[0] = 0 is not a 1-based frame number" in p
    assert "key_frames[2] = 9 is beyond the last frame (8)" in p
    assert any("repeat a frame" in x for x in p)
    assert len(p) == 3
    # without num_frames only the lower bound is checked
    assert validate_tcot(_tcot({"key_frames": [9]}), modality="video") == []


def test_validate_modality_mismatch_and_required_evidence():
    p = validate_tcot(_tcot({"bbox_2d": [[1, 1, 50, 50]], "key_frames": [1]}), modality="text")
    assert any("bbox_2d given for a text item" in x for x in p)
    assert any("key_frames given for a text item" in x for x in p)
    assert validate_tcot(_tcot({}), modality="video") == []
    assert validate_tcot(_tcot({}), modality="video", require_evidence=True) == \
        ["no key_frames evidence for a video item"]
    with pytest.raises(ValueError):
        validate_tcot(_tcot({}), modality="audio")


def test_validate_conciseness():
    three = "One. Two. Three."
    assert validate_tcot(_tcot({}, rethink=three), modality="text") == ["rethink has 3 sentences (limit 2)"]
    assert validate_tcot(_tcot({}, rethink=three), modality="text", max_rethink_sentences=3) == []
    assert validate_tcot(_tcot({}, rethink=""), modality="text") == ["rethink is empty"]
    assert validate_tcot(_tcot({}, rethink=""), modality="text", require_rethink=False) == []
    assert validate_tcot(_tcot({}, answer=" "), modality="text") == ["answer is empty"]


def test_count_sentences():
    assert count_sentences("") == 0
    assert count_sentences("A red circle.") == 1
    assert count_sentences("It costs 3.5 dollars. Cheap!") == 2  # "3.5" does not end a sentence
    assert count_sentences("No final stop") == 1
    assert count_sentences("One? Two! Three.") == 3


# ------------------------------------------------------------------------------------------------
# render_tcot


def test_render_parse_round_trip():
    ev = Evidence(text_keywords=["red", "circle"], bboxes=[(1, 2, 3, 4), (10, 20, 30, 40)], key_frames=[2, 5])
    text = render_tcot(ev, "The query asks for a shape.", "circle")
    assert format_ok(text, mode="fullmatch")
    t = parse_tcot(text, allow_outside_text=False)
    assert t.evidence == ev and t.rethink == "The query asks for a shape." and t.answer == "circle"
    assert json.loads(t.thinking_json) == {"text_keywords": ["red", "circle"],
                                           "bbox_2d": [[1, 2, 3, 4], [10, 20, 30, 40]], "key_frames": [2, 5]}


def test_render_exact_text_and_empty_fields_omitted():
    assert render_tcot(Evidence(text_keywords=["x"]), "r", "a") == \
        '<thinking>{"text_keywords": ["x"]}</thinking><rethink>r</rethink><answer>a</answer>'
    assert render_tcot({}, "r", "a") == "<thinking>{}</thinking><rethink>r</rethink><answer>a</answer>"
    # non-ASCII kept as is
    assert "红色" in render_tcot({"text_keywords": ["红色"]}, "r", "a")


def test_render_rejects_tags_in_text_and_bad_evidence():
    with pytest.raises(TCoTError, match="rethink contains the tag '</rethink>'"):
        render_tcot({}, "bad </rethink>", "a")
    with pytest.raises(TCoTError, match="answer contains"):
        render_tcot({}, "r", "<answer>")
    with pytest.raises(TCoTError):
        render_tcot({"bbox_2d": [1, 2]}, "r", "a")
    with pytest.raises(TCoTError):
        render_tcot(Evidence(text_keywords=["<thinking>"]), "r", "a")
