"""Data roots (`unime.data.roots`): where a data file's image paths are relative to, recorded beside the files the
commands write, so that the next command finds the images without `--data-root`."""

from __future__ import annotations

import json
import os

from unime.cli import main
from unime.data.roots import DATA_ROOT_FILE, resolve_data_root


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
