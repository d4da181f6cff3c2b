"""What a mining run reads: its records, the candidate pool, and their fingerprints (`load_inputs`).

Every image is opened up front: a bad one stops the run here (or is skipped and counted under
`on_error="skip"`), not an hour into the judge stage.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection

from unime.data.image_digests import ImageDigests, digest_items
from unime.data.items import Item, Record
from unime.data.jsonl import iter_jsonl
from unime.errors import DataError
from unime.mining.manifest import (EMBEDDER_KEYS, Manifest, hub_models_not_on_disk, input_fingerprints,
                                   recorded_models)
from unime.mining.retrieval import build_pool

if TYPE_CHECKING:
    from unime.mining.config import MineConfig

log = logging.getLogger(__name__)


def read_pool_items(path: str, *, on_error: str = "raise", skips=None) -> list[Item]:
    """A pool file: JSONL, one item per line (`{"text", "image" | "images"}`). A bad line raises a
    `DataError` naming it, or under `on_error="skip"` is counted in `skips` and left out."""
    from unime.data.io import with_origin
    from unime.data.skips import ErrorPolicy, data_error

    policy = ErrorPolicy(on_error, skips, path)
    items = []
    for n, obj in iter_jsonl(path, on_malformed=policy.handle):
        try:
            item = Item.from_dict(obj, source=path, record=f"line {n}")
            if item.is_empty:
                raise data_error("empty_item", "empty item", source=path, record=f"line {n}")
            items.append(with_origin(item, f"line {n}"))
        except DataError as e:
            policy.handle(e)
    policy.finish()
    return items


@dataclass
class MiningInputs:
    records: list[Record]
    pool: list[Item]  # the candidates: the records' distinct positives, or the pool file's items
    pool_index: dict[str, int]  # item key → position in `pool`
    skips: Any  # `unime.data.skips.SkipReport` of the records and pool
    fingerprints: dict[str, Any]  # `unime.mining.manifest.input_fingerprints`
    images_hashed: int  # image files read for their digest (the others known by size + mtime)
    seconds: float
    digests: ImageDigests | None = None  # every image's digest, for the retrieval's embedding cache keys
    # the embedder's `model_fingerprinter`, for the manifest's record and the embedding cache's key: the model looked
    # up once, one not on disk said once to be keyed by its name (QA: twice); None: `model_fingerprint` each time
    embedder_fingerprint: Callable[[dict | None], str] | None = None
    # the hub models not on this machine as the run began (`hub_models_not_on_disk`): keyed by the snapshot their load
    # puts in the Hugging Face cache once they load (`unime.mining.pipeline.MiningRun.rekey_loaded`)
    not_on_disk: list[str] = field(default_factory=list)


def load_inputs(c: MineConfig, out: Path) -> MiningInputs:
    """Read and check the records and the pool; digest every image (cached in `out/cache`)."""
    from unime.data.io import check_images, read_records
    from unime.data.skips import SkipReport
    from unime.mining.backends import judge_models
    from unime.models.embedding_cache import model_fingerprinter
    from unime.models.loading import checkpoint_image_loader

    t0 = time.perf_counter()
    skips = SkipReport()
    records = read_records(c.records, on_error=c.on_error, skips=skips)
    # held to the embedder's and the judge's processor limits: an image either would refuse is a bad record here
    loader = checkpoint_image_loader([c.embedder, *judge_models(c.judge, c.backend)], c.image_budget,
                                     c.resolved_data_root, allow_outside_root=c.allow_outside_root,
                                     video=c.video_sampling)
    records = check_images(records, loader, on_error=c.on_error, skips=skips, source=c.records)
    if not records:
        raise DataError("no records to mine", source=c.records)
    extra = read_pool_items(c.pool, on_error=c.on_error, skips=skips) if c.pool else []
    if extra:
        extra = check_images(extra, loader, on_error=c.on_error, skips=skips, source=c.pool)
    # default pool: positives; a pool file replaces them (its own items only)
    pool = build_pool([], extra) if c.pool else build_pool(records)
    # the records' errors first, then the models' that the run loads, before anything is written: a new run's (both)
    # before its images are read, a re-run's once its inputs tell the stages left to do (none when it is finished)
    manifest = Manifest(out / "manifest.json")
    if not manifest.path.is_file():
        refuse_unloadable_models(c)
    # the content of every image retrieval and the judge see (file bytes, cached by size + mtime): a
    # changed image changes the stage hashes, an untouched one is not read again
    digests = ImageDigests(out / "cache" / "image_digests.tsv")
    images_sha1 = digest_items([it for r in records for it in (r.query, r.positive)] + pool, loader, digests)
    away = hub_models_not_on_disk(c)
    taken = recorded_models(c, manifest, away)
    embedder = model_fingerprinter(c.embedder, keyed=None if "embedder" in taken else EMBEDDER_KEYS)
    fingerprints = input_fingerprints(c, n_records=len(records), skipped=skips.total, pool_size=len(pool),
                                      images_sha1=images_sha1, embedder=embedder, taken=taken)
    if manifest.path.is_file():
        refuse_unloadable_models(c, manifest.models_to_load(c, fingerprints))
    digests.save()
    log.info("image content digest %s (%d files read, the rest known by size + mtime)", images_sha1[:12],
             digests.hashed)
    return MiningInputs(records=records, pool=pool, pool_index={it.key: i for i, it in enumerate(pool)},
                        skips=skips, fingerprints=fingerprints, images_hashed=digests.hashed,
                        seconds=time.perf_counter() - t0, digests=digests, embedder_fingerprint=embedder,
                        not_on_disk=away)


def refuse_unloadable_models(c: MineConfig, models: Collection[str] = ("embedder", "judge")) -> None:
    """Refuse a hub id --embedder or --judge this process will load (of `models`: the stages left to do load them,
    `Manifest.models_to_load`) that cannot be loaded here, named by its option:
    a hub that cannot be reached or has no such model (`refuse_unreachable_hub_model`: the hub asked once), or,
    offline, one not in the local Hugging Face cache (`refuse_uncached_hub_model_offline`). The loads would say so,
    the judge's only after the retrieval's encoding (QA: --out written, the retrieval encoded, then the judge
    refused). Not --backend ray's judge (it loads on the cluster's nodes, from their caches), nor the oracle's (a
    world or a labels file)."""
    from unime.mining.backends import judge_models
    from unime.models.loading import loading_as, refuse_uncached_hub_model_offline, refuse_unreachable_hub_model

    judges = [] if c.backend == "ray" or "judge" not in models else judge_models(c.judge, c.backend)
    embedders = [c.embedder] if "embedder" in models else []
    for model, option in [*((e, "--embedder") for e in embedders), *((j, "--judge") for j in judges)]:
        with loading_as(option):
            refuse_unreachable_hub_model(model)
        refuse_uncached_hub_model_offline(model, option)
