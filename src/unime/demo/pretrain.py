"""The embedded default's pretrained base (`unime models pretrain`).

The paper's regime is a *pretrained* embedder and a *pretrained* judge; no pretrained vision-language
weights can be had offline, so the embedded default pretrains its own: a tiny model of the real
architecture (`unime.models.tiny.build_tiny`), optionally with its vision tower trained first on the
corpus scenes' tags (`tag_steps`, `unime.demo.vision_tagging`) and fine-tuned as a captioner of the corpus's
scenes (`caption_steps`, `unime.demo.captioning`; with `caption_questions`, also answering questions about them),
then trained contrastively (in-batch InfoNCE, the
baseline recipe of `unime train embedder`) on a large generated corpus: the *training* split of a
world generated with its own seed, never the demo world's; `freeze_vision` keeps the tower frozen in the
captioning and contrastive stages. Records that show a scene of an excluded
world's eval or OOD split (same background and objects, jitter aside) are dropped, so the demo's
evaluation stays disjoint from everything the base has seen.

The result is an ordinary HF folder cached per machine under ``$UNIME_CACHE_DIR/pretrained`` (else
``~/.cache/unime/pretrained``), in a folder named by the recipe's key: a changed recipe (or a changed
excluded world, a new `RECIPE_VERSION`, or a revised tiny build of the family: `unime.models.tiny.BUILD_REVISION`)
trains anew, an unchanged one is reused. The work happens in
a hidden sibling folder (resumable: a finished stage is not redone, the tagging, captioning and contrastive stages
resume from their last checkpoint; the folder holds the key of its recipe, and another recipe will not take it over
unless --overwrite discards it); at the end the finished model, then its manifest, are moved into the folder
(`_publish`: the other entries of a --out folder stay), so that a run killed at any point is finished by its rerun.
Two runs of the same recipe at once (a demo started twice, two jobs sharing a home's cache) do not share the work
folder: a lock beside the folder (`.NAME.unime-lock`, `_recipe_lock`), held from the look-up to the publication,
makes the second wait for the first (saying for whose run, once), then reuse its model; a killed run's lock goes
with it. (A claimed --out is already locked by the command line: a second run on it is refused at once.)

The manifest (`pretrain.json`) records the key, the recipe and what the stages measured; its `seconds` is the time
spent building the model over every attempt: a resumed run adds its own to the seconds the work folder recorded for
the earlier ones (`SECONDS_FILE`, `_AttemptClock`: updated every `SECONDS_EVERY` seconds and when a run stops, so a
run killed outright loses at most that much of its count).

Why these shapes (measured, see the project notes): at a vision width of 32 or an initialisation std
of 0.02 the tiny models never route image content to the pooled token (colour classification stays at
chance, the gradient norm collapses to ~0.03); a vision tower as wide as the text model (128) with
std 0.1 learns it in 100 steps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

from unime.data.atomic import atomic_open
from unime.models.loading import attn_implementation_option
from unime.models.tiny import BUILD_REVISION, check_tiny_shape
from unime.options import RangeChecked, as_given, option

log = logging.getLogger(__name__)

RECIPE_VERSION = 1  # bump when this module changes what a recipe produces
MODEL_DIR = "model"
MANIFEST = "pretrain.json"
WORK_KEY = "recipe.key"  # in the work folder: the key of the recipe being built there
SECONDS_FILE = "seconds"  # in the work folder: the seconds the attempts so far spent building there
SECONDS_EVERY = 10.0  # how often an attempt records its seconds there (and when it stops)


def recipe_field(default, **cli):
    """A recipe field. Its command-line option (`unime models pretrain`; `pretrain-judge`'s with `--judge-`)
    overrides the preset's value: it defaults to None, the preset's."""
    return option(default, f"(preset default: {default})", cli_default=None, **cli)


class _Recipe(RangeChecked):
    """`replace` for the frozen recipe dataclasses below: unknown field names are refused; values outside their
    option's range too (`unime.options.check_ranges`), as a recipe is made."""

    what = "recipe"

    def replace(self, **changes):
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown {self.what} field(s): {', '.join(unknown)}")
        return type(self)(**{**asdict(self), **changes})


@dataclass(frozen=True)
class PretrainRecipe(_Recipe):
    """Everything the pretrained weights depend on; its `key` names the cache folder."""

    family: str = recipe_field("qwen2_vl", type=str)
    # backbone shape (models build-tiny)
    hidden: int = recipe_field(128, at_least=1)
    layers: int = recipe_field(4, at_least=1)
    vision_depth: int = recipe_field(2, at_least=1)
    vision_hidden: int = recipe_field(128, at_least=1)
    vision_heads: int = recipe_field(4, at_least=1)
    init_std: float = recipe_field(0.1, above=0)
    seed: int = recipe_field(0)
    # corpus: the train split of a generated world with its own seed
    corpus_seed: int = recipe_field(1)
    corpus_scenes: int = recipe_field(1200, at_least=1)
    corpus_per_task: int = recipe_field(300, at_least=1)
    # tagging of the vision tower before captioning (`unime.demo.vision_tagging`); 0 = none. Measured on the demo
    # world (issue #13, docs/DEMO.md): without it the base's visual tokens do not encode an object's shape
    tag_steps: int = recipe_field(0, at_least=0)
    tag_batch_size: int = recipe_field(64, at_least=1)
    tag_lr: float = recipe_field(1e-3, at_least=0)
    # the stages after tagging with the tower frozen (measured with tagging, issue #13: no gain, docs/DEMO.md)
    freeze_vision: bool = option(False, "the captioning and contrastive stages keep the vision tower and its merger "
                                 "frozen, e.g. to keep what --tag-steps taught it (preset default: False)",
                                 cli_default=None)
    # captioning before the contrastive stage (`unime.demo.captioning`); 0 = none. Measured on the demo world
    # (issue #13): the baseline embedder's overall P@1 went from 38.5 to ~46 with 1,500 steps
    caption_steps: int = recipe_field(1500, at_least=0)
    caption_batch_size: int = recipe_field(8, at_least=1)
    caption_lr: float = recipe_field(1e-3, at_least=0)
    # questions per corpus scene answered in the captioning stage (an object's colour, shape, size or position, or
    # a shape's count, one word each: `unime.data.synth.tasks.attribute_question`), as a real VLM is instruction-
    # tuned on VQA before it is used; 0 = captions only
    caption_questions: int = option(0, "questions per corpus scene the captioning stage also answers (an object's "
                                    "colour, shape, size or position, or a shape's count; preset default: 0)",
                                    cli_default=None, at_least=0)
    # contrastive pretraining: on the corpus records of these datasets (comma-separated; "" = all). Measured on the
    # demo world (docs/DEMO.md): with all, the base already knows the demo's task types and no row trained on the
    # demo world reaches it; the default preset keeps to the caption datasets, as a generic pretrained model would
    contrastive_datasets: str = option("", "the corpus datasets the contrastive stage trains on, comma-separated "
                                       "(preset default: i2t,t2i; \"\" = all)", cli_default=None, type=str)
    steps: int = recipe_field(600, at_least=1)
    batch_size: int = recipe_field(64, at_least=1)
    lr: float = recipe_field(1e-3, at_least=0)
    tau: float = recipe_field(0.05, above=0)
    warmup: float = recipe_field(0.1, at_least=0)

    def check_together(self) -> None:
        super().check_together()
        check_tiny_shape(self)  # the shape `models build-tiny` builds

    @classmethod
    def preset(cls, name: str) -> "PretrainRecipe":
        if name == "default":
            return cls(contrastive_datasets="i2t,t2i")
        if name == "quick":  # the CI smoke: a few steps on a small corpus, same code
            return cls(hidden=64, layers=2, vision_depth=1, vision_hidden=64, vision_heads=2, corpus_scenes=60,
                       corpus_per_task=8, caption_steps=0, steps=4, batch_size=8)
        raise ValueError(f"unknown pretraining preset {name!r} (default, quick)")

    def key(self, exclude_digest: str = "") -> str:
        parts = {"recipe": self.key_fields(), "version": RECIPE_VERSION, "exclude": exclude_digest}
        if BUILD_REVISION.get(self.family):  # a family whose tiny build was revised (none: the keys from before)
            parts["build"] = BUILD_REVISION[self.family]
        blob = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def key_fields(self) -> dict:
        """The fields the weights depend on. Without a captioning stage its fields are left out, so that the
        recipes from before the stage existed keep their keys (and their cached weights)."""
        fields_ = asdict(self)
        if not self.caption_steps:
            for name in CAPTION_FIELDS:
                fields_.pop(name)
        if not (self.caption_steps and self.caption_questions):  # captions only, as the recipes before the field
            fields_.pop("caption_questions")
        if not self.tag_steps:  # likewise for the tagging stage
            for name in TAG_FIELDS:
                fields_.pop(name)
        if not self.freeze_vision:  # likewise
            fields_.pop("freeze_vision")
        if not self.contrastive_datasets:  # all datasets, as the recipes before the field
            fields_.pop("contrastive_datasets")
        return fields_

    def contrastive_subset(self) -> set[str] | None:
        """The datasets of the contrastive stage's records; None = all."""
        names = {x.strip() for x in self.contrastive_datasets.split(",") if x.strip()}
        return names or None


CAPTION_FIELDS = ("caption_steps", "caption_batch_size", "caption_lr")
TAG_FIELDS = ("tag_steps", "tag_batch_size", "tag_lr")


@dataclass(frozen=True)
class JudgePretrainRecipe(_Recipe):
    """The pretrained judge: the pretrained base (`PretrainRecipe`) trained as a Yes/No judge on the same
    corpus (its labelled pairs drawn from the corpus's global pool, `unime.demo.judge_data`), the
    embedded default's stand-in for the paper's pretrained zero-shot judge. Its key includes the base's."""

    negatives: int = recipe_field(3, at_least=1)
    extra_positives: int = recipe_field(1, at_least=0)
    # 3000 on images only; 4000 kept ~3.7 passes over the image records with the clips' records (1 positive +
    # `negatives` each). 8000 (issue #13, measured on the default demo world with the demo's own retrieving
    # embedder): held-out AUC 0.926 -> 0.938, the mining audit's within-query AUC 0.886 -> 0.914 (t2i 0.691 ->
    # 0.722), fallback 1.2 -> 3.8 % of queries; it doubles the judge's one-time pretraining
    steps: int = recipe_field(8000, at_least=1)
    batch_size: int = recipe_field(4, at_least=1)
    # 1e-3 (the recipe before) trains a judge that ignores the picture: its within-query AUC is the same with
    # another query's image (the audit's media-swap control: 0.777 own, 0.789 swapped) and it ranks an eval
    # row's candidates at chance (P@1 13.1, chance 12.4); at 3e-4 the same 4,000 steps: 0.879 → 0.800 and 29.7
    lr: float = recipe_field(3e-4, at_least=0)
    group_weight: float = recipe_field(1.0, at_least=0)
    warmup: int = recipe_field(100, at_least=0)
    holdout: float = recipe_field(0.05, at_least=0)
    seed: int = recipe_field(0)
    # the judge's corpus also holds generated clips (train clips of the world's video tasks, 4 records each), so
    # it has seen motion and change before it judges the demo world's video records; 0 = images only
    video_clips: int = recipe_field(300, at_least=0)
    video_frames: int = recipe_field(8, at_least=1)
    # the judge's own corpus size (scenes, records per task); 0 = the base recipe's corpus
    corpus_scenes: int = recipe_field(0, at_least=1)
    corpus_per_task: int = recipe_field(0, at_least=1)
    what = "judge recipe"

    @classmethod
    def preset(cls, name: str) -> "JudgePretrainRecipe":
        if name == "default":
            return cls()
        if name == "quick":
            return cls(steps=4, warmup=0, holdout=0.0, video_clips=4)
        raise ValueError(f"unknown judge pretraining preset {name!r} (default, quick)")

    def key(self, base_key: str, exclude_clips_digest: str = "") -> str:
        fields_ = asdict(self)
        for name in ("corpus_scenes", "corpus_per_task"):  # the base's corpus: the keys of the recipes before
            if not fields_[name]:
                fields_.pop(name)
        blob = json.dumps({"judge": fields_, "version": RECIPE_VERSION, "base": base_key,
                           "exclude_clips": exclude_clips_digest}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def corpus_recipe(self, recipe: PretrainRecipe) -> PretrainRecipe:
        """The recipe whose corpus the judge is trained on: the base's, resized when this recipe says so."""
        return recipe.replace(**{name: getattr(self, name) for name in ("corpus_scenes", "corpus_per_task")
                                 if getattr(self, name)})


@dataclass
class PretrainResult:
    path: Path          # the folder holding MODEL_DIR and MANIFEST
    reused: bool
    manifest: dict

    @property
    def model(self) -> Path:
        return self.path / MODEL_DIR


def default_pretrained_root() -> Path:
    from unime.models.embedding_cache import unime_cache_root

    return unime_cache_root() / "pretrained"


def uncached(recipe: PretrainRecipe, judge: JudgePretrainRecipe | None,
             exclude_world: str | os.PathLike | None = None) -> list[str]:
    """Which of "base" and "judge" (None: no judge) the per-machine cache does not hold for these recipes: exact
    by key when `exclude_world` exists; before it does (a demo's first stage), a cached model of the same recipe
    for any excluded world counts (the demo generates its world deterministically). For time estimates only."""
    root = default_pretrained_root()
    if exclude_world is not None and (Path(exclude_world) / "world.json").is_file():
        base_key = recipe.key(excluded_signatures(exclude_world)[1])
        keys = {"base": {base_key}}
        if judge is not None:
            clips = excluded_clip_signatures(exclude_world)[1] if judge.video_clips else ""
            keys["judge"] = {judge.key(base_key, clips)}
    else:
        manifests = []
        for path in root.glob(f"*/{MANIFEST}"):
            try:
                manifests.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        keys = {"base": {m.get("key") for m in manifests if m.get("recipe_version") == RECIPE_VERSION
                         and _recorded(PretrainRecipe, m.get("recipe")) == recipe}}
        if judge is not None:
            keys["judge"] = {m.get("key") for m in manifests if _recorded(JudgePretrainRecipe, m.get("judge_recipe"))
                             == judge and (m.get("base") or {}).get("key") in keys["base"]}
    folder = {"base": recipe.family, "judge": f"{recipe.family}-judge"}
    return [what for what, wanted in keys.items()
            if not any((root / f"{folder[what]}-{k}" / MANIFEST).is_file() for k in wanted if k)]


def _recorded(cls, fields_: dict | None):
    """The recipe a manifest recorded (a field it lacks, added later, at its default); None if unreadable."""
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in (fields_ or {}).items() if k in names}) if fields_ else None
    except TypeError:
        return None


# -- corpus ---------------------------------------------------------------------------------------------

def scene_signature(scene) -> tuple:
    """What a scene shows, render jitter aside: equal signatures draw the same picture up to a few pixels."""
    return (scene.background, tuple(sorted((o.shape, o.colour, o.size, o.position) for o in scene.objects)))


def excluded_signatures(world_root: str | os.PathLike) -> tuple[set, str]:
    """Signatures of the eval and OOD scenes of a world, and a digest of them (part of the cache key)."""
    from unime.data.synth import World

    world = World.load(world_root)
    sigs = {scene_signature(s) for s in world.scenes.values() if s.split != "train"}
    digest = hashlib.sha256(json.dumps(sorted(map(repr, sigs))).encode()).hexdigest()[:16]
    return sigs, digest


def excluded_clip_signatures(world_root: str | os.PathLike) -> tuple[set, str]:
    """Signatures of the eval clips of a world (none without video), and a digest of them (part of the judge's key)."""
    from unime.data.synth import World

    world = World.load(world_root)
    sigs = {c.signature for c in world.clips.values() if c.split != "train"}
    digest = hashlib.sha256(json.dumps(sorted(map(repr, sigs))).encode()).hexdigest()[:16] if sigs else ""
    return sigs, digest


def corpus_video_records(corpus_root: Path, exclude: set) -> tuple[list, int]:
    """The corpus world's video training records minus those whose query or positive shows a clip with an
    excluded signature (none when the corpus has no video)."""
    from unime.data.io import read_records
    from unime.data.synth import World

    path = corpus_root / "train" / "video_records.jsonl"
    if not path.is_file():
        return [], 0
    world = World.load(corpus_root)
    clip_of = {p: c for c in world.clips.values() for p in (c.path, c.segment_path(0), c.segment_path(1))}
    kept, dropped = [], 0
    for rec in read_records(path):
        shown = {clip_of.get(str(ref)) for item in (rec.query, rec.positive) for ref in item.video} - {None}
        if any(c.signature in exclude for c in shown):
            dropped += 1
        else:
            kept.append(rec)
    return kept, dropped


def corpus_records(corpus_root: Path, exclude: set) -> tuple[list, int]:
    """The corpus world's training records minus those whose query or positive shows an excluded scene."""
    from unime.data.synth import World

    world = World.load(corpus_root)
    kept, dropped = [], 0
    for rec in world.records:
        scenes = {world.meta(item).get("scene") for item in (rec.query, rec.positive)} - {None}
        if any(scene_signature(world.scenes[s]) in exclude for s in scenes):
            dropped += 1
        else:
            kept.append(rec)
    return kept, dropped


def corpus_scenes(corpus_root: str | os.PathLike, exclude: set) -> list:
    """Every training scene of the corpus world whose signature is not in `exclude`, in the world's order."""
    from unime.data.synth import World

    world = World.load(corpus_root)
    return [scene for scene in world.scenes.values()
            if scene.split == "train" and scene_signature(scene) not in exclude]


def corpus_captions(corpus_root: str | os.PathLike, exclude: set) -> list[tuple[str, str]]:
    """(image path relative to the corpus, full caption) of the corpus scenes (`corpus_scenes`): the
    captioning stage's data, `unime.demo.captioning`."""
    from unime.data.synth.language import full_caption

    return [(scene.image, full_caption(scene)[0]) for scene in corpus_scenes(corpus_root, exclude)]


def corpus_questions(corpus_root: str | os.PathLike, exclude: set, per_scene: int,
                     seed: int) -> list[tuple[str, str, str]]:
    """(image path relative to the corpus, question, answer): `per_scene` attribute or count questions drawn for
    each corpus scene (`corpus_scenes`; a draw without a unique reference is skipped), seeded by `seed`. The
    captioning stage's questions, `unime.demo.captioning`."""
    import random

    from unime.data.synth.tasks import attribute_question

    rng = random.Random(f"corpus-questions-{seed}")
    out = []
    for scene in corpus_scenes(corpus_root, exclude):
        for _ in range(per_scene):
            asked = attribute_question(rng, scene)
            if asked is not None:
                out.append((scene.image, asked[0], asked[1]))
    return out


def _generate_corpus(recipe: PretrainRecipe, corpus: Path, progress: Callable[[str], None], *,
                     video_clips: int = 0, video_frames: int = 8) -> None:
    """The corpus world (its image part depends on `recipe` only; `video_clips` train clips added)."""
    from unime.data.synth import WorldSizes, generate_world
    from unime.data.synth.clips import VideoSizes

    if (corpus / "world.json").is_file():
        return
    progress(f"[pretrain] generating the corpus (seed {recipe.corpus_seed}, {recipe.corpus_per_task} "
             f"records per task" + (f", {video_clips} clips)" if video_clips else ")"))
    sizes = WorldSizes(train_scenes=recipe.corpus_scenes, train_per_task=recipe.corpus_per_task,
                       eval_scenes=40, ood_scenes=30, eval_queries=6, candidates=6, retrieval_images=8,
                       compositional_pairs=6)
    video = VideoSizes(train_clips=video_clips, frames=video_frames) if video_clips else None
    generate_world(corpus, seed=recipe.corpus_seed, sizes=sizes, overwrite=False, video=video)


# the command that claims a --out folder of each model (`unime.outdir`): its marker there makes the folder ours
_COMMANDS = {"base": "models pretrain", "judge": "models pretrain-judge"}


def _work_path(dest: Path) -> Path:
    """The hidden sibling folder where `dest` is built."""
    return dest.parent / f".{dest.name}.work"


def _work_key(dest: Path) -> str | None:
    """The recipe key `dest`'s work folder is stamped with; None when there is no stamped work folder."""
    stamp = _work_path(dest) / WORK_KEY
    return stamp.read_text(encoding="utf-8").strip() if stamp.is_file() else None


def _published(dest: Path, key: str) -> bool:
    """`dest` holds the finished model of `key` (its manifest, published last) and neither a work folder nor a lock
    file beside it: reusing it writes nothing, so it takes no lock (`_recipe_lock`) and a cache the user can only
    read serves. A lock file a killed run left goes the locked way where it can be written (which removes it); where
    it cannot (a read-only cache), it is left as it is and does not stop the reuse (`unime.outdir.left_unwritable`:
    no run holds it)."""
    from unime.outdir import file_lock_path, left_unwritable

    try:
        manifest = json.loads((dest / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    lock = file_lock_path(dest)
    return (isinstance(manifest, dict) and manifest.get("key") == key and not os.path.lexists(_work_path(dest))
            and (not os.path.lexists(lock) or left_unwritable(lock)))


def _recipe_lock(dest: Path, what: str, progress: Callable[[str], None]):
    """The lock of `dest` (`.NAME.unime-lock` beside it, `unime.outdir.waiting_lock`), held from the look-up of a
    finished model to its publication: a second run of the same recipe (a demo started twice, two jobs sharing a
    home's cache) waits for the first, saying so once, then reuses its model instead of training in the same work
    folder. A killed holder's lock is released by the OS (its lock file, left behind, is taken over)."""
    from unime.outdir import file_lock_path, waiting_lock

    def wait(pid: str, host: str) -> None:
        progress(f"[pretrain] waiting for pid {pid} on {host}: it is pretraining the {what} of the same recipe in "
                 f"{_work_path(dest)}; its model will be reused")

    dest.parent.mkdir(parents=True, exist_ok=True)
    return waiting_lock(file_lock_path(dest), f"pretrained {what} {dest}", wait)


class _AttemptClock:
    """The seconds spent building in the work folder `work` over every attempt: those the earlier attempts recorded in
    its `SECONDS_FILE` plus this one's, recorded there every `SECONDS_EVERY` seconds (by a daemon thread) and when
    the attempt stops, whatever stops it. A context: `total()` inside it, the manifest's `seconds`."""

    @staticmethod
    def now() -> float:
        return time.perf_counter()

    def __init__(self, work: Path):
        self.file = work / SECONDS_FILE
        try:
            earlier = float(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            earlier = 0.0
        self.earlier = earlier if math.isfinite(earlier) and earlier > 0 else 0.0
        self.t0 = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pretrain-seconds", daemon=True)

    def total(self) -> float:
        return self.earlier + self.now() - self.t0

    def _record(self) -> None:
        try:
            with atomic_open(self.file) as fh:
                fh.write(f"{self.total():.1f}")
        except OSError as e:  # only a time estimate: the build goes on without it
            log.debug("could not record the pretraining's seconds in %s: %s", self.file, e)

    def _run(self) -> None:
        while not self._stop.wait(SECONDS_EVERY):
            self._record()

    def __enter__(self) -> "_AttemptClock":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._record()


def _remove_work(work: Path) -> None:
    """Remove a work folder of unime's, its recipe-key stamp last: a run killed while it removes the folder leaves
    it stamped (or empty), so the rerun recognises it and finishes the removal (`_cached`). (Removed by one rmtree,
    in the file system's order, it could lose its stamp first and then stay for good, its checkpoints with it.)"""
    for p in work.iterdir():
        if p.name != WORK_KEY:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    (work / WORK_KEY).unlink(missing_ok=True)
    work.rmdir()


def is_pretrained_folder(folder: str | os.PathLike) -> bool:
    """An unmarked folder holding a finished pretrained model and nothing else (its `MODEL_DIR` and `MANIFEST`, with
    a recipe key): what a run killed while an earlier version published it left (its whole --out folder was replaced
    then, the command's marker with it). `unime models pretrain` / `pretrain-judge` take it as their own
    (`unime.outdir.claim`'s `adopts`)."""
    from unime.outdir import LOCK_NAME

    folder = Path(folder)
    try:
        names = {p.name for p in folder.iterdir()} - {LOCK_NAME}
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return names == {MODEL_DIR, MANIFEST} and isinstance(manifest, dict) and bool(manifest.get("key"))


def _warn_others(dest: Path, what: str) -> None:
    """Name the entries of a claimed --out folder besides the model and its manifest (the user's): they stay."""
    from unime.data.atomic import warn_left

    if dest.is_dir():
        others = sorted(p.name for p in dest.iterdir() if p.name not in (MODEL_DIR, MANIFEST)
                        and not p.name.startswith("."))
        warn_left(dest, others, f"beside the pretrained {what}")


def _cached(dest: Path, key: str, what: str, progress: Callable[[str], None], *,
            overwrite: bool = False) -> dict | None:
    """The manifest of a finished folder for `key` (a work folder of the same recipe left beside it by a run killed
    as it finished is removed); None when there is none. Refuses a folder of another recipe (unless `overwrite`: it
    is replaced when this recipe is published) and a folder that is not unime's: one neither claimed by the command
    (its marker) nor holding this recipe's unfinished publication (its work folder stamped with `key`)."""
    from unime.outdir import LOCK_NAME, MARKER_NAME, read_marker

    claimed = (read_marker(dest) or {}).get("command") == _COMMANDS[what] if dest.is_dir() else False
    if (dest / MANIFEST).is_file():
        manifest = json.loads((dest / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("key") == key:
            work = _work_path(dest)
            # killed after the manifest was published, before its work folder was gone (or while it went: the
            # stamp goes last, the folder is left empty after it)
            if _work_key(dest) == key or (work.is_dir() and not work.is_symlink() and not any(work.iterdir())):
                _remove_work(work)
            progress(f"[pretrain] reusing {dest} ({what}, recipe key {key})")
            if claimed:
                _warn_others(dest, what)
            return manifest
        if not (overwrite and claimed):
            raise FileExistsError(f"{dest} holds a pretrained {what} of another recipe (key {manifest.get('key')}, "
                                  f"wanted {key}); choose another {as_given('--out', 'out')}"
                                  + (f", or pass {as_given('--overwrite', 'overwrite=True')} to replace it"
                                     if claimed else ""))
    # the command line claims and locks its --out folder first (`unime.outdir`): those two files are not content,
    # and the other entries of a folder it claimed are the user's (they stay); a folder of this recipe's unfinished
    # publication (killed between moving the model in and writing the manifest) holds the model
    ours = claimed or _work_key(dest) == key
    if not ours and dest.exists() and any(p.name not in (LOCK_NAME, MARKER_NAME) for p in dest.iterdir()):
        raise FileExistsError(f"{dest} exists and is not a pretrained {what} written by unime; choose another "
                              f"{as_given('--out', 'out')}")
    return None


def _work_folder(dest: Path, key: str, what: str, overwrite: bool,
                 progress: Callable[[str], None]) -> Path:
    """The hidden sibling folder where `dest` is built, claimed for `key`: an interrupted run of another recipe
    into the same `dest` (its finished stages would be reused under the wrong recipe) is refused, or with
    `overwrite` removed (only a work folder stamped with a recipe's key: unime's own). An interrupted run of this
    recipe is continued there, and said so (what it holds)."""
    work = _work_path(dest)
    stamp = work / WORK_KEY
    if work.is_dir() and any(work.iterdir()):
        held = _work_key(dest)
        if held == key:
            kept = sorted(p.name for p in work.iterdir()
                          if p.name not in (WORK_KEY, SECONDS_FILE, "publish") and not p.name.startswith("."))
            progress(f"[pretrain] continuing the interrupted {what} pretraining in {work} (kept there: "
                     f"{', '.join(kept) or 'nothing yet'}; a finished stage is reused, a trainer resumes from its "
                     "last complete checkpoint)")
            return work
        if held and overwrite:
            _remove_work(work)  # unime's own work folder (its stamp), of the recipe this run replaces
        else:
            whose = f"of another recipe (key {held}, wanted {key})" if held else f"without a {WORK_KEY} stamp"
            raise FileExistsError(f"{work} holds an interrupted {what} pretraining {whose}: rerun that recipe to "
                                  "finish it, or remove the folder to start this one"
                                  + (" (--overwrite discards it)" if held else ""))
    work.mkdir(parents=True, exist_ok=True)
    with atomic_open(stamp) as fh:
        fh.write(key)
    return work


def _publish(dest: Path, model: Path, manifest: dict, work: Path, progress: Callable[[str], None],
             what: str) -> PretrainResult:
    """Move the finished `model` and its manifest into `dest`, then drop the work folder. Entry by entry, so that
    the other entries of a claimed --out folder stay (the command's marker and lock, the user's files), in an order
    that leaves a state the rerun finishes wherever a kill stops it: the manifest (the mark of a finished folder)
    goes first and comes back last; until it is back, the work folder (stamped with the recipe's key) still holds
    every finished stage and says whose the folder is (`_cached`); once it is back, the rerun reuses the folder and
    removes the work folder."""
    staged = work / "publish"
    if staged.exists():  # a copy a killed publication left
        shutil.rmtree(staged)
    staged.mkdir()
    shutil.copytree(model, staged / MODEL_DIR)
    with atomic_open(staged / MANIFEST) as fh:
        json.dump(manifest, fh, indent=1)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MANIFEST).unlink(missing_ok=True)  # a manifest of the recipe replaced (--overwrite)
    if (dest / MODEL_DIR).exists():  # the model of a killed publication, or of the recipe replaced
        os.replace(dest / MODEL_DIR, staged / "replaced")
    os.replace(staged / MODEL_DIR, dest / MODEL_DIR)
    os.replace(staged / MANIFEST, dest / MANIFEST)
    _remove_work(work)  # created by the caller, for this recipe only
    _warn_others(dest, what)
    progress(f"[pretrain] {what} done: {dest}")
    return PretrainResult(dest, False, manifest)


# -- the stage ------------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class PretrainOptions(RangeChecked):
    """Options of `unime models pretrain` and `pretrain-judge` besides the recipe (`unime.options`)."""

    preset: str = option("default", "recipe preset (pretrain-judge: of both recipes)", choices=["default", "quick"])
    out: str | None = option(None, "output folder (default: the per-machine cache)")
    exclude_world: str | None = option(None, "a generated world whose eval/OOD scenes the corpus must not show "
                                       "(part of the cache key)")
    device: str | None = option("cpu", "cpu or cuda")
    attn_implementation: str | None = attn_implementation_option()  # not in the cache key: it is the machine's

    def where(self) -> dict:
        """The keywords of `pretrain` / `pretrain_judge`."""
        return {"out": self.out, "exclude_world": self.exclude_world, "device": self.device,
                "attn_implementation": self.attn_implementation}


def check_recipe(recipe: PretrainRecipe) -> None:
    """Refuse (`OptionError`, naming the option) a model family `build_tiny` does not build, and a contrastive
    dataset the world generator does not make or makes no training records of (a held-out OOD task), before anything
    is built or generated: `unime models pretrain` / `pretrain-judge` ask before they claim --out, so that a refused
    recipe leaves no work folder stamped with its key. (A dataset whose training records the excluded world's scenes
    all remove is refused once the corpus exists.)"""
    from unime.data.synth import TASKS
    from unime.errors import OptionError
    from unime.models.tiny import FAMILIES

    if recipe.family not in FAMILIES:
        raise OptionError(recipe, "{family} {got!r} is not a model family (choose one of {families})",
                          got=recipe.family, families=", ".join(FAMILIES))
    subset = recipe.contrastive_subset() or set()
    unknown = sorted(subset - {t.name for t in TASKS})
    if unknown:
        raise OptionError(recipe, "{contrastive_datasets}: {unknown} is not a dataset of the generated corpus (its "
                          "datasets: {names})", unknown=", ".join(unknown), names=", ".join(t.name for t in TASKS))
    untrained = sorted(subset - {t.name for t in TASKS if t.trained})
    if untrained:
        raise OptionError(recipe, "{contrastive_datasets}: no corpus records of {untrained} (a held-out task without "
                          "training records; the datasets with records: {names})", untrained=", ".join(untrained),
                          names=", ".join(t.name for t in TASKS if t.trained))


def pretrain(recipe: PretrainRecipe, *, out: str | os.PathLike | None = None,
             exclude_world: str | os.PathLike | None = None, device: str | None = "cpu",
             attn_implementation: str | None = None, progress: Callable[[str], None] = print,
             overwrite: bool = False) -> PretrainResult:
    """Pretrain (or reuse) the base for `recipe`. With `out=None` the result lives in the per-machine cache.
    `attn_implementation`: the attention kernel of every stage's model (`unime.models.loading.load_model`).
    `overwrite` (the command's --overwrite): an interrupted run of another recipe into `out` (its work folder) and
    a finished one in the --out folder the command claimed are replaced instead of refused."""
    from unime.data.io import write_records
    from unime.models.tiny import TinySize, build_tiny
    from unime.train.embedder_trainer import EmbedderTrainingConfig, train_embedder

    check_recipe(recipe)
    exclude, digest = excluded_signatures(exclude_world) if exclude_world else (set(), "")
    key = recipe.key(digest)
    dest = Path(out) if out is not None else default_pretrained_root() / f"{recipe.family}-{key}"
    if _published(dest, key):  # reused as it is, no lock taken: a read-only shared cache serves
        return PretrainResult(dest, True, _cached(dest, key, "base", progress, overwrite=overwrite))
    with _recipe_lock(dest, "base", progress):  # a run of the same recipe into `dest`: waited for, then reused
        manifest = _cached(dest, key, "base", progress, overwrite=overwrite)
        if manifest is not None:
            return PretrainResult(dest, True, manifest)

        work = _work_folder(dest, key, "base", overwrite, progress)
        with _AttemptClock(work) as clock:  # the seconds of every attempt, this one's added
            base = work / "base"
            if not (base / "config.json").is_file():
                progress(f"[pretrain] building the {recipe.family} backbone")
                size = TinySize(hidden=recipe.hidden, layers=recipe.layers, vision_depth=recipe.vision_depth,
                                vision_hidden=recipe.vision_hidden, vision_heads=recipe.vision_heads,
                                intermediate=2 * recipe.hidden, init_std=recipe.init_std)
                build_tiny(recipe.family, base, seed=recipe.seed, size=size)
            corpus = work / "corpus"
            _generate_corpus(recipe, corpus, progress)
            records_path = work / "records.jsonl"
            records, dropped = corpus_records(corpus, exclude)
            subset = recipe.contrastive_subset()
            if subset is not None:
                unknown = sorted(subset - {r.dataset for r in records})
                if unknown:
                    raise ValueError(f"contrastive_datasets: no corpus records of {', '.join(unknown)} (the corpus has "
                                     f"{', '.join(sorted({r.dataset for r in records}))})")
                records = [r for r in records if r.dataset in subset]
            if not records_path.is_file():
                write_records(records, records_path)
            start, captioning, tagging = base, None, None
            if recipe.tag_steps:
                from unime.demo import vision_tagging

                start = work / "tagged"
                if not (start / vision_tagging.METRICS_FILE).is_file():  # written last, in the same rename as the model
                    rows = [(scene.image, vision_tagging.scene_tags(scene)) for scene in corpus_scenes(corpus, exclude)]
                    vision_tagging.train_tagger(base, corpus, rows, start, steps=recipe.tag_steps,
                                                batch_size=recipe.tag_batch_size, lr=recipe.tag_lr, seed=recipe.seed,
                                                device=device, attn_implementation=attn_implementation,
                                                progress=progress)
                tagging = vision_tagging.read_metrics(start)
            if recipe.caption_steps:
                from unime.demo.captioning import METRICS_FILE, read_metrics, train_captioner

                captioned = work / "captioned"
                if not (captioned / METRICS_FILE).is_file():  # written last, in the same rename as the model
                    questions = corpus_questions(corpus, exclude, recipe.caption_questions, recipe.seed)
                    train_captioner(start, corpus, corpus_captions(corpus, exclude), captioned,
                                    steps=recipe.caption_steps,
                                    batch_size=recipe.caption_batch_size, lr=recipe.caption_lr, seed=recipe.seed,
                                    device=device, freeze_vision=recipe.freeze_vision, progress=progress,
                                    attn_implementation=attn_implementation, questions=questions)
                start, captioning = captioned, read_metrics(captioned)
            trained = work / "embedder"
            if not (trained / "merged" / "config.json").is_file():
                progress(f"[pretrain] contrastive pretraining: {recipe.steps} steps of {recipe.batch_size} on "
                         f"{len(records)} records ({dropped} dropped: they show an excluded scene)")
                has_checkpoint = (trained / "checkpoints").is_dir() and any((trained / "checkpoints").iterdir())
                from unime.demo.captioning import checkpoint_steps

                config = EmbedderTrainingConfig(
                    model=str(start), out=str(trained), records=str(records_path), data_root=str(corpus),
                    loss="infonce",
                    hard_negatives=0, in_batch=True, tau=recipe.tau, full=True, freeze_vision=recipe.freeze_vision,
                    batch_size=recipe.batch_size,
                    steps=recipe.steps, lr=recipe.lr, warmup=recipe.warmup, seed=recipe.seed, device=device,
                    attn_implementation=attn_implementation,
                    save_steps=checkpoint_steps(recipe.steps), save_total_limit=1,
                    logging_steps=max(recipe.steps // 20, 1),
                    resume=bool(has_checkpoint))
                train_embedder(config)
            metrics = json.loads((trained / "metrics.json").read_text(encoding="utf-8")) \
                if (trained / "metrics.json").is_file() else {}
            manifest = {"key": key, "recipe_version": RECIPE_VERSION, "recipe": asdict(recipe),
                        "exclude_world": str(exclude_world) if exclude_world else None, "exclude_digest": digest,
                        "corpus": {"records": len(records), "dropped_excluded_scenes": dropped},
                        "training": {k: metrics.get(k) for k in ("initial_loss", "final_loss", "steps",
                                                                 "final_in_batch_accuracy", "train_runtime")
                                     if k in metrics},
                        "tagging": tagging, "captioning": captioning, "seconds": round(clock.total(), 1)}
        return _publish(dest, trained / "merged", manifest, work, progress, "base")


def pretrain_judge(judge: JudgePretrainRecipe, recipe: PretrainRecipe, *, out: str | os.PathLike | None = None,
                   exclude_world: str | os.PathLike | None = None, device: str | None = "cpu",
                   attn_implementation: str | None = None, progress: Callable[[str], None] = print,
                   base: PretrainResult | None = None, overwrite: bool = False) -> PretrainResult:
    """Pretrain (or reuse) the judge for (`judge`, `recipe`): the base of `recipe` (pretrained or reused first),
    fully fine-tuned as a Yes/No judge (`unime train judge`, answer-token loss + `group_weight` × the
    within-record softmax) on labelled pairs of the same corpus, minus the excluded world's scenes. `base`: that
    base as the caller's `pretrain(recipe, exclude_world=...)` returned it (the demo's models stage), not looked up
    (and said to be reused) again; a base of another recipe or excluded world is refused. `overwrite`: as
    `pretrain`'s, for the judge's `out` (the base is the cache's)."""
    from unime.data.io import write_records
    from unime.data.synth import World
    from unime.demo.judge_data import judge_training_records
    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    if base is None:
        base = pretrain(recipe, exclude_world=exclude_world, device=device, attn_implementation=attn_implementation,
                        progress=progress)
    else:
        wanted = recipe.key(excluded_signatures(exclude_world)[1] if exclude_world else "")
        if base.manifest.get("key") != wanted:
            raise ValueError(f"{base.path} is not the base of this recipe and excluded world (key "
                             f"{base.manifest.get('key')}, wanted {wanted})")
    exclude_clips, clips_digest = excluded_clip_signatures(exclude_world) if exclude_world else (set(), "")
    key = judge.key(base.manifest["key"], clips_digest if judge.video_clips else "")
    dest = Path(out) if out is not None else default_pretrained_root() / f"{recipe.family}-judge-{key}"
    if _published(dest, key):  # reused as it is, no lock taken (as the base's)
        return PretrainResult(dest, True, _cached(dest, key, "judge", progress, overwrite=overwrite))
    with _recipe_lock(dest, "judge", progress):
        manifest = _cached(dest, key, "judge", progress, overwrite=overwrite)
        if manifest is not None:
            return PretrainResult(dest, True, manifest)
        exclude, _ = excluded_signatures(exclude_world) if exclude_world else (set(), "")
        work = _work_folder(dest, key, "judge", overwrite, progress)
        with _AttemptClock(work) as clock:  # the seconds of every attempt, this one's added
            corpus = work / "corpus"
            _generate_corpus(judge.corpus_recipe(recipe), corpus, progress, video_clips=judge.video_clips,
                             video_frames=judge.video_frames)
            records_path, stats_path = work / "judge_records.jsonl", work / "judge_records_stats.json"
            stats: dict = {}
            # both files, written one after the other: a run killed between the two left the records without their stats
            # (the rerun failed reading them); the labelled records are drawn again, the same ones (seeded)
            if not (records_path.is_file() and stats_path.is_file()):
                kept, _dropped = corpus_records(corpus, exclude)
                clips, clips_dropped = corpus_video_records(corpus, exclude_clips)
                # one pool of images and clips, as mining retrieves from when the demo trains on video too
                labelled = judge_training_records(World.load(corpus).with_records(kept + clips),
                                                  negatives_per_query=judge.negatives,
                                                  extra_positives=judge.extra_positives, seed=judge.seed, stats=stats)
                stats.update(video_records=len(clips), video_records_dropped_excluded_clips=clips_dropped)
                write_records(labelled, records_path)
                with atomic_open(stats_path) as fh:
                    json.dump(stats, fh, indent=1)
            stats = json.loads(stats_path.read_text(encoding="utf-8"))
            trained = work / "judge"
            from unime.demo.captioning import checkpoint_steps

            progress(f"[pretrain] judge pretraining: {judge.steps} steps of {judge.batch_size} records on "
                     f"{stats.get('records')} labelled records")
            result = train_reranker(RerankerTrainConfig(
                model=str(base.model), records=[str(records_path)], out=str(trained), role="judge", losses=("pair",),
                data_root=str(corpus), judge_negatives=judge.negatives, full=True, learning_rate=judge.lr,
                max_steps=judge.steps, batch_size=judge.batch_size, warmup_steps=judge.warmup, seed=judge.seed,
                device=device, attn_implementation=attn_implementation,
                logging_steps=max(judge.steps // 20, 1), save_steps=checkpoint_steps(judge.steps),
                holdout=judge.holdout, group_weight=judge.group_weight, video_frames=judge.video_frames),
                # a finished judge in the work folder is published as it is, --overwrite or not (the same recipe)
                finished_hint=f"it is published as it is; to train it again, remove {work}")
            manifest = {"key": key, "recipe_version": RECIPE_VERSION, "judge_recipe": asdict(judge),
                        "base": {"key": base.manifest["key"], "path": str(base.path)},
                        "exclude_world": str(exclude_world) if exclude_world else None, "records": stats,
                        "training": {"steps": result.steps, "first_loss": result.first_loss,
                                     "last_loss": result.last_loss,
                                     "loss_levels": result.loss_levels},
                        "heldout": result.heldout, "seconds": round(clock.total(), 1)}
        return _publish(dest, trained / "merged", manifest, work, progress, "judge")
