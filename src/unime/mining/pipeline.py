"""`unime mine`: judge-guided hard-negative mining, UniME-V2 stages A–C (SPEC §1.2–1.4), resumable.

    result = run_mining(MineConfig(records="train.jsonl", embedder="emb/", judge="judge/", out="mined/"))

Stages and files (all under `out/`, each written atomically):

    manifest.json             config, its hash, input fingerprints, per-stage hashes and times
    retrieval.parquet         stage A: per query its top-K candidates (pool ids, similarities), sim(q, c_t)
    judge/shard-NNNNN.parquet stage B: per query the judge score of its positive and of each candidate
    mined.json                stage C: the mined set, UniME-V2 released JSON (SPEC 1.4): the records it can hold
                              (a record with a video is left out, counted in stats.json and report.md)
    mined.parquet             every mined record, unime Parquet (holds what the JSON cannot: video, inline images…)
    audit.parquet             per query and candidate: rank, similarity, judge score, filtered?, sampled?
    stats.json, report.md, plots/*.png   counts, timings, plots (`unime.mining.report`)
    audit.json                with `audit=True` and a demo world: the judge against ground truth

Resumption (`unime.mining.manifest`): each stage records a hash of everything its output depends on; on
a re-run a stage whose hash matches is loaded, not recomputed, and the judge stage resumes shard by shard
(`unime.mining.stages`). Stage C and the report are cheap and always recomputed: changing β, the interval,
the count, the sampling strategy or the fallback policy re-uses the retrieval and the judge scores (the range
and margins are the retrieval's: they redo it and the judge). A run that is not finished
removes the earlier run's stage C and report files as it starts (`discard_final_outputs`), so that an
interrupted run leaves no mined set or statistics of other inputs that look complete; mined.parquet appears last
(after stats.json, report.md and the manifest's record of the finished run): a folder holding it is finished. It is
written to a temporary file before them, so that stats.json's stage times hold its writing time
(`staged_mined_parquet`).

Judge work: per query one group = its positive + its K candidates, sharing the query prefix
(`JudgeScorer.score_candidates`); identical queries inside a shard are merged into one group.
Determinism: the fallback draw (and `--sampling-strategy random`) of query i uses
`np.random.default_rng((seed, i))`, and the judge
encodes each candidate image on its own (cached by image), so on the same machine and thread settings a
resumed run writes byte-identical outputs to an uninterrupted one (a test kills a run to check it).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from unime.mining.backends import JudgeBackend, JudgeSpec, make_backend
from unime.mining.config import MineConfig
from unime.mining.inputs import MiningInputs, load_inputs
from unime.mining.manifest import Manifest, judge_hash, retrieval_hash, run_hash
from unime.mining.ranks import Ranks
from unime.mining.stages import (discard_final_outputs, is_number, run_judge, run_retrieval, run_sampling,
                                 staged_mined_parquet, write_outputs)
from unime.outdir import claim

log = logging.getLogger(__name__)


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

    def __init__(self, config: MineConfig, *, backend: JudgeBackend | None = None, embedder=None,
                 ranks: Ranks = Ranks()):
        self.config = config
        self.ranks = ranks
        self.out = Path(config.out)
        if ranks.primary:  # the others read what rank 0 writes
            self.out.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(self.out / "manifest.json")
        self._backend = backend
        self._embedder = embedder
        self._loaded: set[str] = set()  # the models this process loaded ("embedder", "judge": `rekey_loaded`)
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
            from unime.models.loading import loading_as

            c = self.config
            with loading_as("--embedder"):
                self._embedder = Embedder.from_pretrained(
                    c.embedder, device=self.ranks.device(c.device),  # its GPU
                    dtype=c.dtype, data_root=c.resolved_data_root, allow_outside_root=c.allow_outside_root,
                    batch_size=c.embed_batch_size, image_budget=c.image_budget, item_format=c.item_format,
                    video_sampling=c.video_sampling, attn_implementation=c.attn_implementation)
            self._loaded.add("embedder")
            if "embedder" in self.data.not_on_disk:  # loaded: the embedding cache keyed by the files it loaded
                from unime.models.embedding_cache import model_fingerprinter

                self.data.embedder_fingerprint = model_fingerprinter(c.embedder, keyed=None)  # (said before)
        return self._embedder

    def rekey_loaded(self, name: str, stage: str, stage_hash: str) -> str:
        """After `stage` ("retrieval", "judge") ran: the hub model `name` ("embedder", "judge") it loaded, when it was
        not on this machine as the run began (`MiningInputs.not_on_disk`: fingerprinted by its id, or taken as the
        earlier run recorded it) and is in the local Hugging Face cache now (its load fetched it), is keyed by the
        files of that snapshot: the run's inputs and identity, and the stage's record (`stage_hash`, the hash it
        was recorded under) — so a re-run finds them, and a revision fetched later is another model, not one by the
        same id. Returns the stage's hash now."""
        from unime.mining.manifest import MANIFEST_INPUTS, hub_models_not_on_disk, judge_fingerprint
        from unime.models.embedding_cache import model_fingerprint

        model = getattr(self.config, name)
        if name not in self._loaded or name not in self.data.not_on_disk:
            return stage_hash
        if hub_models_not_on_disk(self.config, (name,)):  # not fetched to the local cache (a remote judge)
            return stage_hash
        self.data.not_on_disk = [n for n in self.data.not_on_disk if n != name]
        fingerprint = (judge_fingerprint if name == "judge" else model_fingerprint)(model, keyed=MANIFEST_INPUTS)
        if fingerprint == self.inputs[name]["fingerprint"]:
            return stage_hash
        log.info("%s: --%s %s keyed by the snapshot its load put in the Hugging Face cache (fingerprint %s, was %s)",
                 self.out, name, model, fingerprint, self.inputs[name]["fingerprint"])
        self.inputs = self.data.fingerprints = {**self.inputs, name: {**self.inputs[name], "fingerprint": fingerprint}}
        self.config_hash = run_hash(self.config, self.inputs)
        new = self.retrieval_hash() if stage == "retrieval" else judge_hash(self.config, self.inputs,
                                                                            self.retrieval_hash())
        if self.ranks.primary:  # its record (the others read it)
            data = self.manifest.data
            data["inputs"], data["config_hash"] = self.inputs, self.config_hash
            if isinstance(data["stages"].get(stage), dict) and data["stages"][stage].get("hash") == stage_hash:
                data["stages"][stage]["hash"] = new
            self.manifest.save()
        return new

    def release_embedder(self) -> None:
        """Drop the embedder once the retrieval's vectors are computed, in every process: no later stage uses it
        (the judge, the audit and the health check use the retrieval's result, not the model), so the judge gets
        its memory."""
        if self._embedder is not None:
            from unime.models.loading import free_dropped_models

            self._embedder = None
            free_dropped_models()

    def judge_spec(self) -> JudgeSpec:
        spec = self.config.judge_spec(self.config.judge, self.config.resolved_data_root)
        return replace(spec, device=self.ranks.device(spec.device))  # one GPU per process under torchrun

    def backend(self) -> JudgeBackend:
        if self._backend is None:
            opts = dict(self.config.backend_options)
            if self.config.backend == "local":
                opts.setdefault("show_progress", self.config.show_progress)
            self._backend = make_backend(self.config.backend, self.judge_spec(), **opts)
            self._loaded.add("judge")
        return self._backend

    def run(self) -> MineResult | None:
        """The run (see the module doc); None on a process other than rank 0 under torchrun (`unime.mining.ranks`:
        rank 0 reads the inputs and writes the manifest first; every rank encodes its share of the retrieval's items,
        rank 0 retrieves, every rank scores its judge shards)."""
        from unime.mining import report

        c, ranks = self.config, self.ranks
        t_start = time.perf_counter()

        def open_run():
            self.load_inputs()
            done = self.manifest.open_run(c, self.inputs, self.config_hash)
            if not done:  # nothing an interrupted run leaves may pass for its outputs
                discard_final_outputs(self.out)
            return done

        if ranks.share(ranks.primary_step(open_run)):
            if not ranks.primary:
                return None
            stats = json.loads((self.out / "stats.json").read_text(encoding="utf-8"))
            log.info("%s: this run finished earlier (same options and inputs); nothing to do", self.out)
            return MineResult(out=self.out, n_records=stats["records"], n_mined=stats["mined"], stats=stats,
                              finished_before=True)
        if not ranks.primary:  # rank 0's inputs (image digests cached) and manifest, read from disk
            self.load_inputs()
            self.manifest = Manifest(self.out / "manifest.json")
        r_hash = self.retrieval_hash()
        retrieval = run_retrieval(c, self.data, self.manifest, r_hash, self.embedder, self.times, ranks)
        r_hash = self.rekey_loaded("embedder", "retrieval", r_hash)
        self.release_embedder()
        j_hash = judge_hash(c, self.inputs, r_hash)
        judged = run_judge(c, self.data, self.manifest, j_hash, retrieval, self.backend, self.times, ranks)
        self.rekey_loaded("judge", "judge", j_hash)
        if judged is None:  # another rank: its shards are written
            if self._backend is not None:
                self._backend.close()
            return None
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
        with staged_mined_parquet(self.out, mined, self.times):  # in place last: a killed run leaves none
            self.times["total"] = time.perf_counter() - t_start
            stats = self._stats(mined, audit_rows, sstats, judged, backend_stats, notes)
            report.write_report(self.out, stats, audit_rows, audit)
            self.manifest.finish(self.config_hash, len(mined))
        return MineResult(out=self.out, n_records=len(self.records), n_mined=len(mined), stats=stats)

    def _stats(self, mined, audit_rows, sstats, judged, backend_stats, notes) -> dict[str, Any]:
        """stats.json's content (its `label_health` warnings logged)."""
        from unime.mining.health import label_health

        c = self.config
        stats = {
            "records": len(self.records), "mined": len(mined), "pool_size": len(self.pool),
            "skipped_records": {"total": self.skips.total,
                                "by_reason": {k: int(v) for k, v in self.skips.counts.items()},
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
        return stats


def run_mining(config: MineConfig, *, backend: JudgeBackend | None = None, embedder=None) -> MineResult | None:
    """Run (or resume) the mining pipeline described in the module doc, in an output folder it owns and
    holds locked (`unime.outdir`: a folder with files mining did not write is refused). Under torchrun every
    process calls it (`unime.mining.ranks`): rank 0 owns the folder and returns the result, the others None."""
    ranks = Ranks.from_env()
    ranks.check_backend(config.backend)
    ranks.device(config.device)  # a --device the processes cannot share is refused before any work
    joined = ranks.start()
    try:
        owner = ranks.primary_step(lambda: claim(config.out, "mine",
                                                 {k: v for k, v in asdict(config).items() if k != "show_progress"},
                                                 overwrite=config.overwrite))
        with owner or nullcontext():
            result = MiningRun(config, backend=backend, embedder=embedder, ranks=ranks).run()
    except BaseException:
        if joined:  # a failed run leaves at once (the others learnt of the failure at their step, or are gone)
            ranks.stop(together=False)
        raise
    if joined:  # a process group this call made: left by all processes together, so that each ends clean
        ranks.stop()
    return result
