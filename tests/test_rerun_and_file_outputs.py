"""The resume convention for `unime eval` (a finished run does nothing, other options are refused with
the keys, --overwrite starts over, an interrupted run continues from the embedding cache), single-file
outputs owned through a sidecar marker, and `data synth` / `data import` on claimed folders."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.eval.helpers import build_world
from unime.cli import OWNED_FILE_COMMANDS, main
from unime.outdir import FileNotOwned, claim_file, file_marker_path, read_file_marker, read_marker


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("unime: error:")]


def _mtimes(out: Path) -> dict:
    """Modification times of a run's outputs (not the folder's ownership marker and lock, which each
    claim refreshes)."""
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and not p.name.startswith(".unime")}


# -- unime eval -------------------------------------------------------------------------------------------
def test_eval_finished_changed_overwrite_and_interrupted(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from unime.models.embedder import Embedder

    tasks = build_world(tmp_path / "world")
    out, cache = tmp_path / "ev", tmp_path / "cache"
    argv = ["eval", "--model", tiny_model_dir("qwen2_vl"), "--tasks", str(tasks), "--cache-dir", str(cache),
            "--device", "cpu", "--batch-size", "4", "--out", str(out)]
    assert main(argv) == 0
    first = json.loads((out / "summary.json").read_text())
    record = json.loads((out / "eval_run.json").read_text())
    assert record["finished"] is True and record["attempts"] == 1 and first["run"] == {"attempts": 1}
    capsys.readouterr()

    # the same command again: says so, loads no model, rewrites nothing
    before = _mtimes(out)
    loads = []
    original = Embedder.from_pretrained.__func__
    monkeypatch.setattr(Embedder, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(1) or original(cls, *a, **k)))
    assert main(argv) == 0
    assert "finished earlier with the same options and inputs; nothing to do" in capsys.readouterr().out
    assert loads == [] and _mtimes(out) == before
    # the video options' defaults given explicitly are the same options (not "changed", no new embedding ids)
    defaults = ["--video-frames", "8", "--video-max-frames", "64", "--video-max-pixels", str(32 * 448 * 448)]
    assert main(argv + defaults) == 0
    assert "finished earlier with the same options and inputs; nothing to do" in capsys.readouterr().out
    assert loads == [] and _mtimes(out) == before

    # other options: refused with the keys, nothing touched
    assert main(argv + ["--ties", "index", "--pooling", "last"]) == 2
    assert _error_lines(capsys) == [
        f"unime: error: {out} holds a run with other options (--pooling: 'auto' -> 'last', --ties: 'pessimistic' -> "
        "'index'); re-run with the same options to continue it, pass --overwrite to start over, or choose "
        "another --out"]
    assert _mtimes(out) == before and loads == []

    # --overwrite starts over with the new options
    assert main(argv + ["--ties", "index", "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["meta"]["ties"] == "index"
    assert json.loads((out / "eval_run.json").read_text())["options"]["ties"] == "index"

    # an interrupted run (killed after some batches: its record says unfinished, no summary yet) continues
    # from the embedding cache and counts the attempt; the metrics are those of an uninterrupted run
    argv_index = argv + ["--ties", "index"]
    record = json.loads((out / "eval_run.json").read_text())
    (out / "eval_run.json").write_text(json.dumps({**record, "finished": False}))
    (out / "summary.json").unlink()
    uninterrupted = tmp_path / "straight"
    assert main(argv[:-1] + [str(uninterrupted), "--ties", "index"]) == 0
    assert main(argv_index) == 0
    resumed = json.loads((out / "summary.json").read_text())
    # every vector was already in the cache (the runs before): nothing encoded in the whole run
    assert resumed["run"] == {"attempts": 2} and resumed["encoding"]["encoded"] == 0
    assert resumed["encoding"]["from_cache"] == resumed["encoding"]["distinct_items"]
    assert resumed["tasks"] == json.loads((uninterrupted / "summary.json").read_text())["tasks"]

    # changed image bytes under the same options: not "finished", evaluated again (and encoded again)
    from PIL import Image

    img = next((tmp_path / "world" / "images").glob("*.png"))
    Image.new("RGB", Image.open(img).size, (1, 2, 3)).save(img)
    capsys.readouterr()
    assert main(argv_index) == 0
    assert "nothing to do" not in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["encoding"]["encoded"] >= 1


def test_eval_rerun_from_another_working_directory_with_absolute_paths_is_the_same_run(tiny_model_dir, tmp_path,
                                                                                      monkeypatch, capsys):
    """QA: `unime eval --model m --tasks world/eval_tasks.yaml --out ev` re-run from another folder with the same
    files named by absolute paths was refused as "a run with other options". Now it is the finished run; a model at
    another path is still another option; a record without the working directory (an earlier unime) is the same run
    from the folder it was made in."""
    model = tiny_model_dir("qwen2_vl")
    here, elsewhere = tmp_path / "here", tmp_path / "else" / "where"  # not as deep: "../../m" names another folder
    tasks = build_world(here / "world")
    elsewhere.mkdir(parents=True)

    def argv(model, tasks, cache, out):
        return ["eval", "--model", model, "--tasks", tasks, "--cache-dir", cache, "--device", "cpu",
                "--batch-size", "4", "--out", out]

    monkeypatch.chdir(here)
    relative = argv(os.path.relpath(model), os.path.relpath(tasks), "cache", "ev")
    assert main(relative) == 0
    out = here / "ev"
    record = json.loads((out / "eval_run.json").read_text())
    before = _mtimes(out)
    capsys.readouterr()
    monkeypatch.chdir(elsewhere)
    absolute = argv(model, str(tasks), str(here / "cache"), str(out))
    assert main(absolute) == 0
    assert "finished earlier with the same options and inputs; nothing to do" in capsys.readouterr().out
    assert _mtimes(out) == before
    assert record["options"]["working_dir"] == str(here.resolve())
    shutil.copytree(model, elsewhere / "model")
    assert main(argv(str(elsewhere / "model"), str(tasks), str(here / "cache"), str(out))) == 2
    assert "holds a run with other options (--model: " in _error_lines(capsys)[0]
    # recorded by an earlier unime: from the folder it was made in
    del record["options"]["working_dir"]
    (out / "eval_run.json").write_text(json.dumps(record))
    before = _mtimes(out)
    monkeypatch.chdir(here)
    assert main(relative) == 0
    assert "finished earlier with the same options and inputs; nothing to do" in capsys.readouterr().out
    assert _mtimes(out) == before


def test_eval_rerun_with_the_other_dtype_spelling_is_the_same_run(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """`--dtype fp32` and `--dtype float32` are one setting (`DTYPE_ALIASES`): an evaluation finished with one is
    finished under the other (no model loaded, nothing rewritten), and interrupted it continues from the embedding
    cache (nothing encoded again). A record written by an earlier unime with the long spelling (the value as typed)
    is the same run too; another dtype is still another option."""
    from unime.models.embedder import Embedder

    tasks = build_world(tmp_path / "world")
    out, cache = tmp_path / "ev", tmp_path / "cache"
    argv = ["eval", "--model", tiny_model_dir("qwen2_vl"), "--tasks", str(tasks), "--cache-dir", str(cache),
            "--device", "cpu", "--batch-size", "4", "--out", str(out), "--dtype"]
    assert main(argv + ["fp32"]) == 0
    first = json.loads((out / "summary.json").read_text())
    record = json.loads((out / "eval_run.json").read_text())
    assert record["options"]["dtype"] == "fp32"
    loads = []
    original = Embedder.from_pretrained.__func__
    monkeypatch.setattr(Embedder, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(1) or original(cls, *a, **k)))
    for recorded, again in (("fp32", "float32"), ("float32", "fp32"), ("float32", "float32")):
        (out / "eval_run.json").write_text(json.dumps({**record, "options": {**record["options"], "dtype": recorded}}))
        before = _mtimes(out)
        capsys.readouterr()
        assert main(argv + [again]) == 0, (recorded, again)
        assert "finished earlier with the same options and inputs; nothing to do" in capsys.readouterr().out
        assert loads == [] and _mtimes(out) == before
    assert main(argv + ["bf16"]) == 2
    assert "holds a run with other options (--dtype: 'float32' -> 'bf16')" in _error_lines(capsys)[0]
    # interrupted (its record unfinished, no summary yet), recorded with the long spelling: continued from the cache
    (out / "eval_run.json").write_text(json.dumps({**record, "finished": False,
                                                   "options": {**record["options"], "dtype": "float32"}}))
    (out / "summary.json").unlink()
    assert main(argv + ["fp32"]) == 0
    resumed = json.loads((out / "summary.json").read_text())
    # this attempt encoded nothing: every vector came from the cache the first attempt filled
    assert resumed["run"] == {"attempts": 2} and resumed["encoding"]["last_attempt"]["encoded"] == 0
    assert resumed["encoding"]["last_attempt"]["from_cache"] == first["encoding"]["distinct_items"]
    assert resumed["tasks"] == first["tasks"]


# -- single-file outputs ------------------------------------------------------------------------------------
def test_a_file_output_is_claimed_through_its_sidecar(tmp_path):
    out = tmp_path / "sub" / "scores.jsonl"
    owned = claim_file(out, "judge", {"a": 1})
    assert out.parent.is_dir() and read_file_marker(out)["files"] == {"scores.jsonl": None}  # pending
    out.write_text("x\n")
    # a killed run (never committed; the OS drops its lock) leaves a pending entry: the file found there may be
    # the user's, saved after the kill, and is not replaced without --overwrite
    os.close(owned._lock_fd)
    owned._lock_fd = None
    with pytest.raises(FileNotOwned, match="not written by `unime judge`"):
        claim_file(out, "judge")
    again = claim_file(out, "judge", overwrite=True)
    again.commit()
    again.release()
    marker = read_file_marker(out)
    assert marker["command"] == "judge" and len(marker["files"]["scores.jsonl"]) == 40
    assert file_marker_path(out) == tmp_path / "sub" / ".scores.jsonl.unime-output.json"
    rerun = claim_file(out, "judge")  # written by this command and unchanged: a re-run may replace it
    rerun.commit()
    rerun.release()
    out.write_text("edited by the user\n")  # changed since: the user's now
    with pytest.raises(FileNotOwned, match=rf"output file {out} exists and was not written by `unime judge` "
                                           r"\(or was changed since\).*overwrite=True"):
        claim_file(out, "judge")
    with pytest.raises(FileNotOwned, match="not written by `unime embed`"):
        claim_file(out, "embed")  # another command's file
    claim_file(out, "judge", overwrite=True).release()
    assert sorted(p.name for p in out.parent.iterdir()) == [".scores.jsonl.unime-output.json", "scores.jsonl"]


def test_a_file_saved_after_a_killed_run_is_not_taken_for_its_output(tmp_path, capsys):
    """`unime embed --out vecs.npy` killed after its pending sidecar was written (its lock file left, its pid
    dead); the user then saves their own vecs.npy: the re-run refuses it and cleans the stale lock."""
    import subprocess
    import sys

    out = tmp_path / "sf" / "vecs.npy"
    killed = subprocess.run([sys.executable, "-c", "import os; from unime.outdir import claim_file; "
                             f"claim_file({str(out)!r}, 'embed'); os._exit(9)"])
    assert killed.returncode == 9 and (out.parent / ".vecs.npy.unime-lock").is_file()
    assert read_file_marker(out)["files"] == {"vecs.npy": None}
    out.write_bytes(b"the user's vectors")
    argv = ["embed", "--model", "m", "--items", "i.jsonl", "--out", str(out)]
    assert main(argv) == 2
    assert "vecs.npy exists and was not written by `unime embed`" in _error_lines(capsys)[0]
    assert out.read_bytes() == b"the user's vectors"
    assert sorted(p.name for p in out.parent.iterdir()) == [".vecs.npy.unime-output.json", "vecs.npy"]  # no lock


def _killed_after_rename(out: Path, command: str, writes: dict, companions: tuple = (), before_rename=False) -> None:
    """A run of `command` in a process killed (os._exit) right after its files were renamed into place, before the
    CLI's commit — as the commands do: claim, then `atomic_open` each file; with `before_rename`, killed in the
    rename instead, after the sidecar recorded what it was putting in place."""
    import subprocess
    import sys

    code = ("import os, sys\n"
            "from unime.data.atomic import atomic_open\n"
            "from unime.outdir import OwnedFile, claim_file\n"
            "if %r:\n"
            "    put = OwnedFile._put_in_place\n"
            "    OwnedFile._put_in_place = lambda self, t, tmp: (put(self, t, tmp), os._exit(9))\n"
            f"owned = claim_file({str(out)!r}, {command!r}, companions={tuple(str(c) for c in companions)!r})\n"
            "for name, text in %r.items():\n"
            "    with atomic_open(name) as fh:\n"
            "        fh.write(text)\n"
            "os._exit(9)\n") % (before_rename, {str(k): v for k, v in writes.items()})
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9


def test_a_file_command_killed_after_writing_its_files_is_replaced_by_its_rerun(tmp_path, caplog):
    """QA: `unime judge --out jd/k2.jsonl` killed after its files were renamed into place, before it recorded them:
    the re-run of the same command was refused (its sidecar pending). The files it put in place are its own."""
    import logging

    out = tmp_path / "jd" / "k2.jsonl"
    metrics, png = tmp_path / "jd" / "k2.metrics.json", tmp_path / "jd" / "k2.calibration.png"
    _killed_after_rename(out, "judge", {out: "scores\n", metrics: "{}"}, companions=(metrics, png))
    marker = read_file_marker(out)
    assert marker["files"] == {"k2.jsonl": None, "k2.metrics.json": None, "k2.calibration.png": None}
    assert (out.parent / ".k2.jsonl.unime-lock").is_file()  # the killed run's lock file, its pid gone
    # another command: refused, naming the command whose interrupted run left the file
    with pytest.raises(FileNotOwned, match=rf"output file {out} exists and was left by an interrupted `unime judge` "
                                           r"run, not written by `unime reason generate`; .*overwrite=True"):
        claim_file(out, "reason generate")
    with caplog.at_level(logging.INFO, logger="unime.outdir"):
        rerun = claim_file(out, "judge", companions=(metrics, png))
    replaced = [r.getMessage() for r in caplog.records if "interrupted" in r.getMessage()]
    assert replaced == [f"{out}: replacing the output of an interrupted `unime judge` run",
                        f"{metrics}: replacing the output of an interrupted `unime judge` run"]
    # the re-run holds the files as the killed run's, until it replaces them: killed again first, they stay its own
    assert read_file_marker(out)["files"]["k2.jsonl"] == hashlib.sha1(b"scores\n").hexdigest()
    from unime.data.atomic import atomic_open

    with atomic_open(out) as fh:
        fh.write("new scores\n")
    rerun.commit()
    rerun.release()
    assert read_file_marker(out)["files"] == {"k2.jsonl": hashlib.sha1(b"new scores\n").hexdigest(),
                                              "k2.metrics.json": hashlib.sha1(b"{}").hexdigest()}
    assert sorted(p.name for p in out.parent.iterdir()) == [".k2.jsonl.unime-output.json", "k2.jsonl",
                                                            "k2.metrics.json"]


def test_a_file_saved_where_a_killed_run_was_putting_its_own_is_not_replaced(tmp_path):
    """Killed in the rename (the sidecar recorded what the run was putting in place, the file never came): the file
    the user saves there afterwards has other content and stays theirs."""
    out = tmp_path / "t.jsonl"
    _killed_after_rename(out, "reason generate", {out: "tcots\n"}, before_rename=True)
    assert not out.exists() and read_file_marker(out)["placing"] == {"t.jsonl": hashlib.sha1(b"tcots\n").hexdigest()}
    out.write_text("the user's tcots\n")
    with pytest.raises(FileNotOwned, match=rf"output file {out} exists and was not written by `unime reason generate` "
                                           r"\(or was changed since\)"):
        claim_file(out, "reason generate")
    assert out.read_text() == "the user's tcots\n"


def test_embed_killed_after_writing_its_array_reruns(tiny_model_dir, tmp_path, caplog):
    """The same through the CLI: `unime embed --out ed/k3.npy` killed (SIGKILL) after the array was put in place,
    before the CLI's commit; the same command again replaces it and records it."""
    import logging
    import subprocess
    import sys

    import numpy as np

    model, out = tiny_model_dir("qwen2_vl"), tmp_path / "ed" / "k3.npy"
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("a red cube", "a blue ball")))
    argv = ["embed", "--model", model, "--items", str(items), "--out", str(out), "--device", "cpu"]
    code = ("import os, signal\nfrom unime.outdir import OwnedFile\n"
            "OwnedFile.commit = lambda self: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"from unime.cli import main\nmain({argv!r})\n")
    killed = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -9 and read_file_marker(out)["files"] == {"k3.npy": None}
    first = np.load(out)
    with caplog.at_level(logging.INFO, logger="unime.outdir"):
        assert main(argv) == 0
    assert [r.getMessage() for r in caplog.records if r.name == "unime.outdir"] == [
        f"{out}: replacing the output of an interrupted `unime embed` run"]
    np.testing.assert_array_equal(np.load(out), first)
    assert read_file_marker(out)["files"] == {"k3.npy": hashlib.sha1(out.read_bytes()).hexdigest()}


def test_the_calibration_figure_is_put_in_place_by_rename(tmp_path):
    """`unime judge`'s calibration figure is written as its other files are (a temporary sibling renamed into
    place, announced to the output's owner), so a kill leaves no half-written figure and the re-run knows it."""
    from unime.data.atomic import before_replace
    from unime.mining.judge_check import plot_calibration

    path, heard = tmp_path / "c.png", []
    before_replace(path, lambda target, tmp: heard.append((target, tmp.read_bytes()[:8])))
    try:
        plot_calibration([1, 0, 1, 1], [0.05, 0.08, 0.95, 0.91], path)
    finally:
        before_replace(path, None)
    assert heard == [(path, b"\x89PNG\r\n\x1a\n")] and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_killed_before_replacing_its_own_file_leaves_it_its_own(tmp_path):
    out = tmp_path / "scores.jsonl"
    first = claim_file(out, "judge")
    out.write_text("x\n")
    first.commit()
    first.release()
    killed = claim_file(out, "judge")  # a re-run killed before it wrote anything: the file is still the first's
    os.close(killed._lock_fd)
    killed._lock_fd = None
    claim_file(out, "judge").release()
    out.write_text("saved by the user\n")
    with pytest.raises(FileNotOwned):
        claim_file(out, "judge")


def _file_argv(command: str, out: Path) -> list[str]:
    """A parseable command line of each command that writes one output file."""
    extra = {
        "judge": ["--pairs", "p.jsonl", "--judge", "j", "--out", str(out)],
        "embed": ["--model", "m", "--items", "i.jsonl", "--out", str(out)],
        "reason teacher": ["--world", "w", "--out", str(out)],
        "reason generate": ["--model", "m", "--records", "r.jsonl", "--out", str(out)],
        "reason materialize": ["--records", "r.jsonl", "--tcots", "t.jsonl", "--out", str(out)],
        "data convert": ["r.jsonl", str(out)],
    }[command]
    return command.split() + extra


@pytest.mark.parametrize("command", sorted(OWNED_FILE_COMMANDS))
def test_a_user_file_at_a_file_output_survives_every_command(tmp_path, command, capsys):
    out = tmp_path / "mine.jsonl"
    out.write_text("the user's file\n")
    assert main(_file_argv(command, out)) == 2
    assert _error_lines(capsys) == [
        f"unime: error: output file {out} exists and was not written by `unime {command}` (or was changed since); "
        "refusing to replace it. Choose another output name, or pass --overwrite to replace it"]
    assert out.read_text() == "the user's file\n" and sorted(p.name for p in tmp_path.iterdir()) == ["mine.jsonl"]


def test_a_failed_file_command_leaves_nothing_beside_its_output(tmp_path, capsys):
    bad = tmp_path / "r.jsonl"
    bad.write_text("{not json\n")
    assert main(["data", "convert", str(bad), str(tmp_path / "o.parquet")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]  # no output, no pending sidecar


def test_judge_companion_files_are_protected_too(tmp_path, capsys):
    (tmp_path / "s.metrics.json").write_text("{}")
    argv = ["judge", "--pairs", "p.jsonl", "--judge", "j", "--out", str(tmp_path / "s.jsonl"),
            "--label-column", "label"]
    assert main(argv) == 2
    assert f"output file {tmp_path / 's.metrics.json'} exists" in _error_lines(capsys)[0]
    assert (tmp_path / "s.metrics.json").read_text() == "{}"


def test_data_convert_rewrites_its_own_output_refuses_an_edited_one_and_overwrite_replaces(tmp_path, capsys):
    src = tmp_path / "r.jsonl"
    src.write_text(json.dumps({"query": {"text": "q"}, "positive": {"text": "p"}}) + "\n")
    out = tmp_path / "new" / "r.parquet"  # a missing folder is created
    assert main(["data", "convert", str(src), str(out)]) == 0
    written = out.read_bytes()
    assert read_file_marker(out)["command"] == "data convert"
    assert main(["data", "convert", str(src), str(out)]) == 0  # its own, unchanged output: a re-run
    out.write_bytes(b"changed by the user")
    capsys.readouterr()
    assert main(["data", "convert", str(src), str(out)]) == 2
    assert "was not written by `unime data convert` (or was changed since)" in _error_lines(capsys)[0]
    assert out.read_bytes() == b"changed by the user"
    assert main(["data", "convert", str(src), str(out), "--overwrite"]) == 0
    assert out.read_bytes() == written


# -- data synth / data import claim their folder ------------------------------------------------------------
def test_data_synth_claims_locks_and_keeps_foreign_files(tmp_path, capsys):
    out = tmp_path / "world"
    assert main(["data", "synth", "--out", str(out), "--size", "tiny"]) == 0
    assert read_marker(out)["command"] == "data synth"
    before = _mtimes(out)
    capsys.readouterr()
    assert main(["data", "synth", "--out", str(out), "--size", "tiny"]) == 0
    assert "already holds this world (same seed and sizes); nothing to do" in capsys.readouterr().out
    assert _mtimes(out) == before
    assert main(["data", "synth", "--out", str(out), "--size", "tiny", "--seed", "2"]) == 2
    assert "seed: 0 -> 2" in _error_lines(capsys)[0] and _mtimes(out) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["data", "synth", "--out", str(foreign), "--size", "tiny"]) == 2
    assert "not written by unime" in _error_lines(capsys)[0]
    assert main(["data", "synth", "--out", str(foreign), "--size", "tiny", "--overwrite"]) == 0
    assert (foreign / "notes.txt").read_text() == "mine" and (foreign / "world.json").is_file()
    assert read_marker(foreign)["preexisting"] == ["notes.txt"]


def test_data_synth_overwrite_keeps_the_users_files_inside_the_worlds_folders(tmp_path, caplog):
    """--overwrite replaces the world's files; a file the user put inside one of the world's folders stays."""
    import logging

    out = tmp_path / "w2"
    assert main(["data", "synth", "--out", str(out), "--size", "tiny"]) == 0
    (out / "train" / "MY_TRAIN.txt").write_text("mine")
    records = (out / "train" / "records.jsonl").stat().st_ino
    with caplog.at_level(logging.WARNING, logger="unime.data.atomic"):
        assert main(["data", "synth", "--out", str(out), "--size", "tiny", "--overwrite"]) == 0
    assert (out / "train" / "MY_TRAIN.txt").read_text() == "mine"
    assert (out / "train" / "records.jsonl").stat().st_ino != records  # the world's own file: written anew
    assert any(f"{out}: left as they were beside the world just written: train/MY_TRAIN.txt" == r.getMessage()
               for r in caplog.records)


def test_build_tiny_with_overwrite_keeps_every_file_it_does_not_write_and_names_the_unknown_ones(tmp_path, capsys,
                                                                                                   caplog):
    """A command whose output is one model folder writes its files into the folder like any other and touches
    nothing else: the user's files stay, and a file that is neither the user's recorded one nor written now (an
    earlier build's, or one the user added later) stays too, named in a warning."""
    import logging

    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["models", "build-tiny", "--out", str(out)]) == 2
    assert "not written by unime" in _error_lines(capsys)[0]
    assert main(["models", "build-tiny", "--out", str(out), "--overwrite"]) == 0
    first = {p.name for p in out.iterdir()}
    assert {"notes.txt", "config.json", "model.safetensors"} <= first
    (out / "added_later.json").write_text("{}")  # an earlier build's file, or the user's: unime cannot tell
    assert "added_later.json" not in read_marker(out)["preexisting"]
    with caplog.at_level(logging.WARNING, logger="unime.models.export"):
        assert main(["models", "build-tiny", "--out", str(out), "--family", "qwen3_vl", "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "added_later.json").read_text() == "{}"
    assert any("left as they were beside the model just written: added_later.json" in r.getMessage()
               for r in caplog.records)
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen3_vl"
    assert read_marker(out)["command"] == "models build-tiny"
    mask = os.umask(0)
    os.umask(mask)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir() if not p.name.startswith(".")} == \
        {p.name: oct(0o666 & ~mask) for p in out.iterdir() if not p.name.startswith(".")}


def test_a_second_data_synth_on_a_locked_folder_fails_at_once(tmp_path, capsys):
    from unime.outdir import claim

    out = tmp_path / "w"
    with claim(out, "data synth"):
        import subprocess
        import sys

        env_src = str(Path(__file__).resolve().parents[1] / "src")
        done = subprocess.run([sys.executable, "-c", "import sys; from unime.cli import main; "
                               "sys.exit(main(sys.argv[1:]))", "data", "synth", "--out", str(out), "--size", "tiny"],
                              capture_output=True, text=True, env={"PYTHONPATH": env_src, "PATH": "/usr/bin:/bin"},
                              timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"unime: error: output folder {out} is in use by another unime run (pid {os.getpid()}); wait for it to "
        "finish or choose another --out")


def test_data_import_claims_its_folder(tmp_path, capsys):
    from tests.captioned_folder import make_captioned_folder

    photos, captions = make_captioned_folder(tmp_path / "src", n=12)
    out = tmp_path / "imported"
    argv = ["data", "import", "--captions", str(captions), "--images", str(photos), "--eval-candidates", "3",
            "--out", str(out)]
    assert main(argv) == 0
    assert read_marker(out)["command"] == "data import" and (out / "import.json").is_file()
    assert "ignore" not in json.loads((out / "import.json").read_text())["options"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("k")
    capsys.readouterr()
    assert main(argv[:-1] + [str(foreign)]) == 2
    assert "not written by unime" in _error_lines(capsys)[0] and sorted(os.listdir(foreign)) == ["keep.txt"]
    assert main(argv[:-1] + [str(foreign), "--overwrite"]) == 0
    assert (foreign / "keep.txt").read_text() == "k" and (foreign / "eval_tasks.yaml").is_file()



def test_data_import_rerun_finished_changed_overwrite_and_interrupted(tmp_path, capsys):
    """The re-run convention of mining / eval / the trainers: a finished import with the same options and
    inputs does nothing; other options or inputs are refused naming the keys; --overwrite starts over; an
    interrupted import (no import.json, written last) is done again."""
    from tests.captioned_folder import make_captioned_folder

    photos, captions = make_captioned_folder(tmp_path / "src", n=12)
    out = tmp_path / "imported"
    argv = ["data", "import", "--captions", str(captions), "--images", str(photos), "--eval-candidates", "3",
            "--out", str(out)]
    assert main(argv) == 0
    before = _mtimes(out)
    capsys.readouterr()
    assert main(argv) == 0
    assert (f"{out}: finished earlier with the same options and inputs; nothing to do (pass --overwrite to redo it)"
            in capsys.readouterr().out)
    assert _mtimes(out) == before

    assert main(argv + ["--seed", "1", "--judge-negatives", "2"]) == 2
    (line,) = _error_lines(capsys)
    assert line == (f"unime: error: {out} holds a run with other options (--judge-negatives: 3 -> 2, --seed: 0 -> 1); "
                    "re-run with the same options to continue it, pass --overwrite to start over, or choose another "
                    "--out")
    assert _mtimes(out) == before

    # one image's bytes change (a new file: the import holds a hard link to the old one)
    (photos / "new.png").write_bytes((photos / "pic_004.png").read_bytes())
    os.replace(photos / "new.png", photos / "pic_003.png")
    assert main(argv) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith(f"unime: error: {out} holds a run with other options (inputs: '12 images, sha1 ")
    assert _mtimes(out) == before

    assert main(argv + ["--seed", "1", "--overwrite"]) == 0
    assert json.loads((out / "import.json").read_text())["options"]["seed"] == 1
    assert _mtimes(out) != before
    assert main(argv + ["--seed", "1"]) == 0 and "nothing to do" in capsys.readouterr().out

    (out / "import.json").unlink()  # an import killed before its last write
    assert main(argv + ["--seed", "1"]) == 0
    assert "nothing to do" not in capsys.readouterr().out and (out / "import.json").is_file()


def test_a_second_run_on_a_locked_output_file_fails_at_once_naming_the_holder(tmp_path):
    """Two processes: one holds `unime data convert`'s claim on OUT (as a run does while it writes), a
    second `unime data convert` to the same OUT fails at once with the holder's pid and writes nothing;
    after the holder is killed (-9) the lock is gone and the same command runs."""
    import signal
    import subprocess
    import sys

    from tests.bad_inputs import good_record

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({**good_record(i), "query": {"text": f"query {i}"}}) + "\n" for i in range(3)))
    out = tmp_path / "out.jsonl"
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "PATH": "/usr/bin:/bin"}
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from unime.outdir import claim_file; "
                               "claim_file(sys.argv[1], 'data convert'); print('held', flush=True); time.sleep(600)",
                               str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        cli = [sys.executable, "-c", "import sys; from unime.cli import main; sys.exit(main(sys.argv[1:]))",
               "data", "convert", str(src), str(out)]
        second = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines()[-1] == (
            f"unime: error: output file {out} is in use by another unime run (pid {holder.pid}); wait for it to "
            "finish or choose another output name")
        assert not out.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    again = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert len(out.read_text().splitlines()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.jsonl.unime-output.json", "in.jsonl", "out.jsonl"]


def test_the_file_lock_is_taken_once_and_released(tmp_path):
    from unime.outdir import FolderInUse, file_lock_path

    out = tmp_path / "x.jsonl"
    first = claim_file(out, "data convert")
    with pytest.raises(FolderInUse, match=rf"pid {os.getpid()}\)"):
        claim_file(out, "data convert")
    first.release()
    assert not file_lock_path(out).exists()
    claim_file(out, "data convert").release()  # free again


def test_eval_counters_and_timings_after_a_resume_describe_the_whole_run(tiny_model_dir, tmp_path, monkeypatch):
    """An eval interrupted after its first block of embeddings reached the cache, then re-run: summary.json's
    encoding counters equal an uninterrupted run's (every distinct item encoded once, none from a cache
    that existed before the run), its encode and wall seconds add the first attempt's, and `last_attempt`
    keeps the re-run's own figures."""
    from unime.eval import runners
    from unime.models.embedding_cache import RunEncoder

    block = 3
    calls = {"n": 0, "stop_at": 2}

    class Interrupted(RunEncoder):
        def __init__(self, *a, **k):
            super().__init__(*a, **{**k, "flush_every": block, "flush_seconds": None})  # one call per block

        def _encode(self, items, **kw):
            calls["n"] += 1
            if calls["n"] == calls["stop_at"]:
                raise KeyboardInterrupt  # the first attempt dies in its second block
            return super()._encode(items, **kw)

    monkeypatch.setattr(runners, "RunEncoder", Interrupted)
    tasks = build_world(tmp_path / "world")

    def argv(out, cache):
        return ["eval", "--model", tiny_model_dir("qwen2_vl"), "--tasks", str(tasks), "--cache-dir", str(cache),
                "--device", "cpu", "--batch-size", "2", "--out", str(out)]

    out = tmp_path / "ev"
    assert main(argv(out, tmp_path / "cache")) != 0  # interrupted
    record = json.loads((out / "eval_run.json").read_text())
    assert record["finished"] is False and record["attempt_work"]["1"]["encoded"] == block
    first = record["attempt_work"]["1"]
    calls["stop_at"] = -1
    assert main(argv(out, tmp_path / "cache")) == 0
    resumed = json.loads((out / "summary.json").read_text())
    assert main(argv(tmp_path / "straight", tmp_path / "cache2")) == 0
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())

    assert resumed["run"] == {"attempts": 2} and resumed["tasks"] == straight["tasks"]
    enc, last = resumed["encoding"], resumed["encoding"]["last_attempt"]
    assert {k: enc[k] for k in ("items_seen", "distinct_items", "from_cache", "encoded")} == \
        {k: straight["encoding"][k] for k in ("items_seen", "distinct_items", "from_cache", "encoded")}
    assert straight["encoding"]["from_cache"] == 0 and enc["encoded"] == enc["distinct_items"] > block
    assert last["encoded"] == enc["encoded"] - block and last["from_cache"] == block
    assert enc["encode_seconds"] == pytest.approx(last["encode_seconds"] + first["encode_seconds"], abs=2e-3)
    timing = resumed["timing"]
    assert timing["wall_seconds"] == pytest.approx(timing["last_attempt"]["wall_seconds"] + first["wall_seconds"],
                                                   abs=2e-3)
    assert "last_attempt" not in straight["encoding"] and "last_attempt" not in straight["timing"]
    # QA: results.md said "taken from the embedding cache: 0" / "encoded by the model in this run: N" (the whole
    # run's), not what the last attempt did: it says both now
    md = (out / "results.md").read_text().splitlines()
    n = enc["distinct_items"]
    assert md[md.index("## Encoding") + 4:md.index("## Encoding") + 7] == [
        "- taken from the embedding cache: 0 (cached before the run began)",
        f"- encoded by the model in this run: {n}, over 2 attempts",
        f"- the last attempt: {n - block} encoded, {block} taken from the embedding cache (the interrupted attempts' "
        "work among them)"]
    md = (tmp_path / "straight" / "results.md").read_text().splitlines()
    assert md[md.index("## Encoding") + 4:md.index("## Encoding") + 6] == [
        "- taken from the embedding cache: 0", f"- encoded by the model in this run: {n}"]


def test_a_rerun_removes_the_temporary_file_its_killed_write_left_and_nothing_else(tmp_path, caplog):
    """A run killed while it wrote its file leaves `atomic_path`'s temporary sibling (`.vecs.npy.tmp-XXXXXXXX`, as
    large as what it had written): the re-run of the same command, holding the output's lock, removes it. A file of
    another name, one of the same prefix but not `mkstemp`'s shape, and a temporary of another output stay; another
    command's claim (its sidecar not the killed run's) removes nothing."""
    import logging
    import subprocess
    import sys

    out = tmp_path / "sf" / "vecs.npy"
    killed = subprocess.run([sys.executable, "-c", "import os; from unime.outdir import claim_file; "
                             "from unime.data.atomic import atomic_open; "
                             f"claim_file({str(out)!r}, 'embed')\n"
                             f"with atomic_open({str(out)!r}, 'wb') as fh:\n"
                             "    fh.write(b'half of the vectors'); fh.flush(); os._exit(9)"])
    assert killed.returncode == 9
    left = [p.name for p in out.parent.iterdir() if p.name.startswith(".vecs.npy.tmp-")]
    assert len(left) == 1 and (out.parent / left[0]).read_bytes() == b"half of the vectors"
    keep = [".vecs.npy.tmp-mine", ".other.npy.tmp-abcd1234", "notes.txt"]
    for name in keep:
        (out.parent / name).write_text("the user's")
    claim_file(out, "judge", overwrite=True).release()  # another command: not its run's leftovers
    assert (out.parent / left[0]).is_file()
    with caplog.at_level(logging.INFO, logger="unime.outdir"):
        claim_file(out, "embed").release()
    assert not (out.parent / left[0]).exists()
    assert all((out.parent / n).read_text() == "the user's" for n in keep)
    assert any(left[0] in r.getMessage() and "interrupted `unime embed`" in r.getMessage() for r in caplog.records)
