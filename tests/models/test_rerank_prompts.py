"""Judge / reranker prompts (SPEC 1.3, 1.6): rendered with every family's chat template, every
candidate's text and image present; answer parsing."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.conftest import FAMILIES
from tests.stop_rule_property import check_done_texts_parse_the_same
from unime.models import prompts
from unime.models.adapters import Segment
from unime.models.rerank_prompts import (answer_format, item_content, judge_answer, judge_prompt, listwise_answer,
                                         listwise_answer_done, listwise_prompt, merge_text, parse_listwise_answer)

IMG_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"


def _img(colour):
    return Image.new("RGB", (56, 56), colour)


def _processor(tiny_model_dir, family):
    from transformers import AutoConfig, AutoProcessor

    from unime.models.adapters import adapter_for

    path = tiny_model_dir(family)
    proc = AutoProcessor.from_pretrained(path)
    return adapter_for(AutoConfig.from_pretrained(path), proc)


def test_item_content_strips_placeholders_and_puts_images_first():
    red = _img((255, 0, 0))
    segs = item_content("<|image_1|>\nRepresent the given image", [red])
    assert [s.kind for s in segs] == ["image", "text"]
    assert segs[0].value is red and segs[1].value == "Represent the given image"
    assert [s.kind for s in item_content("", [red])] == ["image"]
    assert [(s.kind, s.value) for s in item_content("a red circle")] == [("text", "a red circle")]


def test_merge_text_joins_adjacent_text_only():
    red = _img((255, 0, 0))
    out = merge_text([Segment("text", "a"), Segment("text", "b"), Segment("image", red), Segment("text", ""),
                      Segment("text", "c")])
    assert [(s.kind, s.value if s.kind == "text" else None) for s in out] == [
        ("text", "ab"), ("image", None), ("text", "c")]


def test_pairwise_prompt_is_the_judges_prompt():
    from unime.models.judge_prompt import judge_prompt_segments

    red, blue = _img((255, 0, 0)), _img((0, 0, 255))
    q = item_content("<|image_1|> what shape is it?", [red])
    c = item_content("a blue square", [blue])
    segs = judge_prompt(q, c)
    assert segs == judge_prompt_segments(q, c)
    assert [s.kind for s in segs] == ["text", "image", "text", "image", "text"]
    assert segs[0].value == prompts.JUDGE_INSTRUCTION + " Query: "
    assert segs[1].value is red and segs[3].value is blue
    assert segs[2].value == "what shape is it?, Candidate: "
    assert segs[4].value == "a blue square."


@pytest.mark.parametrize("family", FAMILIES)
def test_rendered_judge_prompt_holds_query_and_candidate(tiny_model_dir, family):
    adapter = _processor(tiny_model_dir, family)
    q = item_content("a red circle", [_img((255, 0, 0))])
    c = item_content("the red circle on the left", [_img((250, 0, 0))])
    text = adapter.render_user_turn(judge_prompt(q, c))
    expected = (f"{prompts.JUDGE_INSTRUCTION} Query: {IMG_BLOCK}a red circle, Candidate: "
                f"{IMG_BLOCK}the red circle on the left.")
    assert expected in text
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("family", FAMILIES)
def test_rendered_listwise_prompt_holds_every_candidate_text_and_image(tiny_model_dir, family):
    adapter = _processor(tiny_model_dir, family)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 200, 0)]
    query = item_content("<|image_1|>\nFind the matching caption", [_img((9, 9, 9))])
    cands = [
        item_content("a red circle", [_img(colours[0])]),       # image + text
        item_content("", [_img(colours[1])]),                   # image only
        item_content("a blue star on the right"),              # text only
        item_content("<|image_1|> a large yellow square", [_img(colours[3])]),  # placeholder stripped
    ]
    segs = listwise_prompt(query, cands)
    text = adapter.render_user_turn(segs)
    assert f"{prompts.LISTWISE_INSTRUCTION} Query: {IMG_BLOCK}Find the matching caption" in text
    assert f"\n(1) {IMG_BLOCK}a red circle\n" in text
    assert f"\n(2) {IMG_BLOCK}\n" in text
    assert "\n(3) a blue star on the right\n" in text
    assert f"\n(4) {IMG_BLOCK}a large yellow square<|im_end|>" in text
    assert "<|image_1|>" not in text
    # every image reaches the model, in prompt order: 4 image blocks, each expanded by the processor
    images = [s.value for s in segs if s.kind == "image"]
    assert len(images) == 4 and text.count(IMG_BLOCK) == 4
    inputs = adapter.processor_inputs([text], [segs])
    n_image_tokens = int((inputs["input_ids"] == adapter.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    merge = adapter.processor.image_processor.merge_size
    assert n_image_tokens == int(inputs["image_grid_thw"].prod(dim=1).sum()) // merge ** 2
    assert inputs["image_grid_thw"].shape[0] == 4


@pytest.mark.parametrize("family", FAMILIES)
def test_answer_format_is_read_off_the_chat_template(tiny_model_dir, family):
    adapter = _processor(tiny_model_dir, family)
    fmt = answer_format(adapter)
    assert (fmt.prefix, fmt.turn_end) == ("", "<|im_end|>")


def test_answer_format_with_a_template_that_opens_the_answer(tiny_model_dir):
    # a template that writes an empty think block before every assistant answer (as some chat models do)
    adapter = _processor(tiny_model_dir, "qwen3_vl")
    template = adapter.processor.chat_template.replace(
        "<|im_start|>{{ message['role'] }}\n",
        "<|im_start|>{{ message['role'] }}\n{% if message['role'] == 'assistant' %}<think></think>{% endif %}")
    assert template != adapter.processor.chat_template
    adapter.processor.chat_template = template
    fmt = answer_format(adapter)
    assert (fmt.prefix, fmt.turn_end) == ("<think></think>", "<|im_end|>")


def test_listwise_prompt_needs_candidates_and_answer_is_one_based():
    with pytest.raises(ValueError):
        listwise_prompt(item_content("q"), [])
    assert listwise_answer(3) == "Ans: (3)"
    assert (judge_answer(True), judge_answer(False)) == ("Yes", "No")
    with pytest.raises(ValueError):
        listwise_answer(0)


@pytest.mark.parametrize("text, expected", [
    ("Ans: (3)", 3), ("Ans:(3)", 3), ("Ans: (12)", 12), ("ans: 3", 3), ("Answer: 3", 3), ("ANSWER:(7)", 7),
    ("(3)", 3), ("3", 3), ("3.", 3), (" 2) the red one", 2), ("Ans: (3) because it is red", 3),
    ("The best is (4).", 4), ("Answer: 5, not (2)", 5), ("Ans: [6]", 6),
    ("", None), ("No", None), ("Ans: ()", None), ("the third one", None),
])
def test_parse_listwise_answer_variants(text, expected):
    assert parse_listwise_answer(text) == expected


def test_listwise_answer_is_done_once_a_labelled_number_is_closed():
    assert [listwise_answer_done(t) for t in ("", "Ans", "Ans: (", "Ans: (3", "Ans: (3)", "Ans: (12x", "(3)",
                                              "3)", "Answer: 4 ", "No)))No)))", "ans:3.")] == \
        [False, False, False, False, True, True, False, False, True, False, True]


def test_a_done_answer_parses_the_same_whatever_follows():
    """The stop rule's guarantee: when a text is done, every continuation parses to the same number."""
    alphabet = list("Ans:wer ()[]3 12x") + ["Ans: (", "Answer", ")", "(4)", "ans"]
    assert check_done_texts_parse_the_same(listwise_answer_done, parse_listwise_answer, alphabet) > 100
