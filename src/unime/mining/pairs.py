"""`unime judge`: the judge alone on a pairs file (`score_pairs_file`; `JudgePairsConfig` / `judge_pairs`: the
command's options and call), optionally checked against labels.

A pairs file is JSONL of `{"id"?, "query": item, "candidate": item}` (`unime.data.pairs.read_pairs`). The pairs
are grouped by query, so each query's prefix is run once and each distinct (query, candidate) pair scored once
(`JudgeBackend.score_groups`); the scores are written in input order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from unime.data.atomic import atomic_open
from unime.data.items import Item
from unime.data.pairs import read_pairs
from unime.errors import DataError
from unime.mining.backends import JudgeOptions, JudgeSpec, judge_models, make_backend
from unime.options import on_error_option, option


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


def judge_pairs(cfg: JudgePairsConfig, *, skips=None) -> int | dict:
    """`unime judge`: `score_pairs_file` with the command's options (image paths relative to `cfg.data_root`,
    default the pairs file's folder or the root recorded beside it)."""
    from unime.data.roots import resolve_data_root

    spec = cfg.judge_spec(cfg.judge, resolve_data_root(cfg.pairs, cfg.data_root))
    return score_pairs_file(cfg.pairs, cfg.out, spec, backend=cfg.backend, backend_options=cfg.backend_options,
                            on_error=cfg.on_error, skips=skips, label_column=cfg.label_column)


def score_pairs_file(pairs_path: str, out_path: str, spec: JudgeSpec, *, backend: str = "local",
                     backend_options: dict | None = None, on_error: str = "raise", skips=None,
                     label_column: str | None = None) -> int | dict:
    """Score every pair of a JSONL pairs file; write `{"id", "score"}` lines in input order (atomic).
    Every image is opened first; under `on_error="skip"` bad pairs are left out (and counted).

    With `label_column`: the lines also carry `label`, and the judge is evaluated on the labels
    (`unime.mining.judge_check`): OUT with suffix `.metrics.json` and `.calibration.png` are written and
    the metrics dict is returned (else the number of pairs)."""
    from unime.data.io import ImageChecker
    from unime.models.loading import checkpoint_image_loader

    # the judge's processor's limits, checked here (a bad pair named, or skipped under the skip policy)
    checker = ImageChecker(checkpoint_image_loader(judge_models(spec.path, backend), spec.budget, spec.data_root,
                                                   allow_outside_root=spec.allow_outside_root, video=spec.sampling))
    if label_column:
        pairs, labels = read_pairs(pairs_path, on_error=on_error, skips=skips, images=checker,
                                   label_column=label_column)
    else:
        pairs, labels = read_pairs(pairs_path, on_error=on_error, skips=skips, images=checker), None
    if not pairs:
        raise DataError("no pairs to score", source=pairs_path)
    groups: dict[str, tuple[Item, list[Item]]] = {}
    for _, q, c in pairs:
        g = groups.setdefault(q.key, (q, []))
        if all(x.key != c.key for x in g[1]):
            g[1].append(c)
    with make_backend(backend, spec, **(backend_options or {})) as be:
        group_list = list(groups.values())
        results = be.score_groups(group_list)
    lookup = {q.key: {c.key: float(s) for c, s in zip(cands, sc)} for (q, cands), sc in zip(group_list, results)}
    scores = [lookup[q.key][c.key] for _, q, c in pairs]
    with atomic_open(out_path) as fh:
        for i, (rid, q, c) in enumerate(pairs):
            row = {"id": rid, "score": scores[i]}
            if labels is not None:
                row["label"] = labels[i]
            fh.write(json.dumps(row) + "\n")
    if labels is None:
        return len(pairs)
    from unime.mining.judge_check import binary_metrics, calibration_bins, plot_calibration

    metrics = binary_metrics(labels, scores)
    metrics["calibration"] = calibration_bins(labels, scores)
    stem = Path(out_path).with_suffix("")
    with atomic_open(f"{stem}.metrics.json") as fh:
        json.dump(metrics, fh, indent=1)
    plot_calibration(labels, scores, f"{stem}.calibration.png", title=f"judge {Path(spec.path).name}")
    return metrics
