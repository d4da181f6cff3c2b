"""`unime data import`: a captioned-image collection → everything the pipeline reads.

    summary = import_collection(images, ImportOptions(out="mydata", name="flowers"))

`images` are `CaptionedImage`s from `unime.data.collections`. The output folder (image paths in every
file are relative to it; each data folder carries a `unime_data.json` saying so, so no later command
needs `--data-root`)::

    OUT/images/...                      the images (hard links to the source files when possible, else
                                        copies; images given as bytes are written in their own format); images
                                        that already sit there (`--images OUT/images`) are used as they are
    OUT/train/records.jsonl             training records, two per (image, caption): dataset NAME_i2t
                                        (image query → caption) and NAME_t2i (caption query → image)
    OUT/train/judge.jsonl               judge training records: query, positive, `judge_negatives`
                                        negatives drawn from the global pool mining retrieves from
                                        (the union of the training positives), of the positive's kind
                                        (caption or image), never one of the query's own
    OUT/train/qrels.jsonl               ground truth for `unime mine --backend oracle --judge FILE`:
                                        per training query its relevant items (grade 1)
    OUT/train/corpus.txt                every caption and label, one a line (`unime models build-tiny
                                        --tokenizer-corpus`: a tiny model's tokenizer that knows your words)
    OUT/eval/mmeb/NAME_i2t.jsonl, NAME_t2i.jsonl, NAME_cls.jsonl (with labels)   MMEB-eval rows of the
                                        held-out images, positive first, each row `eval_candidates` long
    OUT/eval_tasks.yaml                 the eval config of those files (`unime eval --tasks OUT`)
    OUT/eval/judge_pairs.jsonl          labelled pairs of the held-out images, {"query", "candidate",
                                        "label"}: 1 for its own caption / image, 0 for `judge_negatives`
                                        others (`unime judge --pairs ... --label-column label`)
    OUT/import.json                     source, options, counts, the files written (`written`): an import
                                        done again (--overwrite) removes them first, then writes its own

The held-out split is drawn over images, with a seeded shuffle; images that share a caption stay on one side
(`caption_groups`), so no caption of an evaluation image is trained on. A caption shared by several images is
about all of them: each is relevant to it (qrels) and none is its negative (judge records, eval rows, pairs).
Rows that name one image file (a dataset's rows of an image, one per caption) are one image with their captions.
Record ids start with the image's path under images/ without its suffix, `/` as `_` (`a/x.png` → `a_x-1-i2t`:
caption 1, direction i2t); a later image whose path reads the same (`a_x.png`) is `a_x~2` (`_image_ids`).
An image is opened once (`ImageLoader`): a broken one raises `DataError` naming the
source file, record and field, or with on_error="skip" is left out and counted; so does a video file (import takes
images; video items are records with a "video" field).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from collections import abc
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from unime.data.atomic import atomic_open
from unime.data.collections import IMAGES_ONLY, CaptionedImage, CollectionSource
from unime.data.eval_formats import MMEBRow, write_mmeb
from unime.data.images import ImageLoader, iso_image_suffix
from unime.data.io import write_records
from unime.data.items import Item, Record
from unime.data.roots import write_data_root
from unime.data.skips import ErrorPolicy, SkipReport, data_error
from unime.data.video import PROCESSOR_MAX_ASPECT_RATIO, SIGNATURE_BYTES, is_video_file_ref
from unime.data.vocab import IMAGE_PLACEHOLDER, INSTRUCTIONS, TARGET_IMAGE_PROMPT
from unime.errors import WORKING_DIR, DataError, OptionError, with_working_dir
from unime.options import RangeChecked, on_error_option, option

log = logging.getLogger(__name__)

DIRECTIONS = ("i2t", "t2i")
CLASSIFY_INSTRUCTION = "Represent the given image for classification: what is shown?"


@dataclass
class ImportOptions(RangeChecked):
    """Options of `unime data import` (`unime.options`; where the collection is read: `CollectionSource`)."""

    out: str = option(help="output folder (new or empty)")
    name: str = option("mydata", "dataset name (default: the source's folder name)", cli_default=None)
    directions: tuple[str, ...] = option(DIRECTIONS, "i2t, t2i or both (default)", cli_default=",".join(DIRECTIONS),
                                         type=lambda text: tuple(d.strip() for d in text.split(",") if d.strip()))
    eval_fraction: float = option(0.2, "share of the images held out (default 0.2)", above=0, below=1)
    eval_candidates: int = option(100, "candidates per MMEB eval row, positive included (default 100; capped by "
                                  "the held-out set)", at_least=2)  # the positive and at least one negative
    judge_negatives: int = option(3, "negatives per judge training record (default 3)", at_least=1)  # a judge
    # trained without negatives answers Yes to all
    seed: int = option(0, "seed of the held-out split and of the negatives")
    on_error: str = on_error_option("skip bad rows and images (counted and reported) instead of stopping at the "
                                    "first")
    overwrite: bool = option(False, "write into a non-empty OUT: an earlier import's files there are removed "
                                    "first, other files stay (same-named ones replaced)")
    source: dict = option(factory=dict, cli=False)  # what was read (for import.json)
    ignore: tuple = option((), cli=False)  # names in OUT that are not content (the output folder's marker, lock)
    own_folder: bool = option(False, cli=False)  # OUT is this command's own (claimed by `data import` before): a
    # non-empty OUT without a finished import is an interrupted one, redone

    def validate(self, *, named: bool = True) -> None:
        """`OptionError` naming the first option at fault (the command line shows its flag). `named=False`: the
        name may still be unset (None: the source's folder name, given once the source is read)."""
        bad = [d for d in self.directions if d not in DIRECTIONS]
        if bad or not self.directions:
            raise OptionError(self, "{directions} must be a non-empty subset of {all}, got {got}", all=DIRECTIONS,
                              got=list(self.directions))
        if (named or self.name is not None) and (not self.name or any(c in self.name for c in "/\\ ")):
            raise OptionError(self, "{name} must be a non-empty word (no spaces or slashes), got {got!r}",
                              got=self.name)


# -- items of the pipeline -------------------------------------------------------------------------------

def image_query(path: str) -> Item:
    return Item(f"{IMAGE_PLACEHOLDER}\n{INSTRUCTIONS['i2t']}", (path,))


def caption_query(caption: str) -> Item:
    return Item(INSTRUCTIONS["t2i"].format(caption=caption))


def image_target(path: str) -> Item:
    return Item(f"{IMAGE_PLACEHOLDER}\n{TARGET_IMAGE_PROMPT}", (path,))


def classify_query(path: str) -> Item:
    return Item(f"{IMAGE_PLACEHOLDER}\n{CLASSIFY_INSTRUCTION}", (path,))


# -- placing and checking images -------------------------------------------------------------------------

def _image_suffix(data: bytes) -> str:
    """The file extension of an image's bytes: a HEIF / HEIC or AVIF image's by its brands (`iso_image_suffix`; PIL
    may not read it, and the name must not depend on a plugin), any other's by the format PIL reads (".jpg" for a
    JPEG), ".png" when PIL reads none (the loader then says what is wrong with it)."""
    import io

    from PIL import Image

    suffix = iso_image_suffix(data[:SIGNATURE_BYTES])
    if suffix is not None:
        return suffix
    try:
        fmt = (Image.open(io.BytesIO(data)).format or "png").lower()
    except Exception:  # decoded (and reported) by the loader below
        fmt = "png"
    return {"jpeg": ".jpg"}.get(fmt, "." + fmt)


def _safe_relative(hint: str) -> str:
    parts = [p for p in Path(hint.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    return "/".join(parts)


def _same_file(a: Path, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # `a` not there (yet)
        return False


def place_images(images: Sequence[CaptionedImage], out: Path, policy: ErrorPolicy
                 ) -> tuple[list[tuple[CaptionedImage, str]], list[str]]:
    """Put every image under OUT/images (hard link, else copy; bytes written) and open it once. Returns
    (image, path relative to OUT) for the good ones, and the paths it wrote. An image that already is the
    file it would be placed as (the collection's images in OUT/images) is used as it is: never replaced,
    removed or listed as written, and no other source image is replaced by one placed under its name. A file
    given again (a dataset's rows of one image, one per caption) is that image: its captions are added to it,
    as the --captions reader merges the rows of one image (a label it disagrees on is a bad row)."""
    # the processors' aspect-ratio limit too: an image beyond it would be refused by every model command
    loader = ImageLoader(out, max_aspect_ratio=PROCESSOR_MAX_ASPECT_RATIO)
    sources = {os.path.realpath(img.image) for img in images if not isinstance(img.image, bytes)}
    used: set[str] = set()
    placed, wrote = [], []
    at: dict[str, int] = {}  # a placed source file (realpath) -> its position in `placed`
    for n, img in enumerate(images, 1):
        if not isinstance(img.image, bytes) and os.path.realpath(img.image) in at:
            k = at[os.path.realpath(img.image)]
            first = placed[k][0]
            if img.label and first.label and img.label != first.label:
                policy.handle(data_error("schema", f"label {img.label!r} disagrees with {first.label!r} given for "
                                         f"the same image at {first.record}", source=img.source, record=img.record,
                                         field="label"))
                continue
            placed[k] = (replace(first, captions=first.captions + [c for c in img.captions
                                                                   if c not in first.captions],
                                 label=first.label or img.label), placed[k][1])
            continue
        if is_video_file_ref(img.image):  # by its ending (a path) or its container's signature (bytes)
            what = "its bytes are a video" if isinstance(img.image, bytes) else f"{img.image} is a video file"
            policy.handle(data_error("image", f"{what}: {IMAGES_ONLY}", source=img.source, record=img.record,
                                     field=img.field))
            continue
        if isinstance(img.image, bytes):
            base = _safe_relative(img.name_hint) if img.name_hint else ""
            stem = Path(base).stem if base else f"{n:06d}"
            rel = f"images/{stem}{_image_suffix(img.image)}"
        else:
            rel = "images/" + (_safe_relative(img.name_hint) or Path(img.image).name)
        in_place = not isinstance(img.image, bytes) and _same_file(out / rel, img.image)
        if rel in used or (not in_place and os.path.realpath(out / rel) in sources):
            # two sources with one file name, or the name of another source image (never replaced): number them
            p = Path(rel)
            rel = str(p.with_name(f"{p.stem}-{n:06d}{p.suffix}"))
        used.add(rel)
        dst = out / rel
        if not in_place:
            wrote.append(rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists() or dst.is_symlink():
                dst.unlink()
            if isinstance(img.image, bytes):
                dst.write_bytes(img.image)
            else:
                try:
                    os.link(img.image, dst)
                except OSError:
                    shutil.copyfile(img.image, dst)
        try:
            loader.load(rel, source=img.source, record=img.record, field=img.field,
                        shown_as=None if isinstance(img.image, bytes) else str(img.image))  # the user's file
        except DataError as e:
            if not in_place:
                wrote.remove(rel)
                dst.unlink(missing_ok=True)
            e.reason = getattr(e, "reason", None) or "image"  # counted as a bad image (`unime.data.skips`)
            policy.handle(e)
            continue
        if not isinstance(img.image, bytes):
            at[os.path.realpath(img.image)] = len(placed)
        placed.append((img, rel))
    return placed, wrote


# -- building the outputs --------------------------------------------------------------------------------

@dataclass
class ImportSummary:
    out: Path
    images: int
    train_images: int
    eval_images: int
    records: dict[str, int]
    judge_records: int
    eval_tasks: list[str]
    labels: int
    skipped: int
    finished_before: bool = False  # OUT already held this import (same options and inputs): nothing was written

    def describe(self) -> str:
        if self.finished_before:
            return (f"{self.out}: finished earlier with the same options and inputs; nothing to do (pass --overwrite "
                    f"to redo it)\n  {self.images} images ({self.train_images} train, {self.eval_images} held out); "
                    f"eval: {self.out / 'eval_tasks.yaml'}")
        recs = ", ".join(f"{k} {v}" for k, v in self.records.items())
        return (f"{self.out}: {self.images} images ({self.train_images} train, {self.eval_images} held out), "
                f"records: {recs}; judge records {self.judge_records}; eval tasks {', '.join(self.eval_tasks)}"
                + (f"; {self.labels} labels" if self.labels else "") + (f"; skipped {self.skipped}" if self.skipped
                                                                         else "")
                + f"\n  train:  {self.out / 'train' / 'records.jsonl'}\n  judge:  {self.out / 'train' / 'judge.jsonl'}"
                f"\n  oracle: {self.out / 'train' / 'qrels.jsonl'}\n  eval:   {self.out / 'eval_tasks.yaml'}")


def caption_groups(captions: Sequence[Sequence[str]]) -> list[list[int]]:
    """Image positions grouped so that images sharing a caption (directly or through others) are in one group;
    groups in the order of their first image, positions ascending."""
    parent = list(range(len(captions)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, caps in enumerate(captions):
        for c in caps:
            j = first.setdefault(c, i)
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(captions)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def split_images(n: int, eval_fraction: float, seed: int, groups: Sequence[Sequence[int]] | None = None
                 ) -> tuple[list[int], list[int]]:
    """Seeded split of image positions into (train, held out); at least 2 on each side. `groups`
    (`caption_groups`): images sharing a caption stay on one side, so no held-out caption is trained on;
    without (or with every image its own group) the split is a seeded shuffle of the images."""
    if n < 4:
        raise DataError(f"{n} usable image(s): an import needs at least 4 (2 to train on, 2 to hold out)")
    groups = [list(g) for g in groups] if groups is not None else [[i] for i in range(n)]
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(2, round(n * eval_fraction)), n - 2)
    held: list[int] = []
    for g in order:
        if len(held) >= n_eval:
            break
        if n - len(held) - len(groups[g]) >= 2:  # a group too large to hold out stays in training
            held += groups[g]
    if len(held) < 2:
        raise DataError(f"{n} usable images in {len(groups)} group(s) of images that share a caption: no split "
                        "keeps 2 images on each side without a held-out caption in training")
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], sorted(held)


def _image_id(rel: str) -> str:
    """A record id stem from an image path under images/ (sub-folders kept as `_`; `_image_ids` makes them unique)."""
    return str(Path(rel).with_suffix("")).removeprefix("images/").replace("/", "_")


def _image_ids(rels: Sequence[str]) -> dict[str, str]:
    """Image path → its record id stem (`_image_id`), unique: paths that flatten to one stem (`a/x.png`,
    `a_x.png`; `a.png`, `a.jpg`) keep it for the first of them, the later ones get `STEM~2`, `STEM~3`, ... (the
    first free); a stem no other path shares is never changed."""
    stems = [_image_id(rel) for rel in rels]
    taken = set(stems)
    seen: set[str] = set()
    ids = {}
    for rel, stem in zip(rels, stems):
        if stem in seen:
            k = 2
            while f"{stem}~{k}" in taken:
                k += 1
            stem = f"{stem}~{k}"
            taken.add(stem)
        seen.add(stem)
        ids[rel] = stem
    return ids


def _train_records(train: list[tuple[CaptionedImage, str]], opts: ImportOptions, ids: dict[str, str]
                   ) -> list[Record]:
    records = []
    for img, rel in train:
        for j, cap in enumerate(img.captions, 1):
            stem = f"{ids[rel]}-{j}"
            if "i2t" in opts.directions:
                records.append(Record(image_query(rel), Item(cap), dataset=f"{opts.name}_i2t", id=f"{stem}-i2t"))
            if "t2i" in opts.directions:
                records.append(Record(caption_query(cap), image_target(rel), dataset=f"{opts.name}_t2i",
                                      id=f"{stem}-t2i"))
    return records


def _images_by_key(side: list[tuple[CaptionedImage, str]], of_image, of_caption) -> dict[str, set[str]]:
    """Item key → the image paths the item is about, for the items `of_image(path)` and `of_caption(caption)` of
    every image (a caption shared by several images, common in captioned data, is about all of them)."""
    out: dict[str, set[str]] = {}
    for img, rel in side:
        out.setdefault(of_image(rel).key, set()).add(rel)
        for cap in img.captions:
            out.setdefault(of_caption(cap).key, set()).add(rel)
    return out


def _relevant_images(side: list[tuple[CaptionedImage, str]]) -> dict[str, set[str]]:
    """Query key → the images a query is about: an image query its image, a caption query every image with it."""
    return _images_by_key(side, image_query, caption_query)


def _owner_map(train: list[tuple[CaptionedImage, str]]) -> dict[str, set[str]]:
    """Pool item key (an image target, a caption) → the image paths it belongs to."""
    return _images_by_key(train, image_target, Item)


def _judge_records(records: list[Record], owners: dict[str, set[str]], relevant: dict[str, set[str]],
                   opts: ImportOptions) -> list[Record]:
    """Each training record with `judge_negatives` random pool items of the positive's kind that belong to
    none of the query's images (`relevant`: for a caption query every image with that caption; the pool = the
    de-duplicated union of the positives, as in mining). Linear in the records: each item's key is computed once
    and a record's barred items are looked up by its images (`_sample_without`), not found by scanning the pool."""
    positive_keys = [rec.positive.key for rec in records]
    seen: dict[str, Item] = {}
    for key, rec in zip(positive_keys, records):  # mining's default pool (`build_pool`): positives, first seen first
        seen.setdefault(key, rec.positive)
    pool = list(seen.values())
    items_of: dict[str, list[int]] = {}  # image path -> the pool positions of the items that belong to it
    for i, key in enumerate(seen):
        for rel in owners.get(key, ()):
            items_of.setdefault(rel, []).append(i)
    kind = [bool(p.images) for p in pool]
    by_kind = {k: [i for i in range(len(pool)) if kind[i] == k] for k in (True, False)}
    position = {i: n for members in by_kind.values() for n, i in enumerate(members)}  # pool -> in its kind
    items_by_kind = {k: [pool[i] for i in members] for k, members in by_kind.items()}
    rng = random.Random(opts.seed + 1)
    out = []
    for rec, positive_key in zip(records, positive_keys):
        own = relevant.get(rec.query.key, set()) | owners.get(positive_key, set())
        barred = {i for rel in own for i in items_of.get(rel, ())}
        k = bool(rec.positive.images)
        of_kind = [position[i] for i in barred if kind[i] == k]
        if len(by_kind[k]) - len(of_kind) >= opts.judge_negatives:
            negs = _sample_without(rng, items_by_kind[k], of_kind, opts.judge_negatives)
        else:  # too few of the positive's kind: any pool item
            negs = _sample_without(rng, pool, barred, opts.judge_negatives)
        if negs:
            out.append(Record(rec.query, rec.positive, negatives=negs, dataset=rec.dataset, id=rec.id))
    return out


def _qrels_rows(records: list[Record], train: list[tuple[CaptionedImage, str]]) -> list[dict]:
    """Per distinct training query, every item relevant to it: an image query every caption of its image (i2t),
    a caption query every image with that caption (t2i)."""
    captions_of = {rel: img.captions for img, rel in train}
    relevant = _relevant_images(train)
    rows: dict[str, dict] = {}
    for rec in records:
        if rec.query.key in rows:
            continue
        if rec.query.images:  # an image query: every caption of that image
            rel = rec.query.images[0]
            cands = [Item(c) for c in captions_of[rel]]
        else:
            cands = [image_target(r) for r in sorted(relevant[rec.query.key])]
        rows[rec.query.key] = {"id": rec.id, "query": rec.query.to_dict(), "candidates": [c.to_dict() for c in cands],
                               "relevance": [1.0] * len(cands)}
    return list(rows.values())


class _Remaining(abc.Sequence):
    """The positions 0..n-1 without `excluded`, ascending, without building their list."""

    def __init__(self, n: int, excluded) -> None:
        self._n = n
        self._excluded = sorted({e for e in excluded if 0 <= e < n})

    def __len__(self) -> int:
        return self._n - len(self._excluded)

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(len(self)))]
        j = j + len(self) if j < 0 else j
        if not 0 <= j < len(self):
            raise IndexError(j)
        for e in self._excluded:  # the j-th kept position: j + the excluded positions at or before it
            if e > j:
                break
            j += 1
        return j

    def __iter__(self):
        excluded = set(self._excluded)
        return (i for i in range(self._n) if i not in excluded)


def _sample_without(rng: random.Random, items: Sequence, excluded, k: int) -> list:
    """`rng.sample` of min(k, available) of `items` but those at the positions `excluded`: the very draws
    `rng.sample([x for i, x in enumerate(items) if i not in excluded], ...)` makes (`random.Random.sample` picks
    positions by the population's length alone), in time of k and the excluded positions, not of `items`."""
    rest = _Remaining(len(items), excluded)
    return [items[j] for j in rng.sample(rest, min(k, len(rest)))]


class _HeldOutNegatives:
    """Negatives among the held-out images (eval rows, judge pairs), looked up instead of scanned for per image:
    the other images' captions (`captions`: every held-out caption, sorted) and the other images (`held`
    positions) that do not have the image's first caption."""

    def __init__(self, held: list[tuple[CaptionedImage, str]]) -> None:
        self.captions = sorted({c for img, _ in held for c in img.captions})
        self._caption_position = {c: n for n, c in enumerate(self.captions)}
        self._with_caption: dict[str, list[int]] = {}
        self._with_path: dict[str, list[int]] = {}
        for j, (img, rel) in enumerate(held):
            for c in dict.fromkeys(img.captions):
                self._with_caption.setdefault(c, []).append(j)
            self._with_path.setdefault(rel, []).append(j)
        self._held = held

    def captions_of_others(self, rng: random.Random, i: int, k: int) -> list[str]:
        """k random captions of the other held-out images that are none of image i's own."""
        own = [self._caption_position[c] for c in self._held[i][0].captions]
        return _sample_without(rng, self.captions, own, k)

    def other_images(self, rng: random.Random, i: int, k: int) -> list[str]:
        """k random paths of the other held-out images (not image i's path) without image i's first caption."""
        img, rel = self._held[i]
        barred = [i, *self._with_path[rel], *self._with_caption[img.captions[0]]]
        return [self._held[j][1] for j in _sample_without(rng, range(len(self._held)), barred, k)]


def _mmeb_rows(held: list[tuple[CaptionedImage, str]], opts: ImportOptions, ids: dict[str, str],
               all_labels: Sequence[str] = ()) -> dict[str, list[MMEBRow]]:
    """MMEB-eval rows of the held-out images: i2t (image → its first caption among others' captions),
    t2i (first caption → its image among other images), cls (image → its label among the collection's
    labels, as MMEB ranks against the label set). A
    candidate as right as the positive (another caption of the image; another image with the query's caption)
    is never listed."""
    rng = random.Random(opts.seed + 2)
    n_cand = opts.eval_candidates
    negatives = _HeldOutNegatives(held)
    tasks: dict[str, list[MMEBRow]] = {}
    if "i2t" in opts.directions:
        rows = []
        for i, (img, rel) in enumerate(held):
            negs = negatives.captions_of_others(rng, i, n_cand - 1)
            rows.append(MMEBRow(image_query(rel), [Item(img.captions[0])] + [Item(c) for c in negs],
                                id=f"{ids[rel]}-i2t"))
        tasks[f"{opts.name}_i2t"] = rows
    if "t2i" in opts.directions:
        rows = []
        for i, (img, rel) in enumerate(held):
            negs = negatives.other_images(rng, i, n_cand - 1)
            rows.append(MMEBRow(caption_query(img.captions[0]), [image_target(rel)] + [image_target(r) for r in negs],
                                id=f"{ids[rel]}-t2i"))
        tasks[f"{opts.name}_t2i"] = rows
    labels = sorted(set(all_labels) | {img.label for img, _ in held if img.label})
    if labels and all(img.label for img, _ in held) and len(labels) >= 2:
        label_position = {lab: n for n, lab in enumerate(labels)}
        rows = []
        for img, rel in held:
            negs = _sample_without(rng, labels, [label_position[img.label]], n_cand - 1)
            rows.append(MMEBRow(classify_query(rel), [Item(img.label)] + [Item(lab) for lab in negs],
                                id=f"{ids[rel]}-cls"))
        tasks[f"{opts.name}_cls"] = rows
    return tasks


def _judge_pairs(held: list[tuple[CaptionedImage, str]], opts: ImportOptions, ids: dict[str, str]) -> list[dict]:
    """Labelled (query, candidate) pairs on the held-out images, for checking a judge on unseen data."""
    rng = random.Random(opts.seed + 3)
    negatives = _HeldOutNegatives(held)
    rows = []
    for i, (img, rel) in enumerate(held):
        if "i2t" in opts.directions:
            q = image_query(rel).to_dict()
            rows.append({"id": f"{ids[rel]}-i2t-pos", "query": q, "candidate": {"text": img.captions[0]},
                         "label": 1})
            for k, t in enumerate(negatives.captions_of_others(rng, i, opts.judge_negatives), 1):
                rows.append({"id": f"{ids[rel]}-i2t-neg{k}", "query": q, "candidate": {"text": t}, "label": 0})
        if "t2i" in opts.directions:
            q = caption_query(img.captions[0]).to_dict()
            rows.append({"id": f"{ids[rel]}-t2i-pos", "query": q, "candidate": image_target(rel).to_dict(),
                         "label": 1})
            for k, r in enumerate(negatives.other_images(rng, i, opts.judge_negatives), 1):
                rows.append({"id": f"{ids[rel]}-t2i-neg{k}", "query": q, "candidate": image_target(r).to_dict(),
                             "label": 0})
    return rows


def _write_jsonl(rows: list[dict], path: Path) -> None:
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


# options that do not change what an import writes (left out of the re-run comparison)
FREE_OPTIONS = ("out", "overwrite", "ignore", "own_folder", "source")


def run_identity(images: Sequence[CaptionedImage], opts: ImportOptions) -> dict[str, Any]:
    """What a finished import is compared with on a re-run: its options (outside `FREE_OPTIONS`), the
    source it names and a digest of its inputs (every image's bytes, captions, labels, in order)."""
    import hashlib

    from unime.data.image_digests import file_sha1

    h = hashlib.sha1()
    for img in images:
        if isinstance(img.image, bytes):
            content = hashlib.sha1(img.image).hexdigest()
        else:
            try:
                content = file_sha1(img.image)
            except OSError:  # reported (or skipped) by `place_images`, naming the record
                content = "unreadable"
        h.update(json.dumps([img.id, content, img.captions, img.label, img.name_hint], ensure_ascii=False).encode())
        h.update(b"\n")
    options = {k: v for k, v in asdict(opts).items() if k not in FREE_OPTIONS}
    return {**options, "source": opts.source, "inputs": f"{len(images)} images, sha1 {h.hexdigest()}"}


def _finished_import(out: Path) -> dict | None:
    """The manifest of a finished import in `out` (import.json is written last), else None."""
    try:
        manifest = json.loads((out / "import.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("options"), dict) else None


def _earlier_run(out: Path, identity: dict[str, Any]) -> ImportSummary | None:
    """A finished import in `out` with this identity: its summary (nothing to do). Other options or
    inputs: `ChangedOptions` naming the options as a user gives them (`--judge-negatives`, not `judge_negatives`)."""
    from unime.errors import changed_option_keys, refuse_changed_options

    manifest = _finished_import(out)
    if manifest is None:
        return None
    before = manifest.get("identity")
    before = before if isinstance(before, dict) else {}
    keys = changed_option_keys(before, identity)
    if keys:
        raise refuse_changed_options(out, before, identity, keys, ImportOptions)
    return ImportSummary(out=out, images=manifest.get("images", 0), train_images=manifest.get("train_images", 0),
                         eval_images=manifest.get("eval_images", 0), records=manifest.get("records", {}),
                         judge_records=manifest.get("judge_records", 0),
                         eval_tasks=list(manifest.get("eval_tasks", {})), labels=len(manifest.get("labels", [])),
                         skipped=(manifest.get("skipped") or {}).get("total", 0), finished_before=True)


def _earlier_image_folders(out: Path, manifest: dict) -> list[Path]:
    """The images source folder an earlier import recorded (`source.images`), as it exists: a relative one taken
    from the working directory the import recorded (`identity.working_dir`) when there is one, else from `out`'s
    parent and from the current directory (each that exists)."""
    folder = (manifest.get("source") or {}).get("images") if isinstance(manifest.get("source"), dict) else None
    if not isinstance(folder, str) or not folder:
        return []
    identity = manifest.get("identity") if isinstance(manifest.get("identity"), dict) else {}
    recorded = manifest.get(WORKING_DIR) or identity.get(WORKING_DIR)
    bases = [Path(recorded)] if isinstance(recorded, str) and recorded else [out.absolute().parent, Path.cwd()]
    return list(dict.fromkeys(p for p in (b / folder for b in bases) if p.is_dir()))


def _a_source_file(out: Path, rel: str, folders: Sequence[Path]) -> bool:
    """OUT/`rel` (an image placed as images/NAME) is the file NAME of one of the images `folders` itself: its
    folder is (samefile) that folder's, as for an import that used its images in place (`--images OUT/images`).
    A hard link there of a file elsewhere is not (removing it leaves that file), nor is a file of `out` when `out`
    lies inside the folder."""
    parts = Path(rel).parts
    if len(parts) < 2 or parts[0] != "images":
        return False
    sub = Path(*parts[1:])
    return any(_same_file((out / rel).parent, str((folder / sub).parent)) for folder in folders)


def _remove_earlier_import(out: Path, keep: set[Path]) -> list[str]:
    """Before an import is done again in `out`: delete what the finished import there wrote — the files its
    import.json lists (one written before that list: its eval task files), import.json first, so that a redo
    keeps none of them unless it writes them again (an earlier labelled import's NAME_cls task stayed beside a
    new split and held its training images, QA). Files the import did not write stay, and so do the images
    this import reads (`keep`: resolved paths), and the files of the images folder the earlier import read
    (`_earlier_image_folders`): an older unime listed the user's photos it used in place (`--images OUT/images`)
    as written; each kept for that reason is named in a warning."""
    manifest = _finished_import(out)
    if manifest is None:
        return []
    listed = manifest.get("written")
    if not isinstance(listed, list):
        listed = [f"eval/mmeb/{name}.jsonl" for name in manifest.get("eval_tasks") or {}]
    sources = _earlier_image_folders(out, manifest)
    (out / "import.json").unlink()
    removed, sourced = [], []
    for rel in listed:
        if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
            continue  # never a path outside the folder
        path = out / rel
        if not (path.is_file() or path.is_symlink()) or path.resolve() in keep:
            continue
        if _a_source_file(out, rel, sources):
            sourced.append(rel)
            continue
        path.unlink()
        removed.append(rel)
    if removed:
        log.info("%s: removed %d file(s) of the earlier import", out, len(removed))
    if sourced:
        log.warning("%s: kept %d file(s) the earlier import lists as written but which are files of the images "
                    "folder it read (%s): %s", out, len(sourced), ", ".join(map(str, sources)), ", ".join(sourced))
    return removed


def import_from_source(source: CollectionSource, opts: ImportOptions, *, skips: SkipReport) -> ImportSummary:
    """`unime data import`: read the collection, then `import_collection`; the dataset is named after the
    collection's folder unless `opts.name` is given. The options are checked before the collection is read."""
    opts.validate(named=False)
    started = time.perf_counter()
    images, described, origin = source.read(ErrorPolicy(opts.on_error, skips, "import"))
    log.info("%s: %d captioned images read (%.1f s)", opts.out, len(images), time.perf_counter() - started)
    name = opts.name or re.sub(r"[^A-Za-z0-9_.-]+", "_", origin.name) or "mydata"
    return import_collection(images, replace(opts, name=name, source=described), skips=skips)


def import_collection(images: Sequence[CaptionedImage], opts: ImportOptions, *,
                      skips: SkipReport | None = None) -> ImportSummary:
    """Write the import folder described in the module doc; returns its summary.

    Re-runs (the convention of mining, eval and the trainers): OUT holding a finished import with the same
    options and inputs → nothing is written (`finished_before`); other options or inputs →
    `ChangedOptions` listing the keys; `overwrite` → the import is done again. A non-empty OUT without a
    finished import is written into only when it is this command's own (`own_folder`: an interrupted
    import) or with `overwrite`."""
    import yaml

    opts.validate()
    out = Path(opts.out)
    identity = run_identity(images, opts)
    present = out.is_dir() and any(p.name not in opts.ignore for p in out.iterdir())
    if present and not opts.overwrite:
        earlier = _earlier_run(out, identity)
        if earlier is not None:
            log.info("%s: this import finished earlier (same options and inputs); nothing to do", out)
            return earlier
        if not opts.own_folder:
            raise FileExistsError(f"{out} exists and is not empty; choose a new folder (or pass --overwrite to "
                                  "write into it)")
    out.mkdir(parents=True, exist_ok=True)
    skips = skips if skips is not None else SkipReport()
    policy = ErrorPolicy(opts.on_error, skips, "import")
    if not images:
        raise DataError("the source holds no captioned image", source=json.dumps(opts.source))
    _remove_earlier_import(out, keep={Path(img.image).resolve() for img in images if not isinstance(img.image, bytes)})
    written: list[str] = []

    def output(rel: str) -> Path:  # a file this import writes, listed in import.json
        written.append(rel)
        return out / rel

    started = time.perf_counter()

    def progress(message: str, *args) -> None:  # a large collection takes minutes: say where the import is
        log.info("%s: " + message + " (%.1f s)", out, *args, time.perf_counter() - started)

    placed, wrote = place_images(images, out, policy)
    written += wrote
    progress("%d of %d images placed and read", len(placed), len(images))
    tr_idx, ev_idx = split_images(len(placed), opts.eval_fraction, opts.seed,
                                  caption_groups([img.captions for img, _ in placed]))
    train, held = [placed[i] for i in tr_idx], [placed[i] for i in ev_idx]

    ids = _image_ids([rel for _, rel in placed])
    records = _train_records(train, opts, ids)
    (out / "train").mkdir(exist_ok=True)
    write_records(records, output("train/records.jsonl"))
    progress("%d training records written (%d train images, %d held out)", len(records), len(train), len(held))
    judge = _judge_records(records, _owner_map(train), _relevant_images(train), opts)
    write_records(judge, output("train/judge.jsonl"))
    progress("%d judge records written", len(judge))
    qrels = _qrels_rows(records, train)
    _write_jsonl(qrels, output("train/qrels.jsonl"))
    progress("%d qrels rows written", len(qrels))
    corpus = list(dict.fromkeys([c for img, _ in placed for c in img.captions] + [img.label for img, _ in placed
                                                                                  if img.label]))
    with atomic_open(output("train/corpus.txt")) as fh:  # `unime models build-tiny --tokenizer-corpus`
        fh.write("".join(c.replace("\n", " ") + "\n" for c in corpus))
    written.append(write_data_root(out / "train", out).relative_to(out).as_posix())

    tasks = _mmeb_rows(held, opts, ids, [img.label for img, _ in placed if img.label])
    (out / "eval" / "mmeb").mkdir(parents=True, exist_ok=True)
    cfg_tasks = []
    for name, rows in tasks.items():
        write_mmeb(rows, output(f"eval/mmeb/{name}.jsonl"))
        cfg_tasks.append({"name": name, "format": "mmeb", "path": f"eval/mmeb/{name}.jsonl",
                          "meta_task": "classification" if name.endswith("_cls") else "retrieval", "split": "IND"})
    written.append(write_data_root(out / "eval" / "mmeb", out).relative_to(out).as_posix())
    progress("eval rows written: %s", ", ".join(f"{name} {len(rows)}" for name, rows in tasks.items()))
    pairs = _judge_pairs(held, opts, ids)
    _write_jsonl(pairs, output("eval/judge_pairs.jsonl"))
    progress("%d judge pairs written", len(pairs))
    written.append(write_data_root(out / "eval", out).relative_to(out).as_posix())
    with atomic_open(output("eval_tasks.yaml")) as fh:
        fh.write(f"# written by `unime data import` ({opts.name}); image paths are relative to this folder\n")
        yaml.safe_dump({"data_root": ".", "tasks": cfg_tasks}, fh, sort_keys=False)

    counts: dict[str, int] = {}
    for r in records:
        counts[r.dataset] = counts.get(r.dataset, 0) + 1
    labels = {img.label for img, _ in placed if img.label}
    summary = ImportSummary(out=out, images=len(placed), train_images=len(train), eval_images=len(held),
                            records=counts, judge_records=len(judge), eval_tasks=list(tasks), labels=len(labels),
                            skipped=skips.total)
    manifest = {"source": opts.source, "options": {k: v for k, v in asdict(opts).items()
                                                   if k not in ("source", "ignore", "own_folder")},
                "identity": with_working_dir(identity),
                "images": summary.images, "train_images": summary.train_images, "eval_images": summary.eval_images,
                "records": counts, "judge_records": len(judge), "eval_tasks": {n: len(r) for n, r in tasks.items()},
                "labels": sorted(labels),
                "skipped": {"total": skips.total, "by_reason": dict(sorted(skips.counts.items())),
                            "summary": skips.summary()},
                "written": sorted(written)}
    with atomic_open(out / "import.json") as fh:
        json.dump(manifest, fh, indent=1, ensure_ascii=False, default=str)
    return summary
