"""Whether a mining run's judge labels can be trusted, in three figures printed by `unime mine` and kept in
`stats.json` (``label_health``) and `report.md`:

- fallback share: queries none of whose K candidates survived the false-negative filter (their negatives
  are random draws scored 1.0, SPEC 1.4, or the query is dropped: under `--fallback drop`, or with no candidate
  retrieved at all; the line names both counts when any was dropped). The paper sees < 1 %; above
  `FALLBACK_WARN` it warns — a judge that scores everything near the positive's score (e.g. one that learned the
  Yes/No base rate) pushes almost every query there.
- filter share: retrieved candidates dropped as false negatives.
- judge score spread: the 5th / 50th / 95th percentiles of the candidates' scores, the standard deviation
  of every judged score (positives and candidates), and the separation = mean positive score − mean
  candidate score. A standard deviation near 0 means the judge outputs a constant (e.g. its training
  pairs' Yes rate); a separation near or below 0 means it does not score positives above what retrieval
  brings back — both make the soft labels noise.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

FALLBACK_WARN = 0.10
SPREAD_WARN = 0.02       # std of all judged scores below this: a constant judge
SEPARATION_WARN = 0.05   # mean positive − mean candidate score below this


def label_health(sampling: dict[str, Any], audit_rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Figures and warnings from the sampling statistics (`SamplingStats.to_dict()`) and the audit rows."""
    counts = sampling["counts"]
    queries = sum(int(v) for v in counts.values())
    dropped = int(counts.get("dropped", 0))  # no survivor under --fallback drop, or no candidate at all
    fallback = int(counts.get("fallback", 0)) + dropped
    cand = sum(sampling["candidates"].values())
    filtered = sum(sampling["false_negatives"].values())
    scores = np.asarray([r["judge_score"] for r in audit_rows], dtype=np.float64)
    pos = {}
    for r in audit_rows:
        pos.setdefault(r["query_index"], r["positive_score"])
    pos_scores = np.asarray(list(pos.values()), dtype=np.float64)
    out: dict[str, Any] = {
        "queries": queries, "fallback_queries": fallback, "dropped_queries": dropped,
        "fallback_share": fallback / queries if queries else 0.0,
        "candidates": int(cand), "filtered": int(filtered), "filter_share": filtered / cand if cand else 0.0,
    }
    if scores.size:
        p5, p50, p95 = (float(x) for x in np.percentile(scores, [5, 50, 95]))
        everything = np.concatenate([scores, pos_scores])
        out.update({"score_p5": p5, "score_median": p50, "score_p95": p95, "score_std": float(everything.std()),
                    "positive_score_mean": float(pos_scores.mean()),
                    "separation": float(pos_scores.mean() - scores.mean())})
    warnings = []
    if out["fallback_share"] > FALLBACK_WARN:
        warnings.append(f"{100 * out['fallback_share']:.1f} % of the queries fell back to random negatives scored "
                        f"1.0 (no candidate survived the filter; the paper sees < 1 %). The judge likely scores most "
                        "candidates at or above the positive: check it (`unime judge --pairs FILE --label-column "
                        "label` reports its AUC) before training a soft-label embedder on these records")
    if "score_std" in out and out["score_std"] < SPREAD_WARN:
        warnings.append(f"judge scores barely vary (standard deviation {out['score_std']:.4f} over positives and "
                        "candidates): the judge may be predicting a constant, e.g. its training pairs' Yes rate")
    elif "separation" in out and out["separation"] < SEPARATION_WARN:
        warnings.append(f"the judge scores positives only {out['separation']:+.3f} above the retrieved candidates on "
                        "average: it does not tell them apart")
    out["warnings"] = warnings
    return out


def format_health(h: dict[str, Any]) -> str:
    dropped = int(h.get("dropped_queries", 0))
    share = f"{100 * h['fallback_share']:.1f} %"
    line = (f"fallback {h['fallback_queries']}/{h['queries']} queries ({share})" if not dropped else
            f"fallback or dropped {h['fallback_queries']}/{h['queries']} queries ({share}: fallback "
            f"{h['fallback_queries'] - dropped}, dropped {dropped})")
    line += f", filtered {h['filtered']}/{h['candidates']} candidates ({100 * h['filter_share']:.1f} %)"
    if "score_std" in h:
        line += (f"; judge: candidate scores p5 {h['score_p5']:.3f} / median {h['score_median']:.3f} / p95 "
                 f"{h['score_p95']:.3f}, mean positive {h['positive_score_mean']:.3f}, separation "
                 f"{h['separation']:+.3f}, std {h['score_std']:.3f}")
    return line
