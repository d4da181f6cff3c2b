"""`unime data ...`: generate the demo world; convert, import and check data files. This module only parses
options (declared on the stages' configs) and calls the stage functions."""

from __future__ import annotations

from unime.cli import add_config_option
from unime.cli.dataclass_options import add_options, config_from_args
from unime.errors import UsageError


def register(sub) -> None:
    from unime.data.collections import CollectionSource
    from unime.data.file_tools import CheckConfig, ConvertConfig
    from unime.data.import_collection import ImportOptions
    from unime.data.synth import SynthConfig, WorldSizes

    p = sub.add_parser("data", help="generate the demo world; convert and check data files")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")

    s = dsub.add_parser("synth", help="generate the deterministic demo world (training records + MMEB-format eval)")
    add_options(s, SynthConfig, WorldSizes, groups=("video",))
    add_config_option(s)
    s.set_defaults(func=_synth, _before_claim=_synth_config)

    c = dsub.add_parser("convert", help="convert training records between unime JSONL, Parquet and UniME-V2 JSON")
    add_options(c, ConvertConfig)
    add_config_option(c)
    c.set_defaults(func=_convert)

    i = dsub.add_parser(
        "import", help="import a captioned-image collection: training, judge and oracle records + MMEB eval tasks",
        description="Read a folder of images + a captions file (CSV/TSV/JSONL), COCO captions JSON, a local "
                    "`datasets` folder (save_to_disk or imagefolder) or WebDataset shards, and write OUT/train/"
                    "records.jsonl (datasets NAME_i2t, NAME_t2i), OUT/train/judge.jsonl, OUT/train/qrels.jsonl, "
                    "OUT/eval/mmeb/*.jsonl and OUT/eval_tasks.yaml for a held-out split. Later commands find the "
                    "images without --data-root.")
    add_options(i, CollectionSource, ImportOptions)
    add_config_option(i)
    i.set_defaults(func=_import)

    k = dsub.add_parser("check", help="validate a data file and every image it references, before a long job")
    add_options(k, CheckConfig, groups=("video",))
    add_config_option(k)
    k.set_defaults(func=_check)


def _synth_config(args):
    """The command's config; its world and video sizes checked (a size out of range: one line, `UsageError`), also
    before --out is claimed (`unime.cli.main`)."""
    from dataclasses import fields

    from unime.data.synth import SynthConfig, WorldSizes, resolve_sizes

    cfg = config_from_args(SynthConfig, args, sizes={f.name: getattr(args, f.name) for f in fields(WorldSizes)})
    try:
        resolve_sizes(cfg.size, **cfg.sizes)
        cfg.video()
    except ValueError as e:
        raise UsageError(str(e), command="data synth") from None
    return cfg


def _synth(args) -> int:
    from unime.data.synth import synth_world

    cfg = _synth_config(args)
    # a folder that is not a world: FileExistsError, reported as the contract's one line (`cli.failures`)
    print(synth_world(cfg, ignore=_owned_names()).describe())
    return 0


def _convert(args) -> int:
    from unime.data.file_tools import ConvertConfig, convert_records

    n, skips = convert_records(config_from_args(ConvertConfig, args))
    print(f"{args.output}: {n} records")
    if skips.total:
        print(skips.summary())
    return 0


def _check(args) -> int:
    from unime.data.file_tools import CheckConfig, check_file

    report, bad = check_file(config_from_args(CheckConfig, args))
    print(report)
    return 1 if bad else 0


def _import(args) -> int:
    from unime.data.collections import CollectionSource
    from unime.data.import_collection import ImportOptions, import_from_source
    from unime.data.skips import SkipReport, shown_on_failure

    skips = SkipReport(max_examples=10)
    opts = config_from_args(ImportOptions, args, ignore=tuple(_owned_names()),
                            own_folder=getattr(args, "_owned", None) is not None)
    # a non-empty OUT that is not an earlier import: FileExistsError, reported as the contract's one line
    with shown_on_failure(skips):  # what was skipped before the import failed (too few images left, ...)
        summary = import_from_source(config_from_args(CollectionSource, args), opts, skips=skips)
    print(summary.describe())
    if skips.total:
        print(skips.summary())
    return 0


def _owned_names() -> tuple[str, ...]:
    """The output folder's ownership marker and lock (the folder is claimed before the command runs)."""
    from unime.outdir import LOCK_NAME, MARKER_NAME

    return (MARKER_NAME, LOCK_NAME)
