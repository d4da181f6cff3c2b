"""`unime mine` on a hub id --embedder / --judge. Offline (HF_HUB_OFFLINE), one not in the local Hugging Face cache
is refused in one line naming its option, after the records are read and checked (a bad record is still named
first) and before any encoding: nothing is written. A model not on disk is said once to key the run's records by its
name, not once per key."""

from __future__ import annotations

import json
import logging

import pytest

from tests.mining.helpers import write_dataset
from unime.cli import main

NOT_CACHED = ("neither a local folder nor in the local Hugging Face cache, which is all that is read while "
              "HF_HUB_OFFLINE is set: pass a local model folder, or fetch it (`hf download {id}` on a machine with "
              "network, then copy its cache or folder here)")


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE set, and a local Hugging Face cache in tmp_path that holds one hub id, `someorg/cached` (its
    config.json)."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    repo = cache / "models--someorg--cached"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_offline_a_hub_id_or_an_adapters_base_not_in_the_cache_is_refused_naming_its_option(offline_cache, tmp_path,
                                                                                           monkeypatch):
    import huggingface_hub.constants as constants

    from unime.errors import ModelError
    from unime.models.loading import refuse_uncached_hub_model_offline as refuse

    refuse("someorg/cached", "--judge")  # in the cache: what an offline load reads
    refuse(str(tmp_path), "--judge")  # a local folder: not a hub id
    with pytest.raises(ModelError) as caught:
        refuse("someorg/missing", "--judge")
    assert str(caught.value) == "--judge 'someorg/missing': " + NOT_CACHED.format(id="someorg/missing")
    adapter = tmp_path / "adapter"  # a local adapter: its base is loaded too
    adapter.mkdir()
    for base in ("someorg/cached", str(tmp_path)):
        (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
        refuse(str(adapter), "--embedder")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "someorg/base"}))
    with pytest.raises(ModelError) as caught:
        refuse(str(adapter), "--embedder")
    assert str(caught.value) == f"--embedder {str(adapter)!r}: its base model 'someorg/base' is " + \
        NOT_CACHED.format(id="someorg/base")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    refuse("someorg/missing", "--judge")  # online: the hub is asked at the load (`refuse_unreachable_hub_model`)
    refuse(str(adapter), "--embedder")


@pytest.mark.parametrize("option", ["--embedder", "--judge"])
def test_mine_refuses_a_hub_id_not_in_the_cache_offline_after_the_records_and_before_any_encoding(
        offline_cache, tiny_model_dir, tmp_path, capsys, option):
    """QA: offline, `unime mine --judge ORG/NAME` of a hub id not in the local cache encoded the whole retrieval and
    wrote --out (manifest, embedding cache, retrieval.parquet) before the judge's load failed; --embedder ORG/NAME
    wrote --out's manifest before its load failed. Now one line naming the option, and --out not made. A bad record
    is still the error named (the records are read and checked first)."""
    records = write_dataset(tmp_path / "data")
    model = tiny_model_dir("qwen2_vl")
    models = {"--embedder": model, "--judge": model, option: "someorg/missing"}
    argv = ["mine", "--records", str(records), *[x for kv in models.items() for x in kv], "--device", "cpu"]
    out = tmp_path / "mined"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [x for x in err.splitlines() if x.startswith("unime: error:")] == [
        f"unime: error: {option} 'someorg/missing': " + NOT_CACHED.format(id="someorg/missing")]
    assert not out.exists()
    lines = records.read_text().splitlines()
    lines[2] = json.dumps({**json.loads(lines[2]), "query": {"text": ""}})
    records.write_text("\n".join(lines) + "\n")
    assert main([*argv, "--out", str(out)]) == 2
    error = [x for x in capsys.readouterr().err.splitlines() if x.startswith("unime: error:")]
    assert len(error) == 1 and error[0].startswith(f"unime: error: {records}, record line 3"), error
    assert not out.exists()


def test_mine_checks_the_judge_it_loads_here_not_ray_nor_the_oracles(offline_cache, tiny_model_dir, tmp_path):
    """--backend ray's judge loads on the cluster's nodes, from their caches; the oracle's --judge is a world or a
    labels file: neither is looked up here."""
    from unime.errors import ModelError
    from unime.mining.config import MineConfig
    from unime.mining.inputs import load_inputs

    records = write_dataset(tmp_path / "data")
    config = dict(records=str(records), embedder=tiny_model_dir("qwen2_vl"), judge="someorg/missing", device="cpu")
    with pytest.raises(ModelError, match="^--judge 'someorg/missing': neither a local folder"):
        load_inputs(MineConfig(**config, out=str(tmp_path / "local")), tmp_path / "local")
    assert not (tmp_path / "local").exists()
    assert len(load_inputs(MineConfig(**config, out=str(tmp_path / "ray"), backend="ray"), tmp_path / "ray").records)
    labels = tmp_path / "labels.jsonl"
    labels.write_text("")
    config["judge"] = str(labels)
    assert len(load_inputs(MineConfig(**config, out=str(tmp_path / "o"), backend="oracle"), tmp_path / "o").records)


def test_mine_says_once_per_model_that_one_not_on_disk_keys_its_records_by_its_name(tiny_model_dir, tmp_path,
                                                                                    monkeypatch, caplog):
    """QA: `unime mine --embedder <hub id>` logged `model_fingerprint`'s warning (the model keyed by its name only)
    twice: for the manifest's record of the run, before the model loads, and again for the embedding cache's key.
    Once now for each model, naming what it keys, with the keys of before (the manifest's fingerprint is
    `model_fingerprint`'s). (The tiny model is taken as not on disk: `_local_model_dir` answers None, as for a hub
    id.)"""
    from unime.models import embedding_cache
    from unime.models.embedding_cache import model_fingerprint

    records = write_dataset(tmp_path / "data")
    model = tiny_model_dir("qwen2_vl")
    monkeypatch.setattr(embedding_cache, "_local_model_dir", lambda path: None)
    out = tmp_path / "mined"
    with caplog.at_level(logging.WARNING, logger="unime.models.embedding_cache"):
        assert main(["mine", "--records", str(records), "--embedder", model, "--judge", model, "--out", str(out),
                     "--k", "2", "--count", "1", "--device", "cpu"]) == 0
    said = f"model {model} is not a local folder; unime mine's record of its finished stages"
    assert [r.getMessage() for r in caplog.records if r.name == "unime.models.embedding_cache"] == [
        f"{said} and its embedding cache is keyed by its name only", f"{said} is keyed by its name only"]
    inputs = json.loads((out / "manifest.json").read_text())["inputs"]
    assert inputs["embedder"]["fingerprint"] == inputs["judge"]["fingerprint"] == model_fingerprint(model) != \
        model_fingerprint(model + "x")


def test_judge_says_once_per_run_that_a_judge_not_on_disk_keys_its_chunks_by_its_name(tiny_model_dir, tmp_path,
                                                                                      monkeypatch, caplog):
    """QA: `unime judge --judge <hub id>` logged `model_fingerprint`'s warning (the judge keyed by its name only) for
    its finished run's key and again for its chunks' (and again each time a resume re-made the key). Once a run now;
    the keys are those of before: a re-run finds the run finished. (The tiny model is taken as not on disk, as a hub
    id: `_local_model_dir` answers None.)"""
    from unime.mining import pairs as pairs_mod
    from unime.models import embedding_cache

    model = tiny_model_dir("qwen2_vl")
    monkeypatch.setattr(embedding_cache, "_local_model_dir", lambda path: None)
    monkeypatch.setattr(pairs_mod, "PAIRS_PER_CHUNK", 3)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"p{i}", "query": {"text": f"query {i % 3}"},
                                         "candidate": {"text": f"candidate {i}"}}) + "\n" for i in range(10)))
    out = tmp_path / "scores.jsonl"
    argv = ["judge", "--pairs", str(pairs), "--judge", model, "--out", str(out), "--device", "cpu"]
    said = [f"model {model} is not a local folder; unime judge's record of its finished run and chunks is keyed by "
            "its name only"]
    for again in (False, True):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="unime"):
            assert main(argv) == 0
        assert [r.getMessage() for r in caplog.records if r.name == "unime.models.embedding_cache"] == said
        assert ("this judge run finished earlier" in caplog.text) == again
    assert len(out.read_text().splitlines()) == 10


def test_a_finished_mine_rerun_offline_after_its_hub_models_left_the_cache_needs_only_what_is_left_to_do(
        tiny_model_dir, tmp_path, monkeypatch, capsys, caplog):
    """QA: a finished `unime mine --embedder ORG/EMB --judge ORG/JUDGE` run again offline, after the models left the
    local Hugging Face cache, was refused for --embedder, though nothing left to do loads a model. It is finished
    now (the models not on this machine are taken as the ones its earlier run recorded under the same ids); a stage
    left to do needs its model only: the judge's shards, the judge; the retrieval, the embedder."""
    import shutil
    from pathlib import Path

    from tests.models.helpers import in_a_hub_cache

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    records = write_dataset(tmp_path / "data")
    model, cache = Path(tiny_model_dir("qwen2_vl")), tmp_path / "hub"
    for repo in ("someorg/emb", "someorg/judge"):
        in_a_hub_cache(model, cache, repo, monkeypatch)
    out = tmp_path / "mined"
    argv = ["mine", "--records", str(records), "--embedder", "someorg/emb", "--judge", "someorg/judge", "--out",
            str(out), "--k", "2", "--count", "1", "--shard-size", "4", "--device", "cpu"]
    assert main(argv) == 0
    mined = (out / "mined.parquet").read_bytes()
    for repo in ("emb", "judge"):
        shutil.rmtree(cache / f"models--someorg--{repo}")
    capsys.readouterr()
    assert main(argv) == 0
    assert "finished earlier with the same options and inputs; nothing to do" in capsys.readouterr().out
    assert (out / "mined.parquet").read_bytes() == mined

    def refused(option, repo):
        manifest = (out / "manifest.json").read_bytes()
        assert main(argv) == 2
        assert [x for x in capsys.readouterr().err.splitlines() if x.startswith("unime: error:")] == [
            f"unime: error: {option} {repo!r}: " + NOT_CACHED.format(id=repo)]
        assert (out / "manifest.json").read_bytes() == manifest  # nothing written

    (out / "mined.parquet").unlink()
    (out / "judge" / "shard-00001.parquet").unlink()  # the judge has a shard to score: it needs the judge only
    refused("--judge", "someorg/judge")
    in_a_hub_cache(model, cache, "someorg/judge", monkeypatch)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="unime"):
        assert main(argv) == 0
    assert f"retrieval: reusing {out / 'retrieval.parquet'}" in caplog.text and (out / "mined.parquet").is_file()
    (out / "mined.parquet").unlink()
    (out / "retrieval.parquet").unlink()  # the retrieval to do again: it needs the embedder
    refused("--embedder", "someorg/emb")


def test_mine_keys_hub_models_fetched_by_their_loads_by_those_snapshots_not_their_ids(tiny_model_dir, tmp_path,
                                                                                      monkeypatch, capsys):
    """QA: the first online `unime mine --embedder ORG/EMB --judge ORG/JUDGE` of hub ids not in the local cache keyed
    the embedding cache and the run's record by the ids alone (a model is fetched only by its load): a re-run, the
    models cached now, found its inputs changed and did it all again, and a later revision fetched under the same id
    was served the first one's vectors from the embedding cache. The run keys each by the snapshot its load fetched:
    the re-run is finished, and another revision encodes every item anew. (Online simulated: the hub answers every
    probe, and a load "fetches" a revision into the local cache before it reads the tiny model.)"""
    import shutil
    from pathlib import Path

    import huggingface_hub.constants as constants

    from tests.models.helpers import in_a_hub_cache
    from unime.models import loading
    from unime.models.embedder import Embedder
    from unime.models.embedding_cache import model_fingerprint
    from unime.models.judge import JudgeScorer

    records = write_dataset(tmp_path / "data")
    model, cache = Path(tiny_model_dir("qwen2_vl")), tmp_path / "hub"
    revision_b = tmp_path / "revision-b"  # the same model, one small file more: another fingerprint
    shutil.copytree(model, revision_b)
    (revision_b / "README.md").write_text("revision b")
    fetched = [model]

    def fetching(real):
        def from_pretrained(cls, path, **kwargs):
            in_a_hub_cache(fetched[0], cache, path, monkeypatch)
            return real(cls, str(fetched[0]), **kwargs)
        return classmethod(from_pretrained)

    def online():
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    for loads in (Embedder, JudgeScorer):
        monkeypatch.setattr(loads, "from_pretrained", fetching(loads.from_pretrained.__func__))
    monkeypatch.setattr(loading, "_probe_hub", lambda model, filename="config.json": loading.HubProbe("reachable"))
    monkeypatch.setattr(loading, "_HUB_PROBES", {})

    def mine(out):
        assert main(["mine", "--records", str(records), "--embedder", "someorg/emb", "--judge", "someorg/judge",
                     "--out", str(out), "--cache-dir", str(tmp_path / "embeddings"), "--k", "2", "--count", "1",
                     "--device", "cpu"]) == 0
        return json.loads((out / "manifest.json").read_text())

    online()
    first = mine(tmp_path / "a")
    for option, repo in (("embedder", "someorg/emb"), ("judge", "someorg/judge")):  # the snapshots fetched, not ids
        assert first["inputs"][option]["fingerprint"] == model_fingerprint(repo) != model_fingerprint("someorg/other")
    capsys.readouterr()
    mine(tmp_path / "a")
    assert "finished earlier with the same options and inputs; nothing to do" in capsys.readouterr().out

    for name in ("emb", "judge"):  # the cache cleared; the hub has other revisions now
        shutil.rmtree(cache / f"models--someorg--{name}")
    fetched[0] = revision_b
    online()
    second = mine(tmp_path / "b")
    assert second["inputs"]["embedder"]["fingerprint"] == model_fingerprint("someorg/emb") != \
        first["inputs"]["embedder"]["fingerprint"]
    encoded = first["stages"]["retrieval"]["encoded_items"]
    assert encoded == 16 and second["stages"]["retrieval"]["encoded_items"] == encoded  # none of the first's vectors
