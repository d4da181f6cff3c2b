"""Stage A of UniME-V2 (SPEC §1.2): global retrieval of potential hard negatives.

- `build_pool(records)`: the global candidate pool, by default the de-duplicated union of all
  training positives across datasets (so a query may receive another dataset's targets).
- `EmbeddingCache`: on-disk, memory-mapped embeddings keyed by the embedder's fingerprint and each
  item's content key; a re-run encodes nothing, a partly cached set encodes only the missing items.
  Items are encoded in blocks, each block written atomically, so a killed encode resumes.
- `build_index`: FAISS inner-product index over L2-normalised vectors (= cosine): exact `flat`
  (default), or approximate `hnsw` / `ivf` for large pools.
- `search_hard_negatives`: top-K per query under the δ rule: the positive, the query itself, and every
  candidate whose similarity is >= sim(q, c_t) are excluded; the retrieval rank order is kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unime.data.atomic import atomic_open, atomic_path
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


# -- embedding cache -----------------------------------------------------------------------------------

def model_fingerprint(embedder) -> str:
    """A key for "same model, same embeddings": checkpoint path, config, weight files (size, mtime),
    pooling, instruction suffix and dtype. Retraining into the same folder changes it."""
    h = hashlib.sha1()
    name = str(getattr(embedder, "name", "") or "")
    model = getattr(embedder, "model", None)
    config = getattr(model, "config", None)
    parts: dict[str, Any] = {
        "name": os.path.abspath(name) if name and os.path.exists(name) else name,
        "pooling": getattr(embedder, "pooling", None),
        "suffix": getattr(embedder, "instruction_suffix", ""),
        "dtype": str(getattr(model, "dtype", "")),
        "config": config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else None,
    }
    if name and os.path.isdir(name):
        files = []
        for p in sorted(Path(name).iterdir()):
            if p.suffix in (".safetensors", ".bin", ".pt") and p.is_file():
                st = p.stat()
                files.append([p.name, st.st_size, st.st_mtime_ns])
        parts["weights"] = files
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


class EmbeddingCache:
    """Embeddings stored under `root/<model_key>/` as segments `seg-NNNNNN.npy` (float32, memory-mapped
    on read) with their item keys in `seg-NNNNNN.keys.json`. The keys file is written last, so a segment
    without one (an interrupted write) is ignored."""

    def __init__(self, root: str | os.PathLike, model_key: str, *, block_size: int = 4096):
        self.dir = Path(root) / model_key
        self.block_size = block_size
        self._rows: dict[str, tuple[int, int]] = {}
        self._segments: list[np.ndarray] = []
        self._load()

    def _load(self) -> None:
        self._rows.clear()
        self._segments.clear()
        if not self.dir.is_dir():
            return
        for keys_file in sorted(self.dir.glob("seg-*.keys.json")):
            vec_file = keys_file.with_name(keys_file.name[: -len(".keys.json")] + ".npy")
            if not vec_file.is_file():
                continue
            keys = json.loads(keys_file.read_text())
            vecs = np.load(vec_file, mmap_mode="r")
            if vecs.shape[0] != len(keys):
                log.warning("embedding cache segment %s is inconsistent; ignored", vec_file)
                continue
            seg = len(self._segments)
            self._segments.append(vecs)
            for r, k in enumerate(keys):
                self._rows.setdefault(k, (seg, r))

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Vectors of `keys` (all must be cached), float32 (n, d)."""
        if not keys:
            dim = self._segments[0].shape[1] if self._segments else 0
            return np.zeros((0, dim), dtype=np.float32)
        missing = [k for k in keys if k not in self._rows]
        if missing:
            raise KeyError(f"{len(missing)} keys not in the embedding cache, e.g. {missing[0]}")
        dim = self._segments[self._rows[keys[0]][0]].shape[1]
        out = np.empty((len(keys), dim), dtype=np.float32)
        by_seg: dict[int, list[tuple[int, int]]] = {}
        for i, k in enumerate(keys):
            seg, row = self._rows[k]
            by_seg.setdefault(seg, []).append((i, row))
        for seg, pairs in by_seg.items():
            dst = np.array([p[0] for p in pairs])
            src = np.array([p[1] for p in pairs])
            out[dst] = self._segments[seg][src]
        return out

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Append one segment (atomically: vectors first, then the keys file that commits it)."""
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")
        if not len(keys):
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        n = len(list(self.dir.glob("seg-*.npy")))
        while (self.dir / f"seg-{n:06d}.npy").exists():
            n += 1
        stem = self.dir / f"seg-{n:06d}"
        with atomic_path(stem.with_suffix(".npy")) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32))
        with atomic_open(stem.with_name(stem.name + ".keys.json")) as fh:
            json.dump(list(keys), fh)
        seg = len(self._segments)
        self._segments.append(np.load(stem.with_suffix(".npy"), mmap_mode="r"))
        for r, k in enumerate(keys):
            self._rows.setdefault(k, (seg, r))

    def encode(self, embedder, items: Sequence[Item], *, batch_size: int | None = None,
               show_progress: bool = False) -> tuple[np.ndarray, int]:
        """Embeddings of `items` (float32 (n, d)), encoding only the ones not cached yet.
        Returns (vectors, number of items encoded now)."""
        keys = [it.key for it in items]
        todo: dict[str, Item] = {}
        for it, k in zip(items, keys):
            if k not in self._rows and k not in todo:
                todo[k] = it
        pending = list(todo.items())
        for s in range(0, len(pending), self.block_size):
            block = pending[s:s + self.block_size]
            vecs = embedder.encode([it for _, it in block], batch_size=batch_size, show_progress=show_progress)
            self.add([k for k, _ in block], np.asarray(vecs, dtype=np.float32))
        return self.get(keys), len(pending)


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
