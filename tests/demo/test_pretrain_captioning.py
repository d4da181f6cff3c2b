"""The base's optional captioning stage (`PretrainRecipe.caption_steps`, `unime.demo.captioning`): what the
stage trains on, how it enters the cache key, determinism."""

from __future__ import annotations

import pytest

from unime.data.synth import World
from unime.data.synth.language import full_caption
from unime.demo.captioning import CAPTION_PROMPT, caption_rows
from unime.demo.pretrain import PretrainRecipe, corpus_captions, corpus_questions, scene_signature

from tests.pretrain_stage_runs import stage_on_twice_and_off


def test_caption_fields_enter_the_key_only_with_a_captioning_stage():
    base = PretrainRecipe().replace(caption_steps=0)
    # off: the stage's other fields change nothing, so caches made before the stage existed stay valid
    assert base.replace(caption_lr=5e-3, caption_batch_size=2).key() == base.key()
    on = base.replace(caption_steps=10)
    keys = {base.key(), on.key(), on.replace(caption_lr=5e-3).key(), on.replace(caption_batch_size=2).key(),
            on.replace(caption_steps=11).key()}
    assert len(keys) == 5
    assert PretrainRecipe().caption_steps > 0 and PretrainRecipe.preset("quick").caption_steps == 0


def test_caption_questions_enter_the_key_only_when_asked_and_with_a_captioning_stage():
    base = PretrainRecipe()
    assert base.caption_questions == 0 and "caption_questions" not in base.key_fields()
    asked = base.replace(caption_questions=2)
    assert len({base.key(), asked.key(), base.replace(caption_questions=3).key()}) == 3
    # without a captioning stage no question is asked: the field changes nothing
    off = base.replace(caption_steps=0)
    assert off.replace(caption_questions=2).key() == off.key()


def _answer_holds(scene, question: str, answer: str) -> bool:
    """Whether `answer` is right for `question` about `scene`, checked by hand from the scene's objects: a count
    question names a shape's plural; the others ask one attribute of an object named by its other attributes."""
    from unime.data import vocab
    from unime.data.synth.language import COUNT_WORDS

    words = question.rstrip("?").lower().split()
    if words[:2] == ["how", "many"]:
        shape = next(s for s, plural in vocab.SHAPE_PLURALS.items() if plural == words[2])
        return answer == COUNT_WORDS[sum(o.shape == shape for o in scene.objects)]
    kind = {"colour": "colour", "shape": "shape", "size": "size"}.get(words[1], "position")
    assert kind != "position" or words[0] == "where", question
    said = {"shape": set(words) & set(vocab.SHAPES), "colour": set(words) & set(vocab.COLOURS),
            "size": set(words) & set(vocab.SIZES),
            "position": {p for p, phrase in vocab.POSITION_PHRASES.items() if phrase in question}}
    said[kind] = set()  # the asked attribute is not part of the reference
    named = [o for o in scene.objects if all(not v or o.attr(a) in v for a, v in said.items())]
    return len(named) == 1 and named[0].attr(kind) == answer


def test_corpus_questions_are_answered_from_the_scene_seeded_and_skip_excluded_scenes(tiny_world_dir):
    root = tiny_world_dir(3)
    world = World.load(root)
    train = [s for s in world.scenes.values() if s.split == "train"]
    by_image = {s.image: s for s in train}
    sig = scene_signature(train[0])

    asked = corpus_questions(root, {sig}, 3, seed=0)
    assert asked == corpus_questions(root, {sig}, 3, seed=0)
    assert asked != corpus_questions(root, {sig}, 3, seed=1)
    assert train[0].image not in {image for image, _, _ in asked}
    assert len(train) - 1 <= len(asked) <= 3 * (len(train) - 1)  # a draw without a unique reference is skipped
    assert {image for image, _, _ in asked} <= set(by_image)
    assert all(q.endswith("?") and a and " " not in a for _, q, a in asked)
    assert all(_answer_holds(by_image[image], q, a) for image, q, a in asked)
    assert any(q.lower().startswith("how many") for _, q, _ in asked)
    assert corpus_questions(root, set(), 0, seed=0) == []


def test_caption_pairs_are_the_full_captions_of_the_training_scenes_not_excluded(tiny_world_dir):
    root = tiny_world_dir(3)
    world = World.load(root)
    train = [s for s in world.scenes.values() if s.split == "train"]
    assert train and any(s.split != "train" for s in world.scenes.values())
    dropped = train[0]
    sig = scene_signature(dropped)
    expected = {(s.image, full_caption(s)[0]) for s in train if scene_signature(s) != sig}

    pairs = corpus_captions(root, {sig})
    assert set(pairs) == expected and len(pairs) == len(expected)
    assert all((root / image).is_file() for image, _ in pairs)
    assert len(corpus_captions(root, set())) == len(train)
    one = next(p for p in pairs if p[0] == train[1].image)  # spot check against the scene's own objects
    for obj in train[1].objects:
        assert obj.colour in one[1] and obj.shape in one[1]


def test_caption_rows_are_prompt_completion_rows_of_the_family_adapter(tiny_world_dir, tiny_model_dir):
    from unime.data.images import ImageLoader
    from unime.embed_rl.reasoner_sft import end_of_turn_text
    from unime.models.loading import load_model

    root = tiny_world_dir(3)
    loaded = load_model(tiny_model_dir("qwen2_vl"))
    pairs = corpus_captions(root, set())[:3]
    rows = caption_rows(pairs, loaded.adapter, ImageLoader(root))
    eot = end_of_turn_text(loaded.adapter)
    assert len(rows) == 3
    for row, (_, caption) in zip(rows, pairs):
        assert row["completion"] == caption + eot
        assert CAPTION_PROMPT in row["prompt"] and caption not in row["prompt"]
        assert row["prompt"].count(loaded.adapter.image_token) == 1 and len(row["images"]) == 1

    questions = corpus_questions(root, set(), 1, seed=0)[:2]
    rows = caption_rows(pairs[:1], loaded.adapter, ImageLoader(root), questions)
    assert len(rows) == 3 and rows[0]["completion"] == pairs[0][1] + eot
    for row, (_, question, answer) in zip(rows[1:], questions):
        assert row["completion"] == answer + eot
        assert question in row["prompt"] and CAPTION_PROMPT not in row["prompt"]
        assert row["prompt"].count(loaded.adapter.image_token) == 1 and len(row["images"]) == 1


@pytest.mark.slow
def test_captioning_stage_is_deterministic_and_changes_the_base(tmp_path):
    first, plain = stage_on_twice_and_off(tmp_path, caption_steps=3, caption_batch_size=4)
    c = first.manifest["captioning"]
    assert c["steps"] == 3 and c["captions"] > 0 and c["first_loss"] > 0
    assert plain.manifest["captioning"] is None
