"""README's Embed-RL block runs as written, without `--data-root`: the teacher's T-CoT file and the outputs of
`reason split` / `reason materialize` record their data root (`unime_data.json`) the way other data files do, so
the next command finds the images; an explicit `--data-root` still wins; their image errors name the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from unime.cli import main
from unime.data.images import ImageLoader
from unime.data.io import check_images, read_records, write_records
from unime.data.roots import DATA_ROOT_FILE, file_marker, resolve_data_root, write_data_root
from unime.reasoning.reasoner import read_tcot_rows


def _subset(world: Path, n: int = 6) -> list:
    return read_records(world / "train" / "records.jsonl")[:n]


@pytest.fixture(scope="module")
def chain(tiny_world_dir, tiny_model_dir, tmp_path_factory):
    """The data commands of the block run in a scratch folder (cwd), as a user types them: some of the world's
    training records converted to r.jsonl (`data convert`, which records their data root beside it), `reason
    teacher`, `reason split` (a tiny judge), `reason materialize` with and without T-CoTs — no `--data-root`
    anywhere."""
    world = tiny_world_dir(0)
    work = tmp_path_factory.mktemp("embed_rl_chain")
    some = tmp_path_factory.mktemp("some_records")  # a few of the world's records, in a folder recording the world
    write_records(_subset(world), some / "r.jsonl")
    write_data_root(some, world)
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    try:
        codes = [main(["data", "convert", str(some / "r.jsonl"), "r.jsonl"]),
                 main(["reason", "teacher", "--world", str(world), "--records", "r.jsonl", "--out", "t.jsonl"]),
                 main(["reason", "split", "--records", "r.jsonl", "--tcots", "t.jsonl", "--judge", tiny_model_dir(),
                       "--out-dir", "split", "--rl-fraction", "0.5"]),
                 main(["reason", "materialize", "--records", "split/contrastive.jsonl", "--tcots", "t.jsonl",
                       "--out", "reasoned.parquet"]),
                 main(["reason", "materialize", "--records", "r.jsonl", "--no-tcots", "--out", "plain.parquet"])]
    finally:
        mp.undo()
    return world, work, codes


def test_the_data_commands_of_the_block_run_without_data_root(chain):
    world, work, codes = chain
    assert codes == [0, 0, 0, 0, 0]
    assert len(read_records(work / "split" / "contrastive.jsonl")) == 3
    assert len(read_records(work / "reasoned.parquet")) == 3 and len(read_records(work / "plain.parquet")) == 6


def test_their_outputs_record_the_world_as_their_data_root(chain):
    world, work, _ = chain
    for f in ("t.jsonl", "split/contrastive.jsonl", "split/rl.jsonl", "reasoned.parquet", "plain.parquet"):
        assert resolve_data_root(work / f) == str(world.resolve()), f
    assert (work / DATA_ROOT_FILE).is_file() and (work / "split" / DATA_ROOT_FILE).is_file()
    # what the next command reads opens from the recorded root
    loader = ImageLoader(resolve_data_root(work / "t.jsonl"))
    images = [ref for row in read_tcot_rows(work / "t.jsonl") for ref in row.item.images]
    assert images and all(loader.load(ref).size for ref in images)
    for f in ("split/rl.jsonl", "reasoned.parquet", "plain.parquet"):
        recs = read_records(work / f)
        assert len(check_images(recs, ImageLoader(resolve_data_root(work / f)), source=f)) == len(recs)


def test_the_teacher_records_the_world_beside_its_output_unless_it_is_the_world(tiny_world_dir, tmp_path):
    from shutil import copytree

    world = copytree(tiny_world_dir(0), tmp_path / "world")
    assert main(["reason", "teacher", "--world", str(world), "--out", str(tmp_path / "tcots" / "t.jsonl")]) == 0
    assert json.loads((tmp_path / "tcots" / DATA_ROOT_FILE).read_text()) == {"data_root": "../world"}
    assert main(["reason", "teacher", "--world", str(world), "--out", str(world / "t.jsonl")]) == 0
    assert not (world / DATA_ROOT_FILE).exists()  # the world's own folder needs none: nothing added


def test_an_explicit_data_root_wins_and_is_recorded(tiny_world_dir, tmp_path):
    world = tiny_world_dir(0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / DATA_ROOT_FILE).write_text(json.dumps({"data_root": str(tmp_path)}))  # the wrong root
    write_records(_subset(world, 2), elsewhere / "r.jsonl")
    out = tmp_path / "out" / "plain.parquet"
    assert main(["reason", "materialize", "--records", str(elsewhere / "r.jsonl"), "--no-tcots",
                 "--data-root", str(world), "--out", str(out)]) == 0
    assert resolve_data_root(out) == str(world.resolve())


def test_image_errors_of_split_and_materialize_name_the_records_file(tiny_world_dir, tmp_path, capsys):
    world = tiny_world_dir(0)
    records = tmp_path / "r.jsonl"  # the world's records, in a folder that does not hold their images
    write_records(_subset(world, 2), records)
    tcots = tmp_path / "t" / "t.jsonl"
    assert main(["reason", "teacher", "--world", str(world), "--records", str(records), "--out", str(tcots)]) == 0
    capsys.readouterr()
    for argv in (["materialize", "--records", str(records), "--tcots", str(tcots), "--out", str(tmp_path / "o.jsonl")],
                 ["split", "--records", str(records), "--tcots", str(tcots), "--judge", str(tmp_path / "no-judge"),
                  "--out-dir", str(tmp_path / "split")]):
        assert main(["reason", *argv, "--data-root", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"unime: error: {records}, record line 1" in err and "field 'query.images[0]'" in err, err
        assert "image file not found" in err


@pytest.mark.slow
def test_the_trainers_of_the_block_read_the_outputs_without_data_root(chain, tiny_model_dir, monkeypatch):
    world, work, _ = chain
    monkeypatch.chdir(work)
    base = tiny_model_dir()
    assert main(["reason", "add-emb", "--model", base, "--out", "emb-base"]) == 0
    assert main(["train", "embedder", "--model", "emb-base", "--records", "reasoned.parquet", "--pooling", "emb",
                 "--symmetric", "--out", "tcot-emb", "--steps", "1", "--batch-size", "2"]) == 0
    assert main(["train", "reasoner", "--stage", "sft", "--model", base, "--tcots", "t.jsonl", "--out", "sft",
                 "--max-steps", "1", "--batch-size", "2"]) == 0
    assert (work / "tcot-emb" / "merged").is_dir() and (work / "sft" / "merged").is_dir()


def test_a_folder_that_records_another_root_keeps_it_and_the_new_file_records_its_own(tiny_world_dir, tmp_path):
    """A folder whose marker names another root keeps it (its other files rely on it); the file written there
    records its own root beside it (`NAME.unime_data.json`), so it needs no --data-root either (it did)."""
    world = tiny_world_dir(0)
    write_records(_subset(world, 2), tmp_path / "r.jsonl")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / DATA_ROOT_FILE).write_text(json.dumps({"data_root": ".."}))  # its other files rely on it
    assert main(["reason", "materialize", "--records", str(tmp_path / "r.jsonl"), "--no-tcots",
                 "--data-root", str(world), "--out", str(shared / "plain.parquet")]) == 0
    assert json.loads((shared / DATA_ROOT_FILE).read_text()) == {"data_root": ".."}
    assert resolve_data_root(shared / "plain.parquet") == str(world.resolve())
    assert resolve_data_root(shared / "other.jsonl") == str(tmp_path.resolve())


def test_generated_tcots_record_the_records_data_root(tiny_world_dir, tiny_model_dir, tmp_path):
    world = tiny_world_dir(0)
    write_records(_subset(world, 2), tmp_path / "r.jsonl")
    out = tmp_path / "gen" / "t.jsonl"
    assert main(["reason", "generate", "--model", tiny_model_dir(), "--records", str(tmp_path / "r.jsonl"),
                 "--data-root", str(world), "--out", str(out), "--max-new-tokens", "2"]) == 0
    assert resolve_data_root(out) == str(world.resolve())


def test_an_output_beside_other_files_records_its_own_root_and_theirs_is_unchanged(tiny_world_dir, tmp_path,
                                                                                    caplog):
    """QA: `reason teacher --out t.jsonl` in a working folder wrote the folder marker there, which re-pointed every
    data file of the folder to the world (with a warning). Now a folder marker is written only where the command's
    outputs are alone; beside other entries the output gets a marker of its own (`t.jsonl.unime_data.json`, read
    before the folder's) and the other files resolve as they did; no warning, nothing to give."""
    import logging

    world = tiny_world_dir(0)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "notes.jsonl").write_text("{}\n")  # a file of the user's, its images relative to shared/
    (shared / "models").mkdir()
    with caplog.at_level(logging.WARNING, logger="unime.data.roots"):
        assert main(["reason", "teacher", "--world", str(world), "--out", str(shared / "t.jsonl")]) == 0
        assert main(["reason", "teacher", "--world", str(world), "--out", str(tmp_path / "alone" / "t.jsonl")]) == 0
    assert not caplog.records
    assert not (shared / DATA_ROOT_FILE).exists()
    assert json.loads(file_marker(shared / "t.jsonl").read_text()) == \
        {"data_root": os.path.relpath(world.resolve(), shared.resolve())}
    assert resolve_data_root(shared / "t.jsonl") == str(world.resolve())
    assert resolve_data_root(shared / "notes.jsonl") == str(shared.resolve())  # as before the command
    assert (tmp_path / "alone" / DATA_ROOT_FILE).is_file()  # its own outputs only: the folder marker, as before
    assert not file_marker(tmp_path / "alone" / "t.jsonl").exists()
