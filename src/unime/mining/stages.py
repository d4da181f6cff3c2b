"""The three mining stages over an output folder, called in order by `MiningRun` (`unime.mining.pipeline`,
whose module doc lists the files): A `run_retrieval` (top-K hard negatives, reused when its hash matches),
B `run_judge` (judge shards, resumed shard by shard; a changed hash discards them), C `run_sampling` (β
filter and sampling, the mined records and audit rows, written by `write_outputs`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from unime.data.atomic import warn_left
from unime.data.eval_formats import read_parquet, write_parquet
from unime.data.io import record_label
from unime.data.items import Item, Record
from unime.errors import UnimeError
from unime.index.ann import DEFAULT_RECALL_SAMPLE, build_index, measure_recall, recall_summary
from unime.mining.audit_rows import AuditRows
from unime.mining.backends import JudgeBackend
from unime.mining.manifest import Manifest, judge_shard
from unime.mining.progress import ProgressLog
from unime.mining.ranks import Ranks
from unime.mining.retrieval import RetrievalResult, query_positive_ids, search_hard_negatives
from unime.models.embedding_cache import RunEncoder, cache_settings, embedding_settings, model_fingerprint
from unime.outdir import remove_entry, require_replaceable

if TYPE_CHECKING:
    from unime.mining.inputs import MiningInputs
    from unime.mining.config import MineConfig

log = logging.getLogger(__name__)


# -- stage A: retrieval --------------------------------------------------------------------------------

def run_retrieval(c: MineConfig, data: MiningInputs, manifest: Manifest, stage_hash: str, embedder: Callable[[], Any],
                  times: dict[str, float], ranks: Ranks = Ranks()) -> RetrievalResult:
    """Per query its top-K candidates (pool ids, similarities) and sim(q, c_t). `embedder()` gives the
    `Embedder` (called only when the stage is recomputed). Under several processes every process encodes its
    share of the items missing from the embedding cache, then rank 0 retrieves from the cache and the others
    read its result."""
    path = manifest.path.parent / "retrieval.parquet"
    if manifest.stage("retrieval").get("hash") == stage_hash and path.is_file():
        try:
            res = read_retrieval(path)
        except (OSError, ValueError, KeyError) as e:  # cut short or damaged on disk (a page failing its checksum:
            # OSError; pyarrow's ArrowInvalid is a ValueError)
            log.warning("retrieval: %s is unreadable (%s); retrieving again", path, e)
        else:
            log.info("retrieval: reusing %s", path)
            return res
    t0 = time.perf_counter()
    if ranks.world == 1:
        encoder, rows = retrieval_encoder(c, data, manifest, embedder())
        with encoding_logged(encoder, ranks):
            encoder.encode_pending()
        return retrieve(c, data, manifest, stage_hash, encoder, rows, times, path, t0, encoder.stats.encoded)
    # every process's cache opened before any process saves its share (each cuts the missing items alike)
    encoder, rows = ranks.every_step(lambda: retrieval_encoder(c, data, manifest, embedder()))
    missing = encoder.missing()
    with encoding_logged(encoder, ranks):
        ranks.every_step(lambda: encoder.encode_pending(share=(ranks.rank, ranks.world)))

    def from_shares():  # rank 0
        encoder.store.refresh()
        encoder.encode_pending()  # every vector from the cache now
        return retrieve(c, data, manifest, stage_hash, encoder, rows, times, path, t0, missing)

    res = ranks.primary_step(from_shares)
    return res if ranks.primary else read_retrieval(path)


@contextlib.contextmanager
def encoding_logged(encoder: RunEncoder, ranks: Ranks):
    """INFO lines on the retrieval's encoding while it runs (`unime.mining.progress`), from the first process only;
    under several processes it encodes about 1/world of the items missing from the cache."""
    missing = encoder.missing()
    if ranks.primary:
        log.info("retrieval: %s distinct items, %s to encode (the rest from the embedding cache)",
                 f"{encoder.stats.distinct:,}", f"{missing:,}")
    if ranks.world == 1:
        progress = ProgressLog(log, "retrieval: encoded", missing, "items", enabled=ranks.primary and missing > 0)
    else:
        progress = ProgressLog(log, "retrieval: process 0 encoded", -(-missing // ranks.world),
                               f"items (its share of {missing:,} over {ranks.world} processes)",
                               enabled=ranks.primary and missing > 0)
    encoder.on_saved = lambda stats: progress.update(stats.encoded)
    try:
        yield
    finally:
        encoder.on_saved = None
    progress.finish()


def read_retrieval(path: Path) -> RetrievalResult:
    t = read_parquet(path).to_pydict()
    return RetrievalResult(candidate_ids=[np.asarray(x, dtype=np.int64) for x in t["candidate_ids"]],
                           candidate_sims=[np.asarray(x, dtype=np.float32) for x in t["candidate_sims"]],
                           positive_sims=np.asarray(t["positive_sim"], dtype=np.float32),
                           n_above_positive=np.asarray(t["n_above_positive"], dtype=np.int64))


def retrieval_encoder(c: MineConfig, data: MiningInputs, manifest: Manifest, emb) -> tuple[RunEncoder, np.ndarray]:
    """The embedding cache's encoder with the queries, positives and pool added (in that order), and their rows."""
    # the evaluation's embedding cache: items keyed by text + image content, so the same relative path
    # under another data root (or a regenerated image) is never served a stale vector
    settings = cache_settings(embedding_settings(emb, c.dtype), emb)
    fingerprint = data.embedder_fingerprint  # the manifest's (`load_inputs`): the model looked up once
    encoder = RunEncoder(emb, fingerprint(settings) if fingerprint else
                         model_fingerprint(c.embedder, settings, keyed="the embedding cache"),
                         cache_dir=c.cache_dir or manifest.path.parent / "cache" / "embeddings",
                         model_info={"model": str(c.embedder), "settings": settings},
                         batch_size=c.embed_batch_size, show_progress=c.show_progress,
                         allow_outside_root=c.allow_outside_root, digests=data.digests)
    rows = encoder.add([r.query for r in data.records] + [r.positive for r in data.records] + data.pool,
                       c.resolved_data_root, source=str(c.records))
    return encoder, rows


def retrieve(c: MineConfig, data: MiningInputs, manifest: Manifest, stage_hash: str, encoder: RunEncoder,
             rows: np.ndarray, times: dict[str, float], path: Path, t0: float, n_encoded: int) -> RetrievalResult:
    """Index the pool, search, write `path`, from `encoder`'s vectors (`retrieval_encoder`'s `rows`, encoded;
    `n_encoded` of them by this run, since `t0`)."""
    import pyarrow as pa

    vecs = encoder.vectors(rows)
    nq = len(data.records)
    q_vecs, p_vecs, pool_vecs = vecs[:nq], vecs[nq:2 * nq], vecs[2 * nq:]
    t1 = time.perf_counter()
    index_config = c.index_config()
    index = build_index(pool_vecs, index_config)
    pos_ids = [data.pool_index.get(r.positive.key, -1) for r in data.records]
    query_ids = [data.pool_index.get(r.query.key, -1) for r in data.records]
    log.info("retrieval: searching %s queries in a pool of %s (%s index)", f"{nq:,}", f"{len(pool_vecs):,}",
             index_config.kind)
    query_positives = query_positive_ids(data.records, data.pool_index) if c.exclude_query_positives else None
    res = search_hard_negatives(index, q_vecs, p_vecs, pos_ids, k=c.k, query_ids=query_ids, rule=c.candidate_window(),
                                query_positive_ids=query_positives)
    t2 = time.perf_counter()
    # recall@K of an approximate index against exact search, on a sample of this run's queries
    if index_config.kind == "flat":
        index_recall = recall_summary(index, index_config, pool_vecs, k=c.k)
    else:
        sample = np.sort(np.random.default_rng(c.seed).choice(nq, size=min(DEFAULT_RECALL_SAMPLE, nq), replace=False))
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
    write_parquet(table, path)
    times["encode"], times["search"] = t1 - t0, t2 - t1
    # the queries a search left short (their positive ranks deep), finished by an exact scan of the pool
    exact_scan = {"queries": int(res.n_exact_scan), "of": nq}
    manifest.set_stage("retrieval", {"hash": stage_hash, "encoded_items": n_encoded, "index_recall": index_recall,
                                     "exact_scan": exact_scan, "seconds": {"encode": t1 - t0, "search": t2 - t1}})
    return res


# -- stage B: judge ------------------------------------------------------------------------------------

@dataclass
class JudgeScores:
    """Stage B's result: per query [s(q, c_t), s(q, c_1), ..., s(q, c_K)], and the work behind it."""

    scores: dict[int, np.ndarray]
    resumed_shards: int  # shards a previous run had written
    shard_seconds: float  # scoring time summed over every shard of the run (across resumptions)
    run_stats: dict[str, float] = field(default_factory=dict)  # the judge's counters summed over every shard


def shard_groups(data: MiningInputs, retrieval: RetrievalResult, shard: int, shard_size: int) \
        -> tuple[list[int], list[tuple[Item, list[Item]]]]:
    """The query indices of a shard and its judge groups: identical queries within the shard are merged
    into one group (each distinct pair is scored once); the positive is one of the candidates."""
    idx = list(range(shard * shard_size, min(len(data.records), (shard + 1) * shard_size)))
    merged: dict[str, tuple[Item, dict[str, Item]]] = {}
    for i in idx:
        rec = data.records[i]
        q, cands = merged.setdefault(rec.query.key, (rec.query, {}))
        for it in [rec.positive, *(data.pool[j] for j in retrieval.candidate_ids[i])]:
            cands.setdefault(it.key, it)
    return idx, [(q, list(c.values())) for q, c in merged.values()]


def run_judge(c: MineConfig, data: MiningInputs, manifest: Manifest, stage_hash: str, retrieval: RetrievalResult,
              backend: Callable[[], JudgeBackend], times: dict[str, float], ranks: Ranks = Ranks()) \
        -> JudgeScores | None:
    """Score the shards not on disk yet with `backend()` (called only when there are some), then read all.
    Under several processes (`unime.mining.ranks`) each scores its share of them; rank 0 prepares the folder
    and reads the scores, the others return None."""
    import pyarrow as pa

    out = manifest.path.parent
    jdir = out / "judge"
    n_shards = (len(data.records) + c.shard_size - 1) // c.shard_size

    def prepare():  # rank 0
        if manifest.stage("judge").get("hash") != stage_hash and jdir.exists():
            require_replaceable(out, "judge")  # never a judge/ folder mining did not write
            log.info("judge: configuration changed, discarding the scored shards in %s", jdir)
            for shard in jdir.glob("shard-*.parquet"):  # its own files only: nothing else of the folder is mining's
                shard.unlink()
            warn_left(jdir, sorted(p.name for p in jdir.iterdir() if not p.name.startswith(".")),
                      "(the judge's earlier shards were deleted, to score anew)")
        jdir.mkdir(parents=True, exist_ok=True)
        for stale in jdir.glob(".*.tmp-*"):  # leftovers of a killed write
            stale.unlink(missing_ok=True)
        for i in range(n_shards):  # the shards scored before: read once, here (their scores are kept for the end)
            if not shard_path(i).is_file():
                continue
            try:
                done[i] = read_shard(shard_path(i))
            except (OSError, ValueError, KeyError) as e:  # pyarrow's ArrowInvalid is a ValueError
                # cut short or a page damaged on disk, failing its checksum (written atomically: a copy cut off, a
                # disk error)
                log.warning("judge: %s is unreadable (%s); scoring it again", shard_path(i), e)
                shard_path(i).unlink()
        manifest.set_stage("judge", {"hash": stage_hash, "n_shards": n_shards, "shard_size": c.shard_size})

    shard_path = lambda i: judge_shard(out, i)  # noqa: E731
    done: dict[int, Any] = {}  # rank 0: the tables of the shards on disk before this run scores any
    ranks.primary_step(prepare)
    todo = [i for i in range(n_shards) if not shard_path(i).is_file()]
    if todo and ranks.primary:
        log.info("judge: %d of %d shards to score (%d done before)%s", len(todo), n_shards, n_shards - len(todo),
                 f", spread over {ranks.world} processes" if ranks.world > 1 else "")
    resumed = n_shards - len(todo)
    todo = ranks.mine(todo)
    t0 = time.perf_counter()

    def score():  # every process, its own shards
        if not todo:
            return
        layouts = {}

        def shards():
            for i in todo:
                idx, groups = shard_groups(data, retrieval, i, c.shard_size)
                layouts[i] = (idx, groups, time.perf_counter())
                yield i, groups

        be = backend()
        counted = numeric(be.stats())
        for sid, group_scores in be.score_shards(shards()):
            idx, groups, started = layouts.pop(sid)
            now = numeric(be.stats())  # the judge's counters for this shard (the run sums them)
            shard_stats = {k: v - counted.get(k, 0) for k, v in now.items()}
            counted = now
            lookup = {q.key: {it.key: float(s) for it, s in zip(cands, sc)}
                      for (q, cands), sc in zip(groups, group_scores)}
            rows = []
            for i in idx:
                rec = data.records[i]
                scores = lookup[rec.query.key]
                cands = [rec.positive, *(data.pool[j] for j in retrieval.candidate_ids[i])]
                rows.append([scores[it.key] for it in cands])
            table = pa.table({"query_index": pa.array(idx, pa.int64()),
                              "scores": pa.array(rows, pa.list_(pa.float64()))})
            table = table.replace_schema_metadata({"unime.seconds": f"{time.perf_counter() - started:.6f}",
                                                   "unime.judge_stats": json.dumps(shard_stats),
                                                   "unime.rank": str(ranks.rank)})
            write_parquet(table, shard_path(sid))
    ranks.every_step(score)  # every process's shards are on disk
    times["judge"] = time.perf_counter() - t0
    if not ranks.primary:
        return None
    result = JudgeScores(scores={}, resumed_shards=resumed, shard_seconds=0.0)
    for i in range(n_shards):
        t = done.pop(i) if i in done else read_shard(shard_path(i))
        meta = t.schema.metadata or {}
        result.shard_seconds += float(meta.get(b"unime.seconds", b"0"))
        for k, v in json.loads(meta.get(b"unime.judge_stats", b"{}")).items():
            result.run_stats[k] = result.run_stats.get(k, 0) + v
        for qi, sc in zip(t.column("query_index").to_pylist(), t.column("scores").to_pylist()):
            if qi in result.scores:
                raise UnimeError(f"judge shard {i} repeats query {qi}; remove {jdir} and re-run")
            result.scores[qi] = np.asarray(sc, dtype=np.float64)
    missing = [i for i in range(len(data.records)) if i not in result.scores]
    if missing:
        raise UnimeError(f"judge shards miss {len(missing)} queries (e.g. {missing[0]}); remove {jdir} and re-run")
    return result


def read_shard(path: Path):
    """The judge shard `path`: a pyarrow Table of its query_index and scores, with its metadata (its pages'
    checksums checked: a damaged page is an OSError, the shard scored again)."""
    return read_parquet(path, columns=["query_index", "scores"])


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def numeric(stats: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in stats.items() if is_number(v)}


# -- stage C: filter and sample ------------------------------------------------------------------------

def run_sampling(c: MineConfig, data: MiningInputs, retrieval: RetrievalResult, scores: dict[int, np.ndarray],
                 times: dict[str, float]):
    """(mined records, audit rows, `SamplingStats`): per query the false negatives filtered with β and the
    hard negatives sampled (`unime.mining.sampling.sample_negatives`)."""
    from unime.mining.sampling import SamplingStats, sample_negatives

    t0 = time.perf_counter()
    stats = SamplingStats()
    mined: list[Record] = []
    audit_rows = AuditRows()
    for i, rec in enumerate(data.records):
        ids = retrieval.candidate_ids[i]
        sims = retrieval.candidate_sims[i]
        s = scores[i]
        pos_score, cand_scores = float(s[0]), s[1:]
        result = sample_negatives(list(range(len(ids))), cand_scores, pos_score, beta=c.beta, interval=c.interval,
                                  count=c.count, fallback=c.fallback, rng=np.random.default_rng((c.seed, i)),
                                  strategy=c.sampling_strategy,
                                  source=c.records, record=record_label(rec, i))
        stats.add(result, rec.dataset)
        filtered = cand_scores > pos_score - c.beta
        times_sampled = np.bincount(np.asarray(result.indices, dtype=np.int64), minlength=len(ids))
        cands = [data.pool[int(j)] for j in ids]
        audit_rows.add_query(len(ids), texts={
            "candidate_text": [cand.text for cand in cands],
            "candidate_image": [cand.images[0] if cand.images and isinstance(cand.images[0], str) else ""
                                for cand in cands]},
            numbers={"rank": np.arange(len(ids)), "pool_index": ids, "similarity": sims, "judge_score": cand_scores,
                     "false_negative": filtered, "times_sampled": times_sampled},
            per_query={"query_index": i, "record_id": rec.id, "dataset": rec.dataset,
                       "positive_similarity": retrieval.positive_sims[i], "positive_score": pos_score,
                       "status": result.status})
        if result.status == "dropped":
            continue
        mined.append(Record(query=rec.query, positive=rec.positive,
                            negatives=[data.pool[int(ids[j])] for j in result.indices],
                            positive_score=pos_score, negative_scores=[float(x) for x in result.scores],
                            dataset=rec.dataset, id=rec.id))
    times["sample"] = time.perf_counter() - t0
    return mined, audit_rows.finish(), stats


# what stage C and the report write, recomputed by every run that is not finished (`unime.mining.pipeline`)
FINAL_OUTPUTS = ("mined.parquet", "mined.json", "audit.parquet", "stats.json", "report.md", "audit.json", "plots")


def discard_final_outputs(out: Path) -> list[str]:
    """Remove an earlier run's final outputs as a run that redoes them starts: interrupted, the run left them
    looking complete (a changed records file's run killed early kept the old mined.parquet and stats.json for a
    trainer to read, QA). The resumable stages' files stay. Never an entry mining did not write."""
    removed = []
    for name in FINAL_OUTPUTS:
        path = out / name
        if not (path.exists() or path.is_symlink()):
            continue
        require_replaceable(out, name)
        remove_entry(path)
        removed.append(name)
    if removed:
        log.info("%s: removed the earlier run's %s until this run writes them", out, ", ".join(removed))
    return removed


# a warning's `extra`: the lines after its first (the example records) are details, which the demo's console leaves to
# the stage's log file (`unime.demo.stage_logs.DETAILS`); `unime mine` shows them as they are
_DETAILS = {"details_after_first_line": True}


def write_mined_json(path: Path, mined: list[Record]) -> dict[str, Any]:
    """Write the records the released UniME-V2 JSON format can hold (one image path per item, no video) to `path`,
    leaving out, with a WARNING, the others (mined.parquet has them). Not a skip policy: the records are good, the
    format is narrow, and a user of the released format expects the file; only when it would hold none is it not
    written. Returns {"json": "written" | "not written: WHY", "json_records": N, "json_left_out": K, and when K:
    "json_left_out_summary": the first few left out and why}."""
    from unime.data.atomic import atomic_path
    from unime.data.io import write_records
    from unime.data.skips import SkipReport

    left_out = SkipReport()
    with atomic_path(path) as tmp:  # `path` appears only when it holds a record
        n = write_records(mined, tmp, format="unime_v2_json", on_error="skip", skips=left_out)
        if not n:  # an empty list is no training set
            tmp.unlink()
    notes: dict[str, Any] = {"json": "written", "json_records": n, "json_left_out": left_out.total}
    if not left_out.total:
        return notes
    notes["json_left_out_summary"] = left_out.summary("record(s) the UniME-V2 JSON format cannot hold")
    if not n:
        why = f"none of the {len(mined)} mined records fits the UniME-V2 JSON format"
        notes["json"] = f"not written: {why}"
        log.warning("mined.json not written (mined.parquet has every record): %s\n%s", why,
                    notes["json_left_out_summary"], extra=_DETAILS)
    else:
        log.warning("mined.json holds %d of the %d mined records (mined.parquet has every record): %s", n,
                    len(mined), notes["json_left_out_summary"], extra=_DETAILS)
    return notes


def write_outputs(out: Path, mined: list[Record], audit_rows: AuditRows | list[dict[str, Any]],
                  times: dict[str, float]) -> dict[str, Any]:
    """`mined.json` (the records the released format can hold) and `audit.parquet`; not `mined.parquet`, written last
    of a run (`write_mined_parquet`). Returns the notes on mined.json that stats.json and the report carry
    (`write_mined_json`)."""
    import pyarrow as pa

    t0 = time.perf_counter()
    notes = write_mined_json(out / "mined.json", mined)
    schema = pa.schema([("query_index", pa.int64()), ("record_id", pa.string()), ("dataset", pa.string()),
                        ("rank", pa.int32()), ("pool_index", pa.int64()), ("candidate_text", pa.string()),
                        ("candidate_image", pa.string()), ("similarity", pa.float32()),
                        ("positive_similarity", pa.float32()), ("judge_score", pa.float64()),
                        ("positive_score", pa.float64()), ("false_negative", pa.bool_()),
                        ("times_sampled", pa.int32()), ("status", pa.string())]
                       + ([("relevance", pa.float64()), ("positive_relevance", pa.float64())]
                          if audit_rows and "relevance" in audit_rows[0] else []))
    table = audit_rows.arrow_table(schema) if isinstance(audit_rows, AuditRows) \
        else pa.Table.from_pylist(audit_rows, schema=schema)
    write_parquet(table, out / "audit.parquet")
    times["write"] = time.perf_counter() - t0
    return notes


@contextlib.contextmanager
def staged_mined_parquet(out: Path, mined: list[Record], times: dict[str, float]):
    """`mined.parquet` (every record), the last file of a run to appear, after stats.json, report.md and the
    manifest's record of the finished run (written in the block): a run killed before leaves no mined.parquet, so a
    reader that checks only that file (the demo's mine stage, a trainer) never takes an unfinished folder for a
    finished one. It is written first, to a temporary sibling (a killed run's is removed by the next run's claim of
    the folder), so that its time is in stats.json's (``times["write_mined_parquet"]``), and moved into place when
    the block succeeds."""
    from unime.data.atomic import atomic_path
    from unime.data.io import write_records

    with atomic_path(out / "mined.parquet") as staged:
        t0 = time.perf_counter()
        write_records(mined, staged, format="parquet")
        times["write_mined_parquet"] = time.perf_counter() - t0
        yield


def write_mined_parquet(out: Path, mined: list[Record]) -> None:
    """`mined.parquet` alone (`staged_mined_parquet`, nothing else written before it appears)."""
    with staged_mined_parquet(out, mined, {}):
        pass
