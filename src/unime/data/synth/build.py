"""The state of a world being generated: scenes (unique by content), the items with their ground-truth
metadata, the crops to render, and one seeded random stream per purpose."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from unime.data import vocab
from unime.data.items import Item
from unime.options import RangeChecked, option
from unime.data.synth.relevance import relevance
from unime.data.synth.scenes import HELD_OUT_COMBOS, SLOTS, Scene, SceneObject, all_combos, sample_scene

SPLITS = ("train", "eval", "ood")


def _size(default: int, help: str):
    return option(default, help, cli_default=None, metavar="N")


@dataclass(frozen=True)
class WorldSizes(RangeChecked):
    """How big a world is. Queries that a pool cannot supply uniquely are left out (world.json counts
    what was made)."""

    # each size is an option of `unime data synth` overriding the --size preset's value (`unime.options`)
    train_scenes: int = _size(240, "scenes of the training pool")
    eval_scenes: int = _size(160, "scenes of the IND eval pool")
    ood_scenes: int = _size(120, "scenes of the OOD eval pool")
    train_per_task: int = _size(50, "training records per trained task")
    eval_queries: int = _size(50, "queries per eval task")
    candidates: int = _size(10, "candidates per eval query (label tasks use their label set when smaller)")
    retrieval_images: int = _size(40, "images of the caption retrieval task")
    compositional_pairs: int = _size(40, "compositional pairs per category (replace, swap, add)")
    image_size: int = _size(112, "scene image side in pixels (112: 4x4 merged 28-px patches for Qwen2-VL)")

    def __post_init__(self):
        super().__post_init__()  # an int each (`RangeChecked`)
        for name, value in self.__dict__.items():
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"size {name} must be a non-negative integer, got {value!r}")
        if self.candidates < 2:
            raise ValueError("candidates must be at least 2 (the positive and one distractor)")
        if self.image_size < 32:
            raise ValueError("image_size must be at least 32 pixels")


PRESETS = {
    "tiny": WorldSizes(train_scenes=48, eval_scenes=40, ood_scenes=30, train_per_task=8, eval_queries=6,
                       candidates=6, retrieval_images=8, compositional_pairs=6),
    "default": WorldSizes(),
    "large": WorldSizes(train_scenes=2400, eval_scenes=800, ood_scenes=500, train_per_task=500, eval_queries=200,
                        candidates=20, retrieval_images=200, compositional_pairs=200),
}


class ConflictingMetadata(RuntimeError):
    """The generator gave one item two meanings (a bug in the generator, never bad user input)."""


@dataclass
class WorldBuilder:
    seed: int
    sizes: WorldSizes
    scenes: dict[str, Scene] = field(default_factory=dict)
    pools: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    items: dict[str, tuple[Item, dict]] = field(default_factory=dict)
    crops: set[tuple[str, int]] = field(default_factory=set)
    _signatures: set = field(default_factory=set)
    _counters: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.held_out = list(HELD_OUT_COMBOS)
        self.ind_combos = [c for c in all_combos() if c not in HELD_OUT_COMBOS]

    def rng(self, purpose: str) -> random.Random:
        """An independent stream per purpose, so changing one task does not reshuffle the others."""
        return random.Random(f"unime-world:{self.seed}:{purpose}")

    # -- scenes -------------------------------------------------------------------------------------
    def _next_id(self, split: str) -> str:
        n = self._counters.get(split, 0)
        self._counters[split] = n + 1
        return f"{split}{n:05d}"

    def _add(self, scene: Scene) -> Scene:
        self.scenes[scene.id] = scene
        self._signatures.add(scene.signature)
        return scene

    def _free_single(self, rng: random.Random, split: str) -> Scene | None:
        """A one-object scene whose content no scene has yet (drawn from what is left: the space of
        one-object scenes is small, so rejection sampling would stall as it fills up)."""
        combos = self.held_out if split == "ood" else self.ind_combos
        free = [(bg, c, size, pos) for bg in vocab.BACKGROUNDS for c in combos for size in vocab.SIZES
                for pos in SLOTS if (bg, ((c[1], c[0], size, pos),)) not in self._signatures]
        if not free:
            return None
        bg, (colour, shape), size, pos = rng.choice(free)
        obj = SceneObject(shape, colour, size, pos, (rng.randint(-2, 2), rng.randint(-2, 2)))
        return Scene("", bg, (obj,), split)

    def single_capacity(self, split: str) -> int:
        """How many distinct one-object scenes a split's combinations allow."""
        combos = self.held_out if split == "ood" else self.ind_combos
        return len(vocab.BACKGROUNDS) * len(combos) * len(vocab.SIZES) * len(SLOTS)

    def make_pool(self, split: str, n: int, n_single: int) -> None:
        """n scenes of which n_single hold one object (as many as are still free) and the rest 2–3."""
        rng = self.rng(f"scenes:{split}")
        singles = set(rng.sample(range(n), min(n, n_single)))
        made, tries = 0, 0
        while made < n and tries < 50 * n + 100:
            tries += 1
            scene = self._free_single(rng, split) if made in singles else None
            if scene is None:  # a multi-object scene (also when no one-object scene is left)
                scene = sample_scene(rng, "", rng.choice((2, 3)), split, ind_combos=self.ind_combos,
                                     held_out=self.held_out)
            if scene.signature in self._signatures:
                continue
            scene = Scene(self._next_id(split), scene.background, scene.objects, split)
            self._add(scene)
            self.pools[split].append(scene.id)
            made += 1

    def add_variant(self, ref: Scene, objects) -> Scene | None:
        """A new scene like `ref` with other objects (composed-retrieval targets); None if it would
        duplicate an existing scene or break its split's combination rule."""
        cand = Scene("", ref.background, tuple(objects), ref.split, ref.id)
        if cand.signature in self._signatures or not cand.objects:
            return None
        if ref.split != "ood" and cand.has_combo(self.held_out):
            return None
        return self._add(Scene(self._next_id(ref.split), ref.background, tuple(objects), ref.split, ref.id))

    def pool(self, split: str, *, min_objects: int = 1, max_objects: int = 3) -> list[Scene]:
        return [self.scenes[s] for s in self.pools[split]
                if min_objects <= len(self.scenes[s].objects) <= max_objects]

    # -- items --------------------------------------------------------------------------------------
    def register(self, item: Item, meta: dict) -> Item:
        key = item.key
        old = self.items.get(key)
        if old is None:
            self.items[key] = (item, meta)
        elif old[1] != meta:
            raise ConflictingMetadata(f"item {item!r} registered as {old[1]} and as {meta}")
        return item

    def meta(self, item: Item) -> dict:
        return self.items[item.key][1]

    def image_query(self, scene: Scene, instruction: str, need: dict, task: str) -> Item:
        item = Item(f"{vocab.IMAGE_PLACEHOLDER}\n{instruction}", (scene.image,))
        return self.register(item, {"kind": "query", "task": task, "scene": scene.id, "need": need})

    def text_query(self, text: str, need: dict, task: str) -> Item:
        return self.register(Item(text), {"kind": "query", "task": task, "need": need})

    def answer(self, value: str) -> Item:
        return self.register(Item(value), {"kind": "answer", "value": value})

    def description(self, text: str, spec: dict) -> Item:
        return self.register(Item(text), {"kind": "description", "spec": spec})

    def scene_target(self, scene: Scene) -> Item:
        item = Item(f"{vocab.IMAGE_PLACEHOLDER}\n{vocab.TARGET_IMAGE_PROMPT}", (scene.image,))
        return self.register(item, {"kind": "scene", "scene": scene.id})

    def bare_image(self, scene: Scene) -> Item:
        return self.register(Item("", (scene.image,)), {"kind": "scene", "scene": scene.id})

    def crop_target(self, scene: Scene, k: int) -> Item:
        self.crops.add((scene.id, k))
        item = Item(f"{vocab.IMAGE_PLACEHOLDER}\n{vocab.TARGET_CROP_PROMPT}", (scene.crop_image(k),))
        return self.register(item, {"kind": "crop", "scene": scene.id, "object": k})

    def relevance(self, need: dict, candidate: Item) -> float:
        return relevance(need, self.meta(candidate), self.scenes)
