"""Mining's retrieval (stage A) at two pool sizes: seconds and peak memory of `search_hard_negatives`, and their ratio.

    python bench/mining_retrieval_scale.py                           # pools of 2,500 and 10,000, 2 queries per item
    python bench/mining_retrieval_scale.py --pools 10000 50000 --re-search   # also the 4x-deeper re-search

Synthetic unit vectors (d = `--dim`), a query per half pool item, each query's positive a random pool item: as
with a weak embedder, most positives rank deep in the pool, so most queries are finished past the first fetch
of K + 16 (the case that made mining slow down super-linearly: 5,000 records 3.6 s, 20,000 records 80.5 s).
Each size runs in a fresh process; "peak" is that process's peak RSS above its RSS before the search (the
vectors and the index already built). `--re-search` also times the same exact index searched the way an
approximate one is (4x deeper until K survive, up to the whole pool), which is what the exact index did
before the blocked scan. Queries x pool grows by (b/a)^2 from pool a to b: linear cost grows by that ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class _Opaque:
    """The index under another type: `is_exhaustive` says no, so the search re-searches 4x deeper as on hnsw."""

    def __init__(self, index):
        self.index = index

    def __getattr__(self, name):
        return getattr(self.index, name)


def _child(pool_size: int, queries_per_item: float, dim: int, k: int, mode: str) -> None:
    import numpy as np

    from unime.index.ann import build_index
    from unime.mining.retrieval import search_hard_negatives

    rng = np.random.default_rng(0)

    def unit(n):
        v = rng.normal(size=(n, dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    pool = unit(pool_size)
    q = unit(int(pool_size * queries_per_item))
    pos = rng.integers(0, pool_size, size=len(q))
    index = build_index(pool)
    before = _rss_mb()
    t = time.perf_counter()
    res = search_hard_negatives(index if mode == "scan" else _Opaque(index), q, pool[pos], pos, k=k)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "queries": len(q),
                      "past_first_fetch": int((res.n_above_positive + k > k + 16).sum())}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pools", type=int, nargs=2, default=[2500, 10000], metavar=("A", "B"))
    ap.add_argument("--queries-per-item", type=float, default=2.0, help="queries per pool item (a mining run: ~2)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--re-search", action="store_true", help="also time the 4x-deeper re-search on the exact index")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(int(args.child[0]), args.queries_per_item, args.dim, args.k, args.child[1])
    modes = ["scan", "re-search"] if args.re_search else ["scan"]
    print(f"{'mode':10} {'pool':>7} {'queries':>8} {'past 1st fetch':>14} {'seconds':>8} {'peak MB':>8}")
    for mode in modes:
        runs = []
        for size in args.pools:
            out = subprocess.run([sys.executable, __file__, "--child", str(size), mode, "--dim", str(args.dim),
                                  "--k", str(args.k), "--queries-per-item", str(args.queries_per_item)],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            runs.append(r)
            print(f"{mode:10} {size:>7,} {r['queries']:>8,} {r['past_first_fetch']:>14,} {r['seconds']:>8.2f} "
                  f"{r['peak_mb']:>8.0f}")
        a, b = args.pools
        seconds, peak = runs[1]["seconds"] / runs[0]["seconds"], runs[1]["peak_mb"] / max(runs[0]["peak_mb"], 1)
        print(f"{mode:10} ratio {b / a:.0f}x pool: seconds x{seconds:.1f} (queries x pool x{(b / a) ** 2:.0f}), "
              f"peak memory x{peak:.1f}")


if __name__ == "__main__":
    main()
