"""Output folders are owned and locked (`unime.outdir`): what a command may write, replace and delete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from unime.options import command_line_wording
from unime.outdir import (LOCK_NAME, MARKER_NAME, FolderInUse, FolderNotOwned, claim, may_replace, read_marker,
                          remove_owned, require_replaceable)


def test_a_new_folder_is_created_marked_and_reentered_by_the_same_command(tmp_path):
    out = tmp_path / "run"
    with claim(out, "mine", {"k": 5}) as owned:
        assert out.is_dir() and owned.may_replace("judge")
        marker = read_marker(out)
        assert marker["command"] == "mine" and marker["preexisting"] == [] and len(marker["options_hash"]) == 16
        (out / "judge").mkdir()
    with claim(out, "mine", {"k": 6}):  # a re-run of the same command (resume): allowed
        assert read_marker(out)["preexisting"] == []
    assert may_replace(out, "judge")


def test_an_unmarked_non_empty_folder_is_refused_and_left_untouched(tmp_path):
    out = tmp_path / "mine"
    (out / "judge").mkdir(parents=True)
    (out / "judge" / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(FolderNotOwned, match=rf"{out}.*not written by unime.*--overwrite"), command_line_wording():
        claim(out, "mine")
    assert sorted(p.name for p in out.iterdir()) == ["judge"]  # no marker, no lock file written


def test_the_refusal_of_a_folder_names_the_keywords_from_python_and_the_flags_in_a_command(tmp_path):
    """QA: from Python, `train_embedder(out=...)` into a folder of other files said "Choose another --out, or pass
    --overwrite", options the Python API does not have: its keywords there, the flags in a command of `unime`."""
    out = tmp_path / "records"
    out.mkdir()
    (out / "train.jsonl").write_text("{}\n")
    with pytest.raises(FolderNotOwned) as caught:
        claim(out, "train embedder")
    assert str(caught.value).endswith("Choose another out, or pass overwrite=True to let this command replace what "
                                      "it writes there")
    with pytest.raises(FolderNotOwned) as caught, command_line_wording():
        claim(out, "train embedder")
    assert str(caught.value).endswith("Choose another --out, or pass --overwrite to let this command replace what it "
                                      "writes there")
    assert sorted(p.name for p in out.iterdir()) == ["train.jsonl"]


def test_the_folder_refusal_names_the_commands_own_output_option(tmp_path, capsys):
    """QA: `unime reason split --out-dir X` into a folder of other files said "Choose another --out", an option
    `reason split` does not have; `eval reference`'s --also folders likewise. Each names its own option."""
    from unime.cli import main

    out = tmp_path / "split"
    out.mkdir()
    (out / "mine.txt").write_text("the user's\n")
    argv = ["reason", "split", "--records", str(tmp_path / "r.jsonl"), "--tcots", str(tmp_path / "t.jsonl"),
            "--judge", str(tmp_path / "judge"), "--out-dir", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"unime: error: output folder {out} is not empty and was not written by unime; refusing to write into it (its "
        "files could be replaced). Choose another --out-dir, or pass --overwrite to let this command replace what it "
        "writes there")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    with pytest.raises(FolderNotOwned) as caught:
        claim(out, "reason split", option="out_dir")
    assert str(caught.value).endswith("Choose another out_dir, or pass overwrite=True to let this command replace "
                                      "what it writes there")
    with pytest.raises(FolderNotOwned) as caught, command_line_wording():
        claim(out, "eval reference", option="also")
    assert "Choose another --also, or pass --overwrite" in str(caught.value)


def test_an_output_file_under_a_file_is_refused_naming_that_file(tmp_path):
    """QA: `unime embed --out notes/x.npy` where `notes` is a file said only `unime: error: notes: File exists` (the
    parent folder's mkdir), which reads as if the output existed: the refusal names the output and the file in the
    way, and leaves that file alone."""
    from unime.outdir import FileNotOwned, claim_file

    (tmp_path / "notes").write_text("the user's\n")
    path = tmp_path / "notes" / "sub" / "x.npy"
    with pytest.raises(FileNotOwned) as caught:
        claim_file(path, "embed")
    assert str(caught.value) == f"output file {path}: {tmp_path / 'notes'} is a file, not a folder"
    assert (tmp_path / "notes").read_text() == "the user's\n"


def test_the_file_refusal_names_overwrite_as_the_caller_gives_it(tmp_path):
    """From Python, a claimed output file of other content said "or pass --overwrite", a flag the Python API does
    not have: overwrite=True there, --overwrite in a command of `unime`."""
    from unime.outdir import FileNotOwned, claim_file

    path = tmp_path / "scores.jsonl"
    path.write_text("the user's\n")
    said = (f"output file {path} exists and was not written by `unime judge` (or was changed since); refusing to "
            "replace it. Choose another output name, or pass %s to replace it")
    with pytest.raises(FileNotOwned) as caught:
        claim_file(path, "judge")
    assert str(caught.value) == said % "overwrite=True"
    with pytest.raises(FileNotOwned) as caught, command_line_wording():
        claim_file(path, "judge")
    assert str(caught.value) == said % "--overwrite"
    assert path.read_text() == "the user's\n"


def test_another_commands_folder_is_refused(tmp_path):
    out = tmp_path / "x"
    claim(out, "eval").release()
    with pytest.raises(FolderNotOwned, match=r"written by `unime eval`, not `unime mine`"):
        claim(out, "mine")


def test_overwrite_takes_the_folder_but_the_users_entries_are_never_deleted(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with claim(out, "demo", overwrite=True) as owned:
        assert read_marker(out)["preexisting"] == ["notes.txt"]
        assert owned.may_replace("notes.txt")  # this run was told --overwrite: it may write the same name
        (out / "report.md").write_text("r")
        (out / "stages").mkdir()
    with claim(out, "demo") as owned:  # a later run without --overwrite
        assert not owned.may_replace("notes.txt") and owned.may_replace("report.md")
        with pytest.raises(FolderNotOwned, match="notes.txt was not written by this command"):
            require_replaceable(out, "notes.txt")
        assert remove_owned(out, "demo", {"report.md", "stages", "notes.txt"}) == ["report.md", "stages"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["notes.txt", MARKER_NAME, LOCK_NAME])


def test_remove_owned_refuses_a_folder_the_command_does_not_own(tmp_path):
    out = tmp_path / "elsewhere"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    with pytest.raises(FolderNotOwned):
        remove_owned(out, "demo", {"report.md"})
    assert (out / "thesis.tex").read_text() == "x"
    (out / "report.md").write_text("r")
    assert remove_owned(out, "demo", {"report.md"}, overwrite=True) == ["report.md"]  # --fresh --overwrite: asked for
    assert (out / "thesis.tex").read_text() == "x"  # not the command's: never deleted


def test_remove_owned_keeps_and_names_what_was_added_after_the_claim(tmp_path, caplog):
    """The marker lists the entries found when the folder was claimed; a file or folder the user adds later is
    not the command's either: only the command's own layout goes."""
    import logging

    out = tmp_path / "demo"
    with claim(out, "demo"):
        (out / "stages").mkdir()
        (out / "report.md").write_text("r")
    (out / "NOTES.md").write_text("x")
    (out / "mine").mkdir()
    (out / "mine" / "a.py").write_text("y")
    with caplog.at_level(logging.WARNING, logger="unime.outdir"):
        assert remove_owned(out, "demo", {"stages", "report.md", "world"}) == ["report.md", "stages"]
    assert (out / "NOTES.md").read_text() == "x" and (out / "mine" / "a.py").read_text() == "y"
    assert any(f"{out}: left as they were (not written by `unime demo`): NOTES.md, mine" in r.getMessage()
               for r in caplog.records)


def test_a_second_claim_fails_at_once_naming_the_holders_pid(tmp_path):
    out = tmp_path / "busy"
    script = textwrap.dedent(f"""
        import sys, time
        from unime.outdir import claim
        claim({str(out)!r}, "mine")
        print("locked", flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(FolderInUse, match=rf"in use by another unime run \(pid {proc.pid}\)"):
            claim(out, "mine")
        assert time.monotonic() - t0 < 5  # fails at once, does not wait
    finally:
        proc.kill()  # SIGKILL: the OS drops the lock with the process
        proc.wait()
    claim(out, "mine").release()  # free again after the crash


def test_a_waiting_lock_waits_for_its_holder_once_and_takes_it_when_the_holder_is_killed(tmp_path):
    """`waiting_lock` (the pretrained cache's): a busy lock is waited for, its holder's pid and host reported once;
    a holder killed (SIGKILL) releases it; the lock file names the new holder and is removed at the end. A lock file
    a killed run left (nobody holds it) is taken at once."""
    import socket

    from unime.outdir import file_lock_path, waiting_lock

    lock = file_lock_path(tmp_path / "model")
    script = textwrap.dedent(f"""
        import time
        from unime.outdir import waiting_lock
        with waiting_lock({str(lock)!r}, "x", lambda pid, host: None):
            print("held", flush=True)
            time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    waits = []

    def wait(pid, host):
        waits.append((pid, host))
        holder.kill()  # the OS drops its lock

    try:
        assert holder.stdout.readline().strip() == "held"
        with waiting_lock(lock, "x", wait):
            assert lock.read_text() == f"{os.getpid()}\n{socket.gethostname()}\n"
    finally:
        holder.kill()
        holder.wait()
    assert waits == [(str(holder.pid), socket.gethostname())]
    assert not lock.exists()
    lock.write_text(f"{holder.pid}\nelsewhere\n")  # as the killed holder left it
    with waiting_lock(lock, "x", wait):
        assert lock.read_text() == f"{os.getpid()}\n{socket.gethostname()}\n"
    assert len(waits) == 1 and not lock.exists()


def test_a_nested_claim_in_the_same_process_re_enters(tmp_path):
    out = tmp_path / "run"
    with claim(out, "train embedder", {"a": 1}):
        with claim(out, "train embedder", {"a": 1}) as inner:  # the CLI claimed, then the trainer claims
            assert inner.may_replace("merged")
        with pytest.raises(FolderInUse, match="in this process"):
            claim(out, "mine")


def test_stale_temporaries_of_a_killed_write_are_cleaned_on_claim(tmp_path):
    out = tmp_path / "run"
    claim(out, "train embedder").release()
    (out / ".adapter.tmp-abc123").mkdir()
    (out / ".README.md.tmp-x1").write_text("half")
    (out / "merged").mkdir()
    claim(out, "train embedder").release()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".unime")) == ["merged"]


def test_a_whole_folder_replacement_keeps_the_marker(tmp_path):
    from unime.data.atomic import atomic_dir

    out = tmp_path / "model"
    with claim(out, "models build-tiny"):
        with atomic_dir(out, overwrite=True) as tmp:  # the command replaces its folder wholesale
            (tmp / "config.json").write_text("{}")
    assert read_marker(out)["command"] == "models build-tiny"
    assert json.loads((out / MARKER_NAME).read_text())["preexisting"] == []


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def test_a_run_that_fails_before_writing_leaves_a_taken_folder_as_it_was(tmp_path):
    """A run refused for its input after it took another command's folder with --overwrite: the marker it wrote
    is put back as it was (before, the folder stayed marked as the failed command's), whether the run failed
    in a `with claim(...)` block or the command line undid it (`undo_if_unused`)."""
    other = tmp_path / "synth"
    with claim(other, "data synth"):
        (other / "records.jsonl").write_text("{}\n")
        (other / "images").mkdir()
        (other / "images" / "a.png").write_bytes(b"png")
    before = _snapshot(other)
    assert json.loads(before[MARKER_NAME])["command"] == "data synth"
    with pytest.raises(ValueError, match="bad record"):
        with claim(other, "train embedder", {"records": "x"}, overwrite=True):
            assert read_marker(other)["command"] == "train embedder"  # taken for the run
            raise ValueError("bad record")
    assert _snapshot(other) == before
    owned = claim(other, "train embedder", overwrite=True)
    assert owned.undo_if_unused() and read_marker(other)["command"] == "data synth"
    owned.release()
    assert _snapshot(other) == before


def test_a_failed_run_in_an_unmarked_folder_leaves_no_marker_and_no_lock(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError):
        with claim(out, "eval", overwrite=True):
            raise ValueError("bad task file")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_failed_run_that_wrote_keeps_the_folder_its_own(tmp_path):
    """Only a run that wrote nothing is undone: one that wrote a file, or replaced one, or wrote inside a folder,
    keeps its marker (its re-run finds its own output)."""
    def replace_whole(f):  # the same bytes and times, written whole (a new file put in its place)
        st = (f / "records.jsonl").stat()
        (f / "tmp").write_text("{}\n")
        os.utime(f / "tmp", ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(f / "tmp", f / "records.jsonl")

    for i, write in enumerate([lambda f: (f / "new.json").write_text("{}"),
                               lambda f: (f / "records.jsonl").write_text("changed, longer\n"),
                               lambda f: (f / "images" / "b.png").write_bytes(b"png"), replace_whole]):
        other = tmp_path / f"synth{i}"
        with claim(other, "data synth"):
            (other / "records.jsonl").write_text("{}\n")
            (other / "images").mkdir()
        with pytest.raises(ValueError):
            with claim(other, "train embedder", overwrite=True):
                write(other)
                raise ValueError("failed later")
        assert read_marker(other)["command"] == "train embedder", i


def test_a_failed_rerun_of_the_same_command_keeps_its_earlier_marker(tmp_path):
    out = tmp_path / "run"
    with claim(out, "mine", {"k": 5}):
        (out / "judge").mkdir()
    before = (out / MARKER_NAME).read_bytes()
    with pytest.raises(ValueError):
        with claim(out, "mine", {"k": 6}, overwrite=True):
            assert (out / MARKER_NAME).read_bytes() != before
            raise ValueError("bad records")
    assert (out / MARKER_NAME).read_bytes() == before
