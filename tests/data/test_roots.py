"""Data roots (`unime.data.roots`): where a data file's image paths are relative to, recorded beside the files the
commands write, so that the next command finds the images without `--data-root`."""

from __future__ import annotations

import json
import os

from unime.cli import main
from unime.data.roots import DATA_ROOT_FILE, file_marker, record_data_root, resolve_data_root, write_data_root


def test_a_converted_file_finds_its_images_without_data_root(tiny_world_dir, tmp_path, capsys):
    """QA: `unime data convert WORLD/train/records.jsonl conv/r.parquet` wrote no data root beside its output, so
    `unime data check conv/r.parquet` resolved every image against conv/ and reported each one bad. The records keep
    their image paths: the input's data root (here the world, recorded in train/) is recorded beside the output, and
    a file converted from the converted one carries it on."""
    world = tiny_world_dir(0)
    src = world / "train" / "records.jsonl"
    conv, again = tmp_path / "conv" / "r.parquet", tmp_path / "again" / "r.json"
    assert main(["data", "convert", str(src), str(conv)]) == 0
    assert main(["data", "convert", str(conv), str(again)]) == 0
    assert json.loads((conv.parent / DATA_ROOT_FILE).read_text()) == \
        {"data_root": os.path.relpath(world.resolve(), conv.parent.resolve())}
    capsys.readouterr()
    for f in (conv, again):
        assert resolve_data_root(f) == str(world.resolve()), f
        assert main(["data", "check", str(f)]) == 0, capsys.readouterr().out
        assert " 0 with bad images" in capsys.readouterr().out


def test_a_files_own_marker_is_read_before_its_folders_and_the_manifest(tmp_path):
    """The order `resolve_data_root` reads: the option, `NAME.unime_data.json`, the folder's `unime_data.json`, a
    mining manifest, the file's folder; the file's own marker speaks for that file alone."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"inputs": {"data_root": str(tmp_path)}}))
    assert resolve_data_root(folder / "x.jsonl") == str(tmp_path)
    write_data_root(folder, tmp_path / "a")
    write_data_root(folder, tmp_path / "b", file="x.jsonl")
    assert json.loads(file_marker(folder / "x.jsonl").read_text()) == {"data_root": "../b"}
    assert resolve_data_root(folder / "x.jsonl") == str((tmp_path / "b").resolve())
    assert resolve_data_root(folder / "y.jsonl") == str((tmp_path / "a").resolve())
    assert resolve_data_root(folder / "x.jsonl", tmp_path / "c") == str(tmp_path / "c")


def test_record_data_root_never_re_points_a_file_it_did_not_write(tmp_path):
    """The rule of `record_data_root`: nothing where the folder resolves there already; the folder marker where
    the folder holds only the outputs (and their companions); else a marker of each output's own — a folder
    holding other entries, or recording another root, keeps how its other files resolve. An output's own marker
    from an earlier run is brought up to date (it would win over the folder's)."""
    world, other = tmp_path / "world", tmp_path / "other"
    world.mkdir()
    other.mkdir()
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "split.json").write_text("{}")
    assert record_data_root(alone, world, written=["a.jsonl", "b.jsonl"], companions=["split.json"]) == \
        [alone / DATA_ROOT_FILE]
    assert record_data_root(alone, world, written=["a.jsonl"]) == []  # resolves there already
    assert record_data_root(world, world, written=["t.jsonl"]) == [] and not (world / DATA_ROOT_FILE).exists()

    busy = tmp_path / "busy"
    (busy / "sub").mkdir(parents=True)  # a folder holding anything else: even a sub-folder
    (busy / "notes.jsonl").write_text("{}\n")
    assert record_data_root(busy, world, written=["a.jsonl", "b.jsonl"]) == \
        [file_marker(busy / "a.jsonl"), file_marker(busy / "b.jsonl")]
    assert not (busy / DATA_ROOT_FILE).exists()
    assert resolve_data_root(busy / "notes.jsonl") == str(busy.resolve())
    assert resolve_data_root(busy / "a.jsonl") == str(world.resolve())
    # a re-run from another root: the output's own marker follows; then one from the folder's own root updates it too
    assert record_data_root(busy, other, written=["a.jsonl"]) == [file_marker(busy / "a.jsonl")]
    assert resolve_data_root(busy / "a.jsonl") == str(other.resolve())
    assert record_data_root(busy, busy, written=["a.jsonl"]) == [file_marker(busy / "a.jsonl")]
    assert resolve_data_root(busy / "a.jsonl") == str(busy.resolve())

    marked = tmp_path / "marked"  # records another root, which its other files rely on
    write_data_root(marked, other)
    assert record_data_root(marked, world, written=["p.parquet"]) == [file_marker(marked / "p.parquet")]
    assert resolve_data_root(marked / "p.parquet") == str(world.resolve())
    assert resolve_data_root(marked / "q.parquet") == str(other.resolve())
    # an output's stale own marker in a folder the folder marker now speaks for is brought up to date as well
    write_data_root(alone, other, file="a.jsonl")
    assert record_data_root(alone, world, written=["a.jsonl"]) == [file_marker(alone / "a.jsonl")]
    assert resolve_data_root(alone / "a.jsonl") == str(world.resolve())
