"""Ground-truth relevance of the demo world on hand-checked cases."""

from __future__ import annotations

import pytest

from unime.data.synth.relevance import (crop_satisfaction, full_spec, make_spec, n_constraints, relevance,
                                        spec_satisfaction)
from unime.data.synth.scenes import Scene, SceneObject, relation_holds

RED_CIRCLE_LEFT = SceneObject("circle", "red", "small", "left")
BLUE_STAR_RIGHT = SceneObject("star", "blue", "large", "right")
RED_SQUARE_TOP = SceneObject("square", "red", "large", "top")

S1 = Scene("s1", "white", (RED_CIRCLE_LEFT, BLUE_STAR_RIGHT))
S2 = Scene("s2", "gray", (RED_SQUARE_TOP,))
S3 = Scene("s3", "white", (BLUE_STAR_RIGHT,))
SCENES = {s.id: s for s in (S1, S2, S3)}

A_RED_CIRCLE = make_spec([{"colour": "red", "shape": "circle"}])


def test_partial_caption_fully_matches_a_richer_scene():
    assert spec_satisfaction(A_RED_CIRCLE, S1) == 1.0  # the scene also holds a blue star: still 1.0


def test_partial_caption_half_matches_a_red_square():
    assert spec_satisfaction(A_RED_CIRCLE, S2) == 0.5  # colour right, shape wrong
    assert spec_satisfaction(A_RED_CIRCLE, S3) == 0.0


def test_full_description_only_matches_its_scene():
    spec = full_spec(S1)
    assert n_constraints(spec) == 2 * 4 + 2  # 4 attributes per object, count, background
    assert spec_satisfaction(spec, S1) == 1.0
    # S3: the blue star matches all 4 attributes, the red circle mention is unassigned, the count is
    # wrong (1 != 2), the background matches → (4 + 1) / 10
    assert spec_satisfaction(spec, S3) == pytest.approx(5 / 10)
    # S2: best is red circle → red square (colour only: 1); star unassigned; count wrong; gray != white
    assert spec_satisfaction(spec, S2) == pytest.approx(1 / 10)


def test_relations_and_injective_assignment():
    left = make_spec([{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "star"}],
                     relations=[(0, "left of", 1)])
    right = make_spec(left["objects"], relations=[(0, "right of", 1)])
    assert spec_satisfaction(left, S1) == 1.0
    assert spec_satisfaction(right, S1) == pytest.approx(4 / 5)
    twice = make_spec([{"colour": "red", "shape": "circle"}, {"colour": "red", "shape": "circle"}])
    assert spec_satisfaction(twice, S1) == pytest.approx(2 / 4)  # one object cannot serve two mentions
    two = make_spec([{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "star"}])
    assert spec_satisfaction(two, S3) == pytest.approx(2 / 4)  # the circle is missing


def test_count_and_background_constraints():
    spec = make_spec([], count=2, background="white")
    assert spec_satisfaction(spec, S1) == 1.0
    assert spec_satisfaction(spec, S2) == 0.0
    assert spec_satisfaction(spec, S3) == 0.5


def test_slot_relations():
    top = SceneObject("circle", "red", "small", "top")
    centre = SceneObject("circle", "red", "small", "center")
    assert relation_holds(top, "above", centre) and not relation_holds(top, "left of", centre)
    assert relation_holds(RED_CIRCLE_LEFT, "left of", top) and relation_holds(top, "above", RED_CIRCLE_LEFT)


def test_crop_relevance_counts_position_only_in_the_query_scene():
    mention = {"colour": "red", "shape": "circle", "position": "left"}
    assert crop_satisfaction(mention, RED_CIRCLE_LEFT, same_scene=True) == 1.0
    assert crop_satisfaction(mention, RED_CIRCLE_LEFT, same_scene=False) == pytest.approx(2 / 3)
    need = {"type": "object", "scene": "s1", "mention": mention}
    assert relevance(need, {"kind": "crop", "scene": "s1", "object": 0}, SCENES) == 1.0
    assert relevance(need, {"kind": "crop", "scene": "s1", "object": 1}, SCENES) == 0.0
    assert relevance(need, {"kind": "crop", "scene": "s2", "object": 0}, SCENES) == pytest.approx(1 / 3)
    assert relevance(need, {"kind": "scene", "scene": "s1"}, SCENES) == 0.0  # a scene is not a crop


def test_relevance_by_need():
    ans = {"type": "answer", "value": "circle"}
    assert relevance(ans, {"kind": "answer", "value": "circle"}, SCENES) == 1.0
    assert relevance(ans, {"kind": "answer", "value": "square"}, SCENES) == 0.0
    assert relevance(ans, {"kind": "description", "spec": A_RED_CIRCLE}, SCENES) == 0.0
    t2i = {"type": "scene", "spec": A_RED_CIRCLE}
    assert [relevance(t2i, {"kind": "scene", "scene": s}, SCENES) for s in ("s1", "s2", "s3")] == [1.0, 0.5, 0.0]
    i2t = {"type": "describe", "scene": "s2"}
    assert relevance(i2t, {"kind": "description", "spec": A_RED_CIRCLE}, SCENES) == 0.5
    assert relevance(i2t, {"kind": "scene", "scene": "s2"}, SCENES) == 0.0
    same = {"type": "same_scene", "scene": "s1"}
    assert relevance(same, {"kind": "scene", "scene": "s1"}, SCENES) == 1.0
    assert relevance(same, {"kind": "description", "spec": A_RED_CIRCLE}, SCENES) == 1.0
    with pytest.raises(ValueError, match="query"):
        relevance(t2i, {"kind": "query", "need": ans}, SCENES)
