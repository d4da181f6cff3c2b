"""The demo world's tasks, in MMEB's four meta-tasks, plus retrieval lists and compositional pairs.

Each task turns a scene into one query with its positive (`make`) and, for evaluation, picks
distractors (`distract`). Every eval candidate list is checked against the ground truth: the
positive has relevance 1.0 and every distractor less than 1.0, so Hit@1 is well defined even though
partial captions elsewhere in the world match many scenes.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Callable

from unime.data import vocab
from unime.data.eval_formats import CompositionalPair, RetrievalEntry
from unime.data.items import Item
from unime.data.synth import language as lang
from unime.data.synth.build import WorldBuilder
from unime.data.synth.relevance import full_spec, make_spec, spec_satisfaction
from unime.data.synth.scenes import Scene, relation_holds, with_object

INSTR = vocab.INSTRUCTIONS
TRAIN_CAPTION_LEVELS = (("full", 0.35), ("relation", 0.25), ("list", 0.2), ("partial", 0.2))
HARD_SEARCH = 400  # scenes searched for hard distractors per query
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@dataclass
class Example:
    query: Item
    positive: Item
    need: dict
    scene: Scene
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TaskDef:
    name: str
    meta_task: str  # classification | vqa | retrieval | grounding
    split: str  # IND | OOD: the eval split of the task
    trained: bool  # has training records (OOD held-out tasks do not)
    eval_pool: str  # the scene pool of its eval queries: eval | ood
    min_objects: int
    max_objects: int
    make: Callable[..., Example | None]
    distract: Callable[..., list[Item]]


# --- classification ---------------------------------------------------------------------------------

def _label_task(attr: str, task: str, label: Callable[[Scene], str]):
    def make(b: WorldBuilder, rng: random.Random, scene: Scene, *, train: bool) -> Example:
        value = label(scene)
        need = {"type": "answer", "value": value}
        q = b.image_query(scene, INSTR[task], need, task)
        return Example(q, b.answer(value), need, scene, {"answer_type": attr})
    return make


def _labels_distract(values: Callable[[], list[str]]):
    def distract(b, rng, ex: Example, pool, n: int) -> list[Item]:
        others = [v for v in values() if v != ex.need["value"]]
        rng.shuffle(others)
        return [b.answer(v) for v in others[:n - 1]]
    return distract


def _object_label(scene: Scene) -> str:
    o = scene.objects[0]
    return f"{o.colour} {o.shape}"


def _object_distract(b, rng, ex: Example, pool, n: int) -> list[Item]:
    colour, shape = ex.need["value"].split(" ")
    same_shape = [f"{c} {shape}" for c in vocab.COLOURS if c != colour]
    same_colour = [f"{colour} {s}" for s in vocab.SHAPES if s != shape]
    rest = [f"{c} {s}" for c in vocab.COLOURS for s in vocab.SHAPES if c != colour and s != shape]
    for lst in (same_shape, same_colour, rest):
        rng.shuffle(lst)
    hard = [x for pair in zip(same_shape, same_colour) for x in pair]
    picks = (hard[:max(0, (n - 1) * 2 // 3)] + rest)[:n - 1]
    return [b.answer(v) for v in picks]


# --- VQA ----------------------------------------------------------------------------------------------

def attribute_question(rng: random.Random, scene: Scene) -> tuple[str, str, str] | None:
    """(question, answer, answer type) about one object's colour, shape, size or position, or a shape's count in
    `scene`; None when the drawn object has no unique reference. The attr_vqa task's questions, also the base's
    pretraining questions (`unime.demo.pretrain.corpus_questions`)."""
    kind = rng.choice(("colour", "shape", "size", "position", "count"))
    if kind == "count":
        present = [o.shape for o in scene.objects]
        shape = rng.choice(present) if rng.random() < 0.6 else rng.choice(vocab.SHAPES)
        text = lang.question("count", {}, plural=vocab.SHAPE_PLURALS[shape])
        return text, lang.COUNT_WORDS[present.count(shape)], kind
    k = rng.randrange(len(scene.objects))
    ref = lang.pick_ref(rng, scene, k, exclude=(kind,))
    if ref is None:
        return None
    return lang.question(kind, ref), scene.objects[k].attr(kind), kind


def _attr_vqa(b: WorldBuilder, rng: random.Random, scene: Scene, *, train: bool) -> Example | None:
    asked = attribute_question(rng, scene)
    if asked is None:
        return None
    text, value, kind = asked
    need = {"type": "answer", "value": value}
    q = b.image_query(scene, INSTR["vqa"].format(question=text), need, "attr_vqa")
    return Example(q, b.answer(value), need, scene, {"answer_type": kind})


def _relation_vqa(b: WorldBuilder, rng: random.Random, scene: Scene, *, train: bool) -> Example | None:
    objs = scene.objects
    options = []
    for j in range(len(objs)):
        for rel in vocab.RELATIONS:
            hits = [i for i in range(len(objs)) if i != j and relation_holds(objs[i], rel, objs[j])]
            if len(hits) == 1:
                options.append((hits[0], rel, j))
    rng.shuffle(options)
    for i, rel, j in options:
        ref = lang.pick_ref(rng, scene, j)
        if ref is None:
            continue
        kind = rng.choice(("shape", "colour"))
        value = objs[i].attr(kind)
        text = lang.question(kind, ref, relation=rel)
        need = {"type": "answer", "value": value}
        q = b.image_query(scene, INSTR["vqa"].format(question=text), need, "relation_vqa")
        return Example(q, b.answer(value), need, scene, {"answer_type": kind})
    return None


def _answers_distract(b, rng, ex: Example, pool, n: int) -> list[Item]:
    by_type = lang.answer_type_values()
    same = [v for v in by_type[ex.extra["answer_type"]] if v != ex.need["value"]]
    other = sorted({v for t, vs in by_type.items() if t != ex.extra["answer_type"] for v in vs} - set(same)
                   - {ex.need["value"]})
    rng.shuffle(same)
    rng.shuffle(other)
    return [b.answer(v) for v in (same + other)[:n - 1]]


# --- retrieval ----------------------------------------------------------------------------------------

def _caption_level(rng: random.Random, train: bool) -> str:
    if not train:
        return "full"
    levels, weights = zip(*TRAIN_CAPTION_LEVELS)
    return rng.choices(levels, weights)[0]


def _i2t(b: WorldBuilder, rng: random.Random, scene: Scene, *, train: bool) -> Example:
    need = {"type": "describe", "scene": scene.id}
    q = b.image_query(scene, INSTR["i2t"], need, "i2t")
    text, spec = lang.caption(scene, _caption_level(rng, train), rng)
    return Example(q, b.description(text, spec), need, scene)


def _perturbed_scenes(rng: random.Random, scene: Scene) -> list[Scene]:
    """Hypothetical scenes one attribute away from `scene` (for hard negative captions)."""
    out = []
    for k, o in enumerate(scene.objects):
        for attr, values in (("colour", list(vocab.COLOURS)), ("shape", vocab.SHAPES), ("size", vocab.SIZES)):
            for v in values:
                if v != o.attr(attr):
                    out.append(Scene("", scene.background, with_object(scene, k, **{attr: v})))
    rng.shuffle(out)
    return out


def _sample(rng: random.Random, scenes: list[Scene], k: int = HARD_SEARCH) -> list[Scene]:
    """At most k scenes of a pool, in pool order (bounds the hard-negative search in large worlds)."""
    if len(scenes) <= k:
        return scenes
    keep = set(rng.sample(range(len(scenes)), k))
    return [s for i, s in enumerate(scenes) if i in keep]


def _i2t_distract(b, rng, ex: Example, pool, n: int) -> list[Item]:
    scene = ex.scene
    perturbed = [lang.full_caption(s) for s in _perturbed_scenes(rng, scene)[:(n - 1) // 2]]
    others = _sample(rng, [s for s in pool if s.id != scene.id])
    scored = sorted(others, key=lambda s: -spec_satisfaction(full_spec(s), scene))
    hard = scored[:(n - 1) // 2]
    hard_ids = {s.id for s in hard}
    rest = [s for s in others if s.id not in hard_ids]
    rng.shuffle(rest)
    texts = perturbed + [lang.full_caption(s) for s in hard + rest]
    return (b.description(t, spec) for t, spec in texts)


def _t2i(task: str):
    def make(b: WorldBuilder, rng: random.Random, scene: Scene, *, train: bool) -> Example:
        text, spec = lang.caption(scene, _caption_level(rng, train), rng)
        need = {"type": "scene", "spec": spec}
        q = b.text_query(INSTR["t2i"].format(caption=text), need, task)
        return Example(q, b.scene_target(scene), need, scene)
    return make


def _scene_distractors(b: WorldBuilder, rng: random.Random, need: dict, pool: list[Scene], exclude: set[str],
                       n: int) -> list[Item]:
    """Half the hardest scenes of (a sample of) the pool (highest relevance below 1.0), half at random."""
    pool = _sample(rng, pool)
    scored = []
    for s in pool:
        if s.id in exclude:
            continue
        r = spec_satisfaction(need["spec"], s)
        if r < 1.0:
            scored.append((r, s))
    order = {s.id: i for i, s in enumerate(pool)}
    scored.sort(key=lambda rs: (-rs[0], order[rs[1].id]))
    n_hard = (n + 1) // 2
    hard = [s for _, s in scored[:n_hard]]
    rest = [s for _, s in scored[n_hard:]]
    rng.shuffle(rest)
    return (b.scene_target(s) for s in hard + rest)


def _t2i_distract(b, rng, ex: Example, pool, n: int) -> list[Item]:
    return _scene_distractors(b, rng, ex.need, pool, {ex.scene.id}, n - 1)


def _modification(rng: random.Random, scene: Scene, k: int, kind: str):
    """(modification text, new objects) or None."""
    o = scene.objects[k]
    if kind == "remove":
        if len(scene.objects) < 2:
            return None
        ref = lang.pick_ref(rng, scene, k)
        objs = tuple(x for i, x in enumerate(scene.objects) if i != k)
        return (lang.modification_text("remove", ref, None), objs) if ref else None
    values = {"colour": list(vocab.COLOURS), "shape": list(vocab.SHAPES), "size": list(vocab.SIZES)}[kind]
    value = rng.choice([v for v in values if v != o.attr(kind)])
    ref = lang.pick_ref(rng, scene, k)
    if ref is None:
        return None
    return lang.modification_text(kind, ref, value), with_object(scene, k, **{kind: value})


MODIFY_KINDS = ("colour", "shape", "size", "remove")


def _modify(b: WorldBuilder, rng: random.Random, scene: Scene, *, train: bool) -> Example | None:
    k = rng.randrange(len(scene.objects))
    mod = _modification(rng, scene, k, rng.choice(MODIFY_KINDS))
    if mod is None:
        return None
    text, objects = mod
    target = b.add_variant(scene, objects)
    if target is None:
        return None
    need = {"type": "scene", "spec": full_spec(target)}
    q = b.image_query(scene, INSTR["modify"].format(modification=text), need, "modify")
    return Example(q, b.scene_target(target), need, scene, {"target": target.id})


def _modify_distract(b, rng, ex: Example, pool, n: int) -> list[Item]:
    scene = ex.scene
    out = [b.scene_target(scene)]  # the reference image itself: the hardest negative
    for _ in range(6):  # sibling edits of the same reference
        if len(out) >= 3:
            break
        k = rng.randrange(len(scene.objects))
        mod = _modification(rng, scene, k, rng.choice(MODIFY_KINDS))
        sib = b.add_variant(scene, mod[1]) if mod else None
        if sib is not None:
            out.append(b.scene_target(sib))
    exclude = {scene.id, ex.extra["target"]}
    return itertools.chain(out, _scene_distractors(b, rng, ex.need, pool, exclude, n - 1 - len(out)))


# --- grounding ----------------------------------------------------------------------------------------

def _grounding(task: str, held_out_only: bool):
    def make(b: WorldBuilder, rng: random.Random, scene: Scene, *, train: bool) -> Example | None:
        ks = [k for k, o in enumerate(scene.objects) if not held_out_only or (o.colour, o.shape) in b.held_out]
        if not ks:
            return None
        k = rng.choice(ks)
        ref = lang.pick_ref(rng, scene, k)
        if ref is None:
            return None
        need = {"type": "object", "scene": scene.id, "mention": ref}
        text = INSTR["grounding"].format(expression=lang.mention_phrase(ref, definite=True))
        q = b.image_query(scene, text, need, task)
        return Example(q, b.crop_target(scene, k), need, scene, {"object": k})
    return make


def _grounding_distract(b, rng, ex: Example, pool, n: int) -> list[Item]:
    scene, k = ex.scene, ex.extra["object"]
    own = [b.crop_target(scene, j) for j in range(len(scene.objects)) if j != k]
    obj = scene.objects[k]
    others = [(s, j) for s in _sample(rng, pool) if s.id != scene.id for j in range(len(s.objects))]
    is_hard = [s.objects[j].shape == obj.shape or s.objects[j].colour == obj.colour for s, j in others]
    hard = [x for x, h in zip(others, is_hard) if h]
    rest = [x for x, h in zip(others, is_hard) if not h]
    rng.shuffle(hard)
    rng.shuffle(rest)
    n_hard = max(0, (n - 1 - len(own)) // 2)
    picks = hard[:n_hard] + rest + hard[n_hard:]
    return itertools.chain(own, (b.crop_target(s, j) for s, j in picks))


TASKS: tuple[TaskDef, ...] = (
    TaskDef("shape_cls", "classification", "IND", True, "eval", 1, 1,
            _label_task("shape", "shape_cls", lambda s: s.objects[0].shape),
            _labels_distract(lambda: list(vocab.SHAPES))),
    TaskDef("colour_cls", "classification", "IND", True, "eval", 1, 1,
            _label_task("colour", "colour_cls", lambda s: s.objects[0].colour),
            _labels_distract(lambda: list(vocab.COLOURS))),
    TaskDef("count_cls", "classification", "IND", True, "eval", 1, 3,
            _label_task("count", "count_cls", lambda s: lang.COUNT_WORDS[len(s.objects)]),
            _labels_distract(lambda: list(vocab.COUNT_WORDS))),
    TaskDef("object_cls", "classification", "OOD", True, "ood", 1, 1,
            _label_task("object", "object_cls", _object_label), _object_distract),
    TaskDef("attr_vqa", "vqa", "IND", True, "eval", 1, 3, _attr_vqa, _answers_distract),
    TaskDef("relation_vqa", "vqa", "OOD", False, "eval", 2, 3, _relation_vqa, _answers_distract),
    TaskDef("i2t", "retrieval", "IND", True, "eval", 1, 3, _i2t, _i2t_distract),
    TaskDef("t2i", "retrieval", "IND", True, "eval", 1, 3, _t2i("t2i"), _t2i_distract),
    TaskDef("modify", "retrieval", "IND", True, "eval", 1, 3, _modify, _modify_distract),
    TaskDef("t2i_ood", "retrieval", "OOD", False, "ood", 1, 3, _t2i("t2i_ood"), _t2i_distract),
    TaskDef("refer_grounding", "grounding", "IND", True, "eval", 2, 3, _grounding("refer_grounding", False),
            _grounding_distract),
    TaskDef("refer_grounding_ood", "grounding", "OOD", False, "ood", 2, 3, _grounding("refer_grounding_ood", True),
            _grounding_distract),
)


def build_queries(b: WorldBuilder, task: TaskDef, pool: list[Scene], n: int, rng: random.Random, *,
                  train: bool, candidates: int = 0, distractor_pool: list[Scene] | None = None,
                  exclude: set[str] = frozenset()) -> list[tuple[Example, list[Item]]]:
    """Up to n distinct queries of `task` on scenes of `pool`, each with its eval candidate list
    (positive first, distractors drawn from `distractor_pool`) unless `train`. Scenes are used once
    each before any is reused; queries whose key is in `exclude` are not made."""
    distractor_pool = pool if distractor_pool is None else distractor_pool
    out: list[tuple[Example, list[Item]]] = []
    seen = set(exclude)
    if not pool:
        return out
    order: list[Scene] = []
    tries = 0
    while len(out) < n and tries < 30 * n + 50:
        tries += 1
        if not order:
            order = list(pool)
            rng.shuffle(order)
        scene = order.pop()
        ex = task.make(b, rng, scene, train=train)
        if ex is None or ex.query.key in seen:
            continue
        if b.relevance(ex.need, ex.positive) != 1.0:  # pragma: no cover - generator invariant
            raise AssertionError(f"{task.name}: positive of {ex.query.text!r} is not fully relevant")
        cands: list[Item] = []
        if not train:
            cands = [ex.positive]
            keys = {ex.positive.key}
            for d in task.distract(b, rng, ex, distractor_pool, candidates):
                if len(cands) >= candidates:
                    break
                if d.key not in keys and b.relevance(ex.need, d) < 1.0:
                    cands.append(d)
                    keys.add(d.key)
            if len(cands) < 2:
                continue
        seen.add(ex.query.key)
        out.append((ex, cands))
    return out


# --- retrieval lists and compositional pairs --------------------------------------------------------

def build_retrieval(b: WorldBuilder, rng: random.Random, pool: list[Scene], n: int) -> list[RetrievalEntry]:
    scenes = list(pool)
    rng.shuffle(scenes)
    out = []
    for scene in scenes[:n]:
        caps = [lang.full_caption(scene), lang.list_caption([lang.object_mention(o, ("size", "colour", "shape"))
                                                             for o in scene.objects])]
        if len(scene.objects) >= 2:
            caps.append(lang.caption(scene, "relation", rng))
        else:
            caps.append(lang.list_caption([lang.object_mention(scene.objects[0], ("colour", "shape"))]))
        texts = []
        for text, spec in caps:
            if text not in texts:
                b.description(text, spec)
                texts.append(text)
        b.bare_image(scene)
        out.append(RetrievalEntry(scene.image, texts, id=scene.id))
    return out


def _replace(rng: random.Random, scene: Scene):
    sub = rng.choice(("replace-att", "replace-obj", "replace-rel"))
    if sub == "replace-rel":
        if len(scene.objects) < 2:
            return None
        text, spec = lang.caption(scene, "relation", rng)
        (i, rel, j), = spec["relations"]
        neg = make_spec(spec["objects"], relations=[(i, OPPOSITE[rel], j)])
        return sub, (text, spec), (lang.spec_caption(neg), neg)
    attrs = ("size", "colour", "shape") if rng.random() < 0.5 else ("colour", "shape")
    chosen = rng.sample(list(scene.objects), min(len(scene.objects), rng.choice((1, 2))))
    mentions = [lang.object_mention(o, attrs) for o in chosen]
    m = rng.randrange(len(mentions))
    attr = "shape" if sub == "replace-obj" else rng.choice([a for a in attrs if a != "shape"])
    values = {"colour": list(vocab.COLOURS), "shape": list(vocab.SHAPES), "size": list(vocab.SIZES)}[attr]
    neg_mentions = [dict(x) for x in mentions]
    neg_mentions[m][attr] = rng.choice([v for v in values if v != mentions[m][attr]])
    return sub, lang.list_caption(mentions), lang.list_caption(neg_mentions)


def _swap(rng: random.Random, scene: Scene):
    if len(scene.objects) < 2:
        return None
    i, j = rng.sample(range(len(scene.objects)), 2)
    a, c = scene.objects[i], scene.objects[j]
    sub = rng.choice(("swap-att", "swap-obj"))
    attr = "colour" if sub == "swap-att" else "shape"
    if a.attr(attr) == c.attr(attr):
        return None
    ma, mc = lang.object_mention(a, ("colour", "shape")), lang.object_mention(c, ("colour", "shape"))
    na, nc = dict(ma, **{attr: mc[attr]}), dict(mc, **{attr: ma[attr]})
    rels = [r for r in vocab.RELATIONS if relation_holds(a, r, c)]
    if rels and rng.random() < 0.5:
        rel = rng.choice(rels)
        return sub, lang.relation_caption(ma, rel, mc), lang.relation_caption(na, rel, nc)
    return sub, lang.list_caption([ma, mc]), lang.list_caption([na, nc])


def _add(rng: random.Random, scene: Scene, ind_combos):
    sub = rng.choice(("add-obj", "add-att"))
    if sub == "add-obj":
        mentions = [lang.object_mention(o, ("colour", "shape")) for o in scene.objects]
        present = {(o.colour, o.shape) for o in scene.objects}
        colour, shape = rng.choice([c for c in ind_combos if c not in present])
        return sub, lang.list_caption(mentions), lang.list_caption(mentions + [{"colour": colour, "shape": shape}])
    o = rng.choice(scene.objects)
    attr = rng.choice(("size", "colour"))
    values = list(vocab.SIZES) if attr == "size" else list(vocab.COLOURS)
    mention = {"shape": o.shape}
    neg = {attr: rng.choice([v for v in values if v != o.attr(attr)]), "shape": o.shape}
    return sub, lang.list_caption([mention]), lang.list_caption([neg])


def build_compositional(b: WorldBuilder, rng: random.Random, pool: list[Scene], category: str,
                        n: int) -> list[CompositionalPair]:
    """SugarCrepe-style pairs: a true caption and one changed by replace / swap / add that the scene
    does not satisfy (checked against the ground truth)."""
    out, seen = [], set()
    tries = 0
    while len(out) < n and tries < 30 * n + 50 and pool:
        tries += 1
        scene = rng.choice(pool)
        made = {"replace": lambda: _replace(rng, scene), "swap": lambda: _swap(rng, scene),
                "add": lambda: _add(rng, scene, b.ind_combos)}[category]()
        if made is None:
            continue
        sub, (pos_text, pos_spec), (neg_text, neg_spec) = made
        if (scene.id, pos_text, neg_text) in seen or pos_text == neg_text:
            continue
        if spec_satisfaction(pos_spec, scene) != 1.0 or spec_satisfaction(neg_spec, scene) >= 1.0:
            continue
        seen.add((scene.id, pos_text, neg_text))
        b.description(pos_text, pos_spec)
        b.description(neg_text, neg_spec)
        b.bare_image(scene)
        out.append(CompositionalPair(scene.image, pos_text, neg_text, sub, id=f"{category}-{len(out):04d}"))
    return out


# --- graded search (qrels) --------------------------------------------------------------------------

GRADED_LEVELS = ("partial", "list", "relation", "count")


def build_graded_search(b: WorldBuilder, rng: random.Random, pool: list[Scene], n: int, n_candidates: int, *,
                        exclude: set[str] = frozenset()) -> list[dict]:
    """Text→image search with graded relevance (the harness's `qrels` rows): under-specified captions
    that several scenes satisfy fully and many partly. Each query's candidates hold up to half fully
    relevant scenes, then the most relevant of the rest, then random ones; grades = `relevance`."""
    out: list[dict] = []
    seen = set(exclude)
    tries = 0
    while len(out) < n and tries < 30 * n + 50 and pool:
        tries += 1
        scene = rng.choice(pool)
        text, spec = lang.caption(scene, rng.choice(GRADED_LEVELS), rng)
        need = {"type": "scene", "spec": spec}
        query_text = INSTR["t2i"].format(caption=text)
        if Item(query_text).key in seen or Item(query_text).key in b.items:  # not a query of another task
            continue
        query = b.text_query(query_text, need, "scene_search")
        scored = [(spec_satisfaction(spec, s), i, s) for i, s in enumerate(_sample(rng, pool))]
        full = [x for x in scored if x[0] == 1.0]
        partial = sorted((x for x in scored if x[0] < 1.0), key=lambda x: (-x[0], x[1]))
        rng.shuffle(full)
        picked = full[:max(1, n_candidates // 2)]
        n_hard = (n_candidates - len(picked) + 1) // 2
        rest = partial[n_hard:]
        rng.shuffle(rest)
        picked += partial[:n_hard] + rest[:n_candidates - len(picked) - n_hard]
        rng.shuffle(picked)
        seen.add(query.key)
        cands = [b.scene_target(s) for _, _, s in picked]
        out.append({"id": f"scene_search-{len(out):04d}", "query": query.to_dict(),
                    "candidates": [c.to_dict() for c in cands],
                    "relevance": [round(r, 6) for r, _, _ in picked]})
    return out
