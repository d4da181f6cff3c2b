"""ANNOTATION TEACHER for the generated demo world — not a model.

Embed-RL cold-starts the Reasoner on T-CoTs written by a strong teacher MLLM. The demo world has no
such model, so this module writes T-CoTs **from the world's scene annotations** (`scenes.jsonl`:
objects with shape, colour, size, position and pixel bbox; `items.jsonl`: what each item is and asks
for). Its T-CoTs are correct by construction and it must only ever be used to make *training* data:
it reads ground truth, so using it on evaluation items would leak the answers. Every row it writes
carries `source = "teacher:annotations"`.

With real data the teacher is any generative checkpoint: `unime reason generate --model TEACHER`
(`Reasoner.generate`) writes the same T-CoT file format.

What it writes, by item:
- image items: `bbox_2d` = the boxes (0–1000) of the objects the item is about (the referred object
  for grounding, the objects a question or modification names, otherwise every object); crops: the
  object's box inside the crop window; plus `text_keywords` = the world words of the item's text;
- text items: `text_keywords` = the world words of the text (shapes, colours, sizes, positions,
  relations, counts, backgrounds) in order;
- video items (worlds generated with video): `key_frames` (1-based, numbered among the frames the video sampling
  takes from the file: the default 8 frames, or the `--video-*` options given, which must be those the reasoner and
  the embedder are then run with): the sampled frames nearest a clip's first frame, the first of its second half and
  its last (its two events); the sampled frames of a moment query's half of the clip; a segment's every sampled
  frame. A clip query (text → clip)
  and a clip share the answer "the red square moves left then turns blue on a black background", a moment
  query and its segment "the red square moves left";
- `<rethink>` one sentence; `<answer>` a few words (the answer of a question, the objects of a scene).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from unime.data import vocab
from unime.data.items import Item, Record
from unime.data.video import VideoOptions, VideoSampling
from unime.errors import DataError
from unime.options import on_error_option, option
from unime.reasoning.tcot import COORD_MAX, render_tcot

SOURCE = "teacher:annotations"

_WORDS: dict[str, str] = {}
for _w in (*vocab.SHAPES, *vocab.COLOURS, *vocab.SIZES, *vocab.POSITIONS, *vocab.COUNT_WORDS, *vocab.BACKGROUNDS):
    _WORDS[_w] = _w
for _shape, _plural in vocab.SHAPE_PLURALS.items():
    _WORDS[_plural] = _shape
_RELATIONS = sorted(vocab.RELATIONS, key=len, reverse=True)
_PLACEHOLDER = re.compile(r"<\|image_\d+\|>|<image>")


def world_keywords(text: str) -> list[str]:
    """The demo world's words in `text`, in order, without repeats (plurals → the shape; relations kept
    as phrases, e.g. "left of")."""
    text = _PLACEHOLDER.sub(" ", text).lower()
    found: list[tuple[int, str]] = []
    taken = [False] * len(text)
    for rel in _RELATIONS:
        for m in re.finditer(r"\b" + re.escape(rel) + r"\b", text):
            if not any(taken[m.start():m.end()]):
                found.append((m.start(), rel))
                taken[m.start():m.end()] = [True] * (m.end() - m.start())
    for m in re.finditer(r"[a-z]+", text):
        if m.group(0) in _WORDS and not any(taken[m.start():m.end()]):
            found.append((m.start(), _WORDS[m.group(0)]))
    out: list[str] = []
    for _, w in sorted(found):
        if w not in out:
            out.append(w)
    return out


def _object_phrase(obj: dict) -> str:
    return f"{obj['size']} {obj['colour']} {obj['shape']}"


def _with_article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _objects_phrase(objs: Sequence[dict], *, articles: bool = False) -> str:
    phrases = [_with_article(_object_phrase(o)) if articles else _object_phrase(o) for o in objs]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _mention_phrase(mention: dict) -> str:
    words = [mention[a] for a in ("size", "colour") if a in mention] + [mention.get("shape", vocab.OBJECT_WORD)]
    phrase = " ".join(words)
    if "position" in mention:
        phrase += " " + vocab.POSITION_PHRASES[mention["position"]]
    return phrase


def _spec_phrase(spec: dict) -> str:
    phrases = [_mention_phrase(m) for m in spec["objects"]] or ["any objects"]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _matches(obj: dict, mention: dict) -> bool:
    return all(obj.get(a) == v for a, v in mention.items())


def _clip_spec_phrase(spec: dict) -> str:
    """What a clip spec (`Clip.spec`) shows: "the red square moves left then turns blue on a black background"."""
    from unime.data.synth.clips import event_phrase

    return (f"the {spec['colour']} {spec['shape']} moves {spec['first']} then {event_phrase(tuple(spec['then']))} "
            f"on a {spec['background']} background")


class AnnotationTeacher:
    """Writes T-CoTs for the items of a generated world from its annotations (see the module doc)."""

    def __init__(self, world_root: str | os.PathLike, *, video_sampling: VideoSampling | None = None):
        """`video_sampling`: how the reasoner and the embedder sample the world's clips (default: `VideoSampling()`,
        8 frames); the key frames are numbered among the frames it takes."""
        from unime.data.synth import World

        self.root = Path(world_root)
        self.video_sampling = video_sampling or VideoSampling()
        self.world = World.load(self.root)
        self.annotations: dict[str, dict] = {}
        path = self.root / "scenes.jsonl"
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    obj = json.loads(line)
                    for k, o in enumerate(obj.get("objects", [])):
                        if "bbox" not in o:
                            raise DataError("scene object without a bbox annotation", source=str(path), record=n,
                                            field=f"objects[{k}].bbox")
                    self.annotations[obj["id"]] = obj

    # -- geometry ---------------------------------------------------------------------------------------
    def _scene(self, scene_id: str) -> dict:
        if scene_id not in self.annotations:
            raise DataError(f"scene {scene_id!r} has no annotation", source=str(self.root / "scenes.jsonl"),
                            field="id")
        return self.annotations[scene_id]

    @staticmethod
    def _norm_box(box: Sequence[float], width: float, height: float) -> list[int]:
        x1, y1, x2, y2 = box
        return [round(x1 * COORD_MAX / width), round(y1 * COORD_MAX / height), round(x2 * COORD_MAX / width),
                round(y2 * COORD_MAX / height)]

    def scene_boxes(self, scene_id: str, indices: Iterable[int]) -> list[list[int]]:
        ann = self._scene(scene_id)
        w, h = ann["image_size"]
        return [self._norm_box(ann["objects"][k]["bbox"], w, h) for k in indices]

    def crop_box(self, scene_id: str, k: int) -> list[int]:
        """The object's box inside its crop window (the window the world's renderer cut), 0–1000."""
        from unime.data.synth.render import crop_box

        ann = self._scene(scene_id)
        size = ann["image_size"][0]
        x0, y0, x1, y1 = crop_box(self.world.scenes[scene_id].objects[k], size)
        bx1, by1, bx2, by2 = ann["objects"][k]["bbox"]
        side_w, side_h = x1 - x0, y1 - y0
        box = [max(0, bx1 - x0), max(0, by1 - y0), min(side_w, bx2 - x0), min(side_h, by2 - y0)]
        return self._norm_box(box, side_w, side_h)

    # -- video ------------------------------------------------------------------------------------------
    def _clip(self, clip_id: str):
        if clip_id not in self.world.clips:
            raise DataError(f"clip {clip_id!r} has no annotation", source=str(self.root / "clips.jsonl"), field="id")
        return self.world.clips[clip_id]

    def _clip_of_video(self, item: Item):
        """The clip whose file is the item's video (a video query of the world's tasks), None if none is."""
        paths = {c.path: c for c in self.world.clips.values()}
        return next((paths[v] for v in item.video if v in paths), None)

    def _sampled(self, total: int) -> list[int]:
        """The 0-based frames of a clip file of `total` frames that `video_sampling` takes (the reasoner and the
        embedder are shown these), in order: key frame k is the k-th of them."""
        from unime.data.synth.clips import VideoSizes
        from unime.data.video import uniform_indices

        fps = VideoSizes(**self.world.manifest["video"]).fps
        return uniform_indices(total, self.video_sampling.frame_count(total, total / fps))

    def _key_frames(self, total: int, wanted: Iterable[int]) -> list[int]:
        """1-based numbers, among the sampled frames of a clip file of `total` frames (`_sampled`), of those in
        `wanted` (0-based frames of the file)."""
        wanted = set(wanted)
        return [i + 1 for i, f in enumerate(self._sampled(total)) if f in wanted]

    def _nearest_key_frames(self, total: int, events: Iterable[int]) -> list[int]:
        """1-based numbers of the sampled frames nearest each of the `events` (0-based frames of the file), in
        order, without repeats: an event frame that the sampling skips is shown by its nearest neighbour."""
        taken = self._sampled(total)
        out: list[int] = []
        for e in events:
            k = min(range(len(taken)), key=lambda i: (abs(taken[i] - e), i)) + 1
            if k not in out:
                out.append(k)
        return out

    def _halves(self) -> tuple[range, range]:
        """The frames of a clip's two halves, as its segment files hold them: the first half, and the second led
        by the first half's last frame (`unime.data.synth.clips.clip_files`)."""
        from unime.data.synth.clips import VideoSizes

        n = VideoSizes(**self.world.manifest["video"]).frames
        return range(0, n // 2), range(n // 2 - 1, n)

    def clip_key_frames(self) -> list[int]:
        """A whole clip's key frames: its first, the first of its second half (where the second event starts) and
        its last."""
        first, second = self._halves()
        return self._nearest_key_frames(second.stop, (0, first.stop, second.stop - 1))

    def part_key_frames(self, part: int) -> list[int]:
        """The key frames of one half of a whole clip (a moment query)."""
        halves = self._halves()
        return self._key_frames(halves[1].stop, halves[part])

    def segment_key_frames(self, part: int) -> list[int]:
        """Every sampled frame of a segment file (one half of a clip)."""
        total = len(self._halves()[part])
        return self._key_frames(total, range(total))

    def _video_tcot(self, meta: dict, side: str) -> str:
        from unime.data.synth.clips import part_phrase

        clip = self._clip(meta["clip"])
        if meta["kind"] == "clip":
            phrase = _clip_spec_phrase(clip.spec())
            lead = "In the query video" if side == "query" else "In the video"
            return render_tcot({"key_frames": self.clip_key_frames()}, f"{lead} {phrase}.", phrase)
        phrase = part_phrase(clip, meta["part"])
        return render_tcot({"key_frames": self.segment_key_frames(meta["part"])}, f"In the video clip {phrase}.",
                           phrase)

    # -- T-CoTs -----------------------------------------------------------------------------------------
    def tcot(self, item: Item, side: str) -> str:
        """The teacher T-CoT of an item of the world, as the `side` ("query" / "target") it plays."""
        meta = self.world.meta(item)
        kind = meta["kind"]
        keywords = world_keywords(item.text)
        if kind == "query":
            return self._query_tcot(item, meta, keywords)
        if kind == "answer":
            return render_tcot({"text_keywords": world_keywords(meta["value"]) or [meta["value"]]},
                               f"The candidate is the answer {meta['value']}.", meta["value"])
        if kind == "description":
            phrase = _spec_phrase(meta["spec"])
            return render_tcot({"text_keywords": keywords}, f"The text describes {phrase}.", phrase)
        if kind == "scene":
            ann = self._scene(meta["scene"])
            objs = ann["objects"]
            lead = "The query image shows" if side == "query" else "The image shows"
            return render_tcot({"bbox_2d": self.scene_boxes(meta["scene"], range(len(objs)))},
                               f"{lead} {_objects_phrase(objs, articles=True)}.", _objects_phrase(objs))
        if kind == "crop":
            obj = self._scene(meta["scene"])["objects"][meta["object"]]
            return render_tcot({"bbox_2d": [self.crop_box(meta["scene"], meta["object"])]},
                               f"The crop shows {_with_article(_object_phrase(obj))}.", _object_phrase(obj))
        if kind in ("clip", "segment"):
            return self._video_tcot(meta, side)
        raise DataError(f"the annotation teacher cannot write a T-CoT for an item of kind {kind!r}", field="kind")

    def _query_tcot(self, item: Item, meta: dict, keywords: list[str]) -> str:
        need = meta["need"]
        ntype = need["type"]
        scene_id = meta.get("scene")
        evidence: dict = {}
        if scene_id is not None:
            objs = self._scene(scene_id)["objects"]
            if ntype == "object":  # grounding: the referred object(s)
                idx = [k for k, o in enumerate(objs) if _matches(o, need["mention"])]
            else:  # the objects the text names by an attribute value, else all of them
                named = [k for k, o in enumerate(objs) if any(o[a] in keywords for a in ("shape", "colour", "size"))]
                idx = named or list(range(len(objs)))
            evidence["bbox_2d"] = self.scene_boxes(scene_id, idx or range(len(objs)))
        clip = self._clip(need["clip"]) if ntype == "moment" else self._clip_of_video(item) if item.video else None
        if clip is not None:  # a video query: the frames of the half it asks for, else of the whole clip
            evidence["key_frames"] = self.part_key_frames(need["part"]) if ntype == "moment" else self.clip_key_frames()
        if keywords:
            evidence["text_keywords"] = keywords
        if ntype == "answer" and clip is not None:
            rethink = f"In the video {_clip_spec_phrase(clip.spec())}, and the answer is {need['value']}."
            answer = need["value"]
        elif ntype == "answer":
            shown = _objects_phrase(self._scene(scene_id)["objects"], articles=True) if scene_id else "the objects"
            rethink, answer = f"The image shows {shown} and the answer is {need['value']}.", need["value"]
        elif ntype == "clip":
            phrase = _clip_spec_phrase(need["spec"])
            rethink, answer = f"The query asks for a video where {phrase}.", phrase
        elif ntype == "moment":
            from unime.data.synth.clips import part_phrase

            phrase = part_phrase(clip, need["part"])
            rethink, answer = f"The query asks for the part of the video where {phrase}.", phrase
        elif ntype == "describe":
            objs = self._scene(need["scene"])["objects"]
            rethink = f"The query asks for a caption of {_objects_phrase(objs, articles=True)}."
            answer = _objects_phrase(objs)
        elif ntype == "scene":
            phrase = _spec_phrase(need["spec"])
            rethink, answer = f"The query asks for an image with {phrase}.", phrase
        elif ntype == "object":
            objs = self._scene(need["scene"])["objects"]
            hit = [o for o in objs if _matches(o, need["mention"])]
            phrase = _object_phrase(hit[0]) if hit else _mention_phrase(need["mention"])
            rethink, answer = f"The expression refers to the {phrase}.", phrase
        else:
            raise DataError(f"the annotation teacher does not know the need type {ntype!r}", field="need.type")
        return render_tcot(evidence, rethink, answer)

    def tcot_rows(self, records: Sequence[Record], *, source: str | None = None, policy=None, images=None):
        """T-CoT rows (query and positive side) for training records of the world. A record the world
        does not know raises `DataError` naming `source` (default: the world's records file), the record
        (its line when it was read from a file) and the side; with a skip `policy`
        (`unime.data.skips.ErrorPolicy`) it is counted and left out. `images` (an `ImageChecker`): a known record's
        query and positive images are then opened too, a bad one raising (or skipped) as its reader names it."""
        import dataclasses

        from unime.data.io import origin_of, record_label
        from unime.data.skips import data_error
        from unime.reasoning.reasoner import TCoTRow, numbering_of

        source = source or str(self.root / "train" / "records.jsonl")
        rows = []
        for i, rec in enumerate(records):
            rid = rec.id or str(i)
            try:
                texts = []
                for side, item in (("query", rec.query), ("target", rec.positive)):
                    try:
                        texts.append((side, item, self.tcot(item, side)))
                    except DataError as e:
                        located = e.source is not None or e.record is not None or e.field is not None
                        msg = str(e).split(": ", 1)[-1] if located else str(e)  # the message without its place
                        raise data_error("schema", msg, source=source, record=origin_of(rec) or rid,
                                         field="query" if side == "query" else "positive") from None
                if images is not None:  # after the world's check: a record foreign to it is named so
                    images.check(dataclasses.replace(rec, negatives=[]), source=source, record=record_label(rec, i))
            except DataError as e:
                if policy is None:
                    raise
                policy.handle(e)
                continue
            rows += [TCoTRow(record_id=rid, side=side, item=item, tcot=text, source=SOURCE,
                             video_sampling=numbering_of(item, self.video_sampling)) for side, item, text in texts]
        return rows


@dataclass(kw_only=True)
class TeacherConfig(VideoOptions):
    """Options of `unime reason teacher` (`unime.options`); the `--video-*` options: the sampling the key frames are
    numbered among (give those the reasoner and the embedder are trained and run with)."""

    world: str = option(help="a generated world (unime data synth)")
    records: str | None = option(None, "records to write T-CoTs for (default: WORLD/train/records.jsonl)")
    out: str = option(help="output T-CoT JSONL")
    on_error: str = on_error_option("skip bad records and records the world does not know (counted and reported) "
                                    "instead of stopping at the first")


def write_teacher_tcots(cfg: TeacherConfig):
    """`unime reason teacher`: the annotation teacher's T-CoTs for `cfg.records` (default: the world's training
    records) written to `cfg.out`; bad records and T-CoT rows raise, or under `on_error="skip"` are left out and
    counted. The world is recorded as the T-CoT file's data root beside it (`unime.data.roots.record_data_root`),
    so its readers find its images without `--data-root`. The images (and videos) of the sides it writes T-CoTs for
    (query and positive) are opened, as every command that reads the records checks them (`tcot_rows`' `images`): a
    bad one is named by the records file's line, record id and field, or under skip its record is left out and
    counted (QA: a truncated image was written a T-CoT from the annotations, never opened). Returns (T-CoTs written,
    records read, the `SkipReport`)."""
    from unime.data.images import ImageLoader
    from unime.data.io import ImageChecker, read_records
    from unime.data.roots import record_data_root
    from unime.data.skips import ErrorPolicy, SkipReport
    from unime.reasoning.reasoner import write_tcot_rows

    skips = SkipReport(max_examples=10)
    recs = read_records(cfg.records, on_error=cfg.on_error, skips=skips) if cfg.records else None
    teacher = AnnotationTeacher(cfg.world, video_sampling=VideoSampling.from_fields(cfg))
    recs = teacher.world.records if recs is None else recs
    rows = teacher.tcot_rows(recs, source=cfg.records, policy=ErrorPolicy(cfg.on_error, skips, "teacher"),
                             images=ImageChecker(ImageLoader(teacher.root, video=teacher.video_sampling)))
    n = write_tcot_rows(rows, cfg.out)
    record_data_root(Path(os.path.abspath(cfg.out)).parent, cfg.world, written=[cfg.out])  # the world's images
    return n, len(recs), skips
