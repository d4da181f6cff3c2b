"""`unime.mining.manifest`: the stage hashes existing run folders are keyed by, and the rerun check."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from unime.cli.failures import describe
from unime.errors import ChangedOptions
from unime.mining.manifest import Manifest, judge_hash, retrieval_hash, run_hash
from unime.mining.config import MineConfig

INPUTS = {"records": {"path": "/d/r.jsonl", "sha1": "aa", "n": 3, "skipped": 0}, "pool": "positives", "pool_size": 5,
          "embedder": {"path": "emb", "fingerprint": "fe"}, "judge": {"path": "judge", "fingerprint": "fj"},
          "data_root": "/d", "images": {"sha1": "ii"}}


def _config(**kw) -> MineConfig:
    return MineConfig(records="r.jsonl", embedder="emb", judge="judge", out="o", **kw)


LEGACY = ("c7ed1a8b49099257", "684600d0be959fe6")  # the defaults' stage hashes with the checkpoints' paths in them
NOW = ("7083a9990ba24ee8", "b92972e8b7ea9d07")  # ... and by their fingerprints only


def test_stage_hashes_are_the_ones_earlier_runs_recorded():
    """Values written by the pipeline before its manifest had a module of its own (its private `_hash`), and
    until the stage hashes left the checkpoints' path strings out (`legacy=True`): a folder mined then is
    re-keyed (`test_a_folder_mined_before_keeps_its_stages_whatever_the_paths_spelling`)."""
    r = retrieval_hash(_config(), INPUTS, legacy=True)
    assert (r, judge_hash(_config(), INPUTS, r, legacy=True)) == LEGACY
    c = _config(k=7, shard_size=3, video_frames=4, index="ivf", hnsw_m=12)  # hnsw's: redone since its search changed
    r = retrieval_hash(c, INPUTS, legacy=True)
    assert (r, judge_hash(c, INPUTS, r, legacy=True)) == ("d5b2142422ccaa51", "afd046f34e8d0b67")
    r = retrieval_hash(_config(), INPUTS)
    assert (r, judge_hash(_config(), INPUTS, r)) == NOW
    r = retrieval_hash(c, INPUTS)
    assert (r, judge_hash(c, INPUTS, r)) == ("bc6e40216f07546d", "0a0e8003b017a386")
    # what the later stages do not read leaves them alone; what they read changes them
    assert retrieval_hash(_config(beta=0.5, count=3), INPUTS) == retrieval_hash(_config(), INPUTS)
    assert run_hash(_config(beta=0.5), INPUTS) != run_hash(_config(), INPUTS)
    assert judge_hash(_config(), {**INPUTS, "judge": {"path": "judge", "fingerprint": "other"}}, r) != \
        judge_hash(_config(), INPUTS, r)


def test_open_run_refuses_other_options_and_knows_a_finished_run(tmp_path):
    m = Manifest(tmp_path / "manifest.json")
    h = run_hash(_config(), INPUTS)
    assert m.open_run(_config(), INPUTS, h) is False  # a new folder: everything to do
    saved = json.loads((tmp_path / "manifest.json").read_text())
    assert saved["config_hash"] == h and saved["inputs"] == INPUTS and "finished" not in saved
    m.finish(h, 2)
    assert Manifest(tmp_path / "manifest.json").open_run(_config(), INPUTS, h) is False  # outputs missing
    for name in ("stats.json", "mined.parquet", "report.md"):
        (tmp_path / name).write_text("x")
    m.finish(h, 2)
    assert Manifest(tmp_path / "manifest.json").open_run(_config(), INPUTS, h) is True
    with pytest.raises(ChangedOptions, match="beta"):
        Manifest(tmp_path / "manifest.json").open_run(_config(beta=0.5), INPUTS, run_hash(_config(beta=0.5), INPUTS))
    # with overwrite the run is redone (not finished) and the new options recorded
    other = _config(beta=0.5, overwrite=True)
    assert Manifest(tmp_path / "manifest.json").open_run(other, INPUTS, run_hash(other, INPUTS)) is False
    assert json.loads((tmp_path / "manifest.json").read_text())["config"]["beta"] == 0.5


def test_an_option_an_earlier_version_did_not_record_is_no_change_at_its_default(tmp_path):
    """A folder mined before an option existed continues when the option keeps its default; another value of it
    is a change like any other."""
    m = Manifest(tmp_path / "manifest.json")
    m.open_run(_config(), INPUTS, run_hash(_config(), INPUTS))
    saved = json.loads((tmp_path / "manifest.json").read_text())
    assert saved["config"]["hnsw_m"] == MineConfig.hnsw_m  # recorded now; an earlier version lacked it
    del saved["config"]["hnsw_m"]
    (tmp_path / "manifest.json").write_text(json.dumps(saved))
    assert Manifest(tmp_path / "manifest.json").open_run(_config(), INPUTS, run_hash(_config(), INPUTS)) is False
    (tmp_path / "manifest.json").write_text(json.dumps(saved))
    other = _config(hnsw_m=MineConfig.hnsw_m + 4)
    with pytest.raises(ChangedOptions, match=r"\(hnsw_m: "):
        Manifest(tmp_path / "manifest.json").open_run(other, INPUTS, run_hash(other, INPUTS))


def test_the_video_options_defaults_given_explicitly_are_no_change(tmp_path):
    """`--video-frames 8` (and the other video options at their defaults) is the run without them: the folder's run
    continues, and the stage hashes stay those of the run without them (no stage is redone)."""
    explicit = _config(video_frames=8, video_max_frames=64, video_max_pixels=32 * 448 * 448)
    m = Manifest(tmp_path / "manifest.json")
    m.open_run(_config(), INPUTS, run_hash(_config(), INPUTS))
    assert Manifest(tmp_path / "manifest.json").open_run(explicit, INPUTS, run_hash(explicit, INPUTS)) is False
    r = retrieval_hash(explicit, INPUTS)
    assert (r, judge_hash(explicit, INPUTS, r)) == NOW  # the defaults' (above)
    assert explicit.judge_spec("judge", None).video_sampling == ()
    # and the other way round: a run recorded with them explicit, continued without them
    Manifest(tmp_path / "manifest.json").open_run(_config(), INPUTS, run_hash(_config(), INPUTS))
    other = _config(video_frames=4)
    with pytest.raises(ChangedOptions, match=r"\(video_frames: None -> 4"):
        Manifest(tmp_path / "manifest.json").open_run(other, INPUTS, run_hash(other, INPUTS))


def test_range_margins_and_sampling_strategy_are_part_of_the_runs_identity(tmp_path):
    """--range-min, the margins and --exclude-query-positives change what is retrieved (the retrieval's hash, so its
    stage and the judge's are redone), --sampling-strategy only stage C (the run's hash); at their defaults every
    hash is the one a run recorded before they existed (the run hash of the defaults as the version without them
    computed it), and a folder continues; another value is refused by its flag like --k."""
    assert run_hash(_config(), INPUTS) == "edfa712eba82cbaa"
    explicit = _config(range_min=0, absolute_margin=0.0, relative_margin=0.0, sampling_strategy="cyclical",
                       exclude_query_positives=False)
    r = retrieval_hash(explicit, INPUTS)
    assert (r, judge_hash(explicit, INPUTS, r)) == NOW and run_hash(explicit, INPUTS) == "edfa712eba82cbaa"
    hashes = {retrieval_hash(_config(**kw), INPUTS) for kw in
              ({}, {"range_min": 1}, {"absolute_margin": 0.1}, {"relative_margin": 0.1}, {"k": 7},
               {"exclude_query_positives": True})}
    assert len(hashes) == 6
    top = _config(sampling_strategy="top")
    assert retrieval_hash(top, INPUTS) == NOW[0] and run_hash(top, INPUTS) != run_hash(_config(), INPUTS)
    Manifest(tmp_path / "manifest.json").open_run(_config(), INPUTS, run_hash(_config(), INPUTS))
    assert Manifest(tmp_path / "manifest.json").open_run(explicit, INPUTS, run_hash(explicit, INPUTS)) is False
    for kw, flag in (({"range_min": 2}, "--range-min"), ({"absolute_margin": 0.1}, "--absolute-margin"),
                     ({"sampling_strategy": "random"}, "--sampling-strategy"),
                     ({"exclude_query_positives": True}, "--exclude-query-positives")):
        with pytest.raises(ChangedOptions, match=rf"\({next(iter(kw))}: ") as refused:  # from Python: the field
            Manifest(tmp_path / "manifest.json").open_run(_config(**kw), INPUTS, run_hash(_config(**kw), INPUTS))
        assert describe(refused.value).startswith(f"{tmp_path} holds a run with other options ({flag}: ")  # CLI



def test_a_relative_margin_run_recorded_with_the_earlier_formula_is_not_reused():
    """--relative-margin R was sim(q,pos) * (1 - R), now sim(q,pos) - |sim(q,pos)| * R (sentence-transformers'),
    which keeps fewer candidates of a query whose positive scores below 0: the hashes a run with R recorded
    under the earlier formula (values that version computed) are not the ones now, so its retrieval, judge
    shards and finished state are redone; the other knobs keep theirs."""
    c = _config(relative_margin=0.1)
    r = retrieval_hash(c, INPUTS)
    earlier = ("b4642a0eddc3fe21", "df780644ff8e56fd", "47ad799fa5322f11", "8b19d81b6921c32c", "9c71bd60d4cfb6da")
    now = (r, judge_hash(c, INPUTS, r), run_hash(c, INPUTS), run_hash(c, INPUTS, legacy=True),
           retrieval_hash(c, INPUTS, legacy=True))
    assert not set(now) & set(earlier) and r != retrieval_hash(_config(relative_margin=0.2), INPUTS)
    a = _config(absolute_margin=0.1)
    r = retrieval_hash(a, INPUTS)
    assert (r, judge_hash(a, INPUTS, r), run_hash(a, INPUTS)) == ("2c4acd9607825f18", "f26b0d371350d9aa",
                                                                  "c13215f4bf75f024")


def test_an_hnsw_run_recorded_before_its_search_changed_redoes_its_retrieval_and_what_depends_on_it(tmp_path,
                                                                                                    caplog):
    """An hnsw index's search changed: a deep search no longer leaves efSearch widened (the recall recorded was that
    of the widest search), and a query whose positive ranks deep is finished by an exact scan (other candidates).
    The hashes an hnsw run recorded before (values that version computed) are not the ones now, so a folder mined
    then redoes its retrieval, the judge's shards and its finished state (not the embeddings: their cache has its
    own key); flat and ivf, whose candidates did not change, keep their hashes and a finished run stays finished."""
    c = _config(k=7, shard_size=3, video_frames=4, index="hnsw", hnsw_m=12)
    earlier = {"bd57880bf99bb8c5", "08b5a58a06f7a5e9", "b104d68c6bf5c2cc",  # legacy: retrieval, judge, run
               "f0e76f974633eb61", "55b5760eb403a1e0", "d70b56e0aa17998f"}  # by fingerprints: the same three
    now = set()
    for legacy in (True, False):
        r = retrieval_hash(c, INPUTS, legacy=legacy)
        now |= {r, judge_hash(c, INPUTS, r, legacy=legacy), run_hash(c, INPUTS, legacy=legacy)}
    assert len(now) == 6 and not now & earlier
    ivf = _config(k=7, shard_size=3, video_frames=4, index="ivf", hnsw_m=12)
    assert run_hash(ivf, INPUTS) == "329dd9612d15f0fe" and run_hash(_config(), INPUTS) == "edfa712eba82cbaa"
    # manifests as the earlier version wrote them for a finished run at the defaults, hnsw and flat
    for kind, (r_hash, j_hash, config_hash), finished in (
            ("hnsw", ("3743ee8a7417a2a9", "19409aacf55f951d", "a20d98432018e125"), False),
            ("flat", (*NOW, "edfa712eba82cbaa"), True)):
        path = tmp_path / kind / "manifest.json"
        path.parent.mkdir()
        cfg = _config(index=kind)
        stages = {"retrieval": {"hash": r_hash, "encoded_items": 5}, "judge": {"hash": j_hash, "n_shards": 1}}
        path.write_text(json.dumps({"version": 1, "config": asdict(cfg), "config_hash": config_hash,
                                    "inputs": INPUTS, "stages": stages,
                                    "finished": {"config_hash": config_hash, "mined": 3}}))
        for name in ("stats.json", "mined.parquet", "report.md"):
            (path.parent / name).write_text("x")
        m = Manifest(path)
        caplog.clear()
        assert m.open_run(cfg, INPUTS, run_hash(cfg, INPUTS)) is finished, kind
        # the user is told why a run finished before is done again
        assert ("earlier version of the hnsw search" in caplog.text) == (kind == "hnsw"), kind
        r = retrieval_hash(cfg, INPUTS)
        # a stage is reused when its recorded hash is the one asked for (`stages.run_retrieval`, `run_judge`)
        assert (m.stage("retrieval")["hash"] == r, m.stage("judge")["hash"] == judge_hash(cfg, INPUTS, r)) \
            == (finished, finished), kind


def test_range_min_must_leave_a_candidate():
    from unime.errors import OptionError

    with pytest.raises(OptionError, match="range_min must be below k"):
        _config(k=5, range_min=5)
    with pytest.raises(OptionError, match="absolute_margin"):
        _config(absolute_margin=-0.1)


def test_the_stage_and_run_hashes_read_checkpoints_by_content_not_by_path_spelling(tmp_path, monkeypatch):
    """`--embedder ./emb/ --judge /abs/judge` is the run of `--embedder emb --judge judge`: every stage is reused
    and a finished run is finished; another fingerprint is another stage."""
    monkeypatch.chdir(tmp_path)
    for name in ("emb", "judge"):
        (tmp_path / name).mkdir()
    spelled = {**INPUTS, "embedder": {"path": "./emb/", "fingerprint": "fe"},
               "judge": {"path": str(tmp_path / "judge"), "fingerprint": "fj"}}
    other = MineConfig(records="r.jsonl", embedder="./emb/", judge=str(tmp_path / "judge"), out="./o/")
    r = retrieval_hash(other, spelled)
    assert (r, judge_hash(other, spelled, r)) == NOW
    assert run_hash(other, spelled) == run_hash(_config(), INPUTS)
    changed = {**INPUTS, "embedder": {"path": "emb", "fingerprint": "other"}}
    assert retrieval_hash(_config(), changed) != NOW[0]
    assert judge_hash(_config(), changed, retrieval_hash(_config(), changed)) != NOW[1]


def test_a_folder_mined_before_keeps_its_stages_whatever_the_paths_spelling(tmp_path, monkeypatch):
    """A manifest whose stages are keyed the earlier way (the checkpoints' paths hashed) and whose run finished:
    the same command is still finished, and with --overwrite and the paths spelled otherwise its retrieval and
    judge records are re-keyed to the hashes the stages now ask for (nothing redone)."""
    monkeypatch.chdir(tmp_path)
    for name in ("emb", "judge"):
        (tmp_path / name).mkdir()
    path = tmp_path / "o" / "manifest.json"
    path.parent.mkdir()
    legacy = run_hash(_config(), INPUTS, legacy=True)
    stages = {"retrieval": {"hash": LEGACY[0]}, "judge": {"hash": LEGACY[1], "n_shards": 2}}
    path.write_text(json.dumps({"version": 1, "config": asdict(_config()), "config_hash": legacy, "inputs": INPUTS,
                                "stages": stages, "finished": {"config_hash": legacy, "mined": 3}}))
    for name in ("stats.json", "mined.parquet", "report.md"):
        (path.parent / name).write_text("x")
    assert Manifest(path).open_run(_config(), INPUTS, run_hash(_config(), INPUTS)) is True
    spelled = {**INPUTS, "embedder": {"path": str(tmp_path / "emb"), "fingerprint": "fe"},
               "judge": {"path": "./judge/", "fingerprint": "fj"}}
    again = MineConfig(records="r.jsonl", embedder=str(tmp_path / "emb"), judge="./judge/", out="o", overwrite=True)
    m = Manifest(path)
    assert m.open_run(again, spelled, run_hash(again, spelled)) is False  # --overwrite: done again ...
    r = retrieval_hash(again, spelled)
    assert (m.stage("retrieval")["hash"], m.stage("judge")["hash"]) == (r, judge_hash(again, spelled, r)) == NOW
    assert m.stage("judge")["n_shards"] == 2  # ... from the stages kept


def test_a_rerun_from_another_working_directory_with_absolute_paths_is_the_same_run(tmp_path, monkeypatch):
    """QA: `unime mine --records r.jsonl --embedder emb --judge judge --out o` re-run from another folder with the
    same files named by absolute paths was refused as "a run with other options": the recorded relative paths were
    looked up in the new working directory. The manifest records the one they were given in; other files at those
    names elsewhere are still other options, and a manifest without it (an earlier unime) continues from the folder
    it was made in."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    for folder in (here, elsewhere):
        for name in ("emb", "judge"):
            (folder / name).mkdir(parents=True)
        (folder / "r.jsonl").write_text("{}\n")
    monkeypatch.chdir(here)
    path = here / "o" / "manifest.json"
    path.parent.mkdir()
    m = Manifest(path)
    assert m.open_run(_config(), INPUTS, run_hash(_config(), INPUTS)) is False
    m.finish(run_hash(_config(), INPUTS), 2)
    for name in ("stats.json", "mined.parquet", "report.md"):
        (path.parent / name).write_text("x")
    saved = json.loads(path.read_text())

    monkeypatch.chdir(elsewhere)
    absolute = MineConfig(records=str(here / "r.jsonl"), embedder=str(here / "emb"), judge=str(here / "judge"),
                          out=str(path.parent))
    assert Manifest(path).open_run(absolute, INPUTS, run_hash(absolute, INPUTS)) is True  # finished: nothing to do
    assert (saved["config"]["records"], saved["config"]["working_dir"]) == ("r.jsonl", str(here.resolve()))
    with pytest.raises(ChangedOptions) as refused:  # elsewhere/emb: another folder
        Manifest(path).open_run(_config(), INPUTS, run_hash(_config(), INPUTS))
    assert f"(embedder: 'emb' (from {here.resolve()}) -> 'emb' (from {elsewhere.resolve()}), judge: " \
        in str(refused.value)
    del saved["config"]["working_dir"]  # recorded by an earlier unime
    path.write_text(json.dumps(saved))
    with pytest.raises(ChangedOptions, match=r"[(,] records: "):
        Manifest(path).open_run(absolute, INPUTS, run_hash(absolute, INPUTS))
    monkeypatch.chdir(here)
    assert Manifest(path).open_run(absolute, INPUTS, run_hash(absolute, INPUTS)) is True


def test_a_given_item_format_is_a_new_retrieval_and_none_keeps_the_earlier_hashes():
    """`--item-format vlm2vec` writes the embedder's items otherwise: other vectors, so the retrieval is redone; left
    unset (the checkpoint's record, part of its fingerprint) the hashes stay those runs before the option recorded."""
    r = retrieval_hash(_config(item_format=None), INPUTS)
    assert (r, judge_hash(_config(item_format=None), INPUTS, r)) == NOW
    assert retrieval_hash(_config(item_format="vlm2vec"), INPUTS) != retrieval_hash(_config(), INPUTS)
    assert run_hash(_config(item_format="vlm2vec"), INPUTS) != run_hash(_config(), INPUTS)
    assert run_hash(_config(item_format=None), INPUTS) == run_hash(_config(), INPUTS)


def test_the_attention_kernel_is_no_part_of_a_mining_run():
    """--attn-implementation is the machine's choice (flash-attention on a GPU, sdpa elsewhere): a run's identity is
    the one it had before the option existed (the value `run_hash` gave then), whatever the kernel, so a run goes
    on with another."""
    assert run_hash(_config(), INPUTS) == "edfa712eba82cbaa"
    assert run_hash(_config(attn_implementation="flash_attention_2"), INPUTS) == "edfa712eba82cbaa"
    assert _config(attn_implementation="eager").judge_spec("judge", None).attn_implementation == "eager"


# the (retrieval, judge, run) hashes unime recorded for `--dtype bf16` and `--dtype bfloat16` while it hashed the
# value as typed (the values that version computed; the checkpoints by their fingerprints, and `legacy`: by path)
TYPED = {"bf16": ("a1575ab387e7d85e", "7af4af89512fdd2e", "b58e7f9951c117ed"),
         "bfloat16": ("01f66b8ab6dc243e", "7465e993a23d6cf1", "0a8e5eda21cfb411"),
         "bfloat16 legacy": ("7659b832f6f29918", "7e23b9f98bba0dd4", "2554d3bd5d096999")}


def test_the_dtype_spellings_are_one_run_and_a_folder_mined_with_either_keeps_its_stages(tmp_path):
    """`--dtype bfloat16` is `--dtype bf16` (`DTYPE_ALIASES`): one identity, the short name's (the hashes a folder
    mined with bf16 recorded). A folder mined before with either spelling (its manifest as that version wrote it),
    re-run with either: finished, it is finished; interrupted, its retrieval and judge records are re-keyed to the
    hashes the stages now ask for (nothing redone). Another dtype is still another run."""
    for spelling in ("bf16", "bfloat16"):
        c = _config(dtype=spelling)
        r = retrieval_hash(c, INPUTS)
        assert (r, judge_hash(c, INPUTS, r), run_hash(c, INPUTS)) == TYPED["bf16"]
    fp32 = _config(dtype="fp32")
    assert retrieval_hash(fp32, INPUTS) != TYPED["bf16"][0] and run_hash(fp32, INPUTS) != TYPED["bf16"][2]
    for case, (r_hash, j_hash, config_hash) in TYPED.items():
        typed = case.split()[0]
        for finished in (True, False):
            for again in ("bf16", "bfloat16"):
                path = tmp_path / f"{case}-{finished}-{again}".replace(" ", "_") / "manifest.json"
                path.parent.mkdir()
                stages = {"retrieval": {"hash": r_hash, "encoded_items": 5}, "judge": {"hash": j_hash, "n_shards": 2}}
                data = {"version": 1, "config": asdict(_config(dtype=typed)), "config_hash": config_hash,
                        "inputs": INPUTS, "stages": stages}
                if finished:
                    data["finished"] = {"config_hash": config_hash, "mined": 3}
                path.write_text(json.dumps(data))
                for name in ("stats.json", "mined.parquet", "report.md"):
                    (path.parent / name).write_text("x")
                cfg = _config(dtype=again)
                m = Manifest(path)
                assert m.open_run(cfg, INPUTS, run_hash(cfg, INPUTS)) is finished, (case, finished, again)
                if not finished:
                    assert (m.stage("retrieval")["hash"], m.stage("judge")["hash"]) == TYPED["bf16"][:2], case
                    assert m.stage("judge")["n_shards"] == 2
                with pytest.raises(ChangedOptions, match=r"\(dtype: '(bf16|bfloat16)' -> 'fp32'"):
                    Manifest(path).open_run(fp32, INPUTS, run_hash(fp32, INPUTS))
