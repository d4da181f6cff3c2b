"""Scenes of the demo world: 1–3 simple objects (shape, colour, size, position slot) on a background.

Positions are five fixed slots (left, center, right, top, bottom) in normalised coordinates; the
spatial relations between two objects are read off their slot coordinates, so they are exact.
Held-out colour × shape combinations never appear in the IND scenes (train and IND eval); every OOD
scene holds at least one of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from unime.data import vocab

SLOTS = {"left": (0.2, 0.5), "center": (0.5, 0.5), "right": (0.8, 0.5), "top": (0.5, 0.2), "bottom": (0.5, 0.8)}
ATTRIBUTES = ("shape", "colour", "size", "position")

# one held-out shape per colour (a Latin-square diagonal), so each colour and each shape stays seen
HELD_OUT_COMBOS = (("red", "star"), ("green", "diamond"), ("blue", "cross"), ("yellow", "circle"),
                   ("purple", "square"), ("orange", "triangle"))


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str
    jitter: tuple[int, int] = (0, 0)  # pixel offset at render time, so equal layouts do not look identical

    def attr(self, name: str) -> str:
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "position": self.position,
                "jitter": list(self.jitter)}

    @classmethod
    def from_dict(cls, d: dict) -> "SceneObject":
        return cls(d["shape"], d["colour"], d["size"], d["position"], tuple(d.get("jitter", (0, 0))))


@dataclass(frozen=True)
class Scene:
    id: str
    background: str
    objects: tuple[SceneObject, ...]
    split: str = "train"  # train | eval | ood
    variant_of: str | None = None  # the reference scene of a composed-retrieval target

    @property
    def image(self) -> str:
        return f"images/scenes/{self.id}.png"

    def crop_image(self, k: int) -> str:
        return f"images/crops/{self.id}_o{k}.png"

    @property
    def signature(self) -> tuple:
        """Content identity: two scenes with the same signature satisfy exactly the same descriptions."""
        return (self.background, tuple(sorted((o.shape, o.colour, o.size, o.position) for o in self.objects)))

    def has_combo(self, combos) -> bool:
        return any((o.colour, o.shape) in combos for o in self.objects)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "split": self.split, "background": self.background, "variant_of": self.variant_of,
                "image": self.image, "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(d["id"], d["background"], tuple(SceneObject.from_dict(o) for o in d["objects"]), d["split"],
                   d.get("variant_of"))


def relation_holds(a: SceneObject, rel: str, b: SceneObject) -> bool:
    (ax, ay), (bx, by) = SLOTS[a.position], SLOTS[b.position]
    if rel == "left of":
        return ax < bx
    if rel == "right of":
        return ax > bx
    if rel == "above":
        return ay < by
    if rel == "below":
        return ay > by
    raise ValueError(f"unknown relation {rel!r}")


def relations_between(a: SceneObject, b: SceneObject) -> list[str]:
    return [r for r in vocab.RELATIONS if relation_holds(a, r, b)]


def sample_object(rng: random.Random, position: str, *, allowed, required=None) -> SceneObject:
    """An object at `position` whose (colour, shape) is `required`, or drawn from the allowed combos."""
    colour, shape = required if required is not None else rng.choice(allowed)
    return SceneObject(shape, colour, rng.choice(vocab.SIZES), position, (rng.randint(-2, 2), rng.randint(-2, 2)))


def sample_scene(rng: random.Random, scene_id: str, n_objects: int, split: str, *, ind_combos,
                 held_out) -> Scene:
    positions = rng.sample(list(SLOTS), n_objects)
    required = rng.randrange(n_objects) if split == "ood" else None
    objects = []
    for i, pos in enumerate(positions):
        req = rng.choice(held_out) if i == required else None
        objects.append(sample_object(rng, pos, allowed=ind_combos, required=req))
    background = rng.choice(list(vocab.BACKGROUNDS))
    return Scene(scene_id, background, tuple(objects), split)


def with_object(scene: Scene, k: int, **changes) -> tuple[SceneObject, ...]:
    objs = list(scene.objects)
    objs[k] = replace(objs[k], **changes)
    return tuple(objs)


def all_combos() -> list[tuple[str, str]]:
    return [(c, s) for c in vocab.COLOURS for s in vocab.SHAPES]
