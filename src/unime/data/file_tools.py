"""`unime data convert` (records between unime JSONL, Parquet and UniME-V2 JSON) and `unime data check` (a data
file and every image it references, before a long job): their options (`unime.options`) and their work."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from unime.options import option

FORMATS = ["jsonl", "parquet", "unime_v2_json"]


@dataclass(kw_only=True)
class ConvertConfig:
    input: str = option(help="input file (.jsonl, .parquet, .json = UniME-V2 list)", positional=True)
    output: str = option(help="output file; the format follows its extension unless --to is given", positional=True)
    from_format: str | None = option(None, "input format (default: from the extension)", flag="--from",
                                     choices=FORMATS)
    to_format: str | None = option(None, "output format (default: from the extension)", flag="--to", choices=FORMATS)
    on_error: str = option("raise", "skip bad records (counted and reported) instead of stopping at the first",
                           choices=["raise", "skip"])
    dataset: str | None = option(None, "dataset name given to records that have none (the UniME-V2 JSON carries "
                                 "none)", metavar="NAME")


def convert_records(cfg: ConvertConfig):
    """Returns (records written, the `SkipReport` of the records left out). The records keep their image paths, so
    the input's data root (`unime.data.roots.resolve_data_root`) is recorded beside the output
    (`record_data_root`): the converted file finds the same images without --data-root."""
    from unime.data.io import SkipReport, iter_records, write_records
    from unime.data.roots import record_data_root, resolve_data_root

    skips = SkipReport()
    data_root = resolve_data_root(cfg.input)
    records = iter_records(cfg.input, on_error=cfg.on_error, skips=skips, format=cfg.from_format)
    if cfg.dataset:
        records = (r if r.dataset else dataclasses.replace(r, dataset=cfg.dataset) for r in records)
    n = write_records(records, cfg.output, format=cfg.to_format)
    record_data_root(os.path.dirname(os.path.abspath(cfg.output)), data_root, written=[cfg.output])
    return n, skips


@dataclass(kw_only=True)
class CheckConfig:
    input: str = option(help="records (.jsonl/.parquet/.json) or MMEB-eval rows (with --mmeb)", positional=True)
    mmeb: bool = option(False, "the file holds MMEB-eval rows")
    data_root: str | None = option(None, "folder image paths are relative to (default: the file's folder)")
    allow_outside_root: bool = option(False, "permit absolute paths and '..' in image paths")
    max_pixels: int | None = option(None, "largest image allowed (width x height)")
    no_images: bool = option(False, "check the file only, not the images")


def check_file(cfg: CheckConfig) -> tuple[str, int]:
    """Every row of the file read (bad ones skipped) and, unless `no_images`, every image opened. Returns the
    report (a summary line, then examples of what is bad) and the number of bad rows."""
    from unime.data.images import DEFAULT_MAX_PIXELS, ImageLoader
    from unime.data.io import SkipReport, check_images, read_mmeb, read_records
    from unime.data.roots import resolve_data_root

    skips = SkipReport(max_examples=20)
    rows = (read_mmeb if cfg.mmeb else read_records)(cfg.input, on_error="skip", skips=skips)
    root = resolve_data_root(cfg.input, cfg.data_root)
    n_file_bad = skips.total
    if not cfg.no_images:
        loader = ImageLoader(root, allow_outside_root=cfg.allow_outside_root,
                             max_pixels=cfg.max_pixels or DEFAULT_MAX_PIXELS)
        rows = check_images(rows, loader, on_error="skip", skips=skips, source=cfg.input)
    where = "" if cfg.no_images else f" (image paths resolved against {root})"
    line = f"{cfg.input}: {len(rows)} good, {n_file_bad} bad rows, {skips.total - n_file_bad} with bad images{where}"
    return line + (f"\n{skips.summary()}" if skips.total else ""), skips.total
