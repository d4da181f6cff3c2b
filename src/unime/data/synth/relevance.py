"""Ground-truth graded relevance of the demo world, computed from scene annotations.

Every text of the world that describes something carries a *spec* (what the text asserts):

    {"objects": [mention, ...], "relations": [[i, relation, j], ...], "count": int|None, "background": str|None}

where a *mention* is a subset of {shape, colour, size, position} (e.g. "a red circle" =
{"colour": "red", "shape": "circle"}) and a relation [i, "left of", j] says mention i is left of
mention j. A spec has one *constraint* per mentioned attribute, per relation, for the count and for
the background.

**Satisfaction of a spec by a scene** = the largest fraction of its constraints that hold under one
injective assignment of the mentions to the scene's objects (a mention left unassigned, because the
scene has fewer objects, satisfies none of its constraints; a relation holds only if both of its
mentions are assigned and the objects' slots are in that relation; the count holds if the scene has
exactly that many objects). So 1.0 = the scene fully satisfies the text, whatever else the scene
holds: "a red circle" has satisfaction 1.0 on a scene with a small red circle and a blue star, and
0.5 on a scene with only a red square.

**Relevance(query, candidate)** by what the query asks for (its *need*):

- need: answer (classification, VQA); candidate: answer text; relevance: 1 if it is the correct answer, else 0.
- need: scene matching a spec (text→image, composed image+text→image); candidate: scene image; relevance:
  satisfaction of the spec by the candidate scene.
- need: description of scene S (image→text); candidate: description text; relevance: satisfaction of the
  description's spec by S.
- need: the object of S a mention refers to (grounding); candidate: crop; relevance: fraction of the mention's
  attributes the cropped object has; the position counts only for crops of S itself (a crop shows no position).
- need: clip matching a clip spec (text→video); candidate: clip; relevance: fraction of the spec's background,
  shape, colour, first motion, second event the clip has.
- need: one half of clip C (moment retrieval); candidate: segment; relevance: 1 if it is that half of C, else 0.
- need: any; candidate: a candidate of another kind; relevance: 0.

Content items used as queries need what they show: a description needs the scenes that satisfy it,
a bare scene image needs descriptions it satisfies and scenes that satisfy its full description, a
crop needs crops of an object with the same shape, colour and size, an answer needs the same answer, a
clip needs clips matching its full spec, a segment needs itself (`unime.data.synth.clips`).
"""

from __future__ import annotations

import itertools
from typing import Any

from unime.data.synth.scenes import ATTRIBUTES, Scene, SceneObject, relation_holds


def full_spec(scene: Scene) -> dict[str, Any]:
    """The spec of a scene's full description: every object with every attribute, count, background."""
    return {"objects": [{a: o.attr(a) for a in ATTRIBUTES} for o in scene.objects], "relations": [],
            "count": len(scene.objects), "background": scene.background}


def make_spec(objects, relations=(), count=None, background=None) -> dict[str, Any]:
    return {"objects": [dict(m) for m in objects], "relations": [list(r) for r in relations], "count": count,
            "background": background}


def n_constraints(spec: dict) -> int:
    return (sum(len(m) for m in spec["objects"]) + len(spec["relations"]) + (spec["count"] is not None)
            + (spec["background"] is not None))


def mention_score(mention: dict, obj: SceneObject) -> int:
    return sum(obj.attr(a) == v for a, v in mention.items())


def spec_satisfaction(spec: dict, scene: Scene) -> float:
    """Fraction of the spec's constraints that the scene satisfies (best injective assignment)."""
    total = n_constraints(spec)
    if total == 0:
        return 1.0
    fixed = (spec["count"] is not None and spec["count"] == len(scene.objects)) + \
            (spec["background"] is not None and spec["background"] == scene.background)
    mentions = spec["objects"]
    slots: list[SceneObject | None] = list(scene.objects) + [None] * len(mentions)
    best = 0
    for assign in itertools.permutations(range(len(slots)), len(mentions)):
        objs = [slots[i] for i in assign]
        if any(o is None for o in objs) and len(mentions) <= len(scene.objects):
            continue  # with enough objects, leaving a mention out never helps
        score = sum(mention_score(m, o) for m, o in zip(mentions, objs) if o is not None)
        for i, rel, j in spec["relations"]:
            if objs[i] is not None and objs[j] is not None and relation_holds(objs[i], rel, objs[j]):
                score += 1
        best = max(best, score)
        if best + fixed == total:
            break
    return (best + fixed) / total


def matching_objects(mention: dict, scene: Scene) -> list[int]:
    """Indices of the scene's objects that have every attribute of the mention."""
    return [k for k, o in enumerate(scene.objects) if mention_score(mention, o) == len(mention)]


def crop_satisfaction(mention: dict, obj: SceneObject, *, same_scene: bool) -> float:
    if not mention:
        return 1.0
    hits = sum(obj.attr(a) == v for a, v in mention.items() if a != "position" or same_scene)
    return hits / len(mention)


def need_of(meta: dict) -> dict:
    """What an item asks for when it is used as a query (see the module doc)."""
    kind = meta["kind"]
    if kind == "query":
        return meta["need"]
    if kind == "answer":
        return {"type": "answer", "value": meta["value"]}
    if kind == "description":
        return {"type": "scene", "spec": meta["spec"]}
    if kind == "scene":
        return {"type": "same_scene", "scene": meta["scene"]}
    if kind == "crop":
        return {"type": "same_object", "scene": meta["scene"], "object": meta["object"]}
    if kind == "clip":
        return {"type": "same_clip", "clip": meta["clip"]}
    if kind == "segment":
        return {"type": "moment", "clip": meta["clip"], "part": meta["part"]}
    raise ValueError(f"unknown item kind {kind!r}")


def relevance(need: dict, cand: dict, scenes: dict[str, Scene], clips: dict | None = None) -> float:
    """Graded relevance in [0, 1] of a candidate (its item metadata) for a query's need; `clips` (id →
    `unime.data.synth.clips.Clip`) for the video items of a world with video."""
    kind, ntype = cand["kind"], need["type"]
    if kind == "query":
        raise ValueError("the candidate is a query item, not a candidate")
    if ntype in ("clip", "same_clip", "moment"):
        from unime.data.synth.clips import clip_satisfaction

        if ntype == "moment":
            return float(kind == "segment" and cand["clip"] == need["clip"] and cand["part"] == need["part"])
        if kind != "clip":
            return 0.0
        spec = need["spec"] if ntype == "clip" else clips[need["clip"]].spec()
        return clip_satisfaction(spec, clips[cand["clip"]])
    if ntype == "answer":
        return float(kind == "answer" and cand["value"] == need["value"])
    if ntype == "scene":
        return spec_satisfaction(need["spec"], scenes[cand["scene"]]) if kind == "scene" else 0.0
    if ntype == "describe":
        return spec_satisfaction(cand["spec"], scenes[need["scene"]]) if kind == "description" else 0.0
    if ntype == "same_scene":
        if kind == "scene":
            return spec_satisfaction(full_spec(scenes[need["scene"]]), scenes[cand["scene"]])
        if kind == "description":
            return spec_satisfaction(cand["spec"], scenes[need["scene"]])
        return 0.0
    if ntype == "object":
        if kind != "crop":
            return 0.0
        obj = scenes[cand["scene"]].objects[cand["object"]]
        return crop_satisfaction(need["mention"], obj, same_scene=cand["scene"] == need["scene"])
    if ntype == "same_object":
        if kind != "crop":
            return 0.0
        ref = scenes[need["scene"]].objects[need["object"]]
        mention = {a: ref.attr(a) for a in ("shape", "colour", "size")}
        return crop_satisfaction(mention, scenes[cand["scene"]].objects[cand["object"]], same_scene=False)
    raise ValueError(f"unknown need type {ntype!r}")
