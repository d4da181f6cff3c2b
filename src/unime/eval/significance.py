"""Uncertainty of evaluation numbers: a t-interval over training seeds and a paired, stratified bootstrap
over eval queries between two models.

- `t_interval(values)`: mean and half-width of the two-sided Student-t confidence interval over seeds,
  mean ± t_{1−α/2, n−1} · s / √n (s = sample std); undefined (nan) for fewer than two values.
- `paired_bootstrap(a, b)`: the MMEB overall score is the mean over datasets of each dataset's mean
  per-query hit, so the difference of two models' overall scores is the mean over datasets of the mean
  per-query difference d = a − b (the same queries, paired). The bootstrap resamples each dataset's
  queries with replacement (stratified: every replicate keeps each dataset's size), recomputes that
  statistic, and takes the percentile interval; "significant at 95 %" = the interval excludes 0.
  Per-query values may be a model's hit averaged over seeds (seed noise then stays in the values).
- `per_query_hits(result_dir)`: the per-query hits of the MMEB-format tasks of a `unime eval` result
  folder (``tasks/<task>.json``, ``per_query[*].hit``), keyed by task and query id.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from unime.errors import DataError


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the t confidence interval of the mean; half-width nan for n < 2."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) < 2:
        return float(v.mean()), float("nan")
    half = float(t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return float(v.mean()), half


def _aligned(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]]) -> dict[str, np.ndarray]:
    """Per task the per-query differences a − b over the queries both sides have (tasks in both only)."""
    out = {}
    for task in sorted(set(a) & set(b)):
        ids = [q for q in a[task] if q in b[task]]
        if ids:
            out[task] = np.array([a[task][q] - b[task][q] for q in ids], dtype=np.float64)
    return out


def bootstrap_replicates(diffs: Mapping[str, np.ndarray], *, n_resamples: int = 10_000, seed: int = 0) -> np.ndarray:
    """Replicates of mean over tasks of (mean of the task's resampled per-query differences)."""
    rng = np.random.default_rng(seed)
    total = np.zeros(n_resamples)
    for task in sorted(diffs):
        d = np.asarray(diffs[task], dtype=np.float64)
        idx = rng.integers(0, len(d), size=(n_resamples, len(d)))
        total += d[idx].mean(axis=1)
    return total / max(len(diffs), 1)


def paired_bootstrap(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]], *,
                     n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Paired stratified bootstrap of overall(a) − overall(b) over the queries both have (see module doc).
    Returns {diff, low, high, significant, p_value, tasks, queries}; diff etc. are fractions."""
    diffs = _aligned(a, b)
    if not diffs:
        raise ValueError("no task with queries in common: nothing to compare")
    observed = float(np.mean([d.mean() for d in diffs.values()]))
    reps = bootstrap_replicates(diffs, n_resamples=n_resamples, seed=seed)
    alpha = 1 - confidence
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    # two-sided bootstrap p-value: twice the share of replicates on the far side of 0 (capped at 1)
    p = min(1.0, 2 * min(float((reps <= 0).mean()), float((reps >= 0).mean())))
    return {"diff": observed, "low": float(low), "high": float(high), "significant": bool(low > 0 or high < 0),
            "p_value": p, "confidence": confidence, "tasks": len(diffs),
            "queries": int(sum(len(d) for d in diffs.values())), "n_resamples": n_resamples}


def per_query_hits(result_dir: str | Path) -> dict[str, dict[str, float]]:
    """{task: {query id: hit (0/1)}} for the MMEB-format tasks of a `unime eval` result folder. A task whose
    per-query results repeat an id (written before ids were unique per task) is a `DataError`."""
    from unime.eval.report import _safe_name

    root = Path(result_dir)
    summary_path = root / "summary.json"
    if not summary_path.is_file():
        raise DataError("not a result folder (no summary.json)", source=str(root))
    info = json.loads(summary_path.read_text()).get("task_info", {})
    out: dict[str, dict[str, float]] = {}
    for task, meta in info.items():
        if meta.get("format") != "mmeb":
            continue
        path = root / "tasks" / f"{_safe_name(task)}.json"
        if not path.is_file():
            raise DataError("task result missing", source=str(path))
        rows = json.loads(path.read_text()).get("per_query")
        if rows is None:
            raise DataError("no per-query results", source=str(path), field="per_query")
        hits = {str(r["id"]): float(bool(r["hit"])) for r in rows}
        if len(hits) != len(rows):  # a folder written before query names were unique per task (`QueryNames`)
            raise DataError(f"task {task!r}: {len(rows) - len(hits)} of {len(rows)} per-query results share an id "
                            "with another, so queries cannot be paired; evaluate again", source=str(path),
                            field="per_query")
        out[task] = hits
    return out


def mean_over_seeds(runs: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Per task and query, the mean of the per-query values over runs (e.g. seeds) that have it."""
    out: dict[str, dict[str, float]] = {}
    for task in sorted({t for r in runs for t in r}):
        acc: dict[str, list[float]] = {}
        for r in runs:
            for q, v in r.get(task, {}).items():
                acc.setdefault(q, []).append(v)
        out[task] = {q: float(np.mean(v)) for q, v in acc.items()}
    return out
