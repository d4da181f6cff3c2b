"""Does a Yes/No judge tell matches from non-matches? Figures on labelled pairs, used by `unime train judge`
(held-out pairs, at every evaluation step) and `unime judge --pairs FILE --label-column COL`.

- ROC-AUC of P(Yes) for the labels (0.5 = no better than chance, whatever the threshold);
- accuracy at P(Yes) > 0.5, and the accuracy of always answering the majority label;
- spread of P(Yes): standard deviation and 5th / 95th percentiles, mean on positives and on negatives.

`verdict()` names the failure seen in practice: a judge whose P(Yes) sits at its training pairs' Yes rate
for every pair (the base rate) has learned the label prior, not the task; mining with it sends most queries
to the random fallback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unime.mining.report import roc_auc, within_query_auc

CONSTANT_STD = 0.02   # P(Yes) standard deviation below this: a constant judge
WEAK_AUC = 0.6        # held-out AUC below this: the judge does not separate the labels


def binary_metrics(labels: Sequence[float], scores: Sequence[float], *, base_rate: float | None = None,
                   groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """Metrics of scores P(Yes) against labels (relevant when > 0). `base_rate`: the Yes share of the
    training pairs, reported beside the mean score. `groups` (one id per pair, e.g. its record): also the
    within-group AUC (`unime.mining.report.within_query_auc`), the ordering the false-negative filter uses."""
    y = np.asarray(labels, dtype=np.float64) > 0
    s = np.asarray(scores, dtype=np.float64)
    if y.size == 0:
        raise ValueError("no labelled pairs")
    majority = max(y.mean(), 1 - y.mean())
    out: dict[str, Any] = {
        "pairs": int(y.size), "positives": int(y.sum()), "auc": roc_auc(y, s),
        "accuracy": float(np.mean((s > 0.5) == y)), "majority_accuracy": float(majority),
        "score_mean": float(s.mean()), "score_std": float(s.std()),
        "score_p5": float(np.percentile(s, 5)), "score_p95": float(np.percentile(s, 95)),
        "score_mean_positive": float(s[y].mean()) if y.any() else None,
        "score_mean_negative": float(s[~y].mean()) if (~y).any() else None,
    }
    if base_rate is not None:
        out["base_rate"] = float(base_rate)
    if groups is not None:
        out["within_query_auc"] = within_query_auc(list(groups), y, s)["auc"]
    out["warnings"] = verdict(out)
    return out


def verdict(m: dict[str, Any]) -> list[str]:
    """Warnings for the metrics of `binary_metrics`."""
    warnings = []
    base = m.get("base_rate")
    if m["score_std"] < CONSTANT_STD:
        at = f" (the training pairs' Yes rate is {base:.3f})" if base is not None else ""
        warnings.append(f"P(Yes) is nearly constant ({m['score_mean']:.3f} ± {m['score_std']:.4f}){at}: the judge "
                        "gives every pair the same score — at best the base rate of its labels, nothing about the "
                        "pair; do not mine with it")
    elif m["auc"] is not None and m["auc"] < WEAK_AUC:
        warnings.append(f"AUC {m['auc']:.3f} on labelled pairs (0.5 = chance): the judge barely separates matches "
                        "from non-matches; do not mine with it")
    return warnings


def format_metrics(m: dict[str, Any]) -> str:
    auc = "n/a (one class only)" if m["auc"] is None else f"{m['auc']:.3f}"
    line = (f"AUC {auc}, accuracy {m['accuracy']:.3f} (majority {m['majority_accuracy']:.3f}), P(Yes) mean "
            f"{m['score_mean']:.3f} ± {m['score_std']:.3f} [p5 {m['score_p5']:.3f}, p95 {m['score_p95']:.3f}]")
    if m.get("score_mean_positive") is not None and m.get("score_mean_negative") is not None:
        line += f", positives {m['score_mean_positive']:.3f} vs negatives {m['score_mean_negative']:.3f}"
    if m.get("base_rate") is not None:
        line += f", training Yes rate {m['base_rate']:.3f}"
    if m.get("within_query_auc") is not None:
        line += f", within-query AUC {m['within_query_auc']:.3f}"
    return f"{m['pairs']} pairs: {line}"


def calibration_bins(labels: Sequence[float], scores: Sequence[float], bins: int = 10) -> list[dict[str, Any]]:
    """Equal-width bins of P(Yes): count, mean score and share of positive labels in each non-empty bin."""
    y = np.asarray(labels, dtype=np.float64) > 0
    s = np.asarray(scores, dtype=np.float64)
    idx = np.minimum((s * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        if m.any():
            out.append({"bin": [b / bins, (b + 1) / bins], "count": int(m.sum()), "mean_score": float(s[m].mean()),
                        "positive_share": float(y[m].mean())})
    return out


def plot_calibration(labels: Sequence[float], scores: Sequence[float], path: str | Path, *, title: str = "") -> None:
    """Reliability diagram (share of positives per P(Yes) bin vs the diagonal) + score histograms by label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.asarray(labels, dtype=np.float64) > 0
    s = np.asarray(scores, dtype=np.float64)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    bins = calibration_bins(y, s)
    a.plot([0, 1], [0, 1], ls="--", c="gray", lw=1)
    a.plot([r["mean_score"] for r in bins], [r["positive_share"] for r in bins], marker="o")
    for r in bins:
        a.annotate(str(r["count"]), (r["mean_score"], r["positive_share"]), fontsize=7, xytext=(3, 3),
                   textcoords="offset points")
    a.set(xlim=(0, 1), ylim=(0, 1), xlabel="P(Yes) (bin mean)", ylabel="share labelled relevant",
          title="calibration")
    edges = np.linspace(0, 1, 21)
    b.hist(s[y], bins=edges, alpha=0.6, label=f"relevant ({int(y.sum())})")
    b.hist(s[~y], bins=edges, alpha=0.6, label=f"not relevant ({int((~y).sum())})")
    b.set(xlabel="P(Yes)", ylabel="pairs", title="scores by label")
    b.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    from unime.data.atomic import atomic_path

    with atomic_path(path) as tmp:  # a kill mid-write leaves no half-written figure (nor one its owner can't tell)
        fig.savefig(tmp, dpi=100, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
