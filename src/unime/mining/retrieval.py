"""Stage A of UniME-V2 (SPEC §1.2): global retrieval of potential hard negatives.

- `build_pool(records)`: the global candidate pool, by default the de-duplicated union of all
  training positives across datasets (so a query may receive another dataset's targets).
- the embeddings come from `unime.models.embedding_cache` (the cache `unime eval` uses too).
- the index: `unime.index.ann` (shared with `unime index` and `unime serve`): exact `flat` (default),
  or approximate `hnsw` / `ivf` for large pools, whose recall@K against exact search is measured on a
  sample of the queries and written into the mining manifest and report.
- `search_hard_negatives`: top-K per query under the δ rule: the positive, the query itself, and every
  candidate whose similarity is >= sim(q, c_t) are excluded; the retrieval rank order is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from unime.data.items import Item, Record
from unime.index.ann import set_search_breadth

log = logging.getLogger(__name__)

# -- the pool ----------------------------------------------------------------------------------------

def build_pool(records: Sequence[Record], extra: Sequence[Item] = ()) -> list[Item]:
    """The de-duplicated union (by `Item.key`, first occurrence order) of every record's positive,
    followed by `extra` items. This is SPEC 1.2's global pool."""
    seen: dict[str, Item] = {}
    for rec in records:
        seen.setdefault(rec.positive.key, rec.positive)
    for it in extra:
        seen.setdefault(it.key, it)
    return list(seen.values())


# -- index and search --------------------------------------------------------------------------------

def apply_delta_rule(candidate_ids: np.ndarray, candidate_sims: np.ndarray, *, positive_id: int, positive_sim: float,
                     query_id: int = -1, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The δ rule on one query's ranked search results (pure).

    Drops padding (-1), the positive itself, the query itself (when it is in the pool), and every
    candidate with similarity >= sim(q, c_t); keeps rank order; returns the first k as (ids, sims,
    number dropped for scoring at or above the positive)."""
    ids = np.asarray(candidate_ids)
    sims = np.asarray(candidate_sims)
    valid = ids >= 0
    above = valid & (sims >= positive_sim) & (ids != positive_id) & (ids != query_id)
    keep = valid & ~above & (ids != positive_id) & (ids != query_id)
    return ids[keep][:k], sims[keep][:k], int(above.sum())


@dataclass
class RetrievalResult:
    """Per query: candidate pool ids and similarities (rank order, at most K), sim(q, c_t), and how many
    retrieved candidates the δ rule dropped for scoring at or above the positive."""

    candidate_ids: list[np.ndarray]
    candidate_sims: list[np.ndarray]
    positive_sims: np.ndarray
    n_above_positive: np.ndarray


def search_hard_negatives(index, query_vectors: np.ndarray, positive_vectors: np.ndarray,
                          positive_ids: Sequence[int], *, k: int = 50, query_ids: Sequence[int] | None = None,
                          overfetch: int = 16, batch_size: int = 4096) -> RetrievalResult:
    """Top-k hard-negative candidates per query under the δ rule (SPEC 1.2).

    A query whose positive ranks low has many candidates at or above it; those rows are searched again
    with a larger fetch until k survive or the pool is exhausted."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = np.ascontiguousarray(query_vectors, dtype=np.float32)
    p = np.asarray(positive_vectors, dtype=np.float32)
    n = len(q)
    pos_sims = np.einsum("ij,ij->i", q, p).astype(np.float32)
    pos_ids = np.asarray(positive_ids, dtype=np.int64)
    qids = np.asarray(query_ids if query_ids is not None else [-1] * n, dtype=np.int64)
    ntotal = index.ntotal
    out_ids: list[Any] = [None] * n
    out_sims: list[Any] = [None] * n
    above = np.zeros(n, dtype=np.int64)
    pending = np.arange(n)
    fetch = min(k + overfetch, ntotal)
    while len(pending):
        set_search_breadth(index, fetch)
        still = []
        for s in range(0, len(pending), batch_size):
            rows = pending[s:s + batch_size]
            sims, ids = index.search(q[rows], fetch)
            for r, row in enumerate(rows):
                kept_ids, kept_sims, n_above = apply_delta_rule(ids[r], sims[r], positive_id=int(pos_ids[row]),
                                                                positive_sim=float(pos_sims[row]),
                                                                query_id=int(qids[row]), k=k)
                exhausted = fetch >= ntotal or (ids[r] < 0).any()
                if len(kept_ids) >= k or exhausted:
                    out_ids[row] = kept_ids.astype(np.int64)
                    out_sims[row] = kept_sims.astype(np.float32)
                    above[row] = n_above
                else:
                    still.append(row)
        pending = np.array(still, dtype=np.int64)
        fetch = min(fetch * 4, ntotal)
    return RetrievalResult(candidate_ids=out_ids, candidate_sims=out_sims, positive_sims=pos_sims,
                           n_above_positive=above)
