"""`unime mine`: judge-guided hard-negative mining, UniME-V2 stages A–C (SPEC §1.2–1.4), resumable.

    result = run_mining(MineConfig(records="train.jsonl", embedder="emb/", judge="judge/", out="mined/"))

Stages and files (all under `out/`, each written atomically):

    manifest.json             config, its hash, input fingerprints, per-stage hashes and times
    retrieval.parquet         stage A: per query its top-K candidates (pool ids, similarities), sim(q, c_t)
    judge/shard-NNNNN.parquet stage B: per query the judge score of its positive and of each candidate
    mined.json                stage C: the mined set, UniME-V2 released JSON (SPEC 1.4)
    mined.parquet             the same records, unime Parquet (holds what the JSON cannot: inline images…)
    audit.parquet             per query and candidate: rank, similarity, judge score, filtered?, sampled?
    stats.json, report.md, plots/*.png   counts, timings, plots (`unime.mining.report`)
    audit.json                with `audit=True` and a demo world: the judge against ground truth

Resumption: each stage records a hash of everything its output depends on. On a re-run a stage whose
hash matches is loaded, not recomputed; the judge stage is split into shards of `shard_size` queries,
and every shard file that exists is complete (atomic writes), so a killed run loses at most the shard
in flight. Stage C and the report are cheap and always recomputed: changing β, the interval, the count
or the fallback policy re-uses the retrieval and the judge scores. A stage whose hash changed is
recomputed from scratch (its stale shards removed).

Judge work: per query one group = its positive + its K candidates, sharing the query prefix
(`JudgeScorer.score_candidates`). Identical queries inside a shard are merged into one group, so each
distinct (query, candidate) pair of a shard is scored once; a query repeated in another shard is
scored again there (shards stay independent, which is what makes them resumable and distributable).

Determinism: the fallback draw of query i uses `np.random.default_rng((seed, i))`, and the judge
encodes each candidate image on its own (cached by image), so on the same machine and thread settings a
resumed run writes byte-identical outputs to an uninterrupted one (a test kills a run to check it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unime.data.atomic import atomic_open, atomic_path
from unime.data.image_digests import ImageDigests, digest_items, file_sha1
from unime.data.jsonl import iter_jsonl
from unime.data.items import Item, Record
from unime.errors import DataError, UnimeError, changed_option_keys, refuse_changed_options
from unime.index.ann import measure_recall, recall_summary
from unime.mining.backends import JudgeBackend, JudgeSpec, make_backend
from unime.mining.retrieval import IndexConfig, RetrievalResult, build_index, build_pool, search_hard_negatives
from unime.mining.sampling import DEFAULT_BETA
from unime.models.embedding_cache import RunEncoder, embedding_settings, model_fingerprint
from unime.outdir import claim, require_replaceable

log = logging.getLogger(__name__)

PIPELINE_VERSION = 1
RECALL_SAMPLE = 200  # queries on which an approximate index's recall@K against exact search is measured


@dataclass
class MineConfig:
    records: str
    embedder: str
    judge: str
    out: str
    pool: str | None = None  # JSONL of items; default: the de-duplicated union of all positives
    data_root: str | None = None  # image paths are relative to it; default: the records file's folder
    k: int = 50
    beta: float = DEFAULT_BETA
    interval: int = 5
    count: int = 10
    fallback: str = "random"
    seed: int = 0
    index: str = "flat"
    nprobe: int = 16
    ef_search: int = 128
    # more FAISS index parameters (unime.index.ann.IndexConfig): ivf lists and training sample, hnsw graph
    # degree and build breadth, float16 storage inside the index
    nlist: int = 0
    train_sample: int = 0
    hnsw_m: int = 32
    ef_construction: int = 40
    index_storage: str = "float32"
    shard_size: int = 64
    backend: str = "local"
    backend_options: dict = field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None
    embed_batch_size: int = 16
    judge_chunk_size: int = 16
    judge_image_cache: int = 1024  # candidate images whose vision features the judge keeps
    cache_dir: str | None = None  # embedding cache; default: out/cache/embeddings
    on_error: str = "raise"
    allow_outside_root: bool = False
    audit: bool = False
    world: str | None = None
    audit_threshold: float = 1.0  # relevance >= this makes a retrieved candidate a false negative
    show_progress: bool = False
    # image resolution for the embedder and the judge (unset: each checkpoint's recorded setting)
    min_pixels: int | None = None
    max_pixels: int | None = None
    image_size: Any = None
    # video sampling for the embedder and the judge (unset: `VideoSampling` defaults, 8 frames)
    video_frames: int | None = None
    video_fps: float | None = None
    video_max_frames: int | None = None
    video_max_pixels: int | None = None
    overwrite: bool = False  # a re-run with other options: redo what depends on them (else refused)

    def index_config(self) -> IndexConfig:
        return IndexConfig(kind=self.index, nprobe=self.nprobe, ef_search=self.ef_search, nlist=self.nlist,
                           train_sample=self.train_sample, hnsw_m=self.hnsw_m, ef_construction=self.ef_construction,
                           storage=self.index_storage, seed=self.seed)

    def index_key(self) -> list:
        """The index parameters in the retrieval stage's hash: [kind, nprobe, efSearch] as before, then only
        the parameters set away from their defaults (an existing run's stage stays reused)."""
        c, defaults = self.index_config(), IndexConfig()
        extra = {k: v for k, v in c.to_dict().items()
                 if k not in ("kind", "nprobe", "ef_search") and v != getattr(defaults, k)
                 and (k != "seed" or c.kind == "ivf")}  # the seed draws IVF's training sample
        return [c.kind, c.nprobe, c.ef_search] + ([extra] if extra else [])

    def __post_init__(self):
        if self.k < 1:
            raise ValueError("k must be >= 1")
        if self.count < 1 or self.interval < 1 or self.shard_size < 1:
            raise ValueError("count, interval and shard_size must be >= 1")
        if self.fallback not in ("random", "drop"):
            raise ValueError(f"fallback must be 'random' or 'drop', got {self.fallback!r}")
        if self.audit and not self.world:
            raise ValueError("audit needs a demo world (world=...)")

    @property
    def image_budget(self):
        from unime.models.image_budget import ImageBudget

        return ImageBudget.from_options(self.min_pixels, self.max_pixels, self.image_size)

    @property
    def video_options(self) -> dict:
        return {"frames": self.video_frames, "fps": self.video_fps, "max_frames": self.video_max_frames,
                "max_pixels": self.video_max_pixels}

    @property
    def video_sampling(self):
        """A `VideoSampling` from the video options, or None when none is set (the defaults apply)."""
        from unime.data.video import VideoSampling

        return VideoSampling.from_options(**self.video_options)

    @property
    def resolved_data_root(self) -> str:
        from unime.data.roots import resolve_data_root

        return resolve_data_root(self.records, self.data_root)


@dataclass
class MineResult:
    out: Path
    n_records: int
    n_mined: int
    stats: dict[str, Any]
    finished_before: bool = False  # the folder held this run, finished: nothing was done


# MineConfig fields that do not change what is mined (left out of the run's identity): where the output
# goes, how the work is spread and batched, progress bars
FREE_OPTIONS = ("out", "show_progress", "backend", "backend_options", "cache_dir", "judge_chunk_size",
                "judge_image_cache", "embed_batch_size", "overwrite")


# -- hashing -------------------------------------------------------------------------------------------

def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- manifest ------------------------------------------------------------------------------------------

class Manifest:
    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        self.data.setdefault("version", PIPELINE_VERSION)
        self.data.setdefault("stages", {})

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def set_stage(self, name: str, value: dict[str, Any]) -> None:
        self.data["stages"][name] = value
        self.save()

    def save(self) -> None:
        with atomic_open(self.path) as fh:
            json.dump(self.data, fh, indent=1, sort_keys=True, default=str)


# -- inputs --------------------------------------------------------------------------------------------

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


def _video_key(c: MineConfig) -> dict:
    """The video options in a stage hash, only when set (runs without them keep their earlier hashes)."""
    given = {k: v for k, v in c.video_options.items() if v is not None}
    return {"video": given} if given else {}


def _record_label(rec: Record, i: int) -> str:
    return rec.id or f"index {i + 1}"


# -- the pipeline --------------------------------------------------------------------------------------

class MiningRun:
    """One `unime mine` run over an output folder; see the module doc. Use `run_mining(config)`."""

    def __init__(self, config: MineConfig, *, backend: JudgeBackend | None = None, embedder=None):
        self.config = config
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(self.out / "manifest.json")
        self._backend = backend
        self._embedder = embedder
        self.times: dict[str, float] = {}

    # inputs -----------------------------------------------------------------------------------------
    def load_inputs(self) -> None:
        from unime.data.images import ImageLoader
        from unime.data.io import check_images, read_records
        from unime.data.skips import SkipReport

        c = self.config
        t0 = time.perf_counter()
        self.skips = SkipReport()
        records = read_records(c.records, on_error=c.on_error, skips=self.skips)
        # every image opened up front: a bad one stops the run here (or is skipped and counted), not
        # an hour into the judge stage
        loader = ImageLoader(c.resolved_data_root, allow_outside_root=c.allow_outside_root, video=c.video_sampling)
        self.records: list[Record] = check_images(records, loader, on_error=c.on_error, skips=self.skips,
                                                  source=c.records)
        if not self.records:
            raise DataError("no records to mine", source=c.records)
        extra = read_pool_items(c.pool, on_error=c.on_error, skips=self.skips) if c.pool else []
        if extra:
            extra = check_images(extra, loader, on_error=c.on_error, skips=self.skips, source=c.pool)
        # default pool: positives; a pool file replaces them (its own items only)
        self.pool: list[Item] = build_pool([], extra) if c.pool else build_pool(self.records)
        self.pool_index = {it.key: i for i, it in enumerate(self.pool)}
        # the content of every image retrieval and the judge see (file bytes, cached by size + mtime): a
        # changed image changes the stage hashes, an untouched one is not read again
        digests = ImageDigests(self.out / "cache" / "image_digests.tsv")
        images_sha1 = digest_items([it for r in self.records for it in (r.query, r.positive)] + self.pool, loader,
                                   digests)
        digests.save()
        log.info("image content digest %s (%d files read, the rest known by size + mtime)", images_sha1[:12],
                 digests.hashed)
        self.images_hashed = digests.hashed
        self.inputs = {
            "records": {"path": str(Path(c.records).resolve()), "sha1": file_sha1(c.records), "n": len(self.records),
                        "skipped": self.skips.total},
            "pool": {"path": str(Path(c.pool).resolve()), "sha1": file_sha1(c.pool)} if c.pool else "positives",
            "pool_size": len(self.pool),
            "embedder": {"path": c.embedder, "fingerprint": model_fingerprint(c.embedder)},
            # a labels file (the oracle's ground truth) is identified by its content
            "judge": {"path": c.judge, "fingerprint": file_sha1(c.judge) if os.path.isfile(c.judge)
                      else model_fingerprint(c.judge)},
            "data_root": str(Path(c.resolved_data_root).resolve()),
            "images": {"sha1": images_sha1},
        }
        if c.backend == "oracle":  # ground truth, not a model's scores: shards are never shared with a model's
            self.inputs["judge"]["scores"] = "world ground truth"
        cfg = asdict(c)
        for key in FREE_OPTIONS:
            cfg.pop(key)
        self.config_hash = _hash({"config": cfg, "inputs": self.inputs, "version": PIPELINE_VERSION})
        self.times["load"] = time.perf_counter() - t0

    def check_rerun(self) -> bool:
        """The resume convention (as the trainers', `unime.models.run_state`) on a folder that holds an
        earlier run: True if that run finished with these options and inputs (nothing to do). Other
        options are refused with the differing keys unless `overwrite`; then, as when only the inputs
        changed (records, image bytes, models), the content-keyed stage hashes decide what is redone."""
        before = self.manifest.data.get("config")
        if before:
            keys = changed_option_keys(before, asdict(self.config), free=FREE_OPTIONS)
            if keys and not self.config.overwrite:
                raise refuse_changed_options(self.out, before, asdict(self.config), keys)
            if keys:
                log.warning("%s: options changed (%s); --overwrite: redoing the stages that depend on them",
                            self.out, ", ".join(keys))
            changed = sorted(k for k in self.inputs if self.manifest.data.get("inputs", {}).get(k) != self.inputs[k])
            if changed and not keys:
                log.warning("%s: inputs changed since the last run (%s): redoing the stages that depend on them",
                            self.out, ", ".join(changed))
        finished = self.manifest.data.get("finished") or {}
        done = (not self.config.overwrite and finished.get("config_hash") == self.config_hash
                and all((self.out / n).is_file() for n in ("stats.json", "mined.parquet", "report.md")))
        if not done:
            self.manifest.data.pop("finished", None)
            self.manifest.data["config"] = asdict(self.config)
            self.manifest.data["config_hash"] = self.config_hash
            self.manifest.data["inputs"] = self.inputs
            self.manifest.save()
        return done

    # stage A ----------------------------------------------------------------------------------------
    def retrieval_hash(self) -> str:
        c = self.config
        return _hash({"records": self.inputs["records"]["sha1"], "pool": self.inputs["pool"],
                      "images": self.inputs["images"]["sha1"],
                      "embedder": self.inputs["embedder"], "k": c.k, "index": c.index_key(),
                      "data_root": self.inputs["data_root"], "dtype": c.dtype, "version": PIPELINE_VERSION,
                      **_video_key(c)})

    def embedder(self):
        if self._embedder is None:
            from unime.models.embedder import Embedder

            c = self.config
            self._embedder = Embedder.from_pretrained(c.embedder, device=c.device, dtype=c.dtype,
                                                      data_root=c.resolved_data_root,
                                                      allow_outside_root=c.allow_outside_root,
                                                      batch_size=c.embed_batch_size,
                                                      image_budget=c.image_budget,
                                                      video_sampling=c.video_sampling)
        return self._embedder

    def run_retrieval(self) -> RetrievalResult:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.out / "retrieval.parquet"
        h = self.retrieval_hash()
        st = self.manifest.stage("retrieval")
        if st.get("hash") == h and path.is_file():
            log.info("retrieval: reusing %s", path)
            t = pq.read_table(path).to_pydict()
            return RetrievalResult(candidate_ids=[np.asarray(x, dtype=np.int64) for x in t["candidate_ids"]],
                                   candidate_sims=[np.asarray(x, dtype=np.float32) for x in t["candidate_sims"]],
                                   positive_sims=np.asarray(t["positive_sim"], dtype=np.float32),
                                   n_above_positive=np.asarray(t["n_above_positive"], dtype=np.int64))
        c = self.config
        t0 = time.perf_counter()
        emb = self.embedder()
        # the evaluation's embedding cache: items keyed by text + image content, so the same relative path
        # under another data root (or a regenerated image) is never served a stale vector
        settings = embedding_settings(emb, c.dtype)
        encoder = RunEncoder(emb, model_fingerprint(c.embedder, settings),
                             cache_dir=c.cache_dir or self.out / "cache" / "embeddings",
                             model_info={"model": str(c.embedder), "settings": settings},
                             batch_size=c.embed_batch_size, show_progress=c.show_progress,
                             allow_outside_root=c.allow_outside_root)
        queries = [r.query for r in self.records]
        positives = [r.positive for r in self.records]
        all_items = queries + positives + self.pool
        rows = encoder.add(all_items, c.resolved_data_root, source=str(c.records))
        encoder.encode_pending()
        vecs, n_encoded = encoder.vectors(rows), encoder.stats.encoded
        nq = len(queries)
        q_vecs, p_vecs, pool_vecs = vecs[:nq], vecs[nq:2 * nq], vecs[2 * nq:]
        t1 = time.perf_counter()
        index_config = c.index_config()
        index = build_index(pool_vecs, index_config)
        pos_ids = [self.pool_index.get(r.positive.key, -1) for r in self.records]
        query_ids = [self.pool_index.get(r.query.key, -1) for r in self.records]
        res = search_hard_negatives(index, q_vecs, p_vecs, pos_ids, k=c.k, query_ids=query_ids)
        t2 = time.perf_counter()
        # recall@K of an approximate index against exact search, on a sample of this run's queries
        if index_config.kind == "flat":
            index_recall = recall_summary(index, index_config, pool_vecs, k=c.k)
        else:
            sample = np.sort(np.random.default_rng(c.seed).choice(nq, size=min(RECALL_SAMPLE, nq), replace=False))
            index_recall = dict(measure_recall(index, pool_vecs, k=c.k, queries=q_vecs[sample]), exact=False)
        if not index_recall.get("exact"):
            log.info("retrieval: %s index recall@%d vs exact = %.4f on %d sampled queries", c.index,
                     index_recall["k"], index_recall["recall"] or float("nan"), index_recall["sample"])
        table = pa.table({
            "query_index": pa.array(range(nq), pa.int64()),
            "candidate_ids": pa.array([x.tolist() for x in res.candidate_ids], pa.list_(pa.int64())),
            "candidate_sims": pa.array([x.tolist() for x in res.candidate_sims], pa.list_(pa.float32())),
            "positive_sim": pa.array(res.positive_sims, pa.float32()),
            "n_above_positive": pa.array(res.n_above_positive, pa.int64()),
        })
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        self.times["encode"], self.times["search"] = t1 - t0, t2 - t1
        self.manifest.set_stage("retrieval", {"hash": h, "encoded_items": n_encoded, "index_recall": index_recall,
                                              "seconds": {"encode": t1 - t0, "search": t2 - t1}})
        return res

    # stage B ----------------------------------------------------------------------------------------
    def judge_hash(self, retrieval_hash: str) -> str:
        c = self.config
        return _hash({"retrieval": retrieval_hash, "judge": self.inputs["judge"], "shard_size": c.shard_size,
                      "dtype": c.dtype, "version": PIPELINE_VERSION, **_video_key(c)})

    def judge_spec(self) -> JudgeSpec:
        c = self.config
        return JudgeSpec(path=c.judge, device=c.device, dtype=c.dtype, data_root=c.resolved_data_root,
                         allow_outside_root=c.allow_outside_root, chunk_size=c.judge_chunk_size,
                         image_cache_size=c.judge_image_cache,
                         image_budget=c.image_budget.as_items(),
                         video_sampling=tuple(sorted((k, v) for k, v in c.video_options.items() if v is not None)))

    def backend(self) -> JudgeBackend:
        if self._backend is None:
            opts = dict(self.config.backend_options)
            if self.config.backend == "local":
                opts.setdefault("show_progress", self.config.show_progress)
            self._backend = make_backend(self.config.backend, self.judge_spec(), **opts)
        return self._backend

    def shard_groups(self, retrieval: RetrievalResult, shard: int) -> tuple[list[int], list[tuple[Item, list[Item]]]]:
        """The query indices of a shard and its judge groups: identical queries within the shard are merged
        into one group (each distinct pair is scored once); the positive is one of the candidates."""
        s = self.config.shard_size
        idx = list(range(shard * s, min(len(self.records), (shard + 1) * s)))
        merged: dict[str, tuple[Item, dict[str, Item]]] = {}
        for i in idx:
            rec = self.records[i]
            q, cands = merged.setdefault(rec.query.key, (rec.query, {}))
            for it in [rec.positive, *(self.pool[j] for j in retrieval.candidate_ids[i])]:
                cands.setdefault(it.key, it)
        return idx, [(q, list(c.values())) for q, c in merged.values()]

    def run_judge(self, retrieval: RetrievalResult, retrieval_hash: str) -> dict[int, np.ndarray]:
        """Judge scores per query: array [s(q, c_t), s(q, c_1), ..., s(q, c_K)]."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        c = self.config
        jdir = self.out / "judge"
        h = self.judge_hash(retrieval_hash)
        st = self.manifest.stage("judge")
        n_shards = (len(self.records) + c.shard_size - 1) // c.shard_size
        if st.get("hash") != h and jdir.exists():
            require_replaceable(self.out, "judge")  # never a judge/ folder mining did not write
            log.info("judge: configuration changed, discarding %s", jdir)
            shutil.rmtree(jdir)
        jdir.mkdir(parents=True, exist_ok=True)
        for stale in jdir.glob(".*.tmp-*"):  # leftovers of a killed write
            stale.unlink(missing_ok=True)
        self.manifest.set_stage("judge", {"hash": h, "n_shards": n_shards, "shard_size": c.shard_size})
        shard_path = lambda i: jdir / f"shard-{i:05d}.parquet"  # noqa: E731
        todo = [i for i in range(n_shards) if not shard_path(i).is_file()]
        self.judge_resumed_shards = n_shards - len(todo)
        if todo:
            log.info("judge: %d of %d shards to score (%d done before)", len(todo), n_shards, n_shards - len(todo))
        t0 = time.perf_counter()
        if todo:
            layouts = {}

            def shards():
                for i in todo:
                    idx, groups = self.shard_groups(retrieval, i)
                    layouts[i] = (idx, groups, time.perf_counter())
                    yield i, groups

            backend = self.backend()
            counted = _numeric(backend.stats())
            for sid, group_scores in backend.score_shards(shards()):
                idx, groups, started = layouts.pop(sid)
                now = _numeric(backend.stats())  # the judge's counters for this shard (the run sums them)
                shard_stats = {k: v - counted.get(k, 0) for k, v in now.items()}
                counted = now
                lookup = {q.key: {it.key: float(s) for it, s in zip(cands, sc)}
                          for (q, cands), sc in zip(groups, group_scores)}
                rows = []
                for i in idx:
                    rec = self.records[i]
                    scores = lookup[rec.query.key]
                    cands = [rec.positive, *(self.pool[j] for j in retrieval.candidate_ids[i])]
                    rows.append([scores[it.key] for it in cands])
                table = pa.table({"query_index": pa.array(idx, pa.int64()),
                                  "scores": pa.array(rows, pa.list_(pa.float64()))})
                table = table.replace_schema_metadata({"unime.seconds": f"{time.perf_counter() - started:.6f}",
                                                       "unime.judge_stats": json.dumps(shard_stats)})
                with atomic_path(shard_path(sid)) as tmp:
                    pq.write_table(table, tmp)
        self.times["judge"] = time.perf_counter() - t0
        scores: dict[int, np.ndarray] = {}
        self.judge_shard_seconds = 0.0
        self.judge_run_stats: dict[str, float] = {}  # the judge's counters summed over every shard of the run
        for i in range(n_shards):
            t = pq.read_table(shard_path(i))
            meta = t.schema.metadata or {}
            self.judge_shard_seconds += float(meta.get(b"unime.seconds", b"0"))
            for k, v in json.loads(meta.get(b"unime.judge_stats", b"{}")).items():
                self.judge_run_stats[k] = self.judge_run_stats.get(k, 0) + v
            for qi, sc in zip(t.column("query_index").to_pylist(), t.column("scores").to_pylist()):
                if qi in scores:
                    raise UnimeError(f"judge shard {i} repeats query {qi}; remove {jdir} and re-run")
                scores[qi] = np.asarray(sc, dtype=np.float64)
        missing = [i for i in range(len(self.records)) if i not in scores]
        if missing:
            raise UnimeError(f"judge shards miss {len(missing)} queries (e.g. {missing[0]}); remove {jdir} and re-run")
        return scores

    # stage C ----------------------------------------------------------------------------------------
    def run_sampling(self, retrieval: RetrievalResult, scores: dict[int, np.ndarray]):
        from unime.mining.sampling import SamplingStats, sample_negatives

        c = self.config
        t0 = time.perf_counter()
        stats = SamplingStats()
        mined: list[Record] = []
        audit_rows: list[dict[str, Any]] = []
        for i, rec in enumerate(self.records):
            ids = retrieval.candidate_ids[i]
            sims = retrieval.candidate_sims[i]
            s = scores[i]
            pos_score, cand_scores = float(s[0]), s[1:]
            label = _record_label(rec, i)
            result = sample_negatives(list(range(len(ids))), cand_scores, pos_score, beta=c.beta, interval=c.interval,
                                      count=c.count, fallback=c.fallback, rng=np.random.default_rng((c.seed, i)),
                                      source=c.records, record=label)
            stats.add(result, rec.dataset)
            filtered = cand_scores > pos_score - c.beta
            times_sampled = np.bincount(np.asarray(result.indices, dtype=np.int64), minlength=len(ids))
            for r in range(len(ids)):
                cand = self.pool[int(ids[r])]
                audit_rows.append({
                    "query_index": i, "record_id": rec.id, "dataset": rec.dataset, "rank": r,
                    "pool_index": int(ids[r]), "candidate_text": cand.text,
                    "candidate_image": cand.images[0] if cand.images and isinstance(cand.images[0], str) else "",
                    "similarity": float(sims[r]), "positive_similarity": float(retrieval.positive_sims[i]),
                    "judge_score": float(cand_scores[r]), "positive_score": pos_score,
                    "false_negative": bool(filtered[r]), "times_sampled": int(times_sampled[r]),
                    "status": result.status,
                })
            if result.status == "dropped":
                continue
            mined.append(Record(query=rec.query, positive=rec.positive,
                                negatives=[self.pool[int(ids[j])] for j in result.indices],
                                positive_score=pos_score, negative_scores=[float(x) for x in result.scores],
                                dataset=rec.dataset, id=rec.id))
        self.times["sample"] = time.perf_counter() - t0
        return mined, audit_rows, stats

    def write_outputs(self, mined: list[Record], audit_rows: list[dict[str, Any]]) -> dict[str, Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from unime.data.io import write_records, write_unime_v2_json

        t0 = time.perf_counter()
        notes: dict[str, Any] = {}
        write_records(mined, self.out / "mined.parquet")
        try:
            write_unime_v2_json(mined, self.out / "mined.json")
            notes["json"] = "written"
        except DataError as e:  # e.g. several images per item: the JSON format cannot hold them
            (self.out / "mined.json").unlink(missing_ok=True)
            notes["json"] = f"not written: {e}"
            log.warning("mined.json not written (mined.parquet has every record): %s", e)
        schema = pa.schema([("query_index", pa.int64()), ("record_id", pa.string()), ("dataset", pa.string()),
                            ("rank", pa.int32()), ("pool_index", pa.int64()), ("candidate_text", pa.string()),
                            ("candidate_image", pa.string()), ("similarity", pa.float32()),
                            ("positive_similarity", pa.float32()), ("judge_score", pa.float64()),
                            ("positive_score", pa.float64()), ("false_negative", pa.bool_()),
                            ("times_sampled", pa.int32()), ("status", pa.string())]
                           + ([("relevance", pa.float64()), ("positive_relevance", pa.float64())]
                              if audit_rows and "relevance" in audit_rows[0] else []))
        table = pa.Table.from_pylist(audit_rows, schema=schema)
        with atomic_path(self.out / "audit.parquet") as tmp:
            pq.write_table(table, tmp)
        self.times["write"] = time.perf_counter() - t0
        return notes

    def run(self) -> MineResult:
        from unime.mining import report

        t_start = time.perf_counter()
        self.load_inputs()
        if self.check_rerun():
            stats = json.loads((self.out / "stats.json").read_text(encoding="utf-8"))
            log.info("%s: this run finished earlier (same options and inputs); nothing to do", self.out)
            return MineResult(out=self.out, n_records=stats["records"], n_mined=stats["mined"], stats=stats,
                              finished_before=True)
        retrieval = self.run_retrieval()
        scores = self.run_judge(retrieval, self.retrieval_hash())
        mined, audit_rows, sstats = self.run_sampling(retrieval, scores)
        audit = None
        if self.config.audit:
            t0 = time.perf_counter()
            audit = report.judge_audit(self, audit_rows)
            self.times["audit"] = time.perf_counter() - t0
        notes = self.write_outputs(mined, audit_rows)
        # the judge's counters over the whole run (every shard, across resumptions), its other facts
        backend_stats = {k: v for k, v in (self._backend.stats() if self._backend is not None else {}).items()
                         if not _is_number(v)}
        backend_stats.update({k: int(v) if float(v).is_integer() else v for k, v in self.judge_run_stats.items()})
        if self._backend is not None:
            self._backend.close()
        self.times["total"] = time.perf_counter() - t_start
        stats = {
            "records": len(self.records), "mined": len(mined), "pool_size": len(self.pool),
            "skipped_records": _skip_summary(self.skips), "sampling": sstats.to_dict(),
            "sampling_table": sstats.format_table(), "judge": backend_stats,
            "judge_shards_resumed": self.judge_resumed_shards,
            "judge_shard_seconds": self.judge_shard_seconds,
            "retrieval": self.manifest.stage("retrieval"), "times_this_run": self.times, "outputs": notes,
            "config": {k: v for k, v in asdict(self.config).items() if k != "backend_options"},
            "config_hash": self.config_hash,
        }
        from unime.mining.health import label_health

        stats["label_health"] = label_health(stats["sampling"], audit_rows)
        for w in stats["label_health"]["warnings"]:
            log.warning("%s", w)
        report.write_report(self.out, stats, audit_rows, audit)
        self.manifest.data["finished"] = {"config_hash": self.config_hash, "mined": len(mined)}
        self.manifest.save()
        return MineResult(out=self.out, n_records=len(self.records), n_mined=len(mined), stats=stats)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numeric(stats: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in stats.items() if _is_number(v)}


def _skip_summary(skips) -> dict[str, Any]:
    return {"total": skips.total, "by_reason": {k: int(v) for k, v in skips.counts.items()},
            "summary": skips.summary()}


def run_mining(config: MineConfig, *, backend: JudgeBackend | None = None, embedder=None) -> MineResult:
    """Run (or resume) the mining pipeline described in the module doc, in an output folder it owns and
    holds locked (`unime.outdir`: a folder with files mining did not write is refused)."""
    with claim(config.out, "mine", {k: v for k, v in asdict(config).items() if k != "show_progress"},
               overwrite=config.overwrite):
        return MiningRun(config, backend=backend, embedder=embedder).run()


# -- `unime judge`: scoring alone ------------------------------------------------------------------------

def read_pairs(path: str, *, on_error: str = "raise", skips=None, images=None, label_column: str | None = None) \
        -> list[tuple[str, Item, Item]] | tuple[list[tuple[str, Item, Item]], list[float]]:
    """JSONL of `{"id"?, "query": item, "candidate": item}`; the id defaults to the (1-based) line number. A bad
    line (or, with `images` = an `ImageChecker`, a bad image) raises a `DataError` naming the file, the
    line and the field, or under `on_error="skip"` is counted in `skips` and left out.
    With `label_column`, each line also carries a relevance label under that key (a number >= 0 or a
    boolean; > 0 = relevant) and `(pairs, labels)` is returned (aligned: a skipped line drops both)."""
    import math

    from unime.data.io import raw_message
    from unime.data.skips import ErrorPolicy, data_error

    policy = ErrorPolicy(on_error, skips, path)
    pairs, labels = [], []
    allowed = {"id", "query", "candidate"} | ({label_column} if label_column else set())
    for n, obj in iter_jsonl(path, on_malformed=policy.handle):
        where = f"line {n}"
        try:
            if not isinstance(obj, dict):
                raise data_error("schema", "expected an object", source=path, record=where)
            rid = obj.get("id", n)
            for key in ("query", "candidate") + ((label_column,) if label_column else ()):
                if key not in obj:
                    raise data_error("schema", "missing", source=path, record=where, field=key)
            unknown = set(obj) - allowed
            if unknown:
                hint = " (a label column? pass --label-column NAME)" if not label_column else ""
                raise data_error("schema", f"unknown keys {sorted(unknown)}{hint}", source=path, record=where)
            q = Item.from_dict(obj["query"], source=path, record=where, field_name="query")
            c = Item.from_dict(obj["candidate"], source=path, record=where, field_name="candidate")
            label = None
            if label_column:
                v = obj[label_column]
                if isinstance(v, bool):
                    v = float(v)
                if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                    raise data_error("schema", f"expected a label >= 0 (or true/false), got {v!r}", source=path,
                                     record=where, field=label_column)
                label = float(v)
            for key, it in (("query", q), ("candidate", c)):
                if it.is_empty:
                    raise data_error("empty_item", "empty item", source=path, record=where, field=key)
                if images is not None:
                    try:
                        images.check(it, source=path, record=where)
                    except DataError as e:  # name the pair's field, not the checker's "item"
                        raise data_error("image", raw_message(e), source=path, record=where,
                                         field=f"{key}.{e.field.split('.', 1)[-1]}") from None
            pairs.append((str(rid) if not isinstance(rid, (int, str)) else rid, q, c))
            if label is not None:
                labels.append(label)
        except DataError as e:
            policy.handle(e)
    policy.finish()
    if label_column:
        return pairs, labels
    return pairs


def score_pairs_file(pairs_path: str, out_path: str, spec: JudgeSpec, *, backend: str = "local",
                     backend_options: dict | None = None, on_error: str = "raise", skips=None,
                     label_column: str | None = None) -> int | dict:
    """Score every pair of a JSONL pairs file; write `{"id", "score"}` lines in input order (atomic).
    Every image is opened first; under `on_error="skip"` bad pairs are left out (and counted).

    With `label_column`: the lines also carry `label`, and the judge is evaluated on the labels
    (`unime.mining.judge_check`): OUT with suffix `.metrics.json` and `.calibration.png` are written and
    the metrics dict is returned (else the number of pairs)."""
    from unime.data.images import ImageLoader
    from unime.data.io import ImageChecker

    checker = ImageChecker(ImageLoader(spec.data_root, allow_outside_root=spec.allow_outside_root,
                                       video=spec.sampling))
    if label_column:
        pairs, labels = read_pairs(pairs_path, on_error=on_error, skips=skips, images=checker,
                                   label_column=label_column)
    else:
        pairs, labels = read_pairs(pairs_path, on_error=on_error, skips=skips, images=checker), None
    if not pairs:
        raise DataError("no pairs to score", source=pairs_path)
    groups: dict[str, tuple[Item, list[Item]]] = {}
    for _, q, c in pairs:
        g = groups.setdefault(q.key, (q, []))
        if all(x.key != c.key for x in g[1]):
            g[1].append(c)
    with make_backend(backend, spec, **(backend_options or {})) as be:
        group_list = list(groups.values())
        results = be.score_groups(group_list)
    lookup = {q.key: {c.key: float(s) for c, s in zip(cands, sc)} for (q, cands), sc in zip(group_list, results)}
    scores = [lookup[q.key][c.key] for _, q, c in pairs]
    with atomic_open(out_path) as fh:
        for i, (rid, q, c) in enumerate(pairs):
            row = {"id": rid, "score": scores[i]}
            if labels is not None:
                row["label"] = labels[i]
            fh.write(json.dumps(row) + "\n")
    if labels is None:
        return len(pairs)
    from unime.mining.judge_check import binary_metrics, calibration_bins, plot_calibration

    metrics = binary_metrics(labels, scores)
    metrics["calibration"] = calibration_bins(labels, scores)
    stem = Path(out_path).with_suffix("")
    with atomic_open(f"{stem}.metrics.json") as fh:
        json.dump(metrics, fh, indent=1)
    plot_calibration(labels, scores, f"{stem}.calibration.png", title=f"judge {Path(spec.path).name}")
    return metrics
