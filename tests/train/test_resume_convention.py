"""One resume convention for the trainers (`unime.models.run_state`): re-running continues, a finished run
does nothing, a checkpoint at the last step is exported without an extra step, changed options are
refused with the keys listed, and the reported loss covers the whole run."""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.train.helpers import base_config

from unime.models.run_state import ChangedOptions, changed_options, step_log, whole_run_loss


def test_whole_run_loss_weights_each_logged_window_by_its_steps():
    # logged at steps 1, 4, 6 (+ the summary row and step 4 logged twice by a resume): windows 1, 3, 2
    history = [{"step": 1, "loss": 3.0}, {"step": 4, "loss": 2.0}, {"step": 4, "loss": 2.0},
               {"step": 6, "loss": 1.5}, {"step": 6, "train_runtime": 1.0, "train_loss": 9.9}]
    assert [r["step"] for r in step_log(history)] == [1, 4, 6]
    assert whole_run_loss(history) == pytest.approx((3.0 * 1 + 2.0 * 3 + 1.5 * 2) / 6)


def test_changed_options_compare_json_values_and_ignore_free_keys():
    before = {"lr": 0.002, "lora_targets": ["q_proj"], "logging_steps": 1}
    assert changed_options(before, {"lr": 0.002, "lora_targets": ("q_proj",), "logging_steps": 5},
                           free={"logging_steps"}) == []
    assert changed_options(before, {"lr": 0.001, "lora_targets": ["q_proj"], "logging_steps": 1, "new": 1},
                           free=()) == ["lr", "new"]


def test_paths_compare_by_what_they_name_and_out_is_never_compared(tmp_path, monkeypatch):
    """`ref`, `./ref`, `ref/` and the absolute path are one value (a run recorded with relative paths, as every
    run before this comparison did, continues from the same folder); another file is a change; strings that
    name nothing compare as they are."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()
    (tmp_path / "world").mkdir()
    for name in ("r.jsonl", "s.jsonl"):
        (tmp_path / name).write_text("{}\n")
    before = {"out": "ref", "model": "base", "records": "r.jsonl", "data_root": "world", "tasks": ["r.jsonl"],
              "source": {"images": "world"}, "loss": "auto"}
    now = {"out": str(tmp_path / "ref"), "model": "./base/", "records": str(tmp_path / "r.jsonl"),
           "data_root": "world/", "tasks": ["./r.jsonl"], "source": {"images": str(tmp_path / "world")}, "loss": "auto"}
    assert changed_options(before, now) == []
    assert changed_options(before, {**now, "out": "elsewhere"}) == []
    assert changed_options(before, {**now, "records": "s.jsonl", "tasks": ["s.jsonl"]}) == ["records", "tasks"]
    assert changed_options({"model": "org/name"}, {"model": "./org/name"}) == ["model"]  # no such folder: a hub id


def test_recorded_relative_paths_name_files_from_the_working_directory_the_run_recorded(tmp_path, monkeypatch):
    """QA: a run made in `here` with `--records r.jsonl`, re-run from another folder with the absolute path, was
    refused as other options (the recorded `r.jsonl` was looked up in the new working directory). Recorded with its
    working directory (`with_working_dir`), it names here/r.jsonl from anywhere; elsewhere/r.jsonl is another file.
    A record without it (an earlier unime) compares as run from the current folder, as before; so does one whose
    folder no longer holds the file (moved since)."""
    from unime.errors import WORKING_DIR, with_working_dir

    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    for folder in (here, elsewhere):
        (folder / "base").mkdir(parents=True)
        (folder / "r.jsonl").write_text("{}\n")
    monkeypatch.chdir(here)
    before = with_working_dir({"model": "base", "records": "r.jsonl", "tasks": ["r.jsonl"], "loss": "auto"})
    assert Path(before[WORKING_DIR]) == here.resolve() and before["records"] == "r.jsonl"  # the options stay as typed
    monkeypatch.chdir(elsewhere)
    absolute = {"model": str(here / "base"), "records": str(here / "r.jsonl"), "tasks": [str(here / "r.jsonl")],
                "loss": "auto"}
    assert changed_options(before, absolute) == []
    assert changed_options(before, {**absolute, WORKING_DIR: str(elsewhere)}) == []  # a record on both sides
    assert changed_options(before, {"model": "base", "records": "r.jsonl", "tasks": ["r.jsonl"], "loss": "auto"}) \
        == ["model", "records", "tasks"]  # the same words, other files
    old = {k: v for k, v in before.items() if k != WORKING_DIR}
    assert changed_options(old, absolute) == ["model", "records", "tasks"]
    monkeypatch.chdir(here)
    assert changed_options(old, absolute) == []
    shutil.rmtree(here)  # the recorded folder holds nothing by these names any more: from the current folder
    monkeypatch.chdir(elsewhere)
    assert changed_options(before, {"model": "./base/", "records": str(elsewhere / "r.jsonl"), "tasks": ["r.jsonl"],
                                    "loss": "auto"}) == []


def test_an_option_the_earlier_run_did_not_record_is_no_change_at_its_default():
    # a run recorded by an earlier version of unime, before `dora` existed: it ran without DoRA
    before = {"lr": 0.002, "removed": 1}
    now = {"lr": 0.002, "dora": False}
    assert changed_options(before, now, free=(), added_defaults={"dora": False}) == ["removed"]
    assert changed_options(before, {**now, "dora": True}, free=(), added_defaults={"dora": False}) == \
        ["dora", "removed"]
    assert changed_options(before, now, free=()) == ["dora", "removed"]  # without the defaults: a change
    # a recorded key differs whatever its default
    assert changed_options({"dora": True}, {"dora": False}, free=(), added_defaults={"dora": False}) == ["dora"]


def test_a_refusal_names_the_options_a_user_gives_not_the_config_fields(tmp_path):
    """QA: the reranker / judge refusal said `learning_rate`, `num_negatives`, `batch_size` for --lr,
    --negatives, --batch-size on the command line; and from Python it named those flags, not the keywords given
    (`learning_rate`, `overwrite=True`)."""
    from dataclasses import asdict

    from unime.cli import build_parser
    from unime.cli.failures import describe
    from unime.models import run_state
    from unime.options import option_flags
    from unime.train.reranker_trainer import RerankerTrainConfig

    before = RerankerTrainConfig(model="m", records=["r.jsonl"], out=str(tmp_path))
    now = RerankerTrainConfig(model="m", records=["r.jsonl"], out=str(tmp_path), learning_rate=1e-3, num_negatives=3,
                              batch_size=8)
    run_state.write_config(tmp_path, asdict(before))
    with pytest.raises(ChangedOptions) as refused:
        run_state.plan_run(tmp_path, asdict(now), free=(), overwrite=False, finished_file="done.json", config=now)
    assert str(refused.value) == (f"{tmp_path} holds a run with other options (batch_size: 4 -> 8, learning_rate: "
                                  "0.0001 -> 0.001, num_negatives: 4 -> 3); re-run with the same options to continue "
                                  "it, pass overwrite=True to start over, or choose another out")
    assert describe(refused.value, "train reranker") == (
        f"{tmp_path} holds a run with other options (--batch-size: 4 -> 8, --lr: 0.0001 -> 0.001, --negatives: 4 -> "
        "3); re-run with the same options to continue it, pass --overwrite to start over, or choose another --out")
    # each flag named is one that `train reranker` or `train judge` (one config) takes
    sub = build_parser()._subparsers._group_actions[0].choices["train"]._subparsers._group_actions[0].choices
    taken = {s for cmd in ("reranker", "judge") for a in sub[cmd]._actions for s in a.option_strings}
    flags = option_flags(RerankerTrainConfig)
    assert set(flags.values()) <= taken and len(flags) > 30


def test_an_option_given_at_what_its_none_stands_for_is_the_option_unset():
    from unime.options import none_meanings
    from unime.train.embedder_config import EmbedderTrainingConfig

    means = {"video_frames": 8}
    assert changed_options({"video_frames": None}, {"video_frames": 8}, free=(), none_means=means) == []
    assert changed_options({"video_frames": 8}, {"video_frames": None}, free=(), none_means=means) == []
    assert changed_options({"video_frames": None}, {"video_frames": 4}, free=(), none_means=means) == ["video_frames"]
    assert changed_options({"video_frames": None}, {"video_frames": 8}, free=()) == ["video_frames"]  # undeclared
    # not recorded by an earlier version: given at what its None stands for is its default
    assert changed_options({}, {"video_frames": 8}, free=(), added_defaults={"video_frames": None},
                           none_means=means) == []
    # what the video options declare: VideoSampling's defaults (8 frames, at most 64, 32 x 448 x 448 pixels)
    assert none_meanings(EmbedderTrainingConfig) == {"video_frames": 8, "video_max_frames": 64,
                                                     "video_max_pixels": 32 * 448 * 448}


def _complete_checkpoint(folder: Path, step: int) -> Path:
    """A checkpoint folder `checkpoint_problem` accepts: weights, optimizer, scheduler, RNG state, trainer state."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({}, folder / name)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def _plan(out: Path, **kw):
    from unime.models.run_state import plan_run

    return plan_run(out, {"lr": 1.0}, free=("resume", "overwrite"), finished_file="metrics.json",
                    **{"overwrite": False, **kw})


def test_the_resume_refusals_name_the_field_from_python_and_the_flag_on_the_command_line(tmp_path):
    """QA: from Python, `train_embedder(resume=...)` refused "--resume X: no such checkpoint folder" and "which
    --overwrite discards", options the Python API does not have: the fields there (resume, overwrite=True), the
    flags on the command line."""
    from unime.cli.failures import describe
    from unime.errors import OptionError
    from unime.models.run_state import write_config
    from unime.train.embedder_config import EmbedderTrainingConfig

    missing = tmp_path / "does-not-exist"
    config = EmbedderTrainingConfig(model="m", records="r.jsonl", out=str(tmp_path / "new"), resume=str(missing))
    with pytest.raises(OptionError) as caught:
        _plan(tmp_path / "new", resume=missing, config=config)
    assert str(caught.value) == f"resume {missing}: no such checkpoint folder"
    assert describe(caught.value, "train embedder") == f"train embedder: --resume {missing}: no such checkpoint folder"
    out = tmp_path / "run"
    write_config(out, {"lr": 1.0})
    own = _complete_checkpoint(out / "checkpoints" / "checkpoint-5", 5)
    with pytest.raises(OptionError) as caught:
        _plan(out, resume=own, overwrite=True, config=config)
    said = f"%s {own} is one of the checkpoints of {out}, which %s discards: copy it elsewhere first, or continue " \
        "the run without %s"
    assert str(caught.value) == said % ("resume", "overwrite=True", "overwrite=True")
    assert describe(caught.value) == said % ("--resume", "--overwrite", "--overwrite")
    assert own.is_dir()


def test_the_other_global_batch_warning_names_the_fields_from_python_and_the_flags_on_the_command_line(
        tmp_path, caplog):
    """QA: the warning of a run continued on another number of processes said "--batch-size 2 x ... --global-batch N
    keeps it fixed" from Python too; it names the fields there, the flags in a command of `unime`."""
    from unime.models.run_state import PROCESSES_KEY, warn_other_global_batch, write_config
    from unime.options import command_line_wording
    from unime.train.embedder_config import EmbedderTrainingConfig

    write_config(tmp_path, {"lr": 1.0, PROCESSES_KEY: 2})
    said = f"{tmp_path}: continuing a run trained at a global batch of 12 (%s 2 x 2 process(es) x %s 3) at 6 on 1 " \
        "process(es) from here on; %s keeps it fixed across process counts"
    for surface, names in [(contextlib.nullcontext(), ("batch_size", "grad_accum", "global_batch")),
                           (command_line_wording(), ("--batch-size", "--grad-accum", "--global-batch"))]:
        caplog.clear()
        with surface, caplog.at_level(logging.WARNING):
            warn_other_global_batch(tmp_path, batch_size=2, grad_accum=3, processes=1, fixed_by="global_batch",
                                    config=EmbedderTrainingConfig)
        assert [r.getMessage() for r in caplog.records] == [said % names]


def test_an_explicit_resume_checkpoint_is_continued_from_in_a_new_out_with_overwrite_and_over_a_finished_run(
        tmp_path):
    from unime.models.run_state import write_config
    from unime.outdir import claim

    ckpt = _complete_checkpoint(tmp_path / "other" / "checkpoints" / "checkpoint-10", 10)
    assert _plan(tmp_path / "new", resume=ckpt).checkpoint == ckpt  # a new OUT
    assert _plan(tmp_path / "new", resume=str(ckpt)).checkpoint == ckpt
    done = tmp_path / "done"  # a finished run with the same options, in a folder the trainer created
    claim(done, "train embedder").release()
    write_config(done, {"lr": 1.0})
    for name in ("metrics.json", "README.md"):
        (done / name).write_text("{}")
    (done / "merged").mkdir()
    assert _plan(done).finished
    plan = _plan(done, resume=ckpt)
    assert not plan.finished and plan.checkpoint == ckpt and not (done / "metrics.json").exists()
    # --overwrite (also with other options) starts over from it
    _complete_checkpoint(done / "checkpoints" / "checkpoint-5", 5)
    plan = _plan(done, resume=ckpt, overwrite=True)
    assert plan.checkpoint == ckpt and not list((done / "checkpoints").glob("checkpoint-*"))


def test_a_missing_or_incomplete_resume_checkpoint_is_refused(tmp_path):
    from unime.errors import UnimeError
    from unime.models.run_state import write_config

    with pytest.raises(UnimeError, match=r"--resume .*does-not-exist: no such checkpoint folder"):
        _plan(tmp_path / "new", resume=tmp_path / "does-not-exist")
    ckpt = _complete_checkpoint(tmp_path / "other" / "checkpoint-10", 10)
    (ckpt / "optimizer.pt").unlink()
    with pytest.raises(UnimeError, match=r"not a complete checkpoint folder \(missing optimizer.pt\)"):
        _plan(tmp_path / "new", resume=ckpt, overwrite=True)
    # one of OUT's own checkpoints, which --overwrite would discard: refused, the checkpoint kept
    out = tmp_path / "run"
    write_config(out, {"lr": 1.0})
    own = _complete_checkpoint(out / "checkpoints" / "checkpoint-5", 5)
    with pytest.raises(UnimeError, match="which --overwrite discards"):
        _plan(out, resume=own, overwrite=True)
    assert own.is_dir()
    assert _plan(out, resume=own).checkpoint == own  # without --overwrite: continued from


def test_a_run_is_not_continued_or_finished_on_other_record_content(tmp_path):
    """The records' content (the config's `option(input_file=True)` files) is recorded when a run begins; a re-run
    with the same options on other content is refused naming the file, interrupted or finished; --overwrite starts
    over and records the new content; a run recorded before there was such a record continues (and is recorded)."""
    import hashlib
    import json
    from dataclasses import dataclass

    from unime.models.run_state import INPUTS_FILE, finished_run, write_config
    from unime.options import option
    from unime.outdir import claim

    @dataclass
    class Config:
        records: str = option(None, input_file=True)
        lr: float = option(1.0)

    recs = tmp_path / "recs.jsonl"
    recs.write_text('{"id": 1}\n')
    cfg, out = Config(str(recs)), tmp_path / "run"
    claim(out, "train embedder").release()
    assert _plan(out, config=cfg).checkpoint is None
    write_config(out, {"lr": 1.0})
    sha1 = hashlib.sha1(b'{"id": 1}\n').hexdigest()
    assert json.loads((out / INPUTS_FILE).read_text()) == {"records": [[str(recs), sha1]]}
    ckpt = _complete_checkpoint(out / "checkpoints" / "checkpoint-5", 5)
    assert _plan(out, config=cfg).checkpoint == ckpt  # the same content: continued
    recs.write_text('{"id": 2}\n')
    with pytest.raises(ChangedOptions, match=rf"other input content: records {recs} changed since .*overwrite=True"):
        _plan(out, config=cfg)
    for name in ("metrics.json", "README.md"):  # finished: not finished on other content either
        (out / name).write_text("{}")
    (out / "merged").mkdir()
    assert not finished_run(out, {"lr": 1.0}, free=(), overwrite=False, finished_file="metrics.json", config=cfg)
    with pytest.raises(ChangedOptions, match="other input content"):
        _plan(out, config=cfg)
    plan = _plan(out, config=cfg, overwrite=True)
    assert plan.checkpoint is None and not list((out / "checkpoints").glob("checkpoint-*"))
    assert json.loads((out / INPUTS_FILE).read_text())["records"][0][1] == hashlib.sha1(b'{"id": 2}\n').hexdigest()
    # recorded by an earlier unime (no record of its inputs): finished is finished, an interrupted run continues
    (out / INPUTS_FILE).unlink()
    (out / "metrics.json").write_text("{}")
    assert finished_run(out, {"lr": 1.0}, free=(), overwrite=False, finished_file="metrics.json", config=cfg)
    (out / "metrics.json").unlink()
    ckpt = _complete_checkpoint(out / "checkpoints" / "checkpoint-5", 5)
    assert _plan(out, config=cfg).checkpoint == ckpt and (out / INPUTS_FILE).is_file()  # and now recorded


def test_the_refusals_of_changed_records_and_of_unknown_options_name_fields_from_python_flags_on_the_cli(tmp_path):
    """From Python, a re-run on other records content and a folder holding a run without its train_config.json named
    the command line's --records, --overwrite, --out; they name the fields given (records, overwrite=True, out), and
    the command line keeps its wording."""
    from dataclasses import asdict

    from unime.cli.failures import describe
    from unime.models import run_state
    from unime.train.reranker_trainer import RerankerTrainConfig

    recs, out = tmp_path / "r.jsonl", tmp_path / "run"
    recs.write_text('{"id": 1}\n')
    cfg = RerankerTrainConfig(model="m", records=[str(recs)], out=str(out))

    def plan():
        return run_state.plan_run(out, asdict(cfg), free=(), overwrite=False, finished_file="done.json", config=cfg)

    run_state.write_config(out, asdict(cfg))
    plan()
    recs.write_text('{"id": 2}\n')
    with pytest.raises(ChangedOptions) as refused:
        plan()
    said = f"{out} holds a run trained on other input content: %s {recs} changed since that run began; pass %s to " \
           "start over, or choose another %s"
    assert str(refused.value) == said % ("records", "overwrite=True", "out")
    assert describe(refused.value, "train reranker") == said % ("--records", "--overwrite", "--out")
    (out / run_state.CONFIG_FILE).unlink()  # a run whose options are unknown
    (out / "done.json").write_text("{}")
    with pytest.raises(ChangedOptions) as refused:
        plan()
    said = f"{out} holds checkpoints or outputs of a run whose options are unknown (no train_config.json); pass %s " \
           "to start over, or choose another %s"
    assert str(refused.value) == said % ("overwrite=True", "out")
    assert describe(refused.value, "train reranker") == said % ("--overwrite", "--out")
    with pytest.raises(ChangedOptions) as refused:  # without a config (a caller that has none): the flags
        run_state.plan_run(out, asdict(cfg), free=(), overwrite=False, finished_file="done.json")
    assert str(refused.value) == said % ("--overwrite", "--out")


def test_every_trainer_declares_its_records_as_input_files():
    from dataclasses import fields

    from unime.embed_rl.grpo import GRPOStageConfig
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig
    from unime.train.embedder_config import EmbedderTrainingConfig
    from unime.train.reranker_trainer import RerankerTrainConfig

    declared = {c.__name__: [f.name for f in fields(c) if f.metadata.get("input_file")]
                for c in (EmbedderTrainingConfig, RerankerTrainConfig, ReasonerSFTConfig, GRPOStageConfig)}
    assert declared == {"EmbedderTrainingConfig": ["records"], "RerankerTrainConfig": ["records"],
                        "ReasonerSFTConfig": ["data"], "GRPOStageConfig": ["records"]}


def _final_outputs_removed(out: Path, names) -> None:
    """The state a kill (or a full disk) during the export leaves: the last checkpoint is complete, the
    final folders are not."""
    for name in names:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def test_embedder_rerun_finished_export_interrupted_and_changed_options(tiny_model_dir, mined_world, tmp_path, caplog):
    from unime.data.io import read_records
    from unime.train.embedder_trainer import train_embedder

    world, path = mined_world
    records = read_records(path)[:8]
    model = tiny_model_dir("qwen2_vl")
    cfg = dict(steps=3, save_steps=1, batch_size=4, logging_steps=1)
    straight = train_embedder(base_config(model, tmp_path / "a", world, **cfg), records=records)
    assert straight.metrics["steps"] == 3

    # a finished run: re-running the same command says so and trains nothing
    adapter = tmp_path / "a" / "adapter" / "adapter_model.safetensors"
    mtime = adapter.stat().st_mtime_ns
    again = train_embedder(base_config(model, tmp_path / "a", world, **cfg), records=records)
    assert again.metrics["already_finished"] is True and again.metrics["steps"] == 3
    assert adapter.stat().st_mtime_ns == mtime
    # the video options' defaults given explicitly (`--video-frames 8`) are the same options
    explicit = train_embedder(base_config(model, tmp_path / "a", world, **cfg, video_frames=8, video_max_frames=64),
                              records=records)
    assert explicit.metrics["already_finished"] is True and adapter.stat().st_mtime_ns == mtime

    # recorded by an earlier version that had no `dora` option: the same command still finds it finished; a
    # missing option the command sets away from its default (lr) is a change
    import json

    recorded = tmp_path / "a" / "train_config.json"
    full = recorded.read_text()
    older = json.loads(full)
    del older["dora"]
    recorded.write_text(json.dumps(older))
    assert train_embedder(base_config(model, tmp_path / "a", world, **cfg), records=records).metrics["already_finished"]
    del older["lr"]
    recorded.write_text(json.dumps(older))
    with pytest.raises(ChangedOptions, match=r"lr: None -> 0.002"):
        train_embedder(base_config(model, tmp_path / "a", world, **cfg), records=records)
    recorded.write_text(full)
    assert adapter.stat().st_mtime_ns == mtime

    # killed during the export: checkpoint-3 is the last step; the re-run exports it, no step 4
    train_embedder(base_config(model, tmp_path / "b", world, **cfg), records=records)
    _final_outputs_removed(tmp_path / "b", ["adapter", "merged", "README.md", "metrics.json"])
    resumed = train_embedder(base_config(model, tmp_path / "b", world, **cfg), records=records)
    assert resumed.metrics["steps"] == 3 and [r["step"] for r in step_log(resumed.log_history)] == [1, 2, 3]
    a, b = load_file(adapter), load_file(tmp_path / "b" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # resumed metrics cover the whole run
    assert resumed.metrics["train_loss"] == pytest.approx(straight.metrics["train_loss"], rel=1e-6)
    assert resumed.metrics["initial_loss"] == pytest.approx(straight.metrics["initial_loss"], rel=1e-6)

    # changed options: refused with the keys listed; nothing is touched
    with pytest.raises(ChangedOptions, match=r"\(lr: 0.002 -> 0.001.*pass overwrite=True"):
        train_embedder(base_config(model, tmp_path / "a", world, **cfg, lr=1e-3), records=records)
    assert adapter.stat().st_mtime_ns == mtime
    # --overwrite starts over with the new options: the run's checkpoint-N folders and model files are replaced,
    # what the user put beside them stays (named in a warning)
    (tmp_path / "a" / "checkpoints" / "my-best-copy").mkdir()
    (tmp_path / "a" / "checkpoints" / "my-best-copy" / "NOTE.txt").write_text("kept")
    (tmp_path / "a" / "merged" / "EVAL_NOTES.txt").write_text("mine")
    stale_step = (tmp_path / "a" / "checkpoints" / "checkpoint-3" / "trainer_state.json").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING):
        over = train_embedder(base_config(model, tmp_path / "a", world, **cfg, lr=1e-3, overwrite=True),
                              records=records)
    assert over.metrics["steps"] == 3 and "already_finished" not in over.metrics
    assert (tmp_path / "a" / "checkpoints" / "my-best-copy" / "NOTE.txt").read_text() == "kept"
    assert (tmp_path / "a" / "merged" / "EVAL_NOTES.txt").read_text() == "mine"
    assert (tmp_path / "a" / "checkpoints" / "checkpoint-3" / "trainer_state.json").stat().st_mtime_ns != stale_step
    messages = [r.getMessage() for r in caplog.records]
    assert any("checkpoints: left as they were (the run's own checkpoint-N folders were deleted, to start over): "
               "my-best-copy" in m for m in messages)
    assert any("merged: left as they were beside the model just written: EVAL_NOTES.txt" in m for m in messages)
    assert not torch.equal(load_file(adapter)[next(iter(a))], a[next(iter(a))])


def test_embedder_rerun_from_another_working_directory_with_absolute_paths_is_the_same_run(
        tiny_model_dir, mined_world, tmp_path, monkeypatch, capsys):
    """QA: `unime train embedder --model q/models/base --records q/r.jsonl --out runs/e` killed, then re-run from
    another folder with the same files named by absolute paths, was refused as "a run with other options" (and
    the --overwrite offered discards its checkpoints). Now it continues the run (and a finished run is finished);
    a model at another path is still another option; a run recorded before the working directory was (relative
    paths only) continues from the folder it was made in."""
    import json
    import os

    from unime.cli import main

    world, records = mined_world
    model = tiny_model_dir("qwen2_vl")
    here, elsewhere = tmp_path / "here", tmp_path / "else" / "where"  # not as deep: "../../m" names another folder
    here.mkdir()
    elsewhere.mkdir(parents=True)

    def argv(model, records, world, out):
        return ["train", "embedder", "--model", model, "--records", records, "--data-root", world, "--out", out,
                "--steps", "2", "--save-steps", "1", "--batch-size", "4", "--device", "cpu"]

    monkeypatch.chdir(here)
    relative = argv(os.path.relpath(model), os.path.relpath(records), os.path.relpath(world), "runs/e")
    assert main(relative) == 0
    run = here / "runs" / "e"
    absolute = argv(model, str(records), str(world), str(run))
    adapter = run / "adapter" / "adapter_model.safetensors"
    mtime = adapter.stat().st_mtime_ns
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(absolute) == 0  # finished: nothing to do
    assert adapter.stat().st_mtime_ns == mtime and not (elsewhere / "runs").exists()
    # the options as typed, and where from
    full = (run / "train_config.json").read_text()
    recorded = json.loads(full)
    assert recorded["model"] == os.path.relpath(model, here) and recorded["working_dir"] == str(here.resolve())
    # recorded by an earlier unime (no working directory): from the folder it was made in, the same run
    del recorded["working_dir"]
    (run / "train_config.json").write_text(json.dumps(recorded))
    monkeypatch.chdir(here)
    assert main(relative) == 0 and adapter.stat().st_mtime_ns == mtime
    (run / "train_config.json").write_text(full)
    monkeypatch.chdir(elsewhere)
    # killed during the export: continued from checkpoint-2, no step more
    _final_outputs_removed(run, ["adapter", "merged", "README.md", "metrics.json"])
    assert main(absolute) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    mtime = adapter.stat().st_mtime_ns
    # another model folder (the same files, at another path) is another option
    shutil.copytree(model, elsewhere / "model")
    capsys.readouterr()
    assert main(argv(str(elsewhere / "model"), str(records), str(world), str(run))) == 2
    assert "holds a run with other options (--model: " in capsys.readouterr().err
    assert adapter.stat().st_mtime_ns == mtime


def test_embedder_rerun_of_a_finished_global_batch_run_trains_nothing(tiny_model_dir, mined_world, tmp_path):
    """`--global-batch 4` sets the per-device batch (4 on one process); the run records that. The re-run compared
    the unresolved --batch-size (its default 8) with it, found the run unfinished, and trained it again from
    step 0, replacing its export."""
    from unime.data.io import read_records
    from unime.errors import UnimeError
    from unime.train.embedder_trainer import prepare_embedder_training, train_embedder

    world, path = mined_world
    records = read_records(path)[:8]
    model = tiny_model_dir("qwen2_vl")
    cfg = dict(steps=2, batch_size=8, global_batch=4)  # batch_size: the option's default, not what the run uses
    first = train_embedder(base_config(model, tmp_path / "g", world, **cfg), records=records)
    assert first.metrics["steps"] == 2
    adapter = tmp_path / "g" / "adapter" / "adapter_model.safetensors"
    mtime = adapter.stat().st_mtime_ns
    again = train_embedder(base_config(model, tmp_path / "g", world, **cfg), records=records)
    assert again.metrics.get("already_finished") is True and adapter.stat().st_mtime_ns == mtime
    # building the trainer of a finished run is refused (it trained it from scratch)
    with pytest.raises(UnimeError, match="finished run"):
        prepare_embedder_training(base_config(model, tmp_path / "g", world, **cfg), records=records)
    assert adapter.stat().st_mtime_ns == mtime


def test_global_batch_run_on_another_number_of_processes(tiny_model_dir, mined_world, tmp_path, monkeypatch):
    """The per-device batch train_config.json records is derived from --global-batch and the process count: a
    finished run is finished on any count; an interrupted --homogeneous-batches run (batches cut at the per-device
    size, so the data order follows it) is refused on another count, the message saying why and with how many
    processes to resume it (it named `batch_size: 4 -> 2`, an option the user never set)."""
    from unime.cli.failures import describe
    from unime.data.io import read_records
    from unime.train.embedder_trainer import train_embedder

    world, path = mined_world
    records = read_records(path)
    model = tiny_model_dir("qwen2_vl")
    cfg = dict(steps=2, global_batch=4, homogeneous_batches=True)
    out = tmp_path / "h"
    train_embedder(base_config(model, out, world, **cfg), records=records)  # 1 process: 4 queries per device
    adapter = out / "adapter" / "adapter_model.safetensors"
    mtime = adapter.stat().st_mtime_ns
    monkeypatch.setenv("WORLD_SIZE", "2")  # a re-run on 2 processes: 2 queries per device
    again = train_embedder(base_config(model, out, world, **cfg), records=records)
    assert again.metrics.get("already_finished") is True and adapter.stat().st_mtime_ns == mtime
    _final_outputs_removed(out, ["adapter", "merged", "README.md", "metrics.json"])
    with pytest.raises(ChangedOptions) as refused:
        train_embedder(base_config(model, out, world, **cfg), records=records)
    said = f"{out} holds a run on 1 process(es) and this one has 2: the per-device batch is derived from %s 4 and " \
           "the number of processes (4 then, 2 now), and %s cuts the batches at that size, so the data order " \
           "differs; resume it with 1 process(es), pass %s to start over, or choose another %s"
    # from Python the fields given (it named the command line's flags), on the command line the flags
    assert str(refused.value) == said % ("global_batch", "homogeneous_batches", "overwrite=True", "out")
    assert describe(refused.value, "train embedder") == \
        said % ("--global-batch", "--homogeneous-batches", "--overwrite", "--out")


def test_a_batch_size_run_continued_on_another_number_of_processes_warns_of_its_new_global_batch(
        tiny_model_dir, mined_world, tmp_path, caplog):
    """A run of a per-device --batch-size (no --global-batch) continued on another number of processes trains at
    another global batch from there on (per device x processes x accumulation); it did so silently. The run records
    its process count; the continuation warns in one line with both global batches (not refused: a resize is
    legitimate). The recorded count is faked: 2 processes then, this one process now."""
    import json

    from unime.data.io import read_records
    from unime.train.embedder_trainer import prepare_embedder_training, train_embedder

    world, path = mined_world
    records = read_records(path)[:8]
    model = tiny_model_dir("qwen2_vl")
    cfg = dict(steps=2, save_steps=1, batch_size=2, grad_accum=3)
    out = tmp_path / "p"
    train_embedder(base_config(model, out, world, **cfg), records=records)
    recorded = out / "train_config.json"
    options = json.loads(recorded.read_text())
    assert options["processes"] == 1
    _final_outputs_removed(out, ["adapter", "merged", "README.md", "metrics.json"])  # interrupted in its export
    with caplog.at_level(logging.WARNING):  # the same count: nothing to say
        prepare_embedder_training(base_config(model, out, world, **cfg), records=records)
    assert not [r for r in caplog.records if "global batch" in r.getMessage()]
    recorded.write_text(json.dumps({**options, "processes": 2}))
    with caplog.at_level(logging.WARNING):
        run = prepare_embedder_training(base_config(model, out, world, **cfg), records=records)
    assert run.resume_from is not None and run.resume_from.name == "checkpoint-2"
    lines = [r.getMessage() for r in caplog.records if "global batch" in r.getMessage()]
    # 2 per device x 2 processes x 3 accumulation = 12 then; 2 x 1 x 3 = 6 now
    assert lines == [f"{out}: continuing a run trained at a global batch of 12 (batch_size 2 x 2 process(es) x "
                     "grad_accum 3) at 6 on 1 process(es) from here on; global_batch keeps it fixed across "
                     "process counts"]  # from Python: the fields (`test_the_other_global_batch_warning_names_...`)


def test_a_reranker_run_continued_on_another_number_of_processes_warns_of_its_new_global_batch(
        tiny_model_dir, tmp_path, caplog):
    """The reranker / judge (and reasoner SFT) take a per-device --batch-size too: a run continued on another
    number of processes trains at another global batch from there on; it did so silently. The run records its
    process count; the continuation warns in one line with both global batches, as the embedder's
    (`run_state.warn_other_global_batch`). The recorded count is faked: 2 processes then, this one process now."""
    import json

    import unime.train.reranker_trainer as T
    from tests.train.helpers import write_world

    records = write_world(tmp_path)
    out = tmp_path / "r"
    cfg = T.RerankerTrainConfig(model=tiny_model_dir("qwen2_vl"), records=[records], out=str(out), num_negatives=2,
                                max_steps=2, batch_size=2, grad_accum=3, logging_steps=1, save_steps=1,
                                device="cpu", keep_checkpoints=True)
    T.train_reranker(cfg)
    recorded = out / "train_config.json"
    options = json.loads(recorded.read_text())
    assert options["processes"] == 1
    _final_outputs_removed(out, ["adapter", "README.md", T.METADATA_FILE])  # interrupted in its export
    with caplog.at_level(logging.WARNING):  # the same count: nothing to say
        T.train_reranker(cfg)
    # (its 4 records are fewer than the global batch of 6: that is warned too, `unime.train.global_batch`)
    assert not [r for r in caplog.records if "continuing a run" in r.getMessage()]
    assert json.loads(recorded.read_text())["processes"] == 1
    _final_outputs_removed(out, ["adapter", "README.md", T.METADATA_FILE])
    recorded.write_text(json.dumps({**options, "processes": 2}))
    with caplog.at_level(logging.WARNING):
        resumed = T.train_reranker(cfg)
    assert resumed.steps == 2
    lines = [r.getMessage() for r in caplog.records if "continuing a run" in r.getMessage()]
    # 2 per device x 2 processes x 3 accumulation = 12 then; 2 x 1 x 3 = 6 now
    assert lines == [f"{out}: continuing a run trained at a global batch of 12 (batch_size 2 x 2 process(es) x "
                     "grad_accum 3) at 6 on 1 process(es) from here on; resume it with 2 process(es) to keep it"]
    assert json.loads(recorded.read_text())["processes"] == 1  # the count it continued on


def test_reranker_checkpoint_at_the_last_step_is_exported_without_an_extra_step(tiny_model_dir, tmp_path):
    import unime.train.reranker_trainer as T
    from tests.train.helpers import write_world

    records = write_world(tmp_path)

    def config(out, lr=1e-2):
        return T.RerankerTrainConfig(model=tiny_model_dir("qwen2_vl"), records=[records], out=str(out),
                                     num_negatives=2, learning_rate=lr, max_steps=2, batch_size=2, logging_steps=1,
                                     save_steps=1, lora_dropout=0.0, device="cpu", keep_checkpoints=True)

    straight = T.train_reranker(config(tmp_path / "a"))
    T.train_reranker(config(tmp_path / "b"))
    _final_outputs_removed(tmp_path / "b", ["adapter", "README.md", T.METADATA_FILE])
    assert (tmp_path / "b" / "checkpoints" / "checkpoint-2").is_dir()
    resumed = T.train_reranker(config(tmp_path / "b"))
    assert resumed.steps == 2 and [h["step"] for h in resumed.log_history] == [1, 2]
    a = load_file(tmp_path / "a" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.last_loss == pytest.approx(straight.last_loss, rel=1e-6)
    with pytest.raises(ChangedOptions, match=r"\(learning_rate: 0.01 -> 0.001"):  # from Python: the field
        T.train_reranker(config(tmp_path / "a", lr=1e-3))


def test_reasoner_sft_follows_the_same_convention(tiny_model_dir, tmp_path, monkeypatch):
    """Checkpoints live inside --out (nothing beside it); a run that died while exporting its final
    folder continues at its last step without an extra one; a finished run does nothing."""
    import unime.models.export as export
    from tests.embed_rl.helpers import TCOT
    from unime.data.items import Item
    from unime.reasoning.reasoner import TCoTRow, write_tcot_rows
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, train_reasoner_sft

    write_tcot_rows([TCoTRow("r0", "query", Item(text="a red circle"), TCOT)], tmp_path / "t.jsonl")

    def config(out, **kw):
        return ReasonerSFTConfig(model=tiny_model_dir("qwen2_vl"), data=str(tmp_path / "t.jsonl"), out=str(out),
                                 max_steps=2, lora_r=0, device="cpu", logging_steps=1, save_steps=1,
                                 learning_rate=1e-3, **kw)

    straight = train_reasoner_sft(config(tmp_path / "a"))
    real = export.merged_dir

    def dying_export(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "merged_dir", dying_export)
    with pytest.raises(OSError):
        train_reasoner_sft(config(tmp_path / "b"))
    monkeypatch.setattr(export, "merged_dir", real)
    assert (tmp_path / "b" / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "t.jsonl"]  # nothing beside --out
    resumed = train_reasoner_sft(config(tmp_path / "b"))
    assert resumed["steps"] == 2 and resumed["last_loss"] == pytest.approx(straight["last_loss"], rel=1e-6)
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-6)
    a = load_file(tmp_path / "a" / "merged" / "model.safetensors")
    b = load_file(tmp_path / "b" / "merged" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "b" / "checkpoints" / "checkpoint-2").is_dir()  # kept, as by every trainer
    mtime = (tmp_path / "b" / "merged" / "model.safetensors").stat().st_mtime_ns
    assert train_reasoner_sft(config(tmp_path / "b")) == resumed  # finished: nothing to do
    assert (tmp_path / "b" / "merged" / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(ChangedOptions, match=r"\(max_steps: 2 -> 3"):
        train_reasoner_sft(ReasonerSFTConfig(**{**config(tmp_path / "b").__dict__, "max_steps": 3}))


# -- the four trainers, one convention ------------------------------------------------------------------
def _trainer_runs(name: str, tiny_model_dir, data: Path, tiny_world_dir):
    """(run(out, **overrides) -> result, the option changed in the changed-options check, the finished
    marker) of trainer `name`, on a tiny Qwen2-VL: 2 steps, a checkpoint after each."""
    model = tiny_model_dir("qwen2_vl")
    if name == "embedder":
        from tests.conftest import mined_world_records
        from unime.train.embedder_trainer import train_embedder

        world = tiny_world_dir(0)  # the session's seed-0 tiny world, read only
        records = mined_world_records(world)[:8]
        return (lambda out, **kw: train_embedder(base_config(model, out, world, steps=2, save_steps=1,
                                                             **kw), records=records)), "lr", "metrics.json"
    if name == "reranker":
        import unime.train.reranker_trainer as T
        from tests.train.helpers import write_world

        records = write_world(data)
        return (lambda out, **kw: T.train_reranker(T.RerankerTrainConfig(**{
            "model": model, "records": [records], "out": str(out), "num_negatives": 2, "learning_rate": 1e-2,
            "max_steps": 2, "batch_size": 2, "logging_steps": 1, "save_steps": 1, "lora_dropout": 0.0,
            "device": "cpu", "merge": True, **kw}))), "learning_rate", T.METADATA_FILE
    if name == "sft":
        from tests.embed_rl.helpers import TCOT

        from unime.data.items import Item
        from unime.embed_rl.reasoner_sft import SUMMARY_FILE, ReasonerSFTConfig, train_reasoner_sft
        from unime.reasoning.reasoner import TCoTRow, write_tcot_rows

        write_tcot_rows([TCoTRow(f"r{i}", "query", Item(text=f"a {c} circle"), TCOT)
                         for i, c in enumerate(("red", "blue", "green"))], data / "t.jsonl")
        return (lambda out, **kw: train_reasoner_sft(ReasonerSFTConfig(**{
            "model": model, "data": str(data / "t.jsonl"), "out": str(out), "max_steps": 2, "batch_size": 2,
            "device": "cpu", "logging_steps": 1, "save_steps": 1, "learning_rate": 1e-3, **kw}))), \
            "learning_rate", SUMMARY_FILE
    from tests.embed_rl.helpers import COLOURS
    from PIL import Image

    from unime.data.io import write_records
    from unime.data.items import Item, Record
    from unime.embed_rl.grpo import SUMMARY_FILE, GRPOStageConfig, train_reasoner_grpo
    from unime.models.prompts import EMB_TOKEN

    (data / "imgs").mkdir()
    for c, rgb in COLOURS.items():
        Image.new("RGB", (56, 56), rgb).save(data / "imgs" / f"{c}.png")
    write_records([Record(query=Item(text=f"a {c} circle"), positive=Item(images=(f"imgs/{c}.png",)), id=f"r{i}")
                   for i, c in enumerate(COLOURS)], data / "records.jsonl")
    return (lambda out, **kw: train_reasoner_grpo(GRPOStageConfig(**{
        "model": model, "embedder": tiny_model_dir("qwen2_vl", (EMB_TOKEN,)), "records": str(data / "records.jsonl"),
        "out": str(out), "max_steps": 2, "max_completion_length": 8, "num_generations": 2, "lora_r": 4,
        "device": "cpu", "save_steps": 1, **kw}))), "learning_rate", SUMMARY_FILE


@pytest.mark.parametrize("trainer", ["embedder", "reranker", "sft", "grpo"])
def test_every_trainer_follows_one_convention(trainer, tiny_model_dir, tiny_world_dir, tmp_path, monkeypatch,
                                               caplog):
    """For each trainer: the model card comes from the one writer (`ModelCard`) into OUT, merged/ (and
    adapter/); checkpoints are kept; a finished run does nothing; changed options are refused naming the
    key; a run that died while writing checkpoint-2 (weights written, optimizer not: the truncated
    weights of a full disk too, for two trainers) reports checkpoint-2 as incomplete, continues from
    checkpoint-1 and ends with the uninterrupted run's weights."""
    from transformers import Trainer

    from unime.models.export import ModelCard

    (tmp_path / "data").mkdir()
    run, changed_key, finished_file = _trainer_runs(trainer, tiny_model_dir, tmp_path / "data", tiny_world_dir)
    rendered = []
    render = ModelCard.render
    monkeypatch.setattr(ModelCard, "render", lambda self: rendered.append(render(self)) or rendered[-1])

    a = tmp_path / "a"
    first = run(a)
    card = (a / "README.md").read_text()
    # rendered by the one writer (again after the merge, with the merged weights' table): the last is OUT's card
    renders = len(rendered)
    assert rendered and rendered[-1] == card and (a / "merged" / "README.md").read_text() == card
    assert card.startswith("---\nlibrary_name: transformers\n") and "| key | value |" in card
    if (a / "adapter").exists():
        assert (a / "adapter" / "README.md").read_text() == card
    assert (a / finished_file).is_file() and (a / "checkpoints" / "checkpoint-2").is_dir()  # kept
    weights = a / "merged" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    # finished earlier: nothing to do, nothing written
    run(a)
    assert weights.stat().st_mtime_ns == mtime and len(rendered) == renders
    # options changed: refused, naming the key
    # from Python: the field (the command line names the option, `describe`)
    with pytest.raises(ChangedOptions, match=rf"\({changed_key}: .* -> .*pass overwrite=True to start over"):
        run(a, **{changed_key: 5e-3})
    assert weights.stat().st_mtime_ns == mtime

    # interrupted while writing checkpoint-2: its weights are on disk, its optimizer is not
    save_optimizer = Trainer._save_optimizer_and_scheduler

    def full_disk(self, output_dir):
        if self.state.global_step == 2:
            raise OSError(28, "No space left on device")
        return save_optimizer(self, output_dir)

    b = tmp_path / "b"
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run(b)
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", save_optimizer)
    broken = b / "checkpoints" / "checkpoint-2"
    assert not (b / finished_file).exists() and not (broken / "optimizer.pt").exists()
    problem = "missing optimizer.pt, scheduler.pt, trainer_state.json, rng_state.pth"
    if trainer in ("reranker", "grpo"):  # and a weights file cut short
        (w,) = [p for p in broken.glob("*.safetensors")]
        w.write_bytes(w.read_bytes()[:-100])
    with caplog.at_level("INFO", logger="unime.models.run_state"):
        resumed = run(b)
    messages = [r.getMessage() for r in caplog.records]
    assert f"{broken} is incomplete ({problem}): skipped, not resumed from" in messages
    assert f"resuming from {b / 'checkpoints' / 'checkpoint-1'}" in messages
    assert (broken / "optimizer.pt").is_file()  # step 2 was trained again and checkpointed
    x, y = load_file(weights), load_file(b / "merged" / "model.safetensors")
    assert x.keys() == y.keys()
    for k in x:
        torch.testing.assert_close(y[k], x[k], rtol=0, atol=1e-6)
    steps = {"embedder": lambda r: r.metrics["steps"], "reranker": lambda r: r.steps}.get(trainer, lambda r: r["steps"])
    assert steps(resumed) == steps(first) == 2


def test_grpo_into_the_sft_run_it_starts_from_is_refused_and_another_stage_is_named_first(tmp_path):
    """QA: `train reasoner --stage grpo --model sftX/merged --out sftX --overwrite` wrote its merged/ over the SFT
    model it started from, beside SFT's adapter/ and sft_summary.json; without --overwrite the refusal listed 14
    keys but not the stage."""
    from dataclasses import asdict

    from unime.cli.failures import describe
    from unime.embed_rl.grpo import GRPOStageConfig, train_reasoner_grpo
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig
    from unime.errors import UnimeError
    from unime.models import run_state
    from unime.outdir import claim

    sft = tmp_path / "sftX"
    with claim(sft, "train reasoner"):  # what an SFT run leaves
        for name in ("merged/config.json", "adapter/adapter_config.json", "sft_summary.json"):
            (sft / name).parent.mkdir(parents=True, exist_ok=True)
            (sft / name).write_text("{}")
        run_state.write_config(sft, asdict(ReasonerSFTConfig(model="base", data="t.jsonl", out=str(sft))))
    def contents():  # the run's files (the folder's ownership marker records each claim)
        return {p: p.read_bytes() for p in sft.rglob("*") if p.is_file() and not p.name.startswith(".unime")}

    files = contents()

    def grpo(model, out, **kw):
        return train_reasoner_grpo(GRPOStageConfig(model=str(model), out=str(out), records="r.jsonl",
                                                   embedder="emb", **kw))

    for out in (sft, tmp_path):  # the model's own run folder, or any folder above it
        with pytest.raises(UnimeError) as caught:
            grpo(sft / "merged", out, overwrite=True)
        said = "{out} %s holds {model} %s: the run would write over the model it reads; choose another {out}" % (
            out, sft / "merged")
        assert str(caught.value) == said.format(out="out", model="model")  # from Python: the fields given
        assert describe(caught.value) == said.format(out="--out", model="--model")  # the command line: its flags
    (tmp_path / "base").mkdir()
    with pytest.raises(ChangedOptions, match=r"other options \(stage: 'sft' -> 'grpo', "):
        grpo(tmp_path / "base", sft)
    assert contents() == files


def test_a_process_other_than_the_first_writes_and_deletes_nothing_in_the_run_folder(tmp_path, monkeypatch):
    """Under torchrun every process plans the run, but only the first owns `out`: another one that planned before
    the first had claimed the folder wrote the inputs record into it, and the first then refused the folder as
    not written by unime (seen in CI: GRPO on two processes). The others read; they do not write or delete."""
    from dataclasses import dataclass

    from unime.models.run_state import INPUTS_FILE
    from unime.options import option

    @dataclass
    class Config:
        records: str = option(None, input_file=True)

    recs = tmp_path / "recs.jsonl"
    recs.write_text('{"id": 1}\n')
    out = tmp_path / "run"
    monkeypatch.setenv("RANK", "1")
    assert _plan(out, config=Config(str(recs))).checkpoint is None
    assert not out.exists()  # nothing written
    from unime.outdir import claim

    claim(out, "train embedder").release()  # the first process's claim
    ckpt = _complete_checkpoint(out / "checkpoints" / "checkpoint-5", 5)
    (out / "metrics.json").write_text("{}")
    assert _plan(out, overwrite=True, config=Config(str(recs))).checkpoint is None
    assert ckpt.is_dir() and (out / "metrics.json").is_file() and not (out / INPUTS_FILE).exists()  # nothing deleted
    monkeypatch.setenv("RANK", "0")
    _plan(out, overwrite=True, config=Config(str(recs)))
    assert not ckpt.exists() and not (out / "metrics.json").exists() and (out / INPUTS_FILE).is_file()


def test_a_run_recorded_with_one_dtype_spelling_continues_and_finishes_under_the_other(tmp_path):
    """Review: `--dtype` keeps its value as typed (`bf16` or its alias `bfloat16`, `DTYPE_ALIASES`), so a run
    recorded with --dtype bf16 and re-run with --dtype bfloat16 was refused as a run with other options. The two
    spellings are one setting: the run continues from its checkpoint (and a finished one is finished); another dtype
    is still a change."""
    from dataclasses import asdict, replace

    from unime.models import run_state
    from unime.train.reranker_trainer import RerankerTrainConfig

    for config in (RerankerTrainConfig(model="m", records=["r.jsonl"], out=str(tmp_path / "rr"), dtype="bf16"),
                   replace(base_config("m", tmp_path / "emb", tmp_path), dtype="bfloat16")):
        out = Path(config.out)
        run_state.write_config(out, asdict(config))
        ckpt = _complete_checkpoint(out / "checkpoints" / "checkpoint-3", 3)
        other = replace(config, dtype={"bf16": "bfloat16", "bfloat16": "bf16"}[config.dtype])
        plan = run_state.plan_run(out, asdict(other), free=(), overwrite=False, finished_file="done.json",
                                  config=other)
        assert (plan.finished, plan.checkpoint) == (False, ckpt)
        assert (out / "checkpoints" / "checkpoint-3").is_dir()
        with pytest.raises(ChangedOptions, match=r"\(dtype: '(bf16|bfloat16)' -> 'fp32'"):
            fp32 = replace(config, dtype="fp32")
            run_state.plan_run(out, asdict(fp32), free=(), overwrite=False, finished_file="done.json", config=fp32)
    # the comparison itself: aliases are one value, on either side
    assert changed_options({"dtype": "bf16"}, {"dtype": "bfloat16"}, free=(),
                           aliases={"dtype": {"bfloat16": "bf16"}}) == []
