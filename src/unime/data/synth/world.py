"""`World`: a generated demo world read back from disk, with its ground-truth relevance."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import yaml

from unime.data.items import Item, Record
from unime.data.synth.relevance import need_of, relevance
from unime.data.synth.scenes import Scene
from unime.errors import DataError

SUPPORTED_FORMAT_VERSIONS = (1,)


class World:
    """`World.load(root)`; `.relevance(query, candidate)` in [0, 1] (see `unime.data.synth.relevance`
    for the definition); `.records` (training records); `.scenes`; `.tasks` (eval_tasks.yaml)."""

    def __init__(self, root: Path, manifest: dict, scenes: dict[str, Scene], items: dict[str, tuple[dict, dict]],
                 clips: dict | None = None):
        self.root = root
        self.manifest = manifest
        self.scenes = scenes
        self.clips = clips or {}  # id → unime.data.synth.clips.Clip (worlds generated with video)
        self._items = items
        self._records: list[Record] | None = None

    @classmethod
    def load(cls, root: str | os.PathLike) -> "World":
        root = Path(root)
        manifest_path = root / "world.json"
        if not manifest_path.is_file():
            raise DataError("not a generated world (no world.json)", source=str(root))
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON: {e.msg}", source=str(manifest_path), record=f"line {e.lineno}") from None
        version = manifest.get("format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise DataError(f"world format version {version!r} is not supported (this unime reads "
                            f"{SUPPORTED_FORMAT_VERSIONS})", source=str(manifest_path), field="format_version")
        scenes = {}
        for n, obj in _jsonl(root / "scenes.jsonl"):
            try:
                scene = Scene.from_dict(obj)
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(f"bad scene annotation: {e!r}", source=str(root / "scenes.jsonl"),
                                record=f"line {n}") from None
            scenes[scene.id] = scene
        items = {}
        for n, obj in _jsonl(root / "items.jsonl"):
            if not isinstance(obj, dict) or not {"key", "item", "meta"} <= obj.keys():
                raise DataError("expected {key, item, meta}", source=str(root / "items.jsonl"), record=f"line {n}")
            items[obj["key"]] = (obj["item"], obj["meta"])
        clips = {}
        if (root / "clips.jsonl").is_file():
            from unime.data.synth.clips import Clip

            for n, obj in _jsonl(root / "clips.jsonl"):
                try:
                    clip = Clip.from_dict(obj)
                except (KeyError, TypeError, ValueError) as e:
                    raise DataError(f"bad clip annotation: {e!r}", source=str(root / "clips.jsonl"),
                                    record=f"line {n}") from None
                clips[clip.id] = clip
        return cls(root, manifest, scenes, items, clips)

    # -- contents ------------------------------------------------------------------------------------
    @property
    def records(self) -> list[Record]:
        if self._records is None:
            from unime.data.io import read_records

            self._records = read_records(self.root / "train" / "records.jsonl")
        return self._records

    def with_records(self, records: list[Record]) -> "World":
        """The same world (scenes, items, relevance) whose training records are `records` (a subset)."""
        other = World(self.root, self.manifest, self.scenes, self._items, self.clips)
        other._records = list(records)
        return other

    @property
    def tasks(self) -> list[dict]:
        with open(self.root / "eval_tasks.yaml", encoding="utf-8") as fh:
            return yaml.safe_load(fh)["tasks"]

    @property
    def held_out_combos(self) -> set[tuple[str, str]]:
        return {tuple(c) for c in self.manifest["held_out_combos"]}

    def __contains__(self, item: Item) -> bool:
        return item.key in self._items

    def meta(self, item: Item | str) -> dict:
        """The ground-truth metadata of an item (or an item key); unknown items raise `DataError`."""
        key = item if isinstance(item, str) else item.key
        try:
            return self._items[key][1]
        except KeyError:
            shown = key if isinstance(item, str) else f"{item.text[:60]!r} with {len(item.images)} image(s)"
            raise DataError(f"item {shown} is not an item of this world (key {key})",
                            source=str(self.root / "items.jsonl"), field="key") from None

    # -- ground truth ----------------------------------------------------------------------------------
    def relevance(self, query: Item | str, candidate: Item | str) -> float:
        """Graded relevance in [0, 1] of `candidate` for `query` (1.0 = fully satisfies it)."""
        cand = self.meta(candidate)
        if cand["kind"] == "query":
            raise DataError("the candidate is a query item of this world, not a candidate",
                            source=str(self.root / "items.jsonl"), field="candidate")
        return relevance(need_of(self.meta(query)), cand, self.scenes, self.clips)

    def relevances(self, query: Item | str, candidates: Iterable[Item | str]) -> list[float]:
        need = need_of(self.meta(query))
        return [relevance(need, self.meta(c), self.scenes, self.clips) for c in candidates]

    @property
    def video_tasks(self) -> list[dict]:
        """The video tasks (eval_tasks_video.yaml) of a world generated with video, else []."""
        path = self.root / "eval_tasks_video.yaml"
        if not path.is_file():
            return []
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)["tasks"]


def _jsonl(path: Path):
    if not path.is_file():
        raise DataError("file not found", source=str(path))
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"malformed JSON: {e.msg}", source=str(path), record=f"line {n}") from None
