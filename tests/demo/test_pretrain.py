"""`unime models pretrain`: the recipe key, the per-machine cache, corpus disjointness, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from unime.data.synth import World
from unime.demo import pretrain as pt
from unime.demo.pretrain import PretrainRecipe, corpus_records, pretrain, scene_signature


def _weights_hash(folder) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_recipe_key_changes_with_every_field_and_the_excluded_world():
    base = PretrainRecipe.preset("quick")
    assert base.key() == PretrainRecipe.preset("quick").key()
    keys = {base.key()}
    for name, value in [("steps", 5), ("lr", 2e-3), ("corpus_seed", 2), ("init_std", 0.05), ("family", "qwen3_vl"),
                        ("contrastive_datasets", "i2t,t2i")]:
        keys.add(base.replace(**{name: value}).key())
    keys.add(base.key("another-world-digest"))
    assert len(keys) == 8
    # all datasets ("", the default) is the recipe from before the field: its key is unchanged
    assert "contrastive_datasets" not in base.key_fields()
    assert base.replace(contrastive_datasets="t2i, i2t").contrastive_subset() == {"i2t", "t2i"}
    assert base.contrastive_subset() is None
    with pytest.raises(ValueError, match="unknown recipe field"):
        base.replace(stpes=3)


def test_a_revised_tiny_build_of_a_family_changes_its_recipe_keys_only(monkeypatch):
    """A base cached from an earlier `build_tiny` of its family is not reused as today's: the family's build
    revision enters the key; the families never revised (Qwen2-VL, the default) keep the keys they had."""
    qwen2 = PretrainRecipe.preset("default")
    qwen3 = qwen2.replace(family="qwen3_vl")
    assert qwen2.key() == "bb68263762bd4680"  # the default's key from before the revisions: its caches stay valid
    before = {"qwen2_vl": qwen2.key(), "qwen3_vl": qwen3.key()}
    monkeypatch.setitem(pt.BUILD_REVISION, "qwen3_vl", pt.BUILD_REVISION["qwen3_vl"] + 1)
    assert qwen3.key() != before["qwen3_vl"]
    assert qwen2.key() == before["qwen2_vl"]
    monkeypatch.delitem(pt.BUILD_REVISION, "qwen3_vl")  # never revised: the key of the recipe alone
    blob = json.dumps({"recipe": qwen3.key_fields(), "version": pt.RECIPE_VERSION, "exclude": ""}, sort_keys=True)
    assert qwen3.key() == hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_corpus_drops_exactly_the_records_that_show_an_excluded_scene(tiny_world_dir):
    root = tiny_world_dir(3)
    world = World.load(root)
    target = next(s for s in world.scenes.values() if s.split == "train")
    sig = scene_signature(target)
    expected = 0
    for rec in world.records:  # independent count from the item metadata
        shown = [world.meta(i).get("scene") for i in (rec.query, rec.positive)]
        expected += any(s is not None and scene_signature(world.scenes[s]) == sig for s in shown)
    kept, dropped = corpus_records(root, {sig})
    assert dropped == expected >= 1
    assert len(kept) + dropped == len(world.records)
    assert corpus_records(root, set()) == (world.records, 0)


@pytest.mark.slow
def test_pretrain_is_cached_by_recipe_and_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIME_CACHE_DIR", str(tmp_path / "cache"))
    recipe = PretrainRecipe.preset("quick")
    first = pretrain(recipe, progress=lambda m: None)
    assert not first.reused and first.path.parent == tmp_path / "cache" / "pretrained"
    assert first.path.name == f"qwen2_vl-{recipe.key()}"
    assert first.manifest["training"]["steps"] == recipe.steps
    assert not any(p.name.startswith(".") for p in first.path.parent.iterdir())  # the work folder is gone

    # an unchanged recipe is reused: no training happens
    def no_training(*a, **k):
        raise AssertionError("retrained an unchanged recipe")
    monkeypatch.setattr("unime.train.embedder_trainer.train_embedder", no_training)

    def no_lock(*a, **k):  # reusing a finished model writes nothing, not even a lock file: a read-only cache serves
        raise AssertionError("took the recipe's lock to reuse a finished model")
    monkeypatch.setattr("unime.outdir.waiting_lock", no_lock)
    listed = sorted(p.name for p in first.path.parent.iterdir())
    again = pretrain(recipe, progress=lambda m: None)
    assert again.reused and again.path == first.path
    assert sorted(p.name for p in first.path.parent.iterdir()) == listed
    monkeypatch.undo()
    monkeypatch.setenv("UNIME_CACHE_DIR", str(tmp_path / "cache"))

    # same recipe, another folder: the same weights, byte for byte (one thread, as in conftest)
    twin = pretrain(recipe, out=tmp_path / "twin", progress=lambda m: None)
    assert not twin.reused
    assert _weights_hash(twin.model) == _weights_hash(first.model)

    # a changed recipe trains anew into its own folder, with other weights
    other = pretrain(recipe.replace(seed=1), progress=lambda m: None)
    assert not other.reused and other.path != first.path
    assert _weights_hash(other.model) != _weights_hash(first.model)


def test_pretrain_refuses_a_contrastive_dataset_the_corpus_lacks(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIME_CACHE_DIR", str(tmp_path / "cache"))
    recipe = PretrainRecipe.preset("quick").replace(contrastive_datasets="i2t,no_such_task")

    def no_training(*a, **k):
        raise AssertionError("trained on a subset with an unknown dataset")
    monkeypatch.setattr("unime.train.embedder_trainer.train_embedder", no_training)
    with pytest.raises(ValueError, match="no_such_task is not a dataset of the generated corpus"):
        pretrain(recipe, progress=lambda m: None)
    assert not (tmp_path / "cache").exists()  # refused before the backbone or the corpus was made
    # a dataset the generator makes but the corpus's training split has no records of (a held-out task): refused
    # before anything is made too
    with pytest.raises(ValueError, match="no corpus records of t2i_ood"):
        pretrain(recipe.replace(contrastive_datasets="i2t,t2i_ood"), progress=lambda m: None)
    assert not (tmp_path / "cache").exists()


def test_pretrain_trains_on_the_contrastive_datasets_only(tmp_path, monkeypatch):
    from unime.data.io import read_records

    monkeypatch.setenv("UNIME_CACHE_DIR", str(tmp_path / "cache"))
    seen = {}

    class Stop(Exception):
        pass

    def capture(config):
        seen["datasets"] = {r.dataset for r in read_records(config.records)}
        raise Stop
    monkeypatch.setattr("unime.train.embedder_trainer.train_embedder", capture)
    with pytest.raises(Stop):
        pretrain(PretrainRecipe.preset("quick").replace(contrastive_datasets="i2t,t2i"), progress=lambda m: None)
    assert seen["datasets"] == {"i2t", "t2i"}
    with pytest.raises(Stop):
        pretrain(PretrainRecipe.preset("quick"), progress=lambda m: None)
    assert len(seen["datasets"]) > 2  # all of the corpus's datasets


def test_pretrain_refuses_a_foreign_output_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not a pretrained base"):
        pretrain(PretrainRecipe.preset("quick"), out=out, progress=lambda m: None)
    assert (out / "notes.txt").read_text() == "user data"


def test_an_interrupted_work_folder_is_resumed_by_its_recipe_only(tmp_path, monkeypatch):
    """A run interrupted at the contrastive stage leaves its work folder stamped with the recipe's key: another
    recipe into the same --out is refused (it would reuse the finished stages under the wrong recipe) and
    changes nothing there; the same recipe finishes it."""
    class Stop(Exception):
        pass

    def interrupted(config):
        raise Stop
    recipe = PretrainRecipe.preset("quick")
    out = tmp_path / "base"
    monkeypatch.setattr("unime.train.embedder_trainer.train_embedder", interrupted)
    with pytest.raises(Stop):
        pretrain(recipe, out=out, progress=lambda m: None)
    monkeypatch.undo()
    work = tmp_path / ".base.work"
    assert (work / pt.WORK_KEY).read_text() == recipe.key()
    before = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    with pytest.raises(FileExistsError, match="interrupted base pretraining of another recipe"):
        pretrain(recipe.replace(seed=1), out=out, progress=lambda m: None)
    assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == before
    done = pretrain(recipe, out=out, progress=lambda m: None)
    assert done.manifest["key"] == recipe.key() and not work.exists()


@pytest.mark.slow
def test_models_pretrain_writes_a_new_out_folder_and_reuses_it(tmp_path, capsys):
    """The command claims and locks its --out folder before the stage runs: the stage must not take that
    claimed folder for someone else's (it did: "exists and is not a pretrained base")."""
    from unime.cli import main

    out = tmp_path / "base"
    assert main(["models", "pretrain", "--preset", "quick", "--out", str(out), "--device", "cpu"]) == 0
    assert (out / "model" / "config.json").is_file() and (out / "pretrain.json").is_file()
    capsys.readouterr()
    assert main(["models", "pretrain", "--preset", "quick", "--out", str(out), "--device", "cpu"]) == 0
    assert "reusing" in capsys.readouterr().out


def test_version_is_part_of_the_key(monkeypatch):
    recipe = PretrainRecipe.preset("quick")
    before = recipe.key()
    monkeypatch.setattr(pt, "RECIPE_VERSION", pt.RECIPE_VERSION + 1)
    assert recipe.key() != before


# -- the pretrained judge ---------------------------------------------------------------------------------

def test_judge_recipe_key_covers_its_fields_the_base_and_the_version(monkeypatch):
    judge = pt.JudgePretrainRecipe.preset("quick")
    keys = {judge.key("base-a"), judge.key("base-b")}
    for name, value in [("steps", 5), ("group_weight", 0.0), ("negatives", 2), ("lr", 5e-4), ("holdout", 0.1)]:
        keys.add(judge.replace(**{name: value}).key("base-a"))
    assert len(keys) == 7
    before = judge.key("base-a")
    monkeypatch.setattr(pt, "RECIPE_VERSION", pt.RECIPE_VERSION + 1)
    assert judge.key("base-a") != before
    with pytest.raises(ValueError, match="unknown judge recipe field"):
        judge.replace(setps=3)


def test_the_judge_corpus_is_the_bases_unless_its_recipe_resizes_it():
    recipe, judge = PretrainRecipe.preset("default"), pt.JudgePretrainRecipe.preset("default")
    assert judge.corpus_recipe(recipe) == recipe
    assert judge.key("base-a") == pt.JudgePretrainRecipe().key("base-a")  # 0 = the base's: the key from before
    bigger = judge.replace(corpus_scenes=4000, corpus_per_task=1000)
    assert bigger.corpus_recipe(recipe) == recipe.replace(corpus_scenes=4000, corpus_per_task=1000)
    assert judge.replace(corpus_per_task=500).corpus_recipe(recipe) == recipe.replace(corpus_per_task=500)
    assert len({judge.key("base-a"), bigger.key("base-a"), judge.replace(corpus_scenes=4000).key("base-a")}) == 3


@pytest.mark.slow
def test_pretrained_judge_is_cached_by_recipe_and_deterministic(tmp_path, monkeypatch):
    from unime.models.judge import JudgeScorer

    monkeypatch.setenv("UNIME_CACHE_DIR", str(tmp_path / "cache"))
    recipe, judge = PretrainRecipe.preset("quick"), pt.JudgePretrainRecipe.preset("quick")
    first = pt.pretrain_judge(judge, recipe, progress=lambda m: None)
    base = pretrain(recipe, progress=lambda m: None)  # trained by the call above: reused now
    assert base.reused and first.manifest["base"]["key"] == base.manifest["key"]
    assert first.path.name == f"qwen2_vl-judge-{judge.key(base.manifest['key'])}"
    assert first.manifest["training"]["steps"] == judge.steps and first.manifest["records"]["records"] > 0
    assert not any(p.name.startswith(".") for p in first.path.parent.iterdir())
    assert _weights_hash(first.model) != _weights_hash(base.model)  # judge training changed the base
    JudgeScorer.from_pretrained(first.model, device="cpu")  # an ordinary judge checkpoint

    def no_training(*a, **k):
        raise AssertionError("retrained an unchanged judge recipe")
    monkeypatch.setattr("unime.train.reranker_trainer.train_reranker", no_training)
    again = pt.pretrain_judge(judge, recipe, progress=lambda m: None)
    assert again.reused and again.path == first.path
    monkeypatch.undo()
    monkeypatch.setenv("UNIME_CACHE_DIR", str(tmp_path / "cache"))
    twin = pt.pretrain_judge(judge, recipe, out=tmp_path / "twin", progress=lambda m: None)
    assert _weights_hash(twin.model) == _weights_hash(first.model)
    other = pt.pretrain_judge(judge.replace(seed=1), recipe, progress=lambda m: None)
    assert other.path != first.path and _weights_hash(other.model) != _weights_hash(first.model)


def test_judge_corpus_clips_drop_exactly_the_records_that_show_an_excluded_clip(tmp_path):
    import re

    from unime.data.io import read_records
    from unime.data.synth import generate_world
    from unime.data.synth.clips import VideoSizes
    from unime.demo.judge_data import judge_training_records

    corpus = tmp_path / "corpus"
    generate_world(corpus, seed=4, sizes="tiny", video=VideoSizes(train_clips=6))
    world = World.load(corpus)
    records = read_records(corpus / "train" / "video_records.jsonl")
    target = next(c for c in world.clips.values() if c.split == "train")
    expected = 0
    for rec in records:  # independent count: the clip ids in the records' video file names
        shown = {m.group(1) for item in (rec.query, rec.positive) for ref in item.video
                 for m in [re.search(r"/(\w+?)(?:_p\d)?\.mp4$", str(ref))] if m}
        expected += any(world.clips[c].signature == target.signature for c in shown)
    kept, dropped = pt.corpus_video_records(corpus, {target.signature})
    assert dropped == expected >= 1 and len(kept) + dropped == len(records)
    assert pt.corpus_video_records(corpus, set()) == (records, 0)
    # a world's eval clips are what the judge's corpus leaves out; a world without video excludes none
    eval_world = tmp_path / "world"
    generate_world(eval_world, seed=5, sizes="tiny", video=VideoSizes(eval_clips=3))
    sigs, digest = pt.excluded_clip_signatures(eval_world)
    assert sigs == {c.signature for c in World.load(eval_world).clips.values()} and len(sigs) == 3 and digest
    # the judge's labelled records come from one pool of images and clips; relevance answers for both
    image_records, _ = corpus_records(corpus, set())
    labelled = judge_training_records(world.with_records(image_records + kept), negatives_per_query=2)
    video_queries = [r for r in labelled if r.query.video or r.positive.video]
    assert video_queries and all(world.relevance(r.query, r.positive) == 1.0 for r in video_queries)
    assert all(world.relevance(r.query, n) < 1.0 for r in video_queries for n in r.negatives)


def _fake_cached(root: Path, name: str, manifest: dict) -> None:
    (root / name).mkdir(parents=True)
    (root / name / pt.MANIFEST).write_text(json.dumps(manifest))


def test_uncached_names_what_a_first_run_still_pretrains(tmp_path, monkeypatch, tiny_world_dir):
    """For the demo's time estimate: exact by key once the excluded world exists; before, a cached model of the
    same recipe (any excluded world) counts."""
    from dataclasses import asdict

    monkeypatch.setenv("UNIME_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "pretrained"
    recipe, judge = PretrainRecipe.preset("quick"), pt.JudgePretrainRecipe.preset("quick")
    world = tiny_world_dir(0)
    assert pt.uncached(recipe, judge, world) == ["base", "judge"]
    assert pt.uncached(recipe, None, tmp_path / "not-yet") == ["base"]
    # cached for another excluded world: counts before the world exists, not once it does
    _fake_cached(root, "qwen2_vl-aaaa", {"key": "aaaa", "recipe_version": pt.RECIPE_VERSION,
                                         "recipe": asdict(recipe)})
    _fake_cached(root, "qwen2_vl-judge-bbbb", {"key": "bbbb", "judge_recipe": asdict(judge),
                                               "base": {"key": "aaaa"}})
    assert pt.uncached(recipe, judge, tmp_path / "not-yet") == []
    assert pt.uncached(recipe.replace(seed=1), judge, tmp_path / "not-yet") == ["base", "judge"]
    assert pt.uncached(recipe, judge.replace(seed=1), tmp_path / "not-yet") == ["judge"]
    assert pt.uncached(recipe, judge, world) == ["base", "judge"]
    # the folders `pretrain` / `pretrain_judge` write for this world (names as the slow tests above check)
    base_key = recipe.key(pt.excluded_signatures(world)[1])
    _fake_cached(root, f"qwen2_vl-{base_key}", {"key": base_key})
    assert pt.uncached(recipe, judge, world) == ["judge"]
    judge_key = judge.key(base_key, pt.excluded_clip_signatures(world)[1])
    _fake_cached(root, f"qwen2_vl-judge-{judge_key}", {"key": judge_key})
    assert pt.uncached(recipe, judge, world) == []


def _fake_cached_pair(cache: Path, world: Path) -> tuple:
    """A cached quick base and judge (manifests and a model folder) for `world`, as `pretrain` / `pretrain_judge`
    name them; their keys."""
    recipe, judge = PretrainRecipe.preset("quick"), pt.JudgePretrainRecipe.preset("quick")
    digest = pt.excluded_signatures(world)[1]
    base_key = recipe.key(digest)
    judge_key = judge.key(base_key, pt.excluded_clip_signatures(world)[1] if judge.video_clips else "")
    root = cache / "pretrained"
    _fake_cached(root, f"{recipe.family}-{base_key}", {"key": base_key, "exclude_world": str(world),
                                                       "exclude_digest": digest})
    _fake_cached(root, f"{recipe.family}-judge-{judge_key}", {"key": judge_key})
    for name in (f"{recipe.family}-{base_key}", f"{recipe.family}-judge-{judge_key}"):
        (root / name / pt.MODEL_DIR).mkdir()
        (root / name / pt.MODEL_DIR / "config.json").write_text("{}")
    return recipe, judge, base_key, judge_key


def test_pretrain_judge_given_the_base_does_not_look_it_up_again(tmp_path, monkeypatch, tiny_world_dir):
    """`pretrain_judge(base=...)`: the base the caller already pretrained or reused (the demo's models stage) is
    not looked up again, so its `[pretrain] reusing` line is said once; a base of another recipe is refused."""
    monkeypatch.setenv("UNIME_CACHE_DIR", str(tmp_path / "cache"))
    world = tiny_world_dir(0)
    recipe, judge, base_key, judge_key = _fake_cached_pair(tmp_path / "cache", world)
    said: list[str] = []
    base = pretrain(recipe, exclude_world=world, progress=said.append)
    judged = pt.pretrain_judge(judge, recipe, exclude_world=world, base=base, progress=said.append)
    assert judged.reused and judged.manifest["key"] == judge_key
    assert [line.split(" (")[1].split(",")[0] for line in said] == ["base", "judge"], said
    assert all(line.startswith("[pretrain] reusing ") for line in said)
    other = PretrainRecipe.preset("quick").replace(seed=1)
    with pytest.raises(ValueError, match=f"not the base of this recipe.*{base_key}"):
        pt.pretrain_judge(judge, other, exclude_world=world, base=base, progress=said.append)


def test_the_demos_models_stage_says_reusing_once_per_model(tmp_path, monkeypatch, tiny_world_dir):
    """Both models cached: the demo's console shows one `[pretrain] reusing` line for the base and one for the judge
    (the judge's recipe looked the base up again, and said so a second time)."""
    import shutil

    from unime.demo.pipeline import Demo
    from unime.demo.run import DemoSettings

    class Stop(Exception):
        pass

    monkeypatch.setenv("UNIME_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    shutil.copytree(tiny_world_dir(0), out / "world")
    _fake_cached_pair(tmp_path / "cache", out / "world")
    said: list[str] = []
    demo = Demo(out, DemoSettings.preset("quick"), progress=said.append, timings=tmp_path / "t.json",
                load_probe=lambda: None)

    def only_models(name, done_when, body, **kw):
        if name == "models":
            body([])
            raise Stop
    monkeypatch.setattr(demo, "stage", only_models)
    with pytest.raises(Stop):
        demo.run()
    reusing = [line for line in said if line.startswith("[pretrain] reusing")]
    assert [line.split(" (")[1].split(",")[0] for line in reusing] == ["base", "judge"], said
    assert (out / "models" / "judge-base" / "config.json").is_file()


def test_a_finished_model_with_a_killed_runs_lock_file_is_reused_from_a_read_only_cache(tmp_path, monkeypatch):
    """QA: a finished model in the cache with the lock file a killed run left beside it (`.NAME.unime-lock`, held by
    no one) was reused only by taking that lock, which needs write access: a cache the user can only read (shared on
    a cluster) failed with PermissionError. Now that stale lock does not stop the reuse where it cannot be written;
    where it can, the locked way removes it as before; a lock a run holds still makes the reuse wait for it. Read-only
    is chmod, and under root (which chmod does not stop) an `os.open` that refuses to write anything in the cache."""
    import os
    import stat

    from unime.outdir import file_lock_path, waiting_lock

    monkeypatch.setenv("UNIME_CACHE_DIR", str(tmp_path / "cache"))
    recipe = PretrainRecipe.preset("quick")
    root, key = tmp_path / "cache" / "pretrained", recipe.key()
    dest = root / f"{recipe.family}-{key}"
    _fake_cached(root, dest.name, {"key": key})
    (dest / pt.MODEL_DIR).mkdir()
    (dest / pt.MODEL_DIR / "config.json").write_text("{}")
    lock = file_lock_path(dest)
    lock.write_text("999999\nelsewhere\n")  # as a killed run left it
    assert pretrain(recipe, progress=lambda m: None).reused and not lock.exists()  # writable: taken and removed

    lock.write_text("999999\nelsewhere\n")
    listed = sorted(p.name for p in root.rglob("*"))
    real_open = os.open

    def read_only_open(path, flags, *a, **k):
        if str(path).startswith(str(root)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (root, dest, lock)}
    for p in modes:
        p.chmod(0o444 if p == lock else 0o555)
    try:
        if os.geteuid() == 0:
            monkeypatch.setattr(os, "open", read_only_open)
        said: list[str] = []
        result = pretrain(recipe, progress=said.append)
        assert result.reused and result.path == dest and result.manifest == {"key": key}
        assert said == [f"[pretrain] reusing {dest} (base, recipe key {key})"]
        assert sorted(p.name for p in root.rglob("*")) == listed  # nothing written, the stale lock file left
    finally:
        monkeypatch.setattr(os, "open", real_open)
        for p, mode in modes.items():
            p.chmod(mode)

    with waiting_lock(lock, "x", lambda pid, host: None):  # a run at work on it: the reuse goes the locked way
        lock.chmod(0o444)
        if os.geteuid() == 0:
            monkeypatch.setattr(os, "open", read_only_open)
        try:
            assert not pt._published(dest, key)
        finally:
            monkeypatch.setattr(os, "open", real_open)
            lock.chmod(0o644)


def test_a_folder_of_other_files_is_refused_naming_out_as_the_user_gives_it(tmp_path):
    """QA: from Python, pretrain(out=...) into a folder of the user's files said "choose another --out", a flag the
    Python API does not have: `out` there, `--out` in a command of `unime`."""
    from unime.options import command_line_wording

    out = tmp_path / "base"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    said = f"{out} exists and is not a pretrained base written by unime; choose another %s"
    with pytest.raises(FileExistsError) as caught:
        pretrain(PretrainRecipe.preset("quick"), out=out, progress=lambda m: None)
    assert str(caught.value) == said % "out"
    with pytest.raises(FileExistsError) as caught, command_line_wording():
        pretrain(PretrainRecipe.preset("quick"), out=out, progress=lambda m: None)
    assert str(caught.value) == said % "--out"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_the_pretraining_stages_checkpoint_ten_times_a_run(tmp_path, monkeypatch):
    """Before: the contrastive stage and the judge checkpointed every quarter of their steps, so a kill lost up to
    2,000 of the judge's 8,000 steps (an hour on 2 CPU cores beside other work; the large preset's run lost 1,739
    steps twice). Now every stage of a pretrained model checkpoints every tenth of its steps (as the captioning
    stage did), the contrastive stage keeping its last checkpoint only. Steps change no cache key."""
    monkeypatch.setenv("UNIME_CACHE_DIR", str(tmp_path / "cache"))
    seen = {}

    class Stop(Exception):
        pass

    def capture(what):
        def run(config, *a, **k):
            seen[what] = config
            raise Stop
        return run
    recipe = PretrainRecipe.preset("quick")
    monkeypatch.setattr("unime.train.embedder_trainer.train_embedder", capture("base"))
    with pytest.raises(Stop):
        pretrain(recipe.replace(steps=40), progress=lambda m: None)
    assert (seen["base"].save_steps, seen["base"].save_total_limit) == (4, 1)
    monkeypatch.undo()
    monkeypatch.setenv("UNIME_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("unime.train.reranker_trainer.train_reranker", capture("judge"))
    with pytest.raises(Stop):
        pt.pretrain_judge(pt.JudgePretrainRecipe.preset("quick").replace(steps=80), recipe, progress=lambda m: None)
    assert seen["judge"].save_steps == 8
