"""A folder given where a reader takes a file (and a file where it takes a folder): the readers said "file not found"
(the file is there: it is a folder), or ended in the bare OSError "Is a directory". Each says it is a folder, what it
expected, and the data files the folder holds (the one meant may be among them), as `read_records` does."""

from __future__ import annotations

import pytest

from unime.data.skips import ErrorPolicy
from unime.errors import DataError


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "b.jsonl").write_text("")
    (d / "a.parquet").write_text("")
    (d / "notes.md").write_text("")
    return d


def _policy(source):
    return ErrorPolicy("raise", None, str(source))


def _readers():
    from unime.data import collections, corpus, eval_formats, io, jsonl, pairs
    from unime.data.images import ImageLoader
    from unime.models.embed_file import read_items_file

    return {
        "read_corpus": (lambda d: corpus.read_corpus(d), "a JSON lines file"),
        "read_items_file": (lambda d: read_items_file(str(d), image_loader=ImageLoader(d)), "a JSON lines file"),
        "read_pairs": (lambda d: pairs.read_pairs(str(d)), "a JSON lines file"),
        "iter_jsonl": (lambda d: list(jsonl.iter_jsonl(d)), "a JSON lines file"),
        "read_json_file": (lambda d: jsonl.read_json_file(d), "a JSON file"),
        "read_mmeb": (lambda d: eval_formats.read_mmeb(d), "a .jsonl, .json or .parquet file"),
        "read_retrieval": (lambda d: eval_formats.read_retrieval(d), "a .jsonl, .json or .parquet file"),
        "read_qrels": (lambda d: io.read_qrels(d), "a .jsonl, .json or .parquet file"),
        "read_mmeb_v2": (lambda d: io.read_mmeb_v2(d), "a .jsonl, .json or .parquet file"),
        "read_coco_captions": (lambda d: collections.read_coco_captions(d, d, policy=_policy(d)),
                               "a COCO annotations JSON file"),
        "read_webdataset": (lambda d: collections.read_webdataset([d], policy=_policy(d)),
                            "a WebDataset .tar shard"),
    }


@pytest.mark.parametrize("reader", sorted(_readers()))
def test_a_folder_given_for_a_file_is_said_to_be_one(folder, reader):
    read, expected = _readers()[reader]
    with pytest.raises(DataError) as refused:
        read(folder)
    shown = folder if reader != "read_webdataset" else folder.resolve()
    assert str(refused.value) == f"{shown}: a folder, not {expected} (it holds a.parquet, b.jsonl)"


def test_an_empty_folder_names_no_files(tmp_path):
    from unime.data.eval_formats import read_mmeb

    with pytest.raises(DataError) as refused:
        read_mmeb(tmp_path)
    assert str(refused.value) == f"{tmp_path}: a folder, not a .jsonl, .json or .parquet file"


def test_a_missing_file_is_still_not_found(tmp_path):
    from unime.data.eval_formats import read_mmeb

    with pytest.raises(DataError) as refused:
        read_mmeb(tmp_path / "nope.jsonl")
    assert str(refused.value) == f"{tmp_path / 'nope.jsonl'}: file not found"


def test_a_captions_folder_is_said_to_be_one(folder):
    from unime.data.collections import read_caption_table

    captions = folder / "captions.csv"
    captions.mkdir()
    with pytest.raises(DataError) as refused:
        read_caption_table(captions, folder, policy=_policy(captions))
    assert str(refused.value) == f"{captions}: a folder, not a captions file"


def test_a_file_given_for_a_folder_is_said_to_be_one(folder):
    """`read_hf_dataset` said "dataset folder not found", and the images folder "not found", of a file."""
    from unime.data.collections import read_caption_table, read_hf_dataset

    with pytest.raises(DataError) as refused:
        read_hf_dataset(folder / "b.jsonl", policy=_policy(folder))
    assert str(refused.value) == f"{folder / 'b.jsonl'}: a file, not a dataset folder"
    (folder / "c.csv").write_text("image,caption\n")
    with pytest.raises(DataError) as refused:
        read_caption_table(folder / "c.csv", folder / "b.jsonl", policy=_policy(folder))
    images = str(folder / "b.jsonl")
    assert str(refused.value) == f"{folder / 'c.csv'}: images folder {images!r} is a file, not a folder"


def test_a_config_folder_is_said_to_be_one(tmp_path):
    from unime.cli.options_file import ConfigError, load_config_file

    (tmp_path / "run.yaml").write_text("k: 3\n")
    with pytest.raises(ConfigError) as refused:
        load_config_file(str(tmp_path))
    assert str(refused.value) == f"{tmp_path}: a folder, not a YAML or JSON config file (it holds run.yaml)"
