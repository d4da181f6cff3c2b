"""Ranking metrics: Precision@1 / Hit@K, Recall@K, MRR, MAP, NDCG@K (linear gain).

Everything here is a pure function of scores and relevance grades (numpy), so it can be checked
against hand-computed values.

Tie-breaking (documented choice, `ties=`):
- ``"pessimistic"`` (default): among candidates with *equal* scores, every less relevant candidate
  ranks above every more relevant one (then the lower index first). A tie with the positive therefore
  counts as a miss. This is the worst case for the model: a degenerate embedder that gives every item
  the same vector scores 0 instead of 100 on an MMEB task.
- ``"index"``: among equal scores the lower candidate index ranks first, whatever the labels. This is
  what VLM2Vec's MMEB evaluation does (``np.argmax`` with the positive at index 0), so a tie with the
  positive counts as a hit there. Use it to reproduce numbers computed that way.

Exact float ties only happen in practice when two candidates are the same item (same embedding), or
with a degenerate model; both policies are deterministic.

Relevance is a grade >= 0 per candidate; a candidate is *relevant* when its grade is > 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

TIE_POLICIES = ("pessimistic", "index")


def check_ties(ties: str) -> None:
    if ties not in TIE_POLICIES:
        raise ValueError(f"ties must be one of {TIE_POLICIES}, got {ties!r}")


def rank_order(scores, relevance=None, *, ties: str = "pessimistic") -> np.ndarray:
    """Candidate indices, best first, along the last axis (works for one row or a matrix of rows).

    `relevance` (same shape as `scores`) is only used to break exact ties under ``"pessimistic"``.
    Without it, ties go to the lower index (the only label-free choice).
    """
    check_ties(ties)
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinity")
    index = np.broadcast_to(np.arange(scores.shape[-1]), scores.shape)
    if ties == "pessimistic" and relevance is not None:
        relevance = np.asarray(relevance, dtype=np.float64)
        if relevance.shape != scores.shape:
            raise ValueError(f"relevance shape {relevance.shape} != scores shape {scores.shape}")
        # np.lexsort: the last key is the primary one
        return np.lexsort((index, relevance, -scores), axis=-1)
    return np.lexsort((index, -scores), axis=-1)


def top_ranked(scores, relevance=None, *, ties: str = "pessimistic") -> int:
    """`rank_order(scores, relevance, ties=ties)[0]` of one row without sorting it: only the candidates that share
    the highest score are ordered (an order restricted to a subset keeps its relative order)."""
    check_ties(ties)
    scores = _finite_scores(scores)
    best = np.flatnonzero(scores == scores.max())
    if len(best) == 1:
        return int(best[0])
    sub = None if relevance is None else np.asarray(relevance)[best]
    return int(best[rank_order(scores[best], sub, ties=ties)[0]])


def top_order(scores, k: int, *, later_first: bool = False) -> np.ndarray:
    """`rank_order(scores)[..., :k]` (label-free: equal scores by the lower index; with `later_first`, by the
    higher index) along the last axis, without sorting a pool-sized row: each row's k-th highest score is found by
    `torch.topk` (5x faster than `np.partition`; its order among ties is unspecified, so only the score is taken
    from it), and only the candidates scoring at least that much are sorted (by score, descending, then index), so
    on a tie at the k-th score the lower (`later_first`: higher) indices are the ones kept, as in the full order.
    A row shorter than `k` gives all its candidates."""
    import torch  # here, not at import: the metrics are numpy, and `unime --help` imports no torch

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = _finite_scores(scores)
    n = scores.shape[-1]
    k = min(k, n)
    if k == 0 or scores.size == 0:
        return np.zeros(scores.shape[:-1] + (k,), dtype=np.intp)
    s2 = scores.reshape(-1, n)
    kth = torch.topk(torch.from_numpy(np.ascontiguousarray(s2)), k, dim=-1, sorted=False).values.amin(-1).numpy()
    rows, cols = _nonzero_2d(s2 >= kth[:, None])  # k or more per row (more only on a tie at the k-th score)
    keep = np.lexsort((-cols if later_first else cols, -s2[rows, cols], rows))  # the last key is the primary one
    starts = np.searchsorted(rows[keep], np.arange(len(s2)))
    return cols[keep][starts[:, None] + np.arange(k)].reshape(scores.shape[:-1] + (k,))


def _finite_scores(scores) -> np.ndarray:
    """`scores` as an array in their own float dtype (comparisons in float32 order exactly as in float64, so a
    pool-sized float64 copy is not needed), refusing NaN and infinity as `rank_order` does."""
    scores = np.asarray(scores)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinity")
    return scores


def _paired(scores, relevance, ties: str, *, grades_dtype=None) -> tuple[np.ndarray, np.ndarray]:
    check_ties(ties)
    scores = _finite_scores(scores)
    relevance = np.asarray(relevance, dtype=grades_dtype)
    if relevance.shape != scores.shape:
        raise ValueError(f"relevance shape {relevance.shape} != scores shape {scores.shape}")
    return scores, relevance


def _nonzero_2d(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the True entries of a 2-D mask; `np.nonzero` of the flat mask is ~20x faster than of a
    2-D one."""
    return np.divmod(np.flatnonzero(mask), mask.shape[-1])


def _count_ahead(rows_scores: np.ndarray, rows_grades: np.ndarray, score: np.ndarray, grade: np.ndarray,
                 col: np.ndarray, ties: str) -> np.ndarray:
    """For each row t of `rows_scores` (and its grades): how many candidates `rank_order` puts before candidate
    `col[t]` (score `score[t]`, grade `grade[t]`), counted instead of sorted: a higher score, or an equal score
    and first by the tie rule. The temporaries are boolean masks; a tie is rare, so its entries are listed."""
    ahead = np.count_nonzero(rows_scores > score[:, None], axis=-1)
    tr, tc = _nonzero_2d(rows_scores == score[:, None])
    if ties == "pessimistic":
        g = rows_grades[tr, tc]
        before = (g < grade[tr]) | ((g == grade[tr]) & (tc < col[tr]))
    else:
        before = tc < col[tr]
    return ahead + np.bincount(tr[before], minlength=len(score))


RANK_BY_COUNTING_MAX = 64  # ranked_grades: rows with more graded candidates than this are sorted instead


def ranked_grades(scores, relevance, *, ties: str = "pessimistic") -> np.ndarray:
    """The relevance grades in ranked order (best first), along the last axis.

    Only the candidates with a non-zero grade need a place: each one's rank is the count of candidates that
    `rank_order` puts before it, the rest of the list is zeros, so a pool-sized row is not sorted (a row with
    more than `RANK_BY_COUNTING_MAX` graded candidates is, where sorting is the cheaper way)."""
    scores, relevance = _paired(scores, relevance, ties, grades_dtype=np.float64)
    n = scores.shape[-1]
    out = np.zeros(scores.shape, dtype=np.float64)
    s2, r2, o2 = scores.reshape(-1, n), relevance.reshape(-1, n), out.reshape(-1, n)
    for row, (s, r) in enumerate(zip(s2, r2)):
        cols = np.flatnonzero(r)
        if len(cols) > RANK_BY_COUNTING_MAX:
            o2[row] = r[rank_order(s, r, ties=ties)]
            continue
        ranks = _count_ahead(np.broadcast_to(s, (len(cols), n)), np.broadcast_to(r, (len(cols), n)),
                             s[cols], r[cols], cols, ties)
        o2[row, ranks] = r[cols]
    return out


# -- metrics of one ranked list of grades (best first) ----------------------------------------------

def hit_at_k(grades_ranked: Sequence[float], k: int) -> float:
    """1.0 if any relevant candidate is in the top k, else 0.0. Hit@1 = Precision@1 with one positive."""
    g = np.asarray(grades_ranked)
    return float(np.any(g[:k] > 0))


def recall_at_k(grades_ranked: Sequence[float], k: int) -> float:
    """Fraction of the relevant candidates found in the top k (0.0 if there is none)."""
    g = np.asarray(grades_ranked) > 0
    n = int(g.sum())
    return float(g[:k].sum() / n) if n else 0.0


def reciprocal_rank(grades_ranked: Sequence[float], k: int | None = None) -> float:
    """1 / rank of the first relevant candidate (1-based), 0.0 if none (within the top k if given)."""
    g = np.asarray(grades_ranked) > 0
    if k is not None:
        g = g[:k]
    hits = np.flatnonzero(g)
    return float(1.0 / (hits[0] + 1)) if hits.size else 0.0


def average_precision(grades_ranked: Sequence[float]) -> float:
    """Mean of Precision@i over the positions i of the relevant candidates (binary: grade > 0).

    The denominator is the number of relevant candidates in the list (all of them are ranked here).
    """
    g = np.asarray(grades_ranked) > 0
    n = int(g.sum())
    if not n:
        return 0.0
    positions = np.flatnonzero(g) + 1  # 1-based ranks of the relevant items
    precisions = np.arange(1, n + 1) / positions
    return float(precisions.mean())


def dcg_at_k(grades_ranked: Sequence[float], k: int) -> float:
    """Discounted cumulative gain with *linear* gain: sum_{i=1..k} grade_i / log2(i + 1)."""
    g = np.asarray(grades_ranked, dtype=np.float64)[:k]
    return float(np.sum(g / np.log2(np.arange(2, g.size + 2))))


def ndcg_at_k(grades_ranked: Sequence[float], k: int) -> float:
    """DCG@k / ideal DCG@k (grades sorted descending); 0.0 when no candidate is relevant. The ideal list needs
    only the k highest grades: of grades >= 0 (every task's) the relevant ones sorted, then zeros, not the
    pool-sized list sorted."""
    g = np.asarray(grades_ranked, dtype=np.float64)
    if g.ndim == 1 and k >= 1 and g.size and g.min() >= 0:
        best = np.sort(g[g > 0])[::-1][:k]
        ideal = dcg_at_k(np.concatenate([best, np.zeros(min(k, g.size) - len(best))]), k)
    else:
        ideal = dcg_at_k(np.sort(g)[::-1], k)
    return dcg_at_k(g, k) / ideal if ideal > 0 else 0.0


# -- task-level helpers ------------------------------------------------------------------------------

def positive_first_hits(scores_rows: Sequence[np.ndarray], *, ties: str = "pessimistic") -> np.ndarray:
    """MMEB protocol: row i holds the scores of query i's own candidates, the positive at index 0.

    Returns 1.0 / 0.0 per query: is the positive ranked first (Precision@1 = Hit@1)?
    """
    check_ties(ties)
    hits = np.zeros(len(scores_rows), dtype=np.float64)
    for i, s in enumerate(scores_rows):
        s = np.asarray(s, dtype=np.float64)
        if s.ndim != 1 or s.size == 0:
            raise ValueError(f"row {i}: expected a non-empty 1-D score vector")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"row {i}: scores contain NaN or infinity")
        rest = s[1:]
        if ties == "pessimistic":
            hits[i] = float(np.all(rest < s[0]))
        else:  # lowest index wins: the positive (index 0) wins every tie
            hits[i] = float(np.all(rest <= s[0]))
    return hits


def first_relevant_rank(scores, relevance, *, ties: str = "pessimistic") -> np.ndarray:
    """0-based rank of the best-ranked relevant candidate per row (len(row) if the row has none), as in
    `rank_order`'s order, without sorting a row: the relevant candidates (a few per row) are ordered among
    themselves, and the first one's rank is the count of candidates before it. `relevance` may be a boolean
    mask or grades (relevant: > 0); no pool-sized float copy of either is made."""
    scores, relevance = _paired(scores, relevance, ties)
    n = scores.shape[-1]
    s2, r2 = scores.reshape(-1, n), relevance.reshape(-1, n)
    rows, cols = _nonzero_2d(r2 if r2.dtype == bool else r2 > 0)
    s_rel, g_rel = s2[rows, cols], r2[rows, cols]
    # the relevant entries in rank_order's order within each row (np.lexsort: the last key is the primary one)
    order = np.lexsort((cols, g_rel, -s_rel, rows) if ties == "pessimistic" else (cols, -s_rel, rows))
    rows, first = np.unique(rows[order], return_index=True)
    first = order[first]
    score = np.full(len(s2), np.inf, dtype=s2.dtype)  # rows without a relevant candidate: nothing is ahead
    grade = np.zeros(len(s2), dtype=r2.dtype)
    col = np.full(len(s2), n)
    score[rows], grade[rows], col[rows] = s_rel[first], g_rel[first], cols[first]
    out = _count_ahead(s2, r2, score, grade, col, ties)
    out[np.setdiff1d(np.arange(len(s2)), rows)] = n
    return out.reshape(scores.shape[:-1])


def recall_at_ks(first_ranks: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Retrieval Recall@K as the field reports it (Flickr30K / COCO): the fraction of queries with at
    least one relevant item in the top K, from each query's `first_relevant_rank`."""
    first_ranks = np.asarray(first_ranks)
    if first_ranks.size == 0:
        raise ValueError("no queries")
    return {k: float(np.mean(first_ranks < k)) for k in ks}
