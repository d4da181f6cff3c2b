"""`unime embed`: an item file (`unime.data.corpus`) → one float32 array, written exactly where asked.

Every line is parsed and every image opened before the model loads: a bad one stops the run naming the
file, the line and the field, or under `on_error="skip"` is left out and counted; the array then has a
row per kept line and `OUT.lines.json` lists the (1-based) line each row came from.

The items are encoded in chunks of `ITEMS_PER_CHUNK`, kept in `.OUT.unime-work/` until OUT is written: a re-run of a
killed run encodes only the chunks it had not finished (`encode_in_chunks`), and reads no image again to tell that its
inputs did not change (their digests are kept there too). Its check before the model loads opens only the images of the
items left to encode: those of the finished chunks are looked up, not opened (`unime.models.chunk_work.done_lines`),
unless they are encoded again after all (their chunks discarded: opened then, before any is encoded).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

import numpy as np

from unime.data.atomic import atomic_open
from unime.data.corpus import corpus_entry
from unime.data.image_digests import ImageDigests
from unime.data.images import ImageLoader
from unime.data.io import ImageChecker, named_where_read
from unime.data.items import Item
from unime.data.jsonl import iter_jsonl
from unime.data.skips import ErrorPolicy, SkipReport
from unime.data.video import VideoOptions
from unime.errors import DataError
from unime.models.chunk_work import EVERY_LINE, ChunkWork, checked_work, done_lines, finished_before, work_digests
from unime.models.image_budget import ImageOptions
from unime.models.loading import EmbedderOptions, checkpoint_image_loader
from unime.options import on_error_option, option

# items per chunk, the unit of resumption: each encoded chunk is kept in the work folder beside the output
# (`unime.models.chunk_work`) until the output is written, so a killed run loses at most one chunk's encoding and a
# re-run of the same command encodes only the chunks not done (the embedding cache's block size too, `RunEncoder`)
ITEMS_PER_CHUNK = 2048


def read_items_file(path: str, *, image_loader: ImageLoader | ImageChecker, on_error: str = "raise",
                    skips: SkipReport | None = None, files_only: Collection[int] = ()
                    ) -> tuple[list[Item], list[int], list[str]]:
    """The good items of an item file (`unime.data.corpus`: the lines `unime index build` reads, a generated
    world's items.jsonl too), their line numbers and where each was read as errors name it ("line 2 (id a)") (images
    and videos opened and decoded by `image_loader`: the model's, `unime.models.loading.checkpoint_image_loader`,
    under the items' data root; or an `ImageChecker` of it). The images of the lines `files_only` (those a killed
    run encoded, `unime.models.chunk_work.done_lines`) are only looked up (`ImageChecker.check_files`), not opened."""
    policy = ErrorPolicy(on_error, skips, path)
    checker = image_loader if isinstance(image_loader, ImageChecker) else ImageChecker(image_loader)
    items, lines, records = [], [], []
    for n, obj in iter_jsonl(path, on_malformed=policy.handle):
        try:
            entry = corpus_entry(obj, source=path, line=n)  # the reader of `unime index build` too
            checker.check(entry.item, source=path, record=entry.record, files_only=n in files_only)
            items.append(entry.item)
            lines.append(n)
            records.append(entry.record)
        except DataError as e:
            policy.handle(e)
    policy.finish()
    return items, lines, records


@dataclass(kw_only=True)
class EmbedConfig(EmbedderOptions, ImageOptions, VideoOptions):
    """Options of `unime embed`: each field declares its option (`unime.options`)."""

    model: str = option(help="embedder checkpoint (HF folder, hub id, or PEFT adapter)")
    items: str = option(help="JSONL, one item per line")
    data_root: str | None = option(None, "folder that image paths are relative to (default: the items file's folder)")
    out: str = option(help="output .npy (float32, L2-normalised)")
    on_error: str = on_error_option("skip bad lines and items with a bad image (counted and reported; "
                                    "OUT.lines.json then lists the line each row of the array came from) instead of "
                                    "stopping at the first")


def encode_items_file(cfg: EmbedConfig, skips: SkipReport | None = None, *,
                      overwrite: bool = False) -> tuple[Path, int, int, SkipReport]:
    """Encode the items of `cfg.items` with `cfg.model`; write the array to exactly `cfg.out` (atomic; its
    folder is created). The image options given override the model's pixel bounds
    (`unime.models.image_budget.ImageBudget`). Returns (path, rows, dimension, skips); the skips are counted into
    `skips` when given (its count so far when it fails). A run that finished earlier with the same options and
    inputs, its array (and OUT.lines.json) unchanged since, does nothing and says so before the model loads
    (`unime.models.chunk_work.finished_before`; `embed_done_key`), unless `overwrite`."""
    from unime.data.roots import resolve_data_root
    from unime.data.video import VideoSampling
    from unime.models.embedder import Embedder, NonFiniteEmbedding
    from unime.models.image_budget import ImageBudget

    items_path = cfg.items
    if not os.path.isfile(items_path):
        raise DataError("items file not found", source=items_path)
    root = resolve_data_root(items_path, cfg.data_root)  # --data-root, else the one recorded beside the file
    video_sampling = VideoSampling.from_fields(cfg)
    skips = SkipReport() if skips is None else skips
    image_budget = ImageBudget.from_args(cfg)
    checker = ImageChecker(checkpoint_image_loader(cfg.model, image_budget, root, video=video_sampling))
    path = Path(cfg.out)
    digests = work_digests(path)  # a re-run of a killed (or finished) run reads no image again for its key
    # the model looked up once for both keys: one not on disk said once to be keyed by its name (QA: twice)
    fingerprint = _fingerprinter(cfg.model)
    done_key = embed_done_key(cfg, root, checker, digests, fingerprint=fingerprint)  # before any image is opened
    if finished_before(path, "embed", done_key, overwrite=overwrite, again="encodes again"):
        rows, dim = np.load(path, mmap_mode="r").shape
        return path, int(rows), int(dim), skips
    done = done_lines(path)  # the items a killed run encoded: their images not opened again
    items, lines, records = read_items_file(items_path, on_error=cfg.on_error, skips=skips, image_loader=checker,
                                            files_only=done)
    if not items:
        raise DataError("no items to encode", source=items_path)
    emb = Embedder.from_pretrained(cfg.model, device=cfg.device, dtype=cfg.dtype, data_root=root,
                                   batch_size=cfg.batch_size, video_sampling=video_sampling, image_budget=image_budget,
                                   item_format=cfg.item_format, attn_implementation=cfg.attn_implementation)
    # a text longer than the model is built for (its max_position_embeddings, `unime serve`'s limit too) is refused
    # or skipped: the model read it whole, on positions it was never trained on
    items, lines, records = within_context(emb, items, lines, records, source=items_path, on_error=cfg.on_error,
                                           skips=skips)

    def make_work(rows):
        key = embed_work_key(emb, cfg.model, cfg.dtype, [r[0] for r in rows], digests=digests,
                             fingerprint=fingerprint)
        return ChunkWork(path, "embed", key, rows=len(rows), per_chunk=ITEMS_PER_CHUNK, digests=digests,
                         lines=[r[1] for r in rows])

    # the items of `done` to be encoded after all (the inputs or options changed): their images opened now
    work, rows = checked_work(list(zip(items, lines, records)), make_work, line_of=lambda r: r[1], unchecked=done,
                              check=lambda r: checker.check(r[0], source=items_path, record=r[2]),
                              on_error=cfg.on_error, skips=skips, source=items_path)
    if len(rows) < len(items):
        items, lines, records = (list(x) for x in zip(*rows)) if rows else ([], [], [])
        if not items:
            raise DataError("no items to encode", source=items_path)
    try:
        vecs = encode_in_chunks(emb, items, work)
    except DataError as e:  # an item failing only when encoded (its video decoded, its layout rendered): its line
        err = named_where_read(e, items, [(items_path, r, "item") for r in records])
        if err is e:
            raise
        raise err from e
    except NonFiniteEmbedding as e:  # the first item given NaN or inf: its line and id
        at = next((i for i, it in enumerate(items) if it is e.item), None)
        if at is None:
            raise
        raise e.naming(where=(items_path, records[at], None)) from e
    with atomic_open(path, "wb") as fh:  # np.save on a file object: no ".npy" appended to the name
        np.save(fh, vecs)
    companions = []
    if skips.total:
        with atomic_open(f"{path}.lines.json") as fh:
            json.dump({"items": items_path, "lines": lines, "skipped": skips.total}, fh)
        companions.append(f"{path}.lines.json")
    # the output written: its chunks go, the record of the finished run stays
    work.finish(done_key=done_key, companions=companions)
    return path, int(vecs.shape[0]), int(vecs.shape[1]), skips


def within_context(emb, items: list[Item], lines: list[int], records: list[str], *, source: str, on_error: str,
                   skips: SkipReport) -> tuple[list[Item], list[int], list[str]]:
    """The items (with their lines and records) whose text fits the context of `emb`
    (`unime.models.context.check_text_tokens`); one that does not is a `DataError` naming its line, id and token count,
    or under `on_error="skip"` is left out and counted in `skips`. None left: "no items to encode"."""
    from unime.models.context import check_text_tokens

    check = check_text_tokens(emb)
    policy = ErrorPolicy(on_error, skips, source)
    kept = []
    for row in zip(items, lines, records):
        try:
            check(row[0], source=source, record=row[2])
            kept.append(row)
        except DataError as e:
            policy.handle(e)
    if not kept:
        raise DataError("no items to encode", source=source)
    return tuple(list(x) for x in zip(*kept)) if len(kept) < len(items) else (items, lines, records)


def embed_done_key(cfg: EmbedConfig, root: str, checker: ImageChecker, digests: ImageDigests, *,
                   fingerprint: Callable[[dict | None], str] | None = None) -> dict | None:
    """What `encode_items_file`'s output depends on, told before the model loads (`finished_before`): the items file's
    bytes and the bytes of the images its items reference (looked up, none opened; known from `digests`), the model by
    its files, the data root and every option but where the output goes. None when it cannot be told (an image not
    readable: the check names it). `fingerprint`: the model's `model_fingerprinter`, when the caller has it."""
    from dataclasses import asdict

    from unime.data.image_digests import digest_items, file_sha1

    try:
        items, _, _ = read_items_file(cfg.items, image_loader=checker, on_error="skip", skips=SkipReport(),
                                      files_only=EVERY_LINE)
        return {**{k: v for k, v in asdict(cfg).items() if k not in ("out", "model", "data_root")},
                "items_sha1": file_sha1(cfg.items), "data_root": str(Path(root).resolve()),
                "images": digest_items(items, checker.loader, digests),
                "model": (fingerprint or _fingerprinter(cfg.model))(None)}
    except (OSError, DataError):
        return None


def embed_work_key(emb, model: str, dtype: str | None, items: list[Item], *, digests: ImageDigests | None = None,
                   fingerprint: Callable[[dict | None], str] | None = None) -> dict:
    """What the vectors of `items` depend on, the key of the finished chunks: the items (in order) and the bytes of
    their images, and the model as the embedding cache identifies its vectors (`model_fingerprint` with the settings
    that change them: pooling, dtype, resolution, attention kernel, device type). Not the batch size, which `unime
    mine` does not count as changing its vectors either. The image paths are resolved by the embedder's loader, their
    bytes known from `digests`: those the work folder of a killed run kept (`unime.models.chunk_work.work_digests`,
    removed with it when the output is written), an image read again only if its size or mtime changed (default:
    each image read). `fingerprint`: the model's `model_fingerprinter`, when the caller has it."""
    import hashlib

    from unime.data.image_digests import digest_items
    from unime.models.embedding_cache import cache_settings, embedding_settings

    listed = hashlib.sha1()
    for it in items:
        listed.update(f"{it.key}\n".encode())
    digests = digests if digests is not None else ImageDigests()
    return {"items": listed.hexdigest(), "images": digest_items(items, emb.image_loader, digests),
            "model": (fingerprint or _fingerprinter(model))(cache_settings(embedding_settings(emb, dtype), emb))}


def _fingerprinter(model: str) -> Callable[[dict | None], str]:
    """The `model_fingerprinter` of `unime embed`'s two keys (its finished run's, its chunks')."""
    from unime.models.embedding_cache import model_fingerprinter

    return model_fingerprinter(model, keyed="unime embed's record of its finished run and chunks")


def encode_in_chunks(emb, items: list[Item], work: ChunkWork) -> np.ndarray:
    """`emb.encode(items)` chunk by chunk, each chunk kept in `work`'s folder and the chunks an earlier run of the same
    key finished read back, not encoded. An item repeated (same `Item.key`, as `Embedder.encode` tells repeats within
    a call) is encoded once: a later chunk's repeat takes the row of its first occurrence's chunk. A chunk holding NaN
    or inf is refused before it is kept (`encoded`)."""
    from tqdm.auto import tqdm

    work.open()
    todo = work.todo()
    first: dict[str, int] = {}  # an item's key → its first row
    for r, it in enumerate(items):
        first.setdefault(it.key, r)
    left = sum(len(items[work.span(i)]) for i in todo)
    with tqdm(total=len(items), initial=len(items) - left, desc="encode", unit="item") as bar:
        for i in todo:
            span = work.span(i)
            earlier = {r: first[items[r].key] for r in range(span.start, span.stop) if first[items[r].key] < span.start}
            new = [r for r in range(span.start, span.stop) if r not in earlier]
            before = bar.n  # the bar counts each batch as it is encoded (a chunk of videos takes long), then the chunk
            parts = [([r - span.start for r in new], encoded(emb, [items[r] for r in new], on_batch=bar.update))] \
                if new else []
            for j in sorted({f // work.per_chunk for f in earlier.values()}):  # each earlier chunk read once
                from_j = [(r, f) for r, f in earlier.items() if f // work.per_chunk == j]
                parts.append(([r - span.start for r, _ in from_j],
                              work.load(j)[[f - work.span(j).start for _, f in from_j]]))
            vecs = np.zeros((span.stop - span.start, parts[0][1].shape[1]), dtype=np.float32)
            for rows, values in parts:
                vecs[rows] = values
            work.save(i, vecs)
            bar.update(span.stop - span.start - (bar.n - before))
    return work.load_all()


def encoded(emb, items: list[Item], on_batch=None) -> np.ndarray:
    """`emb.encode(items)` as float32 (`on_batch`: its progress hook); an embedding holding NaN or inf is the
    embedder's `NonFiniteEmbedding` (`Embedder.encode`: the model and the first such item, named by
    `encode_items_file` by its line and id), not an array of NaN written without a word (QA: 489 x 64 NaN)."""
    return np.asarray(emb.encode(items, on_batch=on_batch), dtype=np.float32)
