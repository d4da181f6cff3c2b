"""`unime data convert` (records between unime JSONL, Parquet and UniME-V2 JSON) and `unime data check` (a data
file and every image it references, before a long job): their options (`unime.options`) and their work."""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass

from unime.data.video import VideoOptions
from unime.errors import DataError
from unime.options import RangeChecked, allow_outside_root_option, on_error_option, option

FORMATS = ["jsonl", "parquet", "unime_v2_json"]


@dataclass(kw_only=True)
class ConvertConfig(RangeChecked):
    input: str = option(help="input file (.jsonl, .parquet, .json = UniME-V2 list)", positional=True)
    output: str = option(help="output file; the format follows its extension unless --to is given", positional=True)
    from_format: str | None = option(None, "input format (default: from the extension)", flag="--from",
                                     choices=FORMATS)
    to_format: str | None = option(None, "output format (default: from the extension)", flag="--to", choices=FORMATS)
    on_error: str = on_error_option("skip bad records and records the output format cannot hold (counted and "
                                    "reported) instead of stopping at the first")
    dataset: str | None = option(None, "dataset name given to records that have none (the UniME-V2 JSON carries "
                                 "none)", metavar="NAME")


def convert_records(cfg: ConvertConfig):
    """Returns (records written, the `SkipReport` of the records left out: bad input records and, under
    ``on_error="skip"``, the records the output format cannot hold, e.g. one with a video written as UniME-V2 JSON).
    The records keep their image paths, so the input's data root (`unime.data.roots.resolve_data_root`) is recorded
    beside the output (`record_data_root`): the converted file finds the same images without --data-root. Every
    record skipped is a `DataError` naming the count and the first one's reason; nothing is written then."""
    from unime.data.atomic import atomic_path
    from unime.data.eval_formats import origin_of, with_origin
    from unime.data.io import SkipReport, iter_records, output_format, write_records
    from unime.data.roots import record_data_root, resolve_data_root

    skips = SkipReport()
    data_root = resolve_data_root(cfg.input)
    fmt = output_format(cfg.output, cfg.to_format)
    records = iter_records(cfg.input, on_error=cfg.on_error, skips=skips, format=cfg.from_format)
    if cfg.dataset:
        # the record keeps the line it was read from (`with_origin`): an error about it names that line
        records = (r if r.dataset else with_origin(dataclasses.replace(r, dataset=cfg.dataset), origin_of(r))
                   for r in records)
    with atomic_path(cfg.output) as tmp:  # an error leaves the output as it was
        n = write_records(records, tmp, format=fmt, on_error=cfg.on_error, skips=skips, source=str(cfg.input))
        if not n and skips.total:
            raise DataError(f"every record was skipped, {skips.total} ({skips.per_reason}), so {cfg.output} was not "
                            f"written; the first: {skips.examples[0].message}", source=cfg.input)
    record_data_root(os.path.dirname(os.path.abspath(cfg.output)), data_root, written=[cfg.output])
    return n, skips


@dataclass(kw_only=True)
class CheckConfig(VideoOptions):
    """Options of `unime data check`; the `--video-*` options are those of the commands that read the videos (a
    video is decoded as a run with the same options samples it: good means good for that run)."""

    input: str = option(help="records (.jsonl/.parquet/.json), MMEB-eval or MMEB-V2 rows, qrels rows, retrieval "
                        "entries, compositional pairs, judge pairs, items (a corpus: `unime index build --items`, "
                        "`unime embed --items`), or a BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv)",
                        positional=True)
    mmeb: bool = option(False, "the file holds MMEB-eval rows (default: recognised by the first row's keys)")
    data_root: str | None = option(None, "folder image paths are relative to (default: the file's folder)")
    allow_outside_root: bool = allow_outside_root_option()
    max_pixels: int | None = option(None, "largest image allowed (width x height)", above=0)
    no_images: bool = option(False, "check the file only, not the images")
    label_column: str | None = option(None, "judge pairs: their relevance label is under KEY, their other keys "
                                      "ignored (default: the one key of the first row beside id, query and "
                                      "candidate, if there is one; two or more are refused)", metavar="KEY")


_TASK_CONFIG_SUFFIXES = (".yaml", ".yml")


def _first_row(path: str) -> tuple[int, set[str]] | None:
    """The line and the keys of the first JSON object of a JSONL file (told by its extension or content); None for
    another format or a first line that is no object. A file of no format `data check` reads is a `DataError` with
    the command line's formats (not the Python API's ``format=``)."""
    from unime.data.io import detect_format
    from unime.data.jsonl import iter_jsonl

    if not os.path.isfile(path):
        return None  # the reader names the missing file
    try:
        if detect_format(path) != "jsonl":
            return None
    except DataError:
        raise DataError(f"cannot tell the format of {os.path.basename(path)!r}: `unime data check` reads JSON Lines "
                        "(.jsonl: training records, MMEB-eval or MMEB-V2 rows, qrels rows, retrieval entries, "
                        "compositional pairs, judge pairs, items), training records or MMEB-eval rows as .parquet, "
                        "training records as .json (UniME-V2 JSON list), and BEIR folders", source=path) from None
    try:
        for n, obj in iter_jsonl(path):
            return (n, set(obj)) if isinstance(obj, dict) else None
    except DataError:  # a malformed first line: the check itself reports it
        return None
    return None


def _first_row_keys(path: str) -> set[str] | None:
    """The keys of the first JSON object of a JSONL file (`_first_row`)."""
    first = _first_row(path)
    return first[1] if first else None


def check_format(cfg: CheckConfig) -> str | None:
    """What `cfg.input` holds, told by its first row's keys: "mmeb" (MMEB-eval rows; also `--mmeb` for a file whose
    first row tells nothing), "mmeb_v2" / "mmeb_v2_corpus" (MMEB-V2 rows / a V2 task's corpus rows), "qrels"
    (qrels rows: `unime eval`'s format qrels, the oracle judge's ground truth), "retrieval" / "compositional"
    (`unime eval`'s formats of those names), "pairs" (judge pairs, `unime judge --pairs`), "items" (an items file, a
    corpus: `unime index build --items`, `unime embed --items`, `unime.data.corpus`), "beir" (a folder: a BEIR
    qrels task, `unime.data.beir`), or None (training records). An eval task config, or training records under
    `--mmeb`, is a `DataError` naming what it is and the command line that reads it, not a report of every row as
    bad."""
    from unime.data.eval_formats import COMPOSITIONAL_KEYS, MMEB_KEYS, QRELS_KEYS, RETRIEVAL_KEYS
    from unime.data.io import RECORD_KEYS_REQUIRED
    from unime.data.mmeb_v2 import CORPUS_KEYS, V2_KEYS
    from unime.data.pairs import PAIR_KEYS

    if str(cfg.input).lower().endswith(_TASK_CONFIG_SUFFIXES):
        raise DataError("an eval task config, not a data file: `unime eval --tasks FILE` reads it; check the data "
                        "files it lists with `unime data check DATA_FILE --data-root DATA_ROOT` (the config's "
                        "data_root; MMEB-eval and MMEB-V2 rows are recognised)",
                        source=cfg.input)
    if os.path.isdir(cfg.input):  # a BEIR folder, its missing files named (`unime.data.beir.beir_files`)
        from unime.data.beir import CORPUS_FILE, QRELS_FOLDER, QUERIES_FILE, looks_like_beir_folder

        if looks_like_beir_folder(cfg.input):
            return "beir"
        raise DataError(f"a folder that is not a BEIR folder ({CORPUS_FILE}, {QUERIES_FILE}, {QRELS_FOLDER}/*.tsv): "
                        "`unime data check` reads a data file or a BEIR folder", source=cfg.input)
    mmeb = "mmeb" if cfg.mmeb else None
    keys = _first_row_keys(cfg.input)
    if keys is None:
        return mmeb
    if MMEB_KEYS <= keys:
        return "mmeb"
    if CORPUS_KEYS <= keys:  # the keys VLM2Vec's video / visual-document task files have
        return "mmeb_v2" if V2_KEYS & {"query_text", "query_image"} & keys else "mmeb_v2_corpus"
    if RECORD_KEYS_REQUIRED <= keys:
        if cfg.mmeb:
            raise DataError("holds training records (query, positive), not MMEB-eval rows: check it without --mmeb",
                            source=cfg.input)
        return None
    if QRELS_KEYS <= keys:
        return "qrels"
    if RETRIEVAL_KEYS <= keys:
        return "retrieval"
    if COMPOSITIONAL_KEYS <= keys:
        return "compositional"
    if set(PAIR_KEYS) <= keys:
        return "pairs"
    if not cfg.mmeb and _items_keys(keys):
        return "items"
    return mmeb


def _items_keys(keys: set[str]) -> bool:
    """The keys of an items file's line (`unime.data.corpus`): an item's (text, image, images, video; one at least)
    with id and metadata, or a generated world's items.jsonl line (key, item, meta)."""
    from unime.data.corpus import ITEM_KEYS, WORLD_KEYS

    if "item" in keys:
        return keys <= WORLD_KEYS
    return bool(keys & set(ITEM_KEYS)) and keys <= {"id", "metadata", *ITEM_KEYS}


_KIND_WORDS = {"mmeb": " MMEB-eval rows:", "mmeb_v2": " MMEB-V2 rows:", "mmeb_v2_corpus": " MMEB-V2 corpus rows:",
               "qrels": " qrels rows:", "pairs": " judge pairs:", "retrieval": " retrieval entries:",
               "compositional": " compositional pairs:", "beir": " BEIR folder:",
               "items": " items (`unime index build --items`, `unime embed --items`):"}


def _pairs_label_column(path: str) -> str | None:
    """The label column of a judge pairs file: the one key of its first row beside id, query and candidate (an
    import writes `label`), else None (no label column). Two or more such keys are a `DataError` naming the line
    and the keys: which one is the label is for --label-column to say (every row would be bad otherwise)."""
    from unime.data.pairs import PAIR_KEYS

    n, keys = _first_row(path) or (0, set())
    extra = keys - {"id", *PAIR_KEYS}
    if len(extra) > 1:
        raise DataError(f"{len(extra)} keys beside id, query and candidate, {sorted(extra)}: which is the label? "
                        "pass --label-column KEY (the other keys are then ignored)", source=path, record=f"line {n}")
    return extra.pop() if extra else None


def check_file(cfg: CheckConfig) -> tuple[str, int]:
    """Every row of the file read (bad ones skipped) and, unless `no_images`, every image and video opened (a video's
    frames sampled by the `--video-*` options, as the run they are given to samples them). Returns
    the report (a summary line, then examples of what is bad) and the number of bad rows. MMEB-eval rows, MMEB-V2
    rows (their videos decoded), qrels rows, retrieval entries, compositional pairs and judge pairs are recognised by
    their keys (`check_format`)."""
    from unime.data.images import DEFAULT_MAX_PIXELS, ImageLoader
    from unime.data.io import (ImageChecker, SkipReport, check_images, read_compositional, read_mmeb, read_mmeb_v2,
                               read_qrels, read_records, read_retrieval)
    from unime.data.beir import beir_files
    from unime.data.pairs import read_pairs
    from unime.data.roots import resolve_data_root
    from unime.data.skips import empty_file_error
    from unime.data.video import PROCESSOR_MAX_ASPECT_RATIO, VideoSampling

    kind = check_format(cfg)
    skips = SkipReport(max_examples=20)
    data_file = beir_files(cfg.input)[0] if kind == "beir" else cfg.input  # a BEIR folder's paths: as its corpus'
    root = resolve_data_root(data_file, cfg.data_root)
    # an image over the processors' aspect ratio is bad: every command that gives it to a model refuses it
    checker = None if cfg.no_images else ImageChecker(ImageLoader(
        root, allow_outside_root=cfg.allow_outside_root, max_pixels=cfg.max_pixels or DEFAULT_MAX_PIXELS,
        max_aspect_ratio=PROCESSOR_MAX_ASPECT_RATIO, video=VideoSampling.from_fields(cfg)))
    words = "" if kind is None or (kind == "mmeb" and cfg.mmeb) else _KIND_WORDS[kind]
    if cfg.label_column and kind != "pairs":
        raise DataError("--label-column names the label of judge pairs; this file holds no judge pairs (rows of "
                        "query and candidate only, besides id and a label)", source=cfg.input)
    repeats: list = []  # an items file's repeated ids (`_check_items`)
    if kind == "beir":
        rows, words = _check_beir(cfg.input, skips, checker)
    elif kind == "items":
        rows = _check_items(cfg.input, skips, checker, repeats)
    elif kind == "pairs":  # their reader opens each pair's media as it reads the pair
        label_column = cfg.label_column or _pairs_label_column(cfg.input)
        rows = read_pairs(cfg.input, on_error="skip", skips=skips, images=checker, label_column=label_column)
        rows = rows[0] if label_column else rows
        words = f" judge pairs (label column {label_column!r}):" if label_column else words
    else:
        read = {None: read_records, "mmeb": read_mmeb, "mmeb_v2": read_mmeb_v2, "qrels": read_qrels,
                "mmeb_v2_corpus": functools.partial(read_mmeb_v2, corpus=True), "retrieval": read_retrieval,
                "compositional": read_compositional}[kind]
        rows = read(cfg.input, on_error="skip", skips=skips)
        if checker is not None:
            rows = check_images(rows, checker, on_error="skip", skips=skips, source=cfg.input)
    if not rows and not skips.total and kind != "beir":  # an empty file: no command that reads it takes it
        raise empty_file_error("no rows", cfg.input, "every command reading it refuses it; ")
    n_media_bad = skips.counts.get("image", 0) + skips.counts.get("video", 0)
    media = set() if checker is None else checker.media
    paths = {frozenset({"video"}): "video", frozenset({"images", "video"}): "media"}.get(frozenset(media), "image")
    where = "" if cfg.no_images else f" ({paths} paths resolved against {root})"
    line = (f"{cfg.input}:{words} {len(rows)} good, {skips.total - n_media_bad} bad rows, "
            f"{bad_media_words(skips, n_media_bad, media)}{where}")
    hint = "" if checker is None or cfg.data_root else _data_root_hint(str(data_file), root, checker)
    hint += "" if checker is None else _aspect_ratio_hint(checker)
    hint += "".join(f"\nrepeated id {e.id!r} (line {e.line}, first on line {first}): `unime index build` refuses it; "
                    "`unime embed` reads it (one row per line, a repeated item encoded once)"
                    for e, first in repeats)
    return line + (f"\n{skips.summary()}" if skips.total else "") + hint, skips.total


def _check_beir(folder: str, skips, checker) -> tuple[list, str]:
    """The good rows and judgements of a BEIR folder, read as `unime eval` reads them (`unime.data.beir`): corpus
    and query rows (each image opened by `checker`, unless None; a repeated ``_id`` is bad), then every
    ``qrels/*.tsv`` line (an id naming no good corpus or query row is bad). Bad ones are counted in `skips`.
    Returns (the good rows and judgements, the report's words naming how many of each)."""
    from unime.data.beir import beir_files, beir_row_from_dict, first_of_each_id, read_beir_qrels
    from unime.data.eval_formats import origin_of, read_parsed_rows
    from unime.data.io import check_images
    from unime.data.skips import ErrorPolicy

    corpus_file, queries_file, qrels_files = beir_files(folder)
    ids = []
    for f in (corpus_file, queries_file):
        rows = read_parsed_rows(f, beir_row_from_dict, "skip", skips)
        if checker is not None:
            rows = check_images(rows, checker, on_error="skip", skips=skips, source=str(f))
        policy = ErrorPolicy("skip", skips, str(f))
        ids.append({row.id: row for _, row in first_of_each_id(((origin_of(r), r) for r in rows), policy,
                                                               source=str(f))})
    corpus, queries = ids
    judged = [j for f in qrels_files
              for j in read_beir_qrels(f, queries, corpus, ErrorPolicy("skip", skips, str(f)))]
    words = (f" BEIR folder ({len(corpus)} corpus rows, {len(queries)} queries, {len(judged)} judgements in "
             f"{', '.join(f.name for f in qrels_files)}):")
    return [*corpus.values(), *queries.values(), *judged], words


def _check_items(path: str, skips, checker, repeats: list) -> list:
    """The good entries of an items file, read as `unime index build` and `unime embed` read it
    (`unime.data.corpus.read_corpus`: a bad line is bad), each entry's images and videos opened by `checker` (unless
    None) and named as the build names them (line, field). Bad ones are counted in `skips`. A repeated id is no bad
    line (QA: `unime embed` reads it, only `unime index build` refuses it): kept, and (entry, first line) appended to
    `repeats` for the report to name."""
    from unime.data.corpus import read_corpus
    from unime.data.skips import ErrorPolicy

    entries = read_corpus(path, on_error="skip", skips=skips, repeats=repeats)
    if checker is None:
        return entries
    policy, good = ErrorPolicy("skip", skips, str(path)), []
    for e in entries:
        try:
            checker.check(e.item, source=str(path), record=e.record)
            good.append(e)
        except DataError as err:
            policy.handle(err)
    policy.finish()
    return good


def _data_root_hint(data_file: str, root: str, checker) -> str:
    """When media paths were resolved against the file's own folder (no --data-root, no data root recorded beside
    the file, `unime.data.roots`) and some are not there: the line that says to pass --data-root, naming the nearest
    folder above that holds the first missing path (a generated world's eval files are relative to the world,
    which its eval_tasks.yaml tells `unime eval`, but not the commands that take the file itself). Else "": also
    when other relative paths of the file were found under its folder and no folder above holds the missing one
    (the root is right; those files are missing, which their own lines say)."""
    from pathlib import Path

    from unime.data.roots import recorded_root_of

    if recorded_root_of(data_file) is not None:
        return ""
    missing = next((ref for (_, ref), err in checker.verdict.items() if err is not None and isinstance(ref, str)
                    and not os.path.isabs(ref) and not (Path(root) / ref).exists()), None)
    if missing is None:
        return ""
    found = next((up for up in Path(root).resolve().parents if (up / missing).exists()), None)
    if found is None and any(err is None and isinstance(ref, str) and not os.path.isabs(ref)
                             for (_, ref), err in checker.verdict.items()):
        return ""
    where = f"the first, {missing!r}, is under {found}: pass --data-root {found}" if found else \
        "pass --data-root with the folder they are relative to"
    return (f"\nmedia paths not found under the file's folder {root} (no --data-root given and no data root "
            f"recorded beside the file); {where}")


def _aspect_ratio_hint(checker) -> str:
    """When some images are over the models' processors' aspect ratio (`ImageLoader`'s check): the line that says
    what refuses them and what takes them (--image-size: the fixed resize is what the processor sees). Else ""."""
    n = sum(1 for err in checker.verdict.values() if getattr(err, "over_aspect_ratio", False))
    if not n:
        return ""
    return (f"\n{n} image(s) over the aspect ratio the models' image processors accept: every command that gives "
            "them to a model refuses them (or skips them under --on-error skip) unless it is given --image-size (a "
            "fixed resize, what the processor then sees); crop or pad them, or leave them out")


def bad_media_words(skips, n_bad: int, media=frozenset()) -> str:
    """"N with bad images" / "N with bad videos" / "N with bad media (I images, V videos)": the rows left out for
    their media, told apart by the reason each was counted under (a video file or a frame list's frame: video).
    None bad, the words speak of the media the file has (`media`, the kinds `ImageChecker` was given: "images",
    "video"): "0 with bad videos" for videos only, "0 with bad images or videos" for both."""
    videos = skips.counts.get("video", 0)
    if not n_bad and "video" in media:
        return "0 with bad images or videos" if "images" in media else "0 with bad videos"
    if not videos:
        return f"{n_bad} with bad images"
    if videos == n_bad:
        return f"{n_bad} with bad videos"
    return f"{n_bad} with bad media ({n_bad - videos} images, {videos} videos)"
