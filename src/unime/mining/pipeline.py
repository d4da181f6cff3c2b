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

Resumption (`unime.mining.manifest`): each stage records a hash of everything its output depends on; on
a re-run a stage whose hash matches is loaded, not recomputed, and the judge stage resumes shard by shard
(`unime.mining.stages`). Stage C and the report are cheap and always recomputed: changing β, the interval,
the count or the fallback policy re-uses the retrieval and the judge scores.

Judge work: per query one group = its positive + its K candidates, sharing the query prefix
(`JudgeScorer.score_candidates`); identical queries inside a shard are merged into one group.
Determinism: the fallback draw of query i uses `np.random.default_rng((seed, i))`, and the judge
encodes each candidate image on its own (cached by image), so on the same machine and thread settings a
resumed run writes byte-identical outputs to an uninterrupted one (a test kills a run to check it).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unime.mining.backends import JudgeBackend, JudgeSpec, make_backend
from unime.mining.inputs import MiningInputs, load_inputs
from unime.mining.manifest import Manifest, judge_hash, retrieval_hash, run_hash
from unime.mining.pairs import score_pairs_file  # noqa: F401  (the `unime judge` command imports it from here)
from unime.mining.retrieval import IndexConfig
from unime.mining.sampling import DEFAULT_BETA
from unime.mining.stages import is_number, run_judge, run_retrieval, run_sampling, write_outputs
from unime.outdir import claim

log = logging.getLogger(__name__)


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



class MiningRun:
    """One `unime mine` run over an output folder; see the module doc. Use `run_mining(config)`.
    The run's identity and record live in `unime.mining.manifest`, the stages in `unime.mining.stages`;
    this class holds what they share (inputs, models, timings) and writes the statistics and report."""

    def __init__(self, config: MineConfig, *, backend: JudgeBackend | None = None, embedder=None):
        self.config = config
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(self.out / "manifest.json")
        self._backend = backend
        self._embedder = embedder
        self.times: dict[str, float] = {}

    def load_inputs(self) -> None:
        self.data: MiningInputs = load_inputs(self.config, self.out)
        self.records, self.pool, self.skips = self.data.records, self.data.pool, self.data.skips
        self.inputs, self.images_hashed = self.data.fingerprints, self.data.images_hashed
        self.config_hash = run_hash(self.config, self.inputs)
        self.times["load"] = self.data.seconds

    def retrieval_hash(self) -> str:
        return retrieval_hash(self.config, self.inputs)

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

    def run(self) -> MineResult:
        from unime.mining import report
        from unime.mining.health import label_health

        c = self.config
        t_start = time.perf_counter()
        self.load_inputs()
        if self.manifest.open_run(c, self.inputs, self.config_hash):
            stats = json.loads((self.out / "stats.json").read_text(encoding="utf-8"))
            log.info("%s: this run finished earlier (same options and inputs); nothing to do", self.out)
            return MineResult(out=self.out, n_records=stats["records"], n_mined=stats["mined"], stats=stats,
                              finished_before=True)
        r_hash = self.retrieval_hash()
        retrieval = run_retrieval(c, self.data, self.manifest, r_hash, self.embedder, self.times)
        judged = run_judge(c, self.data, self.manifest, judge_hash(c, self.inputs, r_hash), retrieval, self.backend,
                           self.times)
        mined, audit_rows, sstats = run_sampling(c, self.data, retrieval, judged.scores, self.times)
        audit = None
        if c.audit:
            t0 = time.perf_counter()
            audit = report.judge_audit(self, audit_rows)
            self.times["audit"] = time.perf_counter() - t0
        notes = write_outputs(self.out, mined, audit_rows, self.times)
        # the judge's counters over the whole run (every shard, across resumptions), its other facts
        backend_stats = {k: v for k, v in (self._backend.stats() if self._backend is not None else {}).items()
                         if not is_number(v)}
        backend_stats.update({k: int(v) if float(v).is_integer() else v for k, v in judged.run_stats.items()})
        if self._backend is not None:
            self._backend.close()
        self.times["total"] = time.perf_counter() - t_start
        stats = {
            "records": len(self.records), "mined": len(mined), "pool_size": len(self.pool),
            "skipped_records": {"total": self.skips.total, "by_reason": {k: int(v) for k, v in self.skips.counts.items()},
                                "summary": self.skips.summary()},
            "sampling": sstats.to_dict(), "sampling_table": sstats.format_table(), "judge": backend_stats,
            "judge_shards_resumed": judged.resumed_shards, "judge_shard_seconds": judged.shard_seconds,
            "retrieval": self.manifest.stage("retrieval"), "times_this_run": self.times, "outputs": notes,
            "config": {k: v for k, v in asdict(c).items() if k != "backend_options"},
            "config_hash": self.config_hash,
        }
        stats["label_health"] = label_health(stats["sampling"], audit_rows)
        for w in stats["label_health"]["warnings"]:
            log.warning("%s", w)
        report.write_report(self.out, stats, audit_rows, audit)
        self.manifest.finish(self.config_hash, len(mined))
        return MineResult(out=self.out, n_records=len(self.records), n_mined=len(mined), stats=stats)


def run_mining(config: MineConfig, *, backend: JudgeBackend | None = None, embedder=None) -> MineResult:
    """Run (or resume) the mining pipeline described in the module doc, in an output folder it owns and
    holds locked (`unime.outdir`: a folder with files mining did not write is refused)."""
    with claim(config.out, "mine", {k: v for k, v in asdict(config).items() if k != "show_progress"},
               overwrite=config.overwrite):
        return MiningRun(config, backend=backend, embedder=embedder).run()
