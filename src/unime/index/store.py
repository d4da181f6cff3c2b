"""An on-disk index of a corpus of items (`unime index build`), searched by `unime search` and `unime serve`.

Layout of an index folder::

    IDX/manifest.json            model (a local folder's absolute path, fingerprint, settings), dim, dtype,
                                 count, index kind and parameters, recall@k of an approximate index
                                 against exact search
    IDX/chunks/chunk-NNNNN.npy   L2-normalised vectors (float32 or float16), read memory-mapped
    IDX/chunks/chunk-NNNNN.jsonl one line per row: {"id", "item": {"text", "images", "video"},
                                 "metadata", "thumbnail"?} — written after the .npy: a chunk counts
                                 only once its .jsonl exists, so an interrupted build leaves no half chunk
    IDX/faiss.index              the FAISS index over every row (rebuilt when rows were added or re-encoded,
                                 or from the stored rows when another kind or other settings are asked for)
    IDX/.image_digests.tsv       the sha1 of each image file, known by size + mtime (`unime.data.image_digests`)

Building encodes through the shared embedding cache (`unime.models.embedding_cache`), one chunk at a
time; a re-run (resume after an interruption, or a corpus with more items) encodes only the ids that
are not in the index yet and appends them. Each row records the digest of its image/video files ("content"): an
item whose files changed since is re-encoded in place, and an item whose metadata was edited gets the new
metadata (not re-encoded). The corpus is an item file (`unime.data.corpus`: the format
`unime embed` reads too). Image paths are relative to the data root, recorded in the manifest (the service
reads candidate images from there only to rerank; thumbnails are stored inline in the index so pages never
need the files).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import operator
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unime.data.atomic import atomic_open, atomic_path
from unime.data.corpus import CorpusEntry, read_corpus
from unime.data.image_digests import ImageDigests, digest_items
from unime.data.items import Item
from unime.data.roots import recorded_root_of, resolve_data_root
from unime.data.skips import ErrorPolicy, SkipReport
from unime.data.video import VideoOptions, VideoSampling
from unime.errors import DataError, UnimeError
from unime.index.ann import (AUTO_APPROX_THRESHOLD, DEFAULT_RECALL_K, DEFAULT_RECALL_SAMPLE, INDEX_KINDS, AnnOptions,
                             IndexConfig, build_index, choose_kind, index_memory_bytes, recall_summary,
                             search)
from unime.models.embedding_cache import DTYPE_LABELS
from unime.models.loading import EmbedderOptions, dtype_option, model_reference
from unime.options import index_mmap_option, on_error_option, option
from unime.outdir import claim

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
VECTOR_DTYPES = ("float32", "float16")
DEFAULT_CHUNK_SIZE = 1024  # items per written chunk (the unit of resumption)
DIGESTS_FILE = ".image_digests.tsv"  # the image files' sha1, known by size + mtime (as eval's)
THUMBNAIL_SIZE = 128


_REBUILD = "build it anew with `unime index build` into a new folder (or remove this one first)"


class IndexError_(UnimeError):
    """An index folder that cannot be used as asked (another model, another dtype, not an index)."""


def thumbnail_data_uri(image, size: int = THUMBNAIL_SIZE) -> str:
    """A small JPEG of a PIL image as a `data:` URI."""
    im = image.copy()
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _item_json(item: Item) -> dict:
    out: dict[str, Any] = {"text": item.text}
    if item.images:
        out["images"] = list(item.images)
    if item.video:
        out["video"] = list(item.video)
    return out


@dataclass
class BuildStats:
    corpus_items: int = 0
    already_indexed: int = 0
    added: int = 0
    reencoded: int = 0      # indexed items whose image/video files changed: encoded again, their rows replaced
    metadata_updated: int = 0  # indexed items whose metadata was edited: rewritten, not encoded
    content_recorded: int = 0  # rows of an index built before contents were recorded: their digest recorded now
    encoded: int = 0        # run through the model (the rest came from the embedding cache)
    from_cache: int = 0
    # items of the same content as another item of their chunk (its vector reused: neither encoded nor read from the
    # cache); encoded + from_cache + repeats = added + reencoded
    repeats: int = 0
    chunks_written: int = 0
    skipped: dict = field(default_factory=dict)  # under on_error="skip": {"total", "by_reason"} of the report
    rebuilt: str | None = None  # the FAISS index's settings changed ("kind flat -> hnsw"): rebuilt
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class NpyChunk:
    """An index folder's chunk of vectors (an (n, d) .npy file), memory-mapped only while rows are read from it: a
    memory map keeps its file open, so an index holding every chunk mapped held one open file per chunk, and the
    common limit of 1,024 open files a process was reached near a million rows. Its shape and dtype are read when it
    is made; a file that another build has replaced since (another inode or size) is refused when read."""

    def __init__(self, path: Path):
        self.path = path
        self._stat = self._identity()
        mapped = np.load(path, mmap_mode="r")
        self.shape, self.dtype, self.ndim = mapped.shape, mapped.dtype, mapped.ndim
        del mapped  # unmapped, its file closed

    def _identity(self) -> tuple[int, int, int]:
        st = self.path.stat()
        return st.st_dev, st.st_ino, st.st_size

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if self._identity() != self._stat:
            raise IndexError_(f"{self.path} changed since the index was opened (a build rewrote it); open it again")
        return np.array(np.load(self.path, mmap_mode="r")[key])


class ChunkedRows:
    """Several (n_i, d) arrays (an index folder's chunks, `NpyChunk`) seen as one (sum n_i, d) matrix that
    slices by rows (`m[a:b]`, `m[int_array]`), copying only the rows asked for: FAISS indexes are built
    from it a block at a time (`unime.index.ann.build_index`) without a float32 copy of every row."""

    def __init__(self, chunks: list[np.ndarray], dim: int):
        self.chunks = chunks
        self.starts = np.cumsum([0] + [len(c) for c in chunks])
        self.shape = (int(self.starts[-1]), int(dim))
        self.dtype = chunks[0].dtype if chunks else np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            parts = []
            for c, c0 in zip(self.chunks, self.starts[:-1]):
                a, b = max(start - c0, 0), min(stop - c0, len(c))
                if a < b:
                    parts.append(np.asarray(c[a:b]))
            return np.concatenate(parts) if parts else np.zeros((0, self.shape[1]), dtype=self.dtype)
        rows = np.asarray(key, dtype=np.int64)
        if rows.ndim != 1:
            raise TypeError("ChunkedRows takes a slice or a 1-d array of row numbers")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row out of range 0..{len(self) - 1}")
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        for ci in np.unique(which):
            sel = which == ci
            out[sel] = self.chunks[ci][rows[sel] - self.starts[ci]]
        return out


class StoredRows(Sequence):
    """The rows of an index folder's chunks (a JSON line each in their .jsonl) as a read-only list whose items are
    parsed when asked for: held are each file's bytes and where its lines start and end (16 bytes a row), not a dict
    per row, which cost about 800 bytes of Python objects for a row of a short text, all parsed when the index
    opened (320 MiB and 8 s of 400,000 rows: `bench/index_memory.py`). A file's last row is parsed when it is added
    (a file cut short is refused then); lines are split at "\\n" only (`read_rows`)."""

    def __init__(self):
        self._data: list[bytes] = []
        self._spans: list[np.ndarray] = []  # per file: (rows, 2) start and end of each row's line
        self._first = np.zeros(1, dtype=np.int64)  # the number of each file's first row, then the row count

    def add(self, keys: Path) -> int:
        """Append the rows of the .jsonl `keys`; returns their number."""
        data = keys.read_bytes()
        ends = np.append(np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n")), len(data))
        starts = np.concatenate([[0], ends[:-1] + 1])
        spans = np.stack([starts, ends], axis=1)[ends > starts]
        if len(spans):
            json.loads(data[spans[-1, 0]:spans[-1, 1]])
        self._data.append(data)
        self._spans.append(spans)
        self._first = np.append(self._first, self._first[-1] + len(spans))
        return len(spans)

    def __len__(self) -> int:
        return int(self._first[-1])

    def __getitem__(self, row):
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        i = operator.index(row)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {row} out of range 0..{len(self) - 1}")
        f = int(np.searchsorted(self._first, i, side="right")) - 1
        a, b = self._spans[f][i - self._first[f]]
        return json.loads(self._data[f][a:b])


class CorpusIndex:
    """An index folder opened for search (see the module doc). `mmap`: the FAISS index is read memory-mapped
    (`read_faiss_index`): its vectors (and graph or lists) stay in the file, paged in by the searches, instead of
    copied into the process's memory; the rows' vectors (chunks/) are read from their files when asked for
    (`NpyChunk`)."""

    def __init__(self, folder: str | os.PathLike, *, load_faiss: bool = True, mmap: bool = False):
        self.folder = Path(folder)
        self.mmap = bool(mmap)
        mf = self.folder / "manifest.json"
        if not mf.is_file():
            raise IndexError_(f"{self.folder} is not a unime index (no manifest.json)")
        try:
            self._open(load_faiss)
        except IndexError_:
            raise
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:  # faiss raises RuntimeError
            what = " ".join(str(e).split())[:200]
            raise IndexError_(f"{self.folder}: the index is damaged ({type(e).__name__}: {what}); {_REBUILD}") from None

    def _open(self, load_faiss: bool) -> None:
        raw = (self.folder / "manifest.json").read_bytes()
        self.manifest_digest = _digest(raw)  # which build of the folder this is (`manifest_digest`)
        self.manifest = json.loads(raw.decode("utf-8"))
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise IndexError_(f"{self.folder}: index format {self.manifest.get('format_version')} is not "
                              f"{FORMAT_VERSION}; rebuild it")
        dim = self.manifest.get("dim")
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
            raise IndexError_(f"{self.folder / 'manifest.json'}: field 'dim' is {dim!r}, not a positive integer; "
                              f"{_REBUILD}")
        self._chunks: list[NpyChunk] = []
        self.entries = StoredRows()
        for keys in committed_chunks(self.folder):
            arr = NpyChunk(keys.with_suffix(".npy"))
            rows = self.entries.add(keys)
            if arr.shape[0] != rows:
                raise IndexError_(f"{keys}: {rows} entries for {arr.shape[0]} vectors")
            if dim is None:  # stopped between its first chunk and the manifest that records the vectors' size
                raise IndexError_(f"{self.folder}: the manifest records no 'dim' for the stored vectors (its build was "
                                  "interrupted); re-run `unime index build` with the same arguments to finish it")
            # a manifest whose dim disagrees with its vectors (edited by hand) was served, then every search failed
            if arr.ndim != 2 or arr.shape[1] != dim:
                raise IndexError_(f"{keys.with_suffix('.npy')}: vectors of shape {arr.shape}, but the field 'dim' of "
                                  f"{self.folder / 'manifest.json'} is {dim}; {_REBUILD}")
            self._chunks.append(arr)
        self.faiss = None
        count = (self.manifest.get("index") or {}).get("count")
        if load_faiss and (self.entries or count):
            if count is None:  # the build was stopped after its chunks were committed, before faiss.index
                raise IndexError_(f"{self.folder}: the index has no FAISS index yet (its build was interrupted after "
                                  f"{len(self.entries)} rows were stored); re-run `unime index build` with the same "
                                  "arguments to finish it")
            if count != len(self.entries):
                raise IndexError_(f"{self.folder}: the FAISS index covers {count} rows but {len(self.entries)} are "
                                  f"stored; re-run `unime index build` to finish it, or {_REBUILD}")
            self.faiss = read_faiss_index(self.folder / "faiss.index", mmap=self.mmap)
            if self.faiss.ntotal != len(self.entries):
                raise IndexError_(f"{self.folder}: faiss.index holds {self.faiss.ntotal} vectors for "
                                  f"{len(self.entries)} stored rows; {_REBUILD}")
            if self.faiss.d != dim:
                raise IndexError_(f"{self.folder}: faiss.index holds {self.faiss.d}-d vectors, but the field 'dim' "
                                  f"of {self.folder / 'manifest.json'} is {dim}; {_REBUILD}")

    def __len__(self) -> int:
        return len(self.entries)

    def require_items(self) -> "CorpusIndex":
        """This index, unless it holds no items: the folder of a build that has not stored its first chunk (still
        running, or stopped), whose manifest records no vector size, which every search failed on (a TypeError)."""
        if not len(self):
            raise IndexError_(f"{self.folder}: the index holds no items yet (its build has stored none: still "
                              "running, or stopped before its first chunk; re-run `unime index build` to finish it)")
        return self

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def data_root(self) -> str | None:
        return self.manifest.get("data_root")

    def vectors(self) -> np.ndarray:
        """All rows as float32 (a copy)."""
        if not self._chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate([np.asarray(c[:], dtype=np.float32) for c in self._chunks])

    def rows(self) -> ChunkedRows:
        """All rows as one row-sliceable matrix in the stored dtype, without copying them (see ChunkedRows)."""
        return ChunkedRows(self._chunks, self.dim if self._chunks else 0)

    def item(self, row: int) -> Item:
        return Item.from_dict(self.entries[row]["item"])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the top-k rows per query, best first; rows of -1 pad short results."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"query vectors have dimension {q.shape[1]}, the index {self.dim}")
        if not np.isfinite(q).all():  # FAISS answered a NaN query with rows -1 and scores -3.4e38, silently (QA)
            bad = int(np.flatnonzero(~np.isfinite(q).all(axis=1))[0])
            raise ValueError(f"query vector {bad} (row {bad} of the queries) holds NaN or inf: a search needs finite "
                             "query vectors")
        require_hits(k)  # k=0 gave one hit
        k = max(1, min(int(k), len(self)))
        if self.faiss is None:
            return np.zeros((len(q), 0), dtype=np.float32), np.zeros((len(q), 0), dtype=np.int64)
        return search(self.faiss, q, k)  # an hnsw index at efSearch max(--ef-search, k), for this search only


def read_faiss_index(path: str | os.PathLike, *, mmap: bool = False):
    """`faiss.read_index` of `path`; with `mmap`, memory-mapped (FAISS's IO_FLAG_MMAP_IFC): the codes of every
    index kind unime builds (flat, hnsw, ivf, float32 or float16 storage: the vectors, the HNSW graph's neighbour
    lists, the IVF lists) are read in place from the file, which stays mapped while the index lives. The searches are
    the same; the memory they use is the file's pages, which the kernel can drop and read again, not the process's
    own. A build replaces faiss.index by a rename (`atomic_path`), so a mapped index keeps reading the file it
    opened."""
    import faiss

    if not mmap:
        return faiss.read_index(str(path))
    flag = getattr(faiss, "IO_FLAG_MMAP_IFC", None)
    if flag is None:
        raise IndexError_(f"{path}: reading the index memory-mapped (--mmap) needs a FAISS with IO_FLAG_MMAP_IFC "
                          f"(1.11 or later); the installed one is {getattr(faiss, '__version__', '?')}")
    return faiss.read_index(str(path), flag)


def manifest_digest(folder: str | os.PathLike) -> str | None:
    """The digest of the index folder's manifest.json as it is now (None if it cannot be read): another than a
    `CorpusIndex`'s `manifest_digest` once a build of the folder finished. A build's last write is the manifest
    (its count, FAISS settings and build record); while it runs the manifest it rewrites keeps its content, so a
    changed digest means a finished build (or a damaged index, which `CorpusIndex` refuses)."""
    try:
        return _digest((Path(folder) / "manifest.json").read_bytes())
    except OSError:
        return None


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def require_hits(k: int) -> None:
    """ValueError unless `k` (hits asked of a search) is at least 1."""
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def is_index_folder(folder: str | os.PathLike) -> bool:
    """Does `folder` hold an index (a `manifest.json` with `format_version` and `model_fingerprint`, as
    `build_corpus_index` writes)? An index built before `unime index build` marked its folder (`unime.outdir`)
    is recognised by it, and taken as the command's own. A folder whose manifest.json is another stage's (a
    mining run's, an eval's) is refused, `IndexError_`, even under --overwrite: it is never taken."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        return False
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict) and "format_version" in manifest and "model_fingerprint" in manifest:
        return True
    raise IndexError_(f"{folder} exists and is not a unime index (its manifest.json is another stage's): refusing "
                      "to write into it; use another --out")


def read_rows(keys: Path) -> list[dict]:
    """The rows of a chunk's .jsonl, a line each. Split at "\\n" only: a row's JSON keeps U+2028, U+2029 and U+0085
    as they are (json.dumps(ensure_ascii=False) escapes only the ASCII controls), where str.splitlines splits too."""
    return [json.loads(line) for line in keys.read_text(encoding="utf-8").split("\n") if line]


def committed_chunks(folder: Path) -> list[Path]:
    """The `.jsonl` files of complete chunks (their `.npy` exists and was written first), in order."""
    return sorted(p for p in (folder / "chunks").glob("chunk-*.jsonl") if p.with_suffix(".npy").is_file())


def build_corpus_index(items_path: str | os.PathLike, out: str | os.PathLike, *, embedder, model: str,
                       data_root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                       vector_dtype: str = "float32", index: str = "auto", index_config: IndexConfig | None = None,
                       index_settings: dict | None = None, approx_threshold: int = AUTO_APPROX_THRESHOLD,
                       chunk_size: int = DEFAULT_CHUNK_SIZE, recall_k: int = DEFAULT_RECALL_K,
                       recall_sample: int = DEFAULT_RECALL_SAMPLE, seed: int = 0, thumbnails: bool = True,
                       batch_size: int | None = None, show_progress: bool = False,
                       model_settings: dict | None = None, overwrite: bool = False, on_error: str = "raise",
                       skips: SkipReport | None = None) -> tuple[CorpusIndex, BuildStats]:
    """Build or extend the index at `out` from the corpus at `items_path` (see the module doc). Image paths are
    relative to `data_root`, else to the data root recorded beside the file (`unime.data.roots`), else — adding
    to an index — to the index's, else to the file's folder. `out` is claimed for the build (`unime.outdir`):
    created, or an index folder (marked, or built before index folders were), or taken under `overwrite`.
    The FAISS index: of kind `index` (auto: the one an existing index was asked for) with the settings
    `index_config` (all of them) or `index_settings` ({IndexConfig field: value}, those only), the others an existing
    index's (else the defaults); an existing index whose kind or settings differ from those is rebuilt from its
    stored vectors, even when no item is added (`BuildStats.rebuilt` says why).
    Every new item's files are looked up before anything is written, the first chunk's images decoded, the others' as
    their chunk is reached: a bad line or item stops the build naming it (`DataError`), or under `on_error="skip"`
    is left out and counted in `skips` (`BuildStats.skipped`, the manifest's last_build); an id already indexed
    with other content stops it either way."""
    from unime.models.context import check_text_tokens
    from unime.models.embedding_cache import (EmbeddingStore, RunEncoder, cache_settings, embedding_settings,
                                              model_fingerprint)

    if vector_dtype not in VECTOR_DTYPES:
        raise ValueError(f"vector dtype must be one of {VECTOR_DTYPES}, got {vector_dtype!r}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    policy = ErrorPolicy(on_error, skips, f"index build {items_path}")  # logs what it skipped unless given `skips`
    skips = policy.skips
    t0 = time.perf_counter()
    out = Path(out)
    # one build per index folder at a time, in a folder marked as the index's (`unime.outdir`): two builds
    # appending to one index numbered their chunks alike and lost rows (QA); re-entrant under the CLI's claim
    options = {"items": str(items_path), "model": model, "vector_dtype": vector_dtype, "index": index}
    with claim(out, "index build", options, overwrite=overwrite, adopts=is_index_folder):
        root = Path(resolve_data_root(items_path, data_root))  # --data-root, else the one recorded beside the file
        settings = model_settings if model_settings is not None else embedding_settings(embedder)
        fingerprint = model_fingerprint(model, settings, keyed="the index's record of its model")
        manifest_path = out / "manifest.json"
        if is_index_folder(out):  # (a folder with another stage's manifest.json is refused)
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            why = model_mismatch(manifest, model, settings, device=getattr(embedder, "device", None))
            if why:
                raise IndexError_(f"{out} was built with model {manifest.get('model')!r} (fingerprint "
                                  f"{manifest.get('model_fingerprint')}), not {model!r} ({fingerprint}): {why}; "
                                  "use another --out")
            if manifest.get("vector_dtype") != vector_dtype:
                raise IndexError_(f"{out} stores {manifest.get('vector_dtype')} vectors, not {vector_dtype}")
            # an addition: its items' images are found where the index's are (unless given or recorded beside the
            # file), and the index keeps its kind and settings unless asked otherwise (QA: a new file's folder became
            # the images' root, and hnsw silently became flat; other settings asked for were ignored when no item
            # was added)
            indexed_root = manifest.get("data_root")
            if data_root is None and indexed_root and recorded_root_of(items_path) is None:
                root = Path(indexed_root)
            elif indexed_root and root.resolve() != Path(indexed_root).resolve():
                raise IndexError_(f"{out} holds items whose images are relative to {indexed_root}, not {root}: add "
                                  "items relative to that root (--data-root), or build a new index")
            before = manifest.get("index") or {}
            if index == "auto" and before.get("requested"):
                index = before["requested"]
            stored_settings = before.get("config") or {}
        elif any((out / "chunks").glob("chunk-*")):  # their index's manifest is gone: they cannot be told apart
            raise IndexError_(f"{out} holds chunks/ but no index manifest: refusing to add to it; {_REBUILD}")
        else:  # a new index; under --overwrite beside the files found in the folder
            stored_settings = {}
            # a local model folder by its absolute path, as the data root: the index is searched from any directory
            manifest = {"format_version": FORMAT_VERSION, "model": model_reference(model),
                        "model_fingerprint": fingerprint,
                        "model_settings": settings, "vector_dtype": vector_dtype, "dim": None,
                        "data_root": str(root.resolve()),
                        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        stats = BuildStats()
        entries = read_corpus(items_path, on_error=on_error, skips=skips)
        stats.corpus_items = len(entries)
        existing: dict[str, dict] = {}  # id -> the row stored under it
        chunk_of: dict[str, Path] = {}  # id -> its chunk's .jsonl
        chunks = committed_chunks(out)
        for keys in chunks:
            for row in read_rows(keys):
                existing[row["id"]] = row
                chunk_of[row["id"]] = keys
        for e in entries:  # an id is one item: new content under an indexed id would be silently kept old (QA)
            if e.id in existing and existing[e.id].get("item") != _item_json(e.item):
                raise IndexError_(f"{items_path}, line {e.line}: id {e.id!r} is indexed already with other content; "
                                  "give the new item another id, or build a new index")
        if chunks and manifest.get("dim") is None:  # interrupted before the manifest recorded the first chunk's
            manifest["dim"] = int(np.load(chunks[0].with_suffix(".npy"), mmap_mode="r").shape[1])
        todo = [e for e in entries if e.id not in existing]
        stats.already_indexed = len(entries) - len(todo)
        next_chunk = 1 + max((int(p.stem.split("-")[1]) for p in chunks), default=-1)
        # the cache's key: the model identity, the attention kernel and the device type (`cache_settings`; not the
        # index's identity)
        cached = cache_settings(settings, embedder)
        store = EmbeddingStore(Path(cache_dir) / model_fingerprint(model, cached, keyed="the embedding cache"),
                               model_info={"model": model_reference(model), "settings": cached}) if cache_dir else None
        from unime.data.io import ImageChecker
        from unime.models.loading import checkpoint_image_loader

        # a bad image (one the model's processor would refuse too) stops the build naming its line and field; a
        # video is checked by the frames the embedder samples
        loader = checkpoint_image_loader(model, getattr(embedder, "image_budget", None), root,
                                         video=getattr(getattr(embedder, "image_loader", None), "video_sampling", None))
        checker = ImageChecker(loader)
        # the indexed items: an image replaced at the same path kept its old vector, an edited caption its old
        # metadata (QA). Their files' digests (a stat each; a file is read again only when its size or mtime
        # changed) against those recorded: changed content is re-encoded, edited metadata rewritten.
        digests = ImageDigests(out / DIGESTS_FILE)
        changed: list[CorpusEntry] = []
        rewrite: dict[str, dict] = {}  # id -> its new row (metadata, content digest), vector kept
        gone = 0
        for e in entries:
            row = existing.get(e.id)
            if row is None:
                continue
            new = dict(row)
            if e.item.images or e.item.video:
                try:
                    content = digest_items([e.item], loader, digests)
                except (OSError, DataError):  # its files are gone: the row is kept as it was indexed
                    gone += 1
                    content = row.get("content")
                if row.get("content") is None and content is not None:
                    new["content"] = content  # indexed before contents were recorded: cannot be compared
                    stats.content_recorded += 1
                elif content != row.get("content"):
                    changed.append(e)
                    continue
            if (e.metadata or {}) != (row.get("metadata") or {}):
                new["metadata"] = e.metadata
                stats.metadata_updated += 1
            if new != row:
                rewrite[e.id] = new
        if gone:
            log.info("index: the files of %d indexed item(s) are gone; their rows are kept as indexed", gone)
        if stats.content_recorded:
            log.warning("index: %d row(s) were indexed before their files' content was recorded: recorded now, so "
                        "files changed before this build are not seen (build a new index to be sure)",
                        stats.content_recorded)
        # before anything is written: every new item's files exist (a stat each, no file opened: the items already
        # indexed are not looked at), and the first chunk's images decode (each image is checked once); the other
        # chunks' images are decoded as their chunk is reached. A missing image in the last chunk stopped a build
        # only there, after every chunk before it was encoded.
        # Under on_error="skip" a bad item is left out, counted (not indexed: a re-run tries it again).
        def good(e: CorpusEntry, check) -> bool:
            try:
                check(e.item, source=str(items_path), record=e.record)
                return True
            except DataError as err:
                policy.handle(err)  # raises under on_error="raise"
                return False

        t_check = time.perf_counter()
        # a text longer than the model is built for (`unime serve`'s limit too): the model read it whole, on positions
        # it was never trained on
        too_long = check_text_tokens(embedder)
        todo = [e for e in todo if good(e, too_long) and good(e, checker.check_files)]
        changed = [e for e in changed if good(e, too_long)]
        stats.seconds["check_files"] = round(time.perf_counter() - t_check, 3)
        changed = [e for e in changed if good(e, checker.check)]  # (under skip: its row kept, tried again later)
        todo = [e for e in todo[:chunk_size] if good(e, checker.check)] + todo[chunk_size:]
        if not todo and not existing and skips.total:
            raise DataError("no items to index: every item was skipped", source=str(items_path))
        # the corpus read and its ids checked: the build writes into `out` from here on
        (out / "chunks").mkdir(parents=True, exist_ok=True)
        _write_json(manifest_path, manifest)
        t_enc = time.perf_counter()

        def encode(part: list[CorpusEntry]) -> tuple[np.ndarray, list[dict]]:
            enc = RunEncoder(embedder, fingerprint, batch_size=batch_size, show_progress=show_progress,
                             digests=digests)
            enc.store = store
            # an item failing only when encoded (a video decoded then, a layout the item format refuses) is named by
            # its line, id and field
            rows = enc.add([e.item for e in part], root, source=str(items_path),
                           where=[(str(items_path), e.record, "item") for e in part])
            enc.encode_pending()
            vecs = enc.vectors(rows)
            stats.encoded += enc.stats.encoded
            stats.from_cache += enc.stats.from_cache
            stats.repeats += len(part) - enc.stats.distinct
            if manifest["dim"] is None:
                manifest["dim"] = int(vecs.shape[1])
            elif vecs.shape[1] != manifest["dim"]:
                raise IndexError_(f"the model gives {vecs.shape[1]}-d vectors, the index holds {manifest['dim']}-d")
            out_rows = []
            for e in part:
                row = {"id": e.id, "item": _item_json(e.item), "metadata": e.metadata}
                if e.item.images or e.item.video:
                    row["content"] = digest_items([e.item], loader, digests)
                if thumbnails and e.item.images:
                    row["thumbnail"] = thumbnail_data_uri(loader.load(e.item.images[0], source=str(items_path),
                                                                      record=e.record, field="item.images[0]"))
                out_rows.append(row)
            return vecs.astype(vector_dtype), out_rows

        # the indexed items first: the changed ones re-encoded, each chunk holding one rewritten in place
        new_vectors: dict[str, np.ndarray] = {}
        for s in range(0, len(changed), chunk_size):
            part = changed[s:s + chunk_size]
            vecs, rows = encode(part)
            for e, v, row in zip(part, vecs, rows):
                new_vectors[e.id], rewrite[e.id] = v, row
        stats.reencoded = len(new_vectors)
        for keys in chunks:
            _rewrite_chunk(keys, rewrite, new_vectors)
        for s in range(0, len(todo), chunk_size):
            part = [e for e in todo[s:s + chunk_size] if good(e, checker.check)]  # (checked once: the first's)
            if not part:
                continue
            vecs, rows = encode(part)
            stem = out / "chunks" / f"chunk-{next_chunk:05d}"
            with atomic_path(stem.with_suffix(".npy")) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, vecs)
            with atomic_open(stem.with_suffix(".jsonl")) as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            next_chunk += 1
            stats.chunks_written += 1
            stats.added += len(part)
            _write_json(manifest_path, manifest)
            log.info("index: %d/%d new items written", stats.added, len(todo))
        stats.seconds["encode"] = round(time.perf_counter() - t_enc, 3)

        idx = CorpusIndex(out, load_faiss=False)
        n = len(idx)
        asked = index_config.to_dict() if index_config is not None else dict(index_settings or {})
        cfg = IndexConfig(**{**stored_settings, **asked, "kind": choose_kind(index, n, approx_threshold)})
        stats.rebuilt = settings_change(manifest.get("index", {}).get("config"), cfg.to_dict())
        if n and (stats.added or stats.reencoded or manifest.get("index", {}).get("count") != n
                  or not (out / "faiss.index").is_file()
                  or stats.rebuilt):
            import faiss

            t_idx = time.perf_counter()
            vectors = idx.rows()
            kind = cfg.kind
            fidx = build_index(vectors, cfg)
            recall = recall_summary(fidx, cfg, vectors, k=recall_k, sample=recall_sample, seed=seed)
            with atomic_path(out / "faiss.index") as tmp:
                faiss.write_index(fidx, str(tmp))
            stats.seconds["index"] = round(time.perf_counter() - t_idx, 3)
            manifest["index"] = {"kind": kind, "requested": index, "config": cfg.to_dict(), "count": n,
                                 "approx_threshold": approx_threshold, "recall": recall,
                                 "memory_bytes": index_memory_bytes(fidx)}
            if not recall.get("exact"):
                log.info("index: %s recall@%d vs exact = %.4f on %d sampled rows", kind, recall["k"], recall["recall"],
                         recall["sample"])
        manifest["count"] = n
        stats.seconds["total"] = round(time.perf_counter() - t0, 3)
        stats.skipped = {"total": skips.total, "by_reason": dict(sorted(skips.counts.items()))}
        policy.finish()
        digests.save()
        manifest["last_build"] = stats.to_dict()
        _write_json(manifest_path, manifest)
        return CorpusIndex(out), stats


@dataclass(kw_only=True)
class IndexModelOptions(EmbedderOptions):
    """The embedder options of `unime index build` and `unime search`."""

    dtype: str = dtype_option(EmbedderOptions.dtype, after=" (part of the index's model identity)")


@dataclass(kw_only=True)
class IndexBuildConfig(IndexModelOptions, AnnOptions, VideoOptions):
    """Options of `unime index build`: each field declares its option (`unime.options`). The `--video-*` options
    sample the video items as the embedder was trained to see them; the sampling is one of the index's model
    settings (`embedding_settings`): an addition with another is refused, as with another dtype."""

    model: str = option(help="embedder checkpoint (HF folder, hub id, or PEFT adapter)")
    items: str = option(help='JSONL, one {"id"?, "metadata"?, "text"?, "image"?|"images"?} per line (id defaults to '
                        'the content key)')
    data_root: str | None = option(None, "folder image paths are relative to (default: the items file's folder)")
    out: str = option(help="index folder (created; an existing index is extended)")
    vector_dtype: str = option("float32", "stored vector precision", choices=list(VECTOR_DTYPES))
    index: str = option("auto", "FAISS index: flat = exact; auto = flat up to --approx-threshold vectors, hnsw above",
                        choices=["auto", *INDEX_KINDS])
    approx_threshold: int = option(AUTO_APPROX_THRESHOLD, "vectors up to which --index auto builds an exact index")
    recall_k: int = option(DEFAULT_RECALL_K, "k of the recall@k measured for an approximate index", at_least=1)
    recall_sample: int = option(DEFAULT_RECALL_SAMPLE, "rows sampled as queries for that measurement",
                               at_least=1)
    chunk_size: int = option(DEFAULT_CHUNK_SIZE, "items per written chunk (unit of resumption)", at_least=1)
    cache_dir: str | None = option(None, "embedding cache shared with eval/mine (default: $UNIME_CACHE_DIR or "
                                   "~/.cache/unime)")
    no_thumbnails: bool = option(False, "do not store image thumbnails in the index")
    on_error: str = on_error_option("skip bad lines and items whose image or video is missing or does not open "
                                    "(counted and reported; not indexed, so a re-run tries them again) instead of "
                                    "stopping at the first")


def build_index_folder(cfg: IndexBuildConfig, *, given=None, skips: SkipReport | None = None
                       ) -> tuple[CorpusIndex, BuildStats]:
    """`unime index build`: load the embedder and build or extend the index `cfg.out` (`build_corpus_index`).
    `given`: the names of the FAISS index options (`AnnOptions`) the user gave — the others keep an existing index's
    settings; None: all of `cfg`'s. Under `cfg.on_error="skip"` the items left out are counted into `skips`."""
    from unime.models.embedder import Embedder
    from unime.models.embedding_cache import default_cache_dir, embedding_settings

    cfg.index_config()  # bad index parameters are refused before the model loads
    root = resolve_data_root(cfg.items, cfg.data_root)  # --data-root, else the one recorded beside the file
    emb = Embedder.from_pretrained(cfg.model, device=cfg.device, dtype=cfg.dtype, data_root=root,
                                   batch_size=cfg.batch_size, item_format=cfg.item_format,
                                   attn_implementation=cfg.attn_implementation,
                                   video_sampling=VideoSampling.from_fields(cfg))
    return build_corpus_index(
        cfg.items, cfg.out, embedder=emb, model=cfg.model, data_root=root,
        cache_dir=cfg.cache_dir or default_cache_dir(), vector_dtype=cfg.vector_dtype, index=cfg.index,
        index_settings=cfg.index_settings(given), approx_threshold=cfg.approx_threshold, chunk_size=cfg.chunk_size,
        recall_k=cfg.recall_k, recall_sample=cfg.recall_sample, thumbnails=not cfg.no_thumbnails,
        batch_size=cfg.batch_size, show_progress=True, model_settings=embedding_settings(emb, cfg.dtype),
        on_error=cfg.on_error, skips=skips)


@dataclass(kw_only=True)
class SearchConfig(IndexModelOptions):
    """Options of `unime search`: each field declares its option (`unime.options`)."""

    index: str = option(help="index folder")
    query: str = option("", "query text")
    image: str | None = option(None, "query image file")
    video: str | None = option(None, "query video file (its frames sampled as the index's video items were)")
    instruction: str | None = option(None, "instruction put before the query text")
    model: str | None = option(None, "embedder (default: the one recorded in the index manifest)")
    k: int = option(10, "hits shown", at_least=1)
    json: bool = option(False, "print JSON lines instead of a table")
    mmap: bool = index_mmap_option()

    def __post_init__(self) -> None:
        super().__post_init__()
        require_hits(self.k)  # refused before the index and the model load

    def query_item(self) -> Item:
        text = self.query
        if self.instruction:
            text = f"{self.instruction}\n{text}" if text else self.instruction
        from unime.data.images import ImageLoader
        from unime.data.video import VideoFileRef, is_video_file_ref, probe_video_file

        # the files are checked here, before the index and the model load, and named (QA: "<inline bytes>")
        loader = ImageLoader(allow_outside_root=True)
        if self.image and is_video_file_ref(self.image):  # QA: "not in an image format PIL can read"
            from unime.errors import UsageError

            raise UsageError(f"--image {self.image} is a video file: give it as --video", command="search")
        if self.image:
            loader.load(self.image, field="--image")
        video = ()
        if self.video:  # its header (the frames are decoded when it is encoded), a file whatever its extension
            video = (VideoFileRef(str(Path(self.video).resolve())),)
            probe_video_file(loader, video[0], None, field="--video")
        return Item(text=text, images=(Path(self.image).read_bytes(),) if self.image else (), video=video)


def search_index_folder(cfg: SearchConfig, query: Item) -> list[dict]:
    """`unime search`: the top `cfg.k` hits of `query` in the index `cfg.index`, encoded by its embedder (a query
    video sampled as the index's videos, `index_video_sampling`; its path is the user's own, anywhere). A `cfg.image`
    beyond the embedder's aspect-ratio limit (its image budget, recorded with the checkpoint) is refused before the
    embedder loads."""
    from unime.models.context import check_text_tokens
    from unime.models.embedder import Embedder
    from unime.models.embedding_cache import embedding_settings
    from unime.models.loading import checkpoint_image_loader

    idx = CorpusIndex(cfg.index, mmap=cfg.mmap).require_items()
    model = cfg.model or idx.manifest["model"]
    if cfg.image:  # (`SearchConfig.query_item` checked the file, without the model's limit)
        checkpoint_image_loader(model, None, allow_outside_root=True).check_header(cfg.image, field="--image")
    if query.video:  # decoded as the index's videos, before the model loads: a clip damaged past its header (which
        # `query_item` checked) is named as --video, not as the encoder's 'items[0].video' after the load (QA)
        from unime.data.images import ImageLoader

        ImageLoader(allow_outside_root=True, video=index_video_sampling(idx.manifest)).load_video(
            query.video, field="--video")
    emb = Embedder.from_pretrained(model, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size,
                                   item_format=cfg.item_format, attn_implementation=cfg.attn_implementation,
                                   video_sampling=index_video_sampling(idx.manifest), allow_outside_root=True)
    check_model(idx, model, embedding_settings(emb, cfg.dtype), device=emb.device)
    # a query longer than the model is built for (`unime serve`'s limit too): the model read it whole, on positions it
    # was never trained on
    check_text_tokens(emb)(query, field="--query with --instruction" if cfg.instruction else "--query")
    return search_items(idx, emb.encode([query]), cfg.k)[0]


def index_video_sampling(manifest: dict) -> VideoSampling | None:
    """The video sampling an index's items were encoded with (its manifest's model settings, `embedding_settings`;
    None: the default): a query, or a service over the index, samples videos alike and so has the index's model
    settings (`check_model`). The frame rule is left to the embedder (`--item-format vlm2vec` sets its own)."""
    recorded = dict((manifest.get("model_settings") or {}).get("video_sampling") or {})
    recorded.pop("frame_rule", None)
    return VideoSampling(**recorded) if recorded else None


def settings_change(stored: dict | None, wanted: dict) -> str | None:
    """What differs between an index's stored FAISS settings (`IndexConfig.to_dict()`; None: a new index) and the
    wanted ones ("kind flat -> hnsw, storage float32 -> float16"), or None."""
    changed = [f"{k} {stored.get(k)} -> {v}" for k, v in wanted.items() if stored and k in stored and stored[k] != v]
    return ", ".join(changed) or None


def _rewrite_chunk(keys: Path, rows: dict[str, dict], vectors: dict[str, np.ndarray]) -> None:
    """Replace, in the chunk `keys` (its .jsonl; its .npy beside it), the rows of the ids in `rows` and the vectors of
    those in `vectors`; a chunk holding none is left as it is. The vectors are written first: interrupted between the
    two, the .jsonl still holds the old content digest, so the next build re-encodes the item again."""
    old = read_rows(keys)
    if not any(r["id"] in rows for r in old):
        return
    if any(r["id"] in vectors for r in old):
        arr = np.load(keys.with_suffix(".npy"))
        for i, r in enumerate(old):
            if r["id"] in vectors:
                arr[i] = vectors[r["id"]]
        with atomic_path(keys.with_suffix(".npy")) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, arr)
    with atomic_open(keys) as fh:
        for r in old:
            fh.write(json.dumps(rows.get(r["id"], r), ensure_ascii=False) + "\n")


def _write_json(path: Path, obj: Any) -> None:
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False, default=str)


def search_items(index: CorpusIndex, query_vectors: np.ndarray, k: int) -> list[list[dict]]:
    """Per query, the top-k hits as dicts: rank, row, id, score, item, metadata (and thumbnail if stored)."""
    scores, rows = index.search(query_vectors, k)
    out = []
    for srow, rrow in zip(scores, rows):
        hits = []
        for s, r in zip(srow, rrow):
            if r < 0:
                continue
            e = index.entries[int(r)]
            hit = {"rank": len(hits) + 1, "row": int(r), "id": e["id"], "score": float(s), "item": e["item"],
                   "metadata": e.get("metadata") or {}}
            if "thumbnail" in e:
                hit["thumbnail"] = e["thumbnail"]
            hits.append(hit)
        out.append(hits)
    return out


def check_model(index: CorpusIndex, model: str, settings: dict, *, device: str | None = None) -> None:
    """Raise unless `model` with `settings` is the model the index was built with (`model_mismatch`)."""
    why = model_mismatch(index.manifest, model, settings, device=device)
    if why:
        raise IndexError_(f"index {index.folder} was built with model {index.manifest.get('model')!r} "
                          f"(fingerprint {index.manifest.get('model_fingerprint')}), not {model!r}; {why}; "
                          "its vectors are not comparable")


def model_mismatch(manifest: dict, model: str, settings: dict, *, device: str | None = None) -> str | None:
    """None if `model` with `settings` is the model of the index `manifest` (same fingerprint), else why not:
    the settings that differ, or the model's files. A manifest that records the dtype option as given (auto,
    None: before the compute dtype was recorded) matches when that option gives the same dtype on `device`."""
    from unime.models.embedding_cache import model_fingerprint, run_folder_top_level_fingerprint

    fp = model_fingerprint(model, settings, keyed="the index's record of its model")
    expected = manifest.get("model_fingerprint")
    if fp == expected:
        return None
    built = manifest.get("model_settings") or {}
    legacy = built.get("dtype")
    if legacy is not None and legacy not in DTYPE_LABELS.values() and _dtype_label(legacy, device) == \
            settings.get("dtype") and model_fingerprint(model, {**settings, "dtype": legacy},
                                                         keyed="the index's record of its model") == expected:
        return None
    differ = [f"{k} {built.get(k)!r} (index) vs {settings.get(k)!r}" for k in sorted(set(built) | set(settings))
              if built.get(k) != settings.get(k)] if built else []
    if differ:
        ours, theirs = built.get("video_sampling"), settings.get("video_sampling")
        sampled = "" if ours == theirs else \
            f": the index's videos were sampled by {_video_options(ours)}, these by {_video_options(theirs)}"
        return f"settings differ: {', '.join(differ)}{sampled}"
    if run_folder_top_level_fingerprint(model, settings) == expected:
        return ("the index was built before a run folder was keyed by the weights it loads (its merged/ or adapter/), "
                f"so they cannot be told to be the same (fingerprint now {fp}); rebuild it (index build --overwrite)")
    return f"the model's files differ (fingerprint {fp})"


def _video_options(recorded: dict | None) -> str:
    """The `--video-*` options that give a recorded video sampling (`embedding_settings`' "video_sampling")."""
    from unime.data.video import numbering_options

    if not recorded:
        return "the defaults (no --video-* option)"
    sampling = VideoSampling(**{k: v for k, v in recorded.items() if k != "frame_rule"})
    pixels = sampling.max_video_pixels
    return numbering_options(sampling.numbering()) + \
        (f" --video-max-pixels {pixels}" if pixels != VideoSampling.max_video_pixels else "")


def _dtype_label(dtype: str, device: str | None) -> str | None:
    """The compute dtype (fp32, bf16, fp16) the dtype option `dtype` gives on `device`; None if unknown."""
    from unime.models.loading import resolve_dtype

    try:
        resolved = resolve_dtype(None if dtype == "None" else dtype, device or "cpu")
    except ValueError:
        return None
    return DTYPE_LABELS.get(str(resolved).removeprefix("torch."))
