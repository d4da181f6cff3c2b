"""`unime.mining.manifest`: the stage hashes existing run folders are keyed by, and the rerun check."""

from __future__ import annotations

import json

import pytest

from unime.errors import ChangedOptions
from unime.mining.manifest import Manifest, judge_hash, retrieval_hash, run_hash
from unime.mining.config import MineConfig

INPUTS = {"records": {"path": "/d/r.jsonl", "sha1": "aa", "n": 3, "skipped": 0}, "pool": "positives", "pool_size": 5,
          "embedder": {"path": "emb", "fingerprint": "fe"}, "judge": {"path": "judge", "fingerprint": "fj"},
          "data_root": "/d", "images": {"sha1": "ii"}}


def _config(**kw) -> MineConfig:
    return MineConfig(records="r.jsonl", embedder="emb", judge="judge", out="o", **kw)


def test_stage_hashes_are_the_ones_earlier_runs_recorded():
    """Values written by the pipeline before its manifest had a module of its own (its private `_hash`):
    a folder mined then keeps reusing its retrieval and judge shards."""
    r = retrieval_hash(_config(), INPUTS)
    assert (r, judge_hash(_config(), INPUTS, r)) == ("c7ed1a8b49099257", "684600d0be959fe6")
    c = _config(k=7, shard_size=3, video_frames=4, index="hnsw", hnsw_m=12)
    r = retrieval_hash(c, INPUTS)
    assert (r, judge_hash(c, INPUTS, r)) == ("bd57880bf99bb8c5", "08b5a58a06f7a5e9")
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
    with pytest.raises(ChangedOptions, match="--hnsw-m"):
        Manifest(tmp_path / "manifest.json").open_run(other, INPUTS, run_hash(other, INPUTS))


def test_the_video_options_defaults_given_explicitly_are_no_change(tmp_path):
    """`--video-frames 8` (and the other video options at their defaults) is the run without them: the folder's run
    continues, and the stage hashes stay those of the run without them (no stage is redone)."""
    explicit = _config(video_frames=8, video_max_frames=64, video_max_pixels=32 * 448 * 448)
    m = Manifest(tmp_path / "manifest.json")
    m.open_run(_config(), INPUTS, run_hash(_config(), INPUTS))
    assert Manifest(tmp_path / "manifest.json").open_run(explicit, INPUTS, run_hash(explicit, INPUTS)) is False
    r = retrieval_hash(explicit, INPUTS)
    assert (r, judge_hash(explicit, INPUTS, r)) == ("c7ed1a8b49099257", "684600d0be959fe6")  # the defaults' (above)
    assert explicit.judge_spec("judge", None).video_sampling == ()
    # and the other way round: a run recorded with them explicit, continued without them
    Manifest(tmp_path / "manifest.json").open_run(_config(), INPUTS, run_hash(_config(), INPUTS))
    other = _config(video_frames=4)
    with pytest.raises(ChangedOptions, match="--video-frames: None -> 4"):
        Manifest(tmp_path / "manifest.json").open_run(other, INPUTS, run_hash(other, INPUTS))
