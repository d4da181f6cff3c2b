"""`unime data ...`: generate the demo world; convert and check data files."""

from __future__ import annotations

from unime.cli import add_config_option
from unime.errors import UsageError

SIZE_OPTIONS = ("train_scenes", "eval_scenes", "ood_scenes", "train_per_task", "eval_queries", "candidates",
                "retrieval_images", "compositional_pairs", "image_size")


def register(sub) -> None:
    p = sub.add_parser("data", help="generate the demo world; convert and check data files")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")

    s = dsub.add_parser("synth", help="generate the deterministic demo world (training records + MMEB-format eval)")
    s.add_argument("--out", required=True, help="output folder (written atomically)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", default="default", choices=["tiny", "default", "large"],
                   help="size preset; the options below override single sizes")
    for name in SIZE_OPTIONS:
        s.add_argument("--" + name.replace("_", "-"), type=int, default=None, metavar="N")
    v = s.add_argument_group("video", "generated clips and MMEB-V2 video tasks (off unless --video-clips > 0)")
    v.add_argument("--video-clips", type=int, default=0, metavar="N",
                   help="eval clips (one query per clip and video task); 0 = a world without video")
    v.add_argument("--video-train-clips", type=int, default=None, metavar="N",
                   help="train clips for train/video_records.jsonl (default: 4 x --video-clips)")
    v.add_argument("--video-frames", type=int, default=8, metavar="N", help="frames per clip (even, >= 4)")
    v.add_argument("--video-size", type=int, default=56, metavar="PX", help="clip frame side in pixels")
    s.add_argument("--overwrite", action="store_true",
                   help="write the world into a folder that holds other files or another world (the world's files "
                        "are replaced, other files stay)")
    add_config_option(s)
    s.set_defaults(func=_synth)

    c = dsub.add_parser("convert", help="convert training records between unime JSONL, Parquet and UniME-V2 JSON")
    c.add_argument("input", help="input file (.jsonl, .parquet, .json = UniME-V2 list)")
    c.add_argument("output", help="output file; the format follows its extension unless --to is given")
    c.add_argument("--from", dest="from_format", default=None, choices=["jsonl", "parquet", "unime_v2_json"])
    c.add_argument("--to", dest="to_format", default=None, choices=["jsonl", "parquet", "unime_v2_json"])
    c.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="skip bad records (counted and reported) instead of stopping at the first")
    c.add_argument("--dataset", default=None, metavar="NAME",
                   help="dataset name given to records that have none (the UniME-V2 JSON carries none)")
    add_config_option(c)
    c.set_defaults(func=_convert)

    i = dsub.add_parser(
        "import", help="import a captioned-image collection: training, judge and oracle records + MMEB eval tasks",
        description="Read a folder of images + a captions file (CSV/TSV/JSONL), COCO captions JSON, a local "
                    "`datasets` folder (save_to_disk or imagefolder) or WebDataset shards, and write OUT/train/"
                    "records.jsonl (datasets NAME_i2t, NAME_t2i), OUT/train/judge.jsonl, OUT/train/qrels.jsonl, "
                    "OUT/eval/mmeb/*.jsonl and OUT/eval_tasks.yaml for a held-out split. Later commands find the "
                    "images without --data-root.")
    src = i.add_mutually_exclusive_group(required=True)
    src.add_argument("--captions", metavar="FILE", help="CSV / TSV / JSONL of (image, caption[, label]) rows; "
                                                        "image paths relative to --images")
    src.add_argument("--coco", metavar="FILE", help="COCO captions JSON (captions_*.json); images in --images")
    src.add_argument("--hf-dataset", metavar="DIR", help="a `datasets` folder: save_to_disk output or an imagefolder")
    src.add_argument("--webdataset", nargs="+", metavar="SHARD", help="WebDataset .tar shards")
    i.add_argument("--images", metavar="DIR", help="folder of the images (--captions, --coco)")
    i.add_argument("--allow-outside-root", action="store_true",
                   help="permit absolute image paths and '..' / symlinks leading out of --images (or out of the "
                        "--hf-dataset folder)")
    i.add_argument("--coco-instances", metavar="FILE", help="COCO instances JSON: the largest object's category "
                                                            "becomes the image's label")
    i.add_argument("--image-column", default=None, help="column of the image path (default: image, file_name, ...)")
    i.add_argument("--caption-column", default=None, help="column of the caption (default: caption, text, ...)")
    i.add_argument("--label-column", default=None, help="column of a class label (default: label, category, class "
                                                        "if present); labels add a classification task")
    i.add_argument("--delimiter", default=None, help="CSV delimiter (default: tab for .tsv, else comma)")
    i.add_argument("--out", required=True, help="output folder (new or empty)")
    i.add_argument("--name", default=None, help="dataset name (default: the source's folder name)")
    i.add_argument("--directions", default="i2t,t2i", help="i2t, t2i or both (default)")
    i.add_argument("--eval-fraction", type=float, default=0.2, help="share of the images held out (default 0.2)")
    i.add_argument("--eval-candidates", type=int, default=100,
                   help="candidates per MMEB eval row, positive included (default 100; capped by the held-out set)")
    i.add_argument("--judge-negatives", type=int, default=3, help="negatives per judge training record (default 3)")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="skip bad rows and images (counted and reported) instead of stopping at the first")
    i.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT (same-named files replaced)")
    add_config_option(i)
    i.set_defaults(func=_import)

    k = dsub.add_parser("check", help="validate a data file and every image it references, before a long job")
    k.add_argument("input", help="records (.jsonl/.parquet/.json) or MMEB-eval rows (with --mmeb)")
    k.add_argument("--mmeb", action="store_true", help="the file holds MMEB-eval rows")
    k.add_argument("--data-root", default=None, help="folder image paths are relative to (default: the file's folder)")
    k.add_argument("--allow-outside-root", action="store_true", help="permit absolute paths and '..' in image paths")
    k.add_argument("--max-pixels", type=int, default=None, help="largest image allowed (width x height)")
    k.add_argument("--no-images", action="store_true", help="check the file only, not the images")
    add_config_option(k)
    k.set_defaults(func=_check)


def _synth(args) -> int:
    from unime.data.synth import VideoSizes, generate_world, resolve_sizes

    sizes = resolve_sizes(args.size, **{n: getattr(args, n) for n in SIZE_OPTIONS})
    train_clips = 4 * args.video_clips if args.video_train_clips is None else args.video_train_clips
    try:
        video = VideoSizes(eval_clips=args.video_clips, train_clips=train_clips, frames=args.video_frames,
                           size=args.video_size)
    except ValueError as e:
        raise UsageError(str(e), command="data synth") from None
    # a folder that is not a world: FileExistsError, reported as the contract's one line (`cli.failures`)
    summary = generate_world(args.out, seed=args.seed, sizes=sizes, overwrite=args.overwrite,
                             video=video if video.enabled else None, ignore=_owned_names())
    print(summary.describe())
    return 0


def _convert(args) -> int:
    from unime.data.io import SkipReport, iter_records, write_records

    import dataclasses

    skips = SkipReport()
    records = iter_records(args.input, on_error=args.on_error, skips=skips, format=args.from_format)
    if args.dataset:
        records = (r if r.dataset else dataclasses.replace(r, dataset=args.dataset) for r in records)
    n = write_records(records, args.output, format=args.to_format)
    print(f"{args.output}: {n} records")
    if skips.total:
        print(skips.summary())
    return 0


def _check(args) -> int:
    import os

    from unime.data.images import DEFAULT_MAX_PIXELS, ImageLoader
    from unime.data.io import SkipReport, check_images, read_mmeb, read_records

    skips = SkipReport(max_examples=20)
    rows = (read_mmeb if args.mmeb else read_records)(args.input, on_error="skip", skips=skips)
    from unime.data.roots import resolve_data_root

    root = resolve_data_root(args.input, args.data_root)
    n_file_bad = skips.total
    if not args.no_images:
        loader = ImageLoader(root, allow_outside_root=args.allow_outside_root,
                             max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
        rows = check_images(rows, loader, on_error="skip", skips=skips, source=args.input)
    where = "" if args.no_images else f" (image paths resolved against {root})"
    print(f"{args.input}: {len(rows)} good, {n_file_bad} bad rows, {skips.total - n_file_bad} with bad images{where}")
    if skips.total:
        print(skips.summary())
        return 1
    return 0


def _import(args) -> int:
    import re
    from pathlib import Path

    from unime.data import collections as C
    from unime.data.import_collection import ImportOptions, import_collection
    from unime.data.skips import ErrorPolicy, SkipReport

    skips = SkipReport(max_examples=10)
    policy = ErrorPolicy(args.on_error, skips, "import")
    cols = dict(image_column=args.image_column, caption_column=args.caption_column, label_column=args.label_column)
    if (args.captions or args.coco) and not args.images:
        raise UsageError("--captions / --coco need --images DIR", command="data import")
    if args.captions:
        images = C.read_caption_table(args.captions, args.images, delimiter=args.delimiter, policy=policy,
                                      allow_outside_root=args.allow_outside_root, **cols)
        source, origin = {"captions": args.captions, "images": args.images}, Path(args.images).resolve()
        if origin.name in ("images", "imgs", "img"):
            origin = origin.parent
    elif args.coco:
        images = C.read_coco_captions(args.coco, args.images, instances=args.coco_instances, policy=policy,
                                      allow_outside_root=args.allow_outside_root)
        source, origin = {"coco": args.coco, "images": args.images}, Path(args.coco).resolve().parent
    elif args.hf_dataset:
        images = C.read_hf_dataset(args.hf_dataset, policy=policy, allow_outside_root=args.allow_outside_root, **cols)
        source, origin = {"hf_dataset": args.hf_dataset}, Path(args.hf_dataset).resolve()
    else:
        images = C.read_webdataset(args.webdataset, policy=policy, **cols)
        source, origin = {"webdataset": list(args.webdataset)}, Path(args.webdataset[0]).resolve().parent
    name = args.name or re.sub(r"[^A-Za-z0-9_.-]+", "_", origin.name) or "mydata"
    opts = ImportOptions(out=args.out, name=name, directions=tuple(d.strip() for d in args.directions.split(",")
                                                                    if d.strip()),
                         eval_fraction=args.eval_fraction, eval_candidates=args.eval_candidates,
                         judge_negatives=args.judge_negatives, seed=args.seed, on_error=args.on_error,
                         overwrite=args.overwrite, source=source, ignore=tuple(_owned_names()),
                         own_folder=getattr(args, "_owned", None) is not None)
    summary = import_collection(images, opts, skips=skips)  # FileExistsError: the contract's one line
    print(summary.describe())
    if skips.total:
        print(skips.summary())
    return 0


def _owned_names() -> tuple[str, ...]:
    """The output folder's ownership marker and lock (the folder is claimed before the command runs)."""
    from unime.outdir import LOCK_NAME, MARKER_NAME

    return (MARKER_NAME, LOCK_NAME)
