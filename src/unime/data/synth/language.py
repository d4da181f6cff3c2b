"""Texts of the demo world, each built together with its spec (what it asserts), in the vocabulary
of `unime.data.vocab`: captions at several levels of detail, referring expressions, questions and
modification requests."""

from __future__ import annotations

import random
from unime.data import vocab
from unime.data.synth.relevance import make_spec, matching_objects
from unime.data.synth.scenes import ATTRIBUTES, Scene, SceneObject, relations_between

COUNT_WORDS = vocab.COUNT_WORDS  # index = count


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def mention_phrase(mention: dict, *, definite: bool = False, with_position: bool = True) -> str:
    """"a small red circle on the left" / "the red object" from a mention."""
    words = [mention[a] for a in ("size", "colour") if a in mention]
    words.append(mention.get("shape", vocab.OBJECT_WORD))
    head = " ".join(words)
    phrase = f"the {head}" if definite else f"{article(head)} {head}"
    if with_position and "position" in mention:
        phrase += " " + vocab.POSITION_PHRASES[mention["position"]]
    return phrase


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def join_phrases(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def object_mention(obj: SceneObject, attrs=ATTRIBUTES) -> dict:
    return {a: obj.attr(a) for a in attrs}


# --- captions -----------------------------------------------------------------------------------------

def full_caption(scene: Scene) -> tuple[str, dict]:
    mentions = [object_mention(o) for o in scene.objects]
    n = len(mentions)
    text = vocab.CAPTION_TEMPLATES["full"].format(
        background=scene.background, count=COUNT_WORDS[n], objects_word=vocab.OBJECT_WORD if n == 1 else
        vocab.OBJECTS_WORD, objects=join_phrases([mention_phrase(m) for m in mentions]))
    return capitalise(text), make_spec(mentions, count=n, background=scene.background)


def list_caption(mentions: list[dict]) -> tuple[str, dict]:
    """"A red circle and a large star." — the objects only (a scene may hold more)."""
    text = vocab.CAPTION_TEMPLATES["list"].format(objects=join_phrases([mention_phrase(m) for m in mentions]))
    return capitalise(text), make_spec(mentions)


def relation_caption(a: dict, rel: str, b: dict) -> tuple[str, dict]:
    text = vocab.CAPTION_TEMPLATES["relation"].format(a=capitalise(mention_phrase(a, with_position=False)),
                                                      relation=rel, b=mention_phrase(b, with_position=False))
    pa = {k: v for k, v in a.items() if k != "position"}
    pb = {k: v for k, v in b.items() if k != "position"}
    return text, make_spec([pa, pb], relations=[(0, rel, 1)])


def count_caption(scene: Scene) -> tuple[str, dict]:
    n = len(scene.objects)
    text = vocab.CAPTION_TEMPLATES["count"].format(count=capitalise(COUNT_WORDS[n]), background=scene.background,
                                                   objects_word=vocab.OBJECT_WORD if n == 1 else vocab.OBJECTS_WORD)
    return text, make_spec([], count=n, background=scene.background)


PARTIAL_ATTRS = (("colour", "shape"), ("size", "shape"), ("shape", "position"), ("colour",), ("shape",),
                 ("size", "colour", "shape"))


def caption(scene: Scene, level: str, rng: random.Random) -> tuple[str, dict]:
    """A true caption of `scene` at a level of detail: full, relation, list, partial or count.
    Levels below full match many scenes (the false negatives that mining must catch)."""
    if level == "full":
        return full_caption(scene)
    if level == "relation" and len(scene.objects) >= 2:
        pairs = [(i, j, r) for i in range(len(scene.objects)) for j in range(len(scene.objects)) if i != j
                 for r in relations_between(scene.objects[i], scene.objects[j])]
        i, j, rel = rng.choice(pairs)
        attrs = rng.choice([("colour", "shape"), ("size", "colour", "shape"), ("shape",)])
        return relation_caption(object_mention(scene.objects[i], attrs), rel, object_mention(scene.objects[j], attrs))
    if level in ("list", "relation"):
        attrs = rng.choice([("colour", "shape"), ("size", "colour", "shape")])
        return list_caption([object_mention(o, attrs) for o in scene.objects])
    if level == "partial":
        return list_caption([object_mention(rng.choice(scene.objects), rng.choice(PARTIAL_ATTRS))])
    if level == "count":
        return count_caption(scene)
    raise ValueError(f"unknown caption level {level!r}")


def spec_caption(spec: dict) -> str:
    """The text of a spec made by `list_caption` / `relation_caption` (used for perturbed captions)."""
    if spec["relations"]:
        (i, rel, j), = spec["relations"]
        return relation_caption(spec["objects"][i], rel, spec["objects"][j])[0]
    return list_caption(spec["objects"])[0]


# --- referring expressions, questions, modifications ----------------------------------------------------------

REF_ATTR_SETS = (("shape",), ("colour", "shape"), ("size", "shape"), ("shape", "position"), ("colour",),
                 ("position",), ("size", "colour", "shape"), ("colour", "shape", "position"), ("size", "colour"),
                 ("size", "position"), ("colour", "position"))


def unique_refs(scene: Scene, k: int, *, exclude: tuple[str, ...] = ()) -> list[dict]:
    """Mentions (shortest first) that pick out object k alone, without the attributes in `exclude`."""
    out = []
    for attrs in REF_ATTR_SETS:
        if set(attrs) & set(exclude):
            continue
        m = object_mention(scene.objects[k], attrs)
        if matching_objects(m, scene) == [k]:
            out.append(m)
    return sorted(out, key=len)


def pick_ref(rng: random.Random, scene: Scene, k: int, *, exclude: tuple[str, ...] = ()) -> dict | None:
    refs = unique_refs(scene, k, exclude=exclude)
    if not refs:
        return None
    shortest = [r for r in refs if len(r) <= len(refs[0]) + 1]
    return rng.choice(shortest)


def question(kind: str, ref: dict, *, relation: str | None = None, plural: str | None = None) -> str:
    key = f"relation_{kind}" if relation else kind
    return vocab.QUESTION_TEMPLATES[key].format(ref=mention_phrase(ref, definite=True), relation=relation,
                                                plural=plural)


def modification_text(kind: str, ref: dict, value: str | None) -> str:
    return vocab.MODIFICATION_TEMPLATES[kind].format(ref=mention_phrase(ref, definite=True), value=value,
                                                     a_value=f"{article(value)} {value}" if value else None)


def answer_type_values() -> dict[str, tuple[str, ...]]:
    return {"colour": tuple(vocab.COLOURS), "shape": vocab.SHAPES, "size": vocab.SIZES,
            "position": vocab.POSITIONS, "count": vocab.COUNT_WORDS}
