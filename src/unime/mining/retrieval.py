"""Stage A of UniME-V2 (SPEC §1.2): global retrieval of potential hard negatives.

- `build_pool(records)`: the global candidate pool, by default the de-duplicated union of all
  training positives across datasets (so a query may receive another dataset's targets).
- the embeddings come from `unime.models.embedding_cache` (the cache `unime eval` uses too).
- the index: `unime.index.ann` (shared with `unime index` and `unime serve`): exact `flat` (default),
  or approximate `hnsw` / `ivf` for large pools, whose recall@K against exact search is measured on a
  sample of the queries and written into the mining manifest and report.
- `search_hard_negatives`: top-K per query under the δ rule: the positive, the query itself, and every
  candidate whose similarity is >= sim(q, c_t) are excluded; the retrieval rank order is kept (similarity
  descending, ties by the higher pool id first, as FAISS orders them). A query whose positive ranks low is
  finished on an exact index, or on an hnsw one past the depth a search is worth (`scanned_index`), by a scan of
  the pool in blocks (`exhaustive_delta_rule`): time linear in queries x pool, memory bounded by
  `SEARCH_BLOCK_BYTES` whatever the pool.
- `CandidateWindow`: sentence-transformers' `mine_hard_negatives` knobs on top of the δ rule (margins below the
  positive, skipping the most similar survivors); at its defaults the δ rule alone.
- `query_positive_ids`: per record every positive of the records sharing its query (`Item.key`), which
  `search_hard_negatives` can exclude too (`unime mine --exclude-query-positives`, sentence-transformers' grouping
  of rows by anchor).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from unime.data.items import Item, Record
from unime.index.ann import hnsw_stored_vectors, ivf_probed_sizes, search
from unime.mining.progress import ProgressLog

log = logging.getLogger(__name__)

SEARCH_BLOCK_BYTES = 64 << 20  # memory of a search's result, or of a block of the pool scan, at a time
SCAN_ROWS = 1024  # queries scanned against the pool together (`exhaustive_delta_rule`)

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


def query_positive_ids(records: Sequence[Record], pool_index: dict[str, int]) -> list[np.ndarray]:
    """Per record the pool ids of the positives of every record with the same query item (`Item.key`, the identity
    the trainer's duplicate masking reads), its own among them, in first-seen order; a positive not in the pool
    has none. The records of one query share one array (memory per query, not per record)."""
    groups: dict[str, dict[int, None]] = {}
    for rec in records:
        pid = pool_index.get(rec.positive.key, -1)
        ids = groups.setdefault(rec.query.key, {})
        if pid >= 0:
            ids[pid] = None
    arrays = {key: np.fromiter(ids, dtype=np.int64, count=len(ids)) for key, ids in groups.items()}
    return [arrays[rec.query.key] for rec in records]


# -- index and search --------------------------------------------------------------------------------

@dataclass(frozen=True)
class CandidateWindow:
    """Which of a query's candidates survive the δ rule, as sentence-transformers' `mine_hard_negatives` reads
    its knobs: a candidate is kept only if sim(q, c) < sim(q, c_t) (the δ rule), sim(q, c) <= sim(q, c_t) -
    `absolute_margin` and sim(q, c) <= sim(q, c_t) - |sim(q, c_t)| * `relative_margin` (sentence-transformers'
    formula: `relative_margin` below the positive whatever its sign, where sim(q, c_t) * (1 - R) would lie above
    a negative positive); of the survivors in rank order the first `range_min` are skipped and those up to rank
    k are the candidates. Unlike sentence-transformers' range_max (a rank among everything retrieved but the
    positives), k counts the survivors (SPEC 1.2's K): the search goes deeper until k survive. The defaults (0)
    are the δ rule alone: a margin of 0 keeps nothing the strict δ rule drops."""

    range_min: int = 0
    absolute_margin: float = 0.0
    relative_margin: float = 0.0

    def within_margins(self, sims: np.ndarray, positive_sims: np.ndarray) -> np.ndarray:
        """Mask of the similarities (rows x candidates) the margins keep (`positive_sims`: a column, one per row),
        compared in float64; all True at margins 0 (the δ rule, applied beside it, decides alone)."""
        keep = np.ones(sims.shape, dtype=bool)
        if self.absolute_margin:
            keep &= sims.astype(np.float64) <= positive_sims.astype(np.float64) - self.absolute_margin
        if self.relative_margin:
            pos = positive_sims.astype(np.float64)
            keep &= sims.astype(np.float64) <= pos - np.abs(pos) * self.relative_margin
        return keep

    def window(self, ranked: np.ndarray) -> np.ndarray:
        """One query's first k survivors (rank order) without the first `range_min`."""
        return ranked[self.range_min:]


DELTA_RULE = CandidateWindow()


def apply_delta_rule(candidate_ids: np.ndarray, candidate_sims: np.ndarray, *, positive_id: int, positive_sim: float,
                     query_id: int = -1, k: int, rule: CandidateWindow = DELTA_RULE,
                     query_positive_ids: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray, int]:
    """The δ rule on one query's ranked search results (pure).

    Drops padding (-1), the positive itself, the query itself (when it is in the pool), the query's other
    positives (`query_positive_ids`), and every candidate with similarity >= sim(q, c_t) (or within `rule`'s
    margins of it); keeps rank order; returns the first k as (ids, sims, number dropped for scoring at or above
    the positive), without `rule.range_min`."""
    ids, sims, above, _ = delta_rule_rows(np.asarray(candidate_ids)[None], np.asarray(candidate_sims)[None],
                                          positive_ids=[positive_id], positive_sims=[positive_sim],
                                          query_ids=[query_id], k=k, rule=rule,
                                          query_positive_ids=padded_ids([np.asarray(query_positive_ids)]))
    return rule.window(ids[0]), rule.window(sims[0]), int(above[0])


def padded_ids(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Ragged rows of pool ids as one (rows x longest) int64 array, -1 (no id) after each row's own."""
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def excluded_columns(positive_ids, query_ids, query_positive_ids: np.ndarray | None) -> list[np.ndarray]:
    """The pool ids a block of rows drops before the δ rule, one id per row in each column (-1: none): the
    positive, the query itself and, when given (rows x m, `padded_ids`), the other positives of the row's query.
    Both search paths (`delta_rule_rows`, `exhaustive_delta_rule`) drop these."""
    columns = [np.asarray(positive_ids, dtype=np.int64), np.asarray(query_ids, dtype=np.int64)]
    if query_positive_ids is not None:
        columns += list(np.asarray(query_positive_ids, dtype=np.int64).T)
    return columns


def delta_rule_rows(ids: np.ndarray, sims: np.ndarray, *, positive_ids, positive_sims, query_ids, k: int,
                    rule: CandidateWindow = DELTA_RULE, query_positive_ids: np.ndarray | None = None) \
        -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """`apply_delta_rule` on a block of rows (one per query) at once: per row the first k kept ids and
    sims (`rule.range_min` not applied yet), the number dropped for scoring at or above the positive, and
    the number kept before the cut at k."""
    valid = ids >= 0
    for excluded in excluded_columns(positive_ids, query_ids, query_positive_ids):
        valid &= ids != excluded[:, None]
    psim = np.asarray(positive_sims, dtype=sims.dtype)[:, None]
    above = valid & (sims >= psim)
    keep = valid & ~above & rule.within_margins(sims, psim)
    n_kept = keep.sum(axis=1)
    keep &= np.cumsum(keep, axis=1) <= k
    cut = np.cumsum(np.minimum(n_kept, k))[:-1]
    return np.split(ids[keep], cut), np.split(sims[keep], cut), above.sum(axis=1), n_kept


@dataclass
class RetrievalResult:
    """Per query: candidate pool ids and similarities (rank order, at most K), sim(q, c_t), and how many
    retrieved candidates the δ rule dropped for scoring at or above the positive; `n_exact_scan`: the queries a
    search left short that the exact scan finished (`search_hard_negatives`; not stored in retrieval.parquet: the
    retrieval stage's record in manifest.json keeps it)."""

    candidate_ids: list[np.ndarray]
    candidate_sims: list[np.ndarray]
    positive_sims: np.ndarray
    n_above_positive: np.ndarray
    n_exact_scan: int = 0


def search_hard_negatives(index, query_vectors: np.ndarray, positive_vectors: np.ndarray,
                          positive_ids: Sequence[int], *, k: int = 50, query_ids: Sequence[int] | None = None,
                          overfetch: int = 16, batch_size: int = 4096, block_bytes: int = SEARCH_BLOCK_BYTES,
                          rule: CandidateWindow = DELTA_RULE,
                          query_positive_ids: Sequence[np.ndarray] | None = None) -> RetrievalResult:
    """Top-k hard-negative candidates per query under the δ rule (SPEC 1.2), and `rule`'s margins; the first
    `rule.range_min` of each query's k are left out (both paths below find the k, then `rule.window`). With
    `query_positive_ids` (per query, `query_positive_ids()`) every positive of the query is excluded, not only
    its own (sentence-transformers' rows sharing an anchor); the δ rule still reads the query's own positive.

    Every query is searched for k + `overfetch` candidates. A query whose positive ranks low has more
    candidates at or above it than that: on an exhaustive index (flat, float32 or float16) it is finished by
    `exhaustive_delta_rule`, a scan of the pool in blocks (the result of a search to the depth it needs, in
    time and memory linear in the pool); on an IVF index it is searched once more, past the number of vectors
    its probed lists hold (`ivf_probed_sizes`: the whole of its ranking, of which the 4x deeper searches took
    prefixes); on an hnsw index it is searched again with 4x the fetch until k survive, and finished by the scan
    of the index's own vectors once a 4x deeper search would score more vectors than the pool holds
    (`scanned_index`: exact, where the deeper searches, up to efSearch = the pool, were slower and still
    approximate). A search's result (rows x fetch) is held to about `block_bytes`, `batch_size` rows at most.
    The result counts the queries the scan finished (`RetrievalResult.n_exact_scan`)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0 <= rule.range_min < k:
        raise ValueError(f"range_min must be in [0, k) = [0, {k}), got {rule.range_min}")
    q = np.ascontiguousarray(query_vectors, dtype=np.float32)
    p = np.asarray(positive_vectors, dtype=np.float32)
    n = len(q)
    pos_sims = np.einsum("ij,ij->i", q, p).astype(np.float32)
    pos_ids = np.asarray(positive_ids, dtype=np.int64)
    qids = np.asarray(query_ids if query_ids is not None else [-1] * n, dtype=np.int64)

    def others(rows):  # the block's other positives of its queries, padded for the block only
        return None if query_positive_ids is None else padded_ids([query_positive_ids[r] for r in rows])
    ntotal = index.ntotal
    out_ids: list[Any] = [None] * n
    out_sims: list[Any] = [None] * n
    above = np.zeros(n, dtype=np.int64)
    pending = np.arange(n)
    fetch = min(k + overfetch, ntotal)
    exhaustive = is_exhaustive(index)
    scan_index, scan_past = scanned_index(index, exhaustive)
    ivf = None  # an IVF index's probed vectors per query (False: no IVF index), once a query needs more
    n_scanned = 0
    progress = ProgressLog(log, "retrieval: searched", n, "queries")
    while len(pending):
        rows_per_search = max(1, min(batch_size, block_bytes // (12 * max(fetch, 1))))
        still = []
        for s in range(0, len(pending), rows_per_search):
            rows = pending[s:s + rows_per_search]
            sims, ids = search(index, q[rows], fetch)  # hnsw: at efSearch max(its own, fetch), this search only
            kept_ids, kept_sims, n_above, n_kept = delta_rule_rows(ids, sims, positive_ids=pos_ids[rows],
                                                                   positive_sims=pos_sims[rows],
                                                                   query_ids=qids[rows], k=k, rule=rule,
                                                                   query_positive_ids=others(rows))
            done = (n_kept >= k) | (fetch >= ntotal) | (ids < 0).any(axis=1)
            if exhaustive and fetch < ntotal:  # the k-th kept ties the last fetched: which of its ties made
                # the fetch is FAISS's choice; the scan takes them by the higher id, as FAISS orders the rest
                last_kept = np.array([x[-1] if len(x) else np.nan for x in kept_sims], dtype=np.float32)
                done &= ~((n_kept >= k) & (last_kept == sims[:, -1]))
            for r in np.flatnonzero(done):
                out_ids[rows[r]] = rule.window(kept_ids[r].astype(np.int64))
                out_sims[rows[r]] = rule.window(kept_sims[r].astype(np.float32))
            above[rows[done]] = n_above[done]
            still.append(rows[~done])
            progress.add(int(done.sum()))
        pending = np.concatenate(still)
        if scan_index is not None and len(pending) and min(fetch * 4, ntotal) > scan_past:
            if scan_index is not index:
                log.info("retrieval: %s queries with fewer than %d candidates below the positive in the hnsw "
                         "search's top %d: finished by an exact scan of the index's vectors", f"{len(pending):,}",
                         k, fetch)
            n_scanned = len(pending)
            for s in range(0, len(pending), min(batch_size, SCAN_ROWS)):
                rows = pending[s:s + min(batch_size, SCAN_ROWS)]
                kept_ids, kept_sims, n_above = exhaustive_delta_rule(scan_index, q[rows],
                                                                     positive_ids=pos_ids[rows],
                                                                     positive_sims=pos_sims[rows],
                                                                     query_ids=qids[rows], k=k,
                                                                     block_bytes=block_bytes, rule=rule,
                                                                     query_positive_ids=others(rows))
                for r, row in enumerate(rows):
                    out_ids[row], out_sims[row] = rule.window(kept_ids[r]), rule.window(kept_sims[r])
                above[rows] = n_above
                progress.add(len(rows))
            break
        if ivf is None and len(pending):
            ivf = ivf_probed_sizes(index, q)
            ivf = False if ivf is None else ivf
        # IVF: one past the most the pending queries' lists hold, so that each ends on padding (all it has)
        wanted = int(ivf[pending].max()) + 1 if ivf is not False and len(pending) else 0
        fetch = min(wanted if wanted > fetch else fetch * 4, ntotal)
    progress.finish()
    return RetrievalResult(candidate_ids=out_ids, candidate_sims=out_sims, positive_sims=pos_sims,
                           n_above_positive=above, n_exact_scan=n_scanned)


# -- the exhaustive scan --------------------------------------------------------------------------------

def scanned_index(index, exhaustive: bool) -> tuple[Any, int]:
    """The index whose pool `exhaustive_delta_rule` scans for the queries a search leaves short, and the fetch
    past which they are scanned rather than searched deeper: an exhaustive index itself, at once (0); an HNSW
    index's own vectors (`hnsw_stored_vectors`) once a 4x deeper search would score more vectors than the pool
    holds (its search scores up to 2 x hnsw_m neighbours of each of `fetch` vectors it visits); (None, pool) for
    another index (IVF), which is only searched."""
    if exhaustive:
        return index, 0
    stored = hnsw_stored_vectors(index)
    if stored is not None and is_exhaustive(stored[0]):
        return stored[0], index.ntotal // max(stored[1], 1)
    return None, index.ntotal


def is_exhaustive(index) -> bool:
    """Whether `index` scores every pool vector by inner product (flat float32, or flat float16 storage):
    `exhaustive_delta_rule` gives its search's result."""
    import faiss

    if getattr(index, "metric_type", None) != faiss.METRIC_INNER_PRODUCT:
        return False
    if type(index) in (faiss.IndexFlat, faiss.IndexFlatIP):
        return True
    return type(index) is faiss.IndexScalarQuantizer and index.sq.qtype == faiss.ScalarQuantizer.QT_fp16


def _pool_block(index, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of the vectors `index` scores (a view of a flat index's own; float16 storage decoded)."""
    import faiss

    if isinstance(index, faiss.IndexFlat):
        return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)[start:stop]
    return index.reconstruct_n(start, stop - start)


def _rank_keys(sims: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """int64 keys that order (similarity, id) pairs as FAISS ranks them, larger first: by similarity, ties by the
    higher id (float32 bits made monotonic in the high half, the id in the low half)."""
    bits = (np.asarray(sims, dtype=np.float32) + np.float32(0)).view(np.int32).astype(np.int64)  # -0.0 as 0.0
    bits ^= (bits >> 31) & 0x7FFFFFFF
    return (bits << 32) | ids


def _from_rank_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bits = keys >> 32
    bits ^= (bits >> 31) & 0x7FFFFFFF
    return bits.astype(np.int32).view(np.float32), keys & 0xFFFFFFFF


def exhaustive_delta_rule(index, queries: np.ndarray, *, positive_ids, positive_sims, query_ids, k: int,
                          block_bytes: int = SEARCH_BLOCK_BYTES, rule: CandidateWindow = DELTA_RULE,
                          query_positive_ids: np.ndarray | None = None) \
        -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """The δ rule (and `rule`'s margins; `rule.range_min` not applied yet; the ids of `excluded_columns` dropped)
    on a search of the whole pool of an exhaustive index (`is_exhaustive`), without the rows x pool result: per
    query the first k kept (ids, sims) in FAISS's rank order (similarity descending, ties by the higher id first)
    and the number at or above the positive. The pool is scanned in blocks (about `block_bytes` of scores at a
    time), keeping a running top-k per query; the similarities are NumPy's
    inner products of the index's vectors (equal to FAISS's up to float32 rounding, which FAISS's own vary
    by as much with the number of queries searched together)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    b = len(q)
    n = index.ntotal
    rows = np.arange(b)
    excluded_ids = excluded_columns(positive_ids, query_ids, query_positive_ids)
    psim = np.asarray(positive_sims, dtype=np.float32)[:, None]
    cols = max(1, min(n, block_bytes // (16 * max(b, 1))))  # the scores and a few masks of a block
    dropped = np.iinfo(np.int64).min
    top = np.full((b, k), dropped, dtype=np.int64)  # rank keys of the best k kept so far, the k-th first
    floor = np.full((b, 1), -np.inf, dtype=np.float32)  # the k-th best similarity kept so far
    above = np.zeros(b, dtype=np.int64)
    for s in range(0, n, cols):
        y = _pool_block(index, s, min(n, s + cols))
        sims = q @ y.T
        for excluded in excluded_ids:  # NaN: neither at or above the positive nor kept
            inside = (excluded >= s) & (excluded < s + len(y))
            sims[rows[inside], excluded[inside] - s] = np.nan
        above += (sims >= psim).sum(axis=1)
        # only these can enter a row's best k
        r, c = np.nonzero((sims < psim) & (sims >= floor) & rule.within_margins(sims, psim))
        if not len(r):
            continue
        per_row = np.bincount(r, minlength=b)
        new = np.full((b, per_row.max()), dropped, dtype=np.int64)
        new[r, np.arange(len(r)) - (np.cumsum(per_row) - per_row)[r]] = _rank_keys(sims[r, c], s + c)
        top = np.partition(np.concatenate([top, new], axis=1), -k, axis=1)[:, -k:]
        floor = np.where(top[:, :1] == dropped, -np.inf, _from_rank_keys(top[:, :1])[0])
    top = np.sort(top, axis=1)[:, ::-1]
    sims, ids = _from_rank_keys(top)
    kept = top != dropped
    return [ids[r][kept[r]] for r in range(b)], [sims[r][kept[r]] for r in range(b)], above
