"""`generate_world`: build the demo world and write it, atomically, in the layout of docs/CONTRACTS.md.

```
WORLD/world.json                     manifest: format version, seed, sizes, counts, held-out combinations,
                                     every file the world wrote ("files")
WORLD/images/scenes/<scene>.png      scene images;  WORLD/images/crops/<scene>_o<k>.png  object crops
WORLD/scenes.jsonl                   scene annotations (objects: shape, colour, size, position, bbox)
WORLD/items.jsonl                    {"key": Item.key, "item": {...}, "meta": {...}} for every item
WORLD/train/records.jsonl            training records (unime JSONL), dataset = task name, IND scenes
WORLD/train/unime_data.json          {"data_root": ".."}: image paths of the files in train/ are relative to
                                     WORLD (`unime.data.roots`), so they need no --data-root
WORLD/eval_tasks.yaml                the eval task list
WORLD/eval/mmeb/<task>.jsonl         MMEB-eval rows (positive at index 0)
WORLD/eval/retrieval/scene_captions.jsonl   {"image", "captions": [..]}
WORLD/eval/compositional/{replace,swap,add}.jsonl   {"image", "positive", "negative", "category"}
WORLD/eval/qrels/scene_search.jsonl  {"query": {item}, "candidates": [{item}, ..], "relevance": [grade, ..]}
```
With video (`video=VideoSizes(eval_clips=N, train_clips=M)`, `unime data synth --video-clips N`), also:
```
WORLD/videos/clips/<clip>.mp4        the clips;  WORLD/videos/segments/<clip>_p<k>.mp4  their two halves
WORLD/clips.jsonl                    clip annotations (background, shape, colour, first motion, second event)
WORLD/train/video_records.jsonl      training records of the video tasks, train clips only
WORLD/eval/video/<task>.jsonl        MMEB-V2 video rows (VLM2Vec's format), eval clips only
WORLD/eval_tasks_video.yaml          the video task list (format mmeb_v2, modality video)
```
The same seed and sizes give byte-identical files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import yaml

from unime.errors import changed_option_keys, refuse_changed_options
from unime.options import RangeChecked, option

from unime.data.atomic import merged_dir, remove_listed, warn_left
from unime.data.eval_formats import MMEBRow, write_compositional, write_mmeb, write_retrieval
from unime.data.io import write_records
from unime.data.items import Record
from unime.data.roots import write_data_root
from unime.data.synth.build import PRESETS, WorldBuilder, WorldSizes
from unime.data.synth.clips import VideoSizes
from unime.data.synth.render import crop_box, object_bbox, png_bytes, render_scene
from unime.data.synth.tasks import TASKS, build_compositional, build_graded_search, build_queries, build_retrieval

FORMAT_VERSION = 1
FILES_KEY = "files"  # world.json: every file the world wrote (relative paths), so --overwrite removes only those
COMPOSITIONAL_CATEGORIES = ("replace", "swap", "add")
RETRIEVAL_NAME = "scene_captions"
GRADED_NAME = "scene_search"
# what the paths of a world's task configs are relative to (`unime.eval.tasks.load_task_config`: a task's path to the
# config's folder, the image and video paths in its data to data_root, "." there)
TASK_PATHS = "task paths, and the image and video paths in their data (data_root: .), are relative to this folder"
SINGLE_FRACTION = {"train": 0.4, "eval": 0.4, "ood": 0.5}


@dataclass
class WorldSummary:
    root: Path
    counts: dict
    seconds: float
    bytes_on_disk: int
    n_files: int
    reused: bool = False  # the folder already held this world (same seed and sizes): nothing was written

    def describe(self) -> str:
        c = self.counts
        done = "already holds this world (same seed and sizes); nothing to do:" if self.reused else "written to"
        lines = [f"world {done} {self.root} in {self.seconds:.2f} s: {self.n_files} files, "
                 f"{self.bytes_on_disk / 1e6:.2f} MB",
                 f"scenes: {c['scenes']}; images: {c['images']}",
                 f"train records: {c['train_records']} ({', '.join(f'{k} {v}' for k, v in c['train'].items())})"]
        for name, t in c["eval"].items():
            lines.append(f"eval {name:20s} {t['format']:13s} {t.get('split', ''):3s} {t['queries']:4d} queries"
                         + (f", {t['candidates_per_query']} candidates/query" if "candidates_per_query" in t else ""))
        if "video" in c:
            v = c["video"]
            lines.append(f"video: {v['clips']['train']} train + {v['clips']['eval']} eval clips "
                         f"({v['files']} .mp4 files); train records {v['train_records']}; eval "
                         + ", ".join(f"{k} {n}" for k, n in v["eval"].items()) + " queries (eval_tasks_video.yaml)")
        return "\n".join(lines)


def resolve_sizes(size: str | WorldSizes = "default", **overrides) -> WorldSizes:
    base = size if isinstance(size, WorldSizes) else PRESETS.get(size)
    if base is None:
        raise ValueError(f"unknown world size {size!r}; choose one of {', '.join(PRESETS)}")
    fields = {k: v for k, v in overrides.items() if v is not None}
    return WorldSizes(**{**asdict(base), **fields})


def _single_counts(b: WorldBuilder, sizes: WorldSizes) -> dict[str, int]:
    """One-object scenes per split: SINGLE_FRACTION of each pool, scaled down when train and eval
    (which share the IND combinations) would need more distinct one-object scenes than exist."""
    want = {split: round(getattr(sizes, f"{split}_scenes") * SINGLE_FRACTION[split]) for split in SINGLE_FRACTION}
    cap_ind = b.single_capacity("train")
    if want["train"] + want["eval"] > cap_ind:
        scale = cap_ind / (want["train"] + want["eval"])
        want["train"], want["eval"] = int(want["train"] * scale), int(want["eval"] * scale)
    want["ood"] = min(want["ood"], b.single_capacity("ood"))
    return want


def build_world(seed: int, sizes: WorldSizes, video: VideoSizes | None = None) -> tuple[WorldBuilder, dict]:
    """Generate everything in memory. Returns the builder and the files' contents (not images, not clips)."""
    b = WorldBuilder(seed, sizes)
    for split, n_single in _single_counts(b, sizes).items():
        b.make_pool(split, getattr(sizes, f"{split}_scenes"), n_single)

    records: list[Record] = []
    train_counts: dict[str, int] = {}
    for task in TASKS:
        if not task.trained:
            continue
        pool = b.pool("train", min_objects=task.min_objects, max_objects=task.max_objects)
        made = build_queries(b, task, pool, sizes.train_per_task, b.rng(f"train:{task.name}"), train=True)
        for i, (ex, _) in enumerate(made):
            records.append(Record(ex.query, ex.positive, dataset=task.name, id=f"{task.name}-{i:04d}"))
        train_counts[task.name] = len(made)
    train_keys = {r.query.key for r in records}

    mmeb: dict[str, list[MMEBRow]] = {}
    for task in TASKS:
        pool = b.pool(task.eval_pool, min_objects=task.min_objects, max_objects=task.max_objects)
        made = build_queries(b, task, pool, sizes.eval_queries, b.rng(f"eval:{task.name}"), train=False,
                             candidates=sizes.candidates, distractor_pool=b.pool(task.eval_pool), exclude=train_keys)
        mmeb[task.name] = [MMEBRow(ex.query, cands, id=f"{task.name}-{i:04d}") for i, (ex, cands) in enumerate(made)]

    eval_scenes = b.pool("eval")
    retrieval = build_retrieval(b, b.rng("retrieval"), eval_scenes, sizes.retrieval_images)
    compositional = {cat: build_compositional(b, b.rng(f"compositional:{cat}"), eval_scenes, cat,
                                              sizes.compositional_pairs) for cat in COMPOSITIONAL_CATEGORIES}
    graded = build_graded_search(b, b.rng("graded"), eval_scenes, sizes.eval_queries, 2 * sizes.candidates,
                                 exclude=train_keys)
    content = {"records": records, "train_counts": train_counts, "mmeb": mmeb, "retrieval": retrieval,
               "compositional": compositional, "graded": graded}
    if video is not None and video.enabled:  # after everything else: the image world is the same with or without
        from unime.data.synth.video_tasks import build_video

        content["video"] = build_video(b, video, sizes.candidates)
        content["video_sizes"] = video
    return b, content


def eval_task_list(content: dict) -> list[dict]:
    tasks = []
    for task in TASKS:
        tasks.append({"name": task.name, "format": "mmeb", "path": f"eval/mmeb/{task.name}.jsonl",
                      "meta_task": task.meta_task, "split": task.split})
    tasks.append({"name": RETRIEVAL_NAME, "format": "retrieval", "path": f"eval/retrieval/{RETRIEVAL_NAME}.jsonl",
                  "meta_task": "retrieval", "split": "IND"})
    for cat in COMPOSITIONAL_CATEGORIES:
        tasks.append({"name": cat, "format": "compositional", "path": f"eval/compositional/{cat}.jsonl",
                      "split": "IND"})
    tasks.append({"name": GRADED_NAME, "format": "qrels", "path": f"eval/qrels/{GRADED_NAME}.jsonl",
                  "meta_task": "retrieval", "split": "IND"})
    return tasks


def _counts(b: WorldBuilder, content: dict) -> dict:
    scenes = {split: sum(1 for s in b.scenes.values() if s.split == split and s.variant_of is None)
              for split in ("train", "eval", "ood")}
    scenes["variants"] = sum(1 for s in b.scenes.values() if s.variant_of is not None)
    eval_counts: dict[str, dict] = {}
    for task in TASKS:
        rows = content["mmeb"][task.name]
        n_c = sorted({len(r.candidates) for r in rows})
        eval_counts[task.name] = {"format": "mmeb", "meta_task": task.meta_task, "split": task.split,
                                  "trained": task.trained, "queries": len(rows),
                                  "candidates_per_query": n_c[0] if len(n_c) == 1 else f"{n_c[0]}-{n_c[-1]}" if n_c
                                  else 0}
    eval_counts[RETRIEVAL_NAME] = {"format": "retrieval", "split": "IND", "queries": len(content["retrieval"]),
                                   "captions": sum(len(e.captions) for e in content["retrieval"])}
    for cat in COMPOSITIONAL_CATEGORIES:
        eval_counts[cat] = {"format": "compositional", "split": "IND", "queries": len(content["compositional"][cat])}
    graded = content["graded"]
    eval_counts[GRADED_NAME] = {"format": "qrels", "split": "IND", "queries": len(graded),
                                "candidates_per_query": max((len(r["candidates"]) for r in graded), default=0),
                                "fully_relevant_per_query": round(sum(r["relevance"].count(1.0) for r in graded)
                                                                  / max(1, len(graded)), 2)}
    out = {"scenes": scenes, "images": {"scenes": len(b.scenes), "crops": len(b.crops)}, "items": len(b.items),
           "train_records": len(content["records"]), "train": content["train_counts"], "eval": eval_counts}
    if "video" in content:
        v = content["video"]
        train = {}
        for r in v["records"]:
            train[r.dataset] = train.get(r.dataset, 0) + 1
        out["video"] = {"clips": {s: sum(c.split == s for c in v["clips"]) for s in ("train", "eval")},
                        "files": 3 * len(v["clips"]), "train_records": len(v["records"]), "train": train,
                        "eval": {name: len(rows) for name, rows in v["rows"].items()}}
    return out


def _write(b: WorldBuilder, content: dict, root: Path, manifest: dict) -> None:
    size = b.sizes.image_size
    (root / "images" / "scenes").mkdir(parents=True)
    (root / "images" / "crops").mkdir(parents=True)
    crops_by_scene: dict[str, list[int]] = {}
    for sid, k in sorted(b.crops):
        crops_by_scene.setdefault(sid, []).append(k)
    with open(root / "scenes.jsonl", "w", encoding="utf-8") as fh:
        for scene in b.scenes.values():
            img = render_scene(scene, size)
            (root / scene.image).write_bytes(png_bytes(img))
            for k in crops_by_scene.get(scene.id, ()):
                (root / scene.crop_image(k)).write_bytes(png_bytes(img.crop(crop_box(scene.objects[k], size))))
            row = scene.to_dict()
            for o, d in zip(scene.objects, row["objects"]):
                d["bbox"] = object_bbox(o, size)
            row["image_size"] = [size, size]
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(root / "items.jsonl", "w", encoding="utf-8") as fh:
        for key, (item, meta) in b.items.items():
            fh.write(json.dumps({"key": key, "item": item.to_dict(), "meta": meta}, ensure_ascii=False) + "\n")
    write_records(content["records"], root / "train" / "records.jsonl")
    write_data_root(root / "train", root)  # the train files' images are the world's: no --data-root needed
    for name, rows in content["mmeb"].items():
        write_mmeb(rows, root / "eval" / "mmeb" / f"{name}.jsonl")
    write_retrieval(content["retrieval"], root / "eval" / "retrieval" / f"{RETRIEVAL_NAME}.jsonl")
    for cat, pairs in content["compositional"].items():
        write_compositional(pairs, root / "eval" / "compositional" / f"{cat}.jsonl")
    (root / "eval" / "qrels").mkdir(parents=True)
    with open(root / "eval" / "qrels" / f"{GRADED_NAME}.jsonl", "w", encoding="utf-8") as fh:
        for row in content["graded"]:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(root / "eval_tasks.yaml", "w", encoding="utf-8") as fh:
        fh.write(f"# eval tasks of the generated demo world; {TASK_PATHS}\n")
        yaml.safe_dump({"data_root": ".", "tasks": eval_task_list(content)}, fh, sort_keys=False,
                       default_flow_style=None, width=120)
    if "video" in content:
        _write_video(content["video"], content["video_sizes"], root)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    with open(root / "world.json", "w", encoding="utf-8") as fh:  # last: it lists the files written before it
        json.dump({**manifest, FILES_KEY: files}, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def _write_video(video: dict, sizes: VideoSizes, root: Path) -> None:
    from unime.data.synth.clips import clip_files
    from unime.data.synth.video_tasks import video_task_list

    (root / "videos" / "clips").mkdir(parents=True)
    (root / "videos" / "segments").mkdir(parents=True)
    with open(root / "clips.jsonl", "w", encoding="utf-8") as fh:
        for clip in video["clips"]:
            for rel, data in clip_files(clip, sizes).items():
                (root / rel).write_bytes(data)
            fh.write(json.dumps(clip.to_dict(), ensure_ascii=False) + "\n")
    write_records(video["records"], root / "train" / "video_records.jsonl")
    (root / "eval" / "video").mkdir(parents=True)
    for name, rows in video["rows"].items():
        with open(root / "eval" / "video" / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(root / "eval_tasks_video.yaml", "w", encoding="utf-8") as fh:
        fh.write(f"# video tasks of the generated demo world (MMEB-V2 layout); {TASK_PATHS}\n")
        yaml.safe_dump({"data_root": ".", "tasks": video_task_list()}, fh, sort_keys=False,
                       default_flow_style=None, width=120)


def _disk_usage(root: Path) -> tuple[int, int]:
    total, n = 0, 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
            n += 1
    return total, n


@dataclass(kw_only=True)
class SynthConfig(RangeChecked):
    """Options of `unime data synth` (`unime.options`); the single sizes are `WorldSizes`' options, given here
    as `sizes` (None: the preset's)."""

    option_groups = {"video": "generated clips and MMEB-V2 video tasks (off unless --video-clips > 0)"}
    out: str = option(help="output folder (written atomically)")
    seed: int = option(0, "the world's seed (the same seed and sizes give byte-identical files)")
    size: str = option("default", "size preset; the options below override single sizes", choices=list(PRESETS))
    sizes: dict = option(factory=dict, cli=False)
    video_clips: int = option(VideoSizes.eval_clips, "eval clips (one query per clip and video task); 0 = a world "
                              "without video", metavar="N", group="video")
    video_train_clips: int | None = option(None, "train clips for train/video_records.jsonl (default: 4 x "
                                           "--video-clips)", metavar="N", group="video")
    video_frames: int = option(VideoSizes.frames, "frames per clip (even, >= 4)", metavar="N", group="video")
    video_size: int = option(VideoSizes.size, "clip frame side in pixels", metavar="PX", group="video")
    overwrite: bool = option(False, "write the world into a folder that holds other files or another world (the "
                             "world's files are replaced, other files stay)")

    def video(self) -> VideoSizes | None:
        train = 4 * self.video_clips if self.video_train_clips is None else self.video_train_clips
        video = VideoSizes(eval_clips=self.video_clips, train_clips=train, frames=self.video_frames,
                           size=self.video_size)
        return video if video.enabled else None


def synth_world(cfg: SynthConfig, *, ignore: Iterable[str] = ()) -> WorldSummary:
    """`unime data synth`: `generate_world` with the config's sizes (ValueError: a size out of range)."""
    return generate_world(cfg.out, seed=cfg.seed, sizes=resolve_sizes(cfg.size, **cfg.sizes),
                          overwrite=cfg.overwrite, video=cfg.video(), ignore=ignore)


def generate_world(out: str | os.PathLike, *, seed: int = 0, sizes: WorldSizes | str = "default",
                   overwrite: bool = False, ignore: Iterable[str] = (), video: VideoSizes | None = None
                   ) -> WorldSummary:
    """Generate the demo world into `out` (built in a temporary folder, then moved in entry by entry); with
    `video` (clip counts > 0) also the video clips and tasks (`unime.data.synth.video_tasks`).

    `out` missing or empty (apart from the `ignore` names: the output folder's ownership marker and
    lock, `unime.outdir`): the world is written. `out` already holds a world with the same seed, sizes and
    video: it is left as it is (a finished run; the summary says `reused`). With other options, or
    files that are not a world: `ChangedOptions` / `FileExistsError`, unless `overwrite` (the world's
    files are replaced, and the earlier world's files it does not write — world.json lists them — are removed;
    any other file, also inside the world's folders, stays and is named in a warning)."""
    start = time.perf_counter()
    root = Path(out)
    if isinstance(sizes, str):
        sizes = resolve_sizes(sizes)
    ignore = set(ignore)
    present = sorted(p.name for p in root.iterdir() if p.name not in ignore) if root.is_dir() else []
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder")
    if present and not overwrite:  # fail before the work, not after it
        before = _read_world_options(root)
        if before is None:
            raise FileExistsError(f"{root} exists and is not empty (pass overwrite=True / --overwrite to write the "
                                  "world into it; other files stay)")
        now = {"seed": seed, "sizes": asdict(sizes), "format_version": FORMAT_VERSION,
               "video": asdict(video) if video is not None else None}
        keys = changed_option_keys(before, now)
        if keys:
            raise refuse_changed_options(root, before, now, keys)
        manifest = json.loads((root / "world.json").read_text(encoding="utf-8"))
        nbytes, nfiles = _disk_usage(root)
        return WorldSummary(root, manifest["counts"], time.perf_counter() - start, nbytes, nfiles, reused=True)
    b, content = build_world(seed, sizes, video)
    counts = _counts(b, content)
    manifest = {"format_version": FORMAT_VERSION, "generator": "unime.data.synth", "seed": seed,
                "sizes": asdict(sizes), "held_out_combos": [list(c) for c in b.held_out],
                "splits": {"IND": "scenes without held-out colour x shape combinations; train and eval scenes "
                                  "are disjoint",
                           "OOD": "scenes holding a held-out combination, or a task without training records"},
                "counts": counts}
    if "video" in content:
        manifest["video"] = asdict(video)
    earlier = _earlier_world_files(root) if present else []
    kept: list[str] = []  # the user's files, at any depth, stay
    with merged_dir(root, kept=kept) as tmp:
        _write(b, content, tmp, manifest)
        # before the merge: a kill here leaves the earlier world.json, listing what is still to remove
        now = json.loads((tmp / "world.json").read_text(encoding="utf-8"))[FILES_KEY]
        removed = remove_listed(root, earlier or (), keep=ignore | set(now))
    if removed:
        logging.getLogger(__name__).info("%s: removed %d file(s) of the earlier world the new one does not write",
                                         root, len(removed))
    unlisted = earlier is None and bool(kept)
    warn_left(root, kept, "beside the world just written",
              " (an earlier world in this folder did not list its files — written by an older unime —, so any of "
              "its files the new world does not write are among them: remove those by hand)" if unlisted else "")
    nbytes, nfiles = _disk_usage(root)
    return WorldSummary(root, counts, time.perf_counter() - start, nbytes, nfiles)


def _earlier_world_files(root: Path) -> list[str] | None:
    """The files the world in `root` wrote, as its world.json lists them ([]: no world there; None: a world whose
    world.json has no list — an older unime's)."""
    try:
        manifest = json.loads((root / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    listed = manifest.get(FILES_KEY) if isinstance(manifest, dict) else None
    return [f for f in listed if isinstance(f, str)] if isinstance(listed, list) else None


def _read_world_options(root: Path) -> dict | None:
    """The seed, sizes, format version and video sizes of the world in `root` (None: no world there)."""
    try:
        m = json.loads((root / "world.json").read_text(encoding="utf-8"))
        return {"seed": m["seed"], "sizes": m["sizes"], "format_version": m["format_version"],
                "video": m.get("video")}
    except (OSError, ValueError, KeyError, TypeError):
        return None
