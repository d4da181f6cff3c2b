"""`unime judge`: the judge alone on a pairs file (`score_pairs_file`; `JudgePairsConfig` / `judge_pairs`: the
command's options and call), optionally checked against labels.

A pairs file is JSONL of `{"id"?, "query": item, "candidate": item}` (`unime.data.pairs.read_pairs`). The pairs
are scored in chunks of `PAIRS_PER_CHUNK`, and within a chunk grouped by query, so each query's prefix is run once
and each distinct (query, candidate) pair scored once (`JudgeBackend.score_shards`); the scores are written in input
order. Finished chunks are kept in `.OUT.unime-work/` until OUT is written: a re-run of a killed run resumes there
(`unime.models.chunk_work`), and opens only the images of the pairs left to score (those of the finished chunks are
looked up: opened only if they are scored again after all, before any is scored).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unime.data.atomic import atomic_open
from unime.data.items import Item
from unime.data.pairs import check_pair_images, pair_record, read_pairs
from unime.errors import DataError, same_path_value
from unime.mining.backends import JudgeOptions, JudgeSpec, judge_models, make_backend
from unime.models.chunk_work import ChunkWork, checked_work, done_lines, finished_before, work_digests
from unime.options import on_error_option, option

# pairs per chunk, the unit of resumption: each finished chunk's scores are kept in the work folder beside the output
# (`unime.models.chunk_work`) until the output is written, so a killed run loses at most one chunk's scoring (a 7B
# judge: some minutes) and a re-run of the same command scores only the chunks not done. Queries whose pairs straddle
# two chunks run their prefix once per chunk.
PAIRS_PER_CHUNK = 4096
# `make_backend` options that spread the work without changing a score (left out of the chunks' key)
SPREAD_OPTIONS = ("num_workers", "address", "num_gpus_per_worker")
# what the judge's (and its adapter's) fingerprint keys here: named when a model not on disk is keyed by its name only
SCORED_CHUNKS = "unime judge's record of its finished run and chunks"


@dataclass(kw_only=True)
class JudgePairsConfig(JudgeOptions):
    """Options of `unime judge`: each field declares its option (`unime.options`)."""

    pairs: str = option(help='JSONL of {"id"?, "query": item, "candidate": item}')
    judge: str = option(help="judge checkpoint")
    out: str = option(help='output JSONL of {"id", "score"}, in input order')
    data_root: str | None = option(None, "folder image paths are relative to (default: the pairs' folder)")
    on_error: str = on_error_option("skip bad pairs and pairs with a bad image (counted and reported; their ids are "
                                    "missing from the output) instead of stopping at the first")
    label_column: str | None = option(None, "the pairs carry a relevance label under KEY (> 0 = relevant): evaluate "
                                      "the judge — AUC, accuracy, score spread printed and in OUT.metrics.json, "
                                      "calibration plot OUT.calibration.png", metavar="KEY")
    backend_options: dict = option(factory=dict, cli=False)  # `make_backend`'s (`BackendOptions.for_backend`)


def judge_pairs(cfg: JudgePairsConfig, *, skips=None, overwrite: bool = False) -> int | dict:
    """`unime judge`: `score_pairs_file` with the command's options (image paths relative to `cfg.data_root`,
    default the pairs file's folder or the root recorded beside it)."""
    from unime.data.roots import resolve_data_root

    spec = cfg.judge_spec(cfg.judge, resolve_data_root(cfg.pairs, cfg.data_root))
    return score_pairs_file(cfg.pairs, cfg.out, spec, backend=cfg.backend, backend_options=cfg.backend_options,
                            on_error=cfg.on_error, skips=skips, label_column=cfg.label_column, overwrite=overwrite)


def score_pairs_file(pairs_path: str, out_path: str, spec: JudgeSpec, *, backend: str = "local",
                     backend_options: dict | None = None, on_error: str = "raise", skips=None,
                     label_column: str | None = None, overwrite: bool = False) -> int | dict:
    """Score every pair of a JSONL pairs file; write `{"id", "score"}` lines in input order (atomic).
    Every image is opened first (a resume: those of the pairs left to score); under `on_error="skip"` bad pairs are
    left out (and counted). Scored chunk by chunk, resuming from the chunks an interrupted run of the same pairs,
    judge and settings left (`pairs_work_key`).

    With `label_column`: the lines also carry `label`, and the judge is evaluated on the labels
    (`unime.mining.judge_check`): OUT with suffix `.metrics.json` and `.calibration.png` are written and
    the metrics dict is returned (else the number of pairs).

    A run that finished earlier with the same options and inputs, OUT (and its metrics and plot) unchanged since, does
    nothing and says so before the judge loads (`unime.models.chunk_work.finished_before`; `pairs_done_key`), unless
    `overwrite`."""
    from unime.data.io import ImageChecker
    from unime.models.loading import checkpoint_image_loader

    # the judge's processor's limits, checked here (a bad pair named, or skipped under the skip policy)
    checker = ImageChecker(checkpoint_image_loader(judge_models(spec.path, backend), spec.budget, spec.data_root,
                                                   allow_outside_root=spec.allow_outside_root, video=spec.sampling))
    digests = work_digests(out_path)  # a re-run of a killed (or finished) run reads no image again for its key
    models = judge_keys(spec)  # looked up once: a judge not on disk said once to key the run by its name (QA: twice)
    # before any image is opened
    done_key = pairs_done_key(pairs_path, spec, backend, backend_options, checker, digests, on_error=on_error,
                              label_column=label_column, models=models)
    if finished_before(out_path, "judge", done_key, overwrite=overwrite, again="scores again"):
        if label_column:
            stem = Path(out_path).with_suffix("")
            return json.loads(Path(f"{stem}.metrics.json").read_text(encoding="utf-8"))
        with open(out_path, "rb") as fh:
            return sum(1 for _ in fh)
    done, lines = done_lines(out_path), []  # the pairs a killed run scored: their images not opened again
    read = dict(on_error=on_error, skips=skips, images=checker, files_only=done, lines=lines)
    if label_column:
        pairs, labels = read_pairs(pairs_path, label_column=label_column, **read)
    else:
        pairs, labels = read_pairs(pairs_path, **read), None
    if not pairs:
        raise DataError("no pairs to score", source=pairs_path)

    def make_work(rows):
        key = pairs_work_key([r[0] for r in rows], spec, backend, backend_options, checker.loader, digests=digests,
                             models=models)
        return ChunkWork(out_path, "judge", key, rows=len(rows), per_chunk=PAIRS_PER_CHUNK, digests=digests,
                         lines=[r[1] for r in rows])

    # the pairs of `done` to be scored after all (the inputs or options changed): their images opened now
    work, rows = checked_work(list(zip(pairs, lines, labels or [None] * len(pairs))), make_work,
                              line_of=lambda r: r[1], unchecked=done, on_error=on_error, skips=skips,
                              source=pairs_path, check=lambda r: check_pair_images(checker, r[0], source=pairs_path,
                                                                                   record=pair_record(r[1], r[0][0])))
    if len(rows) < len(pairs):
        if not rows:
            raise DataError("no pairs to score", source=pairs_path)
        pairs = [r[0] for r in rows]
        labels = None if labels is None else [r[2] for r in rows]
    work.open()
    todo = work.todo()
    if todo:
        chunk_groups: dict[int, list[tuple[Item, list[Item]]]] = {}  # the chunks being scored

        def chunks():
            for i in todo:
                chunk_groups[i] = query_groups(pairs[work.span(i)])
                yield i, chunk_groups[i]

        with make_backend(backend, spec, **(backend_options or {})) as be:
            for i, results in be.score_shards(chunks()):
                lookup = {q.key: {c.key: float(s) for c, s in zip(cands, sc)}
                          for (q, cands), sc in zip(chunk_groups.pop(i), results)}
                work.save(i, np.array([lookup[q.key][c.key] for _, q, c in pairs[work.span(i)]], dtype=np.float64))
    scores = [float(s) for s in work.load_all()]
    with atomic_open(out_path) as fh:
        for i, (rid, q, c) in enumerate(pairs):
            row = {"id": rid, "score": scores[i]}
            if labels is not None:
                row["label"] = labels[i]
            fh.write(json.dumps(row) + "\n")
    if labels is None:
        work.finish(done_key=done_key)  # the output written: its chunks go, the record of the finished run stays
        return len(pairs)
    from unime.mining.judge_check import binary_metrics, calibration_bins, plot_calibration

    metrics = binary_metrics(labels, scores)
    metrics["calibration"] = calibration_bins(labels, scores)
    stem = Path(out_path).with_suffix("")
    with atomic_open(f"{stem}.metrics.json") as fh:
        json.dump(metrics, fh, indent=1)
    plot_calibration(labels, scores, f"{stem}.calibration.png", title=f"judge {Path(spec.path).name}")
    work.finish(done_key=done_key, companions=(f"{stem}.metrics.json", f"{stem}.calibration.png"))
    return metrics


def query_groups(pairs: list[tuple[Any, Item, Item]]) -> list[tuple[Item, list[Item]]]:
    """The judge groups of `pairs`: one per query (its prefix run once), each distinct candidate once, in first-seen
    order."""
    groups: dict[str, tuple[Item, list[Item]]] = {}
    for _, q, c in pairs:
        g = groups.setdefault(q.key, (q, []))
        if all(x.key != c.key for x in g[1]):
            g[1].append(c)
    return list(groups.values())


def pairs_done_key(pairs_path: str, spec: JudgeSpec, backend: str, backend_options: dict | None, checker, digests,
                   *, on_error: str, label_column: str | None, models: dict[str, str | None] | None = None
                   ) -> dict[str, Any] | None:
    """What `score_pairs_file`'s output depends on, told before the judge loads (`finished_before`): the pairs file's
    bytes, the key of its pairs' scores (`pairs_work_key`: the judge, its settings, the bytes of the images, looked
    up, none opened; known from `digests`), the judge's name (the plot's title), `on_error` and `label_column`. None
    when it cannot be told (an image not readable: the check names it). `models`: the run's `judge_keys`."""
    from unime.data.image_digests import file_sha1
    from unime.data.skips import SkipReport
    from unime.models.chunk_work import EVERY_LINE

    try:
        pairs = read_pairs(pairs_path, on_error="skip", skips=SkipReport(), images=checker, files_only=EVERY_LINE,
                           label_column=label_column)
        return {"pairs_sha1": file_sha1(pairs_path), "on_error": on_error, "label_column": label_column,
                "judge_name": Path(spec.path).name,
                "scores": pairs_work_key(pairs[0] if label_column else pairs, spec, backend, backend_options,
                                         checker.loader, digests=digests, models=models)}
    except (OSError, DataError):
        return None


def pairs_work_key(pairs: list[tuple[Any, Item, Item]], spec: JudgeSpec, backend: str, backend_options: dict | None,
                   loader, *, digests=None, models: dict[str, str | None] | None = None) -> dict[str, Any]:
    """What the scores of `pairs` depend on, the key of `score_pairs_file`'s finished chunks: the pairs scored (their
    items, in order) and the bytes of their images, the judge by its content, the backend and its options, and the
    judge's settings that change scores (not how many continuations a forward runs or what its image cache keeps;
    the attention kernel is the machine's choice, as for `unime mine`: `unime.mining.manifest.FREE_OPTIONS`). The
    image paths are resolved by `loader`, the one the pairs were checked with, their bytes known from `digests` (the
    work folder's, `unime.models.chunk_work.work_digests`; default: each image read). `models`: the judge's and its
    adapter's fingerprints, `judge_keys(spec)` (default: looked up here)."""
    from unime.data.image_digests import ImageDigests, digest_items
    from unime.models.loading import canonical_dtype

    listed = hashlib.sha1()
    for _, q, c in pairs:
        listed.update(f"{q.key}\t{c.key}\n".encode())
    return {"pairs": listed.hexdigest(),
            "images": digest_items((it for _, q, c in pairs for it in (q, c)), loader,
                                  digests if digests is not None else ImageDigests()),
            **(models if models is not None else judge_keys(spec)),
            "backend": backend,
            "backend_options": same_path_value({k: v for k, v in (backend_options or {}).items()
                                                if k not in SPREAD_OPTIONS}),
            "device": spec.device, "dtype": canonical_dtype(spec.dtype),
            "data_root": str(Path(spec.data_root).resolve()) if spec.data_root else None,
            "allow_outside_root": spec.allow_outside_root, "image_budget": spec.image_budget,
            "video_sampling": spec.video_sampling}


def judge_keys(spec: JudgeSpec) -> dict[str, str | None]:
    """The judge by its content (`judge_fingerprint`) and its adapter's (`model_fingerprint`, None without one), as
    `pairs_work_key` keys them: a run looks them up once, and a model not on disk is said once to key `SCORED_CHUNKS`
    by its name (QA: `unime judge` said it for its finished run's key and again for its chunks')."""
    from unime.mining.manifest import judge_fingerprint
    from unime.models.embedding_cache import model_fingerprint

    return {"judge": judge_fingerprint(spec.path, keyed=SCORED_CHUNKS),
            "adapter": model_fingerprint(spec.adapter_path, keyed=SCORED_CHUNKS) if spec.adapter_path else None}
