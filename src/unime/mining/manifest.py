"""The mining run's identity and its record on disk, `out/manifest.json`.

Hashes use `unime.outdir.options_hash`: the whole run (`run_hash`: the options that change what is
mined, and the input fingerprints) and each resumable stage (`retrieval_hash`, `judge_hash`: only what
that stage's output depends on, so changing β or the count re-uses the retrieval and the judge scores).
Checkpoints are fingerprinted with `unime.models.embedding_cache.model_fingerprint`, the embedding
cache's key; a labels file (the oracle judge's ground truth) by its content. The hashes read the checkpoints
by their fingerprints and the options' paths by what they name (`unime.errors.same_path_value`): how a path
is spelled (`base`, `./base/`, `/abs/base`) changes nothing, nor how `--dtype` is (`bfloat16` = `bf16`: the hashes
read `canonical_dtype`). Stage records keyed the earlier ways (the checkpoints' path strings in the hash:
`legacy=True`; the dtype as typed: `typed_dtype`) are re-keyed when a run continues (`Manifest.open_run`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from unime.data.atomic import atomic_open
from unime.data.image_digests import file_sha1
from unime.data.video import sampling_video_options
from unime.errors import changed_option_keys, refuse_changed_options, same_path_value, with_working_dir
from unime.models.embedding_cache import model_fingerprint
from unime.models.loading import DTYPE_ALIASES, canonical_dtype
from unime.options import none_meanings, option_aliases, option_defaults
from unime.outdir import options_hash

if TYPE_CHECKING:
    from unime.mining.config import MineConfig

log = logging.getLogger(__name__)

PIPELINE_VERSION = 1
# what the checkpoints' fingerprints key here: named when a model not on disk is keyed by its name only
MANIFEST_INPUTS = "unime mine's record of its finished stages"
# what the embedder's fingerprint keys: the manifest's record and the retrieval's embedding cache (`load_inputs`)
EMBEDDER_KEYS = f"{MANIFEST_INPUTS} and its embedding cache"

# MineConfig fields that do not change what is mined (left out of the run's identity): where the output
# goes, how the work is spread and batched, progress bars, the attention kernel the models run (a choice of the
# machine: a run started with flash-attention continues with sdpa on another)
FREE_OPTIONS = ("out", "show_progress", "backend", "backend_options", "cache_dir", "judge_chunk_size",
                "judge_image_cache", "judge_image_cache_mib", "embed_batch_size", "overwrite", "attn_implementation")


def input_fingerprints(c: MineConfig, *, n_records: int, skipped: int, pool_size: int, images_sha1: str,
                       embedder: Callable[[dict | None], str] | None = None,
                       taken: dict[str, str] | None = None) -> dict[str, Any]:
    """What the run reads, by content: records and pool files, both checkpoints, the data root, the bytes
    of every image (`images_sha1`, from `unime.data.image_digests`). `embedder`: the embedder's
    `model_fingerprinter`, when the caller has it (default: its `model_fingerprint`). `taken`: the fingerprints of
    checkpoints not on this machine taken as the folder's earlier run recorded them (`recorded_models`)."""
    taken = taken or {}
    embedder_fingerprint = taken.get("embedder") or (
        embedder(None) if embedder else model_fingerprint(c.embedder, keyed=MANIFEST_INPUTS))
    judge = taken.get("judge") or judge_fingerprint(c.judge, keyed=MANIFEST_INPUTS)
    inputs = {
        "records": {"path": str(Path(c.records).resolve()), "sha1": file_sha1(c.records), "n": n_records,
                    "skipped": skipped},
        "pool": {"path": str(Path(c.pool).resolve()), "sha1": file_sha1(c.pool)} if c.pool else "positives",
        "pool_size": pool_size,
        "embedder": {"path": c.embedder, "fingerprint": embedder_fingerprint},
        "judge": {"path": c.judge, "fingerprint": judge},
        "data_root": str(Path(c.resolved_data_root).resolve()),
        "images": {"sha1": images_sha1},
    }
    if c.backend == "oracle":  # ground truth, not a model's scores: shards are never shared with a model's
        inputs["judge"]["scores"] = "world ground truth"
    return inputs


def hub_models_not_on_disk(c: MineConfig, names: tuple[str, ...] = ("embedder", "judge")) -> list[str]:
    """Which of --embedder and --judge (`names`: "embedder", "judge") are hub ids this machine does not hold (neither
    a local folder nor in the local Hugging Face cache: `model_on_disk`), fingerprinted by their ids, not their
    files."""
    from unime.models.embedding_cache import model_on_disk
    from unime.models.loading import may_be_hub_id

    return [name for name in names if may_be_hub_id(getattr(c, name)) and not Path(getattr(c, name)).exists()
            and not model_on_disk(getattr(c, name))]


def recorded_models(c: MineConfig, manifest: Manifest, away: list[str]) -> dict[str, str]:
    """The fingerprints the earlier run of `manifest` recorded for --embedder and --judge ("embedder", "judge"), for
    those of them that are hub ids this machine does not hold now (`away`: `hub_models_not_on_disk`) and that it
    recorded under the same id: their files cannot be read here to tell them from the recorded ones, so they are
    taken as those — a finished run re-run offline after its hub model left the cache is still finished, a stage done
    is not redone; a stage that loads the model keys it by the files it loads (`MiningRun.rekey_loaded`). Each said
    once."""
    before, taken = manifest.data.get("inputs"), {}
    if not isinstance(before, dict):
        return taken
    for name in away:
        model, record = getattr(c, name), before.get(name)
        fingerprint = record.get("fingerprint") if isinstance(record, dict) and record.get("path") == model else None
        if not isinstance(fingerprint, str):
            continue
        taken[name] = fingerprint
        log.warning("--%s %r: neither a local folder nor in the local Hugging Face cache; taken as the model the "
                    "earlier run in %s recorded under that id (fingerprint %s)", name, model, manifest.path.parent,
                    fingerprint)
    return taken


def judge_fingerprint(judge: str, *, keyed: str = "its fingerprint") -> str:
    """The judge by its content: a checkpoint's `model_fingerprint` (`keyed`: what it keys, for its warning); a labels
    file (the oracle's ground truth) the SHA-1 of its bytes."""
    return file_sha1(judge) if os.path.isfile(judge) else model_fingerprint(judge, keyed=keyed)


def _hashed_inputs(inputs: dict[str, Any], legacy: bool = False) -> dict[str, Any]:
    """The inputs as the hashes read them: the checkpoints (embedder, judge) by their content, not their path
    strings; `legacy`: as unime read them before, paths included."""
    if legacy:
        return inputs
    return {**inputs, **{k: {f: v for f, v in inputs[k].items() if f != "path"}
                         for k in ("embedder", "judge") if isinstance(inputs.get(k), dict)}}


# options added after runs were recorded: in the run's identity only when set away from their defaults, so a
# run finished before them is still finished
LATER_OPTIONS = {"range_min": 0, "absolute_margin": 0.0, "relative_margin": 0.0, "sampling_strategy": "cyclical",
                 "item_format": None, "exclude_query_positives": False}
# --relative-margin R keeps sim(q,c) <= sim(q,pos) - |sim(q,pos)| * R (sentence-transformers') since its hashes carry
# this rule; runs recorded before used sim(q,pos) * (1 - R), which lies above a negative positive: not reused
RELATIVE_MARGIN_RULE = "pos-|pos|*R"


# the version of an index kind's search in the retrieval's and the run's hashes, for the kinds whose search changed
# what runs recorded (the others keep their hashes). hnsw 2: a deep search puts efSearch back (the recall recorded
# before was that of the widest search) and a query whose positive ranks deep is finished by an exact scan (other
# candidates than the deeper approximate searches): a run recorded before redoes its retrieval and judge shards
SEARCH_VERSIONS = {"hnsw": 2}


def _search_key(c: MineConfig) -> dict:
    """{"search": version} for an index kind in `SEARCH_VERSIONS`, else nothing (the earlier hashes)."""
    version = SEARCH_VERSIONS.get(c.index_config().kind)
    return {"search": version} if version else {}


def _hashed_later(key: str, value: Any) -> Any:
    """A `LATER_OPTIONS` value set away from its default as the hashes take it (the relative margin with its rule)."""
    return {"R": value, "rule": RELATIVE_MARGIN_RULE} if key == "relative_margin" else value


def _hashed_dtype(c: MineConfig, typed_dtype: str | None) -> Any:
    """--dtype as the hashes take it: the value it spells (`canonical_dtype`: bfloat16 and bf16 are one run);
    `typed_dtype`: the spelling an earlier unime hashed as typed (`_typed_dtypes`)."""
    return typed_dtype if typed_dtype is not None else canonical_dtype(c.dtype)


def _typed_dtypes(c: MineConfig) -> tuple[str | None, ...]:
    """None (the hashes now), then the other spellings of `c`'s dtype that an earlier unime, which hashed --dtype as
    typed, may have recorded for the same setting (bfloat16 for bf16: `DTYPE_ALIASES`)."""
    canonical = canonical_dtype(c.dtype)
    return (None, DTYPE_ALIASES[canonical]) if canonical in DTYPE_ALIASES else (None,)


def run_hash(c: MineConfig, inputs: dict[str, Any], *, legacy: bool = False, typed_dtype: str | None = None) -> str:
    """The run's identity: its options (but `FREE_OPTIONS`, and `LATER_OPTIONS` at their defaults; paths by what
    they name; the dtype by the value it spells, `_hashed_dtype`) and its inputs."""
    cfg = {**asdict(c), "dtype": _hashed_dtype(c, typed_dtype)}
    for key in FREE_OPTIONS:
        cfg.pop(key)
    for key, default in LATER_OPTIONS.items():
        if cfg[key] == default:
            cfg.pop(key)
        else:
            cfg[key] = _hashed_later(key, cfg[key])
    if not legacy:
        cfg = {k: same_path_value(v) for k, v in cfg.items()}
    return options_hash({"config": cfg, "inputs": _hashed_inputs(inputs, legacy), "version": PIPELINE_VERSION,
                         **_search_key(c)})


def _video_key(c: MineConfig) -> dict:
    """The video options in a stage hash, only when set away from their defaults (runs without them keep their
    earlier hashes; `--video-frames 8` is a run without it)."""
    given = sampling_video_options(c.video_options)
    return {"video": given} if given else {}


def _window_key(c: MineConfig) -> dict:
    """--range-min, the margins and --exclude-query-positives in the retrieval's hash, only when set away from their
    defaults (0, off: the δ rule alone; runs without them keep their earlier hashes)."""
    window = {k: _hashed_later(k, getattr(c, k))
              for k in ("range_min", "absolute_margin", "relative_margin", "exclude_query_positives")
              if getattr(c, k) != LATER_OPTIONS[k]}
    return {"window": window} if window else {}


def retrieval_hash(c: MineConfig, inputs: dict[str, Any], *, legacy: bool = False, search: bool = True,
                   typed_dtype: str | None = None) -> str:
    """Stage A's identity: records, pool, image bytes, embedder, K, the range, margins and grouping, the index and the
    version of its search (`SEARCH_VERSIONS`; `search=False`: as unime keyed it before), the data root, dtype, video."""
    return options_hash({"records": inputs["records"]["sha1"], "pool": inputs["pool"],
                         "images": inputs["images"]["sha1"],
                         "embedder": _hashed_inputs(inputs, legacy)["embedder"], "k": c.k, "index": c.index_key(),
                         "data_root": inputs["data_root"], "dtype": _hashed_dtype(c, typed_dtype),
                         "version": PIPELINE_VERSION,
                         **_video_key(c), **_window_key(c), **(_search_key(c) if search else {}),
                         **({"item_format": c.item_format} if c.item_format else {})})  # given: other vectors


def judge_hash(c: MineConfig, inputs: dict[str, Any], retrieval: str, *, legacy: bool = False,
               typed_dtype: str | None = None) -> str:
    """Stage B's identity: stage A's hash, the judge, the shard layout, dtype, video."""
    return options_hash({"retrieval": retrieval, "judge": _hashed_inputs(inputs, legacy)["judge"],
                         "shard_size": c.shard_size, "dtype": _hashed_dtype(c, typed_dtype),
                         "version": PIPELINE_VERSION, **_video_key(c)})


def judge_shard(out: Path, i: int) -> Path:
    """Judge shard `i` of the mining run in `out` (`unime.mining.stages.run_judge`)."""
    return out / "judge" / f"shard-{i:05d}.parquet"


class Manifest:
    """`manifest.json`: the options, their hash, the inputs, per-stage records (`stage` / `set_stage`) and,
    once the run ends, `finished`. Every change is written atomically at once."""

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

    def open_run(self, config: MineConfig, inputs: dict[str, Any], config_hash: str) -> bool:
        """The resume convention (as the trainers', `unime.models.run_state`) on a folder that holds an
        earlier run: True if that run finished with these options and inputs (nothing to do). Other
        options are refused with the differing keys unless `overwrite`; then, as when only the inputs
        changed (records, image bytes, models), the content-keyed stage hashes decide what is redone."""
        out = self.path.parent
        options = asdict(config)
        before = self.data.get("config")
        if before:
            # an option added by a later unime, at its default, is no change (the earlier behaviour)
            keys = changed_option_keys(before, options, free=FREE_OPTIONS, added_defaults=option_defaults(config),
                                       none_means=none_meanings(config), aliases=option_aliases(config))
            if keys and not config.overwrite:
                raise refuse_changed_options(out, before, options, keys, config)
            if keys:
                log.warning("%s: options changed (%s); --overwrite: redoing the stages that depend on them",
                            out, ", ".join(keys))
            recorded = _hashed_inputs(self.data.get("inputs") or {})
            changed = sorted(k for k in inputs if recorded.get(k) != _hashed_inputs(inputs)[k])
            if changed and not keys:
                log.warning("%s: inputs changed since the last run (%s): redoing the stages that depend on them",
                            out, ", ".join(changed))
        done = self._finished(config, inputs, config_hash)
        if not done:
            if self._searched_before(config):
                log.warning("%s: its retrieval was done by an earlier version of the %s search (before the exact scan "
                            "of the queries whose positive ranks deep): redoing the retrieval and the judge's shards",
                            out, config.index)
            self._rekey_legacy_stages(config)
            self.data.pop("finished", None)
            self.data["config"] = with_working_dir(options)
            self.data["config_hash"] = config_hash
            self.data["inputs"] = inputs
            self.save()
        return done

    def _finished(self, config: MineConfig, inputs: dict[str, Any], config_hash: str) -> bool:
        """Whether the folder holds the run of `config` on `inputs` finished (`open_run`'s answer)."""
        finished = self.data.get("finished") or {}
        # a run finished before the hashes left the checkpoints' paths out, or read the dtype as typed, is
        # recognised by its earlier hash
        hashes = {config_hash, *(run_hash(config, inputs, legacy=legacy, typed_dtype=typed)
                                 for legacy in (True, False) for typed in _typed_dtypes(config))}
        return (not config.overwrite and finished.get("config_hash") in hashes
                and all((self.path.parent / n).is_file() for n in ("stats.json", "mined.parquet", "report.md")))

    def models_to_load(self, config: MineConfig, inputs: dict[str, Any]) -> list[str]:
        """The checkpoints ("embedder", "judge") the run of `config` on `inputs` loads in this folder, told before it
        writes anything: none when the folder holds that run finished (`open_run`); the embedder unless the retrieval
        is recorded for these inputs (its hash, retrieval.parquet), the judge unless every judge shard is (its hash,
        the shard files). Reads only: stage records keyed an earlier way are re-keyed in a copy
        (`_rekey_legacy_stages`)."""
        if self._finished(config, inputs, run_hash(config, inputs)):
            return []
        earlier = Manifest(self.path)
        earlier.data = json.loads(json.dumps(self.data, default=str))
        earlier._rekey_legacy_stages(config)
        out, r_hash = self.path.parent, retrieval_hash(config, inputs)
        n_shards = -(-int(inputs["records"]["n"]) // config.shard_size)
        retrieved = (earlier.stage("retrieval").get("hash") == r_hash and (out / "retrieval.parquet").is_file())
        judged = (earlier.stage("judge").get("hash") == judge_hash(config, inputs, r_hash)
                  and all(judge_shard(out, i).is_file() for i in range(n_shards)))
        return [name for name, done in (("embedder", retrieved), ("judge", judged)) if not done]

    def _searched_before(self, config: MineConfig) -> bool:
        """Whether the recorded retrieval stage was keyed before its index kind's search changed (`SEARCH_VERSIONS`)."""
        recorded, stage = self.data.get("inputs"), self.data["stages"].get("retrieval")
        if not _search_key(config) or not isinstance(stage, dict):
            return False
        try:
            earlier = {retrieval_hash(config, recorded, legacy=legacy, search=False, typed_dtype=typed)
                       for legacy in (True, False) for typed in _typed_dtypes(config)}
        except (KeyError, TypeError, AttributeError):  # no inputs recorded, or of another shape
            return False
        return stage.get("hash") in earlier

    def _rekey_legacy_stages(self, config: MineConfig) -> None:
        """Stage records keyed an earlier way (`legacy=True`: the checkpoints' path strings hashed; `typed_dtype`:
        --dtype as typed, bfloat16 apart from bf16) for the recorded inputs get the hash of those same inputs now,
        so a folder mined before keeps its retrieval and judge shards when nothing they depend on changed."""
        recorded, stages = self.data.get("inputs"), self.data["stages"]
        try:
            new_r = retrieval_hash(config, recorded)
            new_j = judge_hash(config, recorded, new_r)
            earlier = []
            for legacy in (True, False):
                for typed in _typed_dtypes(config):
                    old_r = retrieval_hash(config, recorded, legacy=legacy, typed_dtype=typed)
                    earlier.append((old_r, judge_hash(config, recorded, old_r, legacy=legacy, typed_dtype=typed)))
        except (KeyError, TypeError, AttributeError):  # no inputs recorded, or of another shape: nothing to re-key
            return
        for i, (name, new) in enumerate((("retrieval", new_r), ("judge", new_j))):
            if isinstance(stages.get(name), dict) and stages[name].get("hash") in {old[i] for old in earlier}:
                stages[name]["hash"] = new

    def finish(self, config_hash: str, n_mined: int) -> None:
        self.data["finished"] = {"config_hash": config_hash, "mined": n_mined}
        self.save()
