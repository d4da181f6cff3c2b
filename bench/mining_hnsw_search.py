"""Mining's retrieval on an hnsw index when most positives rank deep: the seconds of `search_hard_negatives` with
the 4x deeper re-searches up to the pool (as before) and with the exact scan of the index's own vectors once a
deeper search would score more vectors than the pool holds (now, `unime.mining.retrieval.scanned_index`), in one
run; how many queries' candidate lists each gives equal to an exact (flat) index's, their mean overlap with them,
and how many lists differ between the two.

    python bench/mining_hnsw_search.py [--pool 20000] [--dim 64] [--k 50] [--signal 0.5]

Synthetic unit vectors: a pool, one query per pool item, each query its positive * `--signal` plus noise (a
weak embedder: most positives rank past the first fetch of K + 16). The index is `IndexConfig(kind="hnsw")` at
its defaults (hnsw_m 32, ef_search 128, ef_construction 40). "before" patches `scanned_index` to scan nothing,
which is the loop as it was (fetch x4 until K survive or the fetch reaches the pool).

Measured (2026-12-05, 2 CPU cores shared with other jobs, load ~10), pool 10,000, d 64: before 419.62 s (fetches
66, 264, 1056, 4224, 10000), lists equal to the exact index's 9,661 of 10,000, mean overlap 0.9993; now 4.15 s
(fetch 66, then the scan), 9,935 equal, overlap 0.9997; 274 lists differ before/now (exact: 13.33 s). At 3,000:
24.56 s -> 2.72 s, 2,978 -> 2,993 equal to exact.
"""

from __future__ import annotations

import time

from mining_ivf_search import before_and_now, deep_positives  # the same set and timing (bench/: the script's folder)


def main(argv: list[str] | None = None) -> int:
    args, pool, pos, q = deep_positives(argv, __doc__)
    import numpy as np

    from unime.index.ann import IndexConfig, build_index
    from unime.mining.retrieval import search_hard_negatives

    t = time.perf_counter()
    exact = search_hard_negatives(build_index(pool), q, pool[pos], pos, k=args.k).candidate_ids
    print(f" exact: {time.perf_counter() - t:6.2f} s (flat index)")
    index = build_index(pool, IndexConfig(kind="hnsw"))
    runs = before_and_now(index, lambda: search_hard_negatives(index, q, pool[pos], pos, k=args.k),
                          "scanned_index", lambda index, exhaustive: (None, index.ntotal))
    for name, (seconds, fetches, res) in runs.items():
        ids = res.candidate_ids
        equal = sum(a.tolist() == b.tolist() for a, b in zip(ids, exact))
        overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / max(len(b), 1) for a, b in zip(ids, exact)])
        print(f"{name:>6}: {seconds:6.2f} s, fetches {fetches}, lists equal to exact {equal:,} of "
              f"{len(q):,}, mean overlap with exact {overlap:.4f}")
    before, now = (runs[name][2].candidate_ids for name in ("before", "now"))
    differ = sum(a.tolist() != b.tolist() for a, b in zip(before, now))
    print(f"pool {args.pool:,}, {len(q):,} queries, k {args.k}: lists differing before/now: {differ:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
