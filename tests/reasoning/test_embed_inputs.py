"""Embedder input assembly with T-CoT and evidence (SPEC 2.1), on tiny models with `<emb>` added."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unime.models.adapters import Segment
from unime.models.prompts import EMB_TOKEN, EMBED_SUMMARY_PROMPT
from unime.reasoning.embed_inputs import ReasonedEmbedder, reasoning_segments
from unime.reasoning.tcot import TCoTError, render_tcot

RETHINK, ANSWER = "The query asks for a red circle.", "red circle"


def _scene(w=200, h=100):
    img = Image.new("RGB", (w, h), (250, 250, 250))
    # a red square in the top-left quarter, so the crop's content is checkable
    for x in range(0, w // 2):
        for y in range(0, h // 2):
            img.putpixel((x, y), (220, 40, 40))
    return img


def _frames(n=4):
    return [Image.new("RGB", (64, 64), (10 * k, 200, 30)) for k in range(1, n + 1)]


def _kinds(segs):
    return [s.kind for s in segs]


def test_segment_order_image_item_with_box():
    img = _scene()
    tcot = render_tcot({"bbox_2d": [[0, 0, 500, 500]]}, RETHINK, ANSWER)
    item = [Segment("image", img), Segment("text", "Find the red shape")]
    segs = reasoning_segments(item, tcot, images=[img])
    assert _kinds(segs) == ["image", "text", "text", "image", "text", "text"]
    assert segs[0].value is img and segs[1].value == "Find the red shape"
    assert segs[2].value == '<thinking>{"bbox_2d": [[0, 0, 500, 500]]}</thinking>'
    crop = segs[3].value
    assert crop.size == (100, 50)  # 500/1000 of 200 x 100
    assert crop.getpixel((10, 10)) == (220, 40, 40)
    assert segs[4].value == f"<rethink>{RETHINK}</rethink><answer>{ANSWER}</answer>"
    assert segs[5].value == EMBED_SUMMARY_PROMPT


def test_prose_before_the_json_keeps_the_evidence_crop():
    # the release's T-CoTs: prose, then the JSON, inside <thinking>; before, on_invalid="raw" lost the crop
    img = _scene()
    thinking = '<thinking>The red shape is top left. {"bbox_2d": [0, 0, 500, 500]}</thinking>'
    tcot = f"{thinking}<rethink>{RETHINK}</rethink><answer>{ANSWER}</answer>"
    segs = reasoning_segments([Segment("image", img), Segment("text", "Find it")], tcot, images=[img])
    assert _kinds(segs) == ["image", "text", "text", "image", "text", "text"]
    assert segs[2].value == thinking and segs[3].value.size == (100, 50)


def test_crop_rules_drop_small_and_elongated_boxes():
    img = Image.new("RGB", (1000, 1000))
    # 9 px wide (dropped), 10x10 (kept), 600x11 aspect 54.5 (dropped), 500x10 aspect 50 (kept)
    boxes = [[0, 0, 9, 100], [0, 0, 10, 10], [0, 0, 600, 11], [0, 0, 500, 10]]
    segs = reasoning_segments([Segment("image", img)], render_tcot({"bbox_2d": boxes}, RETHINK, ANSWER), images=[img])
    crops = [s.value for s in segs[2:] if s.kind == "image"]
    assert [c.size for c in crops] == [(10, 10), (500, 10)]


def test_key_frames_are_one_based():
    frames = _frames(4)
    tcot = render_tcot({"key_frames": [1, 3]}, RETHINK, ANSWER)
    segs = reasoning_segments([Segment("video", frames)], tcot, frames=frames)
    assert _kinds(segs) == ["video", "text", "image", "image", "text", "text"]
    # key frame 1 is the first frame, 3 the third (the release read them 0-based: frames[1], frames[3])
    assert segs[2].value is frames[0] and segs[3].value is frames[2]


def test_text_item_keywords_add_no_images_and_invalid_policies():
    item = [Segment("text", "a red circle")]
    segs = reasoning_segments(item, render_tcot({"text_keywords": ["red"]}, RETHINK, ANSWER))
    assert _kinds(segs) == ["text"] * 4
    # boxes on a text item point at nothing: no crop
    segs = reasoning_segments(item, render_tcot({"bbox_2d": [0, 0, 500, 500]}, RETHINK, ANSWER))
    assert _kinds(segs) == ["text"] * 4
    bad = "<thinking>not json</thinking><rethink>x</rethink><answer>y</answer>"
    raw = reasoning_segments(item, bad, on_invalid="raw")
    assert [s.value for s in raw] == ["a red circle", bad, EMBED_SUMMARY_PROMPT]
    # placeholders written by a reasoner are text, never images
    raw = reasoning_segments(item, "see <image> here", on_invalid="raw")
    assert [s.value for s in raw] == ["a red circle", "see  here", EMBED_SUMMARY_PROMPT]
    assert [s.value for s in reasoning_segments(item, bad, on_invalid="drop")] == ["a red circle",
                                                                                    EMBED_SUMMARY_PROMPT]
    with pytest.raises(TCoTError, match="no JSON evidence object in <thinking>"):
        reasoning_segments(item, bad, on_invalid="raise")
    assert [s.value for s in reasoning_segments(item, None)] == ["a red circle", EMBED_SUMMARY_PROMPT]


@pytest.fixture(scope="module")
def emb_models(tiny_model_dir):
    from unime import Embedder

    return {f: ReasonedEmbedder(Embedder.from_pretrained(tiny_model_dir(f, (EMB_TOKEN,)), device="cpu"))
            for f in ("qwen2_vl", "qwen3_vl")}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_token_sequence_order(emb_models, family):
    from unime import Item

    remb = emb_models[family]
    tok = remb.embedder.processor.tokenizer
    img = _scene(224, 224)
    tcot = render_tcot({"bbox_2d": [[0, 0, 500, 500]]}, RETHINK, ANSWER)
    inputs = remb.build_inputs([Item(text="Find the red shape", images=(img,))], [tcot])
    ids = inputs["input_ids"][0].tolist()
    text = tok.decode(ids, skip_special_tokens=False)
    vs, ve = "<|vision_start|>", "<|vision_end|>"
    markers = [vs, ve, "Find the red shape", "<thinking>", "</thinking>", vs, ve, "<rethink>", "</answer>",
               EMBED_SUMMARY_PROMPT, "<|im_end|>", "<|im_start|>assistant\n" + EMB_TOKEN]
    pos, at = [], 0
    for m in markers:
        at = text.index(m, at)
        pos.append(at)
        at += len(m)
    assert pos == sorted(pos)
    assert text.count(vs) == 2  # the item's image and one evidence crop, nothing else
    assert text.rstrip().endswith(EMB_TOKEN)
    # the image blocks hold as many placeholder tokens as the processor's grids say (item, then crop)
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    merge = remb.embedder.processor.image_processor.merge_size
    grids = inputs["image_grid_thw"].tolist()
    assert len(grids) == 2
    blocks, run = [], 0
    for t in ids + [-1]:
        if t == pad:
            run += 1
        elif run:
            blocks.append(run)
            run = 0
    assert blocks == [t * h * w // merge ** 2 for t, h, w in grids]
    assert grids[0] != grids[1]  # the crop is a different (smaller) image
    # pooling happens at <emb>, the last real token
    p = remb.embedder.pool_positions(inputs["input_ids"], inputs["attention_mask"])
    assert ids[int(p[0])] == tok.convert_tokens_to_ids(EMB_TOKEN) == ids[-1]


def test_encode_dedups_and_matches_single_forward(emb_models):
    from unime import Item

    remb = emb_models["qwen2_vl"]
    img = _scene(112, 112)
    t1 = render_tcot({"bbox_2d": [[0, 0, 500, 500]]}, RETHINK, ANSWER)
    t2 = render_tcot({"text_keywords": ["red"]}, "A red thing.", "red")
    items = [Item(text="red", images=(img,)), Item(text="a red circle"), Item(text="red", images=(img,)),
             Item(text="a red circle")]
    tcots = [t1, t2, t1, None]
    calls = []
    original = remb.embedder.forward
    remb.embedder.forward = lambda inputs, **kw: (calls.append(inputs["input_ids"].shape[0]), original(inputs, **kw))[1]
    vecs = remb.encode(items, tcots, batch_size=8)
    remb.embedder.forward = original
    assert calls == [3]  # (item, T-CoT) pairs 0 and 2 are the same input
    np.testing.assert_array_equal(vecs[0], vecs[2])
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.abs(vecs[1] - vecs[3]).max() > 1e-4  # the T-CoT changes the embedding
    with torch.inference_mode():
        single = np.stack([remb.embed([it], [t])[0].numpy() for it, t in zip(items, tcots)])
    np.testing.assert_allclose(vecs, single, atol=2e-5)


def test_refuses_last_token_pooling(tiny_model_dir):
    from unime import Embedder

    with pytest.raises(ValueError, match="pools at <emb>"):
        ReasonedEmbedder(Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu"))


@pytest.mark.parametrize("kind", ["image", "video", "text", "invalid", "none"])
def test_reasoned_item_renders_exactly_the_reasoning_segments(emb_models, kind):
    """The plain-Item form (used by the embedder trainer and the eval harness) is the same input."""
    from unime import Item
    from unime.data.images import ImageLoader
    from unime.models.adapters import item_segments
    from unime.reasoning.embed_inputs import reasoned_item

    emb = emb_models["qwen2_vl"].embedder
    img, frames = _scene(120, 96), _frames(4)
    if kind == "image":
        item = Item(text="<|image_1|>\nRepresent the given image with the following question: where is red?",
                    images=(img,))
        tcot = render_tcot({"bbox_2d": [[0, 0, 500, 500], [500, 500, 1000, 1000]], "text_keywords": ["red"]},
                           RETHINK, ANSWER)
    elif kind == "video":
        item = Item(text="a clip", video=tuple(frames))
        tcot = render_tcot({"key_frames": [4, 2]}, RETHINK, ANSWER)
    elif kind == "text":
        item = Item(text="a red circle")
        tcot = render_tcot({"text_keywords": ["red", "circle"]}, RETHINK, ANSWER)
    elif kind == "invalid":
        item = Item(text="a red circle", images=(img,))
        tcot = "<thinking>{oops</thinking> and <image> more <|image_3|>"
    else:  # no reasoning: the input of the embedder without T-CoT (`unime reason materialize --no-tcots`)
        item = Item(text="<|image_1|>\nRepresent the given image.", images=(img,))
        tcot = None
    ri = reasoned_item(item, tcot, ImageLoader())
    direct = reasoning_segments(item_segments(item.text, list(item.images), list(item.video)), tcot,
                                images=list(item.images), frames=list(item.video))
    via_item = emb.segments(ri)
    assert emb.render(via_item) == emb.render(direct)
    flat = lambda segs: [np.asarray(x) for s in segs if s.kind != "text"
                         for x in (s.value if s.kind == "video" else [s.value])]
    a, b = flat(via_item), flat(direct)
    assert len(a) == len(b) == {"image": 3, "video": 6, "text": 0, "invalid": 1, "none": 1}[kind]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_an_embedder_returning_nan_is_a_model_error_naming_it_and_the_input(tiny_model_dir, tmp_path):
    """QA: `train reasoner --stage grpo --embedder E` and `reason eval --embedder E` with E's token embeddings NaN
    ended in a traceback deep in the rewards ('an embedding is zero or not finite') or the metrics ('scores contain
    NaN or infinity'), naming neither the model nor an input. The reasoned embedder refuses a non-finite embedding:
    a `ModelError` naming the embedder, how many inputs, and the first; finite embeddings are returned as before."""
    from unime import Item
    from unime.errors import ModelError
    from unime.models.embedder import Embedder

    from tests.models.helpers import with_nan_weights

    items = [Item(text="a red circle"), Item(text="a blue square")]
    tcots = [render_tcot({"text_keywords": ["red"]}, "Red.", "red"), None]
    whole = ReasonedEmbedder(Embedder.from_pretrained(tiny_model_dir("qwen2_5_vl", (EMB_TOKEN,)), device="cpu",
                                                      pooling="emb"))
    assert np.isfinite(whole.encode(items, tcots)).all()
    model = with_nan_weights(tiny_model_dir("qwen2_5_vl", (EMB_TOKEN,)), tmp_path / "emb")
    broken = ReasonedEmbedder(Embedder.from_pretrained(model, device="cpu", pooling="emb"))
    with pytest.raises(ModelError, match=rf"^embedder '{model}' returned NaN or inf for 2 of 2 inputs \(the first: "
                                         r"item 'a red circle'\)"):
        broken.encode(items, tcots)
