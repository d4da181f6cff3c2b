"""Mining's retrieval on an IVF index when most positives rank deep: the seconds of `search_hard_negatives` with
the 4x deeper re-searches (as before) and with one search to the whole of each pending query's probed lists
(now, `unime.index.ann.ivf_probed_sizes`), in one run, and whether both give the same candidate lists.

    python bench/mining_ivf_search.py [--pool 20000] [--dim 64] [--k 50] [--signal 0.5]

Synthetic unit vectors: a pool, one query per pool item, each query its positive * `--signal` plus noise (a
weak embedder: most positives rank past the first fetch of K + 16). The index is `IndexConfig(kind="ivf")` at
its defaults (nlist 4*sqrt(n) capped at n/39, nprobe 16). "before" patches `ivf_probed_sizes` out, which is
the loop as it was (fetch x4 until K survive or the probed lists run out).

Measured (2026-12-05, 2 shared CPU cores, pool 20,000, d 64): before 12.35 s (fetches 66, 264, 1056),
now 7.11 s (fetches 66, 705), same candidate lists.
"""

from __future__ import annotations

import argparse
import os
import time
from unittest import mock


def deep_positives(argv: list[str] | None, doc: str):
    """The options (--pool, --dim, --k, --signal) and the synthetic set of this bench and
    bench/mining_hnsw_search.py: (args, pool, positive ids, queries), unit float32 vectors."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--pool", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--signal", type=float, default=0.5, help="weight of the positive in its query")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy as np

    rng = np.random.default_rng(0)

    def unit(v):
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    pool = unit(rng.normal(size=(args.pool, args.dim)))
    pos = rng.permutation(args.pool)
    q = unit(pool[pos] * args.signal + rng.normal(size=(args.pool, args.dim)))
    return args, pool, pos, q


def before_and_now(index, search, target: str, replacement) -> dict:
    """`search()` timed twice on `index`: "before" with `target` (a name in unime.mining.retrieval) patched to
    `replacement` (the loop as it was), then "now"; {name: (seconds, the fetches asked of the index, result)}."""
    index_search = index.search
    runs = {}
    for name in ("before", "now"):
        fetches: list[int] = []
        index.search = lambda x, f, **kw: fetches.append(f) or index_search(x, f, **kw)
        patch = mock.patch(f"unime.mining.retrieval.{target}", replacement) if name == "before" \
            else mock.patch.dict({})
        with patch:
            t = time.perf_counter()
            res = search()
            runs[name] = (time.perf_counter() - t, sorted(set(fetches)), res)
    index.search = index_search
    return runs


def main(argv: list[str] | None = None) -> int:
    args, pool, pos, q = deep_positives(argv, __doc__)
    from unime.index.ann import IndexConfig, build_index
    from unime.mining.retrieval import search_hard_negatives

    index = build_index(pool, IndexConfig(kind="ivf"))
    runs = before_and_now(index, lambda: search_hard_negatives(index, q, pool[pos], pos, k=args.k),
                          "ivf_probed_sizes", lambda index, queries: None)
    same = all(a.tolist() == b.tolist() for a, b in zip(runs["before"][2].candidate_ids, runs["now"][2].candidate_ids))
    for name, (seconds, fetches, _) in runs.items():
        print(f"{name:>6}: {seconds:6.2f} s, fetches {fetches}")
    print(f"pool {args.pool:,}, {len(q):,} queries, k {args.k}: same candidate lists: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
