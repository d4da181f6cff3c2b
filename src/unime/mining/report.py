"""The mining report (markdown + PNG plots + stats.json) and the judge audit against a demo world.

Judge audit (beyond the paper): on the demo world every retrieved candidate has a ground-truth graded
relevance for its query (`World.relevance`). A candidate with relevance >= `audit_threshold` (default
1.0: it fully satisfies the query) is a *false negative*: a retrieved "hard negative" that is in
fact a correct answer. The audit reports
- ROC-AUC of the judge for false vs true negatives, with the raw score s(q, c), with the margin
  s(q, c) − s(q, c_t) that the filter thresholds, and (for comparison) with the embedder's similarity;
- precision and recall of the false-negative filter (s > s(q, c_t) − β) as a function of β, so that β
  can be chosen with evidence rather than kept at the paper's 0.01;
- per dataset, the within-query ROC-AUC (a query's positive and true false negatives against its true
  negatives), and a *media-swap control*: a sample of each dataset's queries re-scored with the image or
  clip of another query of the same dataset (the query text unchanged). A judge that reads the picture
  loses its within-query AUC on these; a judge whose AUC stays where it was tells candidates apart by
  their text alone (which kind of answer they are), not by what the query shows.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unime.data.atomic import atomic_open, atomic_path
from unime.mining.sampling import DEFAULT_BETA, STATUSES

log = logging.getLogger(__name__)

MEDIA_SWAP_QUERIES = 20  # per dataset, for the media-swap control of the audit

DEFAULT_BETAS = (-0.2, -0.1, -0.05, -0.02, -0.01, 0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


# -- metrics (pure) ---------------------------------------------------------------------------------------

def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve of `scores` for `labels` (ties count one half); None if one class is empty.
    scikit-learn's `roc_auc_score` when installed, else the Mann–Whitney statistic (identical value)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    try:
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(y, s))
    except ImportError:  # pragma: no cover - sklearn is in the dev extra
        return mann_whitney_auc(y, s)


def mann_whitney_auc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """P(score of a random positive > score of a random negative) + ½ P(tie), from average ranks."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when either side is constant."""
    ra = _average_ranks(np.asarray(a, dtype=np.float64))
    rb = _average_ranks(np.asarray(b, dtype=np.float64))
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def within_query_auc(query_ids: Sequence[Any], labels: Sequence[bool], scores: Sequence[float]) -> dict[str, Any]:
    """Ranking quality *within* each query: the share of (relevant, irrelevant) pairs of the same query
    that the scores order correctly (ties count one half), pooled over the queries' pairs, plus the
    mean of the per-query AUCs. Queries with only one class contribute no pair.

    A pooled ROC-AUC over all (query, candidate) pairs mixes score levels across queries and datasets
    (a judge can rank every query's candidates backwards and still get a high pooled AUC when one
    dataset holds all the relevant candidates); this is the quantity the false-negative filter, which
    compares candidates with their own query's positive, depends on."""
    q = np.asarray(query_ids)
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    correct = pairs = 0.0
    per_query: list[float] = []
    for qid in dict.fromkeys(q.tolist()):
        m = q == qid
        pos, neg = s[m & y], s[m & ~y]
        if len(pos) == 0 or len(neg) == 0:
            continue
        diff = pos[:, None] - neg[None, :]
        c = float((diff > 0).sum() + 0.5 * (diff == 0).sum())
        correct += c
        pairs += diff.size
        per_query.append(c / diff.size)
    return {"auc": correct / pairs if pairs else None,
            "mean_query_auc": float(np.mean(per_query)) if per_query else None,
            "queries": len(per_query), "pairs": int(pairs)}


def filter_curve(labels: Sequence[bool], scores: Sequence[float], positive_scores: Sequence[float],
                 betas: Sequence[float] = DEFAULT_BETAS) -> list[dict[str, Any]]:
    """Precision / recall of the false-negative filter `s > s_pos − β` for each β (None when undefined)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    sp = np.asarray(positive_scores, dtype=np.float64)
    out = []
    for beta in betas:
        flagged = s > sp - beta
        tp = int((flagged & y).sum())
        n_flag = int(flagged.sum())
        out.append({"beta": float(beta), "flagged": n_flag, "true_positives": tp,
                    "precision": tp / n_flag if n_flag else None,
                    "recall": tp / int(y.sum()) if y.any() else None})
    return out


def audit_metrics(relevance: Sequence[float], scores: Sequence[float], positive_scores: Sequence[float],
                  similarities: Sequence[float], *, threshold: float = 1.0, beta: float = DEFAULT_BETA,
                  betas: Sequence[float] = DEFAULT_BETAS) -> dict[str, Any]:
    """The audit numbers for retrieved candidates (one entry per (query, candidate) pair)."""
    rel = np.asarray(relevance, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    sp = np.asarray(positive_scores, dtype=np.float64)
    labels = rel >= threshold
    betas = sorted(set(float(b) for b in betas) | {float(beta)})
    curve = filter_curve(labels, s, sp, betas)
    at = next(p for p in curve if p["beta"] == float(beta))
    return {
        "threshold": threshold, "beta": beta, "candidates": int(len(rel)), "false_negatives": int(labels.sum()),
        "auc_judge_score": roc_auc(labels, s), "auc_judge_margin": roc_auc(labels, s - sp),
        "auc_similarity": roc_auc(labels, similarities), "at_beta": at, "curve": curve,
        "spearman_judge_relevance": spearman(s, rel), "spearman_similarity_relevance": spearman(similarities, rel),
        "mean_judge_score": {"false_negatives": float(s[labels].mean()) if labels.any() else None,
                             "true_negatives": float(s[~labels].mean()) if (~labels).any() else None},
    }


def judge_audit(run, audit_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Add `relevance` / `positive_relevance` to the audit rows from the demo world; return the metrics."""
    from unime.data.synth import World

    c = run.config
    world = World.load(c.world)
    pos_rel: dict[int, float] = {}
    for row in audit_rows:
        i = row["query_index"]
        rec = run.records[i]
        if i not in pos_rel:
            pos_rel[i] = float(world.relevance(rec.query, rec.positive))
        row["relevance"] = float(world.relevance(rec.query, run.pool[row["pool_index"]]))
        row["positive_relevance"] = pos_rel[i]
    metrics = audit_metrics([r["relevance"] for r in audit_rows], [r["judge_score"] for r in audit_rows],
                            [r["positive_score"] for r in audit_rows], [r["similarity"] for r in audit_rows],
                            threshold=c.audit_threshold, beta=c.beta)
    pos = np.array(list(pos_rel.values()))
    metrics["positives"] = {"queries": len(pos), "mean_relevance": float(pos.mean()) if len(pos) else None,
                            "below_threshold": int((pos < c.audit_threshold).sum())}
    by_ds: dict[str, list[dict]] = {}
    for r in audit_rows:
        by_ds.setdefault(r["dataset"], []).append(r)
    metrics["by_dataset"] = {
        ds: {"candidates": len(rows), "false_negatives": int(sum(r["relevance"] >= c.audit_threshold for r in rows)),
             "filtered": int(sum(r["false_negative"] for r in rows)),
             "filtered_true_false_negatives": int(sum(r["false_negative"] and r["relevance"] >= c.audit_threshold
                                                      for r in rows))}
        for ds, rows in sorted(by_ds.items())}
    metrics["within_query"] = within_query_audit(audit_rows, threshold=c.audit_threshold)
    # the oracle scores the world's own items by their ground truth: a swapped query is not one of them
    metrics["media_swap"] = None if c.backend == "oracle" else media_swap_audit(
        run.records, run.pool, audit_rows, run.backend(), threshold=c.audit_threshold, seed=c.seed)
    return metrics


def media_swap_audit(records, pool, audit_rows: list[dict[str, Any]], backend, *, threshold: float = 1.0,
                     per_dataset: int = MEDIA_SWAP_QUERIES, seed: int = 0) -> dict[str, Any]:
    """The media-swap control: up to `per_dataset` queries of each dataset whose query shows an image or a
    clip, each re-scored by the judge (`backend.score_groups`) against its positive and its retrieved
    candidates with the media of the next sampled query of the same dataset whose media differ (the
    text unchanged). Per dataset: the within-query AUC of those queries with their own media (the mining
    scores) and with the swapped media, same labels (`audit_rows` carry `relevance`); the mean absolute
    change of the scores."""
    import dataclasses
    import random

    rows_by_q: dict[int, list[dict]] = {}
    for r in audit_rows:
        rows_by_q.setdefault(r["query_index"], []).append(r)
    by_ds: dict[str, list[int]] = {}
    for qi, rows in rows_by_q.items():
        q = records[qi].query
        if q.images or q.video:
            by_ds.setdefault(rows[0]["dataset"], []).append(qi)
    rng = random.Random(seed)
    plan: list[tuple[str, int]] = []
    groups = []
    for ds, qis in sorted(by_ds.items()):
        sample = sorted(rng.sample(qis, min(per_dataset, len(qis))))
        media = [(records[qi].query.images, records[qi].query.video) for qi in sample]
        for j, qi in enumerate(sample):
            donor = next((media[(j + d) % len(sample)] for d in range(1, len(sample))
                          if media[(j + d) % len(sample)] != media[j]), None)
            if donor is None:
                continue
            rec = records[qi]
            swapped = dataclasses.replace(rec.query, images=donor[0], video=donor[1])
            groups.append((swapped, [rec.positive] + [pool[r["pool_index"]] for r in rows_by_q[qi]]))
            plan.append((ds, qi))
    scored = backend.score_groups(groups) if groups else []
    per_ds: dict[str, dict[str, list]] = {}
    for (ds, qi), new in zip(plan, scored):
        rows = rows_by_q[qi]
        d = per_ds.setdefault(ds, {"q": [], "y": [], "own": [], "swapped": []})
        d["q"] += [qi] * (len(rows) + 1)
        d["y"] += [rows[0]["positive_relevance"] >= threshold] + [r["relevance"] >= threshold for r in rows]
        d["own"] += [rows[0]["positive_score"]] + [r["judge_score"] for r in rows]
        d["swapped"] += [float(x) for x in np.asarray(new, dtype=np.float64).reshape(-1)]
    out: dict[str, Any] = {"per_dataset_queries": per_dataset, "by_dataset": {}}
    for ds, d in per_ds.items():
        own = within_query_auc(d["q"], d["y"], d["own"])
        swapped = within_query_auc(d["q"], d["y"], d["swapped"])
        out["by_dataset"][ds] = {
            "queries": len(set(d["q"])), "auc_own_media": own["auc"], "auc_swapped_media": swapped["auc"],
            "mean_abs_score_change": float(np.mean(np.abs(np.subtract(d["own"], d["swapped"]))))}
    for key in ("auc_own_media", "auc_swapped_media"):
        vals = [v[key] for v in out["by_dataset"].values() if v[key] is not None]
        out[f"mean_{key}"] = float(np.mean(vals)) if vals else None
    return out


LOG_LOSS_CLIP = 1e-6  # scores are clipped to [clip, 1 - clip] before the log (a stored 0.0 / 1.0 stays finite)


def log_loss_against_base_rate(labels: Sequence[bool], scores: Sequence[float]) -> dict[str, Any]:
    """Binary cross-entropy (nats) of scores P(Yes) against 0/1 labels, and the same for the constant score
    at the labels' base rate b, H(b) = −b ln b − (1 − b) ln(1 − b): what a judge that learned only the Yes
    share reaches. `ratio` = log_loss / base_rate_log_loss (< 1: the scores carry information beyond the
    base rate; None when the labels are all one class, H(b) = 0)."""
    y = np.asarray(labels, dtype=np.float64)
    if not len(y):
        return {"pairs": 0, "base_rate": None, "log_loss": None, "base_rate_log_loss": None, "ratio": None}
    p = np.clip(np.asarray(scores, dtype=np.float64), LOG_LOSS_CLIP, 1 - LOG_LOSS_CLIP)
    b = float(y.mean())
    loss = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    level = float(-(b * np.log(b) + (1 - b) * np.log(1 - b))) if 0 < b < 1 else 0.0
    return {"pairs": int(len(y)), "base_rate": b, "log_loss": loss, "base_rate_log_loss": level,
            "ratio": loss / level if level > 0 else None}


def within_query_audit(audit_rows: list[dict[str, Any]], *, threshold: float = 1.0) -> dict[str, Any]:
    """Per-dataset within-query ROC-AUC of the judge: the positive and the true false negatives of a query
    against its true negatives (`within_query_auc`), and the same for the embedder's similarity over the
    retrieved candidates alone; `mean_over_datasets` / `min_over_datasets` summarise the judge's. On the same
    pairs (each query's positive once, its candidates), the judge's log loss against its base-rate level
    (`log_loss_against_base_rate`), per dataset and pooled (`log_loss`)."""
    by_ds: dict[str, list[dict]] = {}
    for r in audit_rows:
        by_ds.setdefault(r["dataset"], []).append(r)
    out: dict[str, Any] = {"by_dataset": {}}
    all_labels: list[bool] = []
    all_scores: list[float] = []
    for ds, rows in sorted(by_ds.items()):
        qids, labels, scores, seen = [], [], [], set()
        for r in rows:
            if r["query_index"] not in seen:  # the positive, once per query
                seen.add(r["query_index"])
                qids.append(r["query_index"])
                labels.append(r["positive_relevance"] >= threshold)
                scores.append(r["positive_score"])
            qids.append(r["query_index"])
            labels.append(r["relevance"] >= threshold)
            scores.append(r["judge_score"])
        cand_q = [r["query_index"] for r in rows]
        cand_y = [r["relevance"] >= threshold for r in rows]
        out["by_dataset"][ds] = {
            "judge": within_query_auc(qids, labels, scores),
            "judge_candidates_only": within_query_auc(cand_q, cand_y, [r["judge_score"] for r in rows]),
            "similarity_candidates_only": within_query_auc(cand_q, cand_y, [r["similarity"] for r in rows]),
            "log_loss": log_loss_against_base_rate(labels, scores),
        }
        all_labels += labels
        all_scores += scores
    out["log_loss"] = log_loss_against_base_rate(all_labels, all_scores)
    aucs = [v["judge"]["auc"] for v in out["by_dataset"].values() if v["judge"]["auc"] is not None]
    out["mean_over_datasets"] = float(np.mean(aucs)) if aucs else None
    out["min_over_datasets"] = float(np.min(aucs)) if aucs else None
    return out


# -- plots ----------------------------------------------------------------------------------------------

def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)


def plot_score_distributions(audit_rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = {r["query_index"]: r["positive_score"] for r in audit_rows}
    cand = [r["judge_score"] for r in audit_rows]
    filt = [r["judge_score"] for r in audit_rows if r["false_negative"]]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    values = np.asarray(cand + list(pos.values()), dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-6:  # a judge that says the same for everything still gets visible bars
        lo, hi = lo - 1e-3, hi + 1e-3
    bins = np.linspace(lo, hi, 41)
    ax.hist(cand, bins=bins, alpha=0.6, label=f"candidates (n={len(cand)})", density=True)
    ax.hist(list(pos.values()), bins=bins, alpha=0.6, label=f"positives (n={len(pos)})", density=True)
    if filt:
        ax.hist(filt, bins=bins, histtype="step", color="k", label=f"filtered as false negatives (n={len(filt)})",
                density=True)
    ax.set_xlabel("judge score s(q, ·)")
    ax.set_ylabel("density")
    ax.set_title("Judge scores: positives vs retrieved candidates")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_per_dataset(sampling: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(sampling["by_dataset"])
    names = [d or "(none)" for d in datasets]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    fn = [sampling["false_negatives"].get(d, 0) for d in datasets]
    tot = [sampling["candidates"].get(d, 0) for d in datasets]
    a1.bar(names, fn)
    for x, (f, t) in enumerate(zip(fn, tot)):
        a1.text(x, f, f"{100 * f / t:.0f}%" if t else "-", ha="center", va="bottom", fontsize=7)
    a1.set_title("False negatives filtered per dataset")
    a1.set_ylabel("candidates")
    bottom = np.zeros(len(datasets))
    for st in STATUSES:
        vals = np.array([sampling["by_dataset"][d].get(st, 0) for d in datasets], dtype=float)
        a2.bar(names, vals, bottom=bottom, label=st)
        bottom += vals
    a2.set_title("Sampling outcome per query (repeat / fallback / drop)")
    a2.set_ylabel("queries")
    a2.legend(fontsize=8)
    for a in (a1, a2):
        a.tick_params(axis="x", rotation=30, labelsize=8)
    _save(fig, path)


def plot_stage_times(times: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [(k, v) for k, v in times.items() if k != "total"]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set_xlabel("seconds")
    ax.set_title("Time per stage")
    _save(fig, path)


def plot_audit(audit: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = audit["curve"]
    b = [p["beta"] for p in curve]
    prec = [np.nan if p["precision"] is None else p["precision"] for p in curve]
    rec = [np.nan if p["recall"] is None else p["recall"] for p in curve]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(b, prec, "o-", label="precision")
    ax.plot(b, rec, "s-", label="recall")
    ax.axvline(audit["beta"], color="grey", ls="--", lw=1, label=f"β = {audit['beta']}")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("β (filter: s(q, c) > s(q, c_t) − β)")
    ax.set_title(f"False-negative filter vs ground truth (relevance ≥ {audit['threshold']})")
    ax.legend(fontsize=8)
    _save(fig, path)


# -- report ---------------------------------------------------------------------------------------------

def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def write_report(out: Path, stats: dict[str, Any], audit_rows: list[dict[str, Any]],
                 audit: dict[str, Any] | None) -> None:
    """stats.json, report.md, plots/*.png and (with an audit) audit.json, all under `out`."""
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    plot_files = {}
    if audit_rows:
        plot_score_distributions(audit_rows, plots / "judge_scores.png")
        plot_files["judge_scores"] = "plots/judge_scores.png"
    plot_per_dataset(stats["sampling"], plots / "per_dataset.png")
    plot_files["per_dataset"] = "plots/per_dataset.png"
    times = dict(stats["times_this_run"])
    plot_stage_times(times, plots / "stage_times.png")
    plot_files["stage_times"] = "plots/stage_times.png"
    if audit is not None:
        plot_audit(audit, plots / "audit_beta.png")
        plot_files["audit_beta"] = "plots/audit_beta.png"
        with atomic_open(out / "audit.json") as fh:
            json.dump(audit, fh, indent=1)
    with atomic_open(out / "stats.json") as fh:
        json.dump({**stats, "audit": audit}, fh, indent=1, default=str)

    cfg = stats["config"]
    s = stats["sampling"]
    n_cand = sum(s["candidates"].values())
    lines = [
        "# Hard-negative mining report (UniME-V2 stages A–C)", "",
        f"- records: {stats['records']} → mined: {stats['mined']} (dropped: {s['counts'].get('dropped', 0)})",
        f"- global pool: {stats['pool_size']} items; K = {cfg['k']}, index = {cfg['index']}",
        f"- index recall: {_index_recall_text((stats.get('retrieval') or {}).get('index_recall'))}",
        *([f"- exact scan: {_exact_scan_text((stats.get('retrieval') or {}).get('exact_scan'))}"]
          if cfg["index"] == "hnsw" else []),
        f"- judge: `{cfg['judge']}`, backend `{cfg['backend']}`; embedder: `{cfg['embedder']}`",
        f"- β = {cfg['beta']}, interval = {cfg['interval']}, count = {cfg['count']}, fallback = {cfg['fallback']}, "
        f"seed = {cfg['seed']}",
        f"- retrieved candidates judged: {n_cand}; filtered as false negatives: {sum(s['false_negatives'].values())}"
        f" ({100 * sum(s['false_negatives'].values()) / n_cand:.1f}%)" if n_cand else "- no candidates retrieved",
        f"- config hash: `{stats['config_hash']}`",
    ]
    health = stats.get("label_health")
    if health:
        from unime.mining.health import format_health

        lines += ["", "## Label health", "", f"- {format_health(health)}"]
        lines += [f"- **warning**: {w}" for w in health["warnings"]]
    if stats["skipped_records"].get("total"):
        lines += ["", "Skipped input records:", "```", stats["skipped_records"]["summary"], "```"]
    json_notes = stats["outputs"]
    if json_notes.get("json") != "written":
        lines += ["", f"**mined.json {json_notes.get('json')}** (mined.parquet holds every record)"]
    elif json_notes.get("json_left_out"):
        lines += ["", f"**mined.json holds {json_notes['json_records']} of the {stats['mined']} mined records** "
                  "(mined.parquet holds every record)"]
    if json_notes.get("json_left_out"):
        lines += ["", "```", json_notes["json_left_out_summary"], "```"]
    lines += ["", "## Sampling (per dataset)", "", "```", stats["sampling_table"], "```", "",
              "Statuses: `ok` = enough survivors; `repeated` = fewer survivors than the count, repeated "
              "cyclically; `fallback` = no survivor, random draw from the K with score 1.0; `dropped` = no "
              "survivor under `--fallback drop`, or no candidate retrieved at all (nothing to draw from).", ""]
    lines += ["## Time per stage (this run, seconds)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in times.items()]
    recorded = (stats.get("retrieval") or {}).get("seconds") or {}
    if recorded and "encode" not in times:
        lines += ["", "Retrieval was reused from an earlier run; it took "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in recorded.items()) + " then."]
    lines += ["", f"Judge compute summed over all shards (including earlier, interrupted runs): "
                  f"{stats['judge_shard_seconds']:.2f} s; shards reused from earlier runs: "
                  f"{stats['judge_shards_resumed']}.", ""]
    if stats["judge"]:
        lines += ["## Judge", "", "| counter | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in stats["judge"].items()]
        lines += [""]
    lines += ["## Plots", ""]
    lines += [f"![{k}]({v})" for k, v in plot_files.items() if k != "audit_beta"]
    if audit is not None:
        lines += ["", "## Judge audit against the demo world's ground truth", "",
                  f"A retrieved candidate is a true false negative when its relevance ≥ {audit['threshold']}. "
                  f"{audit['false_negatives']} of {audit['candidates']} retrieved candidates are.", "",
                  "| ROC-AUC (false vs true negatives) | value |", "|---|---|",
                  f"| judge score s(q, c) | {_fmt(audit['auc_judge_score'])} |",
                  f"| judge margin s(q, c) − s(q, c_t) | {_fmt(audit['auc_judge_margin'])} |",
                  f"| embedder similarity (baseline) | {_fmt(audit['auc_similarity'])} |", "",
                  "Spearman correlation with the graded relevance: judge score "
                  f"{_fmt(audit['spearman_judge_relevance'])}, embedder similarity "
                  f"{_fmt(audit['spearman_similarity_relevance'])}.", "",
                  "| β | flagged | precision | recall |", "|---|---|---|---|"]
        lines += [f"| {p['beta']} | {p['flagged']} | {_fmt(p['precision'])} | {_fmt(p['recall'])} |"
                  for p in audit["curve"]]
        lines += ["", f"![audit_beta]({plot_files['audit_beta']})", ""]
        wq = audit.get("within_query")
        if wq:
            lines += ["### Within-query ROC-AUC per dataset", "",
                      "The positive and the true false negatives of a query against its true negatives, pooled "
                      "over the dataset's (relevant, irrelevant) pairs of the same query: what the filter, which "
                      "compares each candidate with its own query's positive, depends on.", "",
                      "The last columns: the judge's log loss (nats) on the same pairs (each query's positive and "
                      "its candidates, relevant = 1) against the base-rate level H(b), the loss of the constant score "
                      "at the dataset's relevant share b — a judge that learned only the Yes/No prior sits at it.",
                      "",
                      "| dataset | judge | judge, candidates only | embedder similarity, candidates only | pairs | "
                      "judge log loss | base-rate level |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {ds} | {_fmt(v['judge']['auc'])} | {_fmt(v['judge_candidates_only']['auc'])} | "
                      f"{_fmt(v['similarity_candidates_only']['auc'])} | {v['judge']['pairs']} | "
                      f"{_fmt((v.get('log_loss') or {}).get('log_loss'))} | "
                      f"{_fmt((v.get('log_loss') or {}).get('base_rate_log_loss'))} |"
                      for ds, v in wq["by_dataset"].items()]
            pooled = wq.get("log_loss") or {}
            lines += [f"| **mean over datasets** | **{_fmt(wq['mean_over_datasets'])}** | | | | "
                      f"{_fmt(pooled.get('log_loss'))} (pooled) | {_fmt(pooled.get('base_rate_log_loss'))} |", ""]
        ms = audit.get("media_swap")
        if ms and ms["by_dataset"]:
            lines += ["### Media-swap control", "",
                      f"Up to {ms['per_dataset_queries']} queries per dataset whose query shows an image or a clip, "
                      "re-scored with the media of another query of the same dataset (the text unchanged); "
                      "within-query ROC-AUC of the same queries with their own media and with the swapped media. "
                      "Where the AUC does not drop, the judge tells the candidates apart by their text, not by what "
                      "the query shows.", "",
                      "| dataset | queries | AUC, own media | AUC, swapped media | mean abs. score change |",
                      "|---|---|---|---|---|"]
            lines += [f"| {ds} | {v['queries']} | {_fmt(v['auc_own_media'])} | {_fmt(v['auc_swapped_media'])} | "
                      f"{_fmt(v['mean_abs_score_change'])} |" for ds, v in sorted(ms["by_dataset"].items())]
            lines += [f"| **mean over datasets** | | **{_fmt(ms['mean_auc_own_media'])}** | "
                      f"**{_fmt(ms['mean_auc_swapped_media'])}** | |", ""]
    with atomic_open(out / "report.md") as fh:
        fh.write("\n".join(lines) + "\n")


def _exact_scan_text(r: dict | None) -> str:
    """The queries of an hnsw retrieval finished by the exact scan (`unime.mining.retrieval.search_hard_negatives`)."""
    if not r:
        return "not recorded (retrieval reused from an earlier version)"
    share = f" ({100 * r['queries'] / r['of']:.1f} %)" if r["of"] else ""
    return (f"{r['queries']} of {r['of']} queries{share} had fewer than K candidates below their positive in the "
            "deepest hnsw search worth doing and were finished by an exact scan of the index's vectors")


def _index_recall_text(r: dict | None) -> str:
    if not r:
        return "not recorded (retrieval reused from an earlier version)"
    if r.get("exact"):
        return "exact search (recall 1.0 by construction)"
    rec = r.get("recall")
    return (f"recall@{r['k']} against exact search = {rec:.4f} on {r['sample']} sampled queries"
            if rec is not None else "not measured (no queries)")
