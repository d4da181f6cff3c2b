"""The memory of mining's audit rows (stage C: one per query and retrieved candidate, `unime.mining.audit_rows`)
at user scale: held as columns (now) and as a list of dicts, 14 keys each (before), in one run, and whether both
write the same audit.parquet.

    python bench/mining_audit_memory.py [--records 20000] [--k 50]

Synthetic inputs: `--records` records over a pool of half as many text items, each with `--k` candidates and
judge scores drawn at random; `run_sampling` builds the rows, then they are copied into the dicts the code held
before (`dict(row)` per row: the same keys, values and types). Prints the bytes tracemalloc counts for each form
(Python objects and NumPy arrays, the pool and records excluded) and compares the two audit tables.

Measured (2026-12-05, 20,000 records, K 50: a million rows): dicts 602.0 MB, columns 89.2 MB, same audit.parquet.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import tracemalloc
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--k", type=int, default=50)
    args = ap.parse_args(argv)
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from unime.data.items import Item, Record
    from unime.mining.config import MineConfig
    from unime.mining.inputs import MiningInputs
    from unime.mining.retrieval import RetrievalResult
    from unime.mining.stages import run_sampling, write_outputs

    rng = np.random.default_rng(0)
    n, k = args.records, args.k
    pool = [Item(text=f"a caption of picture {i}", images=[f"images/{i:06d}.png"]) for i in range(max(n // 2, k + 1))]
    records = [Record(query=Item(text=f"query {i}"), positive=pool[i % len(pool)], id=f"r{i}", dataset="synth")
               for i in range(n)]
    data = MiningInputs(records=records, pool=pool, pool_index={p.key: i for i, p in enumerate(pool)}, skips=None,
                        fingerprints={}, images_hashed=0, seconds=0.0)
    ids = [rng.choice(len(pool), size=k, replace=False).astype(np.int64) for _ in range(n)]
    retrieval = RetrievalResult(candidate_ids=ids,
                                candidate_sims=[np.sort(rng.random(k).astype(np.float32))[::-1] for _ in range(n)],
                                positive_sims=rng.random(n).astype(np.float32), n_above_positive=np.zeros(n, np.int64))
    scores = {i: rng.random(k + 1) for i in range(n)}
    c = MineConfig(records="r.jsonl", embedder="e", judge="j", out="o")

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    _, rows, _ = run_sampling(c, data, retrieval, scores, {})
    gc.collect()
    columns = tracemalloc.get_traced_memory()[0] - base
    base = tracemalloc.get_traced_memory()[0]
    dicts = [dict(r) for r in rows]
    gc.collect()
    as_dicts = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    with tempfile.TemporaryDirectory() as tmp:
        write_outputs(Path(tmp), [], rows, {})
        now = pq.read_table(Path(tmp) / "audit.parquet")
        write_outputs(Path(tmp), [], dicts, {})
        before = pq.read_table(Path(tmp) / "audit.parquet")
    same = now.equals(before)
    print(f"{n:,} records, K {k}: {len(rows):,} audit rows")
    print(f"before (a dict per row): {as_dicts / 2**20:7.1f} MB   now (columns): {columns / 2**20:7.1f} MB   "
          f"same audit.parquet: {same}")
    return 0 if same and isinstance(now, pa.Table) else 1


if __name__ == "__main__":
    raise SystemExit(main())
