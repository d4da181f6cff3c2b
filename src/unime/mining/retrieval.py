"""Stage A of UniME-V2 (SPEC §1.2): global retrieval of potential hard negatives.

- `build_pool(records)`: the global candidate pool, by default the de-duplicated union of all
  training positives across datasets (so a query may receive another dataset's targets).
- the embeddings come from `unime.models.embedding_cache` (the cache `unime eval` uses too).
- `build_index`: FAISS inner-product index over L2-normalised vectors (= cosine): exact `flat`
  (default), or approximate `hnsw` / `ivf` for large pools.
- `search_hard_negatives`: top-K per query under the δ rule: the positive, the query itself, and every
  candidate whose similarity is >= sim(q, c_t) are excluded; the retrieval rank order is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from unime.data.items import Item, Record

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "hnsw", "ivf")


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

@dataclass(frozen=True)
class IndexConfig:
    """`kind`: flat (exact), hnsw or ivf (approximate). `hnsw_m`, `ef_search`: HNSW graph degree and
    search breadth; `nlist` (0 = 4·sqrt(n)), `nprobe`: IVF lists and lists probed per query."""

    kind: str = "flat"
    hnsw_m: int = 32
    ef_search: int = 128
    nlist: int = 0
    nprobe: int = 16

    def __post_init__(self):
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {self.kind!r}")


def build_index(vectors: np.ndarray, config: IndexConfig = IndexConfig()):
    """A FAISS inner-product index over `vectors` (L2-normalised → cosine similarity)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if config.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = config.ef_search
    else:
        nlist = config.nlist or max(1, min(n // 39 or 1, int(4 * np.sqrt(max(n, 1)))))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(config.nprobe, nlist)
    index.add(vectors)
    return index


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
        _set_search_breadth(index, fetch)
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


def _set_search_breadth(index, fetch: int) -> None:
    hnsw = getattr(index, "hnsw", None)
    if hnsw is not None and hnsw.efSearch < fetch:
        hnsw.efSearch = fetch
