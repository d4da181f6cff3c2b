"""`unime data ...`: generate the demo world; convert and check data files."""

from __future__ import annotations

from unime.cli import add_config_option

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
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_config_option(s)
    s.set_defaults(func=_synth)

    c = dsub.add_parser("convert", help="convert training records between unime JSONL, Parquet and UniME-V2 JSON")
    c.add_argument("input", help="input file (.jsonl, .parquet, .json = UniME-V2 list)")
    c.add_argument("output", help="output file; the format follows its extension unless --to is given")
    c.add_argument("--from", dest="from_format", default=None, choices=["jsonl", "parquet", "unime_v2_json"])
    c.add_argument("--to", dest="to_format", default=None, choices=["jsonl", "parquet", "unime_v2_json"])
    c.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="skip bad records (counted and reported) instead of stopping at the first")
    add_config_option(c)
    c.set_defaults(func=_convert)

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
    from unime.data.synth import generate_world, resolve_sizes

    sizes = resolve_sizes(args.size, **{n: getattr(args, n) for n in SIZE_OPTIONS})
    try:
        summary = generate_world(args.out, seed=args.seed, sizes=sizes, overwrite=args.overwrite)
    except FileExistsError as e:
        print(f"unime data synth: {e}")
        return 2
    print(summary.describe())
    return 0


def _convert(args) -> int:
    from unime.data.io import SkipReport, iter_records, write_records

    skips = SkipReport()
    records = iter_records(args.input, on_error=args.on_error, skips=skips, format=args.from_format)
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
    root = args.data_root or os.path.dirname(os.path.abspath(args.input))
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
