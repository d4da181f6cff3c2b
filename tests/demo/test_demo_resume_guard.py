"""The demo's resume and `--fresh` guards (`unime.demo.run.DemoRun.stage`, `unime.demo.pipeline.fresh`): a stage killed
midway claims only the files it can have written, so `--fresh` never deletes a file the user put in the demo's
folders after the kill."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

import pytest


def _files(out):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def _demo(out, tmp_path):
    from unime.demo.pipeline import Demo
    from unime.demo.run import DemoSettings

    return Demo(out, DemoSettings.preset("quick"), progress=lambda m: None, timings=tmp_path / "t.json",
                load_probe=lambda: None)


def _killed_command(written: list[str]):
    """A stand-in for `run_stage_command`: writes a file into the command's --out and --cache-dir, then is killed."""
    def run(command, options):
        for flag in ("--out", "--cache-dir"):
            options[flag].mkdir(parents=True, exist_ok=True)
            (options[flag] / "part.bin").write_text(command)
            written.append(flag)
        raise KeyboardInterrupt
    return run


def test_fresh_after_a_killed_stage_deletes_its_outputs_and_leaves_the_files_the_user_added_since(
        tmp_path, monkeypatch, caplog):
    """Before: every file new in the demo's folders since a killed stage started counted as that stage's, so a note
    or a checkpoint the user put in eval/ or embedders/ after the kill was deleted by `--fresh`. Now a killed stage
    claims only what is inside the outputs it named before writing (its commands' --out / --cache-dir, the paths
    its body declares); the other new files stay, named in the warning."""
    from unime.demo.pipeline import fresh
    from unime.outdir import claim

    out = tmp_path / "demo"
    demo = _demo(out, tmp_path)
    written: list[str] = []
    monkeypatch.setattr("unime.demo.stage_calls.run_stage_command", _killed_command(written))
    with claim(out, "demo"):
        demo.stage("world", [], lambda c: (out / "world").mkdir(parents=True) or (out / "world" / "w.json").touch(),
                   writes=[out / "world"])
        with pytest.raises(KeyboardInterrupt):
            demo.stage("mine", [], lambda c: demo.run_command("mine", {"--out": out / "mined",
                                                                      "--cache-dir": out / "cache" / "mining"}, c))
        # a python body that names what it writes, killed midway
        def models(c):
            (out / "models" / "embedder-base").mkdir(parents=True)
            (out / "models" / "embedder-base" / "w.bin").write_text("demo")
            (out / "models" / "pretrained.json.tmp").write_text("demo")  # a temporary beside a declared file
            raise KeyboardInterrupt
        with pytest.raises(KeyboardInterrupt):
            demo.stage("models", [], models,
                       writes=[out / "models" / "embedder-base", out / "models" / "pretrained.json"])
        # after the kills: the user's own files inside the demo's folders
        for rel in ("eval/mine/notes.md", "embedders/copied/model.bin", "cache/mining-old/x.txt", "cache/notes.md",
                    "models/my-model/w.bin"):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text("the user's")
    assert written == ["--out", "--cache-dir"]
    running = json.loads((out / "stages" / "mine.running.json").read_text())
    assert running["writes"] == ["cache/mining", "logs/mine.log", "mined"]  # the stage's log is its own too
    with caplog.at_level(logging.WARNING):
        fresh(out)
    assert _files(out) == [".unime-output.json", ".unime.lock", "cache/mining-old/x.txt", "cache/notes.md",
                           "embedders/copied/model.bin", "eval/mine/notes.md", "models/my-model/w.bin"]
    warning = "\n".join(r.getMessage() for r in caplog.records)
    assert "left as they were inside the demo's folders" in warning
    for rel in ("cache/mining-old/x.txt", "cache/notes.md", "embedders/copied/model.bin", "eval/mine/notes.md",
                "models/my-model/w.bin"):
        assert rel in warning


def test_a_killed_stage_resumed_to_its_end_does_not_claim_the_files_the_user_added_after_the_kill(tmp_path):
    """A killed stage run again finishes and lists its files (what `--fresh` deletes): the files the killed run wrote
    count, a file the user added between the kill and the resume outside the stage's outputs does not."""
    out = tmp_path / "demo"
    emb = out / "embedders"

    def train(seeds, kill):
        def body(c):
            for s in seeds:
                (emb / f"baseline_s{s}").mkdir(parents=True, exist_ok=True)
                (emb / f"baseline_s{s}" / "model.bin").write_text("demo")
            if kill:
                raise KeyboardInterrupt
        return body
    writes = [emb / "baseline_s0", emb / "baseline_s1"]
    with pytest.raises(KeyboardInterrupt):
        _demo(out, tmp_path).stage("baseline", [], train([0], kill=True), writes=writes)
    (emb / "NOTES.md").write_text("the user's")
    _demo(out, tmp_path).stage("baseline", [], train([1], kill=False), writes=writes)
    marker = json.loads((out / "stages" / "baseline.json").read_text())
    assert marker["files"] == ["embedders/baseline_s0/model.bin", "embedders/baseline_s1/model.bin",
                               "logs/baseline.log"]
    assert not (out / "stages" / "baseline.running.json").exists()


def test_a_stage_run_to_its_end_does_not_claim_a_file_the_user_added_while_it_ran(tmp_path, monkeypatch, caplog):
    """Before: a stage that ran uninterrupted listed every file new in the demo's folders since it started as its
    own (`files`), so a note the user put in eval/ or embedders/ while it ran was deleted by `--fresh`. Now it lists
    only the new files inside the outputs it named (its body's `writes`, its commands' --out / --cache-dir), and its
    marker keeps those outputs (`writes`); the user's file stays at `--fresh`, named in the warning."""
    from unime.demo.pipeline import fresh
    from unime.outdir import claim

    out = tmp_path / "demo"
    demo = _demo(out, tmp_path)
    user = ("eval/mine/notes.md", "embedders/NOTES.md", "cache/mining-old/x.txt", "embedders/baseline_s0-old/w.bin")

    def command(command, options):  # a stand-in for `run_stage_command`: writes into its --out and --cache-dir
        for flag in ("--out", "--cache-dir"):
            options[flag].mkdir(parents=True, exist_ok=True)
            (options[flag] / "part.bin").write_text(command)
    monkeypatch.setattr("unime.demo.stage_calls.run_stage_command", command)

    def body(c):
        (out / "embedders" / "baseline_s0").mkdir(parents=True)
        (out / "embedders" / "baseline_s0" / "model.bin").write_text("demo")
        for rel in user:  # meanwhile, the user
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text("the user's")
        (out / "embedders" / "baseline_s0.json").write_text("demo")  # a companion beside a named output
        demo.run_command("mine", {"--out": out / "mined", "--cache-dir": out / "cache" / "mining"}, c)
    with claim(out, "demo"):
        demo.stage("mine", [], body, writes=[out / "embedders" / "baseline_s0"])
    marker = json.loads((out / "stages" / "mine.json").read_text())
    assert marker["files"] == ["cache/mining/part.bin", "embedders/baseline_s0.json",
                               "embedders/baseline_s0/model.bin", "logs/mine.log", "mined/part.bin"]
    assert marker["writes"] == ["cache/mining", "embedders/baseline_s0", "logs/mine.log", "mined"]
    assert not (out / "stages" / "mine.running.json").exists()
    with caplog.at_level(logging.WARNING):
        fresh(out)
    assert _files(out) == [".unime-output.json", ".unime.lock", *sorted(user)]
    warning = "\n".join(r.getMessage() for r in caplog.records)
    assert "left as they were inside the demo's folders" in warning
    for rel in user:
        assert rel in warning


def test_a_finished_stage_run_again_keeps_the_outputs_it_named_before(tmp_path):
    """A stage done before and run again for outputs added since (its `done_when` missing), then killed: the outputs
    its first run named (the finished marker's `writes`) still count, so `--fresh` deletes the files the second run
    wrote inside them."""
    from unime.demo.run import written_by_stages

    out = tmp_path / "demo"
    emb = out / "embedders"

    def train(seed, kill=False):
        def body(c):
            (emb / f"baseline_s{seed}").mkdir(parents=True, exist_ok=True)
            (emb / f"baseline_s{seed}" / "model.bin").write_text("demo")
            if kill:
                raise KeyboardInterrupt
        return body
    _demo(out, tmp_path).stage("baseline", [], train(0), writes=[emb])
    with pytest.raises(KeyboardInterrupt):
        _demo(out, tmp_path).stage("baseline", [emb / "baseline_s1"], train(1, kill=True))
    assert json.loads((out / "stages" / "baseline.running.json").read_text())["writes"] == [
        "embedders", "logs/baseline.log"]
    written, unlisted = written_by_stages(out)
    assert {"embedders/baseline_s0/model.bin", "embedders/baseline_s1/model.bin"} <= written and not unlisted


def test_a_running_marker_of_an_older_unime_claims_nothing(tmp_path, caplog):
    """A killed stage's marker written before stages named their outputs (no `writes`): what it wrote cannot be told
    from what the user added, so `--fresh` deletes none of it and says so."""
    from unime.demo.pipeline import fresh
    from unime.outdir import claim

    out = tmp_path / "demo"
    with claim(out, "demo"):
        (out / "stages").mkdir(parents=True)
        (out / "stages" / "mine.running.json").write_text(json.dumps({"before": []}))
        (out / "mined").mkdir()
        (out / "mined" / "shard0.jsonl").write_text("demo or the user's")
    with caplog.at_level(logging.WARNING):
        fresh(out)
    assert _files(out) == [".unime-output.json", ".unime.lock", "mined/shard0.jsonl"]
    warning = "\n".join(r.getMessage() for r in caplog.records)
    assert "mined/shard0.jsonl" in warning and "stages mine" in warning


def test_what_a_killed_stage_claims_around_the_outputs_it_named():
    from pathlib import Path

    from unime.demo.run import command_outputs, within

    assert command_outputs({"--model": "m", "--out": "o", "--cache-dir": "c", "--also": ("tasks", "v")}) == [
        Path("o"), Path("c"), Path("v")]
    assert command_outputs({"--out-dir": "s", "--records": "r"}) == [Path("s")]
    named = ["mined", "cache/mining", "judge/records_stats.json", "er/tcots.jsonl"]
    for rel in ("mined/a/b.parquet", "mined.tmp-1/x", ".mined.tmp-2", "cache/mining/q.npy",
                "judge/records_stats.json", "judge/records_stats.tmp",  # `write_json`'s temporary
                "er/.tcots.jsonl.tmp-x7", "er/.tcots.jsonl.unime-output.json", "er/tcots.jsonl.unime_data.json"):
        assert within(rel, named), rel
    for rel in ("minedx/a", "cache/mining-old/x", "cache/notes.md", "judge/records.jsonl", "er/tcots2.jsonl",
                "eval/mined/x", "embedders/mined"):
        assert not within(rel, named), rel


def test_resuming_a_demo_folder_with_stages_of_another_unime_names_them_in_one_warning(tmp_path, monkeypatch):
    """Before: the resume guard compared the settings only, so a folder resumed by a newer unime reused the stages
    the older code computed without a word. Now each marker records the unime that computed the stage (its version,
    and the commit when it runs from a git checkout; no path), and a resume names the stages of another unime in one
    warning line (it goes on: users upgrade); the report marks them."""
    import unime
    from unime.demo.pipeline import Demo
    from unime.demo.report import stage_notes
    from unime.demo.run import DemoSettings, unime_code

    monkeypatch.setenv("UNIME_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    messages: list[str] = []
    demo = Demo(out, DemoSettings.preset("quick"), progress=messages.append, timings=tmp_path / "t.json",
                load_probe=lambda: None)
    world = out / "world" / "world.json"
    demo.stage("world", [world], lambda c: world.parent.mkdir(parents=True) or world.write_text("{}"))
    now = unime_code()
    assert json.loads((out / "stages" / "world.json").read_text())["unime"] == [now]
    assert now.split("+")[0] == unime.__version__ and "/" not in now  # nothing of this machine
    # a stage computed by an older release, and one by a unime from before markers recorded it
    (out / "stages" / "reference.json").write_text(json.dumps({"seconds": 5.0, "commands": ["unime eval reference"],
                                                               "unime": ["0.0.9"]}))
    (out / "stages" / "models.json").write_text(json.dumps({"seconds": 5.0, "commands": ["unime models pretrain"]}))
    (out / "stages" / "report.json").write_text(json.dumps({"seconds": 1.0, "commands": [], "unime": ["0.0.9"]}))
    (out / "settings.json").write_text(json.dumps(asdict(DemoSettings.preset("quick"))))

    class Stop(Exception):
        pass

    def stop(self, name, done, body, writes=()):
        raise Stop
    messages.clear()
    monkeypatch.setattr(Demo, "stage", stop)
    with pytest.raises(Stop):
        Demo(out, DemoSettings.preset("quick"), progress=messages.append, timings=tmp_path / "t.json").run()
    monkeypatch.undo()
    warned = [m for m in messages if "another unime" in m]
    assert warned == [f"[demo] WARNING: stages reference, models were computed by another unime (0.0.9, an older "
                      f"unime that did not record its version), this is unime {now}: they are reused as they are "
                      "(--fresh recomputes every stage)"], messages
    # a stage skipped as done before carries the unime that computed it to the report's stage table
    ref = out / "eval" / "reference_s0" / "summary.json"
    ref.parent.mkdir(parents=True)
    ref.write_text("{}")
    demo = Demo(out, DemoSettings.preset("quick"), progress=messages.append, timings=tmp_path / "t.json")
    demo.stage("reference", [ref], lambda c: pytest.fail("a stage done before ran again"))
    demo.stage("world", [world], lambda c: pytest.fail("a stage done before ran again"))
    assert [r.other_unime for r in demo.results] == [["0.0.9"], []]
    assert stage_notes(demo.results[0]) == ["skipped (done before)", "computed by unime 0.0.9, not this unime"]
    assert stage_notes(demo.results[1]) == ["skipped (done before)"]


def test_a_stage_resumed_after_a_kill_by_another_unime_records_both(tmp_path, monkeypatch):
    """A stage killed under one unime and finished under another: its outputs come from both, and its marker says
    so (the later resume then names the stage)."""
    from unime.demo.run import unime_code

    out = tmp_path / "demo"
    (out / "stages").mkdir(parents=True)
    (out / "stages" / "world.running.json").write_text(json.dumps({"before": [], "writes": ["world"],
                                                                  "unime": "0.0.9"}))
    demo = _demo(out, tmp_path)

    def killed_again(c):
        assert json.loads((out / "stages" / "world.running.json").read_text())["unime"] == ["0.0.9", unime_code()]
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        demo.stage("world", [], killed_again)
    demo.stage("world", [], lambda c: None)
    assert json.loads((out / "stages" / "world.json").read_text())["unime"] == ["0.0.9", unime_code()]
    assert demo.results[-1].other_unime == ["0.0.9"]


class _StopAfterStage(Exception):
    pass


def _one_stage_demo(out, tmp_path, only="models"):
    """The demo with only its stage `only` run (the real body), the stages before it skipped (and the judge check
    after mining) and the run stopped after it."""
    from unime.demo.pipeline import Demo
    from unime.demo.run import DemoSettings

    class OneStage(Demo):
        def stage(self, name, done_when, body, **kw):
            if name == only:
                super().stage(name, done_when, body, **kw)
                raise _StopAfterStage

        def check_judge(self, mined_dir):
            pass
    return OneStage(out, DemoSettings.preset("quick"), progress=lambda m: None, timings=tmp_path / "t.json",
                    load_probe=lambda: None)


def _killed(out, tmp_path, stage):
    """`_one_stage_demo` run and killed in its stage `stage` (its stand-in raises KeyboardInterrupt)."""
    with pytest.raises(KeyboardInterrupt):
        _one_stage_demo(out, tmp_path, stage).run()


def _resumed(out, tmp_path, stage):
    """`_one_stage_demo` run again after a kill, its stage `stage` run to its end."""
    with pytest.raises(_StopAfterStage):
        _one_stage_demo(out, tmp_path, stage).run()


def _fake_pretrained(root, name, payload):
    from unime.demo.pretrain import MODEL_DIR, PretrainResult

    (root / name / MODEL_DIR).mkdir(parents=True)
    (root / name / MODEL_DIR / "model.safetensors").write_text(payload)
    return PretrainResult(root / name, reused=True, manifest={"key": name})


def test_the_models_stage_killed_while_the_judge_pretrains_resumes(tmp_path, monkeypatch):
    """Before: the models stage copied the pretrained base to models/embedder-base and then pretrained the judge; a
    run killed in the judge's pretraining (an hour on the large preset) could not be resumed: the copy met the folder
    it had written itself (`FileExistsError: ... models/embedder-base`, a traceback, every later run the same). Now
    the copy is atomic and replaces what the stage wrote before; the resumed stage finishes."""
    out, cache = tmp_path / "demo", tmp_path / "cache"
    base = _fake_pretrained(cache, "base", "base weights")
    judge = _fake_pretrained(cache, "judge", "judge weights")
    calls = []

    def pretrain_judge(*a, **kw):
        calls.append("judge")
        if len(calls) == 1:
            raise KeyboardInterrupt  # the kill, after the base was copied
        return judge
    monkeypatch.setattr("unime.demo.pretrain.pretrain", lambda *a, **kw: base)
    monkeypatch.setattr("unime.demo.pretrain.pretrain_judge", pretrain_judge)
    with pytest.raises(KeyboardInterrupt):
        _one_stage_demo(out, tmp_path).run()
    assert (out / "models" / "embedder-base" / "model.safetensors").read_text() == "base weights"
    assert not (out / "models" / "judge-base").exists()
    with pytest.raises(_StopAfterStage):
        _one_stage_demo(out, tmp_path).run()
    assert (out / "models" / "embedder-base" / "model.safetensors").read_text() == "base weights"
    assert (out / "models" / "judge-base" / "model.safetensors").read_text() == "judge weights"
    marker = json.loads((out / "stages" / "models.json").read_text())
    assert "models/embedder-base/model.safetensors" in marker["files"]
    assert "models/judge-base/model.safetensors" in marker["files"]
    assert not list((out / "models").glob(".*partial"))


def test_a_copy_killed_midway_is_finished_and_a_folder_of_the_users_is_refused(tmp_path):
    """`DemoRun.copy_folder`: a partial copy a kill left beside the output is the stage's and is replaced; a folder the
    user put where the stage writes is refused with a message naming a file of it, and nothing of it is deleted."""
    from unime.errors import UsageError

    out = tmp_path / "demo"
    source = tmp_path / "source"
    source.mkdir()
    (source / "w.bin").write_text("weights")
    dest = out / "models" / "embedder-base"

    def killed_midway(c):
        partial = dest.with_name(".embedder-base.partial")
        partial.mkdir(parents=True)
        (partial / "w.bin").write_text("half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _demo(out, tmp_path).stage("models", [], killed_midway, writes=[dest])
    demo = _demo(out, tmp_path)
    demo.stage("models", [dest], lambda c: demo.copy_folder(source, dest), writes=[dest])
    assert _files(out / "models") == ["embedder-base/w.bin"]
    assert (dest / "w.bin").read_text() == "weights"

    other = tmp_path / "other"
    mine = other / "models" / "embedder-base"
    mine.mkdir(parents=True)
    (mine / "my.bin").write_text("the user's")
    demo = _demo(other, tmp_path)
    with pytest.raises(UsageError, match=r"embedder-base holds 1 file\(s\) this demo did not write "
                                         r"\(models/embedder-base/my.bin\)"):
        demo.stage("models", [mine], lambda c: demo.copy_folder(source, mine), writes=[mine])
    assert (mine / "my.bin").read_text() == "the user's"
    assert not (mine / "w.bin").exists()


def _reference_command(calls, kill_after):
    """A stand-in for `run_stage_command` of `unime eval reference --also TASKS OUT`: writes what the real command
    writes, in its order (`unime.eval.reference.evaluate_reference`: the summary of --tasks, the summary of each
    --also folder, training.json, then the weights and their record reference.json), killed after `kill_after`
    files on its first call."""
    def run(command, options):
        assert command == "eval reference"
        calls.append(options["--seed"])
        out, (_, also) = options["--out"], options["--also"]
        for n, path in enumerate([out / "summary.json", also / "summary.json", out / "training.json",
                                  out / "reference.pt", out / "reference.json"]):
            if len(calls) == 1 and n == kill_after:
                raise KeyboardInterrupt
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"seed": options["--seed"]}))
    return run


@pytest.mark.parametrize("kill_after", [1, 3])
def test_the_reference_stage_killed_after_its_image_summary_runs_its_command_again(tmp_path, monkeypatch,
                                                                                    kill_after):
    """Before: the reference stage skipped a seed whose eval/reference_sN/summary.json existed, but its command
    writes that file first, then the video summary (`--also`), the training log and the weights. Killed in between,
    the resumed stage ran nothing and finished: the seed's video row, training log and weights missing, and on every
    later run the stage ran again and did nothing. Now a seed is done only when all the stage needs of it is there
    (its summaries and the weights' record, written last); else its command runs again."""
    from unime.demo.video_rows import video_eval_dir

    out = tmp_path / "demo"
    calls: list[int] = []
    monkeypatch.setattr("unime.demo.stage_calls.run_stage_command", _reference_command(calls, kill_after))
    _killed(out, tmp_path, "reference")
    assert (out / "eval" / "reference_s0" / "summary.json").is_file()
    _resumed(out, tmp_path, "reference")
    assert calls == [0, 0]
    demo = _one_stage_demo(out, tmp_path, "reference")
    assert (video_eval_dir(demo, "reference", 0) / "summary.json").is_file()
    assert (out / "eval" / "reference_s0" / "reference.json").is_file()
    assert (out / "stages" / "reference.json").is_file()
    with pytest.raises(_StopAfterStage):  # done: skipped, nothing run again
        demo.run()
    assert calls == [0, 0]
    assert demo.results[-1].skipped


def _killed_while_writing(monkeypatch, prefix):
    """The process killed while it writes a file whose name starts with `prefix`: half of the text written, then
    KeyboardInterrupt (what a kill between `open` and the last `write` leaves)."""
    from pathlib import Path

    real = Path.write_text

    def write_text(self, data, *a, **kw):
        if self.name.startswith(prefix):
            real(self, data[:len(data) // 2], *a, **kw)
            raise KeyboardInterrupt
        return real(self, data, *a, **kw)
    monkeypatch.setattr(Path, "write_text", write_text)
    return lambda: monkeypatch.setattr(Path, "write_text", real)


def test_a_demo_killed_while_it_writes_its_settings_resumes(tmp_path, monkeypatch):
    """Before: `settings.json` was written in place; a kill while it was written left half a JSON file, and every
    later run of the same command failed reading it (`JSONDecodeError`, a traceback) before any stage. Now it is
    written atomically: the resumed run finds no settings, or the whole earlier ones."""
    from unime.demo.run import DemoSettings

    out = tmp_path / "demo"
    restore = _killed_while_writing(monkeypatch, "settings")
    _killed(out, tmp_path, "world")
    restore()
    monkeypatch.setattr("unime.demo.stage_calls.run_stage_command", lambda command, options: None)
    _resumed(out, tmp_path, "world")
    assert json.loads((out / "settings.json").read_text()) == json.loads(json.dumps(asdict(
        DemoSettings.preset("quick"))))


def _eval_command(calls, kill_at=None):
    """A stand-in for `run_stage_command` of `unime eval`: writes what the real command writes, in its order
    (`unime.eval.runners.evaluate_checkpoint`: its run record eval_run.json, unfinished, then summary.json,
    results.md, per_task.png, and last the run record finished), the call number `kill_at` killed before its
    per_task.png."""
    def run(command, options):
        assert command == "eval"
        calls.append(options["--out"])
        out = options["--out"]
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval_run.json").write_text(json.dumps({"options": {}, "finished": False}))
        (out / "summary.json").write_text("{}")
        (out / "results.md").write_text("results")
        if len(calls) == kill_at:
            raise KeyboardInterrupt
        (out / "per_task.png").write_bytes(b"png")
        (out / "eval_run.json").write_text(json.dumps({"options": {}, "finished": True}))
    return run


@pytest.mark.parametrize("kill_at", [2, 6])  # an image eval, a video eval
def test_an_eval_killed_after_its_summary_is_run_again(tmp_path, monkeypatch, kill_at):
    """Before: the eval stage skipped a row whose summary.json existed, but `unime eval` writes it before its
    results.md and plot and before it records its run finished; killed in between, the resumed stage kept the
    unfinished run. Now a row is done when its run is recorded finished; else its command runs again (the
    embeddings it saved are reused from the cache)."""
    from unime.demo.video_rows import VIDEO_TASKS_FILE

    out = tmp_path / "demo"
    (out / "world").mkdir(parents=True)
    (out / "world" / VIDEO_TASKS_FILE).write_text("tasks: []\n")
    calls = []
    monkeypatch.setattr("unime.demo.stage_calls.run_stage_command", _eval_command(calls, kill_at))
    _killed(out, tmp_path, "eval")
    killed = calls[-1]
    assert (killed / "summary.json").is_file() and not (killed / "per_task.png").exists()
    _resumed(out, tmp_path, "eval")
    assert calls[kill_at] == killed  # run again first, then the evals the kill left
    assert len(set(calls)) == 2 * 4 and len(calls) == 2 * 4 + 1  # the start and 3 rows, image and video
    assert (killed / "per_task.png").is_file()


def test_the_eval_stage_killed_while_it_writes_the_video_timing_resumes_to_a_readable_one(tmp_path, monkeypatch):
    """Before: eval/video/timing.json (what the report's video section reads) was written in place after the video
    evals; a kill while it was written left half a JSON file, the resumed stage (every eval done) did not rewrite it,
    and the report failed reading it on every later run. Now it is written atomically."""
    from unime.demo.video_rows import VIDEO_TASKS_FILE, _load

    out = tmp_path / "demo"
    (out / "world").mkdir(parents=True)
    (out / "world" / VIDEO_TASKS_FILE).write_text("tasks: []\n")
    calls = []
    monkeypatch.setattr("unime.demo.stage_calls.run_stage_command", _eval_command(calls))
    restore = _killed_while_writing(monkeypatch, "timing")
    _killed(out, tmp_path, "eval")
    restore()
    evals = len(calls)
    assert evals == 2 * 4  # the start and 3 rows of one seed, on the image and the video tasks
    _resumed(out, tmp_path, "eval")
    assert len(calls) == evals  # nothing evaluated again
    timing = _load(out / "eval" / "video" / "timing.json")  # as the report reads it
    assert timing is None or timing["runs"] == 4


def test_an_embedder_row_killed_after_its_merged_model_runs_its_training_again(tmp_path, monkeypatch):
    """Before: a row's seed was skipped when its merged/ existed, but `unime train embedder` writes merged/ first,
    then the model card and last its finished record metrics.json (`unime.models.run_state`; the report reads the
    training time there). Killed in between, the resumed stage kept the unfinished run. Now a seed is done when its
    trainer's finished record is there too; else the command runs again (it resumes from its last checkpoint)."""
    out = tmp_path / "demo"
    calls: list[int] = []

    def train(command, options):
        assert command == "train embedder"
        calls.append(options["--seed"])
        run = options["--out"]
        for n, name in enumerate(["merged/model.safetensors", "README.md", "metrics.json"]):
            if len(calls) == 1 and n == 2:
                raise KeyboardInterrupt
            (run / name).parent.mkdir(parents=True, exist_ok=True)
            (run / name).write_text("{}")
    monkeypatch.setattr("unime.demo.stage_calls.run_stage_command", train)
    _killed(out, tmp_path, "baseline")
    assert (out / "embedders" / "baseline_s0" / "merged").is_dir()
    _resumed(out, tmp_path, "baseline")
    assert calls == [0, 0]
    assert (out / "embedders" / "baseline_s0" / "metrics.json").is_file()


def test_a_link_of_the_users_where_the_stage_copies_is_refused_and_kept(tmp_path):
    """A link the user made at the copy's place before the stage (to a model folder of theirs) is the user's: refused,
    naming it, and neither the link nor what it points to is touched (the walk of the demo's files does not enter a
    link, so only the link itself tells)."""
    from unime.errors import UsageError

    out, source, theirs = tmp_path / "demo", tmp_path / "source", tmp_path / "their-model"
    for folder, name in ((source, "w.bin"), (theirs, "their.bin")):
        folder.mkdir()
        (folder / name).write_text(name)
    dest = out / "models" / "embedder-base"
    dest.parent.mkdir(parents=True)
    dest.symlink_to(theirs, target_is_directory=True)
    demo = _demo(out, tmp_path)
    with pytest.raises(UsageError, match=r"holds 1 file\(s\) this demo did not write \(models/embedder-base\)"):
        demo.stage("models", [dest], lambda c: demo.copy_folder(source, dest), writes=[dest])
    assert dest.is_symlink() and (theirs / "their.bin").read_text() == "their.bin"
    assert sorted(p.name for p in theirs.iterdir()) == ["their.bin"]
