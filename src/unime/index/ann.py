"""FAISS inner-product indexes over L2-normalised vectors (inner product = cosine similarity).

- `IndexConfig` / `build_index`: exact `flat` (default) or approximate `hnsw` / `ivf`, holding the vectors
  as float32 or float16 (`storage`); built from any row-sliceable matrix (a memory-mapped `.npy`, float16
  rows, the chunks of an index folder) a block of rows at a time, so the whole float32 matrix never has to
  be in memory; IVF's coarse quantizer is trained on a sample (`train_sample`).
- `choose_kind`: `auto` → exact up to `AUTO_APPROX_THRESHOLD` vectors, HNSW above.
- `measure_recall`: recall@k of an index against exact search (NumPy matrix products) on a sample of
  queries; an exact index is 1.0 by construction and is not measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from unime.options import RangeChecked, option

INDEX_KINDS = ("flat", "hnsw", "ivf")
INDEX_STORAGES = ("float32", "float16")
ADD_BLOCK_ROWS = 65536  # rows converted to float32 and added to the index at a time
AUTO_APPROX_THRESHOLD = 200_000  # `auto` switches from exact to HNSW above this many vectors
DEFAULT_RECALL_K = 10  # k of the recall@k measured for an approximate index
DEFAULT_RECALL_SAMPLE = 200  # rows sampled as queries for that measurement


@dataclass(frozen=True)
class IndexConfig:
    """`kind`: flat (exact), hnsw or ivf (approximate). `hnsw_m`, `ef_search`: HNSW graph degree and
    search breadth; `ef_construction`: HNSW build breadth; `nlist` (0 = 4·sqrt(n)), `nprobe`: IVF lists
    and lists probed per query; `train_sample`: vectors drawn (with `seed`) to train IVF's lists (0 =
    min(n, 256·nlist), what FAISS's k-means would subsample to anyway); `storage`: float32, or float16
    (FAISS's fp16 scalar quantizer: half the memory, scores within fp16 rounding of float32)."""

    kind: str = "flat"
    hnsw_m: int = 32
    ef_search: int = 128
    ef_construction: int = 40
    nlist: int = 0
    nprobe: int = 16
    train_sample: int = 0
    storage: str = "float32"
    seed: int = 0

    def __post_init__(self):
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {self.kind!r}")
        if self.storage not in INDEX_STORAGES:
            raise ValueError(f"index storage must be one of {INDEX_STORAGES}, got {self.storage!r}")
        for name in ("hnsw_m", "ef_search", "ef_construction", "nprobe"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.nlist < 0 or self.train_sample < 0:
            raise ValueError("nlist and train_sample must be >= 0 (0 = automatic)")

    def to_dict(self) -> dict:
        return asdict(self)


ANN_GROUP = "FAISS index"


@dataclass(kw_only=True)
class AnnOptions(RangeChecked):
    """The `IndexConfig` parameters as options of `unime index build` and `unime mine` (defaults: its own; their
    ranges as `IndexConfig` checks them, so that a value outside is refused naming the option, `--ef-search`)."""

    option_groups = {ANN_GROUP: "approximate search (hnsw, ivf) and the precision of the vectors inside the index"}
    nlist: int = option(IndexConfig.nlist, "ivf: number of lists (0 = 4*sqrt(n))", group=ANN_GROUP, at_least=0)
    nprobe: int = option(IndexConfig.nprobe, "ivf: lists probed per query", group=ANN_GROUP, at_least=1)
    train_sample: int = option(IndexConfig.train_sample, "ivf: vectors sampled to train the lists "
                               "(0 = min(n, 256*nlist))", group=ANN_GROUP, at_least=0)
    hnsw_m: int = option(IndexConfig.hnsw_m, "hnsw: graph degree", group=ANN_GROUP, at_least=1)
    ef_construction: int = option(IndexConfig.ef_construction, "hnsw: build breadth", group=ANN_GROUP,
                                 at_least=1)
    ef_search: int = option(IndexConfig.ef_search, "hnsw: search breadth", group=ANN_GROUP, at_least=1)
    index_storage: str = option(IndexConfig.storage, "precision of the vectors inside the FAISS index (float16: "
                                "half the memory)", choices=list(INDEX_STORAGES), group=ANN_GROUP)

    def index_config(self, kind: str = "flat", seed: int = 0) -> IndexConfig:
        return IndexConfig(kind=kind, seed=seed, **AnnOptions.index_settings(self))

    def index_settings(self, given=None) -> dict:
        """{IndexConfig field: value} of these options; with `given` (option names, e.g. those the user gave),
        of those only."""
        return {"storage" if f.name == "index_storage" else f.name: getattr(self, f.name)
                for f in fields(AnnOptions) if given is None or f.name in given}


def choose_kind(kind: str, n: int, threshold: int = AUTO_APPROX_THRESHOLD) -> str:
    """`kind` itself, or for `auto`: flat up to `threshold` vectors, hnsw above."""
    if kind == "auto":
        return "flat" if n <= threshold else "hnsw"
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be auto or one of {INDEX_KINDS}, got {kind!r}")
    return kind


def ivf_nlist(n: int, config: IndexConfig) -> int:
    return config.nlist or max(1, min(n // 39 or 1, int(4 * np.sqrt(max(n, 1)))))


def ivf_train_rows(n: int, nlist: int, config: IndexConfig) -> np.ndarray:
    """Sorted row numbers IVF's k-means is trained on: `train_sample` (default min(n, 256·nlist)) rows
    drawn without replacement with `seed`, at least `nlist` (k-means needs a point per list)."""
    size = config.train_sample or 256 * nlist
    size = min(n, max(size, nlist))
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(config.seed).choice(n, size=size, replace=False))


def _rows(vectors, rows) -> np.ndarray:
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def build_index(vectors, config: IndexConfig = IndexConfig()):
    """A FAISS inner-product index over `vectors` (L2-normalised → cosine similarity). `vectors`: any
    (n, d) matrix that slices by rows (NumPy array, memory-mapped `.npy`, float16); it is added
    `ADD_BLOCK_ROWS` rows at a time, converted to float32 a block at a time."""
    import faiss

    n, d = vectors.shape
    fp16 = config.storage == "float16"
    ip = faiss.METRIC_INNER_PRODUCT
    if config.kind == "flat":
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, ip) if fp16 else faiss.IndexFlatIP(d)
    elif config.kind == "hnsw":
        index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_fp16, config.hnsw_m, ip) if fp16 \
            else faiss.IndexHNSWFlat(d, config.hnsw_m, ip)
        index.hnsw.efConstruction = config.ef_construction
        index.hnsw.efSearch = config.ef_search
    else:
        nlist = ivf_nlist(n, config)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_fp16, ip, False) if fp16 \
            else faiss.IndexIVFFlat(quantizer, d, nlist, ip)
        if n:
            index.train(_rows(vectors, ivf_train_rows(n, nlist, config)))
        index.nprobe = min(config.nprobe, nlist)
    if not index.is_trained:  # the fp16 scalar quantizer has nothing to learn; FAISS still asks for the call
        index.train(np.zeros((1, d), dtype=np.float32))
    for s in range(0, n, ADD_BLOCK_ROWS):
        index.add(_rows(vectors, slice(s, min(n, s + ADD_BLOCK_ROWS))))
    return index


def search(index, queries: np.ndarray, k: int):
    """`index.search(queries, k)`: (scores, ids). An HNSW index is searched at efSearch max(its own, k), so that it
    can return k results, by FAISS's per-search parameters: the index's efSearch (the configured `ef_search`) is
    never changed, so a deep search widens neither the searches after it (their results, their time, a recall
    measured after it) nor those running beside it in another thread."""
    hnsw = getattr(index, "hnsw", None)
    if hnsw is None or hnsw.efSearch >= k:
        return index.search(queries, k)
    import faiss

    params = faiss.SearchParametersHNSW()
    params.efSearch = int(k)
    params.check_relative_distance = hnsw.check_relative_distance  # the index's other search settings
    params.bounded_queue = hnsw.search_bounded_queue
    return index.search(queries, k, params=params)


def hnsw_stored_vectors(index):
    """An HNSW index's own vectors as the flat index it keeps them in (IndexFlat, or the fp16 scalar quantizer of
    float16 storage), which an exhaustive scan can read, and the most neighbours a vector has in its graph's
    bottom layer (2 x hnsw_m: about the vectors one step of its search scores). None when `index` is no HNSW
    index."""
    import faiss

    hnsw = getattr(index, "hnsw", None)
    if hnsw is None or getattr(index, "storage", None) is None:
        return None
    return faiss.downcast_index(index.storage), int(hnsw.nb_neighbors(0))


def ivf_probed_sizes(index, queries: np.ndarray) -> np.ndarray | None:
    """Per query the number of vectors an IVF index's search scores (the sizes of the `nprobe` lists its coarse
    quantizer picks, as the search picks them): more than that it never returns, and its top-n for any n is a
    prefix of that ranking. None when `index` is no IVF index."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return None
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], dtype=np.int64)
    _, lists = ivf.quantizer.search(np.ascontiguousarray(queries, dtype=np.float32), min(ivf.nprobe, ivf.nlist))
    return np.where(lists >= 0, sizes[np.maximum(lists, 0)], 0).sum(axis=1)


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int, *, chunk: int = 65536) -> np.ndarray:
    """Ids of the exact top-k by inner product (NumPy, independent of FAISS), rows in rank order."""
    q = np.asarray(queries, dtype=np.float32)
    k = min(k, len(vectors))
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for s in range(0, len(vectors), chunk):
        block = np.asarray(vectors[s:s + chunk], dtype=np.float32)
        sims = q @ block.T
        ids = np.broadcast_to(np.arange(s, s + len(block)), sims.shape)
        all_s = np.concatenate([best_s, sims], axis=1)
        all_i = np.concatenate([best_i, ids], axis=1)
        top = np.argpartition(-all_s, k - 1, axis=1)[:, :k] if all_s.shape[1] > k else np.argsort(-all_s, axis=1)
        best_s = np.take_along_axis(all_s, top, axis=1)
        best_i = np.take_along_axis(all_i, top, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, axis=1)


def measure_recall(index, vectors: np.ndarray, *, k: int = DEFAULT_RECALL_K, sample: int = DEFAULT_RECALL_SAMPLE,
                   seed: int = 0,
                   queries: np.ndarray | None = None) -> dict:
    """recall@k of `index` against exact search: |approx top-k ∩ exact top-k| / k averaged over a sample
    of queries (by default `sample` rows of `vectors` drawn with `seed`; the row itself counts as a hit
    like any other neighbour). Returns a dict for manifests and reports."""
    n = len(vectors)
    k = int(min(k, n))
    if queries is None:
        rng = np.random.default_rng(seed)
        rows = rng.choice(n, size=min(sample, n), replace=False) if n else np.zeros(0, dtype=np.int64)
        queries = np.asarray(vectors[np.sort(rows)], dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if k < 1 or not len(queries):
        return {"k": k, "sample": 0, "recall": None, "exact": False}
    _, approx = search(index, queries, k)
    exact = exact_topk(vectors, queries, k)
    hits = [len(set(a[a >= 0].tolist()) & set(e.tolist())) / k for a, e in zip(approx, exact)]
    return {"k": k, "sample": int(len(queries)), "recall": float(np.mean(hits)), "seed": seed}


def index_memory_bytes(index) -> int:
    """Bytes of `index` serialised by FAISS (its vectors, graph or lists), counted as FAISS writes them
    (no copy of the index is made: a 6 GB index is not serialised into memory to be measured)."""
    import faiss

    total = 0

    def count(chunk) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    return int(total)


def recall_summary(index, config: IndexConfig, vectors: np.ndarray, *, k: int = DEFAULT_RECALL_K,
                   sample: int = DEFAULT_RECALL_SAMPLE, seed: int = 0) -> dict:
    """`measure_recall` for an approximate index; an exact (`flat`) one is recorded as recall 1.0 by
    construction without a measurement."""
    if config.kind == "flat":
        return {"k": int(min(k, len(vectors))), "sample": 0, "recall": 1.0, "exact": True}
    out = measure_recall(index, vectors, k=k, sample=sample, seed=seed)
    out["exact"] = False
    return out
