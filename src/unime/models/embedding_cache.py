"""Encode every distinct item exactly once, with an on-disk embedding cache — one cache for every stage
that embeds a set of items: `unime eval` (all tasks of a run) and `unime mine` (queries, positives
and the candidate pool of the global retrieval).

Keys:
- **model identity** (`model_fingerprint`): a hash of the checkpoint folder's top-level files — the
  content of every small file (config, tokenizer, processor, adapter config, chat template) and the
  name, size and mtime of every large one (weights); a training run folder's are those of the folder loading
  reads (its merged/, else its adapter/: `unime.models.loading.trained_model_folder`), a hub adapter's those of
  its snapshot, resolved as loading resolves it (`unime.models.loading.adapter_folder`) — plus a PEFT adapter's
  base model, plus the embedding settings that change the vectors (pooling, dtype, ...: `embedding_settings`, an
  index's model identity too) and the attention kernel and device type they are computed with (`cache_settings`:
  sdpa and cpu add nothing). The folder's path
  is recorded for people (``model.json``) but is not part of the key, so a copy of the same files still hits.
- **item identity** (`RunEncoder.content_key`): the item's text plus the *content* (SHA-1 of the bytes)
  of each image / video frame, resolved against the task's data root. This extends `Item.key`, which
  names images by their relative path: the same relative path under two data roots, or a regenerated
  image at the same path, must not share an embedding.

Cache layout: ``CACHE_DIR/<model fingerprint>/shard-*.npy`` (float32, rows) with a ``.keys`` file per
shard (one item key per line) and ``model.json``. A shard is written atomically — the ``.npy`` first,
then its ``.keys`` — and only shards with a ``.keys`` file are read, so an interrupted run leaves no
half shard; encoding is flushed every `flush_every` items and, with an embedder that plans its batches
(`batch_plan`), at the end of the first batch `flush_seconds` (30 s) after the last flush, so an interrupted
run resumes where it stopped, having lost at most about half a minute of encoding. Shards are read with
``mmap_mode="r"``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from unime.data.atomic import atomic_open, atomic_path
from unime.data.image_digests import ImageDigests, file_sha1
from unime.data.images import ImageLoader
from unime.data.io import named_where_read
from unime.data.items import Item
from unime.data.video import looked_in
from unime.errors import DataError

log = logging.getLogger(__name__)

SMALL_FILE_BYTES = 4 * 1024 * 1024  # files up to this size are fingerprinted by content


def unime_cache_root() -> Path:
    """``$UNIME_CACHE_DIR``, else ``$XDG_CACHE_HOME/unime`` (``~/.cache/unime``): unime's per-machine caches."""
    if os.environ.get("UNIME_CACHE_DIR"):
        return Path(os.environ["UNIME_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unime"


def default_cache_dir() -> Path:
    """``$UNIME_CACHE_DIR/embeddings``, else ``$XDG_CACHE_HOME/unime/embeddings`` (``~/.cache``)."""
    return unime_cache_root() / "embeddings"


def _folder_fingerprint(folder: Path, h, depth: int = 0) -> None:
    for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        st = f.stat()
        if st.st_size <= SMALL_FILE_BYTES:
            h.update(f"{f.name}\0content\0{file_sha1(f)}\n".encode())
        else:
            h.update(f"{f.name}\0stat\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    adapter_cfg = folder / "adapter_config.json"
    if adapter_cfg.is_file() and depth == 0:
        base = json.loads(adapter_cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if base:
            h.update(f"base\0{base}\n".encode())
            base_dir = _local_model_dir(base)
            if base_dir is not None:
                _folder_fingerprint(base_dir, h, depth + 1)


def _local_model_dir(path: str) -> Path | None:
    from unime.models.loading import adapter_folder, trained_model_folder

    p = Path(trained_model_folder(path))  # a run folder: the merged/ (else adapter/) folder loading reads
    if p.is_dir():
        return p
    adapter = adapter_folder(path)  # a hub adapter: the snapshot loading reads (fetched as it fetches it)
    if adapter is not None:
        return Path(adapter)
    try:  # a hub id already in the local Hugging Face cache (never downloads)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=True))
    except Exception:  # noqa: BLE001 - not a cached hub id: fingerprint by name only
        return None


def model_fingerprint(path: str | os.PathLike, settings: dict[str, Any] | None = None, *,
                      keyed: str = "its fingerprint") -> str:
    """Identity of (checkpoint files, embedding settings) as a short hex string; see the module doc. `keyed`: what the
    caller keys with it ("the embedding cache", "reason generate's record of its finished chunks and run"), named in
    the warning logged when the model is neither a local folder nor in the Hugging Face cache, its files unread: that
    it is then keyed by the model's name only (QA: `reason generate` named an embedding cache it does not have)."""
    return _fingerprint(path, _local_model_dir(str(path)), settings, keyed=keyed)


def model_fingerprinter(path: str | os.PathLike, *, keyed: str | None) -> Callable[[dict[str, Any] | None], str]:
    """`model_fingerprint` of `path` under any settings, for a caller that makes several keys of one model: the model
    looked up once, and a model not on disk said once to key `keyed` by its name (QA: `unime embed` said it twice,
    for its finished run's key and its chunks'; `keyed` None: not said, the caller says how it keys it)."""
    folder = _local_model_dir(str(path))
    if folder is None and keyed is not None:
        _say_keyed_by_name(path, keyed)
    return lambda settings=None: _fingerprint(path, folder, settings, keyed=None)


def model_on_disk(path: str | os.PathLike) -> bool:
    """Whether `model_fingerprint` reads `path`'s files (a local model folder, a hub id in the local Hugging Face
    cache), not its name alone."""
    return _local_model_dir(str(path)) is not None


def _say_keyed_by_name(path, keyed: str) -> None:
    log.warning("model %s is not a local folder; %s is keyed by its name only", path, keyed)


def run_folder_top_level_fingerprint(path: str | os.PathLike, settings: dict[str, Any] | None = None) -> str | None:
    """The key a training run folder had before it was keyed by the folder loading reads (`model_fingerprint`): that
    of its own top-level files, blind to its weights; None for any other model. Lets a record keyed that way (an
    index manifest) be told apart from one of another model."""
    from unime.models.loading import trained_model_folder

    p = Path(path)
    if not p.is_dir() or Path(trained_model_folder(p)) == p:
        return None
    return _fingerprint(path, p, settings)


def _fingerprint(path: str | os.PathLike, folder: Path | None, settings: dict[str, Any] | None, *,
                 keyed: str | None = "its fingerprint") -> str:
    """`keyed` None: a model not on disk is not said to be keyed by its name (the caller said so)."""
    h = hashlib.sha256()
    if folder is None:
        if keyed is not None:
            _say_keyed_by_name(path, keyed)
        h.update(f"name\0{path}\n".encode())
    else:
        _folder_fingerprint(folder, h)
    h.update(json.dumps(settings or {}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


DTYPE_LABELS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # torch dtype name → option value


def compute_dtype_label(embedder: Any, dtype: Any = None) -> str:
    """The dtype the embedder computes in, as the option names it (fp32, bf16, fp16): its model's dtype, else
    `dtype` resolved on its device — so auto, None and fp32 on CPU all give 'fp32'."""
    resolved = getattr(getattr(embedder, "model", None), "dtype", None)
    if resolved is None:
        try:
            from unime.models.loading import resolve_dtype

            resolved = resolve_dtype(dtype, str(getattr(embedder, "device", None) or "cpu"))
        except (ImportError, ValueError):
            return str(dtype)
    name = str(resolved).removeprefix("torch.")
    return DTYPE_LABELS.get(name, name)


def embedding_settings(embedder: Any, dtype: Any = None) -> dict[str, Any]:
    """The embedding settings that change an embedder's vectors (part of the cache's model identity). The
    dtype is the one the embedder computes in (`compute_dtype_label`), not the option as given: equal
    vectors, equal settings."""
    settings = {"pooling": embedder.pooling, "dtype": compute_dtype_label(embedder, dtype),
                "instruction_suffix": embedder.instruction_suffix, "normalize": True}
    sampling = getattr(getattr(embedder, "image_loader", None), "video_sampling", None)
    if sampling is not None:  # non-default video sampling gives other vectors for video items
        from dataclasses import asdict

        settings["video_sampling"] = asdict(sampling)
        if sampling.frame_rule == "uniform":  # the rule's default: the key as before the rule existed
            del settings["video_sampling"]["frame_rule"]
    budget = getattr(getattr(embedder, "adapter", None), "image_budget", None)
    if budget is not None and budget.is_set:  # another resolution gives other vectors (unset: ids unchanged)
        settings["image_budget"] = budget.to_dict()
    item_format = getattr(embedder, "item_format", "chat")
    if item_format != "chat":  # other input text, other vectors (chat: the key as before the option)
        from unime.models.item_format import RENDERING_REVISIONS

        settings["item_format"] = item_format
        settings["item_format_revision"] = RENDERING_REVISIONS[item_format]
    return settings


# the attention kernel of the vectors cached before the kernel was part of the key: transformers' default (where the
# model supports it, as every family unime loads does); the cache key of its vectors is the one they had
DEFAULT_ATTENTION_KERNEL = "sdpa"


def attention_kernel(embedder: Any) -> str | None:
    """The attention kernel the embedder's model runs, as transformers resolved `--attn-implementation` (sdpa,
    eager, flash_attention_2 ...; None, transformers' default, is the kernel it picked); None without a model."""
    return getattr(getattr(getattr(embedder, "model", None), "config", None), "_attn_implementation", None)


# the device type of the vectors cached before the device was part of the key (unime's tests and demo: the CPU)
DEFAULT_DEVICE_TYPE = "cpu"


def device_type(embedder: Any) -> str | None:
    """The type of the device the embedder computes on (cpu, cuda, mps ...: `cuda:1` is cuda); None without one."""
    device = getattr(embedder, "device", None)
    return None if device is None else str(device).split(":")[0]


def cache_settings(settings: dict[str, Any], embedder: Any) -> dict[str, Any]:
    """The settings an embedding cache folder is keyed by: `settings` (`embedding_settings`), the attention kernel
    the embedder computes with, which changes the vectors too (eager against sdpa on a tiny model, CPU: 6e-8 apart in
    fp32, 3e-3 in bf16), and the type of its device (vectors computed on cuda and on cpu differ in the last digits):
    a run under another kernel or on another device type than the cached vectors' encodes them again. sdpa (the
    default, `DEFAULT_ATTENTION_KERNEL`) and cpu (`DEFAULT_DEVICE_TYPE`) add nothing: the key as before. Neither is
    part of an index's model identity (the settings an index records): both are machine options."""
    kernel, device = attention_kernel(embedder), device_type(embedder)
    if kernel is not None and kernel != DEFAULT_ATTENTION_KERNEL:
        settings = {**settings, "attn_implementation": kernel}
    if device is not None and device != DEFAULT_DEVICE_TYPE:
        settings = {**settings, "device": device}
    return settings


@contextlib.contextmanager
def image_root(model: Any, root: str | os.PathLike | None):
    """Temporarily point a model's ``image_loader`` (Embedder, Reranker) at `root`; no-op without one.

    The loader is changed in place, not replaced, because parts of a model may share it (the Reranker's
    pairwise judge holds the Reranker's loader)."""
    loader = getattr(model, "image_loader", None)
    if root is None or not isinstance(loader, ImageLoader):
        yield
        return
    old_root = loader.root
    loader.root = Path(root).resolve()
    try:
        yield
    finally:
        loader.root = old_root


class EmbeddingStore:
    """Append-only on-disk store of item vectors for one model (see the module doc for the layout)."""

    def __init__(self, folder: str | os.PathLike, *, model_info: dict | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if model_info is not None and not (self.folder / "model.json").exists():
            with atomic_open(self.folder / "model.json") as fh:
                json.dump(model_info, fh, indent=2, default=str)
        self._index: dict[str, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        self._read: set[str] = set()
        self.dim: int | None = None
        self.refresh()

    def refresh(self) -> None:
        """Read the shards saved since (by another process into the same folder)."""
        for keys_file in sorted(self.folder.glob("shard-*.keys")):
            if keys_file.name not in self._read:
                self._load_shard(keys_file)

    def _load_shard(self, keys_file: Path) -> None:
        self._read.add(keys_file.name)
        npy = keys_file.with_suffix(".npy")
        keys = keys_file.read_text(encoding="utf-8").split("\n")
        keys = [k for k in keys if k]
        try:
            arr = np.load(npy, mmap_mode="r")
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable cache shard %s: %s", npy, e)
            return
        if arr.ndim != 2 or arr.shape[0] != len(keys) or (self.dim is not None and arr.shape[1] != self.dim):
            log.warning("ignoring inconsistent cache shard %s (shape %s, %d keys)", npy, arr.shape, len(keys))
            return
        self.dim = int(arr.shape[1])
        s = len(self._shards)
        self._shards.append(arr)
        for r, k in enumerate(keys):
            self._index.setdefault(k, (s, r))

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def get(self, key: str) -> np.ndarray:
        s, r = self._index[key]
        return np.asarray(self._shards[s][r], dtype=np.float32)

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(keys):
            raise ValueError(f"{len(keys)} keys for vectors of shape {vectors.shape}")
        if not len(keys):
            return
        stem = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        with atomic_path(self.folder / f"{stem}.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, vectors)
        with atomic_open(self.folder / f"{stem}.keys") as fh:
            fh.write("\n".join(keys) + "\n")
        self._load_shard(self.folder / f"{stem}.keys")


FLUSH_SECONDS = 30.0  # the encoding an interruption may lose; one cache shard (milliseconds to write) per flush


@dataclass
class EncodeStats:
    items_seen: int = 0   # item references in the task data (a candidate listed under 1,000 queries counts 1,000)
    distinct: int = 0     # distinct items (by content key) across all tasks of the run
    from_cache: int = 0   # distinct items found in the on-disk cache
    encoded: int = 0      # distinct items run through the model in this run
    encode_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"items_seen": self.items_seen, "distinct_items": self.distinct, "from_cache": self.from_cache,
                "encoded": self.encoded, "encode_seconds": round(self.encode_seconds, 3)}


def _video_unnamed(refs, loader: ImageLoader) -> bool:
    """Whether an item's video is one file read as a video although its name does not say so (an animated GIF, APNG,
    WebP or AVIF, a container of another name: `unime.data.video.is_one_video_file`). Such an item was read as its
    first frame twice before 2026-12-06 (or refused: an Ogg, FLV, ASF or MPEG-TS/PS file of another name), under the
    same content key: the mark gives it a key of its own, so that vectors cached then are not served for it; every other
    item keeps its key (and its cached vectors)."""
    from unime.data.video import is_one_video_file, is_video_file_ref

    if len(refs) != 1:
        return False
    ref = refs[0]
    named = is_video_file_ref(str(ref) if isinstance(ref, str) else ref)  # by its extension or bytes alone
    return not named and is_one_video_file(loader, refs)


def _inline_still_image(refs) -> bool:
    """Whether an item's video is the inline bytes of one HEIF / HEIC or AVIF still image (`unime.data.video.
    is_image_brand`), read as a video file for its ``ftyp`` box before 2026-12-06 and as one frame since: the mark
    gives it a key of its own, so that vectors cached then are not served for it (a path to such a file was a frame
    already: its key is unchanged)."""
    from unime.data.video import SIGNATURE_BYTES, is_image_brand

    return len(refs) == 1 and isinstance(refs[0], (bytes, bytearray)) and is_image_brand(
        bytes(refs[0][:SIGNATURE_BYTES]))


def _avif_frames(refs, loader: ImageLoader) -> bool:
    """Whether an item's video is one animated AVIF read as a video file (`unime.data.video.is_animated_avif`): its
    frames are PIL's since 2026-12-06, where FFmpeg gave its still image alone (the path alone, a video extension,
    inline bytes; in a list, its first frame); the mark gives it a key of its own, so that vectors cached then are not
    served for it."""
    from unime.data.video import is_animated_avif, is_one_video_file

    return len(refs) == 1 and is_animated_avif(loader, refs[0]) and is_one_video_file(loader, refs)


class RunEncoder:
    """Collects the items of every task (`add`), encodes the distinct ones missing from the cache once
    (`encode_pending`), then serves vectors by row (`vectors`).

    `embedder` is anything with ``encode(items, batch_size=, show_progress=) -> (n, d) float32``
    (`unime.models.embedder.Embedder`); if it has an ``image_loader`` it is pointed at each task's data
    root while that task's items are encoded.
    """

    def __init__(self, embedder: Any, model_id: str, *, cache_dir: str | os.PathLike | None = None,
                 model_info: dict | None = None, batch_size: int | None = None, flush_every: int = 2048,
                 flush_seconds: float | None = FLUSH_SECONDS, show_progress: bool = False,
                 allow_outside_root: bool = False, digests: ImageDigests | None = None):
        self.embedder = embedder
        # image files' digests for the item keys: the caller's (`unime mine` passes those its inputs were digested
        # with, so no image is read twice), else this encoder's own memo
        self.digests = digests if digests is not None else ImageDigests()
        self.allow_outside_root = allow_outside_root
        self.model_id = model_id
        self.store = EmbeddingStore(Path(cache_dir) / model_id, model_info=model_info) if cache_dir else None
        self.batch_size = batch_size
        self.flush_every = flush_every
        # QA: an eval killed at 58 of its 92 batches (fewer than `flush_every` items) had saved nothing
        self.flush_seconds = flush_seconds
        self.show_progress = show_progress
        self.stats = EncodeStats()
        # called after each block of vectors is saved to the cache, with the stats so far (encode_seconds
        # included): a resumable run records its progress there
        self.on_saved: Callable[[EncodeStats], None] | None = None
        self._row_of: dict[str, int] = {}
        self._vectors: list[np.ndarray | None] = []
        self._pending: list[tuple[int, str, Item, Path | None]] = []
        self._where: dict[int, tuple[str, str, str]] = {}  # row → where its item was first read (`add`)
        self._matrix: np.ndarray | None = None

    # -- keys ---------------------------------------------------------------------------------------
    def _ref_id(self, ref, loader: ImageLoader, *, source, field_name) -> str:
        if isinstance(ref, str):
            path = loader.resolve(ref, source=source, field=field_name)
            try:
                return "sha1:" + self.digests.digest(path)
            except FileNotFoundError:
                raise DataError(f"image file not found: {ref!r}{looked_in(ref, loader.root)}", source=source,
                                field=field_name) from None
            except OSError as e:
                raise DataError(f"image file {ref!r} cannot be read: {e}", source=source, field=field_name) from None
        if isinstance(ref, (bytes, bytearray)):
            return "sha1:" + hashlib.sha1(ref).hexdigest()
        return "item:" + Item(images=(ref,)).key  # in-memory PIL image: Item hashes its pixels

    def content_key(self, item: Item, root: str | os.PathLike | None, *, source: str | None = None,
                    loader: ImageLoader | None = None) -> str:
        loader = loader or ImageLoader(root, allow_outside_root=self.allow_outside_root)
        payload = {"t": item.text,
                   "i": [self._ref_id(r, loader, source=source, field_name=f"images[{j}]")
                         for j, r in enumerate(item.images)],
                   "v": [self._ref_id(r, loader, source=source, field_name=f"video[{j}]")
                         for j, r in enumerate(item.video)]}
        if _video_unnamed(item.video, loader):
            payload["video_file"] = 1
        if _inline_still_image(item.video):
            payload["still_image"] = 1
        if _avif_frames(item.video, loader):
            payload["avif_frames"] = 1
        return hashlib.sha1(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()).hexdigest()

    # -- collect / encode / serve ---------------------------------------------------------------------
    def add(self, items: Sequence[Item], root: str | os.PathLike | None, *, references: int | None = None,
            source: str | None = None, where: Sequence[tuple[str, str, str] | None] | None = None) -> np.ndarray:
        """Register items (whose image paths are relative to `root`); returns their rows. `references`
        is how many item references the task data holds (defaults to ``len(items)``). `where`: per item, the
        (file, record, field) it was read from: media that fails when the item is encoded (a video is decoded
        only then) is named there (`_named_where_read`), as a bad row of the data is."""
        self.stats.items_seen += len(items) if references is None else references
        rows = np.empty(len(items), dtype=np.int64)
        root_path = Path(root) if root is not None else None
        loader = ImageLoader(root_path, allow_outside_root=self.allow_outside_root)
        for i, item in enumerate(items):
            key = self.content_key(item, root_path, source=source, loader=loader)
            row = self._row_of.get(key)
            if row is None:
                row = self._row_of[key] = len(self._vectors)
                self._vectors.append(None)
                self._pending.append((row, key, item, root_path))
                self.stats.distinct += 1
                if where is not None and where[i] is not None:
                    self._where[row] = where[i]
            rows[i] = row
        return rows

    def encode_pending(self, share: tuple[int, int] | None = None) -> None:
        """Fill every registered row: from the cache where possible, else by encoding (once).

        `share=(i, n)`: one of `n` processes encoding the same items into the same cache folder (`unime mine` under
        torchrun): this one encodes every n-th batch of the missing items from the i-th — the batches one process
        runs (blocks of `flush_every`, each cut by the embedder's `batch_plan`), so each vector is the one a single
        process computes — and saves them to the cache.
        Every process must have opened its cache (made its encoder) before any of them saves a share. The rows stay
        pending: once every share is saved, `store.refresh()` then `encode_pending()` read them all from the cache."""
        if share is not None and self.store is None:
            raise ValueError("encoding a share needs the on-disk cache (cache_dir) that the shares are read from")
        todo = []
        for row, key, item, root in self._pending:
            if self.store is not None and key in self.store:
                if share is None:
                    self._vectors[row] = self.store.get(key)
                    self.stats.from_cache += 1
            else:
                todo.append((row, key, item, root))
        if share is None:
            self._pending = []
        by_root: dict[Path | None, list[tuple[int, str, Item]]] = {}
        for row, key, item, root in todo:
            by_root.setdefault(root, []).append((row, key, item))
        t0 = time.perf_counter()
        part = -1
        for root, entries in by_root.items():
            with image_root(self.embedder, root), self._named_where_read(entries):
                for s in range(0, len(entries), self.flush_every):
                    chunk = entries[s:s + self.flush_every]
                    if share is not None:
                        part = self._encode_share(chunk, share, part, t0)
                        continue
                    self._encode_block(chunk, t0)
        self.stats.encode_seconds += time.perf_counter() - t0
        self._matrix = None

    @contextlib.contextmanager
    def _named_where_read(self, entries: list[tuple[int, str, Item]]):
        """A `DataError` of an item being encoded (the embedder tags it with the item, `Embedder.build_inputs`), or
        the `NonFiniteEmbedding` of the first item given NaN or inf, raised again naming the file, record and field
        the item was read from (`add`'s `where`)."""
        from unime.models.embedder import NonFiniteEmbedding

        try:
            yield
        except DataError as e:
            err = named_where_read(e, [it for _, _, it in entries], [self._where.get(row) for row, _, _ in entries])
            if err is e:
                raise
            raise err from e
        except NonFiniteEmbedding as e:
            place = next((self._where.get(row) for row, _, it in entries if it is e.item), None)
            if place is None:
                raise
            raise e.naming(where=place) from e

    def _encode_block(self, chunk: list[tuple[int, str, Item]], t0: float) -> None:
        """Encode one block of `encode_pending` and save it: in one call, or — with a cache and an embedder that
        plans its batches — batch by batch, saving what is done every `flush_seconds` (a batch encoded alone
        gives the vectors of the whole call, bit for bit: `Embedder.batch_plan`)."""
        if self.store is None or self.flush_seconds is None or getattr(self.embedder, "batch_plan", None) is None:
            self._save(chunk, self._encode([it for _, _, it in chunk]), t0)
            return
        items, parts, same_item = self._plan(chunk)
        if self.show_progress:
            from tqdm.auto import tqdm

            parts = tqdm(parts, desc="encode", unit="batch")
        done: list[int] = []
        vecs: list[np.ndarray] = []
        last = time.perf_counter()
        for batch in parts:
            positions, out = self._encode_batch(items, batch, same_item)
            done += positions
            vecs += out
            if time.perf_counter() - last >= self.flush_seconds:
                self._save([chunk[p] for p in done], np.stack(vecs), t0)
                done, vecs, last = [], [], time.perf_counter()
        if done:
            self._save([chunk[p] for p in done], np.stack(vecs), t0)

    def _save(self, entries: list[tuple[int, str, Item]], vecs: np.ndarray, t0: float) -> None:
        if self.store is not None:
            self.store.add([k for _, k, _ in entries], vecs)
        for (row, _, _), v in zip(entries, vecs):
            self._vectors[row] = v
        self.stats.encoded += len(entries)
        self._saved(t0)

    def _saved(self, t0: float) -> None:
        """`on_saved` after a block of vectors is saved to the cache (`encode_pending` started at `t0`)."""
        if self.store is not None and self.on_saved is not None:
            self.on_saved(EncodeStats(self.stats.items_seen, self.stats.distinct, self.stats.from_cache,
                                      self.stats.encoded, self.stats.encode_seconds + time.perf_counter() - t0))

    def _plan(self, chunk: list[tuple[int, str, Item]]) -> tuple[list[Item], list[list[int]], dict[str, list[int]]]:
        """The block's items, the batches the embedder runs (its `batch_plan`; one batch when it has none) and,
        per `Item.key`, the positions of the items it encodes once."""
        plan_of = getattr(self.embedder, "batch_plan", None)
        items = [it for _, _, it in chunk]
        parts = plan_of(items, self.batch_size) if plan_of is not None else [list(range(len(chunk)))]
        same_item: dict[str, list[int]] = {}
        for j, it in enumerate(items):
            same_item.setdefault(it.key, []).append(j)
        return items, parts, same_item

    def _encode_batch(self, items: list[Item], batch: list[int], same_item: dict[str, list[int]], *,
                      show_progress: bool | None = False) -> tuple[list[int], list[np.ndarray]]:
        """One planned batch: the positions it fills (every item with the key of one it encodes) and their vectors."""
        out = self._encode([items[j] for j in batch], show_progress=show_progress)
        positions, vecs = [], []
        for k, j in enumerate(batch):
            positions += same_item[items[j].key]
            vecs += [out[k]] * len(same_item[items[j].key])
        return positions, vecs

    def _encode_share(self, chunk: list[tuple[int, str, Item]], share: tuple[int, int], part: int, t0: float) -> int:
        """`encode_pending`'s share of one block: every n-th of its batches (the embedder's `batch_plan`, so each
        batch is the one a single process runs), or of the blocks when the embedder has no plan; saved to the
        cache. Returns the number of the last part counted (parts are numbered across blocks)."""
        items, parts, same_item = self._plan(chunk)
        keys, vecs = [], []
        for batch in parts:
            part += 1
            if part % share[1] != share[0]:
                continue
            positions, out = self._encode_batch(items, batch, same_item, show_progress=None)
            keys += [chunk[p][1] for p in positions]
            vecs += out
        if keys:  # one cache shard per block and process
            self.store.add(keys, np.stack(vecs))
            self.stats.encoded += len(keys)
            self._saved(t0)
        return part

    def missing(self) -> int:
        """Registered items not found in the on-disk cache (all of them without one): what `encode_pending` encodes."""
        return sum(1 for _, key, _, _ in self._pending if self.store is None or key not in self.store)

    def _encode(self, items: list[Item], *, show_progress: bool | None = None) -> np.ndarray:
        kwargs: dict[str, Any] = {}
        if self.batch_size:
            kwargs["batch_size"] = self.batch_size
        if self.show_progress if show_progress is None else show_progress:
            kwargs["show_progress"] = True
        from unime.models.embedder import Embedder, refuse_non_finite

        vecs = np.asarray(self.embedder.encode(items, **kwargs), dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(items):
            raise ValueError(f"the embedder returned shape {vecs.shape} for {len(items)} items")
        if isinstance(self.embedder, Embedder):  # it refused NaN or inf itself (`Embedder.encode`)
            return vecs
        # another encoder's NaN or inf (`eval reference`'s, a Python caller's): refused naming the model before it is
        # cached, not an index of NaN written without a word (`index build`) or a traceback in the metrics (`eval`)
        return refuse_non_finite(vecs, items, getattr(self.embedder, "name", None) or self.model_id)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """L2-normalised vectors (float32) of the given rows."""
        if self._pending:
            raise RuntimeError("call encode_pending() before vectors()")
        if self._matrix is None:
            if not self._vectors:
                raise RuntimeError("no items were added")
            m = np.stack(self._vectors).astype(np.float32)
            norms = np.linalg.norm(m, axis=1, keepdims=True)
            self._matrix = m / np.maximum(norms, 1e-12)
        return self._matrix[np.asarray(rows, dtype=np.int64)]
