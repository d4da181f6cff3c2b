"""`unime models pretrain` re-run after a kill (QA report): a run killed while it published its base, a file the user
added to a killed run's --out, a changed recipe with --overwrite. The kills are real (SIGKILL at a chosen call, in
a subprocess) where the on-disk state depends on the order of the publication's steps; else the state a kill
leaves is written by hand."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from unime.demo import pretrain as pt
from unime.demo.pretrain import PretrainRecipe

from tests.pretrain_stage_runs import weights_hash

QUICK = ["models", "pretrain", "--preset", "quick", "--device", "cpu"]

# run `unime` with SIGKILL at one call: os.replace before / after it moves something to TARGET, or shutil.rmtree of
# TARGET; argv: POINT TARGET unime-arguments...
_KILLED_AT = """
import os, shutil, signal, sys
point, target = sys.argv[1], sys.argv[2]
replace, rmtree = os.replace, shutil.rmtree
def kill():
    os.kill(os.getpid(), signal.SIGKILL)
def replace_then_kill(src, dst, *a, **k):
    if point == "before" and str(dst) == target:
        kill()
    replace(src, dst, *a, **k)
    if point == "after" and str(dst) == target:
        kill()
def rmtree_then_kill(path, *a, **k):
    if point == "rmtree" and str(path) == target:
        kill()
    return rmtree(path, *a, **k)
os.replace, shutil.rmtree = replace_then_kill, rmtree_then_kill
from unime.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _run_killed(point: str, target: Path, argv: list[str], env: dict | None = None) -> int:
    src = str(Path(pt.__file__).parents[2])  # this checkout's unime
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", _KILLED_AT, point, str(target), *argv], env=env,
                          capture_output=True, timeout=600).returncode


@pytest.fixture(scope="module")
def trained_work(tmp_path_factory) -> Path:
    """The work folder of the quick recipe with every stage finished, as a run killed before it published leaves
    it (one thread, as in conftest)."""
    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pt, "_publish", stop)
        with pytest.raises(Stop):
            pt.pretrain(PretrainRecipe.preset("quick"), out=root / "base", progress=lambda m: None)
    work = root / ".base.work"
    assert (work / "embedder" / "merged" / "model.safetensors").is_file()
    return work


def _finished_by_the_rerun(out: Path, merged: Path, capsys) -> None:
    """A re-run of the command finishes `out`: the base of the quick recipe with the trained weights, the command's
    marker, no work folder; a second re-run reuses it."""
    from unime.cli import main
    from unime.outdir import read_marker

    capsys.readouterr()
    assert main([*QUICK, "--out", str(out)]) == 0
    manifest = json.loads((out / pt.MANIFEST).read_text(encoding="utf-8"))
    assert manifest["key"] == PretrainRecipe.preset("quick").key()
    assert weights_hash(out / pt.MODEL_DIR) == weights_hash(merged)
    assert read_marker(out)["command"] == "models pretrain"
    assert not (out.parent / f".{out.name}.work").exists()
    assert sorted(p.name for p in out.iterdir()) == [".unime-output.json", ".unime.lock", "model", "pretrain.json"]
    assert main([*QUICK, "--out", str(out)]) == 0
    assert "reusing" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("point, target", [("before", "model"), ("after", "model"), ("after", "pretrain.json"),
                                           ("rmtree", ".base.work/embedder")])
def test_a_run_killed_while_publishing_is_finished_by_the_rerun(tmp_path, trained_work, capsys, point, target):
    """Before, the publication replaced the whole --out folder (with the command's marker) and then removed the work
    folder: a kill in between left an unmarked folder the re-run refused ("not empty and was not written by
    unime"), and a work folder that --overwrite did not remove either. (The work folder is removed entry by entry,
    its stamp last: the kill at the rmtree of one of its entries leaves it part-removed.)"""
    out = tmp_path / "base"
    shutil.copytree(trained_work, tmp_path / ".base.work")
    merged = trained_work / "embedder" / "merged"
    killed_at = tmp_path / target if target.startswith(".") else out / target
    assert _run_killed(point, killed_at, [*QUICK, "--out", str(out)]) == -signal.SIGKILL
    _finished_by_the_rerun(out, merged, capsys)


def test_the_folder_a_kill_left_while_an_earlier_version_published_is_finished(tmp_path, trained_work, capsys):
    """The state QA's kill left with the publication before: --out replaced whole (the base and its manifest, no
    marker), the work folder beside it. The re-run takes the folder as its own and finishes it."""
    out = tmp_path / "base"
    shutil.copytree(trained_work, tmp_path / ".base.work")
    merged = trained_work / "embedder" / "merged"
    shutil.copytree(merged, out / pt.MODEL_DIR)
    (out / pt.MANIFEST).write_text(json.dumps({"key": PretrainRecipe.preset("quick").key()}), encoding="utf-8")
    _finished_by_the_rerun(out, merged, capsys)


def test_a_cached_base_a_kill_left_with_its_work_folder_is_reused_and_the_work_folder_removed(
        tmp_path, trained_work, monkeypatch):
    monkeypatch.setenv("UNIME_CACHE_DIR", str(tmp_path / "cache"))
    recipe = PretrainRecipe.preset("quick")
    dest = pt.default_pretrained_root() / f"qwen2_vl-{recipe.key()}"
    work = dest.parent / f".{dest.name}.work"
    shutil.copytree(trained_work, work)
    shutil.copytree(trained_work / "embedder" / "merged", dest / pt.MODEL_DIR)
    (dest / pt.MANIFEST).write_text(json.dumps({"key": recipe.key()}), encoding="utf-8")
    again = pt.pretrain(recipe, progress=lambda m: None)
    assert again.reused and again.path == dest and not work.exists()
    # a work folder of another recipe (its stamp) or an unstamped one is not this run's: it stays
    for stamp in ("another-key", None):
        work.mkdir()
        if stamp:
            (work / pt.WORK_KEY).write_text(stamp, encoding="utf-8")
        (work / "x").write_text("x", encoding="utf-8")
        assert pt.pretrain(recipe, progress=lambda m: None).reused and (work / "x").is_file()
        shutil.rmtree(work)


def test_a_file_the_user_added_to_a_killed_runs_out_stays_and_is_named(tmp_path, trained_work, capsys, caplog):
    """Before, the re-run refused the folder ("exists and is not a pretrained base written by unime") although the
    command's own marker was there, even with --overwrite."""
    from unime.outdir import claim

    out = tmp_path / "base"
    shutil.copytree(trained_work, tmp_path / ".base.work")
    claim(out, "models pretrain", {}).release()  # as the killed run's claim left it
    (out / "NOTES.txt").write_text("notes\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        from unime.cli import main

        assert main([*QUICK, "--out", str(out)]) == 0
    assert (out / "NOTES.txt").read_text(encoding="utf-8") == "notes\n"
    assert weights_hash(out / pt.MODEL_DIR) == weights_hash(trained_work / "embedder" / "merged")
    assert any("NOTES.txt" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert not (tmp_path / ".base.work").exists()


def test_overwrite_discards_the_work_folder_of_another_recipe(tmp_path, monkeypatch):
    """`--overwrite` says a re-run with other options starts over: the interrupted run's work folder of another
    recipe (unime's own: stamped with its key) is removed and this recipe starts there; without it, refused."""
    from unime.cli import main

    class Stop(Exception):
        pass

    started = {}

    def first_stage(config):
        started["stamp"] = (work / pt.WORK_KEY).read_text(encoding="utf-8")
        started["other_stage"] = (work / "other-recipes-stage").exists()
        raise Stop
    out, work = tmp_path / "base", tmp_path / ".base.work"
    work.mkdir()
    (work / pt.WORK_KEY).write_text("0123456789abcdef", encoding="utf-8")
    (work / "other-recipes-stage").write_text("x", encoding="utf-8")
    monkeypatch.setattr("unime.train.embedder_trainer.train_embedder", first_stage)
    assert main([*QUICK, "--out", str(out)]) != 0  # refused: the other recipe's work folder stays
    assert (work / pt.WORK_KEY).read_text(encoding="utf-8") == "0123456789abcdef"
    with pytest.raises(Stop):
        main([*QUICK, "--out", str(out), "--overwrite"])
    assert started == {"stamp": PretrainRecipe.preset("quick").key(), "other_stage": False}
    # a work folder without a stamp is not recognisably unime's: refused, --overwrite or not
    shutil.rmtree(work)
    work.mkdir()
    (work / "somebodys").write_text("x", encoding="utf-8")
    assert main([*QUICK, "--out", str(out), "--overwrite"]) != 0
    assert (work / "somebodys").is_file()



def test_overwrite_replaces_a_finished_base_of_another_recipe_in_its_out(tmp_path, trained_work, capsys):
    """The command's --out holds a finished base of another recipe: refused and left as it was without --overwrite;
    with it, this recipe's base (its work folder finished) replaces the model and the manifest, the user's file
    stays."""
    from unime.cli import main
    from unime.outdir import claim

    out = tmp_path / "base"
    claim(out, "models pretrain", {}).release()
    (out / pt.MODEL_DIR).mkdir()
    (out / pt.MODEL_DIR / "config.json").write_text("{}", encoding="utf-8")
    (out / pt.MANIFEST).write_text(json.dumps({"key": "0123456789abcdef"}), encoding="utf-8")
    (out / "NOTES.txt").write_text("notes\n", encoding="utf-8")
    shutil.copytree(trained_work, tmp_path / ".base.work")
    assert main([*QUICK, "--out", str(out)]) != 0
    assert "another recipe" in capsys.readouterr().err
    assert json.loads((out / pt.MANIFEST).read_text(encoding="utf-8"))["key"] == "0123456789abcdef"
    assert main([*QUICK, "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / pt.MANIFEST).read_text(encoding="utf-8"))["key"] == PretrainRecipe.preset("quick").key()
    assert weights_hash(out / pt.MODEL_DIR) == weights_hash(trained_work / "embedder" / "merged")
    assert (out / "NOTES.txt").is_file() and not (tmp_path / ".base.work").exists()

def _tensors(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.slow
def test_interrupted_tagging_and_captioning_stages_resume_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    """Before, both stages saved no checkpoint (captioning's `save_steps` was ten times its steps): a kill at step
    30 of 150 restarted the stage at step 1. Now each resumes from its last checkpoint (every `steps // 10`), with
    the data order, RNG, optimizer and schedule restored: the same weights as an uninterrupted run (one thread)."""
    import torch
    from transformers import TrainerCallback

    import unime.demo.vision_tagging as vt
    import unime.embed_rl.reasoner_sft as rs

    # 68 scenes: 3 tagging batches of 32 and 9 captioning batches of 8 per pass, so both resume past an epoch's end
    recipe = PretrainRecipe.preset("quick").replace(tag_steps=10, tag_batch_size=32, caption_steps=20)
    whole = pt.pretrain(recipe, out=tmp_path / "whole", progress=lambda m: None)

    class Kill(Exception):
        pass

    ran = {"tagging": 0, "captioning": 0}
    stop_at = {"tagging": 8, "captioning": 13}  # the steps the kills come at (checkpoints: tagging 7, captioning 12)
    features = vt.pooled_image_features

    def tagging_step(*a, **k):
        ran["tagging"] += 1  # once per step, and once before the first to size the head
        if ran["tagging"] == stop_at["tagging"] + 1:
            raise Kill
        return features(*a, **k)

    class CaptioningSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ran["captioning"] += 1
            if state.global_step == stop_at["captioning"]:
                raise Kill
    trainer = rs.sft_trainer

    def counted_trainer(*a, **k):
        t = trainer(*a, **k)
        t.add_callback(CaptioningSteps())
        return t
    monkeypatch.setattr(vt, "pooled_image_features", tagging_step)
    monkeypatch.setattr(rs, "sft_trainer", counted_trainer)
    out = tmp_path / "killed"
    with pytest.raises(Kill):  # in tagging
        pt.pretrain(recipe, out=out, progress=lambda m: None)
    ran["tagging"] = -100  # no more kills in tagging: the count now is of the steps the rerun does (+ 1)
    with pytest.raises(Kill):  # in captioning, tagging resumed from step 7 and done
        pt.pretrain(recipe, out=out, progress=lambda m: None)
    assert ran == {"tagging": -100 + 1 + 10 - 7, "captioning": 13}
    ran.update(tagging=0, captioning=0)
    stop_at["captioning"] = -1
    done = pt.pretrain(recipe, out=out, progress=lambda m: None)
    assert ran == {"tagging": 0, "captioning": 20 - 12}  # on from captioning's checkpoint at step 12
    ours, reference = _tensors(done.model), _tensors(whole.model)
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    assert done.manifest["captioning"] == whole.manifest["captioning"]  # its losses cover the whole run
    assert done.manifest["tagging"] == whole.manifest["tagging"]
    assert not (tmp_path / ".killed.work").exists()


# -- unime models pretrain-judge ----------------------------------------------------------------------------

def test_a_judge_run_killed_between_its_labelled_records_and_their_stats_is_finished_by_the_rerun(tmp_path,
                                                                                                   monkeypatch):
    """QA: `unime models pretrain-judge` SIGKILLed right after it wrote the work folder's judge_records.jsonl (before
    judge_records_stats.json): every rerun failed ("judge_records_stats.json: No such file or directory") until the
    work folder was removed by hand. Now the rerun draws the labelled records again: the same records and stats as
    the run that was not killed, and the judge's training starts on them."""
    class Stop(Exception):
        pass

    seen = []

    def training(config, **_):
        seen.append(config)
        raise Stop
    monkeypatch.setattr("unime.train.reranker_trainer.train_reranker", training)
    recipe, judge = PretrainRecipe.preset("quick"), pt.JudgePretrainRecipe.preset("quick")
    base = pt.PretrainResult(tmp_path / "base", True, {"key": recipe.key()})  # not loaded: the training is stubbed
    out = tmp_path / "judge"
    work = tmp_path / ".judge.work"
    with pytest.raises(Stop):  # the run that was not killed: its records and stats, written before the training
        pt.pretrain_judge(judge, recipe, out=out, base=base, progress=lambda m: None)
    records = (work / "judge_records.jsonl").read_bytes()
    stats = json.loads((work / "judge_records_stats.json").read_text(encoding="utf-8"))
    assert stats["records"] == len(records.splitlines()) > 0
    (work / "judge_records_stats.json").unlink()  # as the kill between the two files left the work folder
    with pytest.raises(Stop):
        pt.pretrain_judge(judge, recipe, out=out, base=base, progress=lambda m: None)
    assert (work / "judge_records.jsonl").read_bytes() == records
    assert json.loads((work / "judge_records_stats.json").read_text(encoding="utf-8")) == stats
    assert len(seen) == 2 and seen[1].records == [str(work / "judge_records.jsonl")]


def test_a_judge_run_killed_while_it_removed_its_work_folder_leaves_none_after_the_rerun(tmp_path, monkeypatch):
    """QA: `unime models pretrain-judge` SIGKILLed while it removed its work folder after publishing (a real kill
    right after the unlink of the folder's recipe.key): the rerun reused the judge but left the rest of the work
    folder (the corpus, the trainer's checkpoints) for good; without its stamp it was no longer recognisably
    unime's, so no later run removed it, and an --overwrite with another recipe into the same --out was refused.
    Now the stamp goes last: the rerun finishes the removal, whatever was removed before the kill."""
    import types

    class Killed(Exception):
        pass

    def training(config, **_):  # the judge's training, stubbed: a finished run's merged model
        (Path(config.out) / "merged").mkdir(parents=True)
        (Path(config.out) / "merged" / "model.safetensors").write_bytes(b"weights")
        return types.SimpleNamespace(steps=4, first_loss=1.0, last_loss=0.5, loss_levels=None, heldout=None)
    monkeypatch.setattr("unime.train.reranker_trainer.train_reranker", training)
    recipe, judge = PretrainRecipe.preset("quick"), pt.JudgePretrainRecipe.preset("quick")
    base = pt.PretrainResult(tmp_path / "base", True, {"key": recipe.key()})  # not loaded: the training is stubbed
    out, work = tmp_path / "judge", tmp_path / ".judge.work"
    unlink = os.unlink

    def unlink_then_kill(path, *a, **k):
        unlink(path, *a, **k)
        if Path(path).name == pt.WORK_KEY:
            raise Killed
    with monkeypatch.context() as mp:
        mp.setattr(os, "unlink", unlink_then_kill)
        with pytest.raises(Killed):
            pt.pretrain_judge(judge, recipe, out=out, base=base, progress=lambda m: None)
    assert (out / pt.MODEL_DIR / "model.safetensors").read_bytes() == b"weights"
    again = pt.pretrain_judge(judge, recipe, out=out, base=base, progress=lambda m: None)
    assert again.reused and not work.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["judge"]


def test_a_rerun_of_an_interrupted_judge_says_it_continues_and_what_it_kept(tmp_path, monkeypatch):
    """QA: a rerun after a kill printed the same lines as a first run (only the trainer's log named the checkpoint it
    resumed from, and nothing did before the first checkpoint): now it says it continues the interrupted run and
    what the work folder kept; a first run does not say so."""
    class Stop(Exception):
        pass

    def training(config, **_):
        raise Stop
    monkeypatch.setattr("unime.train.reranker_trainer.train_reranker", training)
    recipe, judge = PretrainRecipe.preset("quick"), pt.JudgePretrainRecipe.preset("quick")
    base = pt.PretrainResult(tmp_path / "base", True, {"key": recipe.key()})  # not loaded: the training is stubbed
    said: list[str] = []
    for _ in range(2):
        with pytest.raises(Stop):
            pt.pretrain_judge(judge, recipe, out=tmp_path / "judge", base=base, progress=said.append)
        said.append("-- killed")
    first, rerun = "\n".join(said).split("-- killed")[:2]
    assert "continuing" not in first
    assert (f"[pretrain] continuing the interrupted judge pretraining in {tmp_path / '.judge.work'} (kept there: "
            "corpus, judge_records.jsonl, judge_records_stats.json;") in rerun


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_rerun_that_finds_its_judge_trained_names_what_trains_it_again(tmp_path, monkeypatch, caplog, overwrite):
    """QA: after a `unime models pretrain-judge` whose publication was killed, the rerun's trainer logged "this judge
    run is finished ... (--overwrite starts it over)"; but pretrain-judge --overwrite with the same recipe publishes
    the judge its work folder holds as it is (as without it). Now the line says what does: removing the work
    folder."""
    from unime.models import run_state
    from unime.train import reranker_trainer

    class Published(Exception):
        pass

    def finished(out, options, **_):  # the judge's training finished in the work folder before the kill
        (Path(out) / reranker_trainer.METADATA_FILE).write_text(json.dumps({"role": "judge", "steps": 4}))
        return True

    def publish(*a, **k):
        raise Published
    monkeypatch.setattr(run_state, "check_run", finished)
    monkeypatch.setattr(pt, "_publish", publish)
    recipe, judge = PretrainRecipe.preset("quick"), pt.JudgePretrainRecipe.preset("quick")
    base = pt.PretrainResult(tmp_path / "base", True, {"key": recipe.key()})  # not loaded: the training is finished
    base.model.mkdir(parents=True)  # a missing local model folder is refused before the run is looked at
    with caplog.at_level(logging.INFO, logger=reranker_trainer.log.name), pytest.raises(Published):
        pt.pretrain_judge(judge, recipe, out=tmp_path / "judge", base=base, progress=lambda m: None,
                          overwrite=overwrite)
    said = [r.getMessage() for r in caplog.records if "is finished" in r.getMessage()]
    work = tmp_path / ".judge.work"
    assert said == [f"{work / 'judge'}: this judge run is finished (4 steps); nothing to do (it is published as it "
                    f"is; to train it again, remove {work})"]


def test_the_seconds_of_a_resumed_pretraining_count_every_attempt(tmp_path, monkeypatch):
    """QA: pretrain.json's `seconds` counted only the last attempt's time: a judge trained for hours, killed and
    resumed for minutes said minutes (and the demo's time estimates took it so). Each attempt records its seconds in
    the work folder, as it goes (what a SIGKILL leaves) and when it stops; the resumed one adds its own. Here a clock
    that moves only when the stubbed training says: 100 s, stopped; then 50 s to the finished judge: 150 s."""
    import time
    import types

    class Stop(Exception):
        pass

    now = [1000.0]
    monkeypatch.setattr(pt.time, "perf_counter", lambda: now[0])  # the time module's: the code before this fix too
    monkeypatch.setattr(pt, "SECONDS_EVERY", 0.01, raising=False)
    recorded = tmp_path / ".judge.work" / "seconds"

    def stopped(config, **_):  # 100 s of training, recorded while it runs; then stopped
        now[0] += 100
        deadline = time.monotonic() + 20
        while not (recorded.is_file() and recorded.read_text() == "100.0") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert recorded.read_text() == "100.0"  # what a SIGKILL here would leave
        raise Stop

    def finished(config, **_):  # 50 s more, to a finished judge
        now[0] += 50
        (Path(config.out) / "merged").mkdir(parents=True)
        (Path(config.out) / "merged" / "model.safetensors").write_bytes(b"weights")
        return types.SimpleNamespace(steps=4, first_loss=1.0, last_loss=0.5, loss_levels=None, heldout=None)

    recipe, judge = PretrainRecipe.preset("quick"), pt.JudgePretrainRecipe.preset("quick")
    base = pt.PretrainResult(tmp_path / "base", True, {"key": recipe.key()})  # not loaded: the training is stubbed
    monkeypatch.setattr("unime.train.reranker_trainer.train_reranker", stopped)
    with pytest.raises(Stop):
        pt.pretrain_judge(judge, recipe, out=tmp_path / "judge", base=base, progress=lambda m: None)
    monkeypatch.setattr("unime.train.reranker_trainer.train_reranker", finished)
    said: list[str] = []
    result = pt.pretrain_judge(judge, recipe, out=tmp_path / "judge", base=base, progress=said.append)
    assert result.manifest["seconds"] == 150.0
    assert json.loads((tmp_path / "judge" / pt.MANIFEST).read_text())["seconds"] == 150.0
    assert not (tmp_path / ".judge.work").exists()  # the recorded seconds went with the work folder
    assert "(kept there: corpus, judge_records.jsonl, judge_records_stats.json;" in "\n".join(said)  # not "seconds"
