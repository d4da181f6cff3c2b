"""Seconds per 512-query chunk of `unime eval`'s global-retrieval scoring (the rank of each query's first
relevant item) and of `unime eval --rerank`'s selection of each row's top k (`top_order`, the candidates shown to
the reranker), and per query of graded scoring (`ranked_grades` and `ndcg_at_k`, as qrels / MMEB-V2 tasks use
them), for pools of
2,000 and 20,000 random float32 scores: the counting / selecting implementation (`unime.eval.metrics`) against the
sorting one it replaced (kept as the reference in tests/eval/ranking_reference.py), the results checked equal.

    python bench/eval_scoring_scale.py [--pools 2000 20000] [--topk 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder's reference implementation

from tests.eval.ranking_reference import (reference_first_relevant_rank, reference_ndcg_at_k,  # noqa: E402
                                          reference_ranked_grades, reference_top_order)
from unime.eval import metrics as M  # noqa: E402

CHUNK = 512  # EvalOptions.chunk_rows


def best_seconds(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def compare(label: str, old, new, repeats: int) -> None:
    t_old, r_old = best_seconds(old, repeats)
    t_new, r_new = best_seconds(new, repeats)
    if not np.array_equal(np.asarray(r_old), np.asarray(r_new)):
        raise SystemExit(f"{label}: the implementations disagree")
    print(f"{label:<46} old {t_old:8.4f} s   new {t_new:8.4f} s   old/new {t_old / t_new:6.1f}x")


def main(pools: list[int], topk: int, repeats: int) -> None:
    M.top_order(np.zeros((1, 2)), 1)  # its first call imports torch, which `unime eval` has loaded before it scores
    rng = np.random.default_rng(0)
    for n in pools:
        scores = rng.standard_normal((CHUNK, n)).astype(np.float32)
        # text→image: one relevant image per caption (the runner's boolean mask; the old runner passed float64)
        mask = np.arange(n)[None, :] == rng.integers(0, n, CHUNK)[:, None]
        compare(f"first relevant rank, {CHUNK} x {n:,} chunk", lambda: reference_first_relevant_rank(
            scores, mask.astype(float)), lambda: M.first_relevant_rank(scores, mask), repeats)
        compare(f"reranked top-{topk} selection, {CHUNK} x {n:,} chunk",
                lambda: [reference_top_order(r, topk) for r in scores], lambda: M.top_order(scores, topk), repeats)
        row, grades = scores[0], np.zeros(n)
        grades[rng.choice(n, 3, replace=False)] = [1.0, 2.0, 1.0]
        compare(f"ranked grades, one query x {n:,} (3 graded)", lambda: reference_ranked_grades(row, grades),
                lambda: M.ranked_grades(row, grades), repeats)
        ranked = M.ranked_grades(scores[:100], np.broadcast_to(grades, (100, n)))  # 100 queries' ranked grades
        compare(f"nDCG@5, @10, 100 queries x {n:,} (3 graded)",
                lambda: [reference_ndcg_at_k(g, k) for g in ranked for k in (5, 10)],
                lambda: [M.ndcg_at_k(g, k) for g in ranked for k in (5, 10)], repeats)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pools", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--topk", type=int, default=5, help="the reranked top k (unime eval --topk's default: 5)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    main(a.pools, a.topk, a.repeats)
