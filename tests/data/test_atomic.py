"""`unime.data.atomic`: what appears has the modes of a plain write under the umask, not the private modes of
the temporary file or folder it was written as."""

from __future__ import annotations

import os

import pytest

from unime.data.atomic import atomic_dir


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_atomic_writes_get_the_modes_of_plain_writes(tmp_path):
    old = os.umask(0o027)
    try:
        import importlib

        import unime.data.atomic as atomic

        importlib.reload(atomic)  # the umask is read at import
        with atomic.atomic_open(tmp_path / "a.json") as fh:
            fh.write("{}")
        with atomic.atomic_path(tmp_path / "b.bin") as p:
            p.write_bytes(b"x")
        with atomic.atomic_dir(tmp_path / "model") as d:
            (d / "sub").mkdir()
            (d / "sub" / "w.bin").write_bytes(b"w")
            fd = os.open(d / "private.bin", os.O_CREAT | os.O_WRONLY, 0o600)  # as a library may write it
            os.close(fd)
        (tmp_path / "out").mkdir()
        with atomic.merged_dir(tmp_path / "out") as d:
            (d / "entry").mkdir(mode=0o700)
            (d / "file.txt").write_text("t")
    finally:
        os.umask(old)
        importlib.reload(atomic)
    assert _mode(tmp_path / "a.json") == _mode(tmp_path / "b.bin") == 0o640
    assert _mode(tmp_path / "model") == _mode(tmp_path / "model" / "sub") == 0o750
    assert _mode(tmp_path / "model" / "sub" / "w.bin") == _mode(tmp_path / "model" / "private.bin") == 0o640
    assert _mode(tmp_path / "out" / "entry") == 0o750 and _mode(tmp_path / "out" / "file.txt") == 0o640


def test_a_link_written_into_an_atomic_folder_is_left_as_it_is(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("t")
    os.chmod(target, 0o600)
    with atomic_dir(tmp_path / "d") as d:
        (d / "link").symlink_to(target)
    assert _mode(target) == 0o600 and (tmp_path / "d" / "link").is_symlink()


def test_merged_dir_merges_folders_file_by_file_and_reports_what_it_kept(tmp_path):
    from unime.data.atomic import merged_dir

    out = tmp_path / "out"
    (out / "sub" / "deeper").mkdir(parents=True)
    (out / "sub" / "w.bin").write_text("old")
    (out / "sub" / "mine.txt").write_text("the user's")
    (out / "sub" / "deeper" / "x").write_text("the user's too")
    (out / "top.txt").write_text("the user's")
    (out / ".hidden").write_text("h")
    kept: list[str] = []
    with merged_dir(out, kept=kept) as d:
        (d / "sub").mkdir()
        (d / "sub" / "w.bin").write_text("new")
        (d / "new.txt").write_text("n")
    assert (out / "sub" / "w.bin").read_text() == "new" and (out / "new.txt").read_text() == "n"
    assert (out / "sub" / "mine.txt").read_text() == "the user's" and (out / "sub" / "deeper" / "x").is_file()
    assert sorted(kept) == ["sub/deeper", "sub/mine.txt", "top.txt"]
    assert sorted(p.name for p in out.iterdir()) == [".hidden", "new.txt", "sub", "top.txt"]  # no temporary left


def test_merged_dir_refuses_a_folder_where_it_writes_a_file_and_replaces_nothing(tmp_path):
    """A user's folder (or file) standing where the command writes a file (or folder) of the same name is not the
    command's to delete: the merge is refused, naming it, before any file is replaced."""
    from unime.data.atomic import merged_dir
    from unime.errors import UnimeError

    out = tmp_path / "out"
    (out / "model.bin").mkdir(parents=True)
    (out / "model.bin" / "notes.txt").write_text("the user's")
    (out / "config.json").write_text("old")
    with pytest.raises(UnimeError, match=r"model\.bin is in the way: the command writes a file there"):
        with merged_dir(out) as d:
            (d / "config.json").write_text("new")
            (d / "model.bin").write_text("weights")
    assert (out / "model.bin" / "notes.txt").read_text() == "the user's"
    assert (out / "config.json").read_text() == "old"  # nothing replaced
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.bin"]  # no temporary left


def test_a_merge_killed_midway_leaves_no_temporary_after_the_next_export(tmp_path):
    """An export killed while merging (the trainer's OUT/merged/, `model_folder`) leaves its `.merge.tmp-*` folder
    inside merged/; the next export there removes it — and only it: a file or a folder of another name stays."""
    from unime.models.export import model_folder

    merged = tmp_path / "run" / "merged"
    with model_folder(merged) as d:
        (d / "model.safetensors").write_text("weights 1")
    stale = merged / ".merge.tmp-k1ll3d_x"  # as `tempfile.mkdtemp(prefix=".merge.tmp-")` names it
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "model.safetensors").write_text("half")
    (merged / ".merge.tmp-notes").mkdir()  # not a name mkdtemp gives: not the merge's
    (merged / ".merge.tmp-abcdefgh.txt").write_text("the user's")
    with model_folder(merged) as d:
        (d / "model.safetensors").write_text("weights 2")
    assert (merged / "model.safetensors").read_text() == "weights 2"
    assert sorted(p.name for p in merged.iterdir()) == [".merge.tmp-abcdefgh.txt", ".merge.tmp-notes",
                                                        "model.safetensors"]


def test_remove_listed_deletes_only_listed_files_inside_the_folder(tmp_path):
    """The files a command listed as written go, and the folders that leaves empty; a path outside the folder, one
    through a linked folder, a folder, a kept name and an unlisted file stay."""
    from unime.data.atomic import remove_listed

    root, elsewhere = tmp_path / "w", tmp_path / "elsewhere"
    (root / "images" / "a").mkdir(parents=True)
    (root / "images" / "a" / "x.png").write_text("x")
    (root / "images" / "b").mkdir()
    (root / "images" / "b" / "y.png").write_text("y")
    (root / "images" / "b" / "mine.png").write_text("the user's")
    elsewhere.mkdir()
    (elsewhere / "z.png").write_text("z")
    (root / "linked").symlink_to(elsewhere)
    (root / "keep.json").write_text("k")
    removed = remove_listed(root, ["images/a/x.png", "images/b/y.png", "../elsewhere/z.png", str(elsewhere / "z.png"),
                                   "linked/z.png", "images/b", "keep.json", "gone.png"], keep={"keep.json"})
    assert removed == ["images/a/x.png", "images/b/y.png"]
    assert not (root / "images" / "a").exists()  # left empty: removed
    assert (root / "images" / "b" / "mine.png").read_text() == "the user's"
    assert (elsewhere / "z.png").read_text() == "z" and (root / "keep.json").is_file()
